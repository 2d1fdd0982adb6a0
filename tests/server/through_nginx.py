"""Clients through nginx (docs/deployment/nginx.conf) in front of two
replicas on one database, driven by `tests/replicas.rs`:

- `both`: uploads, lists, scoring, chat and streams through nginx work,
  and both replicas took a share of the requests;
- `one`: after replica A was killed, every request through nginx is still
  served (by B), streams included, and usage is whole.

`DEEPWASM_URL` is nginx; `DEEPWASM_URL_A` and `DEEPWASM_URL_B` the replicas.
"""

import os
import re
import sys

import httpx2

from common import MODEL, TIMEOUT, content_id, key, plugin_bytes, stream_events, upload, delta_text
from common import URL as NGINX

URL_A = os.environ.get("DEEPWASM_URL_A")
URL_B = os.environ["DEEPWASM_URL_B"].rstrip("/")


def http(url, tenant=None):
    headers = {"Authorization": "Bearer " + key(tenant)} if tenant else {}
    return httpx2.Client(base_url=url, headers=headers, timeout=TIMEOUT)


def served(url, tenant):
    """Requests a replica answered for `tenant`, from its /metrics."""
    with http(url) as h:
        text = h.get("/metrics").text
    total = 0
    for line in text.splitlines():
        if line.startswith("deepwasm_requests_total{") and f'tenant="{tenant}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def chat_body(**kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    body.update(kw)
    return body


def work(tenant, rounds):
    data = plugin_bytes("r1-format")
    with http(NGINX, tenant) as h:
        r = upload(h, "r1", data)
        assert r.status_code in (200, 201) and r.json()["id"] == content_id(data), r.text
        for _ in range(rounds):
            assert [p["name"] for p in h.get("/v1/plugins").json()["data"]] == ["r1"]
            r = h.post(
                "/v1/rewards/score",
                json={"rewards": [{"plugin": "r1"}], "samples": [{"completion": "<think>a</think> b"}]},
            )
            assert r.status_code == 200 and r.json()["data"][0]["rewards"]["r1"] == 1.0, r.text
            r = h.post("/v1/chat/completions", json=chat_body())
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
            events = list(stream_events(h, "/v1/chat/completions", chat_body(stream=True)))
            assert len(events) > 2 and "".join(delta_text(e) for e in events), events
        usage = h.get("/v1/usage").json()
        assert usage["requests"] >= 2 * rounds, usage


def both():
    work("alpha", 4)
    a, b = served(URL_A, "alpha"), served(URL_B, "alpha")
    print(f"replica A answered {a} of alpha's requests, B {b}")
    assert a > 0 and b > 0, (a, b)


def one():
    before = served(URL_B, "beta")
    work("beta", 3)
    after = served(URL_B, "beta")
    # Every one of them reached B: A is gone.
    assert after - before >= 3 * 4 + 2, (before, after)


if __name__ == "__main__":
    {"both": both, "one": one}[sys.argv[1]]()
