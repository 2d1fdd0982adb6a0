"""The Responses API through the official `openai` SDK: plain and streamed
text, instructions, a function tool round trip, structured output, and
conversations continued with `previous_response_id` within a tenant."""

import json

import openai

from common import MODEL, client, dump, expect_status, http, plugin_bytes, run, upload

c = client("alpha")

ADD_TOOL = {
    "type": "function",
    "name": "add",
    "description": "Add two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_plain_text_matches_chat():
    r = c.responses.create(model=MODEL, input="The capital of France is", max_output_tokens=8, temperature=0)
    assert r.object == "response" and r.model == MODEL and r.id.startswith("resp_"), r
    assert r.status in ("completed", "incomplete"), r
    assert r.output_text, dump(r.model_dump())
    chat = c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "The capital of France is"}],
        max_tokens=8,
        temperature=0,
    )
    assert r.output_text == chat.choices[0].message.content, (r.output_text, chat)
    assert r.usage.input_tokens == chat.usage.prompt_tokens, (r.usage, chat.usage)
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    if chat.choices[0].finish_reason == "length":
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", r


def test_instructions_and_items():
    r = c.responses.create(
        model=MODEL,
        instructions="You answer in one word.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
        ],
        max_output_tokens=6,
        temperature=0,
    )
    chat = c.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "Name a colour."},
        ],
        max_tokens=6,
        temperature=0,
    )
    assert r.output_text == chat.choices[0].message.content, (r.output_text, chat)


def test_streamed_events_add_up_to_the_response():
    whole = c.responses.create(model=MODEL, input="Count: 1, 2, 3,", max_output_tokens=10, temperature=0)
    kinds, text, final = [], "", None
    with c.responses.stream(model=MODEL, input="Count: 1, 2, 3,", max_output_tokens=10, temperature=0) as s:
        for event in s:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    # A reply cut by max_output_tokens ends `response.incomplete`, as
    # OpenAI's does; the SDK's get_final_response() wants `completed`.
    assert final.status == whole.status, (final.status, whole.status)
    assert kinds[0] == "response.created" and kinds[1] == "response.in_progress", kinds
    assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
    for k in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
              "response.output_item.done"):
        assert k in kinds, (k, kinds)
    assert text == whole.output_text == final.output_text, (text, whole.output_text, final.output_text)
    # Raw events carry increasing sequence numbers.
    seqs = []
    for event in c.responses.create(model=MODEL, input="Hi", max_output_tokens=3, stream=True):
        seqs.append(event.sequence_number)
    assert seqs == list(range(len(seqs))), seqs


def test_a_function_tool_round_trip():
    r = c.responses.create(
        model=MODEL,
        input="What is 2 + 3?",
        tools=[ADD_TOOL],
        tool_choice="required",
        max_output_tokens=60,
        temperature=0,
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls, dump(r.model_dump())
    call = calls[0]
    args = json.loads(call.arguments)
    assert call.name == "add" and set(args) == {"a", "b"}, call
    # The documented loop: send back the output items and each call's output.
    items = [{"role": "user", "content": "What is 2 + 3?"}]
    items += [o.model_dump(exclude_none=True) for o in r.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": str(args["a"] + args["b"])})
    r2 = c.responses.create(model=MODEL, input=items, tools=[ADD_TOOL], max_output_tokens=8, temperature=0)
    assert r2.status in ("completed", "incomplete"), r2
    # The same through previous_response_id: only the call's output is new.
    r3 = c.responses.create(
        model=MODEL,
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": str(args["a"] + args["b"])}],
        tools=[ADD_TOOL],
        max_output_tokens=8,
        temperature=0,
    )
    assert r3.output_text == r2.output_text, (r3.output_text, r2.output_text)
    assert r3.usage.input_tokens == r2.usage.input_tokens, (r3.usage, r2.usage)
    # Streamed, the call comes as a function_call item with its arguments.
    names, args_text = [], ""
    with c.responses.stream(
        model=MODEL, input="What is 2 + 3?", tools=[ADD_TOOL], tool_choice="required", max_output_tokens=60,
        temperature=0,
    ) as s:
        for event in s:
            if event.type == "response.output_item.added" and event.item.type == "function_call":
                names.append(event.item.name)
            if event.type == "response.function_call_arguments.delta":
                args_text += event.delta
    assert names == ["add"] and json.loads(args_text) == args, (names, args_text)


def test_previous_response_id_continues_the_conversation():
    first = c.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=6, temperature=0)
    follow = c.responses.create(
        model=MODEL, previous_response_id=first.id, input="What is my name?", max_output_tokens=6, temperature=0
    )
    assert follow.previous_response_id == first.id
    chat = c.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"},
        ],
        max_tokens=6,
        temperature=0,
    )
    assert follow.output_text == chat.choices[0].message.content, (follow.output_text, chat)
    # Retrieved as it was answered; not by another tenant; gone once deleted.
    assert c.responses.retrieve(first.id).output_text == first.output_text
    other = client("beta")
    expect_status(openai.NotFoundError, 404, other.responses.retrieve, first.id)
    e = expect_status(
        openai.BadRequestError, 400, other.responses.create, model=MODEL, previous_response_id=first.id,
        input="x", max_output_tokens=2,
    )
    assert e.param == "previous_response_id", e.body
    c.responses.delete(first.id)
    expect_status(openai.NotFoundError, 404, c.responses.retrieve, first.id)
    # store: false keeps nothing.
    unstored = c.responses.create(model=MODEL, input="x", max_output_tokens=2, store=False)
    expect_status(openai.NotFoundError, 404, c.responses.retrieve, unstored.id)


def test_structured_output_follows_the_schema():
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    r = c.responses.create(
        model=MODEL,
        input="Give a city and its country as JSON.",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
        max_output_tokens=60,
        temperature=0,
    )
    data = json.loads(r.output_text)
    assert set(data) == {"city", "country"}, data


def test_bad_items_name_where():
    cases = [
        ("input[0].type", [{"type": "image_generation_call"}]),
        ("input[0].role", [{"role": "wizard", "content": "x"}]),
        ("input[1].call_id", [{"role": "user", "content": "x"}, {"type": "function_call_output", "output": "1"}]),
        ("input[0].content[0].type", [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
    ]
    for param, items in cases:
        e = expect_status(openai.BadRequestError, 400, c.responses.create, model=MODEL, input=items, max_output_tokens=2)
        assert e.param == param, (param, e.body)
    e = expect_status(
        openai.BadRequestError, 400, c.responses.create, model=MODEL, input="x",
        tools=[{"type": "web_search"}], max_output_tokens=2,
    )
    assert e.param == "tools[0].type", e.body


def test_a_long_input_is_stored_and_retrieved():
    with http("alpha") as h:
        body = {"model": MODEL, "input": "word " * 300, "max_output_tokens": 1}
        r = h.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        assert h.get(f"/v1/responses/{r.json()['id']}").status_code == 200


def test_sampler_and_reward_plugins_as_extensions():
    with http("alpha") as h:
        assert upload(h, "ban", plugin_bytes("word-ban")).status_code in (200, 201)
        assert upload(h, "r1", plugin_bytes("r1-format")).status_code in (200, 201)
    prompt = "Write two sentences about the sun and the sea."
    base = c.responses.create(model=MODEL, input=prompt, max_output_tokens=16, temperature=0).output_text
    words = sorted({w.strip(".,;:!?\"'").lower() for w in base.split() if len(w) >= 4 and w.isalpha()}, key=len)
    word = words[-1]
    banned = c.responses.create(
        model=MODEL, input=prompt, max_output_tokens=16, temperature=0,
        extra_body={"sampler": {"plugin": "ban", "config": {"words": [word]}}},
    )
    assert word not in banned.output_text.lower() and banned.output_text != base, (word, banned.output_text)
    scored = c.responses.create(
        model=MODEL, input=prompt, max_output_tokens=8, temperature=0, extra_body={"rewards": [{"plugin": "r1"}]}
    )
    reward = scored.model_extra["reward"]
    assert "r1" in reward["rewards"] and reward["rewards"]["r1"] in (0.0, 1.0), reward
    # Scores come once the text is whole: not with a stream.
    e = expect_status(
        openai.BadRequestError, 400, c.responses.create, model=MODEL, input="x", max_output_tokens=2, stream=True,
        extra_body={"rewards": [{"plugin": "r1"}]},
    )
    assert e.param == "rewards", e.body


if __name__ == "__main__":
    run(globals())
