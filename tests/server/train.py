"""`POST /v1/train/grpo` end to end, as tenants see it.

`train`: alpha uploads a reward plugin and trains an adapter with it; each
step's line streams, then the adapter's. The adapter changes the model's
log-probabilities, alpha lists and uses it, beta neither sees nor uses it.
A second job while one runs is a 429; a job whose client goes away stops,
and the next one starts. Bad requests are 400s naming their field.

`after-restart`: the adapter is still alpha's, and only alpha's.
"""

import json
import sys
import threading
import time

import openai

from common import MODEL, client, error_of, http, plugin_bytes, upload

ADAPTER = MODEL + ":short"
REWARD = {
    "plugin": "length",
    # Shorter completions (in characters) score higher.
    "config": {"unit": "chars", "max_length": 40, "buffer": 35},
}
JOB = {
    "name": "short",
    "prompts": [{"prompt": "Tell me about cats."}, {"prompt": "Name a color."}],
    "rewards": [REWARD],
    "steps": 2,
    "group_size": 4,
    "prompts_per_step": 1,
    "max_tokens": 16,
    "lora_rank": 4,
    "learning_rate": 0.01,
    "seed": 1,
}


def lines_of(h, body):
    with h.stream("POST", "/v1/train/grpo", json=body) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line) for line in r.iter_lines() if line]


def logprobs(sdk, model):
    r = sdk.completions.create(
        model=model, prompt="Tell me about cats.", max_tokens=4, temperature=0, logprobs=1
    )
    return r.choices[0].logprobs.token_logprobs


def visibility():
    alpha, beta = client("alpha"), client("beta")
    assert ADAPTER in [m.id for m in alpha.models.list().data]
    assert ADAPTER not in [m.id for m in beta.models.list().data]
    try:
        beta.completions.create(model=ADAPTER, prompt="x", max_tokens=1)
        raise AssertionError("beta used alpha's adapter")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
        # It does not learn that alpha has one.
        assert "adapters" not in e.body["message"], e.body
    base, tuned = logprobs(alpha, MODEL), logprobs(alpha, ADAPTER)
    assert base != tuned, "the trained adapter changes nothing"


def train():
    h = http("alpha")
    r = upload(h, "length", plugin_bytes("length-penalty"))
    assert r.status_code in (200, 201), r.text
    with http("alpha") as u:
        before = u.get("/v1/usage").json()["completion_tokens"]
    lines = lines_of(h, JOB)
    steps = [l for l in lines if l.get("object") == "train.step"]
    assert [s["step"] for s in steps] == [1, 2], lines
    for s in steps:
        assert s["completions"] == 4, s
        assert set(s["rewards"]) == {"length", "total"}, s
        for key in ("loss", "kl", "grad_norm", "step_seconds"):
            assert isinstance(s[key], (int, float)), (key, s)
    assert lines[-1]["object"] == "train.done" and lines[-1]["model"] == ADAPTER, lines
    # The job's tokens count as the tenant's.
    after = h.get("/v1/usage").json()["completion_tokens"]
    assert after - before >= sum(s["completion_tokens"] for s in steps) > 0, (before, after)
    visibility()

    # Bad requests name their field.
    for change, field in [
        ({"steps": 0}, "steps"),
        ({"group_size": 1}, "group_size"),
        ({"name": "../up"}, "name"),
        ({"target_modules": ["lm_head"]}, "target_modules"),
        ({"learning_rate": -1}, "learning_rate"),
    ]:
        r = h.post("/v1/train/grpo", json={**JOB, **change})
        assert r.status_code == 400, (change, r.text)
        assert error_of(r)["param"] == field, (change, r.text)
    r = h.post("/v1/train/grpo", json={**JOB, "rewards": [{"plugin": "nope"}]})
    assert r.status_code == 404, r.text

    # One job at a time; a job whose client goes away stops.
    first_line = threading.Event()

    def long_job():
        with http("alpha") as c:
            with c.stream("POST", "/v1/train/grpo", json={**JOB, "name": "long", "steps": 1000}) as r:
                assert r.status_code == 200
                for _ in r.iter_lines():
                    first_line.set()
                    break  # and go away

    t = threading.Thread(target=long_job)
    t.start()
    assert first_line.wait(300), "the long job never reported a step"
    busy = http("beta").post("/v1/train/grpo", json={**JOB, "rewards": [{"plugin": "nope"}]})
    t.join()
    # Checked after the job's client left: the 429 came while it ran.
    assert busy.status_code == 429 and busy.headers.get("retry-after"), busy.text
    deadline = time.monotonic() + 120
    while True:
        r = h.post("/v1/train/grpo", json={**JOB, "name": "again", "steps": 1})
        if r.status_code == 200:
            assert json.loads(r.text.strip().splitlines()[-1])["object"] == "train.done", r.text
            break
        assert r.status_code == 429 and time.monotonic() < deadline, r.text
        time.sleep(0.5)
    ids = [m.id for m in client("alpha").models.list().data]
    assert MODEL + ":long" not in ids, ids

    # A tenant past its tokens per minute has its job wait, and says so.
    m = http("metered")
    r = upload(m, "length", plugin_bytes("length-penalty"))
    assert r.status_code in (200, 201), r.text
    seen = []
    with m.stream("POST", "/v1/train/grpo", json={**JOB, "steps": 5}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line:
                seen.append(json.loads(line))
                if seen[-1]["object"] != "train.step":
                    break
    assert seen[-1]["object"] == "train.waiting", seen
    assert "tokens" in seen[-1]["reason"] and seen[-1]["retry_after_s"] >= 1, seen
    print("train: adapters trained, used and kept to their tenant")


def after_restart():
    visibility()
    print("train: the adapter survived the restart")


if __name__ == "__main__":
    {"train": train, "after-restart": after_restart}[sys.argv[1]]()
