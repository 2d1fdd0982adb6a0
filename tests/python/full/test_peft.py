"""deepwasm's LoRA adapters and PEFT's are the same files (the torch tier,
`scripts/test --full`): an adapter PEFT saves generates in `deepwasm
generate --lora` what it generates in transformers with PEFT, and one that
`deepwasm train grpo` writes loads in PEFT and generates there what it
generates in deepwasm. Greedy tokens on the default model, whose GGUF
weights transformers expands to the same numbers deepwasm computes with.

Environment as for tests/python/test_package.py.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from support import BIN, MODEL, plugin, run  # noqa: E402

PROMPT = "The three primary colors are"
MAX_TOKENS = 16
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model():
    folder, name = os.path.split(MODEL)
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(gguf.config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    return model.eval()


def deepwasm_greedy(adapter):
    out = subprocess.run(
        [BIN, "generate", "--model", MODEL, "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS),
         "--temperature", "0", "--ignore-eos", "--json", "--lora", adapter],
        capture_output=True, text=True, check=True,
    ).stdout
    row = json.loads(out)
    return row["prompt_tokens"], row["tokens"]


def peft_greedy(model, prompt_tokens):
    """The argmax token at each step, past end-of-sequence tokens too (as
    `--ignore-eos`)."""
    ids = list(prompt_tokens)
    with torch.no_grad():
        for _ in range(MAX_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt_tokens):]


def test_an_adapter_peft_saves_generates_the_same_in_deepwasm():
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=MODULES, lora_dropout=0.0,
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base_model(), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.5)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        prompt_tokens, theirs = deepwasm_greedy(d)
    peft_tokens = peft_greedy(model, prompt_tokens)
    assert theirs == peft_tokens, (theirs, peft_tokens)
    with model.disable_adapter():
        base_tokens = peft_greedy(model, prompt_tokens)
    assert base_tokens != peft_tokens, "the adapter changed nothing"


def test_an_adapter_deepwasm_trains_loads_in_peft():
    with tempfile.TemporaryDirectory() as d:
        prompts = os.path.join(d, "prompts.jsonl")
        with open(prompts, "w") as f:
            f.write(json.dumps({"prompt": "Tell me about cats."}) + "\n")
        out = os.path.join(d, "adapter")
        subprocess.run(
            [BIN, "train", "grpo", "--model", MODEL, "--prompts", prompts,
             "--reward", plugin("length-penalty"),
             "--config", 'length-penalty={"unit":"chars","max_length":40,"buffer":35}',
             "--group-size", "4", "--prompts-per-step", "1", "--max-tokens", "16",
             "--steps", "2", "--lr", "0.01", "--lora-rank", "4", "--out", out],
            capture_output=True, text=True, check=True,
        )
        prompt_tokens, ours = deepwasm_greedy(out)
        model = PeftModel.from_pretrained(base_model(), out).eval()
        theirs = peft_greedy(model, prompt_tokens)
        assert ours == theirs, (ours, theirs)
        b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert b and any(p.abs().max().item() > 0 for p in b), "training never moved B"


run(globals())
