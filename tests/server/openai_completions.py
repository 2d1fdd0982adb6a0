"""The legacy completions endpoint through the official `openai` SDK."""

from common import MODEL, client, run

c = client("alpha")

PROMPT = "The capital of France is"


def complete(**kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("max_tokens", 6)
    return c.completions.create(model=MODEL, **kwargs)


def test_greedy_text_is_repeatable():
    a = complete(temperature=0)
    b = complete(temperature=0)
    assert a.object == "text_completion" and a.model == MODEL, a
    ch = a.choices[0]
    assert ch.index == 0 and ch.text, a
    assert ch.finish_reason in ("stop", "length"), ch
    assert b.choices[0].text == ch.text, (ch.text, b.choices[0].text)
    u = a.usage
    assert 0 < u.completion_tokens <= 6 and u.prompt_tokens > 0, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u


def test_the_default_max_tokens_is_16():
    r = c.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 16, r.usage
    assert r.choices[0].finish_reason == "length", r


def test_stream_concatenates_to_the_same_text():
    whole = complete(temperature=0).choices[0].text
    pieces, finishes, usage = [], [], []
    for chunk in complete(temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage.append(chunk.usage)
            assert chunk.choices == [], chunk
            continue
        for ch in chunk.choices:
            pieces.append(ch.text)
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    assert "".join(pieces) == whole, (pieces, whole)
    assert len(finishes) == 1, finishes
    assert len(usage) == 1 and usage[0].completion_tokens > 0, usage


def test_several_prompts_answer_in_order():
    prompts = [PROMPT, "One, two, three,"]
    r = complete(prompt=prompts, temperature=0)
    assert [ch.index for ch in r.choices] == [0, 1], r
    for p, ch in zip(prompts, r.choices):
        alone = complete(prompt=p, temperature=0).choices[0].text
        assert ch.text == alone, (p, ch.text, alone)


def test_token_id_prompts():
    r = complete(prompt=[1, 2, 3], temperature=0, max_tokens=2)
    assert r.usage.prompt_tokens == 3, r.usage
    r = complete(prompt=[[1, 2], [3, 4, 5]], temperature=0, max_tokens=2)
    assert len(r.choices) == 2 and r.usage.prompt_tokens == 5, r


def test_echo_prefixes_the_prompt():
    plain = complete(temperature=0).choices[0].text
    echoed = complete(temperature=0, echo=True).choices[0].text
    assert echoed.endswith(plain), (echoed, plain)
    assert PROMPT in echoed, echoed


def test_logprobs():
    r = complete(temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n, lp
    assert "".join(lp.tokens) == r.choices[0].text, (lp.tokens, r.choices[0].text)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0, lp
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0.0, lp
        assert 1 <= len(top) <= 2, top
        assert max(top.values()) == top.get(tok, max(top.values())), (tok, top)


def test_echo_with_logprobs_scores_the_prompt():
    """Prompt scoring as lm-eval-harness's `local-completions` does it:
    token-id prompts, `echo`, `logprobs: 1`, `max_tokens` 1 (the last
    entry dropped) or 0. Each prompt token after the first has the
    log-probability the model gives it after the tokens before it."""
    ctx = complete(prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    ids_lp = ctx.choices[0].logprobs
    assert ctx.choices[0].text == PROMPT, ctx
    assert ctx.usage.completion_tokens == 0 and ctx.choices[0].finish_reason == "length", ctx
    n = ctx.usage.prompt_tokens
    assert len(ids_lp.tokens) == len(ids_lp.token_logprobs) == len(ids_lp.text_offset) == n, ids_lp
    assert ids_lp.token_logprobs[0] is None and ids_lp.top_logprobs[0] is None, ids_lp
    assert all(l is not None and l <= 0 for l in ids_lp.token_logprobs[1:]), ids_lp
    assert ids_lp.text_offset == sorted(ids_lp.text_offset), ids_lp
    assert all(0 <= o <= len(PROMPT) for o in ids_lp.text_offset), ids_lp
    # The greedy next token and its log-probability, as generation sees
    # them; then the same token scored as the last of a token-id prompt.
    g = complete(prompt=PROMPT, max_tokens=1, temperature=0, logprobs=1, extra_body={"ignore_eos": True})
    glp = g.choices[0].logprobs
    with_next = complete(prompt=PROMPT + glp.tokens[0], max_tokens=1, echo=True, logprobs=1, temperature=0)
    lp = with_next.choices[0].logprobs
    scored = lp.token_logprobs[:-1]
    # lm-eval's parse: continuation = entries [ctxlen:-1], greedy when each
    # is the best of its top_logprobs.
    ctxlen = n
    cont = scored[ctxlen:]
    assert len(cont) == 1, (lp.tokens, glp.tokens)
    assert abs(cont[0] - glp.token_logprobs[0]) < 1e-3, (cont, glp.token_logprobs)
    top = lp.top_logprobs[ctxlen]
    assert abs(max(top.values()) - cont[0]) < 1e-3, (top, cont)
    assert len(lp.token_logprobs) == with_next.usage.prompt_tokens + 1, lp
    # Token-id prompts, batched, each scored on its own.
    r = c.completions.create(model=MODEL, prompt=[[1, 2, 3, 4], [5, 6]], max_tokens=0, echo=True, logprobs=1)
    assert [len(ch.logprobs.token_logprobs) for ch in r.choices] == [4, 2], r
    alone = c.completions.create(model=MODEL, prompt=[5, 6], max_tokens=0, echo=True, logprobs=1)
    assert abs(alone.choices[0].logprobs.token_logprobs[1] - r.choices[1].logprobs.token_logprobs[1]) < 1e-3


def test_max_tokens_zero_without_echo_is_empty():
    r = complete(max_tokens=0)
    assert r.choices[0].text == "" and r.usage.completion_tokens == 0, r


def test_stop():
    full = complete(prompt="Count: 1, 2, 3,", temperature=0, max_tokens=12).choices[0].text
    assert "," in full, full
    r = complete(prompt="Count: 1, 2, 3,", temperature=0, max_tokens=12, stop=",")
    assert r.choices[0].text == full[: full.index(",")], (full, r.choices[0].text)
    assert r.choices[0].finish_reason == "stop"


def test_seeded_n():
    r = complete(prompt="My favourite animal is", n=3, temperature=1.0, seed=4, max_tokens=4)
    texts = [ch.text for ch in r.choices]
    assert [ch.index for ch in r.choices] == [0, 1, 2], r
    again = complete(prompt="My favourite animal is", n=3, temperature=1.0, seed=4, max_tokens=4)
    assert [ch.text for ch in again.choices] == texts, texts


run(globals())
