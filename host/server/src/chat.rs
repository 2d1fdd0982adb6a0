//! `POST /v1/chat/completions` and `POST /v1/completions`.
//!
//! A request becomes one generation per choice (or per candidate with
//! `best_of`), each with its own seed and sampler, all queued on the shared
//! batch. Streams answer Server-Sent Events as tokens arrive; the others
//! answer once every choice is done. A client that goes away cancels its
//! sequences at the next step.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deepwasm_engine::agent::CallSampler;
use deepwasm_engine::rewards::{Scored, WeightedReward, completion_seeds, score_samples};
use deepwasm_engine::sampling::{MAX_TOP_LOGPROBS, SamplingParams, TokenLogprobs};
use deepwasm_engine::{
    BuiltinSampler, Completion, Event, FinishReason, GenerateRequest, MissPolicy, PluginSampler,
    Prompt, Sampler,
};
use deepwasm_model::toolcall::prompt_opens_reasoning;
use deepwasm_model::{ChatMessage, ToolCall, ToolCallFormat, ToolSpec};
use deepwasm_plugins::{SamplerPlugin, World};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::api::{
    ApiJson, ChatRequest, CompletionRequest, Content, InMessage, PromptInput, ResponseFormat,
    Sampling, check_unknown,
};
use crate::error::ApiError;
use crate::output::{ChoiceOutput, Part, Split};
use crate::tenants::{Admission, Tenant};

/// Most choices (or `best_of` candidates) one request may ask for.
pub const MAX_CHOICES: usize = 64;

/// The step budget of the built-in JSON sampler: a grammar cannot skip a
/// step, so it fails rather than falls back, and gets room to answer.
const JSON_STEP_BUDGET: Duration = Duration::from_millis(1000);

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

/// Which sampler every sequence of a request gets.
#[derive(Clone)]
enum Steering {
    Builtin,
    Plugin {
        plugin: SamplerPlugin,
        config: String,
        budget: Duration,
        policy: MissPolicy,
    },
    /// `tool_choice` `required` or named: exactly one well-formed call,
    /// its JSON written by the built-in JSON-schema sampler.
    ToolCall {
        plugin: SamplerPlugin,
        format: ToolCallFormat,
        tools: Vec<ToolSpec>,
        named: Option<String>,
        tokenizer: Arc<deepwasm_model::Tokenizer>,
    },
}

impl Steering {
    fn sampler(&self) -> Box<dyn Sampler> {
        match self {
            Steering::Builtin => Box::new(BuiltinSampler),
            Steering::Plugin {
                plugin,
                config,
                budget,
                policy,
            } => Box::new(PluginSampler::new(plugin.clone(), config, *budget, *policy)),
            Steering::ToolCall {
                plugin,
                format,
                tools,
                named,
                tokenizer,
            } => match CallSampler::new(
                tokenizer.clone(),
                *format,
                tools.clone(),
                named.as_deref(),
                plugin.clone(),
            ) {
                Ok(s) => Box::new(s),
                // Checked when the request was read (`tool_call_steering`).
                Err(_) => Box::new(BuiltinSampler),
            },
        }
    }

    /// Pay a plugin's setup (and find its failures) before the request
    /// queues, off the async executor and off the model's thread.
    async fn warm_up(&self) -> Result<(), ApiError> {
        let (Steering::Plugin { plugin, .. } | Steering::ToolCall { plugin, .. }) = self else {
            return Ok(());
        };
        if plugin.idle_instances() > 0 {
            return Ok(());
        }
        let p = plugin.clone();
        tokio::task::spawn_blocking(move || p.warm_up())
            .await
            .map_err(|e| ApiError::internal(format!("sampler setup stopped: {e}")))?
            .map_err(|e| {
                ApiError::plugin(format!(
                    "sampler plugin `{}` failed its setup: {e}",
                    plugin.plugin().name()
                ))
            })
    }
}

/// A prompt as rendered and tokenized.
struct RenderedPrompt {
    text: Option<String>,
    ids: Vec<u32>,
}

/// What every request kind shares once parsed.
struct Plan {
    prompts: Vec<RenderedPrompt>,
    /// Per prompt: this many sequences (`best_of`, else `n`).
    per_prompt: usize,
    /// Per prompt: this many choices answered.
    n: usize,
    request: GenerateRequest,
    seed: Option<u64>,
    steering: Steering,
    rewards: Vec<WeightedReward>,
    /// Rank candidates by mean log-probability (best_of without rewards).
    rank_by_logprob: bool,
    /// The client's `top_logprobs` / `logprobs`, if it asked.
    logprobs: Option<usize>,
    extra: String,
}

/// `value` of `name` within the range the OpenAI API documents.
fn in_range(name: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::invalid_param(
            name,
            format!("{name} must be between {lo} and {hi}, got {v}"),
        )),
        _ => Ok(()),
    }
}

fn sampling_params(s: &Sampling, vocab: usize) -> Result<SamplingParams, ApiError> {
    in_range("temperature", s.temperature, 0.0, 2.0)?;
    in_range("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
    in_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
    let mut p = SamplingParams::default();
    if let Some(t) = s.temperature {
        p.temperature = t;
    }
    if let Some(v) = s.top_p {
        p.top_p = v;
    }
    if let Some(k) = s.top_k {
        // vLLM's -1 and 0 both mean no top-k.
        if k < -1 {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("top_k must be -1, 0 or positive, got {k}"),
            ));
        }
        p.top_k = k.max(0) as usize;
    }
    if let Some(v) = s.min_p {
        p.min_p = v;
    }
    if let Some(v) = s.repetition_penalty {
        p.repetition_penalty = v;
    }
    if let Some(v) = s.presence_penalty {
        p.presence_penalty = v;
    }
    if let Some(v) = s.frequency_penalty {
        p.frequency_penalty = v;
    }
    if let Some(bias) = &s.logit_bias {
        for (k, v) in bias {
            let token: u32 = k.parse().map_err(|_| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias keys are token ids, got `{k}`"),
                )
            })?;
            let b = v.as_f64().ok_or_else(|| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias[{k}] must be a number, got {v}"),
                )
            })?;
            if !(-100.0..=100.0).contains(&b) {
                return Err(ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias[{k}] must be between -100 and 100, got {b}"),
                ));
            }
            p.logit_bias.push((token, b as f32));
        }
    }
    p.seed = s.seed.map(|s| s as u64);
    p.validate()
        .and_then(|()| p.validate_vocab(vocab))
        .map_err(|e| ApiError::invalid_param(&e.field.clone(), e.to_string()))?;
    Ok(p)
}

/// The sampler a request names, checked against the tenant's plugins.
fn plugin_steering(
    st: &AppState,
    tenant: &Tenant,
    s: &crate::api::SamplerRef,
) -> Result<Steering, ApiError> {
    let stored = st
        .store
        .get(&tenant.name, &s.plugin)
        .ok_or_else(|| ApiError::plugin_not_found("sampler.plugin", &s.plugin))?;
    if stored.record.world != World::Sampler {
        return Err(ApiError::invalid_param(
            "sampler.plugin",
            format!(
                "`{}` is a {} plugin, not a sampler",
                s.plugin, stored.record.world
            ),
        ));
    }
    let budget_ms = s.step_budget_ms.unwrap_or(25);
    let max_ms = tenant.limits.max_step_budget_ms;
    if !(1..=max_ms).contains(&budget_ms) {
        return Err(ApiError::invalid_param(
            "sampler.step_budget_ms",
            format!("must be in 1..={max_ms} (this tenant's limit), got {budget_ms}"),
        ));
    }
    let policy = match s.on_miss.as_deref() {
        None | Some("wait") => MissPolicy::Wait,
        Some("fail") => MissPolicy::Fail,
        Some("fallback") => MissPolicy::Fallback { max_misses: 3 },
        Some(other) => {
            return Err(ApiError::invalid_param(
                "sampler.on_miss",
                format!("must be `wait`, `fail` or `fallback`, got `{other}`"),
            ));
        }
    };
    let budget = Duration::from_millis(budget_ms);
    let plugin = st.sampler(tenant, Some(&stored))?;
    // A plugin that keeps running into its limits is refused before its
    // request costs the batch anything.
    if let Some(left) = plugin.throttled() {
        return Err(ApiError::rate_limited(
            format!(
                "sampler `{}` hit its limits call after call; it takes no new request for {} ms",
                s.plugin,
                left.as_millis()
            ),
            left.as_secs() + 1,
        ));
    }
    Ok(Steering::Plugin {
        plugin,
        config: config_text(s.config.as_ref()),
        budget,
        policy,
    })
}

fn config_text(config: Option<&Value>) -> String {
    match config {
        None | Some(Value::Null) => "{}".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The built-in JSON sampler for a `response_format`.
fn format_steering(
    st: &AppState,
    tenant: &Tenant,
    f: &ResponseFormat,
) -> Result<Option<Steering>, ApiError> {
    let config = match f.kind.as_str() {
        "text" => return Ok(None),
        "json_object" => json!({"json_object": true}),
        "json_schema" => {
            let js = f.json_schema.as_ref().ok_or_else(|| {
                ApiError::invalid_param(
                    "response_format.json_schema",
                    "`json_schema` is required with type `json_schema`",
                )
            })?;
            json!({"schema": js.schema.clone().unwrap_or(json!({}))})
        }
        other => {
            return Err(ApiError::invalid_param(
                "response_format.type",
                format!("must be `text`, `json_object` or `json_schema`, got `{other}`"),
            ));
        }
    };
    Ok(Some(Steering::Plugin {
        plugin: st.sampler(tenant, None)?,
        config: config.to_string(),
        budget: JSON_STEP_BUDGET,
        policy: MissPolicy::Fail,
    }))
}

/// The reward plugins a request names.
pub(crate) fn weighted_rewards(
    st: &AppState,
    tenant: &Tenant,
    refs: &[crate::api::RewardRef],
) -> Result<Vec<WeightedReward>, ApiError> {
    refs.iter()
        .enumerate()
        .map(|(i, r)| {
            let param = format!("rewards[{i}].plugin");
            let stored = st
                .store
                .get(&tenant.name, &r.plugin)
                .ok_or_else(|| ApiError::plugin_not_found(&param, &r.plugin))?;
            if stored.record.world != World::Reward {
                return Err(ApiError::invalid_param(
                    &param,
                    format!(
                        "`{}` is a {} plugin, not a reward",
                        r.plugin, stored.record.world
                    ),
                ));
            }
            let weight = r.weight.unwrap_or(1.0);
            if !weight.is_finite() {
                return Err(ApiError::invalid_param(
                    &format!("rewards[{i}].weight"),
                    "must be a finite number",
                ));
            }
            Ok(WeightedReward {
                name: stored.record.name.clone(),
                reward: st.reward(tenant, &stored)?,
                weight,
                config: config_text(r.config.as_ref()),
            })
        })
        .collect()
}

impl Plan {
    fn new(
        st: &AppState,
        tenant: &Tenant,
        prompts: Vec<RenderedPrompt>,
        s: &Sampling,
        max_tokens: Option<usize>,
        logprobs: Option<usize>,
        format_steering: Option<Steering>,
    ) -> Result<Plan, ApiError> {
        let info = st.engine.model.info();
        let params = sampling_params(s, info.vocab_size)?;
        let n = s.n.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&n) {
            return Err(ApiError::invalid_param(
                "n",
                format!("must be in 1..={MAX_CHOICES}, got {n}"),
            ));
        }
        if let Some(b) = s.best_of
            && !(n..=MAX_CHOICES).contains(&b)
        {
            return Err(ApiError::invalid_param(
                "best_of",
                format!("must be at least n ({n}) and at most {MAX_CHOICES}, got {b}"),
            ));
        }
        if s.best_of.is_some_and(|b| b > 1) && s.stream {
            return Err(ApiError::invalid_param(
                "best_of",
                "best_of cannot be streamed",
            ));
        }
        if let Some(k) = logprobs
            && k > MAX_TOP_LOGPROBS
        {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}, got {k}"),
            ));
        }
        if max_tokens == Some(0) {
            return Err(ApiError::invalid_param("max_tokens", "must be at least 1"));
        }
        if prompts.len() * s.best_of.unwrap_or(n) > MAX_CHOICES {
            return Err(ApiError::invalid_param(
                "prompt",
                format!(
                    "{} prompts × {} choices is more than {MAX_CHOICES} sequences",
                    prompts.len(),
                    s.best_of.unwrap_or(n)
                ),
            ));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.ids.len() >= info.max_context {
                let mut e = ApiError::context_length_exceeded(format!(
                    "This model's maximum context length is {} tokens, and prompt {i} is {} \
                     tokens, which leaves no room to generate; shorten the prompt",
                    info.max_context,
                    p.ids.len()
                ));
                if prompts.len() > 1 {
                    e.param = Some("prompt".into());
                }
                return Err(e);
            }
            if let Some(&bad) = p.ids.iter().find(|&&t| t as usize >= info.vocab_size) {
                return Err(ApiError::invalid_param(
                    "prompt",
                    format!(
                        "token {bad} is outside the vocabulary of {}",
                        info.vocab_size
                    ),
                ));
            }
        }
        let steering = match (&s.sampler, format_steering) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_param(
                    "sampler",
                    "a request takes one steering sampler: `sampler` or a JSON `response_format`, not both",
                ));
            }
            (Some(r), None) => plugin_steering(st, tenant, r)?,
            (None, Some(f)) => f,
            (None, None) => Steering::Builtin,
        };
        let rewards = weighted_rewards(st, tenant, s.rewards.as_deref().unwrap_or(&[]))?;
        let best_of = s.best_of.unwrap_or(n);
        let rank_by_logprob = best_of > n && rewards.is_empty();
        let extra = match &s.extra {
            Some(m) => Value::Object(m.clone()).to_string(),
            None => "{}".into(),
        };
        let stop = s.stop.clone().into_vec();
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid_param("stop", "up to 4 non-empty strings"));
        }
        let request = GenerateRequest {
            max_tokens: max_tokens.unwrap_or(info.max_context),
            params,
            stop,
            ignore_eos: s.ignore_eos,
            logprobs: if rank_by_logprob {
                Some(logprobs.unwrap_or(0))
            } else {
                logprobs
            },
            ..GenerateRequest::new(Prompt::Tokens(Vec::new()))
        };
        Ok(Plan {
            prompts,
            per_prompt: best_of,
            n,
            seed: s.seed.map(|s| s as u64),
            request,
            steering,
            rewards,
            rank_by_logprob,
            logprobs,
            extra,
        })
    }

    /// Queue every sequence; events arrive tagged `prompt * per_prompt + j`.
    fn submit(
        &self,
        st: &AppState,
        cancelled: &Arc<AtomicBool>,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let seeds = match self.seed {
            Some(seed) if self.per_prompt > 1 => Some(completion_seeds(seed, self.per_prompt)),
            _ => None,
        };
        for (pi, p) in self.prompts.iter().enumerate() {
            for j in 0..self.per_prompt {
                let mut req = self.request.clone();
                req.prompt = Prompt::Tokens(p.ids.clone());
                if let Some(seeds) = &seeds {
                    req.params.seed = Some(seeds[j]);
                }
                st.scheduler
                    .submit(
                        pi * self.per_prompt + j,
                        req,
                        self.steering.sampler(),
                        tx.clone(),
                        cancelled.clone(),
                    )
                    .map_err(ApiError::from)?;
            }
        }
        Ok(rx)
    }

    fn total(&self) -> usize {
        self.prompts.len() * self.per_prompt
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

/// Which candidates to answer, best first, with their reward rows.
async fn choose(
    plan: &Plan,
    completions: &[Completion],
    admission: &Admission,
) -> Result<Vec<(usize, Option<Scored>)>, ApiError> {
    let scored: Option<Vec<Scored>> = if plan.rewards.is_empty() {
        None
    } else {
        let samples: Vec<_> = completions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = &plan.prompts[i / plan.per_prompt];
                deepwasm_engine::rewards::sample_of(p.text.as_deref().unwrap_or(""), c, &plan.extra)
            })
            .collect();
        Some(score_async(plan.rewards.clone(), samples, admission.clone()).await?)
    };
    let mut chosen = Vec::new();
    for pi in 0..plan.prompts.len() {
        let range = pi * plan.per_prompt..(pi + 1) * plan.per_prompt;
        let mut order: Vec<usize> = range.collect();
        if let Some(scored) = &scored {
            if plan.per_prompt > plan.n {
                // Highest total first; ties keep candidate order; no total last.
                order.sort_by(|&a, &b| {
                    let key = |i: usize| scored[i].total.unwrap_or(f64::NEG_INFINITY);
                    key(b).total_cmp(&key(a))
                });
            }
        } else if plan.rank_by_logprob {
            let mean = |c: &Completion| {
                let lps: Vec<f32> = c
                    .logprobs
                    .iter()
                    .flatten()
                    .flatten()
                    .map(|l| l.logprob)
                    .collect();
                if lps.is_empty() {
                    f64::NEG_INFINITY
                } else {
                    lps.iter().map(|&l| f64::from(l)).sum::<f64>() / lps.len() as f64
                }
            };
            order.sort_by(|&a, &b| mean(&completions[b]).total_cmp(&mean(&completions[a])));
        }
        for i in order.into_iter().take(plan.n) {
            chosen.push((i, scored.as_ref().map(|s| s[i].clone())));
        }
    }
    Ok(chosen)
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

fn message_text(m: &InMessage, i: usize) -> Result<Option<String>, ApiError> {
    match &m.content {
        None => Ok(None),
        Some(Content::Text(s)) => Ok(Some(s.clone())),
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for (k, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::invalid_param(
                            &format!("messages[{i}].content[{k}].text"),
                            "a text part needs `text`",
                        ));
                    }
                    (other, _) => {
                        return Err(ApiError::invalid_param(
                            &format!("messages[{i}].content[{k}].type"),
                            format!(
                                "this model reads text only; `{other}` parts are not supported"
                            ),
                        ));
                    }
                }
            }
            Ok(Some(s))
        }
    }
}

pub(crate) fn chat_messages(messages: &[InMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "at least one message is required",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                // OpenAI's newer name for the system role.
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].role"),
                        format!(
                            "must be system, developer, user, assistant or tool, got `{other}`"
                        ),
                    ));
                }
            };
            let content = message_text(m, i)?;
            if role != "assistant" && content.is_none() {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].content"),
                    "content is required",
                ));
            }
            if role == "tool" && m.tool_call_id.is_none() {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].tool_call_id"),
                    "a tool message answers a call: `tool_call_id` is required",
                ));
            }
            let tool_calls = m
                .tool_calls
                .iter()
                .flatten()
                .map(|c| ToolCall::new(&c.id, &c.function.name, &c.function.arguments))
                .collect();
            Ok(ChatMessage {
                role: role.to_owned(),
                content,
                reasoning_content: m.reasoning_content.clone(),
                tool_calls,
                tool_call_id: m.tool_call_id.clone(),
                name: m.name.clone(),
            })
        })
        .collect()
}

fn tool_specs(req: &ChatRequest) -> Result<Vec<ToolSpec>, ApiError> {
    let mut specs = Vec::new();
    for (i, t) in req.tools.iter().flatten().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::invalid_param(
                &format!("tools[{i}].type"),
                format!("only `function` tools are supported, got `{}`", t.kind),
            ));
        }
        let name = &t.function.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || name.len() > 64
        {
            return Err(ApiError::invalid_param(
                &format!("tools[{i}].function.name"),
                "a tool name is 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        let parameters = t
            .function
            .parameters
            .clone()
            .unwrap_or(json!({"type": "object", "properties": {}}));
        if !parameters.is_object() {
            return Err(ApiError::invalid_param(
                &format!("tools[{i}].function.parameters"),
                "must be a JSON Schema object",
            ));
        }
        specs.push(ToolSpec {
            name: name.clone(),
            description: t.function.description.clone().unwrap_or_default(),
            parameters,
        });
    }
    Ok(specs)
}

/// The steering of `tool_choice: "required"` or a named function: one
/// constrained call. `None` for `auto`, `none` or no choice.
fn tool_call_steering(
    st: &AppState,
    tenant: &Tenant,
    choice: Option<&Value>,
    tools: &[ToolSpec],
) -> Result<Option<Steering>, ApiError> {
    let named = match choice {
        Some(Value::String(s)) if s == "required" => None,
        Some(Value::Object(o)) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(name.to_owned()),
            None => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "a named tool choice needs `function.name`",
                ));
            }
        },
        _ => return Ok(None),
    };
    let format = st.engine.tool_format;
    format
        .call_constraint(tools, named.as_deref())
        .map_err(|e| ApiError::invalid_param("tool_choice", e.to_string()))?;
    let plugin = st.sampler(tenant, None)?;
    Ok(Some(Steering::ToolCall {
        plugin,
        format,
        tools: tools.to_vec(),
        named,
        tokenizer: st.engine.tokenizer.clone(),
    }))
}

pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    check_unknown(&req.unknown)?;
    st.check_model(&req.model)?;
    let messages = chat_messages(&req.messages)?;
    let tools = tool_specs(&req)?;
    if let Some(choice) = &req.tool_choice {
        let ok = matches!(choice.as_str(), Some("none" | "auto" | "required"))
            || choice.get("function").is_some();
        if !ok {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "must be `none`, `auto`, `required` or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            ));
        }
    }
    if req.top_logprobs.is_some() && req.logprobs != Some(true) {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    let logprobs = (req.logprobs == Some(true)).then(|| req.top_logprobs.unwrap_or(0));
    let tool_choice_none = req.tool_choice.as_ref().and_then(Value::as_str) == Some("none");
    let tools = if tool_choice_none { Vec::new() } else { tools };
    let admission = tenant.admit()?;
    let split = Split {
        tools: (!tools.is_empty()).then_some(st.engine.tool_format),
        reasoning_opened: false,
    };
    let prompt_tools = tools.clone();
    let prompt = Prompt::Chat { messages, tools };
    let (text, ids) = st.engine.render_prompt(&prompt)?;
    let split = Split {
        reasoning_opened: text.as_deref().is_some_and(prompt_opens_reasoning),
        ..split
    };
    let format = match &req.response_format {
        Some(f) => format_steering(&st, &tenant, f)?,
        None => None,
    };
    let format = match tool_call_steering(&st, &tenant, req.tool_choice.as_ref(), &prompt_tools)? {
        Some(_) if format.is_some() => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "a required tool call cannot be combined with a JSON `response_format`",
            ));
        }
        Some(t) => Some(t),
        None => format,
    };
    let max_tokens = req.max_completion_tokens.or(req.sampling.max_tokens);
    let plan = Plan::new(
        &st,
        &tenant,
        vec![RenderedPrompt { text, ids }],
        &req.sampling,
        max_tokens,
        logprobs,
        format,
    )?;
    plan.steering.warm_up().await?;
    if req.sampling.stream {
        let include_usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return stream_chat(st, tenant, admission, plan, split, include_usage);
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    let rx = plan.submit(&st, &cancelled)?;
    let completions = collect(rx, plan.total()).await?;
    let chosen = choose(&plan, &completions, &admission).await?;
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
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "this model does not support `suffix` (fill-in-the-middle)",
        ));
    }
    if req.echo && req.sampling.stream {
        return Err(ApiError::invalid_param("echo", "echo cannot be streamed"));
    }
    let prompts: Vec<Prompt> = match &req.prompt {
        PromptInput::Text(t) => vec![Prompt::Text {
            text: t.clone(),
            add_special_tokens: true,
        }],
        PromptInput::Texts(ts) => ts
            .iter()
            .map(|t| Prompt::Text {
                text: t.clone(),
                add_special_tokens: true,
            })
            .collect(),
        PromptInput::Tokens(ids) => vec![Prompt::Tokens(ids.clone())],
        PromptInput::TokenLists(l) => l.iter().map(|ids| Prompt::Tokens(ids.clone())).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "at least one prompt is required",
        ));
    }
    if req.sampling.stream && prompts.len() > 1 {
        return Err(ApiError::invalid_param(
            "prompt",
            "a streamed request takes one prompt",
        ));
    }
    let admission = tenant.admit()?;
    let mut rendered = Vec::new();
    for p in &prompts {
        let (text, ids) = st.engine.render_prompt(p)?;
        if ids.is_empty() {
            return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
        }
        let text = match text {
            Some(t) => Some(t),
            None => Some(
                st.engine
                    .tokenizer
                    .decode(&ids, false)
                    .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?,
            ),
        };
        rendered.push(RenderedPrompt { text, ids });
    }
    let max_tokens = Some(req.sampling.max_tokens.unwrap_or(16));
    let plan = Plan::new(
        &st,
        &tenant,
        rendered,
        &req.sampling,
        max_tokens,
        req.logprobs,
        None,
    )?;
    plan.steering.warm_up().await?;
    if req.sampling.stream {
        let include_usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return stream_completion(st, tenant, admission, plan, include_usage);
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancelled.clone());
    let rx = plan.submit(&st, &cancelled)?;
    let completions = collect(rx, plan.total()).await?;
    let chosen = choose(&plan, &completions, &admission).await?;
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

/// Scores of samples by reward plugins (also used by rollouts), on a
/// blocking thread that holds the request's `admission` until it is done:
/// a client that goes away does not free its place while its scoring still
/// runs, so abandoned requests cannot pile up threads.
pub(crate) async fn score_async(
    rewards: Vec<WeightedReward>,
    samples: Vec<deepwasm_plugins::Sample>,
    admission: Admission,
) -> Result<Vec<Scored>, ApiError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::task::spawn_blocking(move || {
        let _admission = admission;
        score_samples(&rewards, &samples, threads, 64)
    })
    .await
    .map_err(|e| ApiError::internal(format!("scoring stopped: {e}")))
}
