//! `looping-agent`: an agent plugin that misbehaves on purpose, for the
//! host's budget and grant tests. Never grant it to anything real.
//!
//! Config, a JSON object (unknown fields are `invalid-input`):
//!
//! ```json
//! {"mode": "chat", "stop_on_error": false, "tool": "spin", "arguments": {}}
//! ```
//!
//! | `mode`      | behaviour |
//! |-------------|-----------|
//! | `chat` (default) | calls `inference.chat([user("Count from 1 to 10.")])` forever: `max-tokens` 16, temperature 0, no tools (`tool-choice: none`) |
//! | `tools`     | calls `tools.call(<tool>, <arguments>)` forever, `<tool>` being `tool` or else the first of `tools.available()`; `not-found` at once when no tool is granted |
//! | `sleep`     | sleeps 30 s in WASI (a clock pollable), then answers `slept` |
//! | `big-answer` | answers 2 MiB of `x` at once |
//! | `ungranted` | calls `tools.call("not-a-granted-tool", "{}")` once. When it fails, as it must, the answer is `"<kind>: <message>"` of the error, `kind` being the WIT case (`not-granted: …`); when it succeeds the run fails with `failed` |
//!
//! In the looping modes the results of the calls are ignored, errors
//! included, so the run only ends when the host stops it (a step, token or
//! time budget trapping the instance), unless `stop_on_error` (default
//! false) is true: then the first error of a call ends the run with that
//! error, same kind and message, which lets a test see which budget the host
//! reported. `arguments` (a JSON object, default `{}`) is what `tools` mode
//! passes to the tool, and `tool` (a string) which tool it calls; it need
//! not be among `tools.available()`, so the host's answer to an ungranted
//! name can be seen too. The start of a run is logged at level info
//! (`looping-agent: mode chat`); the calls are not.

use deepwasm_sdk::agent::inference::{self, GenerateOptions, ToolChoice};
use deepwasm_sdk::agent::{Guest, tools};
use deepwasm_sdk::config::Fields;
use deepwasm_sdk::log::{self, Level};
use deepwasm_sdk::types::{Error, Message, Role, SamplingParams, ToolOutput};

/// The tool that `ungranted` mode calls.
pub const UNGRANTED_TOOL: &str = "not-a-granted-tool";
/// What `chat` mode asks, again and again.
pub const PROMPT: &str = "Count from 1 to 10.";

/// What the agent does.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// `inference.chat` forever.
    Chat,
    /// `tools.call` forever on this tool (`None`: the first granted one),
    /// with these arguments.
    Tools(Option<String>, String),
    /// One call of a tool that is not granted.
    Ungranted,
    /// A 30 s sleep in WASI.
    Sleep,
    /// An answer of 2 MiB.
    BigAnswer,
}

/// The agent's settings, from its config.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// What to do.
    pub mode: Mode,
    /// End the run at the first error of a call.
    pub stop_on_error: bool,
}

/// Read the config (see the crate docs).
pub fn settings(config: &str) -> Result<Settings, Error> {
    let cfg = Fields::parse("config", config)?;
    cfg.only(&["mode", "stop_on_error", "tool", "arguments"])?;
    let arguments = match cfg.raw("arguments") {
        None | Some(serde_json::Value::Null) => "{}".to_string(),
        Some(v @ serde_json::Value::Object(_)) => v.to_string(),
        Some(_) => return Err(cfg.error("arguments", "must be a JSON object")),
    };
    let mode: String = cfg.get_or("mode", "chat".to_string())?;
    let mode = match mode.as_str() {
        "chat" => Mode::Chat,
        "tools" => Mode::Tools(cfg.get("tool")?, arguments),
        "ungranted" => Mode::Ungranted,
        "sleep" => Mode::Sleep,
        "big-answer" => Mode::BigAnswer,
        other => {
            return Err(cfg.error(
                "mode",
                format!("unknown mode {other:?}; the modes are chat, tools, sleep, big-answer and ungranted"),
            ));
        }
    };
    Ok(Settings {
        mode,
        stop_on_error: cfg.get_or("stop_on_error", false)?,
    })
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

/// What the agent needs from the host.
pub trait Env {
    /// `inference.chat`, its reply dropped.
    fn chat(&mut self, messages: &[Message], options: &GenerateOptions) -> Result<(), Error>;
    /// `tools.available`, names only.
    fn tool_names(&mut self) -> Vec<String>;
    /// `tools.call`.
    fn call_tool(&mut self, name: &str, arguments: &str) -> Result<ToolOutput, Error>;
}

struct Host;

impl Env for Host {
    fn chat(&mut self, messages: &[Message], options: &GenerateOptions) -> Result<(), Error> {
        inference::chat(messages, options).map(drop)
    }

    fn tool_names(&mut self) -> Vec<String> {
        tools::available().into_iter().map(|t| t.name).collect()
    }

    fn call_tool(&mut self, name: &str, arguments: &str) -> Result<ToolOutput, Error> {
        tools::call(name, arguments)
    }
}

fn chat_options() -> GenerateOptions {
    GenerateOptions {
        params: SamplingParams {
            temperature: Some(0.0),
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: None,
            presence_penalty: None,
            frequency_penalty: None,
            seed: None,
        },
        max_tokens: Some(16),
        stop: Vec::new(),
        tools: Vec::new(),
        tool_choice: ToolChoice::None,
        sampler: None,
    }
}

/// Run (see the crate docs). Returns only in `ungranted` mode, on an error
/// with `stop_on_error`, or when `tools` mode has no tool.
pub fn run(env: &mut impl Env, settings: &Settings) -> Result<String, Error> {
    match &settings.mode {
        Mode::Chat => {
            let messages = [Message {
                role: Role::User,
                content: PROMPT.to_string(),
                reasoning: None,
                tool_calls: Vec::new(),
                tool_call_id: None,
                name: None,
            }];
            let options = chat_options();
            loop {
                if let Err(e) = env.chat(&messages, &options)
                    && settings.stop_on_error
                {
                    return Err(e);
                }
            }
        }
        Mode::Tools(tool, arguments) => {
            let Some(name) = tool.clone().or_else(|| env.tool_names().into_iter().next()) else {
                return Err(Error::not_found(
                    "no tool is granted to this agent; mode \"tools\" needs one",
                ));
            };
            loop {
                if let Err(e) = env.call_tool(&name, arguments)
                    && settings.stop_on_error
                {
                    return Err(e);
                }
            }
        }
        Mode::Sleep => {
            std::thread::sleep(std::time::Duration::from_secs(30));
            Ok("slept".to_string())
        }
        Mode::BigAnswer => Ok("x".repeat(2 << 20)),
        Mode::Ungranted => match env.call_tool(UNGRANTED_TOOL, "{}") {
            Err(e) => Ok(format!("{}: {}", kind(&e), e.message())),
            Ok(_) => Err(Error::failed(format!(
                "the host ran {UNGRANTED_TOOL:?}, which is not granted to this agent"
            ))),
        },
    }
}

struct LoopingAgent;

impl Guest for LoopingAgent {
    fn run(_task: String, config: String) -> Result<String, Error> {
        let settings = settings(&config)?;
        let mode = match settings.mode {
            Mode::Chat => "chat",
            Mode::Tools(..) => "tools",
            Mode::Ungranted => "ungranted",
            Mode::Sleep => "sleep",
            Mode::BigAnswer => "big-answer",
        };
        log::log(Level::Info, &format!("looping-agent: mode {mode}"));
        run(&mut Host, &settings)
    }
}

deepwasm_sdk::export_agent!(LoopingAgent);

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts calls; fails every call from the `fail_from`-th on.
    struct Counter {
        chats: u32,
        calls: Vec<(String, String)>,
        tools: Vec<String>,
        fail_from: u32,
        ungranted_error: bool,
    }

    impl Counter {
        fn new(fail_from: u32) -> Counter {
            Counter {
                chats: 0,
                calls: Vec::new(),
                tools: vec!["ok".into(), "spin".into()],
                fail_from,
                ungranted_error: true,
            }
        }
    }

    impl Env for Counter {
        fn chat(&mut self, messages: &[Message], options: &GenerateOptions) -> Result<(), Error> {
            assert_eq!(messages.len(), 1);
            assert_eq!(messages[0].content, PROMPT);
            assert_eq!(options.max_tokens, Some(16));
            self.chats += 1;
            if self.chats >= self.fail_from {
                Err(Error::LimitExceeded("step budget".into()))
            } else if self.chats.is_multiple_of(2) {
                Err(Error::Unavailable("busy".into()))
            } else {
                Ok(())
            }
        }

        fn tool_names(&mut self) -> Vec<String> {
            self.tools.clone()
        }

        fn call_tool(&mut self, name: &str, arguments: &str) -> Result<ToolOutput, Error> {
            self.calls.push((name.into(), arguments.into()));
            if name == UNGRANTED_TOOL {
                return if self.ungranted_error {
                    Err(Error::NotGranted("tool not granted".into()))
                } else {
                    Ok(ToolOutput::Text("ran".into()))
                };
            }
            if self.calls.len() as u32 >= self.fail_from {
                Err(Error::LimitExceeded("tool calls".into()))
            } else {
                Ok(ToolOutput::Text("ok".into()))
            }
        }
    }

    #[test]
    fn config() {
        assert_eq!(
            settings("").unwrap(),
            Settings {
                mode: Mode::Chat,
                stop_on_error: false
            }
        );
        assert_eq!(
            settings(r#"{"mode":"tools","arguments":{"x":1},"stop_on_error":true}"#).unwrap(),
            Settings {
                mode: Mode::Tools(None, r#"{"x":1}"#.into()),
                stop_on_error: true
            }
        );
        assert_eq!(
            settings(r#"{"mode":"tools"}"#).unwrap().mode,
            Mode::Tools(None, "{}".into())
        );
        assert_eq!(
            settings(r#"{"mode":"tools","tool":"trap"}"#).unwrap().mode,
            Mode::Tools(Some("trap".into()), "{}".into())
        );
        assert_eq!(
            settings(r#"{"mode":"ungranted"}"#).unwrap().mode,
            Mode::Ungranted
        );
        for bad in [
            r#"{"mode":"spin"}"#,
            r#"{"mode":1}"#,
            r#"{"arguments":"{}"}"#,
            r#"{"stop_on_error":"yes"}"#,
            r#"{"mode":"tools","tool":3}"#,
            r#"{"other":1}"#,
        ] {
            assert!(
                matches!(settings(bad), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn chat_loops_past_errors_until_told_to_stop() {
        // Errors before the 1000th call are ignored; with stop_on_error the
        // first one ends the run.
        let mut env = Counter::new(1000);
        let s = Settings {
            mode: Mode::Chat,
            stop_on_error: true,
        };
        assert!(matches!(run(&mut env, &s), Err(Error::Unavailable(_))));
        assert_eq!(env.chats, 2);
    }

    #[test]
    fn tools_mode_calls_the_first_tool() {
        let mut env = Counter::new(5);
        let s = Settings {
            mode: Mode::Tools(None, r#"{"a":1}"#.into()),
            stop_on_error: true,
        };
        assert!(matches!(run(&mut env, &s), Err(Error::LimitExceeded(m)) if m == "tool calls"));
        assert_eq!(env.calls.len(), 5);
        assert!(
            env.calls
                .iter()
                .all(|(n, a)| n == "ok" && a == r#"{"a":1}"#)
        );
        let mut env = Counter::new(5);
        env.tools.clear();
        assert!(matches!(run(&mut env, &s), Err(Error::NotFound(_))));
        assert!(env.calls.is_empty());
        // A named tool is called even when it is not listed.
        let mut env = Counter::new(2);
        env.tools.clear();
        let s = Settings {
            mode: Mode::Tools(Some("spin".into()), "{}".into()),
            stop_on_error: true,
        };
        assert!(matches!(run(&mut env, &s), Err(Error::LimitExceeded(_))));
        assert_eq!(env.calls, vec![("spin".to_string(), "{}".to_string()); 2]);
    }

    #[test]
    fn ungranted() {
        let s = Settings {
            mode: Mode::Ungranted,
            stop_on_error: false,
        };
        let mut env = Counter::new(1);
        assert_eq!(run(&mut env, &s).unwrap(), "not-granted: tool not granted");
        assert_eq!(env.calls, [(UNGRANTED_TOOL.to_string(), "{}".to_string())]);
        env.ungranted_error = false;
        assert!(matches!(run(&mut env, &s), Err(Error::Failed(_))));
    }
}
