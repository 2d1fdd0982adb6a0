"""Long prompts share the batch instead of holding it. Run by
`tests/server.rs` against a fresh server (default --step-tokens): while
tenant `alpha` streams a chat,

- a chat of ~2,300 prompt tokens from `beta` is prefilled in chunks: the
  stream keeps receiving tokens until the long chat's first token, and a
  short chat sent after the long one starts first, not queued behind it;
- a long chat whose client goes away during its prefill leaves the batch
  at once (the `deepwasm_batch_running` gauge drops), instead of running
  its prefill to the end.
"""

import json
import re
import socket
import threading
import time

from common import MODEL, URL, http, key, run

LONG = "Summarise these notes in one sentence.\n\n" + "".join(
    f"Note {i}: the keeper walked to the lighthouse and counted the ships at sea. "
    for i in range(145)
)


def body(content, max_tokens, **kwargs):
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **kwargs,
    }


class Stream(threading.Thread):
    """A streaming chat read on its own thread: when each chunk with text
    arrived. `stop` ends it early (the connection is closed)."""

    def __init__(self, tenant, request):
        super().__init__(daemon=True)
        self.tenant, self.request = tenant, request
        self.arrivals, self.sent = [], None
        self.stop, self.error = threading.Event(), None

    def run(self):
        try:
            with http(self.tenant) as h:
                self.sent = time.monotonic()
                with h.stream("POST", "/v1/chat/completions", json=self.request) as r:
                    assert r.status_code == 200, r.read()
                    for line in r.iter_lines():
                        if self.stop.is_set():
                            return
                        if line.startswith("data: {") and '"content":"' in line:
                            if not re.search(r'"content":""', line):
                                self.arrivals.append(time.monotonic())
        except Exception as e:  # reported by the test that reads it
            self.error = e

    def first(self):
        return self.arrivals[0] if self.arrivals else None


def running():
    with http() as anon:
        text = anon.get("/metrics").text
    m = re.search(r"^deepwasm_batch_running (\S+)$", text, re.M)
    assert m, text
    return int(float(m.group(1)))


def wait_for(what, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.02)
    return False


def streaming():
    """A long greedy stream from `alpha`, under way."""
    s = Stream("alpha", body("Tell me about the history of bicycles.", 4000, ignore_eos=True))
    s.start()
    assert wait_for(lambda: len(s.arrivals) >= 10, 60), f"the stream never started: {s.error}"
    return s


def test_a_long_prompt_holds_neither_a_stream_nor_a_short_chat():
    s = streaming()
    try:
        long = Stream("beta", body(LONG, 1))
        long.start()
        assert wait_for(lambda: long.sent is not None, 10)
        time.sleep(0.3)
        short = Stream("beta", body("Say hi.", 2))
        short.start()
        long.join(120)
        short.join(120)
        assert short.first() and long.first(), (short.error, long.error)
        assert short.first() < long.first(), (
            f"the short chat's first token came {short.first() - long.first():.2f} s "
            "after the long chat's"
        )
        during = [t for t in s.arrivals if long.sent < t < long.first()]
        took = long.first() - long.sent
        # One pass over the prompt would leave the stream without a token
        # for the whole prefill.
        assert len(during) >= 20, f"{len(during)} stream tokens in the {took:.1f} s prefill"
    finally:
        s.stop.set()


def test_a_client_that_leaves_during_prefill_frees_its_place():
    leave_during_prefill("/v1/chat/completions", body("Once more. " + LONG, 1))


def test_clients_of_the_other_endpoints_that_leave_free_their_place_too():
    """A streamed response, an embedding and a scored prompt: each long,
    each abandoned while its prompt goes in."""
    leave_during_prefill(
        "/v1/responses",
        {"model": MODEL, "input": "Responses. " + LONG, "max_output_tokens": 1, "stream": True},
    )
    leave_during_prefill("/v1/embeddings", {"model": MODEL, "input": "Embedded. " + LONG})
    leave_during_prefill(
        "/v1/completions",
        {"model": MODEL, "prompt": "Scored. " + LONG, "max_tokens": 0, "echo": True, "logprobs": 1},
    )


def leave_during_prefill(path, request):
    s = streaming()
    try:
        assert wait_for(lambda: running() == 1, 10), running()
        # A raw connection, so that closing it is the client going away.
        host, port = URL.removeprefix("http://").split(":")
        # Not the prompt the test before sent: its cache may still be kept,
        # and a copy would need no prefill to abandon.
        payload = json.dumps(request).encode()
        conn = socket.create_connection((host, int(port)))
        conn.sendall(
            (
                f"POST {path} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                f"Authorization: Bearer {key('beta')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n"
            ).encode()
            + payload
        )
        assert wait_for(lambda: running() == 2, 10), f"the long {path} request never joined the batch"
        conn.close()
        left = time.monotonic()
        # One pass over the prompt would hold its place for the whole
        # prefill (~13 s on two cores).
        assert wait_for(lambda: running() == 1, 3), (
            f"the abandoned {path} prefill still ran {time.monotonic() - left:.1f} s later"
        )
    finally:
        s.stop.set()


if __name__ == "__main__":
    run(globals())
