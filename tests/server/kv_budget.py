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
    # Eight per tenant: each stays within its own limit of concurrent
    # requests, so every refusal is the server's capacity, not a 429.
    with http("alpha" if i % 2 else "beta") as h:
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
    # Blocks still in use are only those of cached prefixes, within the
    # budget.
    in_use = metric("deepwasm_kv_cache_blocks_in_use")
    assert in_use == metric("deepwasm_kv_cache_blocks_cached"), in_use
    assert in_use * 16 <= budget, in_use
    assert chat(99).status_code == 200


def test_a_repeated_system_prompt_is_taken_from_the_cache():
    """Two tenants' chats that begin with the same system prompt: the second
    takes the first's blocks for it (the counter of shared prompt tokens
    grows by about its length) and answers as it would have computed them:
    greedy, the same user message, the same text."""
    system = "You are a patient assistant for a lighthouse museum. " * 4

    def ask(tenant, question):
        with http(tenant) as h:
            r = h.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": question},
                    ],
                    "max_tokens": 8,
                    "temperature": 0,
                },
            )
        assert r.status_code == 200, r.text
        return r.json()

    first = ask("alpha", "When was the lighthouse built?")
    before = metric("deepwasm_kv_cache_shared_prompt_tokens_total")
    second = ask("beta", "When was the lighthouse built?")
    shared = metric("deepwasm_kv_cache_shared_prompt_tokens_total") - before
    assert shared >= 40, shared
    assert second["choices"][0]["message"] == first["choices"][0]["message"]
    # Another question after the same system prompt shares the prompt's
    # common part only.
    before = metric("deepwasm_kv_cache_shared_prompt_tokens_total")
    ask("beta", "Who kept the light?")
    partial = metric("deepwasm_kv_cache_shared_prompt_tokens_total") - before
    assert 40 <= partial < second["usage"]["prompt_tokens"], (partial, second["usage"])


def test_prompts_past_the_cache_or_the_context_are_context_overflows():
    """Past the server's cache budget or past the model's context, a prompt
    is refused as OpenAI refuses an overflow (the code and wording clients
    such as litellm key their context-window handling on)."""
    for words, limit in [(2000, "server's maximum context length"), (9000, "model's maximum context length is 8192")]:
        with http("alpha") as h:
            r = h.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "word " * words}],
                    "max_tokens": 4,
                },
            )
        assert r.status_code == 400, r.text
        e = error_of(r)
        assert e["code"] == "context_length_exceeded" and e["param"] == "messages", e
        assert limit in e["message"], e


def test_a_chat_without_max_tokens_is_capped_by_the_cache_budget():
    """No `max_tokens` and no end of text: the sequence runs until the cache
    budget, not the model's 8k context, and ends with `length`."""
    budget = metric("deepwasm_kv_cache_tokens_budget")
    with http("alpha") as h:
        r = h.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Count upwards from 1."}],
                "temperature": 0,
                "ignore_eos": True,
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length", body["choices"][0]
    used = body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    # The last token is never fed back, so it needs no cache.
    assert budget - 32 <= used <= budget + 1, (used, budget)


if __name__ == "__main__":
    run(globals())
