"""deepwasm and llama.cpp's llama-server (`DEEPWASM_PEER_URL`, on the same
GGUF file) answer the same greedy completions through the same OpenAI
client, as far as llama.cpp itself is decisive.

Both round activations differently (llama.cpp to 8 bits before each
quantized product, deepwasm not at all), so a step where llama.cpp's two
best tokens are within `NEAR_TIE` of each other may go either way; the
comparison of a prompt stops there. Every other step must agree."""

import os

import httpx2

from common import MODEL, client, run

NEAR_TIE = 0.5
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 4, 5,",
    "The three primary colours are",
]

PEER = os.environ["DEEPWASM_PEER_URL"].rstrip("/")


def test_greedy_completions_agree_with_llama_server():
    c = client("alpha")
    judged = 0
    for prompt in PROMPTS:
        ours = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, logprobs=1)
        # llama-server answers logprobs in the chat shape, with top-2 scores.
        theirs = httpx2.post(
            PEER + "/v1/completions",
            json={"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 2},
            timeout=60,
        ).json()
        assert ours.usage.prompt_tokens == theirs["usage"]["prompt_tokens"], (prompt, ours.usage, theirs["usage"])
        mine = ours.choices[0].logprobs.tokens
        for step, t in enumerate(theirs["choices"][0]["logprobs"]["content"]):
            top = [x["logprob"] for x in t["top_logprobs"]]
            if len(top) < 2 or top[0] - top[1] < NEAR_TIE:
                break
            assert step < len(mine), (prompt, step, mine)
            assert mine[step] == t["token"], (prompt, step, mine[: step + 1])
            judged += 1
    assert judged >= 20, f"only {judged} decisive steps compared"
    print(f"{judged} decisive greedy steps agree")


run(globals())
