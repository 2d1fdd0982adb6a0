"""The upstream (process `DEEPWASM_UPSTREAM_PID`) is killed while a client
streams a long completion through this server: the client gets what had
come, then an error event naming the upstream, and this server is left
with nothing running and answers the next request at once (a 502, the
upstream being gone)."""

import os
import signal
import time

from common import MODEL, delta_text, error_of, http, run, stream_events


def test_a_stream_ends_with_an_error_when_the_upstream_dies():
    pid = int(os.environ["DEEPWASM_UPSTREAM_PID"])
    pieces, errors = [], []
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with http("alpha") as h:
        for event in stream_events(h, "/v1/chat/completions", body):
            if "error" in event:
                errors.append(event["error"])
            elif delta_text(event):
                pieces.append(delta_text(event))
                if len(pieces) == 3:
                    os.kill(pid, signal.SIGKILL)
    assert len(pieces) >= 3, pieces
    assert errors and "upstream" in errors[0]["message"], errors
    started = time.monotonic()
    with http("alpha") as h:
        r = h.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        health = h.get("/health").json()
    assert r.status_code == 502, r.text
    assert error_of(r)["code"] == "upstream_error"
    assert time.monotonic() - started < 30
    assert health.get("running", 0) == 0, health


if __name__ == "__main__":
    run(globals())
