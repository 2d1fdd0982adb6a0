//! `POST /v1/embeddings`: the served model's final hidden states, pooled.
//!
//! Each input is a prompt-only sequence on the shared batch (see
//! `GenerateRequest::embedding`): it goes in by chunks beside the sequences
//! that decode, under the same admission, cache budget and cancellation,
//! and computes no logits. The vector is the mean of the prompt tokens'
//! final hidden states (after the model's last norm), or the last token's
//! (`pooling: "last"`), scaled to unit length unless `normalize: false`.
//!
//! A chat model's hidden states are not a retrieval model's embeddings:
//! nothing trained them to put similar texts close together. They serve
//! probing, clustering of the model's own view, and clients that need the
//! endpoint to exist; for retrieval quality, serve an embedding model.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use deepwasm_engine::{BuiltinSampler, Event, GenerateRequest, Pooling, Prompt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::api::{ApiJson, ignore_unknown};
use crate::error::ApiError;
use crate::tenants::Tenant;

/// Most inputs one request may embed, as OpenAI allows.
pub const MAX_INPUTS: usize = 2048;

/// Most inputs of one request in the batch at once.
const WINDOW: usize = 16;

/// `input`: one text, several, one token list or several.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    /// `float` (default) or `base64` (little-endian f32 bytes).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Only the model's hidden size is supported.
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
    /// `mean` (default) or `last`: how the tokens' hidden states are pooled.
    #[serde(default)]
    pub pooling: Option<String>,
    /// Scale each vector to unit length (default true).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Fields this server does not implement: see `api::ignore_unknown`.
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: serde_json::Map<String, Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<EmbeddingObject>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingObject {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    /// A list of floats, or a base64 string of little-endian f32s.
    #[schema(value_type = Value)]
    pub embedding: Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The request's inputs as token lists, checked.
fn input_tokens(st: &AppState, input: &EmbeddingInput) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |i: usize, t: &str| {
        if t.is_empty() {
            return Err(ApiError::invalid_param(
                &format!("input[{i}]"),
                "an input cannot be an empty string",
            ));
        }
        st.engine
            .tokenizer
            .encode(t, true)
            .map_err(|e| ApiError::invalid_param(&format!("input[{i}]"), e.to_string()))
    };
    let lists = match input {
        EmbeddingInput::Text(t) => vec![encode(0, t)?],
        EmbeddingInput::Texts(ts) => ts
            .iter()
            .enumerate()
            .map(|(i, t)| encode(i, t))
            .collect::<Result<_, _>>()?,
        EmbeddingInput::Tokens(ids) => vec![ids.clone()],
        EmbeddingInput::TokenLists(l) => l.clone(),
    };
    if lists.is_empty() {
        return Err(ApiError::invalid_param(
            "input",
            "at least one input is required",
        ));
    }
    if lists.len() > MAX_INPUTS {
        return Err(ApiError::invalid_param(
            "input",
            format!(
                "at most {MAX_INPUTS} inputs per request, got {}",
                lists.len()
            ),
        ));
    }
    let info = st.engine.model.info();
    for (i, ids) in lists.iter().enumerate() {
        if ids.is_empty() {
            return Err(ApiError::invalid_param(
                &format!("input[{i}]"),
                "an input needs at least one token",
            ));
        }
        if ids.len() > info.max_context {
            let mut e = ApiError::context_length_exceeded(format!(
                "This model's maximum context length is {} tokens, and input {i} is {} tokens; \
                 shorten it",
                info.max_context,
                ids.len()
            ));
            e.param = Some("input".into());
            return Err(e);
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(ApiError::invalid_param(
                &format!("input[{i}]"),
                format!(
                    "token {bad} is outside the vocabulary of {}",
                    info.vocab_size
                ),
            ));
        }
    }
    Ok(lists)
}

pub async fn embeddings(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Response {
    let ignored = ignore_unknown("embeddings", &req.unknown, &st.metrics);
    crate::chat::with_ignored(embed(st, tenant, req).await, &ignored)
}

async fn embed(
    st: Arc<AppState>,
    tenant: Arc<Tenant>,
    mut req: EmbeddingRequest,
) -> Result<Response, ApiError> {
    let adapter = st.check_model(&tenant, &req.model)?;
    let hidden = st.engine.model.info().hidden_size;
    if let Some(d) = req.dimensions
        && d != hidden
    {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!(
                "this model's embeddings have {hidden} dimensions; it cannot shorten them to {d}"
            ),
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("must be `float` or `base64`, got `{other}`"),
            ));
        }
    };
    let pooling = match req.pooling.as_deref() {
        None | Some("mean") => Pooling::Mean,
        Some("last") => Pooling::Last,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "pooling",
                format!("must be `mean` or `last`, got `{other}`"),
            ));
        }
    };
    let inputs = {
        // Moved out, not copied: it may be a body's worth of text.
        let input = std::mem::replace(&mut req.input, EmbeddingInput::Texts(Vec::new()));
        let st = st.clone();
        crate::tokenize::off_the_executor(&tenant, move || input_tokens(&st, &input)).await?
    };
    let admission = tenant.admit().await?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = crate::chat::CancelOnDrop(cancelled.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // A window of inputs in the batch at a time: a large request neither
    // fills the scheduler's queue (others would be refused) nor holds more
    // than its share of the batch.
    let submit = |i: usize| {
        let r = GenerateRequest {
            embedding: Some(pooling),
            max_tokens: 0,
            adapter: adapter.clone(),
            ..GenerateRequest::new(Prompt::Tokens(inputs[i].clone()))
        };
        st.scheduler
            .submit(
                i,
                r,
                Box::new(BuiltinSampler),
                tx.clone(),
                cancelled.clone(),
            )
            .map_err(ApiError::from)
    };
    let mut next = 0;
    while next < inputs.len().min(WINDOW) {
        submit(next)?;
        next += 1;
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
    let mut left = inputs.len();
    while left > 0 {
        match rx.recv().await {
            Some(Event::Delta(..)) => {}
            Some(Event::Done(i, r)) => {
                let c = r.map_err(ApiError::from)?;
                vectors[i] = Some(c.embedding.ok_or_else(|| {
                    ApiError::internal("the model returned no embedding for an input")
                })?);
                left -= 1;
                if next < inputs.len() {
                    submit(next)?;
                    next += 1;
                }
            }
            None => return Err(ApiError::internal("embedding stopped before it was done")),
        }
    }
    drop(admission);
    let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
    tenant.record_tokens(prompt_tokens as u64, 0);
    let normalize = req.normalize.unwrap_or(true);
    let data = vectors
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, mut v)| {
            if normalize {
                let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                if norm > 0.0 {
                    v.iter_mut()
                        .for_each(|x| *x = (f64::from(*x) / norm) as f32);
                }
            }
            let embedding = match base64 {
                true => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                false => Value::from(v),
            };
            EmbeddingObject {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: st.model_id().to_owned(),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
    .into_response())
}
