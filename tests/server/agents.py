"""Agent runs over HTTP: a tenant's ReAct agent with its granted
calculator, events streamed as SSE and in one JSON answer; tools outside
the grants are refused, and another tenant cannot run the agent."""

import json

from common import error_of, http, plugin_bytes, run, upload

delta, alpha = http("delta"), http("alpha")
SYSTEM = (
    "You are a helpful assistant. To do arithmetic, call the calculate tool "
    'with the expression, for example {"expression": "2 + 2"}. Then answer with the result.'
)
CONFIG = {"first_tool_choice": "required", "max_steps": 4, "max_tokens": 64, "system": SYSTEM}
TASK = "What is 17 times 23?"


def setup():
    for name, plugin in [("calculator", "CALCULATOR"), ("react-agent", "REACT_AGENT")]:
        r = upload(delta, name, plugin_bytes(plugin))
        assert r.status_code in (200, 201), r.text


def sse_events(response):
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: "):]))
    return events


def test_a_run_streams_its_events_and_ends_with_the_answer():
    setup()
    body = {"task": TASK, "config": CONFIG, "budgets": {"max_steps": 6}}
    with delta.stream("POST", "/v1/agents/react-agent/runs", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        events = sse_events(r)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] in ("finished", "failed"), kinds
    assert events[0]["tools"] == ["calculate"], events[0]
    assert events[0]["budgets"]["max_steps"] == 6, events[0]
    calls = [e for e in events if e["type"] == "tool_call"]
    results = [e for e in events if e["type"] == "tool_result"]
    assert calls and len(results) == len(calls), kinds
    # The constrained call is well-formed JSON for the calculator.
    args = calls[0]["arguments"]
    assert isinstance(json.loads(args) if isinstance(args, str) else args, dict), calls[0]
    assert kinds[-1] == "finished", events[-1]
    assert "391" in events[-1]["answer"], events[-1]


def test_a_run_without_streaming_returns_the_transcript():
    setup()
    body = {"task": TASK, "config": CONFIG, "stream": False}
    r = delta.post("/v1/agents/react-agent/runs", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "agent.run" and out["agent"] == "react-agent", out
    last = out["transcript"][-1]
    assert last["type"] in ("finished", "failed"), last
    if last["type"] == "finished":
        assert out["answer"] == last["answer"] and out["error"] is None, out
    assert out["stats"]["steps"] >= 1, out


def test_a_tool_outside_the_grants_is_refused():
    # alpha's grants name no tools: its agents may call none.
    for name, plugin in [("calculator", "CALCULATOR"), ("react-agent", "REACT_AGENT")]:
        r = upload(alpha, name, plugin_bytes(plugin))
        assert r.status_code in (200, 201), r.text
    r = alpha.post("/v1/agents/react-agent/runs", json={"task": TASK, "tools": ["calculator"]})
    assert r.status_code == 403, r.text
    assert "calculator" in error_of(r)["message"], r.text


def test_another_tenant_cannot_run_the_agent_and_bad_requests_say_why():
    setup()
    agent_id = delta.get("/v1/plugins/react-agent").json()["id"]
    r = http("beta").post(f"/v1/agents/{agent_id}/runs", json={"task": TASK})
    assert r.status_code == 404, r.text
    r = delta.post("/v1/agents/calculator/runs", json={"task": TASK})
    assert r.status_code == 400, r.text
    assert "not an agent" in error_of(r)["message"], r.text
    r = delta.post("/v1/agents/react-agent/runs", json={"task": TASK, "budgets": {"steps": 3}})
    assert r.status_code == 400, r.text
    assert error_of(r)["param"] == "budgets.steps", r.text


run(globals())
