"""Tenants' own LoRA adapters (`/v1/adapters`), as tenants see them.

The test passes PEFT adapter directories made in-process (`four`: rank 4
on all projections; `two`: rank 2 on three; `tiny`: an adapter of another
model), the greedy texts each gives in-process on a prompt, and their
parameter counts. The server serves `two` to everyone as `shared`.

`upload`: alpha uploads `four` and generates what it gives in-process;
lists, reads and downloads it byte for byte; replaces it with `two`. beta
sees none of it: not listed, 404 to use, read, download or delete, and a
404 that does not name it. Bad uploads are refused with the file and the
reason and change nothing. A tenant's count and bytes are limits; a part
larger than its bytes is a 413. A deleted adapter is gone.

`downloads`: eight downloads of a 78 MB adapter held open at once (each
has read one chunk) raise the server's peak memory by less than two
copies of it: a download streams the file, it does not hold it. Each then
gets the file whole.

`after-restart`: the kept adapter is still alpha's (the test moved it
aside as a kill between two renames would have), the deleted one is not
back.
"""

import hashlib
import json
import os
import sys
import time

from common import MODEL, error_of, http

DIRS = {k: os.environ["ADAPTER_" + k.upper()] for k in ("four", "two", "tiny", "big")}
PROMPT = json.loads(os.environ["ADAPTER_PROMPT"])
TEXTS = json.loads(os.environ["ADAPTER_TEXTS"])
PARAMS = json.loads(os.environ["ADAPTER_PARAMS"])
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def files(name):
    with open(os.path.join(DIRS[name], CONFIG), "rb") as f:
        config = f.read()
    with open(os.path.join(DIRS[name], WEIGHTS), "rb") as f:
        weights = f.read()
    return config, weights


def put(h, name, parts):
    """Upload `parts` ({part name: bytes}) as adapter `name`."""
    return h.post(
        "/v1/adapters",
        params={"name": name},
        files={k: (k, v) for k, v in parts.items()},
    )


def upload(h, name, adapter):
    config, weights = files(adapter)
    return put(h, name, {"config": config, "weights": weights})


def complete(h, model):
    r = h.post(
        "/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0},
    )
    return r


def text(h, model):
    r = complete(h, model)
    assert r.status_code == 200, (model, r.text)
    return r.json()["choices"][0]["text"]


def listed(h):
    r = h.get("/v1/adapters")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list", body
    return {a["id"]: a for a in body["data"]}


def models(h):
    r = h.get("/v1/models")
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]}


def refused(r, status, *words):
    assert r.status_code == status, (status, r.status_code, r.text)
    err = error_of(r)
    for w in words:
        assert w in err["message"], (w, err)
    return err


def upload_phase():
    alpha, beta, single = http("alpha"), http("beta"), http("single")
    assert TEXTS["four"] != TEXTS["base"] and TEXTS["two"] != TEXTS["four"], TEXTS

    # Upload, use, describe.
    r = upload(alpha, "mine", "four")
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["id"] == "mine" and a["object"] == "adapter", a
    assert a["model"] == MODEL + ":mine", a
    assert a["r"] == 4 and a["parameters"] == PARAMS["four"], (a, PARAMS)
    assert a["bytes"] == 4 * PARAMS["four"], a
    assert len(a["target_modules"]) == 7, a
    assert text(alpha, MODEL + ":mine") == TEXTS["four"]
    assert text(alpha, MODEL) == TEXTS["base"]
    assert text(alpha, MODEL + ":shared") == TEXTS["two"]
    assert MODEL + ":mine" in models(alpha)
    assert listed(alpha)["mine"] == a
    assert alpha.get("/v1/adapters/mine").json() == a
    config, weights = files("four")
    for name, want in ((CONFIG, config), (WEIGHTS, weights)):
        r = alpha.get("/v1/adapters/mine/files/" + name)
        assert r.status_code == 200, r.text
        assert r.content == want, name
    refused(alpha.get("/v1/adapters/mine/files/secret.txt"), 404, "secret.txt")

    # Another tenant sees nothing of it.
    assert "mine" not in listed(beta)
    assert MODEL + ":mine" not in models(beta)
    err = refused(complete(beta, MODEL + ":mine"), 404)
    assert err["code"] == "model_not_found", err
    assert ":mine," not in err["message"] and not err["message"].endswith(":mine"), err
    refused(beta.get("/v1/adapters/mine"), 404, "mine")
    refused(beta.get("/v1/adapters/mine/files/" + WEIGHTS), 404)
    refused(beta.delete("/v1/adapters/mine"), 404)
    assert text(alpha, MODEL + ":mine") == TEXTS["four"], "beta's delete reached alpha"

    # Bad uploads: refused with where and why, and nothing changes.
    refused(put(alpha, "bad", {"config": config}), 400, "weights")
    refused(put(alpha, "bad", {"weights": weights}), 400, "config")
    refused(
        put(alpha, "bad", {"config": config, "weights": weights, "extra": b"x"}),
        400,
        "extra",
    )
    refused(put(alpha, "bad", {"config": config, "weights": b"not safetensors"}), 400, WEIGHTS)
    refused(put(alpha, "bad", {"config": b"{", "weights": weights}), 400, CONFIG)
    dora = json.loads(config)
    dora["use_dora"] = True
    refused(
        put(alpha, "bad", {"config": json.dumps(dora).encode(), "weights": weights}),
        400,
        "use_dora",
    )
    refused(upload(alpha, "bad", "tiny"), 400, "does not fit")
    err = refused(upload(alpha, ".hidden", "four"), 400)
    assert err["param"] == "name", err
    refused(upload(alpha, "a" * 65, "four"), 400)
    refused(upload(alpha, "shared", "four"), 400, "serves to everyone")
    r = alpha.post("/v1/adapters", params={"name": "raw"}, content=weights)
    refused(r, 400, "multipart")
    assert "bad" not in listed(alpha) and len(listed(alpha)) == 1, listed(alpha)
    assert text(alpha, MODEL + ":mine") == TEXTS["four"]

    # Replacing under the same name: 200, and the new adapter serves.
    r = upload(alpha, "mine", "two")
    assert r.status_code == 200, r.text
    assert r.json()["r"] == 2 and r.json()["parameters"] == PARAMS["two"], r.json()
    assert text(alpha, MODEL + ":mine") == TEXTS["two"]

    # Bytes: single may keep 5,500,000: the rank-4 adapter (4,884,480), not
    # the rank-2 one (967,680) beside it.
    assert 4 * PARAMS["four"] <= 5_500_000 < 4 * (PARAMS["four"] + PARAMS["two"]), PARAMS
    assert upload(single, "one", "four").status_code == 201
    refused(upload(single, "another", "two"), 403, "adapter_bytes")
    assert upload(single, "one", "two").status_code == 200, "replacing frees its own bytes"
    big = b"\0" * 5_600_000
    refused(put(single, "big", {"config": config, "weights": big}), 413, "adapter_bytes")
    assert set(listed(single)) == {"one"}

    # Count: at most 16 adapters a tenant.
    for i in range(16):
        r = upload(beta, f"n{i}", "two")
        assert r.status_code == 201, (i, r.text)
    refused(upload(beta, "n16", "two"), 403, "16 adapters")
    assert upload(beta, "n3", "four").status_code == 200, "replacing is not one more"
    assert text(beta, MODEL + ":n3") == TEXTS["four"]
    for i in range(16):
        assert beta.delete(f"/v1/adapters/n{i}").status_code == 200

    # Delete: gone for use and listing.
    r = alpha.delete("/v1/adapters/mine")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "mine", "object": "adapter.deleted", "deleted": True}
    refused(complete(alpha, MODEL + ":mine"), 404)
    refused(alpha.get("/v1/adapters/mine"), 404)
    refused(alpha.delete("/v1/adapters/mine"), 404)
    assert listed(alpha) == {}

    # One to keep over the restart.
    assert upload(alpha, "kept", "four").status_code == 201
    print("upload: adapters uploaded, used and kept to their tenant")


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def downloads_phase():
    pid = int(os.environ["DEEPWASM_PID"])
    alpha = http("alpha")
    path = os.path.join(DIRS["big"], WEIGHTS)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    assert size > 50_000_000, size
    r = upload(alpha, "big", "big")
    assert r.status_code == 201, r.text
    # The peak from here on (writing 5 resets it to the current size).
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = status_kib(pid, "VmHWM")
    clients = [http("alpha") for _ in range(8)]
    held = [c.stream("GET", "/v1/adapters/big/files/" + WEIGHTS) for c in clients]
    responses = [h.__enter__() for h in held]
    chunks = []
    for r in responses:
        assert r.status_code == 200, r.read()
        assert int(r.headers["content-length"]) == size, r.headers
        it = r.iter_bytes()
        chunks.append((it, hashlib.sha256(next(it))))
    time.sleep(1)
    grown = (status_kib(pid, "VmHWM") - before) * 1024
    assert grown < 2 * size, f"8 open downloads of {size} bytes raised the peak by {grown}"
    for (it, digest), h in zip(chunks, held):
        for chunk in it:
            digest.update(chunk)
        assert digest.hexdigest() == want
        h.__exit__(None, None, None)
    assert alpha.delete("/v1/adapters/big").status_code == 200
    print(f"downloads: 8 held open raised the peak by {grown} bytes ({size} each)")


def after_restart_phase():
    alpha, beta = http("alpha"), http("beta")
    assert set(listed(alpha)) == {"kept"}, listed(alpha)
    assert text(alpha, MODEL + ":kept") == TEXTS["four"]
    refused(complete(alpha, MODEL + ":mine"), 404)
    refused(complete(beta, MODEL + ":kept"), 404)
    assert listed(beta) == {}
    print("after-restart: the kept adapter is back, the deleted one is not")


{
    "upload": upload_phase,
    "downloads": downloads_phase,
    "after-restart": after_restart_phase,
}[sys.argv[1]]()
