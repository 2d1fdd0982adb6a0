"""Uploads cut short by SIGKILL leave nothing partial. `tests/server.rs`
uploads fresh copies of the JSON-schema sampler as tenant `alpha`, kills
the server at points of each upload (compiling, writing the compile cache,
writing the store), restarts it on the same store and cache, and runs:

- `killed.py check UPLOADS CACHE`: every plugin listed is one of the
  components in the folder UPLOADS (`NAME.wasm`, uploaded as NAME), whole:
  fetched by id and uploaded again it answers "already stored". Every
  other component is unknown; one whose compiled form the kill left in the
  compile cache CACHE is uploaded again, and must load from there (a
  cache entry that fails to load is logged, and the harness fails on it).
- `killed.py upload FILE`: the upload of FILE completes: 201, or 200 when
  a killed upload of it was already stored whole.
- `killed.py listed FILE`: FILE's plugin is listed and steers generation.
"""

import glob
import os
import sys

from common import chat, client, content_id, http, upload

TENANT = "alpha"


def read(path):
    with open(path, "rb") as f:
        return f.read()


def name_of(path):
    return os.path.splitext(os.path.basename(path))[0]


def listed(h):
    return {p["id"]: p for p in h.get("/v1/plugins").json()["data"]}


def check(uploads, cache):
    components = {name_of(p): read(p) for p in glob.glob(os.path.join(uploads, "*.wasm"))}
    names = {content_id(data): name for name, data in components.items()}
    again, gone = set(), 0
    with http(TENANT) as h:
        plugins = listed(h)
        for id, p in plugins.items():
            assert names.get(id) == p["name"], f"not an upload of this test: {p}"
            data = components[p["name"]]
            assert p["world"] == "sampler" and p["size_bytes"] == len(data), p
            r = h.get(f"/v1/plugins/{id}")
            assert r.status_code == 200 and r.json() == p, r.text
            r = upload(h, p["name"], data)
            assert r.status_code == 200 and r.json()["id"] == id, r.text
        for id, name in names.items():
            if id in plugins:
                continue
            for ref in (id, name):
                r = h.get(f"/v1/plugins/{ref}")
                assert r.status_code == 404, f"{ref} is not listed but answers {r.text}"
            if glob.glob(os.path.join(cache, f"{id}-*.cwasm")):
                r = upload(h, name, components[name])
                assert r.status_code == 201 and r.json()["id"] == id, r.text
                again.add(id)
            else:
                gone += 1
        after = set(listed(h))
    assert after == set(plugins) | again, (after, set(plugins), again)
    print(f"ok     check: {len(plugins)} listed, {len(again)} uploaded again from the cache, {gone} gone")


def upload_completes(path):
    data = read(path)
    id = content_id(data)
    with http(TENANT) as h:
        stored = id in listed(h)
        r = upload(h, name_of(path), data)
        assert r.status_code == (200 if stored else 201), (stored, r.text)
        assert r.json()["id"] == id, r.text
    print(f"ok     upload: {r.status_code}")


def is_listed(path):
    data = read(path)
    name = name_of(path)
    with http(TENANT) as h:
        p = listed(h).get(content_id(data))
        assert p and p["name"] == name, p
    content = chat(
        client(TENANT),
        "Describe the sea as a JSON object.",
        max_tokens=8,
        extra_body={"sampler": {"plugin": name, "config": {"json_object": True}}},
    ).choices[0].message.content
    assert content.startswith("{"), content
    print(f"ok     listed: {name} answers {content!r}")


if __name__ == "__main__":
    phase, args = sys.argv[1], sys.argv[2:]
    {"check": check, "upload": upload_completes, "listed": is_listed}[phase](*args)
