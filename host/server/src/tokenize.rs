//! The served model's tokenizer over HTTP, as vLLM's server offers it:
//! `GET /tokenizer_info`, `POST /tokenize` and `POST /detokenize`.
//!
//! Clients that count or align tokens themselves use these instead of
//! loading the tokenizer locally; lm-evaluation-harness's
//! `local-completions` uses them (its `remote` tokenizer backend) to find
//! where a prompt's context ends for loglikelihood tasks. They need an API
//! key like the rest of the API, and a request's text and tokens are
//! bounded by the body limit.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::api::{ApiJson, InMessage, ignore_unknown};
use crate::error::ApiError;
use crate::tenants::Tenant;

/// `POST /tokenize`: a text, or a conversation rendered with the chat
/// template.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<InMessage>>,
    /// Add the model's BOS (for `prompt`; default true, as vLLM's).
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: serde_json::Map<String, Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Tokenized {
    pub tokens: Vec<u32>,
    pub count: usize,
    /// The longest request this server holds, tokens.
    pub max_model_len: usize,
}

/// `POST /detokenize`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct DetokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: serde_json::Map<String, Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Detokenized {
    pub prompt: String,
}

/// `GET /tokenizer_info`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenizerInfo {
    pub eos_token: Option<String>,
    pub bos_token: Option<String>,
    pub pad_token: Option<String>,
    /// The chat template's Jinja source, when the model has one.
    pub chat_template: Option<String>,
    pub model_max_length: usize,
    pub vocab_size: usize,
}

fn max_model_len(st: &AppState) -> usize {
    st.engine
        .model
        .info()
        .max_context
        .min(st.kv_budget_tokens())
}

pub async fn tokenizer_info(State(st): State<Arc<AppState>>) -> Response {
    let t = &st.engine.tokenizer;
    Json(TokenizerInfo {
        eos_token: t.eos_text().map(str::to_owned),
        bos_token: t.bos_text().map(str::to_owned),
        pad_token: None,
        chat_template: st
            .engine
            .chat_template
            .as_ref()
            .map(|c| c.source().to_owned()),
        model_max_length: max_model_len(&st),
        vocab_size: t.vocab_size(),
    })
    .into_response()
}

pub async fn tokenize(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Response {
    let ignored = ignore_unknown("tokenize", &req.unknown, &st.metrics);
    let who = tenant.clone();
    let answer = off_the_executor(&tenant, move || tokenize_request(&st, &who, &req)).await;
    crate::chat::with_ignored(answer, &ignored)
}

/// Run `work` (tokenizing up to a body's worth of text) on a blocking
/// thread, not on the executor that serves every tenant, holding one of
/// the tenant's concurrent-request places so a flood of calls takes no more
/// threads than its limit.
pub(crate) async fn off_the_executor<T: Send + 'static>(
    tenant: &Tenant,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let admission = tenant.admit().await?;
    crate::chat::blocking(move || {
        let _admission = admission;
        work()
    })
    .await
}

fn tokenize_request(
    st: &AppState,
    tenant: &Tenant,
    req: &TokenizeRequest,
) -> Result<Response, ApiError> {
    if let Some(m) = &req.model {
        st.check_model(tenant, m)?;
    }
    let tokens = match (&req.prompt, &req.messages) {
        (Some(text), None) => st
            .engine
            .tokenizer
            .encode(text, req.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?,
        (None, Some(messages)) => {
            let messages = crate::chat::chat_messages(messages)?;
            let prompt = deepwasm_engine::Prompt::Chat {
                messages,
                tools: Vec::new(),
            };
            st.engine.render_prompt(&prompt)?.1
        }
        _ => {
            return Err(ApiError::invalid_param(
                "prompt",
                "give one of `prompt` (a text) or `messages` (a conversation)",
            ));
        }
    };
    Ok(Json(Tokenized {
        count: tokens.len(),
        tokens,
        max_model_len: max_model_len(st),
    })
    .into_response())
}

pub async fn detokenize(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Response {
    let ignored = ignore_unknown("detokenize", &req.unknown, &st.metrics);
    let who = tenant.clone();
    let answer = off_the_executor(&tenant, move || {
        if let Some(m) = &req.model {
            st.check_model(&who, m)?;
        }
        let prompt = st
            .engine
            .tokenizer
            .decode(&req.tokens, false)
            .map_err(|e| ApiError::invalid_param("tokens", e.to_string()))?;
        Ok(Json(Detokenized { prompt }).into_response())
    })
    .await;
    crate::chat::with_ignored(answer, &ignored)
}
