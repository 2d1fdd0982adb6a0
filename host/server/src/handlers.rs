//! The smaller endpoints: health, metrics, the OpenAPI description, models,
//! usage, reward scoring and rollouts; and the authentication layer.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use deepwasm_engine::rollout::{
    DEFAULT_GROUP_SIZE, Rollout, RolloutError, RolloutOptions, RolloutPrompt,
};
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::{GenerateError, Prompt};
use deepwasm_plugins::Sample;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::api::{ApiJson, RolloutRequest, ScoreRequest};
use crate::error::ApiError;
use crate::tenants::Tenant;

pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    let stats = &st.scheduler.stats;
    axum::Json(json!({
        "status": "ok",
        "model": st.model_id(),
        "batch": {
            "running": stats.running.load(Ordering::Relaxed),
            "waiting": stats.waiting.load(Ordering::Relaxed),
        },
    }))
    .into_response()
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::json(),
    )
        .into_response()
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

fn model_json(st: &AppState) -> Value {
    let info = st.engine.model.info();
    let chat = st.engine.chat_template.is_some();
    // The longest request this server holds: the model's context, or less
    // when the attention-cache budget is smaller.
    let budget = st.kv_budget_tokens();
    json!({
        "id": st.model_id(),
        "object": "model",
        "created": st.started,
        "owned_by": "deepwasm",
        "architecture": info.architecture,
        "context_length": info.max_context,
        "max_model_len": info.max_context.min(budget),
        "vocab_size": info.vocab_size,
        // The length of this model's embeddings.
        "hidden_size": info.hidden_size,
        "capabilities": {
            "chat_completions": chat,
            "completions": true,
            "streaming": true,
            "logprobs": true,
            "tools": chat,
            "tool_choice": if chat { json!(["auto", "none", "required", "function"]) } else { json!([]) },
            "response_format": ["text", "json_object", "json_schema"],
            "sampler_plugins": true,
            "reward_plugins": true,
            "embeddings": true,
            "responses": true,
        },
    })
}

pub async fn models(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
) -> Response {
    let mut data = vec![model_json(&st)];
    for name in st.adapter_models(&tenant) {
        data.push(adapter_json(&st, &name));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn model(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    Ok(match st.check_model(&tenant, &model)? {
        None => axum::Json(model_json(&st)),
        Some(_) => axum::Json(adapter_json(&st, &model)),
    }
    .into_response())
}

/// A served adapter as `/v1/models` lists it: the base model's entry under
/// its own id, with `parent` naming the base.
fn adapter_json(st: &AppState, id: &str) -> Value {
    let mut v = model_json(st);
    v["id"] = json!(id);
    v["parent"] = json!(st.model_id());
    v
}

/// `GET /v1/usage`: the tenant's usage; with a shared state, summed over
/// every replica (this one's written first), so every replica answers the
/// same.
pub async fn usage(Extension(tenant): Extension<Arc<Tenant>>) -> Result<Response, ApiError> {
    let _read = tenant.admit_state_read()?;
    let u = match tenant.ledger() {
        Some(ledger) => ledger
            .usage(&tenant.name)
            .await
            .map_err(crate::tenants::state_error)?,
        None => tenant.usage_totals(),
    };
    Ok(axum::Json(json!({
        "object": "usage",
        "tenant": tenant.name,
        "requests": u.requests,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "plugin_calls": u.plugin_calls,
        "plugin_fuel": u.plugin_fuel,
        "plugin_wall_ms": u.plugin_wall_us as f64 / 1000.0,
        "plugin_limit_hits": u.plugin_limit_hits,
    }))
    .into_response())
}

/// Authenticate `/v1` requests and count every request in the metrics.
pub async fn authenticate(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let tenant = match st.tenants.current().authenticate(auth.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            st.metrics
                .request("unknown", &endpoint, e.status.as_u16(), started.elapsed());
            return e.into_response();
        }
    };
    req.extensions_mut().insert(tenant.clone());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    // The duration runs to the body's last byte (a stream's end), or to
    // the moment the client went away.
    let (parts, body) = response.into_parts();
    let on_end = Box::new(move || {
        st.metrics
            .request(&tenant.name, &endpoint, status, started.elapsed())
    });
    Response::from_parts(
        parts,
        axum::body::Body::new(TimedBody {
            inner: body,
            on_end: Some(on_end),
        }),
    )
}

/// A response body that calls `on_end` once: at its end, or when dropped
/// before it.
struct TimedBody {
    inner: axum::body::Body,
    on_end: Option<Box<dyn FnOnce() + Send>>,
}

impl TimedBody {
    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.end();
    }
}

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------- rewards

fn extra_text(extra: Option<&Map<String, Value>>) -> String {
    extra.map_or_else(|| "{}".to_owned(), |m| Value::Object(m.clone()).to_string())
}

/// The engine's rollout prompts of a request's: a text `prompt` or a chat's
/// `messages` each.
pub(crate) fn rollout_prompts(
    prompts: Vec<crate::api::RolloutPrompt>,
) -> Result<Vec<RolloutPrompt>, ApiError> {
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.into_iter().enumerate() {
        let prompt = match (p.prompt, p.messages) {
            (Some(text), None) => Prompt::Text {
                text,
                add_special_tokens: true,
            },
            (None, Some(messages)) => Prompt::Chat {
                messages: crate::chat::chat_messages(&messages)?,
                tools: Vec::new(),
            },
            _ => {
                return Err(ApiError::invalid_param(
                    &format!("prompts[{i}]"),
                    "give `prompt` (text) or `messages` (a chat), one of them",
                ));
            }
        };
        out.push(RolloutPrompt {
            prompt,
            extra: p.extra.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The API error of a rollout that could not start.
pub(crate) fn rollout_error(e: RolloutError) -> ApiError {
    match e {
        RolloutError::Prompt {
            index,
            source: e @ GenerateError::PromptTooLong { .. },
        } => {
            let mut e = ApiError::context_length_exceeded(e.to_string());
            e.param = Some(format!("prompts[{index}]"));
            e
        }
        RolloutError::Prompt { source, .. } => ApiError::from(source),
        e => ApiError::invalid(e.to_string()),
    }
}

/// Most samples one scoring request may carry.
const MAX_SAMPLES: usize = 4096;

pub async fn score(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<ScoreRequest>,
) -> Result<Response, ApiError> {
    if req.rewards.is_empty() {
        return Err(ApiError::invalid_param(
            "rewards",
            "name at least one reward plugin",
        ));
    }
    if req.samples.len() > MAX_SAMPLES {
        return Err(ApiError::invalid_param(
            "samples",
            format!(
                "at most {MAX_SAMPLES} samples per request, got {}",
                req.samples.len()
            ),
        ));
    }
    let admission = tenant.admit().await?;
    let rewards = crate::chat::weighted_rewards(&st, &tenant, &req.rewards)?;
    let samples: Vec<Sample> = req
        .samples
        .iter()
        .map(|s| Sample {
            prompt: s.prompt.clone(),
            completion: s.completion.clone(),
            completion_tokens: s.completion_tokens.clone().unwrap_or_default(),
            extra: extra_text(s.extra.as_ref()),
        })
        .collect();
    let started = Instant::now();
    let scored = crate::chat::score_async(rewards, samples, admission).await?;
    let data: Vec<Value> = scored
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut row = Map::new();
            row.insert("index".into(), json!(i));
            row.extend(s.to_json().0);
            Value::Object(row)
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "seconds": started.elapsed().as_secs_f64(),
    }))
    .into_response())
}

/// Most completions one rollout may ask for.
const MAX_ROLLOUT: usize = 4096;

/// `POST /v1/rollouts`: groups of completions per prompt, scored, with
/// group advantages, streamed one line (or event) per prompt as its group
/// finishes, then a summary.
pub async fn rollouts(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RolloutRequest>,
) -> Result<Response, ApiError> {
    let adapter = match &req.model {
        Some(m) => st.check_model(&tenant, m)?,
        None => None,
    };
    let g = req.group_size.unwrap_or(DEFAULT_GROUP_SIZE);
    if g == 0 || g > crate::chat::MAX_CHOICES {
        return Err(ApiError::invalid_param(
            "group_size",
            format!("must be in 1..={}, got {g}", crate::chat::MAX_CHOICES),
        ));
    }
    if req.prompts.is_empty() || req.prompts.len() * g > MAX_ROLLOUT {
        return Err(ApiError::invalid_param(
            "prompts",
            format!("1 to {MAX_ROLLOUT} completions per rollout (prompts × group_size)"),
        ));
    }
    let sse = match req.format.as_deref() {
        Some("sse") => true,
        Some("ndjson") => false,
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream")),
        Some(other) => {
            return Err(ApiError::invalid_param(
                "format",
                format!("must be `ndjson` or `sse`, got `{other}`"),
            ));
        }
    };
    let defaults = RolloutOptions::default();
    let options = RolloutOptions {
        group_size: g,
        max_tokens: req.max_tokens.unwrap_or(defaults.max_tokens),
        params: SamplingParams {
            temperature: req.temperature.unwrap_or(defaults.params.temperature),
            top_p: req.top_p.unwrap_or(defaults.params.top_p),
            ..defaults.params
        },
        seed: req.seed.unwrap_or(defaults.seed),
        pass_threshold: req.pass_threshold.unwrap_or(defaults.pass_threshold),
        adapter,
    };
    options
        .params
        .validate()
        .map_err(|e| ApiError::invalid_param(&e.field.clone(), e.to_string()))?;
    if options.max_tokens == 0 {
        return Err(ApiError::invalid_param("max_tokens", "must be at least 1"));
    }
    if !options.pass_threshold.is_finite() {
        return Err(ApiError::invalid_param(
            "pass_threshold",
            "must be a finite number",
        ));
    }
    // Admitted first: with a shared state, looking the rewards up reads
    // the database, which only admitted requests may do.
    let admission = tenant.admit().await?;
    let rewards = crate::chat::weighted_rewards(&st, &tenant, &req.rewards)?;
    let prompts = rollout_prompts(req.prompts)?;
    let mut rollout = match Rollout::new(&st.engine, prompts, options) {
        Ok(r) => r,
        Err(e) => return Err(rollout_error(e)),
    };
    let cancelled = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    rollout
        .submit(&st.scheduler, &tx, &cancelled)
        .map_err(ApiError::from)?;
    drop(tx);
    let (out_tx, out_rx) = mpsc::channel::<Result<bytes::Bytes, Infallible>>(16);
    let frame = move |v: &Value| {
        if sse {
            bytes::Bytes::from(format!("data: {v}\n\n"))
        } else {
            bytes::Bytes::from(format!("{v}\n"))
        }
    };
    tokio::spawn(async move {
        // The task holds the tenant's place (`admission`, used below) until
        // the rollout and its scoring are done.
        struct Cancel(Arc<AtomicBool>);
        impl Drop for Cancel {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _cancel = Cancel(cancelled);
        // Groups go out as they are scored, in whatever order they end:
        // `index` names each.
        while !rollout.is_done() {
            let event = match rx.recv().await {
                Some(event) => rollout.on_event(event),
                None => Err(RolloutError::Stopped),
            };
            let mut finished = match event {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    let e = match e {
                        RolloutError::Generate(e) => ApiError::from(e),
                        e => ApiError::internal(e.to_string()),
                    };
                    let _ = out_tx.send(Ok(frame(&e.body()))).await;
                    return;
                }
            };
            let started = Instant::now();
            let samples = std::mem::take(&mut finished.samples);
            let scores =
                match crate::chat::score_async(rewards.clone(), samples, admission.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = out_tx.send(Ok(frame(&e.body()))).await;
                        return;
                    }
                };
            let line = rollout.scored(finished, scores, started.elapsed());
            let line = serde_json::to_value(&line).unwrap_or_else(|e| {
                ApiError::internal(format!("cannot write a group: {e}")).body()
            });
            if out_tx.send(Ok(frame(&line))).await.is_err() {
                return;
            }
        }
        let summary = rollout.summary();
        tenant.record_tokens(
            rollout.prompt_tokens() as u64,
            summary.completion_tokens as u64,
        );
        let _ = out_tx.send(Ok(frame(&summary.to_line()))).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(out_rx));
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| ApiError::internal("cannot build the response").into_response()))
}
