//! `plan-execute-agent`: an agent plugin that first makes a plan, then
//! carries out each of its steps with tools, then answers from the steps'
//! results.
//!
//! Config, a JSON object (all fields optional; unknown fields are
//! `invalid-input`):
//!
//! ```json
//! {"max_plan_steps": 4, "max_steps_per_item": 3, "temperature": 0, "max_tokens": 256,
//!  "plan_system": "...", "system": "...", "final_system": "..."}
//! ```
//!
//! - `max_plan_steps` (1 to 20, default 4): plan steps kept at most;
//! - `max_steps_per_item` (1 to 100, default 3): model turns per plan step;
//! - `temperature` (finite, at least 0, default 0), `max_tokens` (at least 1,
//!   default 256): of every model turn;
//! - `plan_system`, `system`, `final_system`: the system prompts of the three
//!   phases, defaults [`PLAN_SYSTEM`] (where `{n}` becomes `max_plan_steps`),
//!   [`STEP_SYSTEM`] and [`FINAL_SYSTEM`].
//!
//! `run(task, config)`, with `tools.available()` read once:
//!
//! 1. **Plan.** `inference.chat([system(<plan_system>), user(<task>)])` with
//!    no tools (`tool-choice: none`). The plan is read from the reply's
//!    content by [`parse_plan`]: lines that, after leading whitespace, `*`,
//!    `#` or `-`, start with a number of 1 to 3 digits followed by `.` or `)`
//!    and then not a digit (`1. Find x`, `2) Add`, `**3.** Check`) and that
//!    have text after it, in order, the first `max_plan_steps`, stripped of
//!    `*` and whitespace. If no line parses, the plan is one step, the task
//!    itself.
//! 2. **Execute.** For each step `i` of the plan, a ReAct loop (the loop of
//!    `react-agent`: tool calls answered by `tool` messages, failed calls as
//!    `error: <message>`, empty call ids filled in as `call-<turn>-<n>`) of
//!    at most `max_steps_per_item` turns with the granted tools and
//!    `tool-choice: auto`, over `[system(<system>), user(<context>)]` where
//!    the context is
//!
//!    ```text
//!    Task: <task>
//!    Plan:
//!    1. <step 1>
//!    2. <step 2>
//!    Results so far:
//!    1. <result 1>
//!    Now do step 2: <step 2>
//!    ```
//!
//!    (no `Results so far` part for step 1; when the plan is the task itself,
//!    the context is just the task). The step's result is the loop's answer
//!    (`(no answer)` when empty); when the loop runs out of turns, the last
//!    tool output, or `(not finished)` when no tool ran. Results are cut to
//!    400 characters (then `…`) wherever they are shown to the model.
//! 3. **Answer.** `inference.chat([system(<final_system>), user(<summary>)])`
//!    with no tools, the summary being
//!
//!    ```text
//!    Task: <task>
//!    Results:
//!    1. <step 1>: <result 1>
//!    2. <step 2>: <result 2>
//!    ```
//!
//!    The reply's content, trimmed, is the answer; when it is empty, the
//!    last step's result is.
//!
//! So a run makes at most `1 + plan steps × max_steps_per_item + 1` model
//! turns. An error of `inference.chat` in any phase ends the run with that
//! error, same kind and message. Every phase and step is logged at level
//! info (`plan: 3 step(s)`, `item 2 step 1: 1 tool call(s): search`,
//! `answer: 40 characters`). Given the same model replies and tool outputs,
//! the agent's requests and result are the same.

#[path = "../../react-agent/src/react.rs"]
mod react;

use deepwasm_sdk::agent::{Guest, tools};
use deepwasm_sdk::config::Fields;
use deepwasm_sdk::types::{Error, Role, ToolSpec};

use react::{Env, Generation, Host, Outcome, message};

/// The planning prompt; `{n}` becomes `max_plan_steps`.
pub const PLAN_SYSTEM: &str = "Write a short plan for the task: at most {n} numbered steps, \
     one per line, like \"1. ...\". Do not solve the task.";
/// The prompt of each step's loop.
pub const STEP_SYSTEM: &str = "You are a helpful assistant. You can call the tools you are given. \
     Do only the step you are asked to do. When it is done, reply with its result and call no tool.";
/// The prompt of the final answer.
pub const FINAL_SYSTEM: &str =
    "Answer the task using the results of its steps. Reply with the final answer only.";
/// Longest result shown to the model, in characters.
pub const RESULT_CHARS: usize = 400;

/// The agent's settings, from its config.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Plan steps kept at most.
    pub max_plan_steps: usize,
    /// Model turns per plan step.
    pub max_steps_per_item: u32,
    /// Temperature and token limit of every turn.
    pub generation: Generation,
    /// The planning prompt, `{n}` replaced.
    pub plan_system: String,
    /// The prompt of each step's loop.
    pub system: String,
    /// The prompt of the final answer.
    pub final_system: String,
}

/// Read the config (see the crate docs).
pub fn settings(config: &str) -> Result<Settings, Error> {
    let cfg = Fields::parse("config", config)?;
    cfg.only(&[
        "max_plan_steps",
        "max_steps_per_item",
        "temperature",
        "max_tokens",
        "plan_system",
        "system",
        "final_system",
    ])?;
    let max_plan_steps: usize = cfg.get_or("max_plan_steps", 4)?;
    if !(1..=20).contains(&max_plan_steps) {
        return Err(cfg.error("max_plan_steps", "must be 1 to 20"));
    }
    let max_steps_per_item: u32 = cfg.get_or("max_steps_per_item", 3)?;
    if !(1..=100).contains(&max_steps_per_item) {
        return Err(cfg.error("max_steps_per_item", "must be 1 to 100"));
    }
    let temperature: f32 = cfg.get_or("temperature", 0.0)?;
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(cfg.error("temperature", "must be a finite number, at least 0"));
    }
    let max_tokens: u32 = cfg.get_or("max_tokens", 256)?;
    if max_tokens == 0 {
        return Err(cfg.error("max_tokens", "must be at least 1"));
    }
    let plan_system: String = cfg.get_or("plan_system", PLAN_SYSTEM.to_string())?;
    Ok(Settings {
        max_plan_steps,
        max_steps_per_item,
        generation: Generation {
            temperature,
            max_tokens,
            first_call_required: false,
        },
        plan_system: plan_system.replace("{n}", &max_plan_steps.to_string()),
        system: cfg.get_or("system", STEP_SYSTEM.to_string())?,
        final_system: cfg.get_or("final_system", FINAL_SYSTEM.to_string())?,
    })
}

/// The numbered steps of a plan (see the crate docs), at most `max`.
pub fn parse_plan(text: &str, max: usize) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line
                .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '#' | '-'));
            let digits = line.bytes().take_while(u8::is_ascii_digit).count();
            if !(1..=3).contains(&digits) {
                return None;
            }
            let rest = line[digits..].strip_prefix(['.', ')'])?;
            if rest.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            let step = rest.trim_matches(|c: char| c.is_whitespace() || c == '*');
            (!step.is_empty()).then(|| step.to_string())
        })
        .take(max)
        .collect()
}

fn cut(text: &str) -> String {
    if text.chars().count() <= RESULT_CHARS {
        text.to_string()
    } else {
        let head: String = text.chars().take(RESULT_CHARS).collect();
        format!("{head}…")
    }
}

fn numbered(items: &[String]) -> String {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}. {s}\n", i + 1))
        .collect()
}

/// The user message of step `i` (from 0).
fn step_context(task: &str, plan: &[String], results: &[String], i: usize) -> String {
    let mut context = format!("Task: {task}\nPlan:\n{}", numbered(plan));
    if !results.is_empty() {
        let shown: Vec<String> = results.iter().map(|r| cut(r)).collect();
        context.push_str(&format!("Results so far:\n{}", numbered(&shown)));
    }
    context.push_str(&format!("Now do step {}: {}", i + 1, plan[i]));
    context
}

/// Work on `task` with these tools (see the crate docs).
pub fn solve(
    env: &mut impl Env,
    task: &str,
    tools: &[ToolSpec],
    settings: &Settings,
) -> Result<String, Error> {
    let generation = settings.generation;

    let mut messages = vec![
        message(Role::System, settings.plan_system.clone()),
        message(Role::User, task),
    ];
    let plan_text = match react::run(env, &mut messages, &[], generation, 1, "plan ")? {
        Outcome::Answer(text) => text,
        // Without tools the reply never calls one; read it as no plan.
        Outcome::OutOfSteps(_) => String::new(),
    };
    let mut plan = parse_plan(&plan_text, settings.max_plan_steps);
    let planned = !plan.is_empty();
    if !planned {
        plan = vec![task.to_string()];
    }
    env.log(&format!(
        "plan: {} step(s){}",
        plan.len(),
        if planned { "" } else { " (the task itself)" }
    ));

    let mut results: Vec<String> = Vec::new();
    for i in 0..plan.len() {
        let context = if planned {
            step_context(task, &plan, &results, i)
        } else {
            task.to_string()
        };
        let mut messages = vec![
            message(Role::System, settings.system.clone()),
            message(Role::User, context),
        ];
        let label = format!("item {} ", i + 1);
        let result = match react::run(
            env,
            &mut messages,
            tools,
            generation,
            settings.max_steps_per_item,
            &label,
        )? {
            Outcome::Answer(answer) if answer.is_empty() => "(no answer)".to_string(),
            Outcome::Answer(answer) => answer,
            Outcome::OutOfSteps(Some(output)) => output,
            Outcome::OutOfSteps(None) => "(not finished)".to_string(),
        };
        results.push(result);
    }

    let summary: Vec<String> = plan
        .iter()
        .zip(&results)
        .map(|(step, result)| format!("{step}: {}", cut(result)))
        .collect();
    let mut messages = vec![
        message(Role::System, settings.final_system.clone()),
        message(
            Role::User,
            format!("Task: {task}\nResults:\n{}", numbered(&summary).trim_end()),
        ),
    ];
    let answer = match react::run(env, &mut messages, &[], generation, 1, "final ")? {
        Outcome::Answer(answer) if !answer.is_empty() => answer,
        _ => results.last().cloned().unwrap_or_default(),
    };
    env.log(&format!("answer: {} characters", answer.chars().count()));
    Ok(answer)
}

struct PlanExecuteAgent;

impl Guest for PlanExecuteAgent {
    fn run(task: String, config: String) -> Result<String, Error> {
        let settings = settings(&config)?;
        solve(&mut Host, &task, &tools::available(), &settings)
    }
}

deepwasm_sdk::export_agent!(PlanExecuteAgent);

#[cfg(test)]
mod tests {
    use deepwasm_sdk::agent::inference::ToolChoice;
    use deepwasm_sdk::tool::spec;
    use deepwasm_sdk::types::ToolOutput;

    use super::*;
    use crate::react::testing::{Script, calls, says, transcript};

    fn search_tool() -> Vec<ToolSpec> {
        vec![spec("search", "Search.", r#"{"type":"object"}"#)]
    }

    fn defaults() -> Settings {
        settings("{}").unwrap()
    }

    #[test]
    fn config() {
        let s = defaults();
        assert_eq!((s.max_plan_steps, s.max_steps_per_item), (4, 3));
        assert_eq!(
            s.generation,
            Generation {
                temperature: 0.0,
                max_tokens: 256,
                first_call_required: false,
            }
        );
        assert_eq!(s.plan_system, PLAN_SYSTEM.replace("{n}", "4"));
        assert!(s.plan_system.contains("at most 4 numbered steps"));
        assert_eq!(
            (s.system.as_str(), s.final_system.as_str()),
            (STEP_SYSTEM, FINAL_SYSTEM)
        );
        let s = settings(r#"{"max_plan_steps":2,"plan_system":"Plan {n}.","final_system":"F"}"#)
            .unwrap();
        assert_eq!(
            (s.plan_system.as_str(), s.final_system.as_str()),
            ("Plan 2.", "F")
        );
        for bad in [
            r#"{"max_plan_steps":0}"#,
            r#"{"max_plan_steps":21}"#,
            r#"{"max_steps_per_item":0}"#,
            r#"{"temperature":"hot"}"#,
            r#"{"max_tokens":0}"#,
            r#"{"max_steps":3}"#,
        ] {
            assert!(
                matches!(settings(bad), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn plans() {
        let text = "Here is my plan:\n1. Find the capital.\n  2) Look up its population\n\
                    **3.** Compare\n- 4. Answer.\n5.\n1.5 kg of flour\n12345. too long\n6. Extra";
        assert_eq!(
            parse_plan(text, 10),
            [
                "Find the capital.",
                "Look up its population",
                "Compare",
                "Answer.",
                "Extra"
            ]
        );
        assert_eq!(
            parse_plan(text, 2),
            ["Find the capital.", "Look up its population"]
        );
        assert!(parse_plan("Just do it.\nStep one: go", 4).is_empty());
        assert_eq!(parse_plan("1.Go", 4), ["Go"]);
    }

    #[test]
    fn plan_execute_answer() {
        let mut env = Script::new(vec![
            says("1. Search for Paris.\n2. Say the country."),
            // Step 1: a tool call, then a result.
            calls(&[("s1", "search", r#"{"query":"Paris"}"#)]),
            says("Paris is in France."),
            // Step 2: answered directly.
            says("France"),
            // Final answer.
            says(" France. "),
        ]);
        env.tool = |_, _| Ok(ToolOutput::Json(r#"[{"title":"Paris"}]"#.into()));
        let answer = solve(&mut env, "Where is Paris?", &search_tool(), &defaults()).unwrap();
        assert_eq!(answer, "France.");
        assert_eq!(env.chats.len(), 5);

        let (plan_messages, plan_options) = &env.chats[0];
        assert_eq!(
            transcript(plan_messages),
            [
                (Role::System, PLAN_SYSTEM.replace("{n}", "4")),
                (Role::User, "Where is Paris?".to_string())
            ]
        );
        assert!(plan_options.tools.is_empty());
        assert!(matches!(plan_options.tool_choice, ToolChoice::None));

        let (step1, options) = &env.chats[1];
        assert!(matches!(options.tool_choice, ToolChoice::Auto));
        assert_eq!(options.tools.len(), 1);
        assert_eq!(
            transcript(step1),
            [
                (Role::System, STEP_SYSTEM.to_string()),
                (
                    Role::User,
                    "Task: Where is Paris?\nPlan:\n1. Search for Paris.\n2. Say the country.\n\
                     Now do step 1: Search for Paris."
                        .to_string()
                )
            ]
        );
        // The second turn of step 1 sees the call and its output.
        let (step1_turn2, _) = &env.chats[2];
        assert_eq!(step1_turn2.len(), 4);
        assert_eq!(step1_turn2[3].tool_call_id.as_deref(), Some("s1"));

        let (step2, _) = &env.chats[3];
        assert_eq!(
            step2[1].content,
            "Task: Where is Paris?\nPlan:\n1. Search for Paris.\n2. Say the country.\n\
             Results so far:\n1. Paris is in France.\nNow do step 2: Say the country."
        );

        let (last, options) = &env.chats[4];
        assert!(options.tools.is_empty());
        assert_eq!(
            transcript(last),
            [
                (Role::System, FINAL_SYSTEM.to_string()),
                (
                    Role::User,
                    "Task: Where is Paris?\nResults:\n1. Search for Paris.: Paris is in France.\n\
                     2. Say the country.: France"
                        .to_string()
                )
            ]
        );
        assert_eq!(env.logs[0], "plan step 1: answer of 40 characters");
        assert_eq!(env.logs[1], "plan: 2 step(s)");
        assert!(
            env.logs
                .contains(&"item 1 step 1: 1 tool call(s): search".to_string())
        );
        assert_eq!(env.logs.last().unwrap(), "answer: 7 characters");
    }

    #[test]
    fn no_plan_means_the_task_is_the_step() {
        let mut env = Script::new(vec![says("I will just do it."), says("4"), says("")]);
        let answer = solve(&mut env, "2+2?", &[], &defaults()).unwrap();
        // The final reply is empty: the last result is the answer.
        assert_eq!(answer, "4");
        assert_eq!(
            transcript(&env.chats[1].0)[1],
            (Role::User, "2+2?".to_string())
        );
        assert_eq!(
            env.chats[2].0[1].content,
            "Task: 2+2?\nResults:\n1. 2+2?: 4"
        );
        assert_eq!(env.logs[1], "plan: 1 step(s) (the task itself)");
    }

    #[test]
    fn unfinished_steps_and_long_results() {
        let long = "x".repeat(RESULT_CHARS + 10);
        let mut env = Script::new(vec![
            says("1. Loop\n2. Give up\n3. Never run"),
            calls(&[("", "search", "{}")]),
            calls(&[("", "search", "{}")]),
            calls(&[("", "search", "{}")]),
            says(""),
            says("done"),
        ]);
        let s = Settings {
            max_plan_steps: 2,
            max_steps_per_item: 2,
            ..defaults()
        };
        env.tool = |_, _| Err(Error::NotFound("nothing".into()));
        let answer = solve(&mut env, "t", &search_tool(), &s).unwrap();
        assert_eq!(answer, "done");
        // Step 1 ran out of turns: its result is the last tool output.
        // Step 2 called once, then answered nothing.
        assert_eq!(env.calls.len(), 2);
        assert_eq!(env.chats.len(), 6);
        assert_eq!(
            env.chats[5].0[1].content,
            "Task: t\nResults:\n1. Loop: error: nothing\n2. Give up: (no answer)"
        );
        // An unfinished step without any tool output.
        let mut env = Script::new(vec![
            says("1. A"),
            calls(&[("", "search", "{}")]),
            says(&long),
        ]);
        let s = Settings {
            max_steps_per_item: 1,
            ..defaults()
        };
        assert_eq!(solve(&mut env, "t", &search_tool(), &s).unwrap(), long);
        assert_eq!(
            env.chats[2].0[1].content,
            "Task: t\nResults:\n1. A: (not finished)"
        );
        assert!(env.calls.is_empty());
        let shown = step_context(
            "t",
            &["a".into(), "b".into()],
            std::slice::from_ref(&long),
            1,
        );
        assert!(shown.contains(&format!("1. {}…\n", &long[..RESULT_CHARS])));
    }

    #[test]
    fn errors_pass_through() {
        let mut env = Script::new(vec![Err(Error::Unavailable("no model".into()))]);
        assert!(matches!(
            solve(&mut env, "t", &[], &defaults()),
            Err(Error::Unavailable(_))
        ));
        let mut env = Script::new(vec![
            says("1. A"),
            Err(Error::LimitExceeded("budget".into())),
        ]);
        assert!(matches!(
            solve(&mut env, "t", &[], &defaults()),
            Err(Error::LimitExceeded(m)) if m == "budget"
        ));
    }
}
