"""lm-evaluation-harness's `local-completions` model against the server,
unmodified: a loglikelihood (multiple-choice) task and a generation task on
local data, with the server's own tokenizer through its vLLM-style
`/tokenizer_info`, `/tokenize` and `/detokenize` endpoints (no Hugging Face
download, no torch). Run with the interpreter of the lm-eval venv
`scripts/setup` makes."""

import json
import math
import os
import sys
import urllib.request

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

URL = os.environ["DEEPWASM_URL"].rstrip("/")
MODEL = os.environ["DEEPWASM_SERVED_MODEL"]
KEY = os.environ["DEEPWASM_KEY_ALPHA"]
os.environ["OPENAI_API_KEY"] = KEY
TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_eval_tasks")


def complete(prompt, **kwargs):
    """A greedy completion straight from the server, to check against."""
    body = json.dumps({"model": MODEL, "prompt": prompt, "temperature": 0, **kwargs}).encode()
    req = urllib.request.Request(
        URL + "/v1/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + KEY},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def main():
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": MODEL,
            "base_url": URL + "/v1/completions",
            "tokenizer_backend": "remote",
            "auth_token": KEY,
            "num_concurrent": 2,
            "max_retries": 1,
        },
        tasks=["deepwasm_capitals", "deepwasm_count"],
        task_manager=TaskManager(include_path=TASKS),
        log_samples=True,
        apply_chat_template=False,
    )
    r = results["results"]
    print(json.dumps(r, indent=1))
    acc = r["deepwasm_capitals"]["acc,none"]
    # Six capitals against nonsense: even a 135M model knows most.
    assert acc >= 4 / 6, acc
    samples = results["samples"]["deepwasm_capitals"]
    assert len(samples) == 6, len(samples)
    for s in samples:
        lls = [resp[0][0] for resp in s["resps"]]
        assert all(math.isfinite(ll) and ll < 0 for ll in lls), lls
        assert len(set(lls)) == len(lls), lls
        # The harness's score of a choice is the sum of the echoed
        # logprobs after the context: the same as asking the server for
        # the context and choice together (joined by the harness's target
        # delimiter, a space), scored.
        doc = s["doc"]
        gold = doc["choices"][doc["answer"]]
        scored = complete(doc["question"] + " " + gold, max_tokens=0, echo=True, logprobs=1)
        ctx = complete(doc["question"], max_tokens=0, echo=True, logprobs=1)
        n_ctx = len(ctx["choices"][0]["logprobs"]["tokens"])
        total = sum(scored["choices"][0]["logprobs"]["token_logprobs"][n_ctx:])
        assert abs(total - lls[doc["answer"]]) < 1e-3, (total, lls, doc)
    gen = results["samples"]["deepwasm_count"]
    assert len(gen) == 3, gen
    for s in gen:
        got = s["filtered_resps"][0]
        want = complete(s["doc"]["prompt"], max_tokens=8, stop=[",", "\n"])["choices"][0]["text"]
        assert got == want, (got, want)
    assert "exact_match,none" in r["deepwasm_count"], r
    print("ok     lm-eval local-completions: loglikelihood and generation tasks")


if __name__ == "__main__":
    try:
        main()
    except AssertionError:
        import traceback

        traceback.print_exc()
        sys.exit(1)
