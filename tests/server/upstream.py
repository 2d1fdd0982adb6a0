"""A server generating on an upstream engine (`tests/server.rs` starts a
second deepwasm, the upstream, at `DEEPWASM_UPSTREAM_URL`, and this one
with `--upstream` and the upstream's key in an environment variable).

Greedy chats through it are the upstream's own, token for token; streams,
`n`, rewards and rollouts work; the tenants' quotas count the upstream's
usage; what needs the model's numbers is refused with the reason; and the
upstream's key shows nowhere."""

import json
import os

import httpx2
from common import MODEL, delta_text, error_of, http, plugin_bytes, run, small_rollout, stream_events, upload

UPSTREAM = os.environ["DEEPWASM_UPSTREAM_URL"]
UPSTREAM_KEY = os.environ["DEEPWASM_UPSTREAM_KEY"]


def chat_body(content, **extra):
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12,
        "temperature": 0,
        **extra,
    }


def test_a_greedy_chat_is_the_upstreams_own():
    body = chat_body("What is the capital of France?")
    with http("alpha") as h:
        front = h.post("/v1/chat/completions", json=body)
    assert front.status_code == 200, front.text
    with httpx2.Client(
        base_url=UPSTREAM, headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}, timeout=300
    ) as up:
        direct = up.post("/v1/chat/completions", json=body)
    assert direct.status_code == 200, direct.text
    f, d = front.json(), direct.json()
    assert f["choices"][0]["message"]["content"] == d["choices"][0]["message"]["content"], (f, d)
    assert f["usage"] == d["usage"], (f["usage"], d["usage"])
    assert f["choices"][0]["finish_reason"] == d["choices"][0]["finish_reason"]


def test_a_stream_arrives_in_pieces_with_usage():
    body = chat_body("Count to five.", stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    with http("alpha") as h:
        for event in stream_events(h, "/v1/chat/completions", body):
            if delta_text(event):
                pieces.append(delta_text(event))
            usage = event.get("usage") or usage
    assert len(pieces) > 1, pieces
    assert usage and usage["completion_tokens"] == 12, usage


def test_completions_return_exact_token_ids():
    with http("alpha") as h:
        r = h.post(
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": "One, two, three,",
                "max_tokens": 6,
                "temperature": 0,
                "ignore_eos": True,
                "logprobs": 0,
                "return_tokens_as_token_ids": True,
            },
        )
    assert r.status_code == 200, r.text
    tokens = r.json()["choices"][0]["logprobs"]["tokens"]
    assert len(tokens) == 6 and all(t.startswith("token_id:") for t in tokens), tokens


def test_n_and_seeds_give_several_choices():
    body = chat_body("Name a fruit.", n=3, temperature=1.0, seed=5)
    with http("alpha") as h:
        r = h.post("/v1/chat/completions", json=body)
        again = h.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    texts = [c["message"]["content"] for c in r.json()["choices"]]
    assert len(texts) == 3
    assert texts == [c["message"]["content"] for c in again.json()["choices"]], "seeded"


def test_rewards_score_completions_made_upstream():
    with http("alpha") as h:
        up = upload(h, "r1-format-up", plugin_bytes("r1-format"))
        assert up.status_code == 201, up.text
        r = h.post(
            "/v1/chat/completions",
            json=chat_body(
                "Think, then answer: 2+2?",
                n=2,
                best_of=3,
                temperature=0.9,
                seed=3,
                rewards=[{"plugin": "r1-format-up"}],
            ),
        )
    assert r.status_code == 200, r.text
    for c in r.json()["choices"]:
        assert "r1-format-up" in c["reward"]["rewards"], c


def test_a_rollout_runs_its_groups_upstream():
    with http("alpha") as h:
        if h.get("/v1/plugins/r1-format-up").status_code != 200:
            assert upload(h, "r1-format-up", plugin_bytes("r1-format")).status_code == 201
        group, summary = small_rollout(h, "r1-format-up")
    tokens = 0
    for comp in group["completions"]:
        # The upstream's own log-probabilities of the tokens it chose.
        assert all(isinstance(l, float) and l <= 0 for l in comp["logprobs"]), comp
        assert comp["rewards"]["r1-format-up"] in (0.0, 1.0), comp
        tokens += len(comp["tokens"])
    assert summary["completion_tokens"] == tokens, summary


def agent_run(config):
    delta = http("delta")
    for name, plugin in [("calculator", "CALCULATOR"), ("react-agent", "REACT_AGENT")]:
        r = upload(delta, name, plugin_bytes(plugin))
        assert r.status_code in (200, 201), r.text
    r = delta.post(
        "/v1/agents/react-agent/runs",
        json={"task": "What is 17 times 23?", "config": config, "stream": False},
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_an_agent_runs_its_turns_upstream():
    # Tool calls in the model's text are parsed here, as a local model's.
    out = agent_run({"first_tool_choice": "auto", "max_steps": 3, "max_tokens": 48})
    last = out["transcript"][-1]
    assert last["type"] in ("finished", "failed"), out
    assert out["stats"]["steps"] >= 1, out
    turns = [e for e in out["transcript"] if e["type"] == "model_turn"]
    assert turns and all(t["completion_tokens"] > 0 for t in turns), out


def test_an_agents_required_call_says_why_it_cannot_be_steered():
    out = agent_run({"first_tool_choice": "required", "max_steps": 2, "max_tokens": 48})
    assert out["transcript"][-1]["type"] == "failed", out
    assert "upstream" in json.dumps(out["transcript"]), out


def test_a_json_schema_is_enforced_upstream():
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Paris", "Lyon", "Marseille"]},
            "capital": {"type": "boolean"},
        },
        "required": ["city", "capital"],
        "additionalProperties": False,
    }
    body = chat_body(
        "Give the largest city of France as JSON.",
        max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    with http("alpha") as h:
        r = h.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    value = json.loads(choice["message"]["content"])
    assert set(value) == {"city", "capital"} and isinstance(value["capital"], bool), value


def test_what_needs_the_models_numbers_is_refused_with_the_reason():
    with http("alpha") as h:
        cases = [
            (
                "/v1/completions",
                {"model": MODEL, "prompt": "Hi", "max_tokens": 0, "echo": True, "logprobs": 1},
            ),
            ("/v1/embeddings", {"model": MODEL, "input": "Hi"}),
            (
                "/v1/chat/completions",
                chat_body("Hi", logprobs=True, top_logprobs=3),
            ),
            ("/v1/chat/completions", chat_body("Hi", sampler={"plugin": "word-ban"})),
        ]
        for path, body in cases:
            r = h.post(path, json=body)
            assert r.status_code == 400, (path, r.text)
            e = error_of(r)
            assert e["code"] == "unsupported_over_upstream", (path, e)
            assert "upstream" in e["message"], (path, e)


def test_a_tenants_quota_counts_the_upstreams_tokens():
    # `metered` may spend 40 tokens a minute: one chat of ~40 spends it.
    with http("metered") as h:
        first = h.post("/v1/chat/completions", json=chat_body("Say hello.", max_tokens=16))
        assert first.status_code == 200, first.text
        second = h.post("/v1/chat/completions", json=chat_body("Say hello.", max_tokens=16))
    assert second.status_code == 429, second.text
    assert int(second.headers["retry-after"]) >= 1


def test_the_upstreams_key_shows_nowhere():
    with http() as anon:
        metrics = anon.get("/metrics").text
        models = anon.get("/v1/models").text
    assert UPSTREAM_KEY not in metrics and UPSTREAM_KEY not in models


if __name__ == "__main__":
    run(globals())
