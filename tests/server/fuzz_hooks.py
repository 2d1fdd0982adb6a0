"""schemathesis hooks for fuzzing the server (`SCHEMATHESIS_HOOKS`).

The OpenAPI document allows requests the server refuses before any work
(a message without content, a plugin name nobody uploaded, a model it does
not serve); fuzzed as they are, almost no request would reach sampling,
plugins and generation, where a server error is likeliest. So generated
requests keep every field the fuzzer chose, except that:

- `model`, when it is a string, becomes the served model's id (an unknown
  model's 404 is tested by `openai_errors.py`);
- a message or rollout prompt without text gets some, and `top_logprobs`
  comes with `logprobs: true`;
- a named sampler or reward plugin becomes one that the fuzzing tenant
  (`DEEPWASM_FUZZ_KEY`) uploaded when these hooks loaded, so the fuzzed
  configs reach real plugins;
- the fields that set how much the model generates are capped: unbounded,
  a chat request may ask for the whole context (8k tokens) times 64
  choices, minutes of CPU each.

Everything else, including the out-of-range and wrongly typed values of
negative cases, goes through.
"""

import os

import httpx2
import schemathesis

MODEL = os.environ["DEEPWASM_SERVED_MODEL"]

GENERATING = {"/v1/chat/completions", "/v1/completions", "/v1/rollouts"}

# Integers above these are lowered to them.
CAPS = {"max_tokens": 3, "max_completion_tokens": 3, "n": 2, "best_of": 2, "group_size": 2}

MAX_PROMPTS = 2

# Plugin uploads are the component's bytes as they are.
schemathesis.serializer.alias("application/wasm", "application/octet-stream")


def upload(name, env):
    with open(os.environ[env], "rb") as f:
        data = f.read()
    r = httpx2.post(
        os.environ["DEEPWASM_URL"] + "/v1/plugins",
        params={"name": name},
        content=data,
        headers={
            "Authorization": "Bearer " + os.environ["DEEPWASM_FUZZ_KEY"],
            "Content-Type": "application/wasm",
        },
        timeout=120,
    )
    assert r.status_code in (200, 201), r.text
    return name


SAMPLER = upload("fuzz-sampler", "DEEPWASM_PLUGIN_WORD_BAN")
REWARD = upload("fuzz-reward", "DEEPWASM_PLUGIN_R1_FORMAT")


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def give_text(messages):
    if not isinstance(messages, list):
        return
    for m in messages:
        if not isinstance(m, dict):
            continue
        if m.get("role") != "assistant" and m.get("content") is None:
            m["content"] = "Hello."
        if m.get("role") == "tool" and m.get("tool_call_id") is None:
            m["tool_call_id"] = "call_0"


@schemathesis.hook
def before_call(context, case, kwargs):
    path = context.operation.path if context.operation else None
    body = case.body
    if path not in GENERATING | {"/v1/rewards/score"} or not isinstance(body, dict):
        return
    plugins(body)
    if path in GENERATING:
        generation(body)


def plugins(body):
    sampler = body.get("sampler")
    if isinstance(sampler, dict) and isinstance(sampler.get("plugin"), str):
        sampler["plugin"] = SAMPLER
    rewards = body.get("rewards")
    if isinstance(rewards, list):
        for r in rewards:
            if isinstance(r, dict) and isinstance(r.get("plugin"), str):
                r["plugin"] = REWARD


def generation(body):
    if isinstance(body.get("model"), str):
        body["model"] = MODEL
    for field, most in CAPS.items():
        if is_int(body.get(field)) and body[field] > most:
            body[field] = most
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = CAPS["max_tokens"]
    for field in ("prompts", "prompt"):
        value = body.get(field)
        if isinstance(value, list) and len(value) > MAX_PROMPTS and not all(map(is_int, value)):
            del value[MAX_PROMPTS:]
    give_text(body.get("messages"))
    if "top_logprobs" in body and body.get("logprobs") is not True:
        body["logprobs"] = True
    prompts = body.get("prompts")
    if isinstance(prompts, list):
        for p in prompts:
            if isinstance(p, dict):
                give_text(p.get("messages"))
                if p.get("prompt") is None and p.get("messages") is None:
                    p["prompt"] = "Hello."
