"""Two replicas on one PostgreSQL database (`deepwasm serve --state`): a
plugin uploaded through one is listed, used and deleted through the other,
a tenant's quotas hold across both, and both answer the same usage.

`DEEPWASM_URL` is replica A, `DEEPWASM_URL_B` replica B.
"""

import os
import threading
import time

import httpx2
import openai

from common import (
    MODEL,
    TIMEOUT,
    chat,
    content_id,
    error_of,
    fresh_copy,
    key,
    plugin_bytes,
    run,
    upload,
    URL as URL_A,
)

URL_B = os.environ["DEEPWASM_URL_B"].rstrip("/")


def http(url, tenant):
    return httpx2.Client(
        base_url=url, headers={"Authorization": "Bearer " + key(tenant)}, timeout=TIMEOUT
    )


def client(url, tenant):
    return openai.OpenAI(base_url=url + "/v1", api_key=key(tenant), max_retries=0, timeout=TIMEOUT)


def test_a_plugin_uploaded_on_a_is_listed_used_and_deleted_on_b():
    data = plugin_bytes("r1-format")
    pid = content_id(data)
    with http(URL_A, "alpha") as a, http(URL_B, "alpha") as b:
        r = upload(a, "r1", data)
        assert r.status_code == 201, r.text
        listed = b.get("/v1/plugins").json()["data"]
        assert [(p["id"], p["name"], p["world"]) for p in listed] == [(pid, "r1", "reward")], listed
        # What B lists is what A answered, imports and exports included.
        assert listed[0] == r.json(), (listed[0], r.json())
        assert b.get(f"/v1/plugins/{pid}").json()["name"] == "r1"
        # B has never seen the bytes: it loads them from the registry.
        samples = [{"completion": "<think>x</think> 4"}, {"completion": "4"}]
        r = b.post("/v1/rewards/score", json={"rewards": [{"plugin": "r1"}], "samples": samples})
        assert r.status_code == 200, r.text
        assert [row["rewards"]["r1"] for row in r.json()["data"]] == [1.0, 0.0], r.text
        # The same bytes again, through B: nothing new.
        r = upload(b, "r1", data)
        assert r.status_code == 200 and r.json()["id"] == pid, r.text
        # Another tenant sees none of it, through either replica.
        with http(URL_B, "beta") as other:
            assert other.get("/v1/plugins").json()["data"] == []
            assert other.get(f"/v1/plugins/{pid}").status_code == 404
        # A name is one tenant's on every replica.
        r = upload(b, "r1", plugin_bytes("word-ban"))
        assert r.status_code == 409 and error_of(r)["param"] == "name", r.text
        # Deleted through B: gone on A, even from A's loaded copies.
        r = b.delete("/v1/plugins/r1")
        assert r.status_code == 200 and r.json()["deleted"] is True, r.text
        assert a.get("/v1/plugins").json()["data"] == []
        assert a.get(f"/v1/plugins/{pid}").status_code == 404
        r = a.post("/v1/rewards/score", json={"rewards": [{"plugin": "r1"}], "samples": samples})
        assert r.status_code == 404 and error_of(r)["param"] == "rewards[0].plugin", r.text
        # ... and A let go of the copy it had loaded.
        assert loaded(URL_A, "alpha") == 0, loaded(URL_A, "alpha")


def test_a_sampler_uploaded_on_b_steers_generation_on_a():
    with http(URL_B, "beta") as b:
        r = upload(b, "ban", plugin_bytes("word-ban"))
        assert r.status_code == 201, r.text
    c = client(URL_A, "beta")
    prompt = "Write one sentence about the sea."
    base = chat(c, prompt, temperature=0, max_tokens=16).choices[0].message.content
    words = sorted({w.strip(".,;:!?\"'").lower() for w in base.split()}, key=len)
    word = [w for w in words if len(w) >= 4 and w.isalpha()][-1]
    out = chat(
        c,
        prompt,
        temperature=0,
        max_tokens=16,
        extra_body={"sampler": {"plugin": "ban", "config": {"words": [word]}}},
    )
    text = out.choices[0].message.content
    assert word not in text.lower() and text != base, (word, base, text)
    with http(URL_A, "beta") as a:
        assert a.delete("/v1/plugins/ban").status_code == 200


def test_concurrent_requests_count_on_every_replica():
    # `single` may run one request at a time, on all replicas together.
    stream = chat(
        client(URL_A, "single"), "Tell me a long story.", max_tokens=48, temperature=0, stream=True
    )
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant", first
    try:
        chat(client(URL_B, "single"), "hi", max_tokens=2)
    except openai.RateLimitError as e:
        assert e.code == "rate_limit_exceeded" and "all replicas" in e.message, e.body
        assert int(e.response.headers["retry-after"]) >= 1
    else:
        raise AssertionError("B admitted a second request while A ran the first")
    for _ in stream:
        pass
    # Freed on A, free on B (the release is written just behind the end).
    deadline = time.monotonic() + 5
    while True:
        try:
            assert chat(client(URL_B, "single"), "hi", max_tokens=2).choices
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "A's place was never freed for B"
            time.sleep(0.05)


def test_tokens_spent_through_a_refuse_on_b():
    # `metered` has 40 tokens a minute: one chat through A spends them.
    out = chat(client(URL_A, "metered"), "Hello there, how are you today?", max_tokens=16)
    assert out.usage.total_tokens >= 40, out.usage
    deadline = time.monotonic() + 5
    while True:
        try:
            chat(client(URL_B, "metered"), "hi", max_tokens=2)
        except openai.RateLimitError as e:
            assert e.code == "rate_limit_exceeded" and e.type == "tokens", e.body
            assert "all replicas" in e.message, e.message
            wait = int(e.response.headers["retry-after"])
            assert 1 <= wait <= 61, wait
            break
        assert time.monotonic() < deadline, "B never saw the tokens A spent"
        time.sleep(0.05)


def usage(url, tenant):
    with http(url, tenant) as h:
        r = h.get("/v1/usage")
        assert r.status_code == 200, r.text
        return r.json()


def test_usage_is_the_same_on_every_replica_and_sums_both():
    before = usage(URL_A, "gamma")
    tokens = 0
    for url in (URL_A, URL_B, URL_B):
        out = chat(client(url, "gamma"), "Count to three.", max_tokens=6, temperature=0)
        tokens += out.usage.total_tokens
    # Each replica writes its usage just behind each request's end.
    deadline = time.monotonic() + 2
    while True:
        a, b = usage(URL_A, "gamma"), usage(URL_B, "gamma")
        if a == b and a["requests"] - before["requests"] == 3:
            break
        assert time.monotonic() < deadline, (before, a, b)
        time.sleep(0.02)
    spent = a["prompt_tokens"] + a["completion_tokens"]
    spent -= before["prompt_tokens"] + before["completion_tokens"]
    assert spent == tokens, (before, a, tokens)


def test_a_flood_of_state_reads_is_held_to_its_share():
    """A tenant hammering the endpoints that read the database outside any
    request (usage, plugin lists, stored responses) gets 429s past its few
    reads at once, and other tenants are served meanwhile."""
    statuses = []
    lock = threading.Lock()

    paths = ["/v1/usage", "/v1/plugins", "/v1/responses/resp_none"]

    def flood():
        with http(URL_A, "alpha") as h:
            for i in range(15):
                r = h.get(paths[i % 3])
                status = r.status_code
                if status == 404:
                    # An unknown response, looked up: an admitted read.
                    assert "resp_none" in r.text, r.text
                    status = 200
                if status == 429:
                    assert int(r.headers["retry-after"]) >= 1, r.headers
                    assert "reads of usage, plugins or stored responses" in error_of(r)["message"], r.text
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=flood) for _ in range(24)]
    for t in threads:
        t.start()
    out = chat(client(URL_A, "beta"), "hi", max_tokens=2)
    assert out.choices, out
    with http(URL_A, "beta") as other:
        assert other.get("/v1/usage").status_code == 200
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(429) > 0 and statuses.count(200) > 0, (statuses.count(200), statuses.count(429))


def test_a_stored_response_continues_gets_and_deletes_through_the_other_replica():
    a, b = client(URL_A, "alpha"), client(URL_B, "alpha")
    first = a.responses.create(model=MODEL, input="My name is Ada. Say hi.", max_output_tokens=8)
    assert first.status in ("completed", "incomplete"), first
    # B continues the conversation A stored.
    second = b.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.usage.input_tokens > first.usage.input_tokens, (first.usage, second.usage)
    assert b.responses.retrieve(first.id).id == first.id
    # Another tenant cannot continue, read or delete it.
    other = client(URL_B, "beta")
    for call in (
        lambda: other.responses.create(model=MODEL, input="hi", previous_response_id=first.id, max_output_tokens=2),
        lambda: other.responses.retrieve(first.id),
        lambda: other.responses.delete(first.id),
    ):
        try:
            call()
        except (openai.BadRequestError, openai.NotFoundError):
            pass
        else:
            raise AssertionError("another tenant reached a stored response")
    # Deleted through B, gone on A.
    b.responses.delete(first.id)
    try:
        a.responses.retrieve(first.id)
    except openai.NotFoundError:
        pass
    else:
        raise AssertionError("a deleted response was still found on A")


def loaded(url, tenant):
    with httpx2.Client(base_url=url, timeout=TIMEOUT) as h:
        for line in h.get("/metrics").text.splitlines():
            if line.startswith(f'deepwasm_plugins_loaded{{tenant="{tenant}"}}'):
                return int(float(line.split()[1]))
    raise AssertionError(f"no deepwasm_plugins_loaded for {tenant} in /metrics")


def test_plugins_churned_through_another_replica_do_not_pile_up_here():
    """Upload through B, use through A, delete through B, over and over with
    new bytes: A loads each, and must let go of those the registry dropped
    (a tenant stores at most 32)."""
    data = plugin_bytes("r1-format")
    samples = [{"completion": "<think>x</think> 4"}]
    with http(URL_A, "delta") as a, http(URL_B, "delta") as b:
        for i in range(36):
            name = f"churn-{i}"
            r = upload(b, name, fresh_copy(data))
            assert r.status_code == 201, r.text
            r = a.post("/v1/rewards/score", json={"rewards": [{"plugin": name}], "samples": samples})
            assert r.status_code == 200, r.text
            assert b.delete(f"/v1/plugins/{name}").status_code == 200
    # At most its 32 plus the one that found the registry had moved on.
    assert loaded(URL_A, "delta") <= 33, loaded(URL_A, "delta")


run(globals())
