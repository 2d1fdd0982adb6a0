"""The `deepwasm` package inside the real libraries (the torch tier,
`scripts/test --full`): TRL's GRPOTrainer trains two steps on the default
model with deepwasm rewards (Rust and Python plugins, and a hostile one
that bombs memory, traps and loops on some rows), and what the trainer logs equals
`deepwasm score` on the same completions; transformers' `generate` with
the JSON-schema sampler writes JSON of the schema.

Environment as for tests/python/test_package.py.
"""

import json
import logging
import os
import sys
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

import deepwasm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from support import MODEL, cli_scores, plugin, run  # noqa: E402


torch.manual_seed(0)
logging.basicConfig(level=logging.WARNING)


def load_model():
    folder, name = os.path.split(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return trainable(AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)), tokenizer


def trainable(gguf_model):
    """transformers dequantizes a GGUF's weights but still marks the model
    quantized, which its Trainer refuses to fine-tune: the same weights in a
    plain model of the same config."""
    model = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    return model


class Recorder:
    """A reward that records what it was given and what it answered."""

    def __init__(self, reward):
        self.reward = reward
        self.__name__ = reward.__name__
        self.calls = []

    def __call__(self, completions, **kwargs):
        scores = self.reward(completions, **kwargs)
        self.calls.append((list(completions), {k: list(v) for k, v in kwargs.items() if isinstance(v, list)}, scores))
        return scores


def completion_text(c):
    return c if isinstance(c, str) else "".join(m["content"] for m in c if m.get("role") == "assistant")


PROBLEMS = [
    ("What is 2 + 3? Think, then give the answer in \\boxed{}.", "5", "OOM"),
    ("What is 7 times 6? Think, then give the answer in \\boxed{}.", "42", ""),
    ("What is 10 minus 4? Think, then give the answer in \\boxed{}.", "6", "TRAP"),
    ("What is 9 plus 9? Think, then give the answer in \\boxed{}.", "18", "LOOP"),
]


def test_grpo_trains_with_deepwasm_rewards_and_logs_what_deepwasm_scores():
    model, tokenizer = load_model()
    caught = []

    class Catch(logging.Handler):
        def emit(self, record):
            caught.append(record.getMessage())

    logging.getLogger("deepwasm").addHandler(Catch())
    rewards = [
        Recorder(deepwasm.Reward(plugin("r1-format"))),
        Recorder(deepwasm.Reward(plugin("math-accuracy"))),
        Recorder(deepwasm.Reward(plugin("python-r1-format"))),
        # A memory bomb on one prompt's rows, a trap on another's, a loop
        # on a third's: those score None, the rest 1.0, and training goes on.
        Recorder(deepwasm.Reward(plugin("hostile-reward"), limits={"deadline_ms": 300, "memory_mib": 64})),
    ]
    data = Dataset.from_list(
        [{"prompt": p, "answer": a, "hostile": h} for p, a, h in PROBLEMS]
    )
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            max_steps=2,
            # Every step sees the four prompts, four completions each.
            per_device_train_batch_size=16,
            num_generations=4,
            max_completion_length=24,
            learning_rate=1e-5,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            seed=0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=rewards,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
        )
        trainer.train()
    # Two optimisation steps, each logged with every reward.
    assert trainer.state.global_step == 2, trainer.state.global_step
    print("  " + "\n  ".join(json.dumps({k: v for k, v in h.items() if "reward" in k or k in ("step", "loss")}) for h in trainer.state.log_history))
    logged = [h for h in trainer.state.log_history if any(k.startswith("rewards/") for k in h)]
    assert len(logged) == 2, trainer.state.log_history
    for rec in rewards:
        assert len(rec.calls) >= 2, (rec.__name__, len(rec.calls))
        # What the reward answered equals `deepwasm score` on the same rows.
        name = rec.__name__
        for completions, columns, scores in rec.calls:
            rows = [
                {"completion": completion_text(c), **{k: v[i] for k, v in columns.items() if k in ("answer", "hostile")}}
                for i, c in enumerate(completions)
            ]
            if name == "hostile-reward":
                expect = [None if r["hostile"] else 1.0 for r in rows]
            else:
                expect = cli_scores(name if name != "python-r1-format" else "r1-format", rows)
            assert scores == expect, (name, scores, expect)
        # And the trainer logged their mean (nan-aware) for each step.
        for step, (_, _, scores) in zip(logged, rec.calls):
            key = f"rewards/{name}/mean"
            values = [s for s in scores if s is not None]
            if values:
                assert abs(step[key] - sum(values) / len(values)) < 1e-6, (name, step[key], values)
    # Every hostile row was reported, none silently.
    hostile_rows = sum(1 for _, cols, _ in rewards[3].calls for h in cols["hostile"] if h)
    assert hostile_rows == 2 * 3 * 4, hostile_rows  # three prompts of four completions, two steps
    assert len([m for m in caught if "hostile-reward" in m]) == hostile_rows, (hostile_rows, caught)


def test_generate_with_the_json_schema_sampler_writes_json_of_the_schema():
    model, tokenizer = load_model()
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    sampler = deepwasm.Sampler(plugin("json-schema"), config={"schema": schema}, tokenizer=MODEL)
    messages = [{"role": "user", "content": "Give the capital of France and its population as JSON."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    for sample in (False, True):
        out = model.generate(
            **prompt,
            logits_processor=[sampler],
            max_new_tokens=64,
            do_sample=sample,
            eos_token_id=sampler.eos_token_ids,
            pad_token_id=sampler.eos_token_id,
        )
        text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise AssertionError(f"not JSON: {text!r}") from e
        assert set(value) == {"city", "population"} and isinstance(value["population"], int), text
        print(f"  {'sampled' if sample else 'greedy'}: {text}")


if __name__ == "__main__":
    run(globals())
