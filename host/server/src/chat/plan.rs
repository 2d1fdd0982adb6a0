//! The request plan: an OpenAI chat or legacy completion request, read and
//! checked, as what the engine runs: rendered prompts, one
//! [`GenerateRequest`] for all their sequences, the steering, and how
//! candidates are chosen.
//!
//! What needs no model or plugin is checked before the request is admitted
//! ([`ChatInput::read`], [`completion_prompts`]); the rest after, when the
//! prompt is rendered and the plugins looked up.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use deepwasm_engine::rewards::{WeightedReward, completion_seeds};
use deepwasm_engine::sampling::{MAX_TOP_LOGPROBS, SamplingParams};
use deepwasm_engine::{Event, GenerateRequest, Prompt};
use deepwasm_model::toolcall::prompt_opens_reasoning;
use deepwasm_model::{ChatMessage, ToolCall, ToolSpec};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::rewards::weighted_rewards;
use super::steer::{Steering, format_steering, structured, tool_call_steering};
use crate::AppState;
use crate::api::{
    ChatRequest, CompletionRequest, Content, InMessage, PromptInput, Sampling, ToolDef,
};
use crate::error::ApiError;
use crate::output::Split;
use crate::tenants::Tenant;

/// Most choices (or `best_of` candidates) one request may ask for.
pub const MAX_CHOICES: usize = 64;

/// Most `stop` strings a request may give, as OpenAI allows.
const MAX_STOP_STRINGS: usize = 4;

/// `max_tokens` of a legacy completion that names none, as OpenAI's.
const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// A prompt as rendered and tokenized.
pub(super) struct RenderedPrompt {
    pub text: Option<String>,
    pub ids: Vec<u32>,
}

/// What every request kind shares once parsed.
pub(super) struct Plan {
    pub prompts: Vec<RenderedPrompt>,
    /// Per prompt: this many sequences (`best_of`, else `n`).
    pub per_prompt: usize,
    /// Per prompt: this many choices answered.
    pub n: usize,
    pub(crate) request: GenerateRequest,
    seed: Option<u64>,
    pub steering: Steering,
    pub rewards: Vec<WeightedReward>,
    /// Rank candidates by mean log-probability (best_of without rewards).
    pub rank_by_logprob: bool,
    /// The client's `top_logprobs` / `logprobs`, if it asked.
    pub logprobs: Option<usize>,
    /// The request's `extra`, as JSON text for the reward plugins.
    pub extra: String,
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

impl Plan {
    /// The plan of `prompts` under the request's sampling fields `s`.
    /// `constraint` is the steering its `response_format` or `tool_choice`
    /// asked for.
    fn new(
        st: &AppState,
        tenant: &Tenant,
        prompts: Vec<RenderedPrompt>,
        s: &Sampling,
        max_tokens: Option<usize>,
        logprobs: Option<usize>,
        constraint: Option<Steering>,
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
        if s.stream && s.rewards.as_ref().is_some_and(|r| !r.is_empty()) {
            // The scores come once the text is whole; a stream has no place
            // for them.
            return Err(ApiError::invalid_param(
                "rewards",
                "rewards cannot be streamed: ask without `stream`",
            ));
        }
        let steering = Steering::of_request(st, tenant, s.sampler.as_ref(), constraint)?;
        let rewards = weighted_rewards(st, tenant, s.rewards.as_deref().unwrap_or(&[]))?;
        let best_of = s.best_of.unwrap_or(n);
        let rank_by_logprob = best_of > n && rewards.is_empty();
        let extra = match &s.extra {
            Some(m) => Value::Object(m.clone()).to_string(),
            None => "{}".into(),
        };
        let stop = s.stop.clone().into_vec();
        if stop.len() > MAX_STOP_STRINGS || stop.iter().any(String::is_empty) {
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
    pub(super) fn submit(
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

    /// How many sequences the plan runs.
    pub(super) fn total(&self) -> usize {
        self.prompts.len() * self.per_prompt
    }

    /// The prompt of sequence `i`.
    pub(super) fn prompt_of(&self, i: usize) -> &RenderedPrompt {
        &self.prompts[i / self.per_prompt]
    }
}

/// Whether a streamed request asked for a closing usage chunk.
pub(super) fn include_usage(s: &Sampling) -> bool {
    s.stream_options.as_ref().is_some_and(|o| o.include_usage)
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

/// A request's `messages` as the chat template reads them.
///
/// Legacy function calling maps onto tool calls: an assistant message's
/// `function_call` becomes a call with an id of its own, and a `function`
/// message (named by `name`) answers the latest such call.
pub(crate) fn chat_messages(messages: &[InMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "at least one message is required",
        ));
    }
    let mut legacy_call: Option<String> = None;
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            // OpenAI's newer name for the system role.
            "developer" => "system",
            "function" => "tool",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].role"),
                    format!(
                        "must be system, developer, user, assistant, tool or function, got `{other}`"
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
        if m.function_call.is_some() && role != "assistant" {
            return Err(ApiError::invalid_param(
                &format!("messages[{i}].function_call"),
                "only an assistant message makes a function call",
            ));
        }
        let mut tool_call_id = m.tool_call_id.clone();
        if m.role == "function" {
            if m.name.is_none() {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].name"),
                    "a function message names the function it answers: `name` is required",
                ));
            }
            tool_call_id = tool_call_id.or_else(|| legacy_call.take());
            if tool_call_id.is_none() {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}]"),
                    "a function message answers an assistant message's `function_call`, and none comes before it",
                ));
            }
        }
        if role == "tool" && tool_call_id.is_none() {
            return Err(ApiError::invalid_param(
                &format!("messages[{i}].tool_call_id"),
                "a tool message answers a call: `tool_call_id` is required",
            ));
        }
        let mut tool_calls: Vec<ToolCall> = m
            .tool_calls
            .iter()
            .flatten()
            .map(|c| ToolCall::new(&c.id, &c.function.name, &c.function.arguments))
            .collect();
        if let Some(f) = &m.function_call {
            let id = format!("call_legacy_{i}");
            tool_calls.push(ToolCall::new(&id, &f.name, &f.arguments));
            legacy_call = Some(id);
        }
        out.push(ChatMessage {
            role: role.to_owned(),
            content,
            reasoning_content: m.reasoning_content.clone(),
            tool_calls,
            tool_call_id,
            name: m.name.clone(),
        });
    }
    Ok(out)
}

/// Map legacy function calling (`functions`, `function_call`) onto
/// `tools` and `tool_choice`. Returns whether the request used it, in
/// which case the reply shows its call as `message.function_call`.
pub(super) fn map_legacy_functions(req: &mut ChatRequest) -> Result<bool, ApiError> {
    let Some(functions) = req.functions.take() else {
        if req.function_call.is_some() {
            return Err(ApiError::invalid_param(
                "function_call",
                "`function_call` chooses among `functions`, and the request has none",
            ));
        }
        return Ok(false);
    };
    if req.tools.is_some() || req.tool_choice.is_some() {
        return Err(ApiError::invalid_param(
            "functions",
            "`functions` is the legacy form of `tools`: send one or the other",
        ));
    }
    req.tools = Some(
        functions
            .into_iter()
            .map(|function| ToolDef {
                kind: "function".into(),
                function,
            })
            .collect(),
    );
    req.tool_choice = match req.function_call.take() {
        None => None,
        Some(Value::String(s)) if s == "none" || s == "auto" => Some(Value::String(s)),
        Some(Value::Object(o)) if o.get("name").is_some_and(Value::is_string) => {
            Some(json!({"type": "function", "function": {"name": o["name"]}}))
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "function_call",
                "must be `none`, `auto` or {\"name\": ...}",
            ));
        }
    };
    // The legacy API makes one call per reply.
    req.parallel_tool_calls = Some(false);
    Ok(true)
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

/// A chat request as read before it is admitted.
pub(super) struct ChatInput {
    messages: Vec<ChatMessage>,
    /// The tools the model is shown: none under `tool_choice: "none"`.
    tools: Vec<ToolSpec>,
    logprobs: Option<usize>,
    /// The request used legacy `functions`.
    legacy_functions: bool,
}

impl ChatInput {
    /// Read `req`, mapping legacy function calling onto its tools first.
    pub(super) fn read(req: &mut ChatRequest) -> Result<ChatInput, ApiError> {
        let legacy_functions = map_legacy_functions(req)?;
        let messages = chat_messages(&req.messages)?;
        let tools = tool_specs(req)?;
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
        Ok(ChatInput {
            messages,
            tools: if tool_choice_none { Vec::new() } else { tools },
            logprobs,
            legacy_functions,
        })
    }

    /// The plan of the chat, and how its replies are split into content,
    /// reasoning and tool calls.
    pub(super) fn plan(
        self,
        st: &AppState,
        tenant: &Tenant,
        req: &ChatRequest,
    ) -> Result<(Plan, Split), ApiError> {
        let tools = self.tools;
        let prompt = Prompt::Chat {
            messages: self.messages,
            tools: tools.clone(),
        };
        let (text, ids) = st.engine.render_prompt(&prompt)?;
        let split = Split {
            tools: (!tools.is_empty()).then_some(st.engine.tool_format),
            reasoning_opened: text.as_deref().is_some_and(prompt_opens_reasoning),
            one_call: req.parallel_tool_calls == Some(false),
            legacy_functions: self.legacy_functions,
        };
        // An upstream enforces the format itself (checked here after);
        // the local model is steered by the JSON sampler.
        let upstream = st.scheduler.is_upstream();
        let structured = match &req.response_format {
            Some(f) if upstream => structured_format(f)?,
            _ => None,
        };
        let format = match &req.response_format {
            Some(f) if !upstream => format_steering(st, tenant, f)?,
            _ => None,
        };
        let constraint = match tool_call_steering(st, tenant, req.tool_choice.as_ref(), &tools)? {
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
        if max_tokens == Some(0) {
            let param = match req.max_completion_tokens {
                Some(_) => "max_completion_tokens",
                None => "max_tokens",
            };
            return Err(ApiError::invalid_param(param, "must be at least 1"));
        }
        let mut plan = Plan::new(
            st,
            tenant,
            vec![RenderedPrompt { text, ids }],
            &req.sampling,
            max_tokens,
            self.logprobs,
            constraint,
        )?;
        plan.request.structured = structured;
        Ok((plan, split))
    }
}

// ---------------------------------------------------------------- completions

/// A legacy completion request's prompts, checked before it is admitted.
pub(super) fn completion_prompts(req: &CompletionRequest) -> Result<Vec<Prompt>, ApiError> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "this model does not support `suffix` (fill-in-the-middle)",
        ));
    }
    if req.echo && req.sampling.stream {
        return Err(ApiError::invalid_param("echo", "echo cannot be streamed"));
    }
    let text = |t: &String| Prompt::Text {
        text: t.clone(),
        add_special_tokens: true,
    };
    let prompts: Vec<Prompt> = match &req.prompt {
        PromptInput::Text(t) => vec![text(t)],
        PromptInput::Texts(ts) => ts.iter().map(text).collect(),
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
    Ok(prompts)
}

/// A JSON `response_format` as the object an upstream engine enforces
/// (its schema checked to compile, as the output will be checked against
/// it); `None` for text.
fn structured_format(f: &crate::api::ResponseFormat) -> Result<Option<Value>, ApiError> {
    let format = structured(f)?;
    if let Some(schema) = format.as_ref().map(|f| &f["json_schema"]["schema"])
        && !schema.is_null()
    {
        jsonschema::validator_for(schema).map_err(|e| {
            ApiError::invalid_param("response_format.json_schema.schema", e.to_string())
        })?;
    }
    Ok(format)
}

/// The plan of a legacy completion of `prompts`: each rendered, and
/// decoded back to text when it came as tokens (rewards and `echo` read
/// it).
pub(super) fn completion_plan(
    st: &AppState,
    tenant: &Tenant,
    req: &CompletionRequest,
    prompts: &[Prompt],
) -> Result<Plan, ApiError> {
    let mut rendered = Vec::new();
    for p in prompts {
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
    // `max_tokens: 0` only scores (with `echo` and `logprobs`: the
    // prompt's log-probabilities), as prompt-scoring clients ask.
    let max_tokens = Some(req.sampling.max_tokens.unwrap_or(DEFAULT_COMPLETION_TOKENS));
    let (constraint, structured) = match &req.response_format {
        Some(f) if st.scheduler.is_upstream() => (None, structured_format(f)?),
        Some(f) => (format_steering(st, tenant, f)?, None),
        None => (None, None),
    };
    let mut plan = Plan::new(
        st,
        tenant,
        rendered,
        &req.sampling,
        max_tokens,
        req.logprobs,
        constraint,
    )?;
    plan.request.structured = structured;
    if req.echo {
        plan.request.prompt_logprobs = req.logprobs;
    }
    Ok(plan)
}
