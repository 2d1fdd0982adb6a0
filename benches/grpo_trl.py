"""GRPO training steps as TRL runs them: GRPOTrainer with a PEFT LoRA adapter, on CPU.

This is the peer of `deepwasm train grpo`. It trains the same adapter on
the same model, prompts and reward, with the same hyper-parameters, so the
seconds per step and the rewards of the two can be read side by side:

    deepwasm train grpo --prompts examples/grpo-format/train.jsonl \\
        --eval-prompts examples/grpo-format/heldout.jsonl --eval-samples 4 \\
        --reward r1-format.wasm --group-size 8 --prompts-per-step 4 \\
        --max-tokens 64 --lr 3e-4 --lora-rank 8 --lora-alpha 16 --kl-beta 0 \\
        --seed 1 --steps N --out OUT

    python benches/grpo_trl.py --model SmolLM2-135M-Instruct.Q4_1.gguf \\
        --plugins target/plugins --steps N --out trl-grpo.json [--threads T]

Each step takes 4 training prompts in the file's order, round and round,
samples 8 completions of each (temperature 1, top-p 1, at most 64 new
tokens), scores them with `r1-format.wasm` through `deepwasm.Reward`,
normalises the rewards within each group, and makes one AdamW update
(lr 3e-4, constant, no weight decay, gradients clipped to norm 1) of a
rank-8 LoRA (alpha 16, no dropout, all seven projections) with the GRPO
loss: clip 0.2, no KL term, each completion's token mean, then the mean
over the 32 completions. The prompts are plain text, ending in
"Assistant: <think>": no chat template.

A step's seconds are the wall time between two optimizer steps (the first
from the start of training): generation, reward scoring, the forward and
backward passes and the update. Before the first step and after the last,
the model with its adapter samples 4 completions of each held-out prompt
(temperature 1, 64 new tokens), scored by the same reward; the mean is
reported, as `deepwasm train grpo`'s evaluations are.

Needs the torch venv that `scripts/test-python --full` makes, with `peft`
installed. Writes a JSON report to `--out` and prints a summary.
"""

import argparse
import json
import math
import os
import tempfile
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

import deepwasm

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples", "grpo-format")

# The setup of the `deepwasm train grpo` run this is compared against.
GROUP_SIZE = 8
PROMPTS_PER_STEP = 4
MAX_TOKENS = 64
LR = 3e-4
LORA_RANK = 8
LORA_ALPHA = 16
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CLIP_EPS = 0.2
MAX_GRAD_NORM = 1.0
EVAL_SAMPLES = 4


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_model(path):
    """The tokenizer and a float32 model of a GGUF file or a Hugging Face
    directory."""
    if path.endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(path))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # transformers dequantizes a GGUF's weights but still marks the
        # model quantized, which its Trainer refuses to fine-tune: the same
        # weights in a plain model of the same config.
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        del loaded
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return tokenizer, model


def cycled(rows, steps):
    """The training rows in the order `deepwasm train grpo` takes them:
    `PROMPTS_PER_STEP` a step, in the file's order, round and round. TRL
    walks this unshuffled, one generation batch a step."""
    picked = (rows[i % len(rows)] for i in range(steps * PROMPTS_PER_STEP))
    return [{"prompt": r["prompt"], "id": r["id"], "answer": r["answer"]} for r in picked]


def evaluate(model, tokenizer, reward, rows, seed):
    """The mean reward of `EVAL_SAMPLES` completions of each held-out
    prompt, sampled as the trainer samples (TRL's tokenization and stop
    tokens). The global RNG is left as it was, so training samples the
    same with or without this."""
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id not in eos:
        eos = [tokenizer.eos_token_id, *eos]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    # All the prompts in one batch, left-padded as TRL pads them.
    prompt_ids = [tokenizer(row["prompt"])["input_ids"] for row in rows]
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
    started = time.perf_counter()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=MAX_TOKENS,
            num_return_sequences=EVAL_SAMPLES,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    completion_ids = []
    for seq in out[:, width:].tolist():
        # Up to and with the first stop token, as TRL passes them.
        end = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
        completion_ids.append(seq[:end])
    # `generate` answers each prompt's samples together.
    each = [row for row in rows for _ in range(EVAL_SAMPLES)]
    scores = reward(
        tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        prompts=[row["prompt"] for row in each],
        completion_ids=completion_ids,
        id=[row["id"] for row in each],
        answer=[row["answer"] for row in each],
    )
    seconds = time.perf_counter() - started
    if was_training:
        model.train()
    known = [s for s in scores if s is not None and not math.isnan(s)]
    return {
        "mean": sum(known) / len(known) if known else None,
        "samples": len(scores),
        "scored": len(known),
        "seconds": seconds,
    }


class StepTimer(TrainerCallback):
    """Wall seconds between optimizer steps: the first from the start of
    training."""

    def __init__(self):
        self.last = None
        self.seconds = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def fmt(value):
    return "-" if value is None else f"{value:.4f}"


def versions():
    import accelerate
    import peft
    import transformers
    import trl

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "deepwasm": getattr(deepwasm, "__version__", None),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a GGUF file or a Hugging Face directory")
    ap.add_argument("--plugins", required=True, help="the directory of the compiled plugins (r1-format.wasm)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", required=True, help="where the JSON report goes")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch's threads [default: all CPUs]")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prompts", default=os.path.join(EXAMPLES, "train.jsonl"))
    ap.add_argument("--eval-prompts", default=os.path.join(EXAMPLES, "heldout.jsonl"))
    args = ap.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    tokenizer, model = load_model(os.path.expanduser(args.model))
    reward = deepwasm.Reward(os.path.join(os.path.expanduser(args.plugins), "r1-format.wasm"))
    train_rows = read_jsonl(args.prompts)
    eval_rows = read_jsonl(args.eval_prompts)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as scratch:
        config = GRPOConfig(
            output_dir=scratch,
            max_steps=args.steps,
            # One generation batch of 4 prompts x 8 completions is one
            # optimizer step: no accumulation, no reuse.
            per_device_train_batch_size=PROMPTS_PER_STEP * GROUP_SIZE,
            gradient_accumulation_steps=1,
            num_generations=GROUP_SIZE,
            num_iterations=1,
            shuffle_dataset=False,
            max_completion_length=MAX_TOKENS,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=MAX_GRAD_NORM,
            beta=0.0,
            epsilon=CLIP_EPS,
            loss_type="grpo",
            scale_rewards="group",
            activation_checkpointing=False,
            seed=args.seed,
            use_cpu=True,
            bf16=False,
            fp16=False,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=config,
            train_dataset=Dataset.from_list(cycled(train_rows, args.steps)),
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=LORA_RANK,
                lora_alpha=LORA_ALPHA,
                lora_dropout=0.0,
                target_modules=TARGET_MODULES,
                bias="none",
                task_type="CAUSAL_LM",
            ),
            callbacks=[timer],
        )
        setup_seconds = time.perf_counter() - started
        eval_seed = args.seed ^ 0xE7A1
        eval_before = evaluate(trainer.model, tokenizer, reward, eval_rows, eval_seed)
        print(f"eval before training: {fmt(eval_before['mean'])} ({eval_before['scored']} samples)", flush=True)
        trained = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - trained
        eval_after = evaluate(trainer.model, tokenizer, reward, eval_rows, eval_seed)

    logs = {e["step"]: e for e in trainer.state.log_history if "reward" in e}
    steps = []
    for i, seconds in enumerate(timer.seconds, start=1):
        log = logs.get(i, {})
        steps.append({
            "step": i,
            "seconds": seconds,
            "reward": log.get("reward"),
            "reward_std": log.get("reward_std"),
            "loss": log.get("loss"),
            "grad_norm": log.get("grad_norm"),
            "completion_mean_length": log.get("completions/mean_length"),
        })
    report = {
        "trainer": "trl.GRPOTrainer + peft LoRA",
        "setup": {
            "model": args.model,
            "prompts": args.prompts,
            "eval_prompts": args.eval_prompts,
            "reward": "r1-format.wasm",
            "steps": args.steps,
            "group_size": GROUP_SIZE,
            "prompts_per_step": PROMPTS_PER_STEP,
            "max_tokens": MAX_TOKENS,
            "lr": LR,
            "lora_rank": LORA_RANK,
            "lora_alpha": LORA_ALPHA,
            "target_modules": TARGET_MODULES,
            "kl_beta": 0.0,
            "clip_eps": CLIP_EPS,
            "max_grad_norm": MAX_GRAD_NORM,
            "eval_samples": EVAL_SAMPLES,
            "seed": args.seed,
            "threads": args.threads,
            "dtype": "float32",
        },
        "versions": versions(),
        "steps": steps,
        "eval_before": eval_before,
        "eval_after": eval_after,
        "setup_seconds": setup_seconds,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    print(f"TRL GRPO, {args.threads} threads, {args.steps} steps of {PROMPTS_PER_STEP}x{GROUP_SIZE} completions")
    for s in steps:
        print(f"step {s['step']}: {s['seconds']:.1f}s reward {fmt(s['reward'])} loss {fmt(s['loss'])}")
    mean_step = sum(timer.seconds) / len(timer.seconds) if timer.seconds else float("nan")
    print(
        f"eval reward: {fmt(eval_before['mean'])} before, {fmt(eval_after['mean'])} after "
        f"({eval_before['seconds']:.1f}s, {eval_after['seconds']:.1f}s)"
    )
    print(
        f"{mean_step:.1f}s a step, {train_seconds:.1f}s training, {setup_seconds:.1f}s loading, "
        f"{report['total_seconds']:.1f}s in all"
    )
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
