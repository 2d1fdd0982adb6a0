//! The ReAct loop: model turns with the granted tools offered, each tool
//! call answered by a `tool` message, until the model answers without
//! calling a tool or the step limit is reached.
//!
//! Shared by `react-agent` and `plan-execute-agent` (which includes this
//! file with `#[path]`). The imports are reached through [`Env`] so that the
//! loop runs natively in tests against a scripted model.

use deepwasm_sdk::agent::inference::{self, ChatResponse, GenerateOptions, ToolChoice};
use deepwasm_sdk::agent::tools;
use deepwasm_sdk::log::{self, Level};
use deepwasm_sdk::types::{Error, Message, Role, SamplingParams, ToolOutput, ToolSpec};

/// What the loop needs from the host.
pub trait Env {
    /// `inference.chat`.
    fn chat(
        &mut self,
        messages: &[Message],
        options: &GenerateOptions,
    ) -> Result<ChatResponse, Error>;
    /// `tools.call`.
    fn call_tool(&mut self, name: &str, arguments: &str) -> Result<ToolOutput, Error>;
    /// `log.log` at level info.
    fn log(&mut self, message: &str);
}

/// The host's imports.
pub struct Host;

impl Env for Host {
    fn chat(
        &mut self,
        messages: &[Message],
        options: &GenerateOptions,
    ) -> Result<ChatResponse, Error> {
        inference::chat(messages, options)
    }

    fn call_tool(&mut self, name: &str, arguments: &str) -> Result<ToolOutput, Error> {
        tools::call(name, arguments)
    }

    fn log(&mut self, message: &str) {
        log::log(Level::Info, message);
    }
}

/// The system prompt of the turn that asks a model going in circles for
/// its answer.
pub const ANSWER_SYSTEM: &str =
    "Answer the question from the results of the tools. Reply with the answer only.";

/// Generation settings of every model turn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Generation {
    /// `sampling-params.temperature`; 0 is greedy.
    pub temperature: f32,
    /// `generate-options.max-tokens`.
    pub max_tokens: u32,
    /// Whether a loop's first turn must call a tool (`tool-choice:
    /// required`, which the host writes under the tool-call grammar) when
    /// tools are offered. A small model that would answer from memory is
    /// made to use its tools at least once.
    pub first_call_required: bool,
}

/// How a loop ended without an error.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The model answered without calling a tool: its content, trimmed.
    Answer(String),
    /// The step limit was reached while the model still called tools; the
    /// content of the last `tool` message, if any tool ran.
    OutOfSteps(Option<String>),
}

/// A message with only a role and content.
pub fn message(role: Role, content: impl Into<String>) -> Message {
    Message {
        role,
        content: content.into(),
        reasoning: None,
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
    }
}

/// The options of model turn `step` (from 1): `tools` offered with
/// `tool-choice: auto` (`required` on step 1 when
/// `generation.first_call_required`), or `tool-choice: none` when there
/// are none.
pub fn options(generation: Generation, tools: &[ToolSpec], step: u32) -> GenerateOptions {
    GenerateOptions {
        params: SamplingParams {
            temperature: Some(generation.temperature),
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: None,
            presence_penalty: None,
            frequency_penalty: None,
            seed: None,
        },
        max_tokens: Some(generation.max_tokens),
        stop: Vec::new(),
        tools: tools.to_vec(),
        tool_choice: if tools.is_empty() {
            ToolChoice::None
        } else if step == 1 && generation.first_call_required {
            ToolChoice::Required
        } else {
            ToolChoice::Auto
        },
        sampler: None,
    }
}

/// The WIT name of an error's case.
pub fn kind(error: &Error) -> &'static str {
    match error {
        Error::InvalidInput(_) => "invalid-input",
        Error::NotGranted(_) => "not-granted",
        Error::NotFound(_) => "not-found",
        Error::LimitExceeded(_) => "limit-exceeded",
        Error::Unavailable(_) => "unavailable",
        Error::Failed(_) => "failed",
    }
}

/// The conversation that asks for the answer from the results so far:
/// [`ANSWER_SYSTEM`], then a user message
///
/// ```text
/// Question: <the first user message's content>
/// Tool results:
/// 1. <name> <arguments> returned <output>
/// 2. ...
/// ```
///
/// one line per `tool` message in order, its call found by id.
pub fn answer_request(messages: &[Message]) -> Vec<Message> {
    let question = messages
        .iter()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let mut text = format!("Question: {question}\nTool results:");
    for (n, result) in messages.iter().filter(|m| m.role == Role::Tool).enumerate() {
        let call = messages
            .iter()
            .flat_map(|m| &m.tool_calls)
            .find(|c| result.tool_call_id.as_deref() == Some(c.id.as_str()));
        let (name, arguments) = match call {
            Some(c) => (c.name.as_str(), c.arguments.as_str()),
            None => (result.name.as_deref().unwrap_or("tool"), ""),
        };
        text.push_str(&format!(
            "\n{}. {name} {arguments} returned {}",
            n + 1,
            result.content
        ));
    }
    vec![
        message(Role::System, ANSWER_SYSTEM),
        message(Role::User, text),
    ]
}

/// Run the loop for at most `max_steps` model turns, appending every
/// assistant and `tool` message to `messages`.
///
/// Each turn is one `inference.chat` over `messages` with [`options`]. A reply
/// without tool calls ends the loop with its content. A reply with tool calls
/// is appended (tool calls whose id is empty get `call-<step>-<n>`, `n`
/// counting from 1 in the turn) and, unless this was the last allowed turn,
/// each call runs in order through `tools.call`, its output appended as a
/// `tool` message (`tool-call-id` = the call's id, `name` = the tool's name,
/// content = the text or JSON output, or `error: <message>` when the call
/// failed, so that the model can recover). The calls of the last allowed turn
/// are not run: nothing could read their output.
///
/// A reply whose calls all repeat calls already run (same tool, same
/// arguments text) is a model going in circles: it is dropped, its calls are
/// not run again (their results are in the conversation already), and the
/// next turn asks for the answer from the results in a conversation of its
/// own ([`answer_request`]), with no tools offered (`tool-choice: none`): a
/// small model shown its own calls tends to write them again. An error of `inference.chat` ends the loop with that error.
/// `label` starts every log line.
pub fn run(
    env: &mut impl Env,
    messages: &mut Vec<Message>,
    tools: &[ToolSpec],
    generation: Generation,
    max_steps: u32,
    label: &str,
) -> Result<Outcome, Error> {
    let mut last_output = None;
    // The (name, arguments) of every call run so far.
    let mut run_calls: Vec<(String, String)> = Vec::new();
    let mut answer_now = false;
    for step in 1..=max_steps {
        let reply = if answer_now {
            env.chat(&answer_request(messages), &options(generation, &[], step))
        } else {
            env.chat(messages, &options(generation, tools, step))
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                env.log(&format!(
                    "{label}step {step}: inference failed: {}: {}",
                    kind(&e),
                    e.message()
                ));
                return Err(e);
            }
        };
        let mut reply = reply.message;
        reply.role = Role::Assistant;
        if reply.tool_calls.is_empty() {
            let answer = reply.content.trim().to_string();
            env.log(&format!(
                "{label}step {step}: answer of {} characters",
                answer.chars().count()
            ));
            messages.push(reply);
            return Ok(Outcome::Answer(answer));
        }
        for (n, call) in reply.tool_calls.iter_mut().enumerate() {
            if call.id.is_empty() {
                call.id = format!("call-{step}-{}", n + 1);
            }
        }
        let calls = reply.tool_calls.clone();
        if calls.iter().all(|c| {
            run_calls
                .iter()
                .any(|(n, a)| *n == c.name && *a == c.arguments)
        }) {
            env.log(&format!(
                "{label}step {step}: the calls repeat earlier ones; asking for the answer"
            ));
            answer_now = true;
            continue;
        }
        let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
        env.log(&format!(
            "{label}step {step}: {} tool call(s): {}",
            calls.len(),
            names.join(", ")
        ));
        messages.push(reply);
        if step == max_steps {
            env.log(&format!(
                "{label}step {step}: the step limit is reached; the calls are not run"
            ));
            break;
        }
        for call in calls {
            run_calls.push((call.name.clone(), call.arguments.clone()));
            let content = match env.call_tool(&call.name, &call.arguments) {
                Ok(ToolOutput::Text(out) | ToolOutput::Json(out)) => {
                    env.log(&format!(
                        "{label}step {step}: {} -> {} bytes",
                        call.name,
                        out.len()
                    ));
                    out
                }
                Err(e) => {
                    env.log(&format!(
                        "{label}step {step}: {} -> {}: {}",
                        call.name,
                        kind(&e),
                        e.message()
                    ));
                    format!("error: {}", e.message())
                }
            };
            last_output = Some(content.clone());
            messages.push(Message {
                role: Role::Tool,
                content,
                reasoning: None,
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id),
                name: Some(call.name),
            });
        }
    }
    Ok(Outcome::OutOfSteps(last_output))
}

/// A scripted model and tools for native tests.
#[cfg(test)]
pub mod testing {
    use std::collections::VecDeque;

    use deepwasm_sdk::agent::inference::{ChatResponse, FinishReason, GenerateOptions};
    use deepwasm_sdk::types::{Error, Message, Role, ToolCall, ToolOutput, Usage};

    use super::Env;

    /// Replies given in order; tool calls answered by a function.
    pub struct Script {
        /// The model's next replies.
        pub replies: VecDeque<Result<ChatResponse, Error>>,
        /// Answers tool calls.
        pub tool: fn(&str, &str) -> Result<ToolOutput, Error>,
        /// Every `chat` call's messages and options.
        pub chats: Vec<(Vec<Message>, GenerateOptions)>,
        /// Every tool call, as (name, arguments).
        pub calls: Vec<(String, String)>,
        /// Every log line.
        pub logs: Vec<String>,
    }

    impl Script {
        /// A script of these replies, with tools that echo their arguments.
        pub fn new(replies: Vec<Result<ChatResponse, Error>>) -> Script {
            Script {
                replies: replies.into(),
                tool: |name, args| Ok(ToolOutput::Text(format!("{name}({args})"))),
                chats: Vec::new(),
                calls: Vec::new(),
                logs: Vec::new(),
            }
        }
    }

    impl Env for Script {
        fn chat(
            &mut self,
            messages: &[Message],
            options: &GenerateOptions,
        ) -> Result<ChatResponse, Error> {
            self.chats.push((messages.to_vec(), options.clone()));
            self.replies
                .pop_front()
                .unwrap_or_else(|| Err(Error::failed("the script ran out of replies")))
        }

        fn call_tool(&mut self, name: &str, arguments: &str) -> Result<ToolOutput, Error> {
            self.calls.push((name.to_string(), arguments.to_string()));
            (self.tool)(name, arguments)
        }

        fn log(&mut self, message: &str) {
            self.logs.push(message.to_string());
        }
    }

    /// A reply with this content and no tool calls.
    pub fn says(content: &str) -> Result<ChatResponse, Error> {
        Ok(ChatResponse {
            message: super::message(Role::Assistant, content),
            finish_reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
            },
        })
    }

    /// A reply calling these tools: (id, name, arguments).
    pub fn calls(calls: &[(&str, &str, &str)]) -> Result<ChatResponse, Error> {
        let mut message = super::message(Role::Assistant, "");
        message.tool_calls = calls
            .iter()
            .map(|(id, name, arguments)| ToolCall {
                id: id.to_string(),
                name: name.to_string(),
                arguments: arguments.to_string(),
            })
            .collect();
        Ok(ChatResponse {
            message,
            finish_reason: FinishReason::ToolCalls,
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
            },
        })
    }

    /// The roles and contents of messages, for compact assertions.
    pub fn transcript(messages: &[Message]) -> Vec<(Role, String)> {
        messages
            .iter()
            .map(|m| (m.role, m.content.clone()))
            .collect()
    }
}
