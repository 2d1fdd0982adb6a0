"""Plugins outlive the server: `restart.py before` uploads, the harness
kills the server and starts another on the same store, and `restart.py
after` finds the plugins listed, loadable and still each tenant's own."""

import sys

from common import chat, client, content_id, expect_unknown_plugin, http, plugin_bytes, upload

WORD_BAN = plugin_bytes("word-ban")
R1 = plugin_bytes("r1-format")
PROMPT = "Write two sentences about the sun and the sea."


def before():
    with http("alpha") as h:
        assert upload(h, "kept-ban", WORD_BAN).status_code == 201
        assert upload(h, "kept-r1", R1).status_code == 201
        # Deleted before the restart: must stay gone.
        r = upload(h, "gone", plugin_bytes("top-k"))
        assert r.status_code == 201, r.text
        assert h.delete(f"/v1/plugins/{r.json()['id']}").status_code == 200


def after():
    with http("alpha") as h:
        listed = sorted((p["name"], p["id"], p["world"]) for p in h.get("/v1/plugins").json()["data"])
        assert listed == [
            ("kept-ban", content_id(WORD_BAN), "sampler"),
            ("kept-r1", content_id(R1), "reward"),
        ], listed
        r = h.post(
            "/v1/rewards/score",
            json={"rewards": [{"plugin": "kept-r1"}], "samples": [{"completion": "<think>a</think>b"}]},
        )
        assert r.status_code == 200 and r.json()["data"][0]["total"] == 1.0, r.text
    c = client("alpha")
    base = chat(c, PROMPT, temperature=0, max_tokens=16).choices[0].message.content
    words = [w.strip(".,;:!?\"'").lower() for w in base.split()]
    word = max((w for w in words if w.isalpha()), key=len)
    steered = chat(
        c,
        PROMPT,
        temperature=0,
        max_tokens=16,
        extra_body={"sampler": {"plugin": "kept-ban", "config": {"words": [word]}}},
    ).choices[0].message.content
    assert word not in steered.lower(), (word, steered)
    with http("beta") as h:
        assert h.get("/v1/plugins").json()["data"] == []
        assert h.get(f"/v1/plugins/{content_id(WORD_BAN)}").status_code == 404
    expect_unknown_plugin(client("beta"), "kept-ban")
    expect_unknown_plugin(client("alpha"), "gone")


if __name__ == "__main__":
    phase = {"before": before, "after": after}[sys.argv[1]]
    phase()
    print(f"ok     {sys.argv[1]}")
