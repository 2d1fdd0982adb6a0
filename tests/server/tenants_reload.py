"""The tenants file read again on SIGHUP, without a restart: a new tenant's
key works, a removed tenant's key stops working, a changed limit takes
effect while what the tenant used so far is kept, and a broken file changes
nothing. `DEEPWASM_TENANTS_FILE` is the server's tenants file and
`DEEPWASM_PID` its process."""

import hashlib
import os
import signal
import time

import httpx2

from common import MODEL, TIMEOUT, URL, error_of, key, run

PATH = os.environ["DEEPWASM_TENANTS_FILE"]
PID = int(os.environ["DEEPWASM_PID"])
OMEGA_KEY = "sk-deepwasm-test-omega"


def as_key(k):
    return httpx2.Client(base_url=URL, headers={"Authorization": "Bearer " + k}, timeout=TIMEOUT)


def chat(h, max_tokens=2):
    return h.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hello there, how are you?"}], "max_tokens": max_tokens},
    )


def entry(name, k, limits=""):
    digest = hashlib.sha256(k.encode()).hexdigest()
    return f'[[tenant]]\nname = "{name}"\napi_keys = ["sha256:{digest}"]\n[tenant.limits]\n{limits}\n\n'


def reload_until(check, what):
    os.kill(PID, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_reload_adds_removes_and_changes_tenants():
    with as_key(OMEGA_KEY) as omega, as_key(key("beta")) as beta, as_key(key("metered")) as metered:
        assert omega.get("/v1/usage").status_code == 401
        assert beta.get("/v1/usage").status_code == 200
        # `metered` spends its 40 tokens a minute.
        assert chat(metered, max_tokens=16).status_code == 200
        r = chat(metered)
        assert r.status_code == 429 and error_of(r)["type"] == "tokens", r.text
        used = metered.get("/v1/usage").json()
        original = open(PATH).read()
        # beta goes, omega comes, metered gets more tokens.
        blocks = ["[[tenant]]" + b for b in original.split("[[tenant]]") if b.strip()]
        text = "".join(b for b in blocks if 'name = "beta"' not in b)
        text = text.replace("tokens_per_minute = 40", "tokens_per_minute = 100000")
        text += entry("omega", OMEGA_KEY, "max_concurrent_requests = 2")
        with open(PATH, "w") as f:
            f.write(text)
        reload_until(lambda: omega.get("/v1/usage").status_code == 200, "omega's key never worked")
        r = beta.get("/v1/usage")
        assert r.status_code == 401, r.text
        assert chat(omega).status_code == 200
        # The raised limit holds, and what metered used is still counted.
        r = chat(metered)
        assert r.status_code == 200, r.text
        now = metered.get("/v1/usage").json()
        assert now["requests"] == used["requests"] + 1, (used, now)
        assert now["prompt_tokens"] > used["prompt_tokens"], (used, now)


def test_a_broken_file_changes_nothing():
    with open(PATH, "a") as f:
        f.write("[[tenant]]\nname = \"x\"\nlimitz = 1\n")
    os.kill(PID, signal.SIGHUP)
    time.sleep(1.0)
    with as_key(OMEGA_KEY) as omega, as_key(key("alpha")) as alpha:
        assert omega.get("/v1/usage").status_code == 200
        assert alpha.get("/v1/usage").status_code == 200
        assert chat(alpha).status_code == 200


run(globals())
