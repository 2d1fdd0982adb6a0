"""Chat completions through the official `openai` SDK: determinism, seeds,
streaming, several choices, stop strings, token limits, log-probabilities,
logit bias, JSON output and tool calls."""

import json

import openai

from common import MODEL, chat, client, dump, http, run

c = client("alpha")

PROMPT = "Write one sentence about the sea."


def test_models_list():
    models = c.models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL], ids
    m = models.data[0]
    assert m.object == "model" and m.owned_by == "deepwasm", m
    assert c.models.retrieve(MODEL).id == MODEL
    # What a client needs to plan requests: the context, and what works.
    extra = m.model_extra
    assert extra["context_length"] == 8192 and 0 < extra["max_model_len"] <= 8192, extra
    caps = extra["capabilities"]
    assert caps["chat_completions"] and caps["tools"] and "required" in caps["tool_choice"], caps
    assert caps["embeddings"] is True and caps["responses"] is True, caps
    assert extra["hidden_size"] > 0, extra


def test_greedy_is_repeatable():
    a = chat(c, PROMPT, temperature=0)
    b = chat(c, PROMPT, temperature=0)
    assert a.object == "chat.completion" and a.model == MODEL, a
    assert a.choices[0].message.role == "assistant"
    text = a.choices[0].message.content
    assert text, a
    assert b.choices[0].message.content == text, (text, b.choices[0].message.content)
    u = a.usage
    assert 0 < u.completion_tokens <= 12 and u.prompt_tokens > 0, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    assert a.choices[0].finish_reason in ("stop", "length"), a
    assert a.id != b.id, "every completion has its own id"


def test_seeded_sampling_is_reproducible():
    texts = {}
    for seed in (1, 2, 3):
        runs = [
            chat(c, PROMPT, temperature=1.0, seed=seed).choices[0].message.content
            for _ in range(2)
        ]
        assert runs[0] == runs[1], (seed, runs)
        texts[seed] = runs[0]
    # Twelve tokens at temperature 1: three seeds agreeing on all of them
    # would mean the seed is ignored.
    assert len(set(texts.values())) > 1, texts


def test_stream_concatenates_to_the_same_text():
    whole = chat(c, PROMPT, temperature=0)
    stream = chat(
        c, PROMPT, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    pieces, finishes, usage_chunks, roles = [], [], [], []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            usage_chunks.append(chunk)
            continue
        for ch in chunk.choices:
            assert ch.index == 0, chunk
            if ch.delta.role:
                roles.append(ch.delta.role)
            if ch.delta.content:
                pieces.append(ch.delta.content)
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content, (pieces, whole)
    assert roles == ["assistant"], roles
    assert finishes == [whole.choices[0].finish_reason], finishes
    assert len(usage_chunks) == 1, usage_chunks
    last = usage_chunks[0]
    assert last.choices == [], last
    assert last.usage.completion_tokens == whole.usage.completion_tokens, (last, whole)
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens, (last, whole)


def test_stream_without_usage_sends_none():
    for chunk in chat(c, PROMPT, temperature=0, max_tokens=3, stream=True):
        assert chunk.usage is None, chunk


def test_n_choices():
    r = chat(c, PROMPT, n=3, temperature=1.0, seed=11, max_tokens=5)
    assert [ch.index for ch in r.choices] == [0, 1, 2], r
    texts = [ch.message.content for ch in r.choices]
    assert all(isinstance(t, str) for t in texts), texts
    assert len(set(texts)) > 1, f"three samples at temperature 1 all equal: {texts}"
    assert 3 <= r.usage.completion_tokens <= 15, r.usage
    again = chat(c, PROMPT, n=3, temperature=1.0, seed=11, max_tokens=5)
    assert [ch.message.content for ch in again.choices] == texts


def test_stop_string_ends_the_text_before_it():
    full = chat(c, PROMPT, temperature=0, max_tokens=16).choices[0].message.content
    words = [w for w in full.split() if len(w) >= 3]
    assert len(words) >= 2, full
    stop = words[1]
    at = full.find(stop)
    # Chat content is trimmed, as the whole reply is.
    before = full[:at].rstrip()
    r = chat(c, PROMPT, temperature=0, max_tokens=16, stop=[stop, "\u2603never"])
    ch = r.choices[0]
    assert ch.message.content == before, (full, stop, ch.message.content)
    assert ch.finish_reason == "stop", ch
    r = chat(c, PROMPT, temperature=0, max_tokens=16, stop=stop)
    assert r.choices[0].message.content == before


def test_max_tokens_and_max_completion_tokens():
    long = "Tell me a long story about a dragon and a knight."
    r = chat(c, long, temperature=0, max_tokens=5)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length", r
    r = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": long}],
        temperature=0,
        max_completion_tokens=3,
    )
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length", r
    # The newer name wins when both are given.
    r = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": long}],
        temperature=0,
        max_tokens=7,
        max_completion_tokens=2,
    )
    assert r.usage.completion_tokens == 2, r


def test_logprobs_and_top_logprobs():
    r = chat(c, PROMPT, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    ch = r.choices[0]
    content = ch.logprobs.content
    assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
    joined = b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace")
    assert joined == ch.message.content, (joined, ch.message.content)
    for t in content:
        assert t.logprob <= 0.0, t
        assert len(t.top_logprobs) == 3, t
        lps = [x.logprob for x in t.top_logprobs]
        assert lps == sorted(lps, reverse=True), t
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token, t
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, t
    plain = chat(c, PROMPT, temperature=0, max_tokens=6)
    assert plain.choices[0].logprobs is None, plain


def test_logprobs_spell_the_content_of_a_finished_reply():
    """A reply that ends on its own: the end-of-turn token ends it without
    being content, so its logprob is not among the content's, whole or
    streamed."""
    messages = [{"role": "user", "content": "Say just the word: yes"}]
    r = c.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=64, logprobs=True
    )
    ch = r.choices[0]
    assert ch.finish_reason == "stop", ch
    joined = b"".join(bytes(t.bytes) for t in ch.logprobs.content).decode("utf-8", "replace")
    assert joined == ch.message.content, (joined, ch.message.content)
    stream = c.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=64, logprobs=True, stream=True
    )
    streamed = [
        t for chunk in stream for choice in chunk.choices if choice.logprobs for t in choice.logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in ch.logprobs.content], streamed


def greedy_token_ids(messages, max_tokens):
    """The greedy tokens of a chat as ids, from the rollouts endpoint (the
    OpenAI endpoints show tokens as text only)."""
    with http("alpha") as h:
        r = h.post(
            "/v1/rollouts",
            json={
                "prompts": [{"messages": messages}],
                "group_size": 1,
                "temperature": 0,
                "max_tokens": max_tokens,
            },
        )
        assert r.status_code == 200, r.text
        lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    return lines[0]["completions"][0]["tokens"]


def test_logit_bias():
    messages = [{"role": "user", "content": PROMPT}]
    ids = greedy_token_ids(messages, 4)
    base = c.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=4, logprobs=True
    )
    tokens = [t.token for t in base.choices[0].logprobs.content]
    assert len(tokens) == len(ids) == 4, (tokens, ids)
    other = next(i for i, t in zip(ids, tokens) if t != tokens[0])
    other_text = tokens[ids.index(other)]

    banned = c.chat.completions.create(
        model=MODEL,
        messages=messages,
        temperature=0,
        max_tokens=4,
        logprobs=True,
        logit_bias={str(ids[0]): -100},
    )
    first = banned.choices[0].logprobs.content[0].token
    assert first != tokens[0], (first, tokens)

    forced = c.chat.completions.create(
        model=MODEL,
        messages=messages,
        temperature=0,
        max_tokens=4,
        logprobs=True,
        logit_bias={str(other): 100},
    )
    got = [t.token for t in forced.choices[0].logprobs.content]
    assert got == [other_text] * 4, (got, other_text)


def check_answer_object(text):
    value = json.loads(text)
    assert isinstance(value, dict) and set(value) == {"answer"}, value
    assert isinstance(value["answer"], int) and not isinstance(value["answer"], bool), value


def test_response_format_json_object():
    r = chat(
        c,
        'Describe a cat as JSON, for example {"name": "Tom", "age": 3}.',
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    ch = r.choices[0]
    assert ch.finish_reason == "stop", f"the JSON did not end in 60 tokens: {ch}"
    value = json.loads(ch.message.content)
    assert isinstance(value, dict), value


def test_response_format_json_schema():
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    r = chat(
        c,
        "What is 2 + 2? Answer in JSON.",
        temperature=0,
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    )
    ch = r.choices[0]
    assert ch.finish_reason == "stop", f"the JSON did not end in 40 tokens: {ch}"
    check_answer_object(ch.message.content)
    # Sampled, the output still follows the schema.
    r = chat(
        c,
        "Pick a number. Answer in JSON.",
        temperature=1.0,
        seed=5,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    for ch in r.choices:
        assert ch.finish_reason == "stop", ch
        check_answer_object(ch.message.content)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_tool_choice_required_gives_well_formed_tool_calls():
    r = chat(
        c,
        "What is the weather in Paris?",
        temperature=0,
        max_tokens=60,
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls", dump(r.model_dump())
    calls = ch.message.tool_calls
    assert calls, dump(r.model_dump())
    for call in calls:
        assert call.type == "function" and call.id, call
        assert call.function.name == "get_weather", call
        args = json.loads(call.function.arguments)
        assert isinstance(args, dict) and isinstance(args.get("city"), str), args


def test_a_tool_call_cut_off_by_max_tokens_is_not_content():
    """`max_tokens` ends a required call half way: the reply says `length`
    and shows neither half a call as content nor a broken call, whole or
    streamed."""
    kwargs = dict(temperature=0, max_tokens=6, tools=[WEATHER_TOOL], tool_choice="required")
    r = chat(c, "What is the weather in Paris?", **kwargs)
    ch = r.choices[0]
    assert ch.finish_reason == "length", dump(r.model_dump())
    assert not ch.message.tool_calls, dump(r.model_dump())
    assert not ch.message.content, dump(r.model_dump())
    text, calls, finishes = "", [], []
    for chunk in chat(c, "What is the weather in Paris?", stream=True, **kwargs):
        for d in chunk.choices:
            text += d.delta.content or ""
            calls += d.delta.tool_calls or []
            if d.finish_reason:
                finishes.append(d.finish_reason)
    assert (text, calls, finishes) == ("", [], ["length"]), (text, calls, finishes)


def test_a_named_tool_choice_calls_that_tool_in_a_stream():
    time_tool = {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
        },
    }
    stream = chat(
        c,
        "What is the weather in Paris?",
        temperature=0,
        max_tokens=60,
        tools=[WEATHER_TOOL, time_tool],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        stream=True,
    )
    calls, finishes = {}, []
    for chunk in stream:
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                if d.function:
                    call["name"] += d.function.name or ""
                    call["arguments"] += d.function.arguments or ""
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    assert finishes == ["tool_calls"], (finishes, calls)
    assert calls and all(c["name"] == "get_time" and c["id"] for c in calls.values()), calls
    for call in calls.values():
        assert isinstance(json.loads(call["arguments"]), dict), call


def test_tool_choice_none_answers_in_text():
    r = chat(
        c,
        "What is the weather in Paris?",
        temperature=0,
        max_tokens=12,
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    ch = r.choices[0]
    assert not ch.message.tool_calls, ch
    assert ch.message.content, ch


def test_a_conversation_with_a_tool_result():
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
    ]
    r = c.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=8
    )
    assert r.choices[0].message.role == "assistant", r


def test_sdk_error_for_a_tool_message_without_its_call_id():
    try:
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "tool", "content": "x"}],
            max_tokens=2,
        )
    except openai.BadRequestError as e:
        assert e.param == "messages[0].tool_call_id", e.body
    else:
        raise AssertionError("a tool message without tool_call_id was accepted")


run(globals())
