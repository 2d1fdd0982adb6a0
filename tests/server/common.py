"""What the server test scripts share: where the server is, the tenants'
keys, clients for both, and a small runner.

`tests/server.rs` starts a real `deepwasm serve` and runs each script with
these environment variables set:

- `DEEPWASM_URL`: the server's origin, `http://127.0.0.1:PORT`;
- `DEEPWASM_SERVED_MODEL`: the model id it serves;
- `DEEPWASM_KEY_<TENANT>`: an API key of each tenant of its tenants file;
- `DEEPWASM_PLUGIN_<NAME>`: paths of compiled plugin components.

A script's `test_*` functions run in the order they are defined; the
script exits non-zero if any fails, after printing every failure. Name
some functions on the command line to run only those.
"""

import hashlib
import json
import os
import sys
import time
import traceback

# The HTTP client the pinned `openai` SDK is built on (a fork of httpx with
# the same API); raw requests use it too.
import httpx2
import openai

URL = os.environ["DEEPWASM_URL"].rstrip("/")
MODEL = os.environ["DEEPWASM_SERVED_MODEL"]

# Generation on the small CPU model takes seconds; nothing here should
# take minutes.
TIMEOUT = 300.0


def key(tenant):
    """The API key of `tenant` (as named in the tenants file)."""
    return os.environ["DEEPWASM_KEY_" + tenant.upper()]


def plugin_path(name):
    """The path of a compiled plugin component, e.g. `word-ban`."""
    return os.environ["DEEPWASM_PLUGIN_" + name.upper().replace("-", "_")]


def plugin_bytes(name):
    with open(plugin_path(name), "rb") as f:
        return f.read()


def content_id(data):
    """A plugin's id: the SHA-256 of its component's bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def fresh_copy(data):
    """`data` with a custom section of random bytes appended: the same
    plugin under a new content id, so the server must compile it anew."""

    def leb(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    name = b"nonce"
    payload = leb(len(name)) + name + os.urandom(16)
    return data + b"\x00" + leb(len(payload)) + payload


def client(tenant):
    """The official SDK, as `tenant`. No retries: a 429 or a 5xx must show."""
    return openai.OpenAI(
        base_url=URL + "/v1", api_key=key(tenant), max_retries=0, timeout=TIMEOUT
    )


def http(tenant=None):
    """A raw HTTP client, authenticated as `tenant` when one is given."""
    headers = {"Authorization": "Bearer " + key(tenant)} if tenant else {}
    return httpx2.Client(base_url=URL, headers=headers, timeout=TIMEOUT)


def stream_events(h, path, body):
    """POST `body` to `path` streamed, checking it answers 200, and yield
    each `data:` event as JSON (not the final `[DONE]`)."""
    with h.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[len("data: ") :])


def delta_text(event):
    """The text of a chat stream event's choices' deltas."""
    return "".join(c["delta"].get("content") or "" for c in event.get("choices", []))


def error_of(response):
    """The `error` object of an error response, checked for OpenAI's shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"], err
    return err


def upload(h, name, data):
    """Upload a component as `name`; returns the response."""
    return h.post(
        "/v1/plugins",
        params={"name": name},
        content=data,
        headers={"Content-Type": "application/wasm"},
    )


def small_rollout(h, reward):
    """A rollout of one prompt in a group of 3 (at most 6 tokens each) with
    the reward plugin `reward`; checks it answered 200 and that every
    completion has its tokens and their log-probabilities, and returns
    (the group, the summary)."""
    r = h.post(
        "/v1/rollouts",
        json={
            "prompts": [{"prompt": "Think step by step: 3+4 ="}],
            "group_size": 3,
            "max_tokens": 6,
            "temperature": 1.0,
            "seed": 3,
            "rewards": [{"plugin": reward}],
        },
    )
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    groups, summary = lines[:-1], lines[-1]["summary"]
    assert len(groups) == 1 and len(groups[0]["completions"]) == 3, groups
    for comp in groups[0]["completions"]:
        assert 0 < len(comp["tokens"]) <= 6, comp
        assert len(comp["logprobs"]) == len(comp["tokens"]), comp
    return groups[0], summary


def chat(c, content, **kwargs):
    """One chat completion of a single user message."""
    kwargs.setdefault("max_tokens", 12)
    return c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )


def expect_status(exc_type, status, fn, *args, **kwargs):
    """Call `fn` and return the SDK error it must raise."""
    try:
        result = fn(*args, **kwargs)
    except openai.APIStatusError as e:
        assert isinstance(e, exc_type) and e.status_code == status, (
            f"expected {exc_type.__name__} ({status}), got {type(e).__name__} "
            f"({e.status_code}): {e.body}"
        )
        return e
    raise AssertionError(f"expected {exc_type.__name__} ({status}), got {result!r}")


def expect_unknown_plugin(c, plugin, **kwargs):
    """A chat request naming a plugin this tenant does not have (another
    tenant's, a deleted one) answers 404, as GET of its id does, and names
    `sampler.plugin`."""
    e = expect_status(
        openai.NotFoundError,
        404,
        chat,
        c,
        "hi",
        max_tokens=2,
        extra_body={"sampler": dict({"plugin": plugin}, **kwargs)},
    )
    assert e.param == "sampler.plugin", e.body
    assert plugin in e.message, e.message
    return e


def dump(value):
    return json.dumps(value, indent=1, ensure_ascii=False)


def run(namespace):
    """Run the `test_*` functions of a script, report, and exit."""
    wanted = set(sys.argv[1:])
    tests = [
        (name, fn)
        for name, fn in namespace.items()
        if name.startswith("test_") and callable(fn) and (not wanted or name in wanted)
    ]
    unknown = wanted - {name for name, _ in tests}
    if unknown:
        sys.exit(f"no such tests: {', '.join(sorted(unknown))}")
    failed = []
    for name, fn in tests:
        started = time.monotonic()
        try:
            fn()
        except Exception:
            failed.append(name)
            print(f"FAILED {name} ({time.monotonic() - started:.1f} s)", flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
        else:
            print(f"ok     {name} ({time.monotonic() - started:.1f} s)", flush=True)
    print(f"{len(tests) - len(failed)} passed, {len(failed)} failed", flush=True)
    sys.exit(1 if failed else 0)
