"""What real clients send and expect beyond the basics: the official SDK's
agent loop (messages appended as the SDK returned them), `model_dump()`
round-trips, fields of newer API versions, and legacy function calling."""

import json

import openai

from common import MODEL, chat, client, dump, expect_status, http, run

c = client("alpha")

CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


def run_tool(call):
    args = json.loads(call.function.arguments)
    assert set(args) == {"a", "b"}, args
    return str(args["a"] + args["b"])


def test_the_sdk_agent_loop_appends_the_returned_messages():
    """The documented loop: append `choices[0].message` as the SDK parsed
    it (tool calls with their `index`), answer each call, ask again; three
    tool turns, then a text answer."""
    messages = [
        {"role": "system", "content": "You add numbers with the add tool."},
        {"role": "user", "content": "What is 2 + 3, then plus 4, then plus 5?"},
    ]
    for turn in range(3):
        r = c.chat.completions.create(
            model=MODEL,
            messages=messages,
            tools=[CALC_TOOL],
            tool_choice="required",
            temperature=0,
            max_tokens=60,
        )
        message = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls", dump(r.model_dump())
        assert message.tool_calls, dump(r.model_dump())
        messages.append(message)
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": run_tool(call)})
    r = c.chat.completions.create(
        model=MODEL, messages=messages, tools=[CALC_TOOL], temperature=0, max_tokens=8
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls"), dump(r.model_dump())
    # The request really carried the SDK's objects: 2 + 3 turns of calls
    # and results.
    assert sum(1 for m in messages if not isinstance(m, dict)) == 3


def test_model_dump_of_a_reply_is_accepted_back():
    """`message.model_dump()` adds `annotations`, `audio`, `function_call`
    (null) and keeps `index` in each tool call; all of it comes back."""
    r = chat(
        c,
        "Add 1 and 2.",
        tools=[CALC_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )
    dumped = r.choices[0].message.model_dump()
    assert {"annotations", "audio", "function_call"} <= set(dumped), dumped
    assert "index" in dumped["tool_calls"][0], dumped
    call = dumped["tool_calls"][0]
    messages = [
        {"role": "user", "content": "Add 1 and 2."},
        dumped,
        {"role": "tool", "tool_call_id": call["id"], "content": "3"},
    ]
    r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    assert r.choices[0].message.content is not None, dump(r.model_dump())
    # The whole reply object too, as a JSON round trip of what was sent.
    text = chat(c, "Say hi.", max_tokens=4, temperature=0).choices[0].message
    r = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi."}, text.model_dump(), {"role": "user", "content": "Again."}],
        max_tokens=4,
    )
    assert r.choices[0].message.content is not None


NEWER_FIELDS = {
    "prompt_cache_key": "user-42",
    "prompt_cache_retention": "24h",
    "safety_identifier": "hash-of-user",
    "verbosity": "low",
    "modalities": ["text"],
    "prediction": {"type": "content", "content": "hello"},
    "web_search_options": {},
    "parallel_tool_calls": True,
    "service_tier": "auto",
    "store": False,
    "metadata": {"k": "v"},
}


def ignored_counts(endpoint):
    with http() as h:
        text = h.get("/metrics").text
    counts = {}
    for line in text.splitlines():
        if line.startswith("deepwasm_request_ignored_fields_total{") and f'endpoint="{endpoint}"' in line:
            field = line.split('field="')[1].split('"')[0]
            counts[field] = float(line.rsplit(" ", 1)[1])
    return counts


def test_fields_of_newer_api_versions_are_accepted_and_counted():
    before = ignored_counts("chat/completions")
    with http("alpha") as h:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            **NEWER_FIELDS,
            "max_token": 5,
        }
        r = h.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        ignored = r.headers["deepwasm-ignored-fields"].split(", ")
        # A misspelt field is ignored too, and the header says so.
        assert "max_token" in ignored and "verbosity" in ignored, ignored
        # Fields this server implements are not in it.
        assert "parallel_tool_calls" not in ignored and "store" not in ignored, ignored
        # Implemented fields stay strict.
        r = h.post("/v1/chat/completions", json=dict(body, temperature="hot"))
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", r.text
        r = h.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "a", "max_tokens": 1, "safety_identifier": "x"},
        )
        assert r.status_code == 200, r.text
    after = ignored_counts("chat/completions")
    assert after.get("verbosity", 0) - before.get("verbosity", 0) == 1, (before, after)
    # Names outside OpenAI's fields share one label, so clients cannot
    # grow the metric.
    assert after.get("other", 0) - before.get("other", 0) == 1, (before, after)
    assert "max_token" not in after, after
    # The SDK sends them as typed arguments.
    r = chat(
        c,
        "hi",
        max_tokens=2,
        prompt_cache_key="k",
        safety_identifier="s",
        verbosity="low",
        modalities=["text"],
        parallel_tool_calls=False,
    )
    assert r.choices[0].message.content is not None


def test_many_unknown_fields_do_not_grow_the_metric():
    before = ignored_counts("chat/completions")
    with http("alpha") as h:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        body.update({f"junk_{i}": i for i in range(200)})
        r = h.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert len(r.headers["deepwasm-ignored-fields"].split(", ")) <= 32
    after = ignored_counts("chat/completions")
    assert set(after) - set(before) <= {"other"}, (before, after)
    assert after["other"] - before.get("other", 0) == 200


ADD_FUNCTION = dict(CALC_TOOL["function"])


def test_legacy_functions_map_onto_tools():
    r = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Add 2 and 2."}],
        functions=[ADD_FUNCTION],
        function_call={"name": "add"},
        temperature=0,
        max_tokens=60,
    )
    ch = r.choices[0]
    assert ch.finish_reason == "function_call", dump(r.model_dump())
    assert not ch.message.tool_calls, dump(r.model_dump())
    fc = ch.message.function_call
    assert fc.name == "add" and set(json.loads(fc.arguments)) == {"a", "b"}, fc
    # The legacy round trip: the call, and a `function` message answering it.
    messages = [
        {"role": "user", "content": "Add 2 and 2."},
        ch.message.model_dump(exclude_none=True),
        {"role": "function", "name": "add", "content": "4"},
    ]
    r = c.chat.completions.create(
        model=MODEL, messages=messages, functions=[ADD_FUNCTION], max_tokens=4, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length", "function_call"), dump(r.model_dump())
    # Streamed: the call comes as `delta.function_call`.
    stream = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Add 2 and 2."}],
        functions=[ADD_FUNCTION],
        function_call={"name": "add"},
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    name, args, finishes = "", "", []
    for chunk in stream:
        for d in chunk.choices:
            assert not d.delta.tool_calls, chunk
            if d.delta.function_call:
                name += d.delta.function_call.name or ""
                args += d.delta.function_call.arguments or ""
            if d.finish_reason:
                finishes.append(d.finish_reason)
    assert name == "add" and finishes == ["function_call"], (name, finishes)
    assert json.loads(args) == json.loads(fc.arguments), (args, fc.arguments)


def test_legacy_function_calling_errors_name_the_field():
    e = expect_status(
        openai.BadRequestError,
        400,
        chat,
        c,
        "hi",
        functions=[ADD_FUNCTION],
        tools=[CALC_TOOL],
    )
    assert e.param == "functions", e.body
    e = expect_status(openai.BadRequestError, 400, chat, c, "hi", function_call="auto")
    assert e.param == "function_call", e.body
    e = expect_status(
        openai.BadRequestError,
        400,
        c.chat.completions.create,
        model=MODEL,
        messages=[{"role": "user", "content": "x"}, {"role": "function", "name": "add", "content": "4"}],
        max_tokens=2,
    )
    assert e.param == "messages[1]", e.body


def test_embeddings_through_the_sdk():
    # The SDK asks for base64 unless told otherwise, and decodes it.
    r = c.embeddings.create(model=MODEL, input="The cat sat on the mat.")
    assert r.object == "list" and r.model == MODEL and len(r.data) == 1, r
    v = r.data[0].embedding
    caps = c.models.retrieve(MODEL).model_extra
    assert caps["capabilities"]["embeddings"] is True, caps
    assert len(v) == caps["hidden_size"], (len(v), caps)
    assert abs(sum(x * x for x in v) - 1.0) < 1e-3, "unit length"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens, r.usage
    floats = c.embeddings.create(model=MODEL, input="The cat sat on the mat.", encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, v)) < 1e-6
    texts = ["The cat sat on the mat.", "A dog ran in the park.", "The cat sat on the mat."]
    batch = c.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1, 2], batch
    a, b, again = (d.embedding for d in batch.data)
    assert max(abs(x - y) for x, y in zip(a, again)) < 1e-4, "the same text, the same vector"
    assert max(abs(x - y) for x, y in zip(a, v)) < 1e-4, "batched or alone, the same vector"
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3, "other text, another vector"
    # Token ids and the last-token pooling; raw (unnormalised) vectors.
    ids = c.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5, ids
    last = c.embeddings.create(
        model=MODEL, input="The cat sat on the mat.", encoding_format="float",
        extra_body={"pooling": "last", "normalize": False},
    )
    lv = last.data[0].embedding
    assert abs(sum(x * x for x in lv) - 1.0) > 1e-2, "not normalised"
    assert max(abs(x - y) for x, y in zip(lv, v)) > 1e-3, "last token is not the mean"


def test_embedding_errors_name_the_field():
    cases = [
        ("dimensions", dict(input="x", dimensions=3)),
        ("encoding_format", dict(input="x", encoding_format="int8")),
        ("input[0]", dict(input="")),
        ("input", dict(input=[])),
        ("pooling", dict(input="x", extra_body={"pooling": "max"})),
    ]
    for param, kwargs in cases:
        e = expect_status(openai.BadRequestError, 400, c.embeddings.create, model=MODEL, **kwargs)
        assert e.param == param, (param, e.body)
    e = expect_status(
        openai.BadRequestError, 400, c.embeddings.create, model=MODEL, input=[[1] * 9000]
    )
    assert e.code == "context_length_exceeded", e.body


def test_many_inputs_share_the_batch_without_filling_the_queue():
    # More inputs than the scheduler queues at once: they go in by a
    # window, and each comes back at its index.
    texts = [f"item number {i}" for i in range(300)]
    r = c.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in r.data] == list(range(300))
    one = c.embeddings.create(model=MODEL, input=texts[123], encoding_format="float")
    assert max(abs(x - y) for x, y in zip(r.data[123].embedding, one.data[0].embedding)) < 1e-4


def test_tokenizer_endpoints_round_trip():
    with http("alpha") as h:
        info = h.get("/tokenizer_info").json()
        assert info["eos_token"] and info["model_max_length"] > 0 and info["chat_template"], info
        r = h.post("/tokenize", json={"prompt": "The capital of France is", "add_special_tokens": False}).json()
        assert r["count"] == len(r["tokens"]) > 0 and r["max_model_len"] == info["model_max_length"], r
        back = h.post("/detokenize", json={"tokens": r["tokens"]}).json()
        assert back["prompt"] == "The capital of France is", back
        # The same count as the completion's usage.
        u = c.completions.create(model=MODEL, prompt=r["tokens"], max_tokens=1).usage
        assert u.prompt_tokens == r["count"], u
        chat_ids = h.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
        used = chat(c, "hi", max_tokens=1).usage.prompt_tokens
        assert chat_ids["count"] == used, (chat_ids, used)
        bad = h.post("/detokenize", json={"tokens": [10**9]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens", bad.text
        both = h.post("/tokenize", json={"prompt": "x", "messages": []})
        assert both.status_code == 400, both.text
    with http() as h:
        assert h.post("/tokenize", json={"prompt": "x"}).status_code == 401


if __name__ == "__main__":
    run(globals())
