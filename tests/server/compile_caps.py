"""A compile bomb against the server's caps on compiling. `tests/compiling.rs`
starts a server with a small cap (`--max-compile-secs` or
`--max-compile-mib`), writes a component that is cheap to send and costly
to compile, and runs this script with:

- `DEEPWASM_BOMB`: the component's path;
- `DEEPWASM_BOMB_CAP`: what the refusal's message must say (the cap);
- `DEEPWASM_BOMB_MAX_SECS`: how soon the refusal must come, seconds.

The upload is refused with a 422 naming the cap, promptly; the tenant
stores nothing, and its next upload (its compile permit is back) compiles
and steers a chat.
"""

import os
import time

from common import chat, client, error_of, http, plugin_bytes, run, upload

TENANT = "alpha"
BOMB = os.environ["DEEPWASM_BOMB"]
CAP = os.environ["DEEPWASM_BOMB_CAP"]
MAX_SECS = float(os.environ["DEEPWASM_BOMB_MAX_SECS"])


def test_the_bomb_is_refused_naming_the_cap():
    with open(BOMB, "rb") as f:
        bomb = f.read()
    h = http(TENANT)
    started = time.monotonic()
    r = upload(h, "bomb", bomb)
    elapsed = time.monotonic() - started
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["code"] == "compile_limit_exceeded", err
    assert CAP in err["message"] and "`bomb`" in err["message"], err
    assert elapsed < MAX_SECS, f"refused after {elapsed:.1f} s (allowed {MAX_SECS} s)"
    print(f"       refused after {elapsed:.2f} s: {err['message']}")
    assert h.get("/v1/plugins").json()["data"] == []


def test_the_tenant_uploads_next_and_chats():
    h = http(TENANT)
    # At once: a compile permit kept by the refused upload would answer 429.
    r = upload(h, "ban", plugin_bytes("word-ban"))
    assert r.status_code == 201, r.text
    assert [p["name"] for p in h.get("/v1/plugins").json()["data"]] == ["ban"]
    r = chat(
        client(TENANT),
        "Write a sentence about the sea.",
        temperature=0,
        max_tokens=8,
        extra_body={"sampler": {"plugin": "ban", "config": {"words": ["sea"]}}},
    )
    text = r.choices[0].message.content
    assert text and "sea" not in text.lower(), text


run(globals())
