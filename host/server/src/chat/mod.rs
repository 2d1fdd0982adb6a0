//! `POST /v1/chat/completions` and `POST /v1/completions`.
//!
//! A request becomes one generation per choice (or per candidate with
//! `best_of`), each with its own seed and sampler, all queued on the shared
//! batch. Streams answer Server-Sent Events as tokens arrive; the others
//! answer once every choice is done. A client that goes away cancels its
//! sequences at the next step.
//!
//! - [`plan`]: the request read and checked, as what the engine runs;
//! - [`steer`]: which sampler its sequences get;
//! - [`rewards`]: reward plugins and the choice among `best_of` candidates;
//! - [`stream`]: the one streaming loop, with each endpoint's chunks;
//! - [`response`]: the wire format, as serde types.

mod plan;
pub(crate) mod response;
pub(crate) mod responses;
mod rewards;
mod steer;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use deepwasm_engine::rewards::Scored;
use deepwasm_engine::{Completion, Event};
use tokio::sync::mpsc;

pub(crate) use plan::{MAX_CHOICES, chat_messages};
pub(crate) use rewards::{score_async, weighted_rewards};

use self::plan::{ChatInput, Plan, completion_plan, completion_prompts, include_usage};
use self::response::{
    CompletionObject, TextChoice, Usage, chat_choice, finish_reason, new_id, now_secs,
    prompt_logprobs, text_logprobs,
};
use self::stream::{ChatChunks, TextChunks};
use crate::AppState;
use crate::api::{ApiJson, ChatRequest, CompletionRequest, ignore_unknown, ignored_header};
use crate::error::ApiError;
use crate::tenants::{Admission, Tenant};

/// Sets the flag when dropped: the request's sequences leave the batch if
/// its handler or stream goes away before they finish.
pub(crate) struct CancelOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `answer` with the `deepwasm-ignored-fields` header naming `ignored`.
pub(crate) fn with_ignored(answer: Result<Response, ApiError>, ignored: &[String]) -> Response {
    let mut response = answer.into_response();
    if let Some((name, value)) = ignored_header(ignored) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Run `work` on a blocking thread, off the executor every tenant's
/// requests share: rendering and tokenizing a prompt takes up to a body's
/// worth of text. Callers hold the tenant's admission, so a tenant's
/// concurrent work here is bounded by its request limit.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
}

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Response {
    let ignored = ignore_unknown("chat/completions", &req.unknown, &st.metrics);
    with_ignored(chat(st, tenant, req).await, &ignored)
}

async fn chat(
    st: Arc<AppState>,
    tenant: Arc<Tenant>,
    mut req: ChatRequest,
) -> Result<Response, ApiError> {
    let adapter = st.check_model(&tenant, &req.model)?;
    let input = ChatInput::read(&mut req)?;
    let admission = tenant.admit().await?;
    let (mut plan, split, req) = {
        let (st, tenant) = (st.clone(), tenant.clone());
        blocking(move || {
            let (plan, split) = input.plan(&st, &tenant, &req)?;
            Ok((plan, split, req))
        })
        .await?
    };
    plan.request.adapter = adapter;
    plan.steering.warm_up().await?;
    let id = new_id("chatcmpl");
    if req.sampling.stream {
        let chunks = ChatChunks::new(split, &id, plan.logprobs.is_some());
        let include_usage = include_usage(&req.sampling);
        return stream::respond(st, tenant, admission, plan, id, chunks, include_usage);
    }
    let run = run_to_end(&st, &tenant, &plan, admission).await?;
    let choices = run
        .chosen
        .iter()
        .enumerate()
        .map(|(index, (i, scored))| {
            let c = &run.completions[*i];
            chat_choice(
                &st,
                split,
                &id,
                index,
                c,
                plan.logprobs.is_some(),
                scored.as_ref(),
            )
        })
        .collect();
    Ok(Json(CompletionObject {
        id: &id,
        object: "chat.completion",
        created: now_secs(),
        model: st.model_id(),
        system_fingerprint: None,
        choices,
        usage: run.usage,
    })
    .into_response())
}

pub async fn completions(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Response {
    let ignored = ignore_unknown("completions", &req.unknown, &st.metrics);
    with_ignored(complete(st, tenant, req).await, &ignored)
}

async fn complete(
    st: Arc<AppState>,
    tenant: Arc<Tenant>,
    req: CompletionRequest,
) -> Result<Response, ApiError> {
    let adapter = st.check_model(&tenant, &req.model)?;
    let prompts = completion_prompts(&req)?;
    let admission = tenant.admit().await?;
    let (mut plan, req) = {
        let (st, tenant) = (st.clone(), tenant.clone());
        blocking(move || Ok((completion_plan(&st, &tenant, &req, &prompts)?, req))).await?
    };
    plan.request.adapter = adapter;
    plan.steering.warm_up().await?;
    let id = new_id("cmpl");
    if req.sampling.stream {
        let chunks = TextChunks::new(plan.logprobs.is_some(), req.return_tokens_as_token_ids);
        let include_usage = include_usage(&req.sampling);
        return stream::respond(st, tenant, admission, plan, id, chunks, include_usage);
    }
    let run = run_to_end(&st, &tenant, &plan, admission).await?;
    let choices = run
        .chosen
        .iter()
        .enumerate()
        .map(|(index, (i, scored))| {
            let c = &run.completions[*i];
            let prompt_text = plan.prompt_of(*i).text.as_deref().unwrap_or_default();
            let (text, offset) = if req.echo {
                (format!("{prompt_text}{}", c.text), prompt_text.len())
            } else {
                (c.text.clone(), 0)
            };
            let lps = c.logprobs.as_deref().unwrap_or(&[]);
            let logprobs = plan.logprobs.map(|_| {
                let generated = text_logprobs(&st, &c.tokens, lps, offset);
                let (all, ids) = match &c.prompt_logprobs {
                    Some(scored) => {
                        let mut all = prompt_logprobs(&st, &c.prompt_tokens, scored, offset);
                        all.extend(generated);
                        (all, [&c.prompt_tokens[..], &c.tokens[..]].concat())
                    }
                    None => (generated, c.tokens.clone()),
                };
                match req.return_tokens_as_token_ids {
                    true => all.with_token_ids(ids),
                    false => all,
                }
            });
            TextChoice {
                index,
                text,
                logprobs,
                finish_reason: Some(finish_reason(c, false, false)),
                reward: scored.as_ref().map(|s| s.to_json().0),
            }
        })
        .collect();
    Ok(Json(CompletionObject {
        id: &id,
        object: "text_completion",
        created: now_secs(),
        model: st.model_id(),
        system_fingerprint: None,
        choices,
        usage: run.usage,
    })
    .into_response())
}

/// A plan run to its end, unstreamed.
struct Run {
    completions: Vec<Completion>,
    /// Which completions to answer, in order, with their reward rows.
    chosen: Vec<(usize, Option<Scored>)>,
    usage: Usage,
}

/// Run every sequence of `plan`, choose the answers and record the
/// tokens; `admission` is held until then. The sequences leave the batch
/// if the client goes away first.
async fn run_to_end(
    st: &AppState,
    tenant: &Tenant,
    plan: &Plan,
    admission: Admission,
) -> Result<Run, ApiError> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    let rx = plan.submit(st, &cancelled)?;
    let completions = collect(rx, plan.total()).await?;
    let chosen = rewards::choose(plan, &completions, &admission).await?;
    let prompt_tokens: usize = plan.prompts.iter().map(|p| p.ids.len()).sum();
    let completion_tokens: usize = completions.iter().map(|c| c.usage.completion_tokens).sum();
    tenant.record_tokens(prompt_tokens as u64, completion_tokens as u64);
    Ok(Run {
        completions,
        chosen,
        usage: Usage::new(prompt_tokens, completion_tokens),
    })
}

/// Collect every sequence's completion; the first failure answers for all.
async fn collect(
    mut rx: mpsc::UnboundedReceiver<Event>,
    total: usize,
) -> Result<Vec<Completion>, ApiError> {
    let mut done: Vec<Option<Completion>> = (0..total).map(|_| None).collect();
    let mut left = total;
    while left > 0 {
        match rx.recv().await {
            Some(Event::Delta(..)) => {}
            Some(Event::Done(i, r)) => {
                done[i] = Some(r.map_err(ApiError::from)?);
                left -= 1;
            }
            None => {
                return Err(ApiError::internal(
                    "generation stopped before the request was done",
                ));
            }
        }
    }
    Ok(done.into_iter().flatten().collect())
}
