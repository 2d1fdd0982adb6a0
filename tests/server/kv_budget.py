"""A server with a tiny attention-cache budget (`tests/server.rs` starts it
with `--kv-cache-mib 24 --max-waiting 2`: room for two short chats at once,
two more waiting) answers a burst of chats with 200s and 503s carrying
`Retry-After`, never a failure of another kind, keeps serving, and holds no
cache once the burst is over."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

from common import MODEL, error_of, http, run


def metric(name):
    with http() as anon:
        text = anon.get("/metrics").text
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    assert m, f"no {name} in\n{text}"
    return float(m.group(1))


def chat(i):
    with http("alpha") as h:
        return h.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Count from {i} to {i + 20}."}],
                "max_tokens": 24,
                "temperature": 0,
                "ignore_eos": True,
            },
        )


def test_a_burst_gets_answers_or_503s_and_frees_the_cache():
    budget = metric("deepwasm_kv_cache_tokens_budget")
    assert 256 <= budget < 1024, budget
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(chat, range(16)))
    ok = [r for r in answers if r.status_code == 200]
    busy = [r for r in answers if r.status_code == 503]
    assert len(ok) + len(busy) == len(answers), [(r.status_code, r.text) for r in answers]
    assert ok and busy, f"{len(ok)} answered, {len(busy)} refused"
    for r in ok:
        assert r.json()["usage"]["completion_tokens"] == 24, r.text
    for r in busy:
        assert int(r.headers["retry-after"]) >= 1, r.headers
        assert "capacity" in error_of(r)["message"], r.text
    # Once the burst is done nothing holds cache, and a new chat is served.
    deadline = time.monotonic() + 10
    while metric("deepwasm_kv_cache_tokens_in_use") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric("deepwasm_kv_cache_tokens_in_use") == 0
    assert metric("deepwasm_batch_running") == 0
    assert chat(99).status_code == 200


if __name__ == "__main__":
    run(globals())
