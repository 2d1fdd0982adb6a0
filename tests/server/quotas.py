"""Tenants' quotas: a tenant over its concurrent requests or its tokens per
minute gets 429 with a Retry-After, and other tenants are not affected."""

import time

import openai

from common import chat, client, http, run

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
        assert e.type == "rate_limit_error", e.body
        assert "requests running" in e.message, e.message
        assert retry_after(e) >= 1
    else:
        raise AssertionError("a second concurrent request was admitted")
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
        assert e.code == "rate_limit_exceeded", e.body
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


run(globals())
