"""Errors as the official `openai` SDK sees them: the status picks the
exception class, and the body names what was wrong."""

import openai

from common import MODEL, URL, chat, client, error_of, expect_status, http, run

c = client("alpha")


def test_unknown_model_is_not_found():
    e = expect_status(
        openai.NotFoundError,
        404,
        c.chat.completions.create,
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
    )
    assert e.code == "model_not_found" and e.param == "model", e.body
    assert e.type == "invalid_request_error", e.body
    assert "gpt-4o" in e.message and MODEL in e.message, e.message
    expect_status(openai.NotFoundError, 404, c.models.retrieve, "gpt-4o")
    expect_status(
        openai.NotFoundError, 404, c.completions.create, model="gpt-4o", prompt="x", max_tokens=1
    )


def bad_request(param, **kwargs):
    """A chat request that must be refused naming `param`, in the error's
    `param` and in its message (which is all many clients show)."""
    kwargs.setdefault("max_tokens", 2)
    e = expect_status(openai.BadRequestError, 400, chat, c, "hi", **kwargs)
    assert e.param == param, (param, e.body)
    assert param.split(".")[0].split("[")[0] in e.message, (param, e.message)
    assert e.type == "invalid_request_error", e.body
    return e


def all_refused(cases):
    """Check every `(param, kwargs)` case, then fail listing all that were
    not refused as they should be."""
    problems = []
    for param, kwargs in cases:
        try:
            bad_request(param, **kwargs)
        except AssertionError as e:
            problems.append(f"{param} {kwargs}: {e}")
    assert not problems, "\n".join(problems)


def test_out_of_range_parameters_are_bad_requests():
    all_refused(
        [
            ("temperature", {"temperature": 5}),
            ("temperature", {"temperature": -1}),
            ("top_p", {"top_p": 0}),
            ("n", {"n": 0}),
            ("n", {"n": 65}),
            ("max_tokens", {"max_tokens": 0}),
            ("top_logprobs", {"logprobs": True, "top_logprobs": 99}),
            ("top_logprobs", {"top_logprobs": 2}),
            ("logit_bias", {"logit_bias": {"not-a-token": 1}}),
            ("stop", {"stop": ["a", "b", "c", "d", "e"]}),
            ("response_format.type", {"response_format": {"type": "yaml"}}),
        ]
    )


def test_mistyped_fields_are_named():
    # (Unknown fields are ignored: see openai_clients.py.)
    all_refused(
        [
            ("temperature", {"extra_body": {"temperature": "hot"}}),
            ("n", {"extra_body": {"n": 1.5}}),
            ("stream", {"extra_body": {"stream": "yes"}}),
        ]
    )
    e = expect_status(
        openai.BadRequestError,
        400,
        c.chat.completions.create,
        model=MODEL,
        messages=[{"role": "wizard", "content": "hi"}],
        max_tokens=2,
    )
    assert e.param == "messages[0].role", e.body
    e = expect_status(
        openai.BadRequestError, 400, c.chat.completions.create, model=MODEL, messages=[], max_tokens=2
    )
    assert e.param == "messages", e.body


def test_malformed_json_is_a_bad_request():
    with http("alpha") as h:
        r = h.post(
            "/v1/chat/completions",
            content=b'{"model": "x", "messages": [',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400, r.text
        error_of(r)
        r = h.post("/v1/chat/completions", content=b"model=x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 400, r.text
        assert "JSON" in error_of(r)["message"]


def test_oversize_body_is_413():
    # The harness starts the server with a small --max-body-bytes.
    e = expect_status(openai.APIStatusError, 413, chat, c, "x" * 200_000, max_tokens=1)
    assert e.type == "invalid_request_error", e.body
    assert "too large" in e.message, e.message


def test_missing_or_wrong_key_is_401():
    with http() as h:
        r = h.get("/v1/models")
        assert r.status_code == 401, r.text
        err = error_of(r)
        assert err["type"] == "invalid_request_error" and err["code"] == "invalid_api_key", err
        r = h.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
        assert r.status_code == 401, r.text
        r = h.get("/v1/models", headers={"Authorization": "Basic YTpi"})
        assert r.status_code == 401, r.text
    wrong = openai.OpenAI(base_url=URL + "/v1", api_key="sk-not-a-key", max_retries=0)
    e = expect_status(openai.AuthenticationError, 401, wrong.models.list)
    assert e.code == "invalid_api_key", e.body
    e = expect_status(openai.AuthenticationError, 401, chat, wrong, "hi")
    # Public endpoints need no key.
    with http() as h:
        assert h.get("/health").status_code == 200
        assert h.get("/openapi.json").json()["openapi"].startswith("3.")


def test_unknown_route_is_404_in_the_error_shape():
    with http("alpha") as h:
        r = h.get("/v1/engines")
        assert r.status_code == 404, r.text
        assert error_of(r)["type"] == "invalid_request_error"


run(globals())
