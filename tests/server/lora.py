"""LoRA adapters served beside the base model (`serve --lora fmt=DIR`).

The test passes, from an in-process run of the same model: the prompt's
token ids, and the greedy texts of the base and of the adapter applied to
the whole model. Through the server, by the official SDK:
- `/v1/models` lists `BASE:fmt` with the base as its parent;
- each request gets its model's text, whether it runs alone, after the
  other model's request of the same prompt (a cache built under one
  adapter never serves another), or in one batch with the other's;
- an unknown adapter is a 404 `model_not_found` that names the adapters.
"""

import json
import os
import threading

import openai

from common import MODEL, client

PROMPT = json.loads(os.environ["LORA_PROMPT"])
EXPECT = {
    MODEL: os.environ["LORA_BASE_TEXT"],
    MODEL + ":fmt": os.environ["LORA_ADAPTER_TEXT"],
}
MAX_TOKENS = int(os.environ["LORA_MAX_TOKENS"])

sdk = client("alpha")

listed = {m.id: m for m in sdk.models.list().data}
assert MODEL + ":fmt" in listed, list(listed)
assert listed[MODEL + ":fmt"].model_extra["parent"] == MODEL
assert sdk.models.retrieve(MODEL + ":fmt").id == MODEL + ":fmt"
assert EXPECT[MODEL] != EXPECT[MODEL + ":fmt"], "the adapter changes nothing"


def complete(model):
    r = sdk.completions.create(
        model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )
    return r.choices[0].text


# One after the other, each prompt first seen by the other model.
for model in [MODEL + ":fmt", MODEL, MODEL + ":fmt", MODEL]:
    got = complete(model)
    assert got == EXPECT[model], (model, got, EXPECT[model])

# Together: sequences of both share the batch.
results, errors = {}, []


def worker(i, model):
    try:
        results[i] = (model, complete(model))
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))


threads = [
    threading.Thread(target=worker, args=(i, MODEL + ":fmt" if i % 2 else MODEL))
    for i in range(6)
]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
for model, got in results.values():
    assert got == EXPECT[model], (model, got, EXPECT[model])

# Chat through the adapter works too.
chat = sdk.chat.completions.create(
    model=MODEL + ":fmt",
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=8,
    temperature=0,
)
assert chat.choices[0].message.content is not None

try:
    sdk.completions.create(model=MODEL + ":nope", prompt="x", max_tokens=1)
    raise AssertionError("an unknown adapter was served")
except openai.NotFoundError as e:
    body = e.body
    assert body["code"] == "model_not_found", body
    assert MODEL + ":fmt" in body["message"], body
print("lora: base and adapter served side by side")
