"""A server keeping each step's logits where the model computed them
(`tests/server.rs` starts it with `--logits device`, the GPU default, here
on the CPU): chats greedy, sampled and with logprobs, through a sampler
plugin too, and `/metrics` shows rows kept on the device and only small
answers moved, never a whole row."""

import re

from common import MODEL, http, run

VOCAB_BYTES = 49152 * 4


def metrics():
    with http() as anon:
        text = anon.get("/metrics").text
    found = {}
    for name in ["to_host_bytes", "to_device_bytes", "device_rows", "whole_rows_copied"]:
        m = re.search(r"^deepwasm_logits_" + name + r"_total (\S+)$", text, re.M)
        assert m, f"no deepwasm_logits_{name}_total in\n{text}"
        found[name] = float(m.group(1))
    return found


def chat(**extra):
    with http("alpha") as h:
        r = h.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Name three colours."}],
                "max_tokens": 16,
                "ignore_eos": True,
                **extra,
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 16, body
    return body


def test_generation_moves_answers_not_rows():
    before = metrics()
    first = chat(temperature=0)["choices"][0]["message"]["content"]
    assert chat(temperature=0)["choices"][0]["message"]["content"] == first
    chat(temperature=0.8, top_p=0.9, seed=7, presence_penalty=0.4)
    scored = chat(temperature=0, logprobs=True, top_logprobs=3)
    lps = scored["choices"][0]["logprobs"]["content"]
    assert all(len(t["top_logprobs"]) == 3 for t in lps), lps
    assert all(t["logprob"] <= 0 for t in lps), lps
    after = metrics()
    rows = after["device_rows"] - before["device_rows"]
    assert rows >= 4 * 16, (before, after)
    assert after["whole_rows_copied"] == before["whole_rows_copied"], (before, after)
    moved = after["to_host_bytes"] - before["to_host_bytes"]
    assert moved / rows < VOCAB_BYTES / 10, f"{moved / rows:.0f} bytes per row"


def test_the_same_seed_gives_the_same_text():
    a = chat(temperature=0.9, seed=3)
    b = chat(temperature=0.9, seed=3)
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


if __name__ == "__main__":
    run(globals())
