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
//! - [`rewards`]: reward plugins and the choice among `best_of` candidates.

mod plan;
mod rewards;
mod steer;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deepwasm_engine::sampling::TokenLogprobs;
use deepwasm_engine::{Completion, Event, FinishReason};
use deepwasm_model::ToolCall;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

pub(crate) use plan::{MAX_CHOICES, chat_messages};
pub(crate) use rewards::{score_async, weighted_rewards};

use self::plan::{ChatInput, Plan, completion_plan, completion_prompts, include_usage};
use crate::AppState;
use crate::api::{ApiJson, ChatRequest, CompletionRequest, check_unknown};
use crate::error::ApiError;
use crate::output::{ChoiceOutput, Part, Split};
use crate::tenants::{Admission, Tenant};

/// How often a stream with nothing to send writes an SSE comment. The
/// server learns that a client went away only when a write to it fails, so
/// this is what lets a request whose prompt is still being prefilled (no
/// tokens yet) leave the batch within about a second of its client.
const STREAM_KEEP_ALIVE: Duration = Duration::from_millis(500);

/// Sets the flag when dropped: the request's sequences leave the batch if
/// its handler or stream goes away before they finish.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
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

fn finish_reason(c: &Completion, tool_calls: bool) -> &'static str {
    if tool_calls {
        return "tool_calls";
    }
    match c.finish_reason {
        FinishReason::Stop | FinishReason::SamplerStop => "stop",
        FinishReason::Length => "length",
    }
}

fn token_string(st: &AppState, id: u32) -> (String, Vec<u8>) {
    let bytes = st
        .engine
        .tokenizer
        .token_bytes(id)
        .unwrap_or_default()
        .to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Chat logprobs of some tokens: `{"token", "logprob", "bytes", "top_logprobs"}`.
fn chat_logprobs(st: &AppState, lps: &[Option<TokenLogprobs>], tokens: &[u32]) -> Vec<Value> {
    tokens
        .iter()
        .zip(lps.iter().chain(std::iter::repeat(&None)))
        .map(|(&t, lp)| {
            let (text, bytes) = token_string(st, t);
            match lp {
                Some(lp) => json!({
                    "token": text, "logprob": lp.logprob, "bytes": bytes,
                    "top_logprobs": lp.top.iter().map(|&(id, l)| {
                        let (text, bytes) = token_string(st, id);
                        json!({"token": text, "logprob": l, "bytes": bytes})
                    }).collect::<Vec<_>>(),
                }),
                // A token a sampler forced: the model scored no alternatives.
                None => json!({"token": text, "logprob": null, "bytes": bytes, "top_logprobs": []}),
            }
        })
        .collect()
}

fn tool_calls_json(calls: &[ToolCall]) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"index": i, "id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect()
}

fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}",
        deepwasm_engine::rewards::completion_seeds(deepwasm_engine::batcher::random_seed(), 1)[0]
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------- chat

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    check_unknown(&req.unknown)?;
    st.check_model(&req.model)?;
    let input = ChatInput::read(&req)?;
    let admission = tenant.admit()?;
    let (plan, split) = input.plan(&st, &tenant, &req)?;
    plan.steering.warm_up().await?;
    if req.sampling.stream {
        let include_usage = include_usage(&req.sampling);
        return stream_chat(st, tenant, admission, plan, split, include_usage);
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    let rx = plan.submit(&st, &cancelled)?;
    let completions = collect(rx, plan.total()).await?;
    let chosen = rewards::choose(&plan, &completions, &admission).await?;
    let prompt_tokens = plan.prompts[0].ids.len();
    let completion_tokens: usize = completions.iter().map(|c| c.usage.completion_tokens).sum();
    tenant.record_tokens(prompt_tokens as u64, completion_tokens as u64);
    drop(admission);
    let id = new_id("chatcmpl");
    let choices: Vec<Value> = chosen
        .iter()
        .enumerate()
        .map(|(index, (i, scored))| {
            let c = &completions[*i];
            let out = ChoiceOutput::whole(split, &id, index, &c.text);
            let mut message = Map::new();
            message.insert("role".into(), json!("assistant"));
            message.insert(
                "content".into(),
                if out.content.is_empty() && !out.tool_calls.is_empty() {
                    Value::Null
                } else {
                    json!(out.content)
                },
            );
            if !out.reasoning.is_empty() {
                message.insert("reasoning_content".into(), json!(out.reasoning));
            }
            if !out.tool_calls.is_empty() {
                message.insert("tool_calls".into(), json!(tool_calls_json(&out.tool_calls)));
            }
            let mut choice = Map::new();
            choice.insert("index".into(), json!(index));
            choice.insert("message".into(), Value::Object(message));
            choice.insert(
                "logprobs".into(),
                match (&plan.logprobs, &c.logprobs) {
                    (Some(_), Some(lps)) => {
                        json!({"content": chat_logprobs(&st, lps, &c.tokens), "refusal": null})
                    }
                    _ => Value::Null,
                },
            );
            choice.insert(
                "finish_reason".into(),
                json!(finish_reason(c, !out.tool_calls.is_empty())),
            );
            if let Some(s) = scored {
                choice.insert("reward".into(), Value::Object(s.to_json().0));
            }
            Value::Object(choice)
        })
        .collect();
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now_secs(),
        "model": st.model_id(),
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage_json(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

fn sse(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

fn stream_chat(
    st: Arc<AppState>,
    tenant: Arc<Tenant>,
    admission: Admission,
    plan: Plan,
    split: Split,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut rx = plan.submit(&st, &cancelled)?;
    let (tx, out_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let id = new_id("chatcmpl");
    let chunks = Chunks::new(&id, "chat.completion.chunk", st.model_id(), include_usage);
    let started = Instant::now();
    tokio::spawn(async move {
        let _admission = admission;
        let _guard = CancelOnDrop(cancelled);
        let chunk = |choices: Value, usage: Option<Value>| chunks.chunk(choices, usage);
        let total = plan.total();
        for i in 0..total {
            let first = chunk(
                json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                None,
            );
            if tx.send(Ok(sse(&first))).await.is_err() {
                return;
            }
        }
        let mut outputs: HashMap<usize, ChoiceOutput> = HashMap::new();
        let mut completion_tokens = 0usize;
        let mut left = total;
        let mut first_token = true;
        while left > 0 {
            // A client that went away is noticed here even while nothing
            // is generated (a prompt being prefilled): its request leaves
            // the batch at once, not at its first token.
            let event = tokio::select! {
                event = rx.recv() => event,
                () = tx.closed() => return,
            };
            let Some(event) = event else {
                let e = ApiError::internal("generation stopped before the request was done");
                let _ = tx.send(Ok(sse(&e.body()))).await;
                return;
            };
            let msg = match event {
                Event::Delta(i, d) => {
                    if first_token && !d.tokens.is_empty() {
                        first_token = false;
                        st.metrics.first_token(&tenant.name, started.elapsed());
                    }
                    let parts = outputs
                        .entry(i)
                        .or_insert_with(|| ChoiceOutput::new(split, &id, i))
                        .push(&d.text);
                    let logprobs = plan.logprobs.map(|_| json!({"content": chat_logprobs(&st, &d.logprobs, &d.tokens), "refusal": null}));
                    parts_chunks(i, parts, logprobs)
                        .into_iter()
                        .map(|c| chunk(c, None))
                        .collect::<Vec<_>>()
                }
                Event::Done(_, Err(e)) => {
                    let e = ApiError::from(e);
                    let _ = tx.send(Ok(sse(&e.body()))).await;
                    return;
                }
                Event::Done(i, Ok(c)) => {
                    left -= 1;
                    completion_tokens += c.usage.completion_tokens;
                    let out = outputs
                        .entry(i)
                        .or_insert_with(|| ChoiceOutput::new(split, &id, i));
                    let parts = out.finish();
                    let mut chunks: Vec<Value> = parts_chunks(i, parts, None)
                        .into_iter()
                        .map(|c| chunk(c, None))
                        .collect();
                    let reason = finish_reason(&c, !out.tool_calls.is_empty());
                    chunks.push(chunk(json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": reason}]), None));
                    chunks
                }
            };
            for m in msg {
                if tx.send(Ok(sse(&m))).await.is_err() {
                    return;
                }
            }
        }
        let prompt_tokens = plan.prompts[0].ids.len();
        let usage = include_usage.then(|| {
            chunk(
                json!([]),
                Some(usage_json(prompt_tokens, completion_tokens)),
            )
        });
        end_stream(&tx, &tenant, prompt_tokens, completion_tokens, usage).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(STREAM_KEEP_ALIVE))
        .into_response())
}

/// The stream chunks (their `choices`) of some output parts.
fn parts_chunks(index: usize, parts: Vec<Part>, logprobs: Option<Value>) -> Vec<Value> {
    let mut chunks = Vec::new();
    let mut logprobs = logprobs;
    for part in parts {
        let delta = match part {
            Part::Content(t) => json!({"content": t}),
            Part::Reasoning(t) => json!({"reasoning_content": t}),
            Part::ToolCall(c) => json!({"tool_calls": tool_calls_json(std::slice::from_ref(&c))}),
        };
        chunks.push(json!([{"index": index, "delta": delta, "logprobs": logprobs.take(), "finish_reason": null}]));
    }
    // Tokens that produced no visible text yet still carry their logprobs.
    if let Some(lp) = logprobs
        && lp["content"].as_array().is_some_and(|a| !a.is_empty())
    {
        chunks.push(json!([{"index": index, "delta": {}, "logprobs": lp, "finish_reason": null}]));
    }
    chunks
}

// ---------------------------------------------------------------- completions

fn completion_logprobs(st: &AppState, c: &Completion, offset: usize) -> Value {
    let lps = c.logprobs.as_deref().unwrap_or(&[]);
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    let mut at = offset;
    for (k, &t) in c.tokens.iter().enumerate() {
        let (text, _) = token_string(st, t);
        offsets.push(at);
        at += text.len();
        tokens.push(json!(text));
        match lps.get(k).and_then(Option::as_ref) {
            Some(lp) => {
                token_logprobs.push(json!(lp.logprob));
                let mut m = Map::new();
                for &(id, l) in &lp.top {
                    m.insert(token_string(st, id).0, json!(l));
                }
                top.push(Value::Object(m));
            }
            None => {
                token_logprobs.push(Value::Null);
                top.push(Value::Null);
            }
        }
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

pub async fn completions(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    check_unknown(&req.unknown)?;
    st.check_model(&req.model)?;
    let prompts = completion_prompts(&req)?;
    let admission = tenant.admit()?;
    let plan = completion_plan(&st, &tenant, &req, &prompts)?;
    plan.steering.warm_up().await?;
    if req.sampling.stream {
        let include_usage = include_usage(&req.sampling);
        return stream_completion(st, tenant, admission, plan, include_usage);
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    let rx = plan.submit(&st, &cancelled)?;
    let completions = collect(rx, plan.total()).await?;
    let chosen = rewards::choose(&plan, &completions, &admission).await?;
    let prompt_tokens: usize = plan.prompts.iter().map(|p| p.ids.len()).sum();
    let completion_tokens: usize = completions.iter().map(|c| c.usage.completion_tokens).sum();
    tenant.record_tokens(prompt_tokens as u64, completion_tokens as u64);
    drop(admission);
    let choices: Vec<Value> = chosen
        .iter()
        .enumerate()
        .map(|(index, (i, scored))| {
            let c = &completions[*i];
            let prompt_text = plan.prompts[i / plan.per_prompt]
                .text
                .clone()
                .unwrap_or_default();
            let text = if req.echo {
                format!("{prompt_text}{}", c.text)
            } else {
                c.text.clone()
            };
            let mut choice = Map::new();
            choice.insert("index".into(), json!(index));
            choice.insert("text".into(), json!(text));
            choice.insert(
                "logprobs".into(),
                if plan.logprobs.is_some() {
                    completion_logprobs(&st, c, if req.echo { prompt_text.len() } else { 0 })
                } else {
                    Value::Null
                },
            );
            choice.insert("finish_reason".into(), json!(finish_reason(c, false)));
            if let Some(s) = scored {
                choice.insert("reward".into(), Value::Object(s.to_json().0));
            }
            Value::Object(choice)
        })
        .collect();
    Ok(axum::Json(json!({
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": now_secs(),
        "model": st.model_id(),
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage_json(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

fn stream_completion(
    st: Arc<AppState>,
    tenant: Arc<Tenant>,
    admission: Admission,
    plan: Plan,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut rx = plan.submit(&st, &cancelled)?;
    let (tx, out_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let id = new_id("cmpl");
    let chunks = Chunks::new(&id, "text_completion", st.model_id(), include_usage);
    let started = Instant::now();
    tokio::spawn(async move {
        let _admission = admission;
        let _guard = CancelOnDrop(cancelled);
        let chunk = |choices: Value, usage: Option<Value>| chunks.chunk(choices, usage);
        let mut completion_tokens = 0usize;
        let mut left = plan.total();
        let mut first_token = true;
        let mut offsets: HashMap<usize, usize> = HashMap::new();
        while left > 0 {
            // A client that went away is noticed here even while nothing
            // is generated (a prompt being prefilled): its request leaves
            // the batch at once, not at its first token.
            let event = tokio::select! {
                event = rx.recv() => event,
                () = tx.closed() => return,
            };
            let Some(event) = event else {
                let e = ApiError::internal("generation stopped before the request was done");
                let _ = tx.send(Ok(sse(&e.body()))).await;
                return;
            };
            let msg = match event {
                Event::Delta(i, d) => {
                    if first_token && !d.tokens.is_empty() {
                        first_token = false;
                        st.metrics.first_token(&tenant.name, started.elapsed());
                    }
                    let logprobs = plan.logprobs.map(|_| {
                        let offset = offsets.entry(i).or_default();
                        let c = Completion {
                            text: d.text.clone(),
                            tokens: d.tokens.clone(),
                            prompt_tokens: Vec::new(),
                            finish_reason: FinishReason::Stop,
                            usage: Default::default(),
                            logprobs: Some(d.logprobs.clone()),
                            timings: Default::default(),
                        };
                        let v = completion_logprobs(&st, &c, *offset);
                        *offset += d.text.len();
                        v
                    });
                    chunk(
                        json!([{"index": i, "text": d.text, "logprobs": logprobs, "finish_reason": null}]),
                        None,
                    )
                }
                Event::Done(_, Err(e)) => {
                    let e = ApiError::from(e);
                    let _ = tx.send(Ok(sse(&e.body()))).await;
                    return;
                }
                Event::Done(i, Ok(c)) => {
                    left -= 1;
                    completion_tokens += c.usage.completion_tokens;
                    chunk(
                        json!([{"index": i, "text": "", "logprobs": null, "finish_reason": finish_reason(&c, false)}]),
                        None,
                    )
                }
            };
            if tx.send(Ok(sse(&msg))).await.is_err() {
                return;
            }
        }
        let prompt_tokens = plan.prompts[0].ids.len();
        let usage = include_usage.then(|| {
            chunk(
                json!([]),
                Some(usage_json(prompt_tokens, completion_tokens)),
            )
        });
        end_stream(&tx, &tenant, prompt_tokens, completion_tokens, usage).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(STREAM_KEEP_ALIVE))
        .into_response())
}

/// The chunks of one streamed response: each its `choices` in the
/// envelope they all share, with `usage` when the client asked for it.
struct Chunks {
    envelope: Value,
    include_usage: bool,
}

impl Chunks {
    fn new(id: &str, object: &str, model: &str, include_usage: bool) -> Self {
        Chunks {
            envelope: json!({"id": id, "object": object, "created": now_secs(),
                             "model": model, "system_fingerprint": null}),
            include_usage,
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut v = self.envelope.clone();
        v["choices"] = choices;
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        v
    }
}

/// The end of a stream: the tokens recorded, the usage chunk if the client
/// asked for one, and `[DONE]`.
async fn end_stream(
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
    tenant: &Tenant,
    prompt_tokens: usize,
    completion_tokens: usize,
    usage: Option<Value>,
) {
    tenant.record_tokens(prompt_tokens as u64, completion_tokens as u64);
    if let Some(usage) = usage {
        let _ = tx.send(Ok(sse(&usage))).await;
    }
    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
}
