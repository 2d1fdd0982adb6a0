"""GRPO with TRL, rewarded by sandboxed Wasm plugins.

The rewards are deepwasm plugins (any language that compiles to a Wasm
component): R1's format reward and a math-accuracy reward that checks the
last \\boxed{} answer against the dataset's `answer` column. They run in
the sandbox, deterministic and fuel-metered, so reward code from many
contributors can be used without trusting it.

    pip install deepwasm-*.whl torch transformers trl gguf   # scripts/test-python --full builds the wheel
    python examples/python-grpo/train.py --model ~/.cache/deepwasm/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --plugins target/plugins --max-steps 50
"""

import argparse
import os

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

import deepwasm

PROBLEMS = [
    ("What is 2 + 3?", "5"),
    ("What is 7 times 6?", "42"),
    ("What is 10 minus 4?", "6"),
    ("What is 9 plus 9?", "18"),
    ("What is 12 divided by 3?", "4"),
    ("What is 5 squared?", "25"),
    ("What is 100 minus 1?", "99"),
    ("What is 3 times 3 times 3?", "27"),
]

SYSTEM = (
    "Think inside <think></think>, then give the final answer in \\boxed{}."
)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a GGUF file or a Hugging Face directory")
    ap.add_argument("--plugins", required=True, help="the directory of the compiled plugins")
    ap.add_argument("--max-steps", type=int, default=50)
    ap.add_argument("--output-dir", default="grpo-out")
    args = ap.parse_args()

    if args.model.endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(args.model))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # transformers dequantizes a GGUF's weights but still marks the
        # model quantized, which its Trainer refuses to fine-tune: the same
        # weights in a plain model of the same config.
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model)

    plugin = lambda name: os.path.join(args.plugins, name + ".wasm")  # noqa: E731
    reward_funcs = [
        # Scores are None where a plugin fails (a warning is logged);
        # training goes on. Each is logged as rewards/<plugin name>.
        deepwasm.Reward(plugin("r1-format"), weight=0.5),
        deepwasm.Reward(plugin("math-accuracy"), limits={"fuel": 50_000_000, "deadline_ms": 200}),
    ]
    data = Dataset.from_list(
        [
            {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], "answer": a}
            for q, a in PROBLEMS
        ]
    )
    config = GRPOConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=64,
        learning_rate=5e-6,
        logging_steps=1,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
    )
    trainer.train()
    for entry in trainer.state.log_history:
        means = {k: round(v, 3) for k, v in entry.items() if k.startswith("rewards/") and k.endswith("/mean")}
        if means:
            print(entry.get("step"), means)


if __name__ == "__main__":
    main()
