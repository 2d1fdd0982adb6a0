"""Plugin management over raw HTTP, and a tenant's sampler plugin steering
its chat requests (through the SDK's `extra_body`): uploads are
content-addressed, another tenant sees nothing, deletes are final."""

import openai

from common import (
    MODEL,
    chat,
    client,
    content_id,
    error_of,
    expect_status,
    expect_unknown_plugin,
    http,
    plugin_bytes,
    run,
    upload,
)

alpha, beta = http("alpha"), http("beta")
WORD_BAN = plugin_bytes("word-ban")
WORD_BAN_ID = content_id(WORD_BAN)
PROMPT = "Write two sentences about the sun and the sea."


def test_upload_is_content_addressed():
    r = upload(alpha, "ban", WORD_BAN)
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["id"] == WORD_BAN_ID and p["object"] == "plugin", p
    assert p["name"] == "ban" and p["world"] == "sampler", p
    assert p["size_bytes"] == len(WORD_BAN), p
    # The same bytes again: already stored.
    r = upload(alpha, "ban", WORD_BAN)
    assert r.status_code == 200 and r.json()["id"] == WORD_BAN_ID, r.text
    listed = alpha.get("/v1/plugins").json()
    assert listed["object"] == "list", listed
    assert [q["id"] for q in listed["data"]] == [WORD_BAN_ID], listed
    assert alpha.get(f"/v1/plugins/{WORD_BAN_ID}").json() == p


def test_bad_uploads_are_refused():
    r = upload(alpha, "junk", b"\0asm not really")
    assert r.status_code == 400, r.text
    error_of(r)
    r = upload(alpha, "bad name!", WORD_BAN)
    assert r.status_code == 400 and error_of(r)["param"] == "name", r.text
    r = alpha.post("/v1/plugins", content=WORD_BAN, headers={"Content-Type": "application/wasm"})
    assert r.status_code == 400 and error_of(r)["param"] == "name", r.text
    r = upload(alpha, "empty", b"")
    assert r.status_code == 400, r.text
    # Another component under a taken name.
    r = upload(alpha, "ban", plugin_bytes("r1-format"))
    assert r.status_code == 409, r.text
    assert [q["id"] for q in alpha.get("/v1/plugins").json()["data"]] == [WORD_BAN_ID]


def banned_word(text):
    """A word of `text` to ban: the longest, so it is not a common piece of
    other words."""
    words = sorted({w.strip(".,;:!?\"'").lower() for w in text.split()}, key=len)
    words = [w for w in words if len(w) >= 4 and w.isalpha()]
    assert words, text
    return words[-1]


def test_sampler_plugin_bans_a_word():
    c = client("alpha")
    base = chat(c, PROMPT, temperature=0, max_tokens=16).choices[0].message.content
    word = banned_word(base)
    for plugin in ("ban", WORD_BAN_ID):
        r = chat(
            c,
            PROMPT,
            temperature=0,
            max_tokens=16,
            extra_body={"sampler": {"plugin": plugin, "config": {"words": [word]}}},
        )
        text = r.choices[0].message.content
        assert word not in text.lower(), (word, text)
        assert text != base, text
    # Sampled choices, streamed: the ban holds in every one.
    stream = chat(
        c,
        PROMPT,
        temperature=1.0,
        seed=9,
        n=2,
        max_tokens=16,
        stream=True,
        extra_body={"sampler": {"plugin": "ban", "config": {"words": [word, "the"]}}},
    )
    texts = {0: "", 1: ""}
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
    for t in texts.values():
        assert word not in t.lower() and "the" not in t.lower(), (word, texts)


def test_sampler_errors_name_the_parameter():
    c = client("alpha")
    e = expect_status(
        openai.BadRequestError,
        400,
        chat,
        c,
        "hi",
        extra_body={"sampler": {"plugin": "ban", "on_miss": "explode"}},
    )
    assert e.param == "sampler.on_miss", e.body
    e = expect_status(
        openai.BadRequestError,
        400,
        chat,
        c,
        "hi",
        response_format={"type": "json_object"},
        extra_body={"sampler": {"plugin": "ban"}},
    )
    assert e.param == "sampler", e.body


def test_another_tenant_sees_nothing():
    r = beta.get(f"/v1/plugins/{WORD_BAN_ID}")
    assert r.status_code == 404, r.text
    missing = beta.get("/v1/plugins/" + "0" * 64)
    assert missing.status_code == 404
    # The same answer as for an id nobody has, but for the id itself.
    assert error_of(r)["message"].replace(WORD_BAN_ID, "ID") == error_of(missing)[
        "message"
    ].replace("0" * 64, "ID")
    assert beta.get("/v1/plugins").json()["data"] == []
    r = beta.delete(f"/v1/plugins/{WORD_BAN_ID}")
    assert r.status_code == 404, r.text
    c = client("beta")
    for plugin in (WORD_BAN_ID, "ban"):
        expect_unknown_plugin(c, plugin, config={"words": ["a"]})
    # Alpha's plugin is untouched.
    assert alpha.get(f"/v1/plugins/{WORD_BAN_ID}").status_code == 200


def test_the_same_bytes_are_each_tenants_own():
    r = upload(beta, "mine", WORD_BAN)
    assert r.status_code == 201, r.text
    assert r.json()["id"] == WORD_BAN_ID and r.json()["name"] == "mine"
    assert alpha.get(f"/v1/plugins/{WORD_BAN_ID}").json()["name"] == "ban"
    r = beta.delete(f"/v1/plugins/{WORD_BAN_ID}")
    assert r.status_code == 200, r.text
    assert alpha.get(f"/v1/plugins/{WORD_BAN_ID}").status_code == 200


def test_delete():
    r = alpha.delete(f"/v1/plugins/{WORD_BAN_ID}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": WORD_BAN_ID, "object": "plugin.deleted", "deleted": True}
    assert alpha.get(f"/v1/plugins/{WORD_BAN_ID}").status_code == 404
    assert alpha.delete(f"/v1/plugins/{WORD_BAN_ID}").status_code == 404
    assert alpha.get("/v1/plugins").json()["data"] == []
    expect_unknown_plugin(client("alpha"), "ban")
    expect_unknown_plugin(client("alpha"), WORD_BAN_ID)
    # And it can come back.
    assert upload(alpha, "ban", WORD_BAN).status_code == 201


run(globals())
