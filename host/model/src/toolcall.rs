//! Tool calls from the model's side: which format a model writes calls in,
//! parsing them (and the reasoning) out of generated text, streaming the
//! visible text safely, and constraining generation to one well-formed call.
//!
//! Four formats are known, each defined by what the model writes:
//!
//! - [`ToolCallFormat::DeepSeek`] (DeepSeek-V3, R1 and later): special
//!   tokens around each call, the arguments in a JSON code fence:
//!   `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`
//!   `\n```json\nARGS\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>`, further
//!   calls following the first `<｜tool▁call▁end｜>` after a newline. See
//!   [`DeepSeekStyle`] for the variants without the `function` type.
//! - [`ToolCallFormat::Hermes`] (Qwen2.5, Qwen3, Hermes):
//!   `<tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>`, one
//!   block per call.
//! - [`ToolCallFormat::Llama`] (Llama 3.1 to 3.3 with JSON tools): the whole
//!   reply is `{"name": NAME, "parameters": ARGS}`, optionally after
//!   `<|python_tag|>`; several calls are separated by `;` or a newline.
//! - [`ToolCallFormat::Generic`], for models whose template knows nothing of
//!   tools (SmolLM2): the server describes the tools in a system message
//!   ([`ToolCallFormat::tools_prompt`]) and the model answers with one JSON
//!   object `{"tool_calls": [{"name": NAME, "arguments": ARGS}, ...]}`,
//!   optionally inside a ```` ```json ```` code fence. Exactly: a JSON object
//!   whose first key is `tool_calls`, whose value is a non-empty array of
//!   objects each with a string `name` and an object `arguments`. Text around
//!   it is content.
//!
//! In every format, ARGS is a JSON object. Reasoning is the text inside
//! `<think>…</think>` at the start of the reply, or, when the prompt itself
//! opened `<think>` ([`prompt_opens_reasoning`]), everything before the first
//! `</think>`. Tool calls are only looked for after the reasoning.

mod constraint;
mod formats;
#[cfg(test)]
mod fuzz;
mod split;
#[cfg(test)]
mod tests;

pub use constraint::{CallConstraint, ToolChoiceError};
pub use split::{OutputSplitter, Piece};

use crate::chat::{ChatMessage, ChatTemplate, ToolCall, ToolSpec};
use crate::tokenizer::Tokenizer;

/// `<think>`: opens the reasoning.
pub const THINK_BEGIN: &str = "<think>";
/// `</think>`: closes the reasoning.
pub const THINK_END: &str = "</think>";
/// DeepSeek: opens the calls of a turn.
pub const DEEPSEEK_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
/// DeepSeek: closes the calls of a turn.
pub const DEEPSEEK_CALLS_END: &str = "<｜tool▁calls▁end｜>";
/// DeepSeek: opens one call.
pub const DEEPSEEK_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
/// DeepSeek: closes one call.
pub const DEEPSEEK_CALL_END: &str = "<｜tool▁call▁end｜>";
/// DeepSeek: separates a call's type (or name) from the rest.
pub const DEEPSEEK_SEP: &str = "<｜tool▁sep｜>";
/// Hermes/Qwen: opens one call.
pub const HERMES_BEGIN: &str = "<tool_call>";
/// Hermes/Qwen: closes one call.
pub const HERMES_END: &str = "</tool_call>";
/// Llama 3.1+: may precede a call.
pub const LLAMA_PYTHON_TAG: &str = "<|python_tag|>";

/// How a model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// DeepSeek-V3/R1 special tokens (see [`DeepSeekStyle`] for what sits
    /// between `<｜tool▁call▁begin｜>` and `<｜tool▁call▁end｜>`). The parser
    /// accepts every style; the style is what the server forces and what the
    /// tools prompt teaches.
    DeepSeek(DeepSeekStyle),
    /// Qwen2.5/Qwen3/Hermes: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`.
    Hermes,
    /// Llama 3.1/3.2/3.3 JSON tools: `{"name": …, "parameters": {…}}`,
    /// optionally after `<|python_tag|>`.
    Llama,
    /// `{"tool_calls": [{"name": …, "arguments": {…}}]}`, taught by the
    /// system message [`ToolCallFormat::tools_prompt`] writes.
    Generic,
}

/// The inside of one DeepSeek call, between `<｜tool▁call▁begin｜>` and
/// `<｜tool▁call▁end｜>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeepSeekStyle {
    /// `function<｜tool▁sep｜>NAME\n```json\nARGS\n```` (DeepSeek-V3, R1).
    #[default]
    Typed,
    /// `<｜tool▁sep｜>NAME\n```json\nARGS\n````: the same without the type.
    Untyped,
    /// `NAME<｜tool▁sep｜>ARGS` (DeepSeek-V3.1 and later).
    NameFirst,
}

/// What [`ToolCallFormat::parse`] finds in generated text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedOutput {
    /// The visible text: everything but the reasoning and the calls, with
    /// whitespace at both ends removed.
    pub content: String,
    /// The reasoning, trimmed; `None` when there was none (or it was empty).
    pub reasoning: Option<String>,
    /// The calls in the order written, with ids `call_0`, `call_1`, …
    /// (arguments as compact JSON text).
    pub tool_calls: Vec<ToolCall>,
}

impl ToolCallFormat {
    /// The format of a model, from its chat template (`None`: the
    /// tokenizer's own) and its vocabulary: a template that writes DeepSeek's
    /// `<｜tool▁calls▁begin｜>`, Hermes' `<tool_call>` or Llama's
    /// `<|python_tag|>`/`"parameters"` decides; a template that says nothing
    /// of tools leaves it to the vocabulary having one of those tokens;
    /// failing both, [`Generic`](Self::Generic).
    pub fn detect(template: Option<&str>, tokenizer: &Tokenizer) -> Self {
        let template = template.or_else(|| tokenizer.chat_template());
        if let Some(format) = template.and_then(Self::from_template) {
            return format;
        }
        if tokenizer.token_id(DEEPSEEK_CALLS_BEGIN).is_some() {
            ToolCallFormat::DeepSeek(DeepSeekStyle::Typed)
        } else if tokenizer.token_id(HERMES_BEGIN).is_some() {
            ToolCallFormat::Hermes
        } else if tokenizer.token_id(LLAMA_PYTHON_TAG).is_some() {
            ToolCallFormat::Llama
        } else {
            ToolCallFormat::Generic
        }
    }

    /// The format a chat template writes tool calls in, if it shows one.
    pub fn from_template(template: &str) -> Option<Self> {
        if template.contains(DEEPSEEK_CALLS_BEGIN) || template.contains(DEEPSEEK_CALL_BEGIN) {
            Some(ToolCallFormat::DeepSeek(deepseek_style(template)))
        } else if template.contains(HERMES_BEGIN) {
            Some(ToolCallFormat::Hermes)
        } else if template.contains(LLAMA_PYTHON_TAG)
            || (template.contains("<|start_header_id|>") && template.contains("\"parameters\""))
        {
            Some(ToolCallFormat::Llama)
        } else {
            None
        }
    }

    /// Whether the template describes `tools` to the model itself. When it
    /// does not (DeepSeek-R1's, SmolLM2's), the server adds the description
    /// ([`adapt_messages`](Self::adapt_messages)).
    ///
    /// Found by rendering a short conversation with one tool and looking for
    /// the tool's name in the prompt; a template that cannot be compiled or
    /// rendered that way is read instead: does its Jinja code use a variable
    /// `tools`?
    pub fn template_renders_tools(template: &str) -> bool {
        const NAME: &str = "probe_tool_7f3a";
        let rendered = ChatTemplate::new(template, Some(""), Some("")).and_then(|t| {
            t.render(
                &[
                    ChatMessage::system("Be brief."),
                    ChatMessage::user("Hello."),
                ],
                &[ToolSpec {
                    name: NAME.into(),
                    description: "A probe.".into(),
                    parameters: serde_json::json!({"type": "object", "properties": {}}),
                }],
                true,
            )
        });
        match rendered {
            Ok(prompt) => prompt.contains(NAME),
            Err(_) => jinja_uses_variable(template, "tools"),
        }
    }

    /// Split generated text into content, reasoning and tool calls. The
    /// reasoning is the text inside `<think>…</think>` at the start, or,
    /// with `reasoning_opened_by_prompt`, the text before the first
    /// `</think>` (all of it if none comes). Calls are looked for after it.
    /// A call that cannot be read (bad JSON, no name) stays in the content
    /// as written. Never panics.
    pub fn parse(&self, text: &str, reasoning_opened_by_prompt: bool) -> ParsedOutput {
        let mut splitter = OutputSplitter::new(*self, reasoning_opened_by_prompt);
        let mut pieces = splitter.push(text);
        let (rest, tool_calls) = splitter.finish();
        pieces.extend(rest);
        let mut out = ParsedOutput::default();
        let mut reasoning = String::new();
        for piece in pieces {
            match piece {
                Piece::Reasoning(text) => reasoning.push_str(&text),
                Piece::Content(text) => out.content.push_str(&text),
            }
        }
        out.reasoning = (!reasoning.is_empty()).then_some(reasoning);
        out.tool_calls = tool_calls;
        out
    }

    /// The text this model writes for `calls` (as a past assistant turn
    /// shows them when the template cannot, or for tests). Arguments are
    /// written as given.
    pub fn write_calls(&self, calls: &[ToolCall]) -> String {
        formats::write_calls(*self, calls)
    }

    /// A system-message text describing `tools` (name, description,
    /// parameters schema as compact JSON) and how to call them in this
    /// format. For templates that do not render `tools` themselves.
    ///
    /// For [`Generic`](Self::Generic):
    ///
    /// ```text
    /// # Tools
    ///
    /// You can call these tools:
    /// - calculator: Evaluate an arithmetic expression.
    ///   Parameters (JSON Schema): {"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}
    ///
    /// To call tools, reply with only a JSON object of this form and nothing else:
    /// {"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}
    /// The arguments must follow the tool's parameters schema; list several calls to make several. The results come back in the next message. To answer without a tool, reply in plain text.
    /// ```
    pub fn tools_prompt(&self, tools: &[ToolSpec]) -> String {
        constraint::tools_prompt(*self, tools)
    }

    /// The conversation as this model's template must see it to know about
    /// `tools`, given the template's source. A template that renders tools
    /// gets the messages unchanged. Otherwise the tools prompt is appended
    /// to the first system message (or becomes one, first); and if the
    /// template does not print `tool_calls`, assistant calls become text in
    /// this format appended to the content, and if it has no `tool` role,
    /// tool results become user messages: `Result of NAME (call ID):\nTEXT`.
    pub fn adapt_messages(
        &self,
        template: &str,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
    ) -> Vec<ChatMessage> {
        if Self::template_renders_tools(template) {
            return messages.to_vec();
        }
        let prints_calls = template.contains("tool_calls");
        let has_tool_role = template.contains("'tool'") || template.contains("\"tool\"");
        let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
        let mut names: Vec<(String, String)> = Vec::new();
        for m in messages {
            for call in &m.tool_calls {
                names.push((call.id.clone(), call.name.clone()));
            }
            if !prints_calls && !m.tool_calls.is_empty() {
                let mut text = m.content.clone().unwrap_or_default();
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&self.write_calls(&m.tool_calls));
                out.push(ChatMessage {
                    content: Some(text),
                    tool_calls: Vec::new(),
                    ..m.clone()
                });
            } else if !has_tool_role && m.role == "tool" {
                let id = m.tool_call_id.clone().unwrap_or_default();
                let name = m
                    .name
                    .clone()
                    .or_else(|| names.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone()))
                    .unwrap_or_else(|| "the tool".into());
                let text = format!(
                    "Result of {name} (call {id}):\n{}",
                    m.content.as_deref().unwrap_or("")
                );
                out.push(ChatMessage::user(text));
            } else {
                out.push(m.clone());
            }
        }
        if !tools.is_empty() {
            let prompt = self.tools_prompt(tools);
            match out.first_mut() {
                Some(first) if first.role == "system" => {
                    let mut text = first.content.clone().unwrap_or_default();
                    if !text.is_empty() {
                        text.push_str("\n\n");
                    }
                    text.push_str(&prompt);
                    first.content = Some(text);
                }
                _ => out.insert(0, ChatMessage::system(prompt)),
            }
        }
        out
    }

    /// A constraint that forces one well-formed call to one of `tools`, or
    /// to the tool `named`: for `tool_choice: "required"` (`named: None`)
    /// and `tool_choice: {"type": "function", "function": {"name": …}}`.
    /// See [`CallConstraint`] for how to apply it.
    pub fn call_constraint(
        &self,
        tools: &[ToolSpec],
        named: Option<&str>,
    ) -> Result<CallConstraint, ToolChoiceError> {
        constraint::call_constraint(*self, tools, named)
    }

    /// The same constraint as one llguidance Lark grammar covering the
    /// whole call, forced text included, for a grammar sampler that takes
    /// Lark. The JSON parts are `%json` schemas.
    pub fn call_grammar(
        &self,
        tools: &[ToolSpec],
        named: Option<&str>,
    ) -> Result<String, ToolChoiceError> {
        constraint::call_grammar(*self, tools, named)
    }
}

/// Whether a rendered prompt leaves `<think>` open, so that the reply
/// starts inside the reasoning (DeepSeek-R1-0528's and Qwen3 thinking
/// models' templates end the prompt with `<think>\n`).
pub fn prompt_opens_reasoning(prompt: &str) -> bool {
    prompt.trim_end().ends_with(THINK_BEGIN)
}

/// What the DeepSeek template writes between `<｜tool▁call▁begin｜>` and
/// `<｜tool▁sep｜>`: the type (R1/V3), nothing, or the name (V3.1).
fn deepseek_style(template: &str) -> DeepSeekStyle {
    let Some(start) = template.find(DEEPSEEK_CALL_BEGIN) else {
        return DeepSeekStyle::Typed;
    };
    let after = &template[start + DEEPSEEK_CALL_BEGIN.len()..];
    let Some(end) = after.find(DEEPSEEK_SEP) else {
        return DeepSeekStyle::Typed;
    };
    let between = &after[..end];
    if between.contains("name") {
        DeepSeekStyle::NameFirst
    } else if between.contains("type") || between.contains("function") {
        DeepSeekStyle::Typed
    } else {
        DeepSeekStyle::Untyped
    }
}

/// Whether the Jinja code of `template` (inside `{{ }}` and `{% %}`, outside
/// string literals) names the identifier `name`.
fn jinja_uses_variable(template: &str, name: &str) -> bool {
    let mut rest = template;
    while let Some(open) = rest.find(['{']) {
        let after = &rest[open + 1..];
        let close = match after.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            _ => {
                rest = after;
                continue;
            }
        };
        let code = &after[1..];
        let end = code.find(close).unwrap_or(code.len());
        if code_names(&code[..end], name) {
            return true;
        }
        rest = &code[end..];
    }
    false
}

fn code_names(code: &str, name: &str) -> bool {
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' || c == '"' {
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            if &code[i..end] == name {
                return true;
            }
        }
    }
    false
}
