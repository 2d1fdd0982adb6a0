"""A deepwasm server generating on llama.cpp's llama-server (at
`DEEPWASM_PEER_URL`, serving the same GGUF file): greedy text through it is
llama-server's own for the same prompt tokens, and streams, `n` with seeds,
rewards and rollouts work on top."""

import json
import os

import httpx2
from common import MODEL, delta_text, http, plugin_bytes, run, small_rollout, stream_events, upload

PEER = os.environ["DEEPWASM_PEER_URL"]


def test_greedy_text_is_llama_servers_own():
    prompt = "The three primary colours are"
    with http("alpha") as h:
        front = h.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True},
        )
        assert front.status_code == 200, front.text
        ids = h.post("/tokenize", json={"model": MODEL, "prompt": prompt}).json()["tokens"]
    direct = httpx2.post(
        PEER + "/v1/completions",
        json={"prompt": ids, "max_tokens": 12, "temperature": 0, "ignore_eos": True},
        timeout=300,
    )
    assert direct.status_code == 200, direct.text
    assert front.json()["choices"][0]["text"] == direct.json()["choices"][0]["text"], (
        front.json(),
        direct.json(),
    )
    assert front.json()["usage"]["completion_tokens"] == 12


def test_a_chat_streams_in_pieces():
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 12,
        "stream": True,
    }
    with http("alpha") as h:
        pieces = [t for t in map(delta_text, stream_events(h, "/v1/chat/completions", body)) if t]
    assert len(pieces) > 1, pieces


def test_a_json_schema_is_enforced_by_llama_server():
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    with http("alpha") as h:
        r = h.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Name the capital of France as JSON."}],
                "max_tokens": 32,
                "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
            },
        )
    assert r.status_code == 200, r.text
    value = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(value) == {"city"}, value


def test_best_of_with_rewards_and_a_rollout():
    with http("alpha") as h:
        assert upload(h, "r1", plugin_bytes("r1-format")).status_code == 201
        r = h.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Think, then answer: 2+2?"}],
                "max_tokens": 12,
                "n": 2,
                "best_of": 3,
                "temperature": 0.9,
                "seed": 3,
                "rewards": [{"plugin": "r1"}],
            },
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 2
        _, summary = small_rollout(h, "r1")
    assert summary["completions"] == 3, summary


if __name__ == "__main__":
    run(globals())
