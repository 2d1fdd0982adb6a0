"""litellm, a client many agent frameworks route through, against the
server as an OpenAI-compatible provider: chat, streaming, embeddings, and
a context overflow raised as `ContextWindowExceededError` (what its
fallbacks key on)."""

import os

# No network: litellm reads its bundled model-cost map instead of fetching one.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("LITELLM_TELEMETRY", "False")

import litellm  # noqa: E402

from common import MODEL, URL, key, run  # noqa: E402

ARGS = dict(model="openai/" + MODEL, api_base=URL + "/v1", api_key=key("alpha"), num_retries=0)


def test_chat_and_stream():
    r = litellm.completion(messages=[{"role": "user", "content": "Say hi."}], max_tokens=5, temperature=0, **ARGS)
    text = r.choices[0].message.content
    assert text, r
    pieces = litellm.completion(
        messages=[{"role": "user", "content": "Say hi."}], max_tokens=5, temperature=0, stream=True, **ARGS
    )
    streamed = "".join(p.choices[0].delta.content or "" for p in pieces)
    assert streamed == text, (streamed, text)


def test_context_overflow_is_a_context_window_error():
    try:
        litellm.completion(messages=[{"role": "user", "content": "word " * 9000}], max_tokens=5, **ARGS)
    except litellm.ContextWindowExceededError as e:
        assert e.status_code == 400, e
        assert "maximum context length" in str(e), e
    else:
        raise AssertionError("an overflowing prompt was accepted")
    # A bad parameter is a plain bad request, not a context error.
    try:
        litellm.completion(messages=[{"role": "user", "content": "x"}], max_tokens=5, temperature=5, **ARGS)
    except litellm.ContextWindowExceededError as e:
        raise AssertionError(f"a bad temperature read as a context overflow: {e}")
    except litellm.BadRequestError as e:
        assert "temperature" in str(e), e
    else:
        raise AssertionError("temperature 5 was accepted")


def test_embeddings():
    r = litellm.embedding(input=["The cat sat.", "A dog ran."], **ARGS)
    assert len(r.data) == 2 and len(r.data[0]["embedding"]) > 0, r


if __name__ == "__main__":
    run(globals())
