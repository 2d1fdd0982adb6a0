"""A server in front of a misbehaving upstream (`fake_upstream.py`, at
`DEEPWASM_UPSTREAM_URL`; the front runs with `--upstream-timeout-secs 1`
and one retry): each fault is a clear OpenAI-shaped 502, 503 or 504, in
bounded time, retried only while nothing was streamed, and leaves no
request running."""

import os
import time

import httpx2
from common import MODEL, delta_text, error_of, http, run, stream_events

UPSTREAM = os.environ["DEEPWASM_UPSTREAM_URL"]


def chat(mode, **extra):
    with http("alpha") as h:
        started = time.monotonic()
        r = h.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Count."}],
                "max_tokens": mode,
                **extra,
            },
        )
        return r, time.monotonic() - started


def tries(mode):
    return httpx2.get(UPSTREAM + "/tries").json().get(str(mode), 0)


def test_a_good_stream_passes_through():
    r, _ = chat(20)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "One, two, three", body
    assert body["usage"]["completion_tokens"] == 3, body


def test_output_that_ignores_the_response_format_is_a_502():
    # The fake streams "One, two, three" whatever it is asked.
    r, _ = chat(20, response_format={"type": "json_object"})
    assert r.status_code == 502, r.text
    e = error_of(r)
    assert e["code"] == "upstream_error" and "response_format" in e["message"], e


def test_an_upstream_that_never_answers_is_a_504_in_bounded_time():
    r, took = chat(11)
    assert r.status_code == 504, r.text
    e = error_of(r)
    assert e["code"] == "upstream_timeout" and "upstream" in e["message"], e
    # One second per try, two tries.
    assert took < 10, took
    assert tries(11) == 2


def test_an_upstream_that_never_stops_is_cut_at_what_max_tokens_allows():
    r, took = chat(17)
    assert r.status_code == 502, r.text
    assert "more than" in error_of(r)["message"], r.text
    assert took < 10, took


def test_junk_is_a_502():
    r, _ = chat(12)
    assert r.status_code == 502, r.text
    assert error_of(r)["code"] == "upstream_error"


def test_a_busy_upstream_is_a_503_with_retry_after():
    r, _ = chat(13)
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert tries(13) == 2, "one retry"


def test_a_retry_that_succeeds_is_not_seen():
    r, _ = chat(15)
    assert r.status_code == 200, r.text
    assert tries(15) == 2


def test_a_stream_cut_midway_fails_the_request_without_a_retry():
    r, _ = chat(14)
    assert r.status_code == 502, r.text
    assert tries(14) == 1, "pieces had come: not retried"
    # Streamed to the client: the pieces, then an error event.
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count."}],
        "max_tokens": 14,
        "stream": True,
    }
    with http("alpha") as h:
        events = list(stream_events(h, "/v1/chat/completions", body))
    assert any("error" in e for e in events), events
    assert "".join(map(delta_text, events)).startswith("One"), events


def test_nothing_is_left_running():
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with http() as anon:
            health = anon.get("/health").json()
        if health.get("running", 0) == 0:
            break
        time.sleep(0.1)
    assert health.get("running", 0) == 0, health
    # The tenant allowed one request at a time is served at once.
    with http("single") as h:
        r = h.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20},
        )
    assert r.status_code == 200, r.text


if __name__ == "__main__":
    run(globals())
