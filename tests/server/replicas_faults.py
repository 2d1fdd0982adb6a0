"""Faults of replicas on a shared database, driven by `tests/replicas.rs`:

- `after-upload-kill NAME ID`: replica A was killed while uploading plugin
  NAME (content id ID) for alpha; B lists it whole or not at all, uses it,
  and takes the upload again if it was lost.
- `after-stream-kill TTL`: A was killed mid-stream for `single` (one
  request at a time); B serves others at once, and `single` again once
  A's lease has expired (TTL seconds).
- `serve-then N` / `counted N`: A serves N chats for gamma and is then
  stopped cleanly; B's usage counts all N.
- `load SECONDS`: chat from both replicas while the database is stopped
  and started again under it: only 200s and 503s with Retry-After, 503s
  while it is away, 200s once it is back, and usage that counts every 200,
  nothing lost, the same on both replicas.

`DEEPWASM_URL` is replica A, `DEEPWASM_URL_B` replica B.
"""

import json
import os
import sys
import threading
import time

import httpx2

from common import MODEL, TIMEOUT, content_id, error_of, key, plugin_path, upload
from common import URL as URL_A

URL_B = os.environ["DEEPWASM_URL_B"].rstrip("/")


def http(url, tenant):
    return httpx2.Client(
        base_url=url, headers={"Authorization": "Bearer " + key(tenant)}, timeout=TIMEOUT
    )


def score(h, name):
    samples = [{"completion": "<think>x</think> 4"}, {"completion": "4"}]
    r = h.post("/v1/rewards/score", json={"rewards": [{"plugin": name}], "samples": samples})
    assert r.status_code == 200, r.text
    assert [row["rewards"][name] for row in r.json()["data"]] == [1.0, 0.0], r.text


def after_upload_kill(name, pid, path):
    with http(URL_B, "alpha") as b:
        listed = {p["name"]: p for p in b.get("/v1/plugins").json()["data"]}
        if name in listed:
            assert listed[name]["id"] == pid, listed[name]
            print(f"{name}: committed before the kill; B uses it")
        else:
            assert b.get(f"/v1/plugins/{pid}").status_code == 404
            print(f"{name}: not committed; B takes the upload again")
            with open(path, "rb") as f:
                r = upload(b, name, f.read())
            assert r.status_code == 201 and r.json()["id"] == pid, r.text
        score(b, name)


def chat_body(text, max_tokens=2):
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }


def after_stream_kill(ttl):
    with http(URL_B, "alpha") as h:
        r = h.post("/v1/chat/completions", json=chat_body("hi"))
        assert r.status_code == 200, r.text
    started = time.monotonic()
    refused = 0
    with http(URL_B, "single") as h:
        while True:
            r = h.post("/v1/chat/completions", json=chat_body("hi"))
            if r.status_code == 200:
                break
            assert r.status_code == 429, r.text
            assert "all replicas" in error_of(r)["message"], r.text
            refused += 1
            assert time.monotonic() - started < ttl + 15, "the dead replica's lease never expired"
            time.sleep(0.25)
    print(f"single: {refused} refusals, served again after {time.monotonic() - started:.1f} s")


def usage(url, tenant):
    with http(url, tenant) as h:
        r = h.get("/v1/usage")
        return r.status_code, r.json() if r.status_code == 200 else r.text


def load(seconds):
    tenant = "gamma"
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    results = []  # (time, replica, status, tokens)
    problems = []

    def worker(url, stream):
        with http(url, tenant) as h:
            while time.monotonic() < stop:
                body = chat_body("Count to five.", max_tokens=6)
                at = time.monotonic()
                try:
                    if stream:
                        body["stream"] = True
                        body["stream_options"] = {"include_usage": True}
                        tokens = 0
                        with h.stream("POST", "/v1/chat/completions", json=body) as r:
                            status = r.status_code
                            if status == 200:
                                for line in r.iter_lines():
                                    if line.startswith("data: {") and '"usage":{' in line:
                                        u = json.loads(line[6:])["usage"]
                                        tokens = u["prompt_tokens"] + u["completion_tokens"]
                                assert tokens > 0, "a stream ended without its usage"
                            else:
                                r.read()
                                err = r.json()["error"]
                                retry = r.headers.get("retry-after")
                    else:
                        r = h.post("/v1/chat/completions", json=body)
                        status = r.status_code
                        if status == 200:
                            u = r.json()["usage"]
                            tokens = u["prompt_tokens"] + u["completion_tokens"]
                        else:
                            err = r.json()["error"]
                            retry = r.headers.get("retry-after")
                except Exception as e:  # a broken connection is a failure too
                    with lock:
                        problems.append(f"{url}: {type(e).__name__}: {e}")
                    time.sleep(0.2)
                    continue
                if status != 200:
                    if status != 503 or not (retry or "").isdigit():
                        with lock:
                            problems.append(f"{url}: {status} {err} retry-after={retry}")
                    elif "state database" not in err["message"]:
                        with lock:
                            problems.append(f"{url}: 503 for another reason: {err}")
                    tokens = 0
                    time.sleep(0.2)
                with lock:
                    results.append((at, url, status, tokens))

    threads = [
        threading.Thread(target=worker, args=(url, stream))
        for url in (URL_A, URL_B)
        for stream in (False, True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, "\n".join(problems[:20])
    ok = [r for r in results if r[2] == 200]
    refused = [r for r in results if r[2] == 503]
    print(f"{len(ok)} served, {len(refused)} refused with 503 while the database was away")
    assert refused, "the database's outage was never seen"
    assert ok and max(r[0] for r in ok) > max(r[0] for r in refused), "nothing was served after it came back"
    # Served again once back: the last second's requests were all served.
    last = [r for r in results if r[0] > stop - 1.0]
    assert last and all(r[2] == 200 for r in last), last
    # Nothing lost: every 200 is counted, on both replicas alike.
    deadline = time.monotonic() + 20
    while True:
        (sa, a), (sb, b) = usage(URL_A, tenant), usage(URL_B, tenant)
        if sa == sb == 200 and a == b and a["requests"] == len(ok):
            break
        assert time.monotonic() < deadline, f"usage never caught up: {len(ok)} served; A {a}; B {b}"
        time.sleep(0.25)
    assert a["prompt_tokens"] + a["completion_tokens"] == sum(r[3] for r in ok), (a, sum(r[3] for r in ok))
    # The outage shows in each replica's metrics, and is over.
    refused_total = 0
    for url in (URL_A, URL_B):
        with httpx2.Client(base_url=url, timeout=TIMEOUT) as h:
            m = metrics(h.get("/metrics").text)
        assert m["deepwasm_state_behind"] == 0, m
        assert m["deepwasm_state_writes_failed_total"] >= 1, m
        refused_total += m["deepwasm_state_admissions_failed_total"]
    assert refused_total >= len(refused), (refused_total, len(refused))


def metrics(text):
    """The unlabelled samples of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def serve_then(n):
    """Serve `n` chats for gamma through A (the caller stops A next)."""
    with http(URL_A, "gamma") as h:
        for _ in range(n):
            r = h.post("/v1/chat/completions", json=chat_body("Count to three.", max_tokens=4))
            assert r.status_code == 200, r.text


def counted(n):
    """B's usage counts the `n` requests a stopped A served."""
    status, u = usage(URL_B, "gamma")
    assert status == 200 and u["requests"] == n, (status, u)
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0, u


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "after-upload-kill":
        after_upload_kill(*args)
    elif what == "after-stream-kill":
        after_stream_kill(float(args[0]))
    elif what == "load":
        load(float(args[0]))
    elif what == "serve-then":
        serve_then(int(args[0]))
    elif what == "counted":
        counted(int(args[0]))
    else:
        sys.exit(f"unknown command {what}")
