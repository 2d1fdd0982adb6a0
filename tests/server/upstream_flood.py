"""A flood over an upstream that never answers (`fake_upstream.py`'s
mode 11; this server runs with `--max-batch 1 --max-waiting 1`, a
one-second timeout and no retries): one request goes upstream, one waits,
every other is refused at once with a 503, and none stays behind."""

import time
from concurrent.futures import ThreadPoolExecutor

from common import MODEL, error_of, http, run


def chat(_):
    with http("alpha") as h:
        started = time.monotonic()
        r = h.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 11},
        )
        return r, time.monotonic() - started


def test_a_flood_is_bounded_by_the_places_it_has():
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(chat, range(6)))
    refused = [(r, t) for r, t in answers if r.status_code == 503]
    timed_out = [r for r, _ in answers if r.status_code == 504]
    assert len(refused) + len(timed_out) == 6, [(r.status_code, r.text) for r, _ in answers]
    assert len(timed_out) <= 2 and len(refused) >= 4, [r.status_code for r, _ in answers]
    for r, took in refused:
        assert "capacity" in error_of(r)["message"] and took < 1.0, (r.text, took)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with http() as anon:
            health = anon.get("/health").json()
        if health.get("running", 0) == 0 and health.get("waiting", 0) == 0:
            break
        time.sleep(0.1)
    assert health.get("running", 0) == 0 and health.get("waiting", 0) == 0, health


if __name__ == "__main__":
    run(globals())
