"""`deepwasm train grpo` beside TRL's GRPOTrainer, in one run, on one machine.

Both train the same rank-8 LoRA of the default model with GRPO on
examples/grpo-format (R1's `<think>` format, plain-text prompts that open
the think block), rewarded by `r1-format.wasm`, with the same
hyper-parameters (benches/grpo_trl.py lists them). deepwasm runs first,
then TRL, one after the other so neither slows the other. Prints a
Markdown table: seconds per step, the reward each step sampled, and the
held-out mean reward before and after.

    python benches/grpo_side_by_side.py --steps 30 --deepwasm target/debug/deepwasm \\
        --plugins target/plugins --model ~/.cache/deepwasm/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out results/

Needs the torch venv of `scripts/test-python --full` (torch, transformers,
TRL, PEFT and the deepwasm wheel).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples", "grpo-format")


def run_deepwasm(args, out):
    cmd = [
        args.deepwasm, "train", "grpo", "--model", args.model,
        "--prompts", os.path.join(EXAMPLES, "train.jsonl"),
        "--eval-prompts", os.path.join(EXAMPLES, "heldout.jsonl"), "--eval-samples", "4",
        "--eval-every", str(args.eval_every),
        "--reward", os.path.join(args.plugins, "r1-format.wasm"),
        "--group-size", "8", "--prompts-per-step", "4", "--max-tokens", "64",
        "--lr", "3e-4", "--lora-rank", "8", "--lora-alpha", "16", "--kl-beta", "0",
        "--seed", "1", "--steps", str(args.steps), "--out", out,
    ]
    print("+", " ".join(cmd), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True)
    wall = time.monotonic() - started
    lines = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    steps = [l for l in lines if "rewards" in l]
    evals = [(l["step"], l["eval"]["total"]) for l in lines if "eval" in l]
    return {
        "seconds": [s["step_seconds"] for s in steps],
        "rewards": [s["rewards"]["total"] for s in steps],
        # Steps where every completion's gradient was computed: TRL
        # computes every completion's, so these compare step for step.
        "full": [s["step_seconds"] for s in steps if s.get("updated") == s["completions"]],
        "evals": evals,
        "wall": wall,
    }


def run_trl(args, out):
    cmd = [
        sys.executable, os.path.join(HERE, "grpo_trl.py"), "--model", args.model,
        "--plugins", args.plugins, "--steps", str(args.steps), "--out", out,
    ]
    print("+", " ".join(cmd), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True)
    wall = time.monotonic() - started
    report = json.load(open(out))
    return {
        "seconds": [s["seconds"] for s in report["steps"]],
        "rewards": [s["reward"] for s in report["steps"]],
        "evals": [(0, report["eval_before"]["mean"]), (args.steps, report["eval_after"]["mean"])],
        "wall": wall,
        "versions": report.get("versions"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--deepwasm", required=True)
    ap.add_argument("--plugins", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="a directory for both runs' outputs")
    ap.add_argument("--only", choices=["deepwasm", "trl"], help="run one trainer (for a rerun; the comparison is the run of both)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs = []
    if args.only in (None, "deepwasm"):
        runs.append(("deepwasm train grpo", run_deepwasm(args, os.path.join(args.out, "deepwasm"))))
    if args.only in (None, "trl"):
        runs.append(("TRL GRPOTrainer + PEFT", run_trl(args, os.path.join(args.out, "trl.json"))))
    json.dump(dict(runs), open(os.path.join(args.out, "side_by_side.json"), "w"), indent=1)

    def row(name, r):
        s = r["seconds"]
        later = s[1:] or s
        # TRL computes every completion's gradient on every step.
        full = r.get("full", later)
        full = f"{statistics.median(full):.1f} ({len(full)})" if full else "-"
        return (
            f"| {name} | {statistics.mean(s):.1f} | {statistics.median(later):.1f} | {full} | "
            f"{r['evals'][0][1]:.3f} | {r['evals'][-1][1]:.3f} | {r['wall']:.0f} |"
        )

    print()
    print("| trainer | s/step (mean) | s/step (median, after step 1) | s/step where every completion updates (median, steps) | held-out reward before | after | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs:
        print(row(name, r))
    print()
    print("reward sampled at each step:")
    for name, r in runs:
        print(f"  {name.split()[0]:8}", " ".join(f"{x:.2f}" if x is not None else "-" for x in r["rewards"]))
    print("held-out evaluations (step, mean):", [(name.split()[0], r["evals"]) for name, r in runs])


if __name__ == "__main__":
    main()
