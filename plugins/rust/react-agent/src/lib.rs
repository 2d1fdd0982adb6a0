//! `react-agent`: an agent plugin that works on a task in a ReAct loop:
//! the model thinks, calls tools, reads their results, and answers.
//!
//! Config, a JSON object (all fields optional; unknown fields are
//! `invalid-input`):
//!
//! ```json
//! {"max_steps": 6, "system": "...", "temperature": 0, "max_tokens": 256,
//!  "first_tool_choice": "auto"}
//! ```
//!
//! - `max_steps` (1 to 100, default 6): model turns at most;
//! - `system`: the system prompt, default [`DEFAULT_SYSTEM`];
//! - `temperature` (finite, at least 0, default 0: greedy): the sampling
//!   temperature of every turn;
//! - `max_tokens` (at least 1, default 256): new tokens per turn at most;
//! - `first_tool_choice` (`auto` or `required`, default `auto`): the
//!   `tool-choice` of the first turn when tools are granted. `required`
//!   makes the model call a tool before it may answer; the host writes that
//!   call under the tool-call grammar, so even a small model's call is
//!   well-formed.
//!
//! `run(task, config)`:
//!
//! 1. `tools.available()` once: the tools offered on every turn.
//! 2. The conversation starts as `[system(<system>), user(<task>)]`.
//! 3. Each step is one `inference.chat(messages, options)` with
//!    `params.temperature`, `max-tokens`, no stop strings, no sampler, the
//!    tools, and `tool-choice: auto` (`required` on the first turn with
//!    `first_tool_choice: required`; `none` when no tool is granted).
//!    - A reply without tool calls ends the run: its content, trimmed, is
//!      the answer (possibly empty).
//!    - A reply with tool calls is appended as the assistant message, its
//!      tool calls included (a call with an empty id gets `call-<step>-<n>`,
//!      `n` from 1 within the turn). Then each call, in order, runs through
//!      `tools.call(name, arguments)` and a `tool` message is appended:
//!      `tool-call-id` = the call's id, `name` = the tool's name, content =
//!      the output (text or JSON, as is), or `error: <message>` when the call
//!      failed, whatever the error's kind, so that the model can recover.
//!    - A reply whose calls all repeat calls already run (same name, same
//!      arguments text) is dropped without running them again, and the
//!      next turn asks for the answer from the results so far, offering no
//!      tools (`tool-choice: none`), in a conversation of its own:
//!      `[system(<ANSWER_SYSTEM>), user("Question: <task>\nTool
//!      results:\n1. <name> <arguments> returned <output>…")]` (see
//!      `react::answer_request`). Its reply is the answer.
//! 4. When step `max_steps` still calls tools, those calls are not run and
//!    the run fails with `limit-exceeded`
//!    `the task was not finished in <max_steps> steps`.
//!
//! An error of `inference.chat` (the host's token or step budget running
//! out, no model loaded, ...) ends the run with that error, same kind and
//! message. Every step is logged at level info (`step 2: 1 tool call(s):
//! calculate`, `step 2: calculate -> 57 bytes`, `step 3: answer of 12
//! characters`). Given the same model replies and tool outputs, the agent's
//! requests and result are the same.

mod react;

use deepwasm_sdk::agent::{Guest, tools};
use deepwasm_sdk::config::Fields;
use deepwasm_sdk::types::{Error, Message, Role, ToolSpec};

use react::{Env, Generation, Host, Outcome, message};

/// The system prompt when the config gives none.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant. You can call the tools you are given. \
     When you know the final answer, reply with it and call no tool.";

/// The agent's settings, from its config.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Model turns at most.
    pub max_steps: u32,
    /// The system prompt.
    pub system: String,
    /// Temperature and token limit of every turn.
    pub generation: Generation,
}

/// Most steps a config may ask for.
pub const MAX_STEPS: u32 = 100;

/// Read the config (see the crate docs).
pub fn settings(config: &str) -> Result<Settings, Error> {
    let cfg = Fields::parse("config", config)?;
    cfg.only(&[
        "max_steps",
        "system",
        "temperature",
        "max_tokens",
        "first_tool_choice",
    ])?;
    let max_steps: u32 = cfg.get_or("max_steps", 6)?;
    if !(1..=MAX_STEPS).contains(&max_steps) {
        return Err(cfg.error("max_steps", format!("must be 1 to {MAX_STEPS}")));
    }
    let temperature: f32 = cfg.get_or("temperature", 0.0)?;
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(cfg.error("temperature", "must be a finite number, at least 0"));
    }
    let max_tokens: u32 = cfg.get_or("max_tokens", 256)?;
    if max_tokens == 0 {
        return Err(cfg.error("max_tokens", "must be at least 1"));
    }
    let first_call_required = first_tool_choice(&cfg)?;
    Ok(Settings {
        max_steps,
        system: cfg.get_or("system", DEFAULT_SYSTEM.to_string())?,
        generation: Generation {
            temperature,
            max_tokens,
            first_call_required,
        },
    })
}

/// `first_tool_choice`: whether the first turn must call a tool.
fn first_tool_choice(cfg: &Fields) -> Result<bool, Error> {
    match cfg
        .get_or("first_tool_choice", "auto".to_string())?
        .as_str()
    {
        "auto" => Ok(false),
        "required" => Ok(true),
        other => Err(cfg.error(
            "first_tool_choice",
            format!("must be \"auto\" or \"required\", got {other:?}"),
        )),
    }
}

/// Work on `task` with these tools (see the crate docs).
pub fn solve(
    env: &mut impl Env,
    task: &str,
    tools: &[ToolSpec],
    settings: &Settings,
) -> Result<String, Error> {
    let mut messages: Vec<Message> = vec![
        message(Role::System, settings.system.clone()),
        message(Role::User, task),
    ];
    match react::run(
        env,
        &mut messages,
        tools,
        settings.generation,
        settings.max_steps,
        "",
    )? {
        Outcome::Answer(answer) => Ok(answer),
        Outcome::OutOfSteps(_) => Err(Error::LimitExceeded(format!(
            "the task was not finished in {} steps",
            settings.max_steps
        ))),
    }
}

struct ReactAgent;

impl Guest for ReactAgent {
    fn run(task: String, config: String) -> Result<String, Error> {
        let settings = settings(&config)?;
        solve(&mut Host, &task, &tools::available(), &settings)
    }
}

deepwasm_sdk::export_agent!(ReactAgent);

#[cfg(test)]
mod tests {
    use deepwasm_sdk::agent::inference::ToolChoice;
    use deepwasm_sdk::tool::spec;
    use deepwasm_sdk::types::ToolOutput;

    use super::*;
    use crate::react::testing::{Script, calls, says, transcript};

    fn calculator() -> Vec<ToolSpec> {
        vec![spec("calculate", "Arithmetic.", r#"{"type":"object"}"#)]
    }

    fn defaults() -> Settings {
        settings("{}").unwrap()
    }

    #[test]
    fn config() {
        assert_eq!(
            defaults(),
            Settings {
                max_steps: 6,
                system: DEFAULT_SYSTEM.to_string(),
                generation: Generation {
                    temperature: 0.0,
                    max_tokens: 256,
                    first_call_required: false,
                }
            }
        );
        let s =
            settings(r#"{"max_steps":2,"system":"Be brief.","temperature":0.7,"max_tokens":64}"#)
                .unwrap();
        assert_eq!((s.max_steps, s.system.as_str()), (2, "Be brief."));
        assert_eq!(
            s.generation,
            Generation {
                temperature: 0.7,
                max_tokens: 64,
                first_call_required: false,
            }
        );
        for bad in [
            r#"{"max_steps":0}"#,
            r#"{"max_steps":101}"#,
            r#"{"max_steps":-1}"#,
            r#"{"temperature":-0.5}"#,
            r#"{"max_tokens":0}"#,
            r#"{"system":3}"#,
            r#"{"steps":3}"#,
            "[]",
        ] {
            assert!(
                matches!(settings(bad), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_first_turn_can_require_a_call() {
        let s = settings(r#"{"first_tool_choice":"required"}"#).unwrap();
        assert!(s.generation.first_call_required);
        let mut env = Script::new(vec![
            calls(&[("", "calculate", r#"{"expression":"2"}"#)]),
            says("2"),
        ]);
        assert_eq!(solve(&mut env, "t", &calculator(), &s).unwrap(), "2");
        assert!(matches!(env.chats[0].1.tool_choice, ToolChoice::Required));
        assert!(matches!(env.chats[1].1.tool_choice, ToolChoice::Auto));
        // Without tools there is nothing to require.
        let mut env = Script::new(vec![says("x")]);
        solve(&mut env, "t", &[], &s).unwrap();
        assert!(matches!(env.chats[0].1.tool_choice, ToolChoice::None));
        for bad in [
            r#"{"first_tool_choice":"always"}"#,
            r#"{"first_tool_choice":1}"#,
        ] {
            assert!(
                matches!(settings(bad), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers_without_tools() {
        let mut env = Script::new(vec![says("  Paris.\n")]);
        let answer = solve(&mut env, "Capital of France?", &[], &defaults()).unwrap();
        assert_eq!(answer, "Paris.");
        assert_eq!(env.chats.len(), 1);
        let (messages, options) = &env.chats[0];
        assert_eq!(
            transcript(messages),
            [
                (Role::System, DEFAULT_SYSTEM.to_string()),
                (Role::User, "Capital of France?".to_string())
            ]
        );
        assert!(matches!(options.tool_choice, ToolChoice::None));
        assert_eq!(options.params.temperature, Some(0.0));
        assert_eq!(options.max_tokens, Some(256));
        assert!(options.tools.is_empty() && options.stop.is_empty() && options.sampler.is_none());
    }

    #[test]
    fn calls_tools_then_answers() {
        let mut env = Script::new(vec![
            calls(&[("c1", "calculate", r#"{"expression":"6*7"}"#)]),
            calls(&[
                ("", "calculate", r#"{"expression":"1+1"}"#),
                ("", "missing", "{}"),
            ]),
            says("42"),
        ]);
        env.tool = |name, _| match name {
            "calculate" => Ok(ToolOutput::Json(r#"{"result":"42"}"#.into())),
            _ => Err(Error::NotGranted(format!("{name} is not granted"))),
        };
        let answer = solve(&mut env, "6 times 7?", &calculator(), &defaults()).unwrap();
        assert_eq!(answer, "42");
        assert_eq!(
            env.calls,
            [
                (
                    "calculate".to_string(),
                    r#"{"expression":"6*7"}"#.to_string()
                ),
                (
                    "calculate".to_string(),
                    r#"{"expression":"1+1"}"#.to_string()
                ),
                ("missing".to_string(), "{}".to_string()),
            ]
        );
        assert_eq!(env.chats.len(), 3);
        let (messages, options) = &env.chats[2];
        assert!(matches!(options.tool_choice, ToolChoice::Auto));
        assert_eq!(options.tools.len(), 1);
        assert_eq!(
            transcript(messages),
            [
                (Role::System, DEFAULT_SYSTEM.to_string()),
                (Role::User, "6 times 7?".to_string()),
                (Role::Assistant, String::new()),
                (Role::Tool, r#"{"result":"42"}"#.to_string()),
                (Role::Assistant, String::new()),
                (Role::Tool, r#"{"result":"42"}"#.to_string()),
                (Role::Tool, "error: missing is not granted".to_string()),
            ]
        );
        // Tool messages answer their call by id; empty ids were filled in.
        assert_eq!(messages[2].tool_calls[0].id, "c1");
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(messages[3].name.as_deref(), Some("calculate"));
        let ids: Vec<&str> = messages[4]
            .tool_calls
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["call-2-1", "call-2-2"]);
        assert_eq!(messages[5].tool_call_id.as_deref(), Some("call-2-1"));
        assert_eq!(messages[6].tool_call_id.as_deref(), Some("call-2-2"));
        assert_eq!(messages[6].name.as_deref(), Some("missing"));
        assert_eq!(
            env.logs,
            [
                "step 1: 1 tool call(s): calculate",
                "step 1: calculate -> 15 bytes",
                "step 2: 2 tool call(s): calculate, missing",
                "step 2: calculate -> 15 bytes",
                "step 2: missing -> not-granted: missing is not granted",
                "step 3: answer of 2 characters",
            ]
        );
    }

    #[test]
    fn a_repeated_call_turns_into_an_answer_without_tools() {
        let call = || calls(&[("", "calculate", r#"{"expression":"6*7"}"#)]);
        let mut env = Script::new(vec![call(), call(), says("42")]);
        let answer = solve(&mut env, "6 times 7?", &calculator(), &defaults()).unwrap();
        assert_eq!(answer, "42");
        // The repeat is not run and not kept; the answer turn has no tools.
        assert_eq!(env.calls.len(), 1);
        assert_eq!(env.chats.len(), 3);
        assert!(matches!(env.chats[1].1.tool_choice, ToolChoice::Auto));
        assert!(matches!(env.chats[2].1.tool_choice, ToolChoice::None));
        assert!(env.chats[2].1.tools.is_empty());
        assert_eq!(
            transcript(&env.chats[2].0),
            [
                (Role::System, react::ANSWER_SYSTEM.to_string()),
                (
                    Role::User,
                    "Question: 6 times 7?\nTool results:\n1. calculate {\"expression\":\"6*7\"} \
                     returned calculate({\"expression\":\"6*7\"})"
                        .to_string()
                ),
            ]
        );
        assert_eq!(
            env.logs[2],
            "step 2: the calls repeat earlier ones; asking for the answer"
        );
        // A call with other arguments is new and runs.
        let mut env = Script::new(vec![
            call(),
            calls(&[("", "calculate", r#"{"expression":"6*8"}"#)]),
            says("48"),
        ]);
        solve(&mut env, "t", &calculator(), &defaults()).unwrap();
        assert_eq!(env.calls.len(), 2);
    }

    #[test]
    fn step_limit() {
        // Each turn calls with new arguments, so none is a repeat.
        let replies = (0..3)
            .map(|i| calls(&[("", "calculate", &format!(r#"{{"expression":"{i}"}}"#))]))
            .collect();
        let mut env = Script::new(replies);
        let s = Settings {
            max_steps: 3,
            ..defaults()
        };
        let err = solve(&mut env, "loop", &calculator(), &s).unwrap_err();
        assert!(
            matches!(&err, Error::LimitExceeded(m) if m == "the task was not finished in 3 steps"),
            "{err:?}"
        );
        assert_eq!(env.chats.len(), 3);
        // The last turn's calls are not run.
        assert_eq!(env.calls.len(), 2);
        assert_eq!(
            env.logs.last().unwrap(),
            "step 3: the step limit is reached; the calls are not run"
        );
    }

    #[test]
    fn inference_errors_pass_through() {
        let mut env = Script::new(vec![
            calls(&[("a", "calculate", "{}")]),
            Err(Error::LimitExceeded("token budget spent".into())),
        ]);
        let err = solve(&mut env, "t", &calculator(), &defaults()).unwrap_err();
        assert!(matches!(&err, Error::LimitExceeded(m) if m == "token budget spent"));
        assert_eq!(
            env.logs.last().unwrap(),
            "step 2: inference failed: limit-exceeded: token budget spent"
        );
        let mut env = Script::new(vec![Err(Error::Unavailable("no model".into()))]);
        assert!(matches!(
            solve(&mut env, "t", &[], &defaults()),
            Err(Error::Unavailable(_))
        ));
    }

    #[test]
    fn deterministic() {
        let run = || {
            let mut env = Script::new(vec![
                calls(&[("", "calculate", r#"{"expression":"2"}"#)]),
                says("2"),
            ]);
            let answer = solve(&mut env, "t", &calculator(), &defaults());
            (answer.unwrap(), format!("{:?}", env.chats), env.logs)
        };
        assert_eq!(run(), run());
    }
}
