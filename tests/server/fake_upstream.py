"""A misbehaving upstream engine for `upstream_faults.py`: it lists one
model, and answers `POST /v1/completions` as the request's `max_tokens`
says (the front passes it through):

- 11: accepts the request and never answers;
- 12: `200 OK` and a body of junk that is no event stream;
- 13: `503` with `Retry-After: 1`, every time;
- 14: a stream of two pieces, then the connection closes mid-way;
- 15: `503` once, then a good stream (counts the tries);
- 17: a stream that never ends (a piece every millisecond);
- anything else: a good stream of three pieces and usage.

`GET /tries` answers how many completion requests came for each mode.
Prints `listening on PORT` once it is."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

tries = {}
lock = threading.Lock()


def event(obj):
    return ("data: " + json.dumps(obj) + "\n\n").encode()


def piece(text, finish=None):
    return event(
        {
            "id": "cmpl-fake",
            "object": "text_completion",
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        }
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, body, extra=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self.send_json(
                200,
                {"object": "list", "data": [{"id": "fake", "object": "model", "max_model_len": 2048}]},
            )
        elif self.path == "/tries":
            with lock:
                self.send_json(200, {str(k): v for k, v in tries.items()})
        else:
            self.send_json(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = body.get("max_tokens")
        with lock:
            tries[mode] = tries.get(mode, 0) + 1
            n = tries[mode]
        if mode == 11:
            time.sleep(120)
            return
        if mode == 13 or (mode == 15 and n == 1):
            self.send_json(503, {"error": {"message": "busy"}}, [("Retry-After", "1")])
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        if mode == 12:
            self.wfile.write(b"this is not an event stream\n{{{\n\n")
            self.wfile.flush()
            return
        if mode == 17:
            try:
                while True:
                    self.wfile.write(piece("x"))
                    self.wfile.flush()
                    time.sleep(0.001)
            except OSError:
                return
        self.wfile.write(piece("One"))
        self.wfile.flush()
        self.wfile.write(piece(", two"))
        self.wfile.flush()
        if mode == 14:
            time.sleep(0.2)
            self.close_connection = True
            return
        self.wfile.write(piece(", three", "stop"))
        self.wfile.write(
            event({"id": "cmpl-fake", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
        )
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
