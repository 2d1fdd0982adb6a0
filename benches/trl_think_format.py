"""The R1 think-format reward as RL trainers run it: in-process CPython.

This is the peer of `deepwasm bench plugins`' reward figure. It scores the
same completions with the regular expression of TRL's `think_format_reward`
(`^<think>(?!.*<think>)(.*?)</think>.*$`, DOTALL), one call per batch of
completions as a trainer's reward function receives them, and prints one
JSON line: samples, seconds, samples per second and how many scored 1.0.

    python3 benches/trl_think_format.py COMPLETIONS.jsonl [BATCH]
"""

import json
import re
import sys
import time

PATTERN = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL)


def think_format_reward(completions):
    return [1.0 if PATTERN.match(c) else 0.0 for c in completions]


def main():
    path = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    with open(path, encoding="utf-8") as f:
        completions = [json.loads(line)["completion"] for line in f if line.strip()]
    best = None
    ones = 0
    # Best of three passes, as the Rust side reports its best.
    for _ in range(3):
        start = time.perf_counter()
        scores = []
        for i in range(0, len(completions), batch):
            scores.extend(think_format_reward(completions[i : i + batch]))
        elapsed = time.perf_counter() - start
        ones = sum(1 for s in scores if s == 1.0)
        best = elapsed if best is None else min(best, elapsed)
    print(json.dumps({"samples": len(completions), "seconds": best,
                      "per_second": len(completions) / best, "ones": ones}))


if __name__ == "__main__":
    main()
