"""Tenants' quotas: a tenant over its concurrent requests or its tokens per
minute gets 429 with a Retry-After, and other tenants are not affected."""

import threading
import time

import httpx2
import openai

from common import MODEL, chat, client, fresh_copy, http, plugin_bytes, run, upload

PROMPT = "Tell me a long story about a dragon."


def retry_after(e):
    value = e.response.headers.get("retry-after")
    assert value is not None and value.isdigit(), e.response.headers
    return int(value)


def test_concurrent_requests_over_the_limit_are_429():
    # `single` may run one request at a time.
    c = client("single")
    stream = chat(c, PROMPT, temperature=0, max_tokens=48, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant", first
    try:
        chat(c, "hi", max_tokens=2)
    except openai.RateLimitError as e:
        assert e.status_code == 429 and e.code == "rate_limit_exceeded", e.body
        assert e.type == "requests", e.body
        assert "requests running" in e.message, e.message
        assert retry_after(e) >= 1
    else:
        raise AssertionError("a second concurrent request was admitted")
    # Tokenizing (up to a body's worth of text, on a thread of its own)
    # takes a place too, so a flood of it takes no more threads than that.
    with http("single") as h:
        r = h.post("/tokenize", json={"prompt": "hi"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
        r = h.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
        assert r.status_code == 429, r.text
    # Another tenant is served meanwhile.
    assert chat(client("alpha"), "hi", max_tokens=2).choices
    for _ in stream:
        pass
    # The place is free again once the stream is done (the server lets it
    # go just after the last event, so allow it a moment).
    deadline = time.monotonic() + 5
    while True:
        try:
            assert chat(c, "hi", max_tokens=2).choices
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the place was not freed after the stream"
            time.sleep(0.05)


def test_tokens_per_minute_over_the_limit_are_429():
    # `metered` may use 40 tokens a minute; the first request passes (the
    # quota is checked before a request, counted after it) and spends more.
    c = client("metered")
    r = chat(c, PROMPT, temperature=0, max_tokens=30)
    assert r.usage.total_tokens > 40, r.usage
    try:
        chat(c, "hi", max_tokens=2)
    except openai.RateLimitError as e:
        assert e.code == "rate_limit_exceeded" and e.type == "tokens", e.body
        assert "tokens per minute" in e.message, e.message
        assert 1 <= retry_after(e) <= 61, e.response.headers
    else:
        raise AssertionError("a request over the tokens per minute was admitted")
    # Rollouts and scoring are admitted the same way.
    with http("metered") as h:
        r = h.post(
            "/v1/rollouts",
            json={"prompts": [{"prompt": "x"}], "group_size": 1, "max_tokens": 1},
        )
        assert r.status_code == 429 and "retry-after" in r.headers, r.text
    assert chat(client("alpha"), "hi", max_tokens=2).choices


def test_an_abandoned_scoring_keeps_its_place_until_it_ends():
    # `single` runs one request at a time. Its scoring of looping samples
    # (each stopped by its fuel) goes on after the client gives up, and
    # holds the place until it ends: abandoning requests cannot pile up
    # scoring threads.
    with http("single") as h:
        assert upload(h, "hostile", plugin_bytes("hostile-reward")).status_code == 201
    samples = [{"prompt": "p", "completion": f"LOOP {i}"} for i in range(48)]
    body = {"rewards": [{"plugin": "hostile"}], "samples": samples}
    with http("single") as h:
        try:
            h.post("/v1/rewards/score", json=body, timeout=0.3)
        except httpx2.TimeoutException:
            pass
        else:
            raise AssertionError("the scoring was expected to outlast the client")
    with http("single") as h:
        r = h.post("/v1/rewards/score", json={"rewards": [{"plugin": "hostile"}], "samples": []})
        assert r.status_code == 429 and "requests running" in r.text, r.text
        deadline = time.monotonic() + 60
        while True:
            r = h.post(
                "/v1/rewards/score",
                json={"rewards": [{"plugin": "hostile"}], "samples": [{"completion": "fine"}]},
            )
            if r.status_code != 429:
                break
            assert time.monotonic() < deadline, "the place was never freed"
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["rewards"]["hostile"] == 1.0, r.text



def test_uploads_compile_one_at_a_time_per_tenant():
    # The JSON-schema sampler (llguidance inside) compiles for seconds: a
    # second upload by the same tenant meanwhile is told to come back,
    # while another tenant's upload is admitted.
    big = plugin_bytes("json-schema")
    results = {}

    def first():
        with http("single") as h:
            results["first"] = upload(h, "slow-compile", fresh_copy(big))

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.3)
    with http("single") as h:
        r = upload(h, "second", fresh_copy(plugin_bytes("word-ban")))
    assert r.status_code == 429, r.text
    assert "already uploading a plugin" in r.json()["error"]["message"], r.text
    assert r.headers.get("retry-after") == "1", r.headers
    with http("alpha") as h:
        r = upload(h, "meanwhile", fresh_copy(plugin_bytes("word-ban")))
    assert r.status_code == 201, r.text
    t.join()
    assert results["first"].status_code == 201, results["first"].text
    # Done: the tenant may upload again.
    with http("single") as h:
        assert upload(h, "second", fresh_copy(plugin_bytes("word-ban"))).status_code == 201


run(globals())
