"""Reward throughput from Python, deepwasm's Wasm plugins (each sample in a
fresh sandboxed instance) against TRL's own reward functions (in-process
CPython), on the same completions in the same batches, as GRPOTrainer calls
a reward function:

- R1's format: `r1-format.wasm` against `trl.rewards.think_format_reward`
  (a regular expression);
- accuracy: `math-accuracy.wasm` against `trl.rewards.accuracy_reward`
  (math-verify, parsing LaTeX with sympy), when math-verify is installed.

    python benches/python_rewards.py PLUGIN_DIR [SAMPLES] [BATCH]

Needs `trl` and the `deepwasm` package (the torch venv that
`scripts/test-python --full` makes; `pip install math-verify` for the
accuracy rows). Prints a table per reward; the figures go in
docs/BENCHMARKS.md.
"""

import importlib.util
import os
import random
import sys
import time

from trl.rewards import accuracy_reward, think_format_reward

import deepwasm


def completions(n, seed=7):
    """`n` conversational completions of ~400 characters, half in the
    think format, each ending in a boxed number, with the ground truths
    (LaTeX, as TRL's accuracy reward reads them): half right."""
    rng = random.Random(seed)
    words = "the answer is we add carry two so four then check sum result".split()
    out, truths = [], []
    for i in range(n):
        thought = " ".join(rng.choice(words) for _ in range(40))
        answer = " ".join(rng.choice(words) for _ in range(20))
        value = rng.randrange(1000)
        boxed = f"\\boxed{{{value}}}"
        text = f"<think>{thought}</think> {answer} {boxed}" if i % 2 == 0 else f"{thought} {answer} {boxed}"
        out.append([{"role": "assistant", "content": text}])
        truths.append(str(value if i % 4 < 2 else value + 1))
    return out, truths


def timed(score, data, batch):
    best, scores = None, None
    for _ in range(3):
        started = time.perf_counter()
        scores = []
        for i in range(0, len(data), batch):
            scores.extend(score(data[i : i + batch]))
        took = time.perf_counter() - started
        best = took if best is None else min(best, took)
    return best, scores


def table(title, n, batch, rows):
    print(f"{title}: {n} completions, batches of {batch}, best of 3 passes")
    print()
    print("| scorer | samples/s | × TRL | scored 1.0 | agrees with TRL |")
    print("|---|--:|--:|--:|--:|")
    trl_s, trl_scores = rows[0][1], rows[0][2]
    for name, took, scores in rows:
        agree = sum(1 for a, b in zip(scores, trl_scores) if a == b)
        print(
            f"| {name} | {n / took:,.0f} | {trl_s / took:.2f} | "
            f"{sum(1 for s in scores if s == 1.0)} | {agree}/{n} |"
        )
    print()


def main():
    plugins = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    data, truths = completions(n)

    took, scores = timed(lambda c: think_format_reward(c), data, batch)
    rows = [("TRL `think_format_reward`, in-process CPython", took, scores)]
    for threads in (1, 2):
        reward = deepwasm.Reward(os.path.join(plugins, "r1-format.wasm"), threads=threads)
        took, scores = timed(lambda c: reward(c), data, batch)
        rows.append((f"deepwasm `Reward(r1-format)`, {threads} thread(s)", took, scores))
    table("R1 format", n, batch, rows)

    if importlib.util.find_spec("math_verify") is None:
        print("(no math-verify: the accuracy rows are skipped)")
        return
    latex = [f"${t}$" for t in truths]
    index = {id(c): i for i, c in enumerate(data)}

    def trl_accuracy(chunk):
        return accuracy_reward(chunk, solution=[latex[index[id(c)]] for c in chunk])

    took, scores = timed(trl_accuracy, data, batch)
    rows = [("TRL `accuracy_reward` (math-verify), in-process CPython", took, scores)]
    for threads in (1, 2):
        reward = deepwasm.Reward(os.path.join(plugins, "math-accuracy.wasm"), threads=threads)
        took, scores = timed(
            lambda chunk: reward(chunk, answer=[truths[index[id(c)]] for c in chunk]), data, batch
        )
        rows.append((f"deepwasm `Reward(math-accuracy)`, {threads} thread(s)", took, scores))
    table("Accuracy", n, batch, rows)


if __name__ == "__main__":
    main()
