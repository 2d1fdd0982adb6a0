use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use deepwasm_engine::Generator;
use deepwasm_engine::agent::{
    AgentBudgets, AgentEvent, AgentFailure, AgentHost, AgentRequest, AgentRun, EventSink,
    ModelTurn, ToolCallResult, ToolOutput, call_sampler, run_agent,
};
use deepwasm_plugins::{AgentPlugin, GuestError, KvAccess, MemoryKv, ToolPlugin, World};
use serde_json::{Value, json};

use crate::util::{artifacts, deepwasm_bin, default_model, plugin, sandbox};

/// The model, with the JSON-schema sampler for constrained calls, shared by
/// every run.
fn host() -> &'static AgentHost {
    static HOST: OnceLock<AgentHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let engine = default_model();
        let calls = call_sampler(plugin(artifacts::JSON_SCHEMA), engine).unwrap();
        let generator: Arc<dyn Generator> = Arc::new(engine.clone());
        AgentHost::new(generator).with_call_sampler(calls)
    })
}

fn agent(path: &str) -> AgentPlugin {
    AgentPlugin::new(plugin(path), sandbox(World::Agent, |_| {})).unwrap()
}

fn tool(path: &str) -> ToolPlugin {
    ToolPlugin::new(plugin(path), sandbox(World::Tool, |_| {})).unwrap()
}

/// Run `agent` on `task` and check that the events streamed while it ran
/// are the transcript it returned, ending in `finished` or `failed`.
fn run_task(agent_path: &str, request: AgentRequest) -> AgentRun {
    let streamed = Arc::new(Mutex::new(Vec::new()));
    let sink: EventSink = {
        let streamed = streamed.clone();
        Arc::new(move |e: &AgentEvent| streamed.lock().unwrap().push(e.clone()))
    };
    let run = run_agent(host(), &agent(agent_path), request, sink);
    assert_eq!(*streamed.lock().unwrap(), run.transcript);
    assert!(matches!(
        run.transcript.first(),
        Some(AgentEvent::Started { .. })
    ));
    match (&run.outcome, run.transcript.last()) {
        (Ok(answer), Some(AgentEvent::Finished { answer: a, stats })) => {
            assert_eq!(answer, a);
            assert_eq!(*stats, run.stats);
        }
        (Err(failure), Some(AgentEvent::Failed { error, stats })) => {
            assert_eq!(failure, error);
            assert_eq!(*stats, run.stats);
        }
        other => panic!("the transcript does not end with the outcome: {other:?}"),
    }
    // Every event serialises with its type tag, as the CLI and the server
    // send them.
    for event in &run.transcript {
        let json = serde_json::to_value(event).unwrap();
        assert!(json["type"].is_string(), "{json}");
    }
    run
}

fn request(task: &str, config: Value, tools: &[&str]) -> AgentRequest {
    AgentRequest {
        config: config.to_string(),
        tools: tools.iter().map(|p| tool(p)).collect(),
        ..AgentRequest::new(task)
    }
}

fn with_budgets(mut req: AgentRequest, f: impl FnOnce(&mut AgentBudgets)) -> AgentRequest {
    f(&mut req.budgets);
    req
}

fn turns(run: &AgentRun) -> Vec<&ModelTurn> {
    run.transcript
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ModelTurn(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// The tool calls of a run: (call, name, arguments).
fn tool_calls(run: &AgentRun) -> Vec<(u32, String, String)> {
    run.transcript
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ToolCall {
                call,
                name,
                arguments,
            } => Some((*call, name.clone(), arguments.clone())),
            _ => None,
        })
        .collect()
}

/// The tool results of a run, in order.
fn tool_results(run: &AgentRun) -> Vec<&ToolCallResult> {
    run.transcript
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ToolResult { result, .. } => Some(result),
            _ => None,
        })
        .collect()
}

/// A system prompt that shows the 135M model how a calculator call looks.
const CALCULATOR_SYSTEM: &str = "You are a helpful assistant. To do arithmetic, call the calculate \
     tool with the expression, for example {\"expression\": \"2 + 2\"}. Then answer with the result.";

fn react_config() -> Value {
    json!({
        "first_tool_choice": "required",
        "max_steps": 4,
        "max_tokens": 64,
        "system": CALCULATOR_SYSTEM,
    })
}

#[test]
fn the_react_agent_answers_with_the_result_of_a_constrained_calculator_call() {
    let calculator_schema: Value = {
        let specs = tool(artifacts::CALCULATOR).describe().unwrap();
        serde_json::from_str(&specs[0].parameters).unwrap()
    };
    let validator = jsonschema::validator_for(&calculator_schema).unwrap();
    for (task, expected) in [
        ("What is 17 times 23?", "391"),
        ("How much is 45 divided by 9?", "5"),
    ] {
        let run = run_task(
            artifacts::REACT_AGENT,
            request(task, react_config(), &[artifacts::CALCULATOR]),
        );
        let answer = run
            .outcome
            .clone()
            .unwrap_or_else(|e| panic!("{task}: {e}"));

        // The first turn had to call a tool: it was written under the
        // tool-call grammar, so its arguments fit the calculator's schema.
        let turns = turns(&run);
        assert!(turns[0].constrained, "{task}: {:?}", turns[0]);
        assert_eq!(turns[0].finish_reason, "tool_calls");
        // With the grammar at hand, a call the model begins by itself (on
        // an `auto` turn) is written under it too.
        for t in &turns {
            assert_eq!(t.constrained, !t.tool_calls.is_empty(), "{task}: {t:?}");
        }
        let calls = tool_calls(&run);
        assert!(!calls.is_empty(), "{task}: no tool was called");
        for (_, name, arguments) in &calls {
            assert_eq!(name, "calculate");
            let arguments: Value = serde_json::from_str(arguments).unwrap();
            assert!(validator.is_valid(&arguments), "{task}: {arguments}");
        }

        // The calculator answered, and the agent's answer carries its result.
        let results: Vec<Value> = tool_results(&run)
            .into_iter()
            .filter_map(|r| match r {
                ToolCallResult::Output(ToolOutput::Json(j)) => {
                    Some(serde_json::from_str(j).unwrap())
                }
                _ => None,
            })
            .collect();
        let result = results
            .last()
            .unwrap_or_else(|| panic!("{task}: no result"))["result"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(result, expected, "{task}: {results:?}");
        assert!(
            answer.contains(&result),
            "{task}: {answer:?} lacks {result}"
        );
        assert_eq!(run.stats.tool_calls as usize, calls.len());
        assert!(run.stats.steps <= 4 && run.stats.completion_tokens > 0);
    }
}

#[test]
fn a_tool_that_was_not_granted_is_a_typed_error() {
    let run = run_task(
        artifacts::LOOPING_AGENT,
        request("-", json!({"mode": "ungranted"}), &[artifacts::CALCULATOR]),
    );
    // The agent got the error as a value and answered with its kind.
    let answer = run.outcome.clone().unwrap();
    assert!(
        answer.starts_with("not-granted: the tool `not-a-granted-tool` is not granted"),
        "{answer}"
    );
    assert!(answer.contains("calculate"), "{answer}");
    match tool_results(&run)[..] {
        [ToolCallResult::Error(GuestError::NotGranted(_))] => {}
        ref other => panic!("{other:?}"),
    }
    assert_eq!(run.stats.tool_calls, 1);
}

#[test]
fn a_looping_agent_stops_at_its_step_budget_with_its_transcript_intact() {
    for stop_on_error in [false, true] {
        let req = with_budgets(
            request(
                "-",
                json!({"mode": "chat", "stop_on_error": stop_on_error}),
                &[],
            ),
            |b| b.max_steps = 3,
        );
        let run = run_task(artifacts::LOOPING_AGENT, req);
        // Whether the agent gave up on the error or kept calling until it
        // was stopped, the budget is what ended the run.
        assert_eq!(run.outcome, Err(AgentFailure::StepBudget { max_steps: 3 }));
        let turns = turns(&run);
        assert_eq!(
            turns.iter().map(|t| t.step).collect::<Vec<_>>(),
            [1, 2, 3],
            "{:?}",
            run.transcript
        );
        for t in &turns {
            assert_eq!(t.kind, "chat");
            assert!(
                t.completion_tokens > 0 && t.completion_tokens <= 16,
                "{t:?}"
            );
            assert!(!t.content.is_empty(), "{t:?}");
        }
        // Greedy turns on one prompt: the same reply each time.
        assert!(turns.iter().all(|t| t.content == turns[0].content));
        // The fourth turn was refused, once, with the budget named.
        let refusals: Vec<_> = run
            .transcript
            .iter()
            .filter_map(|e| match e {
                AgentEvent::ModelError { step, error } => Some((*step, error.clone())),
                _ => None,
            })
            .collect();
        assert!(
            matches!(&refusals[..], [(4, GuestError::LimitExceeded(m))] if m.contains("3 model turns")),
            "{refusals:?}"
        );
        assert!(run.transcript.iter().any(|e| matches!(
            e,
            AgentEvent::Log { message, .. } if message == "looping-agent: mode chat"
        )));
        assert_eq!(run.stats.steps, 3);
    }
}

#[test]
fn token_tool_call_and_time_budgets_end_looping_runs() {
    // Tokens: turns of up to 16 tokens until 40 are spent; the last turn
    // is cut to what is left.
    let run = run_task(
        artifacts::LOOPING_AGENT,
        with_budgets(request("-", json!({"mode": "chat"}), &[]), |b| {
            b.max_tokens = 40
        }),
    );
    assert_eq!(
        run.outcome,
        Err(AgentFailure::TokenBudget { max_tokens: 40 })
    );
    assert_eq!(run.stats.completion_tokens, 40);

    // Tool calls.
    let run = run_task(
        artifacts::LOOPING_AGENT,
        with_budgets(
            request(
                "-",
                json!({"mode": "tools", "arguments": {"expression": "6*7"}}),
                &[artifacts::CALCULATOR],
            ),
            |b| b.max_tool_calls = 5,
        ),
    );
    assert_eq!(
        run.outcome,
        Err(AgentFailure::ToolCallBudget { max_tool_calls: 5 })
    );
    let results = tool_results(&run);
    assert_eq!(results.len(), 6);
    for r in &results[..5] {
        assert!(
            matches!(r, ToolCallResult::Output(ToolOutput::Json(j)) if j.contains("\"42\"")),
            "{r:?}"
        );
    }
    assert!(matches!(
        results[5],
        ToolCallResult::Error(GuestError::LimitExceeded(_))
    ));

    // Wall time: a run that would chat forever ends at its deadline.
    let started = Instant::now();
    let run = run_task(
        artifacts::LOOPING_AGENT,
        with_budgets(request("-", json!({"mode": "chat"}), &[]), |b| {
            b.max_steps = 10_000;
            b.deadline = Duration::from_millis(1500);
        }),
    );
    assert_eq!(
        run.outcome,
        Err(AgentFailure::Deadline { deadline_ms: 1500 })
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // A tool that sleeps in WASI (30 s against its own 5 s deadline) is cut
    // at what is left of the run's deadline, not at its own.
    let started = Instant::now();
    let run = run_task(
        artifacts::LOOPING_AGENT,
        with_budgets(
            request(
                "-",
                json!({"mode": "tools", "tool": "sleep"}),
                &[artifacts::HOSTILE_TOOL],
            ),
            |b| b.deadline = Duration::from_millis(800),
        ),
    );
    assert_eq!(
        run.outcome,
        Err(AgentFailure::Deadline { deadline_ms: 800 })
    );
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );

    // The caller's stop flag.
    let stop = Arc::new(AtomicBool::new(true));
    let run = run_task(
        artifacts::LOOPING_AGENT,
        AgentRequest {
            stop,
            ..request("-", json!({"mode": "chat"}), &[])
        },
    );
    assert_eq!(run.outcome, Err(AgentFailure::Stopped));
    assert!(turns(&run).is_empty());
}

#[test]
fn a_trapping_tool_is_an_error_result_and_the_run_goes_on() {
    // The agent ignores the errors and calls again: every call traps in a
    // fresh instance, the agent gets each failure as a result, and only
    // the tool-call budget ends the run.
    let run = run_task(
        artifacts::LOOPING_AGENT,
        with_budgets(
            request(
                "-",
                json!({"mode": "tools", "tool": "trap"}),
                &[artifacts::HOSTILE_TOOL],
            ),
            |b| b.max_tool_calls = 3,
        ),
    );
    assert_eq!(
        run.outcome,
        Err(AgentFailure::ToolCallBudget { max_tool_calls: 3 })
    );
    let results = tool_results(&run);
    assert_eq!(results.len(), 4, "{results:?}");
    for r in &results[..3] {
        assert!(
            matches!(r, ToolCallResult::Error(GuestError::Failed(m))
                if m.contains("`trap`") && m.contains("trapped")),
            "{r:?}"
        );
    }

    // An agent that stops at the first error returns it as its own: it
    // read the failure as a value.
    let run = run_task(
        artifacts::LOOPING_AGENT,
        request(
            "-",
            json!({"mode": "tools", "tool": "panic", "stop_on_error": true}),
            &[artifacts::HOSTILE_TOOL],
        ),
    );
    match &run.outcome {
        Err(AgentFailure::Agent {
            error: GuestError::Failed(m),
        }) => assert!(m.contains("`panic`"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(run.stats.tool_calls, 1);
}

#[test]
fn arguments_are_checked_against_the_schema_and_outputs_are_capped() {
    let failing = |arguments: Value, f: fn(&mut AgentBudgets)| {
        let run = run_task(
            artifacts::LOOPING_AGENT,
            with_budgets(
                request(
                    "-",
                    json!({"mode": "tools", "arguments": arguments, "stop_on_error": true}),
                    &[artifacts::CALCULATOR],
                ),
                f,
            ),
        );
        match run.outcome {
            Err(AgentFailure::Agent { error }) => error,
            other => panic!("{other:?}"),
        }
    };
    match failing(json!({"expr": "1+1"}), |_| {}) {
        GuestError::InvalidInput(m) => {
            assert!(m.contains("do not match its parameters schema"), "{m}");
            assert!(m.contains("expression"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    match failing(json!({"expression": "2^200"}), |b| {
        b.max_tool_output_bytes = 64
    }) {
        GuestError::LimitExceeded(m) => assert!(m.contains("more than the 64"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Arguments past the host's cap never reach the tool or the transcript.
    let big = "9".repeat(deepwasm_plugins::MAX_TOOL_ARGUMENT_BYTES);
    let run = run_task(
        artifacts::LOOPING_AGENT,
        request(
            "-",
            json!({"mode": "tools", "arguments": {"expression": big}, "stop_on_error": true}),
            &[artifacts::CALCULATOR],
        ),
    );
    match &run.outcome {
        Err(AgentFailure::Agent {
            error: GuestError::InvalidInput(m),
        }) => assert!(m.contains("the most is 262144"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(run.stats.tool_calls, 0);
}

#[test]
fn tools_share_the_runs_key_value_store() {
    let kv = Arc::new(MemoryKv::new(4096));
    let req = AgentRequest {
        kv: Some(kv.clone() as Arc<dyn KvAccess>),
        ..with_budgets(
            request(
                "-",
                json!({"mode": "tools", "tool": "remember",
                       "arguments": {"key": "colour", "value": "teal"}}),
                &[artifacts::MEMORY],
            ),
            |b| b.max_tool_calls = 2,
        )
    };
    let run = run_task(artifacts::LOOPING_AGENT, req);
    assert!(matches!(
        tool_results(&run)[0],
        ToolCallResult::Output(ToolOutput::Text(t)) if t == "remembered \"colour\""
    ));
    assert_eq!(kv.get("memory/colour").unwrap(), Some(b"teal".to_vec()));

    // Without a store the tool's `kv` calls are refused, and the tool says so.
    let run = run_task(
        artifacts::LOOPING_AGENT,
        request(
            "-",
            json!({"mode": "tools", "tool": "remember", "stop_on_error": true,
                   "arguments": {"key": "colour", "value": "teal"}}),
            &[artifacts::MEMORY],
        ),
    );
    assert!(
        matches!(
            &run.outcome,
            Err(AgentFailure::Agent {
                error: GuestError::NotGranted(_)
            })
        ),
        "{:?}",
        run.outcome
    );
}

fn deepwasm(args: &[&str]) -> std::process::Output {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
    Command::new(deepwasm_bin())
        .args(args)
        .env("DEEPWASM_COMPONENT_CACHE", cache)
        .env("DEEPWASM_MODEL", crate::util::default_model_path())
        .output()
        .expect("running deepwasm")
}

#[test]
fn agent_run_streams_events_and_prints_the_answer() {
    let config = react_config().to_string();
    let out = deepwasm(&[
        "agent",
        "run",
        "--agent",
        artifacts::REACT_AGENT,
        "--tool",
        artifacts::CALCULATOR,
        "--config",
        &config,
        "--json",
        "What is 17 times 23?",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(events[0]["type"], "started");
    assert_eq!(events[0]["tools"], json!(["calculate"]));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "tool_call" && e["name"] == "calculate"),
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "finished");
    assert!(last["answer"].as_str().unwrap().contains("391"), "{last}");

    // As text: the events on stderr, the answer alone on stdout.
    let out = deepwasm(&[
        "agent",
        "run",
        "--agent",
        artifacts::LOOPING_AGENT,
        "--tool",
        artifacts::CALCULATOR,
        "--config",
        r#"{"mode": "ungranted"}"#,
        "-",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("not-granted: "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stderr.contains("tool call 1: not-a-granted-tool {}"),
        "{stderr}"
    );

    // A run that fails exits with an error naming the budget.
    let out = deepwasm(&[
        "agent",
        "run",
        "--agent",
        artifacts::LOOPING_AGENT,
        "--max-steps",
        "2",
        "-",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: the agent run failed: the run used its budget of 2 model turns"),
        "{stderr}"
    );
}
