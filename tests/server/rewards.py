"""Reward scoring, GRPO rollouts, and what the server counts: `/v1/usage`
for the tenant and `/metrics` for the operator. Run as a tenant nothing
else uses, so the counts are exact."""

import json
import re
import time

from common import MODEL, chat, client, error_of, http, plugin_bytes, run, upload

h = http("gamma")

# Seconds spent waiting for whole rollout streams, for the metrics test.
rollout_seconds = 0.0


def usage():
    r = h.get("/v1/usage")
    assert r.status_code == 200, r.text
    u = r.json()
    assert u["object"] == "usage" and u["tenant"] == "gamma", u
    return u


def test_usage_counts_tokens_and_requests():
    before = usage()
    r = chat(client("gamma"), "Say hello.", temperature=0, max_tokens=5)
    after = usage()
    assert after["requests"] == before["requests"] + 1, (before, after)
    assert after["prompt_tokens"] - before["prompt_tokens"] == r.usage.prompt_tokens
    assert after["completion_tokens"] - before["completion_tokens"] == r.usage.completion_tokens
    # Streams count when they end.
    stream = chat(
        client("gamma"),
        "Say hello.",
        temperature=0,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = [chunk for chunk in stream][-1]
    final = usage()
    assert final["completion_tokens"] - after["completion_tokens"] == last.usage.completion_tokens
    assert final["requests"] == after["requests"] + 1


def test_score_with_a_reward_plugin():
    r = upload(h, "r1", plugin_bytes("r1-format"))
    assert r.status_code == 201, r.text
    assert r.json()["world"] == "reward", r.json()
    samples = [
        {"prompt": "2+2?", "completion": "<think>2 and 2</think>4"},
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": "2+2?", "completion": "<think>a<think>b</think>"},
    ]
    r = h.post("/v1/rewards/score", json={"rewards": [{"plugin": "r1", "weight": 2.0}], "samples": samples})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list", body
    rows = body["data"]
    assert [row["index"] for row in rows] == [0, 1, 2], rows
    assert [row["rewards"]["r1"] for row in rows] == [1.0, 0.0, 0.0], rows
    assert [row["total"] for row in rows] == [2.0, 0.0, 0.0], rows
    # Strict mode wants an answer after the think block.
    r = h.post(
        "/v1/rewards/score",
        json={
            "rewards": [{"plugin": "r1", "config": {"strict": True}}],
            "samples": [{"completion": "<think>x</think>"}, {"completion": "<think>x</think> 4"}],
        },
    )
    assert [row["rewards"]["r1"] for row in r.json()["data"]] == [0.0, 1.0], r.text


def test_score_errors():
    r = h.post("/v1/rewards/score", json={"rewards": [], "samples": []})
    assert r.status_code == 400 and error_of(r)["param"] == "rewards", r.text
    r = h.post(
        "/v1/rewards/score",
        json={"rewards": [{"plugin": "nope"}], "samples": [{"completion": "x"}]},
    )
    assert r.status_code in (400, 404), r.text
    assert error_of(r)["param"] == "rewards[0].plugin", r.text
    r = h.post("/v1/rewards/score", json={"rewards": [{"plugin": "r1"}], "samples": [{}]})
    assert r.status_code == 400 and "completion" in error_of(r)["message"], r.text


ROLLOUT = {
    "model": MODEL,
    "prompts": [
        {"messages": [{"role": "user", "content": "What is 2+2?"}], "extra": {"answer": "4"}},
        {"prompt": "Think step by step: 3+4 ="},
    ],
    "group_size": 2,
    "max_tokens": 6,
    "temperature": 1.0,
    "seed": 3,
    "rewards": [{"plugin": "r1"}],
}


def rollout(body, fmt=None):
    global rollout_seconds
    body = dict(body, **({"format": fmt} if fmt else {}))
    started = time.monotonic()
    r = h.post("/v1/rollouts", json=body)
    rollout_seconds += time.monotonic() - started
    assert r.status_code == 200, r.text
    if fmt == "sse":
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        lines = [line[len("data: ") :] for line in r.text.splitlines() if line.startswith("data: ")]
    else:
        assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
        lines = [line for line in r.text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def test_rollout_streams_groups_then_a_summary():
    before = usage()
    lines = rollout(ROLLOUT)
    assert "summary" in lines[-1], lines[-1]
    groups, summary = lines[:-1], lines[-1]["summary"]
    assert sorted(g["index"] for g in groups) == [0, 1], groups
    tokens = 0
    for g in groups:
        assert len(g["completions"]) == 2, g
        assert isinstance(g["prompt"], str) and g["prompt_tokens"], g
        for comp in g["completions"]:
            assert 0 < len(comp["tokens"]) <= 6, comp
            assert len(comp["logprobs"]) == len(comp["tokens"]), comp
            assert comp["rewards"]["r1"] in (0.0, 1.0), comp
            assert comp["finish_reason"] in ("stop", "length"), comp
            assert isinstance(comp["advantage"], (int, float)), comp
            tokens += len(comp["tokens"])
        # Group advantages are centred.
        assert abs(sum(comp["advantage"] for comp in g["completions"])) < 1e-6, g
    # `extra` is echoed as given, `{}` when none (the CLI's shape too).
    by_index = {g["index"]: g for g in groups}
    assert by_index[0]["extra"] == {"answer": "4"} and by_index[1]["extra"] == {}, groups
    assert summary["prompts"] == 2 and summary["completions"] == 4, summary
    assert summary["completion_tokens"] == tokens, (summary, tokens)
    # A pass is a total at or above the threshold (default 1).
    totals = [c["total"] for g in groups for c in g["completions"]]
    assert summary["pass_threshold"] == 1.0, summary
    assert summary["pass_rate"] == sum(t >= 1.0 for t in totals) / 4, (summary, totals)
    assert summary["reward_failures"] == 0, summary
    for key in ("seconds", "generation_seconds", "reward_seconds", "tokens_per_second"):
        assert summary[key] >= 0, summary
    after = usage()
    assert after["completion_tokens"] - before["completion_tokens"] == tokens, (before, after)
    # Same seed, same samples; as SSE too.
    again = rollout(ROLLOUT, "sse")
    texts = lambda ls: sorted((g["index"], [c["text"] for c in g["completions"]]) for g in ls[:-1])
    assert texts(again) == texts(lines)
    assert "summary" in again[-1]
    # Another threshold, another pass rate: every r1 total is 0 or 1.
    low = rollout(dict(ROLLOUT, pass_threshold=0.0))[-1]["summary"]
    assert low["pass_threshold"] == 0.0 and low["pass_rate"] == 1.0, low


def test_rollout_errors():
    r = h.post("/v1/rollouts", json=dict(ROLLOUT, group_size=0))
    assert r.status_code == 400 and error_of(r)["param"] == "group_size", r.text
    r = h.post("/v1/rollouts", json=dict(ROLLOUT, prompts=[]))
    assert r.status_code == 400 and error_of(r)["param"] == "prompts", r.text
    r = h.post("/v1/rollouts", json=dict(ROLLOUT, prompts=[{"prompt": "a", "messages": []}]))
    assert r.status_code == 400 and error_of(r)["param"] == "prompts[0]", r.text
    r = h.post("/v1/rollouts", json=dict(ROLLOUT, model="gpt-4o"))
    assert r.status_code == 404, r.text


def metric_samples(text, name):
    """`(labels, value)` of every sample of a metric in the text format."""
    out = []
    for m in re.finditer(r"^" + re.escape(name) + r"\{([^}]*)\} (\S+)", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out.append((labels, float(m.group(2))))
    return out


def test_metrics_per_tenant():
    with http() as anon:
        r = anon.get("/metrics")
    assert r.status_code == 200, r.text
    text = r.text
    assert all(
        line.startswith("#") or line.startswith("deepwasm_") for line in text.splitlines() if line
    ), text

    def gamma(name):
        return {
            tuple(sorted((k, v) for k, v in labels.items() if k != "tenant")): value
            for labels, value in metric_samples(text, name)
            if labels.get("tenant") == "gamma"
        }

    requests = gamma("deepwasm_requests_total")
    ok = lambda endpoint, status="200": requests.get(
        (("endpoint", endpoint), ("status", status)), 0
    )
    assert ok("/v1/chat/completions") == 2, requests
    assert ok("/v1/rollouts") == 3, requests
    assert ok("/v1/rewards/score") == 2, requests
    assert ok("/v1/rollouts", "400") == 3 and ok("/v1/rollouts", "404") == 1, requests

    u = usage()
    assert gamma("deepwasm_prompt_tokens_total") == {(): u["prompt_tokens"]}, text
    assert gamma("deepwasm_completion_tokens_total") == {(): u["completion_tokens"]}, text
    assert gamma("deepwasm_plugin_calls_total")[()] >= 1, text
    assert gamma("deepwasm_time_to_first_token_seconds_count")[()] >= 1, text

    # A stream's duration runs to its last byte.
    durations = gamma("deepwasm_request_duration_seconds_sum")
    streamed = durations[(("endpoint", "/v1/rollouts"),)]
    assert streamed >= 0.5 * rollout_seconds, (
        f"rollout streams took {rollout_seconds:.2f} s; the metric says {streamed:.4f} s"
    )


run(globals())
