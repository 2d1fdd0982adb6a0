//! `POST /v1/responses` (OpenAI's Responses API) over the chat machinery,
//! and `GET`/`DELETE /v1/responses/{id}`.
//!
//! A request becomes a chat request: `instructions` a system message,
//! `input` (a string or items) the messages, with `function_call` and
//! `function_call_output` items as assistant tool calls and tool results,
//! `tools` (flat function tools) the chat tools, `text.format` the
//! `response_format`, `max_output_tokens` the token limit. It then runs as
//! a chat completion does (steering, plugins, rewards), and its reply comes
//! back as output items: `reasoning` (what an R1-style model thought inside
//! `<think>`, as its summary), a `message` with `output_text`, and
//! `function_call`s.
//!
//! Stored responses (`store`, the default) are kept per tenant in memory,
//! at most [`MAX_STORED`] of them and [`MAX_STORED_BYTES`] per tenant (the
//! oldest go first), so `previous_response_id` continues a conversation and
//! a tenant sees only its own. They do not survive a restart.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use deepwasm_engine::{Completion, Event, FinishReason};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::plan::ChatInput;
use super::response::{new_id, now_secs};
use super::{CancelOnDrop, run_to_end, with_ignored};
use crate::AppState;
use crate::api::{
    ApiJson, ChatRequest, Content, FunctionCall, FunctionDef, InMessage, InToolCall,
    JsonSchemaFormat, ResponseFormat, RewardRef, SamplerRef, Sampling, ToolDef, ignore_unknown,
};
use crate::error::ApiError;
use crate::output::{ChoiceOutput, Part};
use crate::tenants::Tenant;

/// Stored responses one tenant keeps, at most.
pub const MAX_STORED: usize = 1000;
/// Bytes of stored conversations one tenant keeps, at most.
pub const MAX_STORED_BYTES: usize = 64 << 20;

/// `POST /v1/responses`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string (one user message) or a list of items.
    #[schema(value_type = Value)]
    pub input: Value,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Value>>)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub text: Option<Value>,
    /// Accepted; an R1-style model's reasoning comes back as its summary.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub max_output_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    /// Keep the response for `previous_response_id` (default true).
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub user: Option<String>,
    // Extensions, as on chat.
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub sampler: Option<SamplerRef>,
    #[serde(default)]
    pub rewards: Option<Vec<RewardRef>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<Map<String, Value>>,
    /// Fields this server does not implement: see `api::ignore_unknown`.
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// A stored response: the conversation it ends (for a continuation) and
/// the object it answered.
struct Stored {
    messages: Vec<InMessage>,
    object: Value,
    bytes: usize,
}

/// Every tenant's stored responses: in this process's memory, or, when
/// replicas share a state, in its database.
#[derive(Default)]
pub struct ResponseStore {
    memory: MemoryResponses,
    shared: Option<deepwasm_state::PgState>,
}

/// Responses kept in memory.
#[derive(Default)]
struct MemoryResponses {
    tenants: Mutex<HashMap<String, TenantResponses>>,
}

#[derive(Default)]
struct TenantResponses {
    by_id: HashMap<String, Stored>,
    order: VecDeque<String>,
    bytes: usize,
}

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStore")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// The bytes a stored response counts against its tenant's budget.
fn stored_bytes(messages: &[InMessage], object: &Value) -> usize {
    object.to_string().len()
        + messages
            .iter()
            .map(|m| message_bytes(m) + 64)
            .sum::<usize>()
}

impl ResponseStore {
    /// Responses stored in `state`, shared with every replica on it.
    pub fn shared(state: deepwasm_state::PgState) -> Self {
        ResponseStore {
            memory: MemoryResponses::default(),
            shared: Some(state),
        }
    }

    /// Store `tenant`'s response `id`: the conversation it ends and its
    /// object. A store that fails is logged; the answer was given anyway.
    pub(crate) async fn save(
        &self,
        tenant: &str,
        id: &str,
        messages: Vec<InMessage>,
        object: Value,
    ) {
        let Some(pg) = &self.shared else {
            self.memory.put(tenant, id, messages, object);
            return;
        };
        let bytes = stored_bytes(&messages, &object);
        if bytes > MAX_STORED_BYTES {
            tracing::debug!(tenant, id, bytes, "a response too large to store");
            return;
        }
        let messages = match serde_json::to_string(&messages) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(tenant, id, "cannot store a response: {e}");
                return;
            }
        };
        let stored = pg
            .put_response(
                tenant,
                &deepwasm_state::NewResponse {
                    id,
                    messages: &messages,
                    object: &object.to_string(),
                    bytes,
                },
                MAX_STORED,
                MAX_STORED_BYTES,
            )
            .await;
        if let Err(e) = stored {
            tracing::warn!(tenant, id, "the response was answered but not stored: {e}");
        }
    }

    /// The conversation `tenant`'s response `id` ends.
    pub(crate) async fn load_messages(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Vec<InMessage>>, ApiError> {
        match &self.shared {
            None => Ok(self.memory.messages(tenant, id)),
            Some(_) => self.load_shared(tenant, id, |(messages, _)| messages).await,
        }
    }

    /// `tenant`'s response `id` as it was answered.
    pub(crate) async fn load_object(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Value>, ApiError> {
        match &self.shared {
            None => Ok(self.memory.object(tenant, id)),
            Some(_) => self.load_shared(tenant, id, |(_, object)| object).await,
        }
    }

    /// One part of a response in the shared state (`part` picks it from
    /// the conversation and the object), read back from its JSON.
    async fn load_shared<T: serde::de::DeserializeOwned>(
        &self,
        tenant: &str,
        id: &str,
        part: fn((String, String)) -> String,
    ) -> Result<Option<T>, ApiError> {
        let Some(pg) = &self.shared else {
            return Ok(None);
        };
        let Some(stored) = pg
            .response(tenant, id)
            .await
            .map_err(crate::tenants::state_error)?
        else {
            return Ok(None);
        };
        serde_json::from_str(&part(stored))
            .map(Some)
            .map_err(|e| ApiError::internal(format!("stored response {id}: {e}")))
    }

    /// Delete `tenant`'s response `id`; whether there was one.
    pub(crate) async fn remove(&self, tenant: &str, id: &str) -> Result<bool, ApiError> {
        match &self.shared {
            None => Ok(self.memory.delete(tenant, id)),
            Some(pg) => pg
                .delete_response(tenant, id)
                .await
                .map_err(crate::tenants::state_error),
        }
    }
}

impl MemoryResponses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantResponses>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, tenant: &str, id: &str, messages: Vec<InMessage>, object: Value) {
        let bytes = stored_bytes(&messages, &object);
        if bytes > MAX_STORED_BYTES {
            tracing::debug!(tenant, id, bytes, "a response too large to store");
            return;
        }
        let mut all = self.lock();
        let t = all.entry(tenant.to_owned()).or_default();
        while t.order.len() >= MAX_STORED || t.bytes + bytes > MAX_STORED_BYTES {
            let Some(old) = t.order.pop_front() else {
                break;
            };
            if let Some(s) = t.by_id.remove(&old) {
                t.bytes -= s.bytes;
            }
        }
        t.bytes += bytes;
        t.order.push_back(id.to_owned());
        t.by_id.insert(
            id.to_owned(),
            Stored {
                messages,
                object,
                bytes,
            },
        );
    }

    fn messages(&self, tenant: &str, id: &str) -> Option<Vec<InMessage>> {
        self.lock()
            .get(tenant)
            .and_then(|t| t.by_id.get(id))
            .map(|s| s.messages.clone())
    }

    fn object(&self, tenant: &str, id: &str) -> Option<Value> {
        self.lock()
            .get(tenant)
            .and_then(|t| t.by_id.get(id))
            .map(|s| s.object.clone())
    }

    fn delete(&self, tenant: &str, id: &str) -> bool {
        let mut all = self.lock();
        let Some(t) = all.get_mut(tenant) else {
            return false;
        };
        match t.by_id.remove(id) {
            Some(s) => {
                t.bytes -= s.bytes;
                t.order.retain(|o| o != id);
                true
            }
            None => false,
        }
    }
}

fn message_bytes(m: &InMessage) -> usize {
    let content = match &m.content {
        Some(Content::Text(t)) => t.len(),
        Some(Content::Parts(p)) => p
            .iter()
            .map(|p| p.text.as_ref().map_or(0, String::len))
            .sum(),
        None => 0,
    };
    content
        + m.reasoning_content.as_ref().map_or(0, String::len)
        + m.tool_calls
            .iter()
            .flatten()
            .map(|c| c.function.arguments.len() + c.function.name.len() + c.id.len())
            .sum::<usize>()
}

fn text_message(role: &str, text: String) -> InMessage {
    InMessage {
        role: role.to_owned(),
        content: Some(Content::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        reasoning_content: None,
        refusal: None,
        annotations: None,
        audio: None,
        function_call: None,
    }
}

fn str_field<'a>(item: &'a Value, key: &str, at: &str) -> Result<&'a str, ApiError> {
    item.get(key).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_param(&format!("{at}.{key}"), format!("`{key}` must be a string"))
    })
}

/// The text of a message item's `content`: a string, or parts of type
/// `input_text`, `output_text` or `text`.
fn item_text(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (k, p) in parts.iter().enumerate() {
                let at = format!("{at}.content[{k}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        text.push_str(str_field(p, "text", &at)?);
                    }
                    Some(other) => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.type"),
                            format!(
                                "this model reads text only; `{other}` parts are not supported"
                            ),
                        ));
                    }
                    None => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.type"),
                            "a content part needs a `type`",
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid_param(
            &format!("{at}.content"),
            "must be a string or a list of content parts",
        )),
    }
}

/// `input` as chat messages. Consecutive `function_call` items join the
/// assistant message before them (or a new one); reasoning items become
/// the next assistant message's reasoning.
fn input_messages(input: &Value) -> Result<Vec<InMessage>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![text_message("user", s.clone())]),
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::invalid_param(
                "input",
                "must be a string or a list of items",
            ));
        }
    };
    let mut out: Vec<InMessage> = Vec::new();
    let mut reasoning: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = str_field(item, "role", &at)?;
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(ApiError::invalid_param(
                        &format!("{at}.role"),
                        format!("must be user, assistant, system or developer, got `{role}`"),
                    ));
                }
                let content = item.get("content").ok_or_else(|| {
                    ApiError::invalid_param(&format!("{at}.content"), "content is required")
                })?;
                let mut m = text_message(role, item_text(content, &at)?);
                if role == "assistant" {
                    m.reasoning_content = reasoning.take();
                }
                out.push(m);
            }
            "function_call" => {
                let call = InToolCall {
                    index: None,
                    id: str_field(item, "call_id", &at)?.to_owned(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: str_field(item, "name", &at)?.to_owned(),
                        arguments: str_field(item, "arguments", &at)?.to_owned(),
                    },
                };
                match out.last_mut() {
                    Some(m) if m.role == "assistant" && reasoning.is_none() => {
                        m.tool_calls.get_or_insert_with(Vec::new).push(call);
                    }
                    _ => {
                        let mut m = InMessage {
                            content: None,
                            ..text_message("assistant", String::new())
                        };
                        m.reasoning_content = reasoning.take();
                        m.tool_calls = Some(vec![call]);
                        out.push(m);
                    }
                }
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => item_text(v, &at)?,
                    _ => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.output"),
                            "`output` must be a string",
                        ));
                    }
                };
                let mut m = text_message("tool", output);
                m.tool_call_id = Some(str_field(item, "call_id", &at)?.to_owned());
                out.push(m);
            }
            "reasoning" => {
                let summary: String = item
                    .get("summary")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n");
                reasoning = Some(summary);
            }
            other => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.type"),
                    format!(
                        "`{other}` items are not supported; use message, function_call, \
                         function_call_output or reasoning"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Flat Responses function tools as chat tools.
fn chat_tools(tools: &[Value]) -> Result<Vec<ToolDef>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tools[{i}]");
            let kind = str_field(t, "type", &at)?;
            if kind != "function" {
                return Err(ApiError::invalid_param(
                    &format!("{at}.type"),
                    format!("only `function` tools are supported, got `{kind}`"),
                ));
            }
            Ok(ToolDef {
                kind: "function".into(),
                function: FunctionDef {
                    name: str_field(t, "name", &at)?.to_owned(),
                    description: t
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    parameters: t.get("parameters").cloned().filter(|p| !p.is_null()),
                    strict: t.get("strict").and_then(Value::as_bool),
                },
            })
        })
        .collect()
}

/// `text.format` as a chat `response_format`.
fn response_format(text: Option<&Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")) else {
        return Ok(None);
    };
    let kind = str_field(format, "type", "text.format")?;
    Ok(match kind {
        "text" => None,
        "json_object" => Some(ResponseFormat {
            kind: kind.into(),
            json_schema: None,
        }),
        "json_schema" => Some(ResponseFormat {
            kind: kind.into(),
            json_schema: Some(JsonSchemaFormat {
                name: str_field(format, "name", "text.format")?.to_owned(),
                description: format
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                schema: format.get("schema").cloned(),
                strict: format.get("strict").and_then(Value::as_bool),
            }),
        }),
        other => {
            return Err(ApiError::invalid_param(
                "text.format.type",
                format!("must be text, json_object or json_schema, got `{other}`"),
            ));
        }
    })
}

/// `tool_choice` of the Responses API as chat's.
fn chat_tool_choice(choice: Option<&Value>) -> Option<Value> {
    match choice? {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name") {
                Some(name) => Some(json!({"type": "function", "function": {"name": name}})),
                None => Some(Value::Object(o.clone())),
            }
        }
        v => Some(v.clone()),
    }
}

/// The output items of a finished reply, and its visible text.
struct Output {
    items: Vec<Value>,
    messages: Vec<InMessage>,
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({
        "type": "reasoning",
        "id": id,
        "summary": [{"type": "summary_text", "text": text}],
    })
}

fn call_item(id: &str, call: &deepwasm_model::ToolCall, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    })
}

/// Item ids within response `rid`: `{prefix}_{suffix of rid}_{n}`.
fn item_id(rid: &str, prefix: &str, n: usize) -> String {
    let suffix = rid.rsplit('_').next().unwrap_or(rid);
    format!("{prefix}_{suffix}_{n}")
}

fn output_of(rid: &str, out: &ChoiceOutput, cut: bool) -> Output {
    let mut items = Vec::new();
    let status = if cut { "incomplete" } else { "completed" };
    if !out.reasoning.is_empty() {
        items.push(reasoning_item(&item_id(rid, "rs", 0), &out.reasoning));
    }
    if !out.content.is_empty() || out.tool_calls.is_empty() {
        items.push(message_item(&item_id(rid, "msg", 0), &out.content, status));
    }
    for (k, c) in out.tool_calls.iter().enumerate() {
        items.push(call_item(&item_id(rid, "fc", k), c, "completed"));
    }
    let mut reply = InMessage {
        content: (!out.content.is_empty()).then(|| Content::Text(out.content.clone())),
        ..text_message("assistant", String::new())
    };
    reply.reasoning_content = (!out.reasoning.is_empty()).then(|| out.reasoning.clone());
    if !out.tool_calls.is_empty() {
        reply.tool_calls = Some(
            out.tool_calls
                .iter()
                .map(|c| InToolCall {
                    index: None,
                    id: c.id.clone(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    },
                })
                .collect(),
        );
    }
    Output {
        items,
        messages: vec![reply],
    }
}

/// What a response object repeats of its request.
struct Echo {
    instructions: Option<String>,
    max_output_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: bool,
    previous_response_id: Option<String>,
    store: bool,
    text: Value,
    reasoning: Value,
    metadata: Value,
    user: Option<String>,
}

impl Echo {
    fn of(req: &ResponsesRequest) -> Self {
        Echo {
            instructions: req.instructions.clone(),
            max_output_tokens: req.max_output_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            tools: Value::from(req.tools.clone().unwrap_or_default()),
            tool_choice: req.tool_choice.clone().unwrap_or(json!("auto")),
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            previous_response_id: req.previous_response_id.clone(),
            store: req.store.unwrap_or(true),
            text: req
                .text
                .clone()
                .unwrap_or(json!({"format": {"type": "text"}})),
            reasoning: req
                .reasoning
                .clone()
                .unwrap_or(json!({"effort": null, "summary": null})),
            metadata: req.metadata.clone().unwrap_or(json!({})),
            user: req.user.clone(),
        }
    }
}

/// A response object.
#[allow(clippy::too_many_arguments)]
fn response_object(
    st: &AppState,
    rid: &str,
    created: u64,
    echo: &Echo,
    status: &str,
    output: Vec<Value>,
    usage: Option<(usize, usize, usize)>,
    incomplete: bool,
) -> Value {
    json!({
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": st.model_id(),
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": echo.previous_response_id,
        "reasoning": echo.reasoning,
        "store": echo.store,
        "temperature": echo.temperature.unwrap_or(1.0),
        "text": echo.text,
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
        "top_p": echo.top_p.unwrap_or(1.0),
        "truncation": "disabled",
        "usage": usage.map(|(input, output, reasoning)| json!({
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input + output,
        })),
        "user": echo.user,
        "metadata": echo.metadata,
    })
}

/// The chat request a Responses request runs as, and the conversation it
/// continues plus its new messages (what a stored response keeps).
async fn chat_request(
    st: &AppState,
    tenant: &Tenant,
    req: &ResponsesRequest,
) -> Result<(ChatRequest, Vec<InMessage>), ApiError> {
    let _read = match req.previous_response_id {
        Some(_) => tenant.admit_state_read()?,
        None => None,
    };
    let mut history = match &req.previous_response_id {
        // Read before the request is admitted: held to the tenant's reads
        // of the shared state at once.
        Some(id) => st
            .responses
            .load_messages(&tenant.name, id)
            .await?
            .ok_or_else(|| {
                ApiError::invalid_param(
                    "previous_response_id",
                    format!("Previous response with id '{id}' not found."),
                )
            })?,
        None => Vec::new(),
    };
    history.extend(input_messages(&req.input)?);
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(i) = &req.instructions {
        messages.push(text_message("system", i.clone()));
    }
    messages.extend(history.iter().cloned());
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "input",
            "at least one item is required",
        ));
    }
    let tools = match &req.tools {
        Some(t) if !t.is_empty() => Some(chat_tools(t)?),
        _ => None,
    };
    let chat = ChatRequest {
        model: req.model.clone(),
        messages,
        max_completion_tokens: req.max_output_tokens,
        logprobs: None,
        top_logprobs: None,
        tools,
        tool_choice: chat_tool_choice(req.tool_choice.as_ref()),
        parallel_tool_calls: req.parallel_tool_calls,
        functions: None,
        function_call: None,
        response_format: response_format(req.text.as_ref())?,
        reasoning_effort: None,
        user: req.user.clone(),
        store: None,
        metadata: None,
        service_tier: None,
        sampling: Sampling {
            stream: req.stream,
            seed: req.seed,
            temperature: req.temperature,
            top_p: req.top_p,
            sampler: req.sampler.clone(),
            rewards: req.rewards.clone(),
            extra: req.extra.clone(),
            ..Sampling::default()
        },
        unknown: Map::new(),
    };
    Ok((chat, history))
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<ResponsesRequest>,
) -> Response {
    let ignored = ignore_unknown("responses", &req.unknown, &st.metrics);
    with_ignored(respond(st, tenant, req).await, &ignored)
}

async fn respond(
    st: Arc<AppState>,
    tenant: Arc<Tenant>,
    req: ResponsesRequest,
) -> Result<Response, ApiError> {
    let adapter = st.check_model(&tenant, &req.model)?;
    if req.max_output_tokens == Some(0) {
        return Err(ApiError::invalid_param(
            "max_output_tokens",
            "must be at least 1",
        ));
    }
    let (mut chat, history) = chat_request(&st, &tenant, &req).await?;
    let input = ChatInput::read(&mut chat)?;
    let admission = tenant.admit().await?;
    let (mut plan, split) = {
        let (st, tenant) = (st.clone(), tenant.clone());
        super::blocking(move || input.plan(&st, &tenant, &chat)).await?
    };
    plan.request.adapter = adapter;
    plan.steering.warm_up().await?;
    let rid = new_id("resp").replace('-', "_");
    let echo = Echo::of(&req);
    let created = now_secs();
    if req.stream {
        return stream(
            st, tenant, admission, plan, split, rid, echo, history, created,
        );
    }
    let run = run_to_end(&st, &tenant, &plan, admission).await?;
    let (i, scored) = run
        .chosen
        .first()
        .ok_or_else(|| ApiError::internal("no reply"))?;
    let c = &run.completions[*i];
    let cut = c.finish_reason == FinishReason::Length;
    let out = ChoiceOutput::whole(split, &rid, 0, &c.text, cut);
    let reasoning_tokens = reasoning_tokens(&st, &out, c);
    let output = output_of(&rid, &out, cut);
    let mut object = response_object(
        &st,
        &rid,
        created,
        &echo,
        if cut { "incomplete" } else { "completed" },
        output.items,
        Some((
            run.usage.prompt_tokens,
            run.usage.completion_tokens,
            reasoning_tokens,
        )),
        cut,
    );
    if let (Some(s), Value::Object(o)) = (scored, &mut object) {
        // The reward plugins' scores, as a chat choice carries them.
        o.insert("reward".into(), Value::Object(s.to_json().0));
    }
    if echo.store {
        let mut kept = history;
        kept.extend(output.messages);
        st.responses
            .save(&tenant.name, &rid, kept, object.clone())
            .await;
    }
    Ok(Json(object).into_response())
}

/// Tokens of `c` spent reasoning: those of its reasoning text, counted by
/// the tokenizer.
fn reasoning_tokens(st: &AppState, out: &ChoiceOutput, c: &Completion) -> usize {
    if out.reasoning.is_empty() {
        return 0;
    }
    st.engine
        .tokenizer
        .encode(&out.reasoning, false)
        .map_or(0, |ids| ids.len().min(c.usage.completion_tokens))
}

/// The streamed events of one response.
struct Events {
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
    sequence: u64,
}

impl Events {
    async fn send(&mut self, kind: &str, mut data: Value) -> bool {
        if let Value::Object(o) = &mut data {
            o.insert("type".into(), Value::from(kind));
            o.insert("sequence_number".into(), Value::from(self.sequence));
        }
        self.sequence += 1;
        let event = SseEvent::default().event(kind).data(data.to_string());
        self.tx.send(Ok(event)).await.is_ok()
    }
}

/// The item being streamed: reasoning or the message's text.
#[derive(Clone, Copy, PartialEq)]
enum Open {
    Reasoning,
    Message,
}

#[allow(clippy::too_many_arguments)]
fn stream(
    st: Arc<AppState>,
    tenant: Arc<Tenant>,
    admission: crate::tenants::Admission,
    plan: super::plan::Plan,
    split: crate::output::Split,
    rid: String,
    echo: Echo,
    history: Vec<InMessage>,
    created: u64,
) -> Result<Response, ApiError> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut rx = plan.submit(&st, &cancelled)?;
    let (tx, out_rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _admission = admission;
        let _guard = CancelOnDrop(cancelled);
        let mut ev = Events { tx, sequence: 0 };
        let shell = |status: &str| {
            response_object(&st, &rid, created, &echo, status, Vec::new(), None, false)
        };
        if !ev
            .send(
                "response.created",
                json!({"response": shell("in_progress")}),
            )
            .await
            || !ev
                .send(
                    "response.in_progress",
                    json!({"response": shell("in_progress")}),
                )
                .await
        {
            return;
        }
        let mut out = ChoiceOutput::new(split, &rid, 0);
        let mut items: Vec<Value> = Vec::new();
        let mut open: Option<(Open, String, String)> = None;
        let completion = loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                () = ev.tx.closed() => return,
            };
            let parts = match event {
                Some(Event::Delta(_, d)) => out.push(&d.text),
                Some(Event::Done(_, Ok(c))) => {
                    let cut = c.finish_reason == FinishReason::Length;
                    let parts = out.finish(cut);
                    if !send_parts(&mut ev, &rid, &mut items, &mut open, parts).await {
                        return;
                    }
                    break c;
                }
                Some(Event::Done(_, Err(e))) => {
                    let e = ApiError::from(e);
                    let body = e.body();
                    let err = &body["error"];
                    let _ = ev
                        .send("error", json!({"code": err["code"], "message": err["message"], "param": err["param"]}))
                        .await;
                    return;
                }
                None => return,
            };
            if !send_parts(&mut ev, &rid, &mut items, &mut open, parts).await {
                return;
            }
        };
        let cut = completion.finish_reason == FinishReason::Length;
        if !close(&mut ev, &mut items, &mut open, cut).await {
            return;
        }
        if items.is_empty() {
            // A reply with no text still has its (empty) message.
            let id = item_id(&rid, "msg", 0);
            let status = if cut { "incomplete" } else { "completed" };
            let item = message_item(&id, "", status);
            let _ = ev
                .send(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": message_item(&id, "", "in_progress")}),
                )
                .await;
            let _ = ev
                .send(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": item}),
                )
                .await;
            items.push(item);
        }
        let prompt_tokens = plan.prompts[0].ids.len();
        let completion_tokens = completion.usage.completion_tokens;
        tenant.record_tokens(prompt_tokens as u64, completion_tokens as u64);
        let reasoning = reasoning_tokens(&st, &out, &completion);
        let object = response_object(
            &st,
            &rid,
            created,
            &echo,
            if cut { "incomplete" } else { "completed" },
            items,
            Some((prompt_tokens, completion_tokens, reasoning)),
            cut,
        );
        if echo.store {
            let mut kept = history;
            kept.extend(output_of(&rid, &out, cut).messages);
            st.responses
                .save(&tenant.name, &rid, kept, object.clone())
                .await;
        }
        let kind = if cut {
            "response.incomplete"
        } else {
            "response.completed"
        };
        let _ = ev.send(kind, json!({"response": object})).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_millis(500)))
        .into_response())
}

/// Close the open item, if any, adding it to `items`.
async fn close(
    ev: &mut Events,
    items: &mut Vec<Value>,
    open: &mut Option<(Open, String, String)>,
    cut: bool,
) -> bool {
    let Some((kind, id, text)) = open.take() else {
        return true;
    };
    let index = items.len();
    let item = match kind {
        Open::Reasoning => {
            let part = json!({"type": "summary_text", "text": text});
            if !ev
                .send("response.reasoning_summary_text.done", json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}))
                .await
                || !ev
                    .send("response.reasoning_summary_part.done", json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part}))
                    .await
            {
                return false;
            }
            reasoning_item(&id, &text)
        }
        Open::Message => {
            let part =
                json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
            if !ev
                .send("response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}))
                .await
                || !ev
                    .send("response.content_part.done", json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}))
                    .await
            {
                return false;
            }
            message_item(&id, &text, if cut { "incomplete" } else { "completed" })
        }
    };
    let ok = ev
        .send(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        )
        .await;
    items.push(item);
    ok
}

/// Stream `parts`: text into the open item (opening one of the right kind
/// first), tool calls as whole items.
async fn send_parts(
    ev: &mut Events,
    rid: &str,
    items: &mut Vec<Value>,
    open: &mut Option<(Open, String, String)>,
    parts: Vec<Part>,
) -> bool {
    for part in parts {
        let (kind, delta) = match part {
            Part::Reasoning(t) => (Open::Reasoning, t),
            Part::Content(t) if t.is_empty() => continue,
            Part::Content(t) => (Open::Message, t),
            Part::ToolCall(call) => {
                if !close(ev, items, open, false).await {
                    return false;
                }
                let index = items.len();
                let calls = items
                    .iter()
                    .filter(|i| i["type"] == "function_call")
                    .count();
                let id = item_id(rid, "fc", calls);
                let pending = json!({"type": "function_call", "id": id, "call_id": call.id, "name": call.name, "arguments": "", "status": "in_progress"});
                let item = call_item(&id, &call, "completed");
                let ok = ev.send("response.output_item.added", json!({"output_index": index, "item": pending})).await
                    && ev.send("response.function_call_arguments.delta", json!({"item_id": id, "output_index": index, "delta": call.arguments})).await
                    && ev.send("response.function_call_arguments.done", json!({"item_id": id, "output_index": index, "arguments": call.arguments})).await
                    && ev.send("response.output_item.done", json!({"output_index": index, "item": item})).await;
                items.push(item);
                if !ok {
                    return false;
                }
                continue;
            }
        };
        if open.as_ref().is_some_and(|(k, _, _)| *k != kind) && !close(ev, items, open, false).await
        {
            return false;
        }
        if open.is_none() {
            let index = items.len();
            let ok = match kind {
                Open::Reasoning => {
                    let id = item_id(rid, "rs", index);
                    let added = ev
                        .send("response.output_item.added", json!({"output_index": index, "item": {"type": "reasoning", "id": id, "summary": []}}))
                        .await
                        && ev
                            .send("response.reasoning_summary_part.added", json!({"item_id": id, "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}))
                            .await;
                    *open = Some((kind, id, String::new()));
                    added
                }
                Open::Message => {
                    let id = item_id(rid, "msg", index);
                    let added = ev
                        .send("response.output_item.added", json!({"output_index": index, "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}))
                        .await
                        && ev
                            .send("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}))
                            .await;
                    *open = Some((kind, id, String::new()));
                    added
                }
            };
            if !ok {
                return false;
            }
        }
        let Some((_, id, text)) = open.as_mut() else {
            continue;
        };
        text.push_str(&delta);
        let index = items.len();
        let sent = match kind {
            Open::Reasoning => {
                ev.send("response.reasoning_summary_text.delta", json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": delta}))
                    .await
            }
            Open::Message => {
                ev.send("response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}))
                    .await
            }
        };
        if !sent {
            return false;
        }
    }
    true
}

/// `GET /v1/responses/{id}`: one of the tenant's stored responses.
pub async fn get(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let _read = tenant.admit_state_read()?;
    match st.responses.load_object(&tenant.name, &id).await? {
        Some(o) => Ok(Json(o).into_response()),
        None => Err(ApiError::not_found(format!(
            "Response with id '{id}' not found."
        ))),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let _read = tenant.admit_state_read()?;
    match st.responses.remove(&tenant.name, &id).await? {
        true => Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response()),
        false => Err(ApiError::not_found(format!(
            "Response with id '{id}' not found."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(bytes: usize) -> Vec<InMessage> {
        vec![text_message("user", "x".repeat(bytes))]
    }

    /// An R1-style reply's thinking becomes a reasoning item before the
    /// message, and the stored conversation keeps it as reasoning.
    #[test]
    fn reasoning_comes_out_as_its_own_item() {
        let split = crate::output::Split::default();
        let out = ChoiceOutput::whole(
            split,
            "resp_1",
            0,
            "<think>\nAdd them.\n</think>\n\nFour.",
            false,
        );
        let output = output_of("resp_1", &out, false);
        let kinds: Vec<&str> = output
            .items
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["reasoning", "message"]);
        assert_eq!(
            output.items[0]["summary"][0]["text"]
                .as_str()
                .unwrap()
                .trim(),
            "Add them."
        );
        assert_eq!(
            output.items[1]["content"][0]["text"]
                .as_str()
                .unwrap()
                .trim(),
            "Four."
        );
        let reply = &output.messages[0];
        assert_eq!(
            reply.reasoning_content.as_deref().map(str::trim),
            Some("Add them.")
        );
        // Sent back as input items, the reasoning goes with the assistant
        // message after it.
        let items = serde_json::Value::Array(
            std::iter::once(json!({"role": "user", "content": "2+2?"}))
                .chain(output.items.clone())
                .collect(),
        );
        let messages = input_messages(&items).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(
            messages[1].reasoning_content.as_deref().map(str::trim),
            Some("Add them.")
        );
    }

    #[test]
    fn the_store_keeps_each_tenant_within_its_bounds() {
        let store = MemoryResponses::default();
        for i in 0..MAX_STORED + 5 {
            store.put("a", &format!("r{i}"), conversation(10), json!({}));
        }
        assert!(store.object("a", "r0").is_none(), "the oldest went first");
        assert!(store.object("a", &format!("r{}", MAX_STORED + 4)).is_some());
        assert_eq!(store.lock()["a"].by_id.len(), MAX_STORED);
        // Bytes: a few large conversations push out the older ones.
        let big = MAX_STORED_BYTES / 3;
        for i in 0..4 {
            store.put("b", &format!("big{i}"), conversation(big), json!({}));
        }
        let (bytes, kept) = {
            let all = store.lock();
            (all["b"].bytes, all["b"].by_id.len())
        };
        assert!(bytes <= MAX_STORED_BYTES && kept == 2, "{bytes} {kept}");
        // Tenants are apart: one's ids mean nothing to another.
        assert!(
            store
                .messages("b", &format!("r{}", MAX_STORED + 4))
                .is_none()
        );
        assert!(!store.delete("b", &format!("r{}", MAX_STORED + 4)));
        assert!(store.delete("a", &format!("r{}", MAX_STORED + 4)));
        // One larger than the whole budget is not kept at all.
        store.put("c", "huge", conversation(MAX_STORED_BYTES + 1), json!({}));
        assert!(store.object("c", "huge").is_none());
    }
}
