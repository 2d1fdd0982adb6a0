//! Chat templates: the model's own Jinja template, rendered with minijinja.
//!
//! Every chat model ships the template that turns a conversation into the
//! exact prompt it was trained on (`chat_template` in `tokenizer_config.json`,
//! `tokenizer.chat_template` in GGUF). A prompt that differs from it by a
//! single space is a token sequence the model never saw in training, so
//! nothing here is written per model: the template itself is run, and what
//! we own is the environment it runs in. That environment reproduces what Hugging Face's
//! `apply_chat_template` gives templates (Python jinja2 with
//! `trim_blocks`/`lstrip_blocks`, its `tojson`, `raise_exception`,
//! `strftime_now`, Python string methods and Python's way of printing values),
//! and the tests compare our prompts byte for byte with jinja2's.

mod json;
mod python;
mod time;

pub use time::strftime;

use std::fmt;
use std::path::Path;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// One turn of a conversation, in the shape of the OpenAI chat API, which is
/// also what Hugging Face templates are written against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool` (templates decide what else
    /// they accept).
    pub role: String,
    /// `None` is rendered as Python's `None`, not as an empty string: some
    /// templates (DeepSeek's) test `content is none` on assistant turns that
    /// only call tools, while others (Qwen's) need a string there.
    #[serde(default)]
    pub content: Option<String>,
    /// An assistant turn's reasoning when it is kept apart from `content`;
    /// only templates that know the key use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Tool calls of an assistant turn. When empty, the message has no
    /// `tool_calls` key at all, because templates test `'tool_calls' in
    /// message` as well as its truth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// On a `tool` turn, the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// On a `tool` turn, the tool's name, for templates that print it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with text content and nothing else.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Some(content.into()),
            reasoning_content: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// An assistant turn that calls tools. Its content is `None`, as the
    /// OpenAI API sends it; set it to `Some("")` for templates that cannot
    /// handle `None`.
    pub fn tool_calls(calls: Vec<ToolCall>) -> Self {
        ChatMessage {
            content: None,
            tool_calls: calls,
            ..Self::new("assistant", "")
        }
    }

    /// The result of the tool call `tool_call_id`.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            tool_call_id: Some(tool_call_id.into()),
            ..Self::new("tool", content)
        }
    }
}

/// A call an assistant turn made. `arguments` stays JSON text, exactly as the
/// model wrote it; the template decides whether it sees that text or the
/// parsed object (see [`ToolArguments`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// A JSON object, as text.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }
}

/// A tool offered to the model. Templates receive it as
/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema object; its key order is kept, since templates print it.
    pub parameters: serde_json::Value,
}

/// How tool-call arguments are handed to the template.
///
/// Templates disagree: DeepSeek's concatenates `arguments` into the prompt
/// and so needs the JSON text, while others (Llama 3.1's, Qwen 2.5's) pipe it
/// through `tojson` and so need the parsed object, or they would print a
/// quoted, escaped string. Hugging Face leaves this to the caller;
/// [`ChatTemplate::new`] finds out by rendering a probe conversation both
/// ways, and [`ChatTemplate::with_tool_arguments`] overrides it. A template
/// the probe cannot render (one that needs extra variables) gets `Text`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolArguments {
    /// `arguments` is the JSON text, as in the OpenAI API.
    Text,
    /// `arguments` is the parsed JSON object (text that does not parse as an
    /// object is still passed as text).
    Object,
}

/// Why a template could not be compiled, loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template is not valid Jinja. Line and column are 1-based and
    /// count characters in the template source.
    #[error("syntax error in the chat template at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// The template called `raise_exception(message)`: it refuses the
    /// conversation (say, roles that do not alternate).
    #[error("the chat template rejected the conversation: {0}")]
    Raised(String),
    /// Rendering failed for another reason (a missing key, a type error).
    #[error("the chat template failed{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Render {
        line: Option<usize>,
        message: String,
    },
    /// Extra template variables were not a JSON object, or tried to replace
    /// one of the variables the renderer sets itself.
    #[error("bad template variables: {0}")]
    Variables(String),
    /// The template could not be found in, or read from, a tokenizer
    /// configuration or GGUF file.
    #[error("{0}")]
    Source(String),
}

/// The names templates are registered under in the environment.
const DEFAULT: &str = "default";
const TOOL_USE: &str = "tool_use";

/// Variables the renderer sets itself; extra variables may not replace them.
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// A compiled chat template, ready to render conversations from any thread.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The main template's Jinja source.
    source: String,
    has_tool_use: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    arguments: ToolArguments,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("has_tool_use", &self.has_tool_use)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("arguments", &self.arguments)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source`. `bos_token` and `eos_token` are the texts of the
    /// tokenizer's special tokens, which templates print themselves (the
    /// prompt is then tokenized without adding special tokens); `None` leaves
    /// the variable undefined, as Hugging Face does for unset tokens.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = python::environment();
        add_template(&mut env, DEFAULT, source)?;
        let mut template = ChatTemplate {
            env,
            source: source.to_owned(),
            has_tool_use: false,
            bos_token: bos_token.map(str::to_owned),
            eos_token: eos_token.map(str::to_owned),
            arguments: ToolArguments::Text,
        };
        template.arguments = template.probe_tool_arguments();
        Ok(template)
    }

    /// Add the separate template some models ship for conversations with
    /// tools (`tool_use` in a list of named templates); like Hugging Face,
    /// [`render`](Self::render) uses it whenever tools are given.
    pub fn with_tool_use(mut self, source: &str) -> Result<Self, ChatTemplateError> {
        add_template(&mut self.env, TOOL_USE, source)?;
        self.has_tool_use = true;
        self.arguments = self.probe_tool_arguments();
        Ok(self)
    }

    /// The main template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether a separate template for conversations with tools was added
    /// ([`with_tool_use`](Self::with_tool_use)).
    pub fn has_tool_use(&self) -> bool {
        self.has_tool_use
    }

    /// Override how tool-call arguments reach the template.
    pub fn with_tool_arguments(mut self, arguments: ToolArguments) -> Self {
        self.arguments = arguments;
        self
    }

    /// How tool-call arguments reach the template: found by probing unless
    /// overridden.
    pub fn tool_arguments(&self) -> ToolArguments {
        self.arguments
    }

    /// The template of a Hugging Face `tokenizer_config.json`, with its BOS
    /// and EOS texts; `Ok(None)` when it has none (a base model).
    ///
    /// `chat_template` is either one template or a list of
    /// `{"name", "template"}`, where `default` is the main one and `tool_use`
    /// the one for conversations with tools.
    pub fn from_tokenizer_config(
        config: &serde_json::Value,
    ) -> Result<Option<Self>, ChatTemplateError> {
        let token = |key: &str| match config.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            // An `AddedToken` written out as an object.
            Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()),
            _ => None,
        };
        let (default, tool_use) = match config.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => (s.as_str(), None),
            Some(serde_json::Value::Array(list)) => {
                let named = |wanted: &str| {
                    list.iter().find_map(|entry| {
                        (entry.get("name")?.as_str()? == wanted)
                            .then(|| entry.get("template")?.as_str())
                            .flatten()
                    })
                };
                let default = named(DEFAULT).ok_or_else(|| {
                    ChatTemplateError::Source(
                        "`chat_template` is a list without a `default` template".into(),
                    )
                })?;
                (default, named(TOOL_USE))
            }
            Some(other) => {
                return Err(ChatTemplateError::Source(format!(
                    "`chat_template` is neither a string nor a list of named templates: {other}"
                )));
            }
        };
        let mut template = Self::new(default, token("bos_token"), token("eos_token"))?;
        if let Some(tool_use) = tool_use {
            template = template.with_tool_use(tool_use)?;
        }
        Ok(Some(template))
    }

    /// The template of a GGUF file's metadata (`tokenizer.chat_template`,
    /// and `tokenizer.chat_template.tool_use` if present), with the BOS and
    /// EOS texts looked up in its vocabulary; `Ok(None)` when it has none.
    pub fn from_gguf(
        content: &candle_core::quantized::gguf_file::Content,
    ) -> Result<Option<Self>, ChatTemplateError> {
        let meta = &content.metadata;
        let text = |key: &str| -> Result<Option<&str>, ChatTemplateError> {
            match meta.get(key) {
                None => Ok(None),
                Some(v) => v
                    .to_string()
                    .map(|s| Some(s.as_str()))
                    .map_err(|e| ChatTemplateError::Source(format!("GGUF `{key}`: {e}"))),
            }
        };
        let Some(default) = text("tokenizer.chat_template")? else {
            return Ok(None);
        };
        let tokens = meta
            .get("tokenizer.ggml.tokens")
            .and_then(|t| t.to_vec().ok());
        let token = |key: &str| {
            let id = meta.get(key)?.to_u32().ok()? as usize;
            tokens?.get(id)?.to_string().ok().map(String::as_str)
        };
        let mut template = Self::new(
            default,
            token("tokenizer.ggml.bos_token_id"),
            token("tokenizer.ggml.eos_token_id"),
        )?;
        if let Some(tool_use) = text("tokenizer.chat_template.tool_use")? {
            template = template.with_tool_use(tool_use)?;
        }
        Ok(Some(template))
    }

    /// [`from_gguf`](Self::from_gguf) on a file: reads its metadata only.
    pub fn from_gguf_file(path: &Path) -> Result<Option<Self>, ChatTemplateError> {
        let source =
            |e: &dyn fmt::Display| ChatTemplateError::Source(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(|e| source(&e))?;
        let content =
            candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| source(&e))?;
        Self::from_gguf(&content)
    }

    /// The prompt for `messages`, offering `tools` (none: the template sees
    /// `tools` as `None`). With `add_generation_prompt`, the prompt ends with
    /// whatever opens the assistant's next turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(
            messages,
            tools,
            add_generation_prompt,
            &serde_json::Value::Null,
        )
    }

    /// [`render`](Self::render) with extra template variables, a JSON object
    /// or null: the keyword arguments of Hugging Face's `apply_chat_template`,
    /// such as `{"enable_thinking": false}`. They may replace `bos_token` and
    /// `eos_token` but not the conversation itself.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
        variables: &serde_json::Value,
    ) -> Result<String, ChatTemplateError> {
        self.render_as(
            messages,
            tools,
            add_generation_prompt,
            variables,
            self.arguments,
        )
    }

    fn render_as(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
        variables: &serde_json::Value,
        arguments: ToolArguments,
    ) -> Result<String, ChatTemplateError> {
        let mut context: Vec<(String, Value)> = Vec::new();
        if let Some(bos) = &self.bos_token {
            context.push(("bos_token".into(), Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            context.push(("eos_token".into(), Value::from(eos.as_str())));
        }
        match variables {
            serde_json::Value::Null => {}
            serde_json::Value::Object(vars) => {
                for (key, value) in vars {
                    if RESERVED.contains(&key.as_str()) {
                        return Err(ChatTemplateError::Variables(format!(
                            "`{key}` is set by the renderer"
                        )));
                    }
                    context.retain(|(k, _)| k != key);
                    context.push((key.clone(), Value::from_serialize(value)));
                }
            }
            other => {
                return Err(ChatTemplateError::Variables(format!(
                    "expected a JSON object, got {other}"
                )));
            }
        }
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| message_value(m, arguments))
            .collect();
        context.push(("messages".into(), Value::from_serialize(&messages)));
        let tools = if tools.is_empty() {
            Value::from(())
        } else {
            Value::from_serialize(tools.iter().map(tool_value).collect::<Vec<_>>())
        };
        context.push(("tools".into(), tools.clone()));
        context.push(("documents".into(), Value::from(())));
        context.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));

        let name = if self.has_tool_use && !tools.is_none() {
            TOOL_USE
        } else {
            DEFAULT
        };
        let template = self.env.get_template(name).map_err(|e| render_error(&e))?;
        template
            .render(Value::from_iter(context))
            .map_err(|e| render_error(&e))
    }

    /// Which [`ToolArguments`] the template wants: render a conversation
    /// whose only tool call has distinctive arguments, first as text, then
    /// as an object, and keep the first form that shows up in the prompt
    /// intact. Templates that never print tool calls get `Text`.
    fn probe_tool_arguments(&self) -> ToolArguments {
        const ARGUMENTS: &str = r#"{"probe_argument": "probe value"}"#;
        // A whole exchange, so that templates that look at neighbouring
        // turns or insist on a shape find what they expect.
        let messages = [
            ChatMessage::system("Use the probe."),
            ChatMessage::user("Call the probe."),
            ChatMessage {
                content: Some(String::new()),
                ..ChatMessage::tool_calls(vec![ToolCall::new("call_0", "probe_tool", ARGUMENTS)])
            },
            ChatMessage::tool("call_0", "probed"),
            ChatMessage::assistant("Done."),
            ChatMessage::user("Thanks."),
        ];
        let tools = [ToolSpec {
            name: "probe_tool".into(),
            description: "A probe.".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        }];
        let render = |arguments| {
            self.render_as(
                &messages,
                &tools,
                false,
                &serde_json::Value::Null,
                arguments,
            )
        };
        if render(ToolArguments::Text).is_ok_and(|p| p.contains(ARGUMENTS)) {
            return ToolArguments::Text;
        }
        if render(ToolArguments::Object)
            .is_ok_and(|p| p.contains("probe_argument") && p.contains("probe value"))
        {
            return ToolArguments::Object;
        }
        ToolArguments::Text
    }
}

/// A message as Hugging Face templates see it: a dict with only the keys
/// that are set, tool calls in the OpenAI shape.
fn message_value(m: &ChatMessage, arguments: ToolArguments) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert("role".into(), m.role.clone().into());
    map.insert("content".into(), m.content.clone().into());
    if let Some(reasoning) = &m.reasoning_content {
        map.insert("reasoning_content".into(), reasoning.clone().into());
    }
    if !m.tool_calls.is_empty() {
        let calls = m
            .tool_calls
            .iter()
            .map(|call| {
                let args = match arguments {
                    ToolArguments::Object => match serde_json::from_str(&call.arguments) {
                        Ok(v @ serde_json::Value::Object(_)) => v,
                        _ => call.arguments.clone().into(),
                    },
                    ToolArguments::Text => call.arguments.clone().into(),
                };
                serde_json::json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": args},
                })
            })
            .collect();
        map.insert("tool_calls".into(), serde_json::Value::Array(calls));
    }
    if let Some(id) = &m.tool_call_id {
        map.insert("tool_call_id".into(), id.clone().into());
    }
    if let Some(name) = &m.name {
        map.insert("name".into(), name.clone().into());
    }
    serde_json::Value::Object(map)
}

fn tool_value(tool: &ToolSpec) -> serde_json::Value {
    serde_json::json!({
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    })
}

fn add_template(
    env: &mut Environment<'static>,
    name: &'static str,
    source: &str,
) -> Result<(), ChatTemplateError> {
    let source = python::rewrite_generation_tags(source);
    env.add_template_owned(name, source.clone().into_owned())
        .map_err(|e| {
            let (line, column) = match e.range() {
                Some(range) => python::line_column(&source, range.start),
                None => (e.line().unwrap_or(1), 1),
            };
            ChatTemplateError::Syntax {
                line,
                column,
                message: describe(&e),
            }
        })
}

fn render_error(e: &minijinja::Error) -> ChatTemplateError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(raised) = err.downcast_ref::<python::Raised>() {
            return ChatTemplateError::Raised(raised.0.clone());
        }
        cause = err.source();
    }
    ChatTemplateError::Render {
        line: e.line(),
        message: describe(e),
    }
}

/// The error's kind and detail, without minijinja's location suffix (we
/// report the location ourselves).
fn describe(e: &minijinja::Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::SyntaxError, Some(detail)) => detail.to_owned(),
        (kind, Some(detail)) => format!("{kind}: {detail}"),
        (kind, None) => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn template_is_send_and_sync() {
        assert_send_sync::<ChatTemplate>();
    }
}
