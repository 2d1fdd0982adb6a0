//! Request bodies of the API, their parsing and their validation.
//!
//! The fields this server implements are checked strictly (a wrong type or
//! value is a 400 that names the field). Unknown top-level fields of the
//! OpenAI endpoints are accepted and ignored, as OpenAI-compatible servers
//! do: clients send fields of newer API versions (`prompt_cache_key`,
//! `safety_identifier`, `verbosity`, ...) that change nothing here. Each
//! ignored field is logged and counted (see [`ignore_unknown`]) and named
//! in the answer's `deepwasm-ignored-fields` header, so a misspelt
//! `max_token` is still visible. Inside messages and tools, unknown fields
//! stay errors, but everything the server itself returns in a message is
//! accepted back.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// A JSON body parsed into `T`; errors say where in the body it went wrong.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.starts_with("application/json") || v.contains("+json"));
        if !json_type {
            return Err(ApiError::invalid(
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A body that could not be read: too large (413) or cut short (400).
pub fn body_error(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("the request body is too large: {}", e.body_text()))
    } else {
        ApiError::invalid(format!("cannot read the request body: {}", e.body_text()))
    }
}

/// Parse JSON, naming the path of a wrong field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = e.path().to_string();
        let mut inner = e.into_inner();
        if path == "." || path.is_empty() {
            // A field of a flattened struct (the sampling parameters) loses
            // its path; parsing that struct alone finds it.
            let de = &mut serde_json::Deserializer::from_slice(bytes);
            if let Err(e) = serde_path_to_error::deserialize::<_, Sampling>(de) {
                let p = e.path().to_string();
                if p != "." && !p.is_empty() {
                    path = p;
                    inner = e.into_inner();
                }
            }
        }
        if path == "." || path.is_empty() {
            ApiError::invalid(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::invalid_param(&path, format!("invalid JSON body at `{path}`: {inner}"))
        }
    })
}

/// `stop`: one string or a list of them.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Message content: a string, or a list of parts of which only text ones
/// are understood.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::shapes::PartType)]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON object, as text.
    pub arguments: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InToolCall {
    /// The position the server numbered it with; accepted and ignored.
    #[serde(default)]
    pub index: Option<usize>,
    pub id: String,
    #[serde(rename = "type", default = "function")]
    #[schema(value_type = crate::openapi::shapes::ToolType)]
    pub kind: String,
    pub function: FunctionCall,
}

fn function() -> String {
    "function".into()
}

/// A message of the conversation.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InMessage {
    #[schema(value_type = crate::openapi::shapes::Role)]
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<InToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// Accepted and ignored (OpenAI's assistant refusals).
    #[serde(default)]
    pub refusal: Option<String>,
    /// Accepted and ignored (OpenAI's URL citations).
    #[serde(default)]
    pub annotations: Option<Value>,
    /// Accepted and ignored (a reference to an earlier audio reply).
    #[serde(default)]
    pub audio: Option<Value>,
    /// The legacy form of one tool call, in an assistant message.
    #[serde(default)]
    pub function_call: Option<FunctionCall>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::shapes::ToolType)]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::shapes::ResponseFormatType)]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    #[serde(default)]
    pub continuous_usage_stats: bool,
}

/// `sampler`: a plugin of the tenant's steering every step.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplerRef {
    /// The plugin's id or name.
    pub plugin: String,
    /// Its config: a JSON value (sent to the plugin as JSON text).
    #[serde(default)]
    pub config: Option<Value>,
    /// Milliseconds it has to answer a step (default 25, at most the
    /// tenant's `max_step_budget_ms`); its sequence alone waits for it.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub step_budget_ms: Option<u64>,
    /// When it misses the budget: `wait` (default: the sequence sits steps
    /// out until it answers, at most 8 budgets), `fail` the request, or
    /// `fallback` to the built-in sampler for that step.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::shapes::OnMiss>)]
    pub on_miss: Option<String>,
}

/// One entry of `rewards`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardRef {
    pub plugin: String,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub config: Option<Value>,
}

/// The generation parameters chat and completions share.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct Sampling {
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub n: Option<usize>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: OneOrMany,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeMap<String, f64>>)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    // Extensions.
    #[serde(default)]
    pub sampler: Option<SamplerRef>,
    #[serde(default)]
    pub rewards: Option<Vec<RewardRef>>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub best_of: Option<usize>,
    /// Fields the rewards get as `extra` (a ground-truth `answer`).
    #[serde(default)]
    pub extra: Option<serde_json::Map<String, Value>>,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<InMessage>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    #[schema(maximum = 20)]
    pub top_logprobs: Option<usize>,
    #[serde(default)]
    pub tools: Option<Vec<ToolDef>>,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::shapes::ToolChoice>)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Legacy tools: mapped onto `tools`, and the reply's call is shown
    /// as `message.function_call`.
    #[serde(default)]
    pub functions: Option<Vec<FunctionDef>>,
    /// Legacy `tool_choice`: `none`, `auto` or `{"name": ...}`.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::shapes::FunctionChoice>)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Whether a template may keep earlier reasoning (accepted, unused).
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(flatten)]
    #[schema(inline)]
    pub sampling: Sampling,
    /// Fields this server does not implement: see [`ignore_unknown`].
    #[serde(flatten)]
    pub unknown: serde_json::Map<String, Value>,
}

/// `prompt` of `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptInput,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    #[schema(maximum = 20)]
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// The output's structure, as on chat completions (vLLM takes it on
    /// completions too).
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// vLLM's option: each entry of `logprobs.tokens` is `token_id:<id>`
    /// instead of the token's text, so a client (another server generating
    /// through this one) gets the exact ids.
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
    #[serde(flatten)]
    #[schema(inline)]
    pub sampling: Sampling,
    /// Fields this server does not implement: see [`ignore_unknown`].
    #[serde(flatten)]
    pub unknown: serde_json::Map<String, Value>,
}

/// `POST /v1/rewards/score`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    #[schema(min_items = 1)]
    pub rewards: Vec<RewardRef>,
    #[schema(max_items = 4096)]
    pub samples: Vec<ScoreSample>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreSample {
    #[serde(default)]
    pub prompt: String,
    pub completion: String,
    #[serde(default)]
    pub completion_tokens: Option<Vec<u32>>,
    #[serde(default)]
    pub extra: Option<serde_json::Map<String, Value>>,
}

/// One prompt of a rollout.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutPrompt {
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<InMessage>>,
    /// What the rewards get as `extra`; echoed back.
    #[serde(default)]
    pub extra: Option<serde_json::Map<String, Value>>,
}

/// `POST /v1/rollouts`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[schema(min_items = 1)]
    pub prompts: Vec<RolloutPrompt>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub group_size: Option<usize>,
    #[serde(default)]
    pub rewards: Vec<RewardRef>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub temperature: Option<f32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// A completion passes when its total reaches this (the summary's
    /// `pass_rate`); default 1.
    #[serde(default)]
    pub pass_threshold: Option<f64>,
    /// `ndjson` or `sse` (default: from `Accept`, else NDJSON).
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::shapes::RolloutFormat>)]
    pub format: Option<String>,
}

/// `POST /v1/train/grpo`: train a LoRA adapter of the model with GRPO
/// against the tenant's reward plugins. Defaults are those of
/// `deepwasm train grpo`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// The adapter's name (letters, digits, `-`, `_`, `.`; at most 64):
    /// the tenant then generates with it as `model: "BASE:NAME"`.
    pub name: String,
    /// Taken `prompts_per_step` at a time, in order, round and round.
    #[schema(min_items = 1, max_items = 1024)]
    pub prompts: Vec<RolloutPrompt>,
    /// The tenant's reward plugins, weighted.
    #[schema(min_items = 1)]
    pub rewards: Vec<RewardRef>,
    #[schema(minimum = 1, maximum = 1000)]
    pub steps: u64,
    /// Completions per prompt (default 8).
    #[serde(default)]
    #[schema(minimum = 2, maximum = 64)]
    pub group_size: Option<usize>,
    /// Prompts per step (default 2); at most 256 completions a step.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub prompts_per_step: Option<usize>,
    /// Default 8.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub lora_rank: Option<usize>,
    /// Default twice the rank.
    #[serde(default)]
    pub lora_alpha: Option<f64>,
    /// Projections to adapt (default all seven: `q_proj`, `k_proj`,
    /// `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`).
    #[serde(default)]
    pub target_modules: Option<Vec<String>>,
    /// AdamW's learning rate (default 5e-5).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// β of the KL term to the base (default 0.04).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub kl_beta: Option<f64>,
    /// ε of the ratio's clip (default 0.2).
    #[serde(default)]
    pub clip_eps: Option<f64>,
    /// The gradient's norm is clipped to this (default 1).
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    /// New tokens per completion (default 128).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub temperature: Option<f32>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Top-level fields of OpenAI's request bodies this server accepts and
/// ignores, by name in the metric; any other unknown field counts as
/// `other`, so clients cannot grow the metric's label set.
const KNOWN_IGNORED: &[&str] = &[
    "audio",
    "modalities",
    "prediction",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "verbosity",
    "web_search_options",
    "background",
    "include",
    "max_tool_calls",
    "truncation",
    "conversation",
    "context_management",
];

/// Accept and ignore the unknown top-level fields of a request to
/// `endpoint`: each is logged at debug level and counted in
/// `deepwasm_request_ignored_fields_total`. Returns their names, sorted,
/// for the answer's `deepwasm-ignored-fields` header.
pub fn ignore_unknown(
    endpoint: &str,
    unknown: &serde_json::Map<String, Value>,
    metrics: &crate::metrics::Metrics,
) -> Vec<String> {
    let mut names: Vec<String> = unknown.keys().cloned().collect();
    names.sort();
    for name in &names {
        tracing::debug!(endpoint, field = %name, "ignoring a request field this server does not implement");
        let label = KNOWN_IGNORED
            .iter()
            .find(|k| **k == name)
            .copied()
            .unwrap_or("other");
        metrics.ignored_field(endpoint, label);
    }
    names
}

/// The `deepwasm-ignored-fields` header naming `names`, if any; names
/// that cannot go in a header are left out of it (they are still logged).
pub fn ignored_header(
    names: &[String],
) -> Option<(axum::http::HeaderName, axum::http::HeaderValue)> {
    let shown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.len() <= 64 && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
        .take(32)
        .collect();
    if shown.is_empty() {
        return None;
    }
    let value = axum::http::HeaderValue::from_str(&shown.join(", ")).ok()?;
    Some((
        axum::http::HeaderName::from_static("deepwasm-ignored-fields"),
        value,
    ))
}
