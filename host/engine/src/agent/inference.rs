//! `deepwasm:plugin/inference` for agents: model turns through the chat
//! template, with tools, inside the run's budgets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use deepwasm_model::{ChatMessage, ToolCallFormat, ToolSpec, toolcall::prompt_opens_reasoning};
use deepwasm_plugins::{InferenceAccess, inference, types};

use super::constrain::{CallSampler, Watch, Watched};
use super::{AgentEvent, AgentFailure, ModelTurn, RunState, millis_of};
use crate::plugin_sampler::{MissPolicy, PluginSampler};
use crate::request::{Completion, Delta, FinishReason, GenerateError, GenerateRequest, Prompt};
use crate::sampler::{BuiltinSampler, Sampler};
use crate::sampling::SamplingParams;

pub(super) struct Inference {
    run: Arc<RunState>,
}

impl Inference {
    pub(super) fn new(run: Arc<RunState>) -> Self {
        Inference { run }
    }
}

/// One turn's generated reply before it is shaped for the agent.
struct Reply {
    text: String,
    tokens: Vec<u32>,
    finish: FinishReason,
    prompt_tokens: usize,
    completion_tokens: usize,
    constrained: bool,
}

/// How a turn treats tool calls.
#[derive(Clone, Debug, PartialEq)]
enum Calls {
    /// No tools offered.
    Off,
    /// Offered; the model decides, and a call it begins is written under
    /// the grammar when the host has the sampler for it.
    Auto,
    /// A call is written under the grammar: to any tool, or the named one.
    Forced(Option<String>),
}

impl InferenceAccess for Inference {
    fn model(&self) -> String {
        self.run.host.generator.engine().name.clone()
    }

    fn chat(
        &self,
        messages: Vec<types::Message>,
        options: inference::GenerateOptions,
    ) -> Result<inference::ChatResponse, types::Error> {
        let count = messages.len();
        self.turn("chat", count, |step, max_tokens| {
            self.chat_reply(step, max_tokens, &messages, &options)
        })
        .map(|(reply, parsed)| inference::ChatResponse {
            message: parsed,
            finish_reason: finish_reason(&reply),
            usage: usage(&reply),
        })
    }

    fn complete(
        &self,
        prompt: String,
        options: inference::GenerateOptions,
    ) -> Result<inference::Completion, types::Error> {
        self.turn("complete", 0, |_, max_tokens| {
            self.complete_reply(max_tokens, &prompt, &options)
        })
        .map(|(reply, _)| inference::Completion {
            finish_reason: finish_reason(&reply),
            usage: usage(&reply),
            text: reply.text,
            tokens: reply.tokens,
        })
    }
}

impl Inference {
    /// One model turn: the budgets checked, `generate` run with the turn's
    /// step and token allowance, its result counted and recorded.
    fn turn(
        &self,
        kind: &'static str,
        messages: usize,
        generate: impl FnOnce(u32, usize) -> Result<(Reply, types::Message), types::Error>,
    ) -> Result<(Reply, types::Message), types::Error> {
        let run = &self.run;
        if let Err(refusal) = run.check_live() {
            return Err(refusal.unwrap_or_else(stopped));
        }
        let step = run.steps.load(Ordering::Relaxed) + 1;
        let refuse = |error: types::Error| {
            run.emit(AgentEvent::ModelError {
                step,
                error: error.clone().into(),
            });
            error
        };
        if step > run.budgets.max_steps {
            return Err(refuse(run.exhaust(AgentFailure::StepBudget {
                max_steps: run.budgets.max_steps,
            })));
        }
        let used = run.completion_tokens.load(Ordering::Relaxed);
        let left = run.budgets.max_tokens.saturating_sub(used);
        if left == 0 {
            return Err(refuse(run.exhaust(AgentFailure::TokenBudget {
                max_tokens: run.budgets.max_tokens,
            })));
        }
        run.steps.store(step, Ordering::Relaxed);
        let started = Instant::now();
        let max_tokens = usize::try_from(left).unwrap_or(usize::MAX);
        let (reply, message) = generate(step, max_tokens).map_err(refuse)?;
        run.prompt_tokens
            .fetch_add(reply.prompt_tokens as u64, Ordering::Relaxed);
        run.completion_tokens
            .fetch_add(reply.completion_tokens as u64, Ordering::Relaxed);
        run.emit(AgentEvent::ModelTurn(ModelTurn {
            step,
            kind,
            messages,
            content: message.content.clone(),
            reasoning: message.reasoning.clone(),
            tool_calls: message
                .tool_calls
                .iter()
                .map(|c| deepwasm_model::ToolCall::new(&c.id, &c.name, &c.arguments))
                .collect(),
            finish_reason: finish_name(&reply, &message),
            constrained: reply.constrained,
            prompt_tokens: reply.prompt_tokens as u32,
            completion_tokens: reply.completion_tokens as u32,
            elapsed_ms: millis_of(started.elapsed()),
        }));
        Ok((reply, message))
    }

    fn chat_reply(
        &self,
        step: u32,
        budget_left: usize,
        messages: &[types::Message],
        options: &inference::GenerateOptions,
    ) -> Result<(Reply, types::Message), types::Error> {
        let engine = self.run.host.generator.engine();
        let tools = options
            .tools
            .iter()
            .map(tool_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let calls = match &options.tool_choice {
            inference::ToolChoice::None => Calls::Off,
            inference::ToolChoice::Auto if tools.is_empty() => Calls::Off,
            inference::ToolChoice::Auto => Calls::Auto,
            inference::ToolChoice::Required if tools.is_empty() => {
                return Err(types::Error::InvalidInput(
                    "tool-choice `required` needs at least one tool".into(),
                ));
            }
            inference::ToolChoice::Required => Calls::Forced(None),
            inference::ToolChoice::Named(name) => {
                if !tools.iter().any(|t| &t.name == name) {
                    return Err(types::Error::InvalidInput(format!(
                        "tool-choice names `{name}`, which is not among the tools offered"
                    )));
                }
                Calls::Forced(Some(name.clone()))
            }
        };
        if options.sampler.is_some() && matches!(calls, Calls::Forced(_)) {
            return Err(types::Error::InvalidInput(
                "a sampler plugin cannot be combined with a required tool call, which is \
                 written under the tool-call grammar"
                    .into(),
            ));
        }
        let offered = if calls == Calls::Off {
            Vec::new()
        } else {
            tools
        };
        let (text, prompt) = render(engine, messages, &offered)?;
        let opened = prompt_opens_reasoning(&text);
        let req = self.request(Prompt::Tokens(prompt.clone()), budget_left, options)?;
        let steers = self.run.host.generator.steers();
        let call_sampler = self.run.host.call_sampler.as_ref().filter(|_| steers);
        let reply = match (&calls, call_sampler) {
            (Calls::Forced(_), None) if !steers => {
                return Err(types::Error::Unavailable(
                    "a required tool call is written under the tool-call grammar, token by \
                     token, and this host generates on an upstream engine whose logits it \
                     cannot steer; use tool-choice `auto`"
                        .into(),
                ));
            }
            (Calls::Forced(_), None) => {
                return Err(types::Error::Unavailable(
                    "a required tool call is written under the tool-call grammar, and this \
                     host has no JSON-schema sampler to write it with"
                        .into(),
                ));
            }
            (Calls::Forced(named), Some(_)) => {
                self.forced_call(req, &prompt, opened, &offered, named.as_deref())?
            }
            (Calls::Auto, Some(_)) if options.sampler.is_none() => {
                self.watched(req, &prompt, opened, &offered)?
            }
            _ => {
                let sampler = self.sampler(options)?;
                reply_of(self.generate(req, sampler)?, false)
            }
        };
        let format = (calls != Calls::Off).then_some(engine.tool_format);
        let message = parse(&reply.text, format, opened, step);
        Ok((reply, message))
    }

    fn complete_reply(
        &self,
        budget_left: usize,
        prompt: &str,
        options: &inference::GenerateOptions,
    ) -> Result<(Reply, types::Message), types::Error> {
        if !matches!(
            options.tool_choice,
            inference::ToolChoice::Auto | inference::ToolChoice::None
        ) {
            return Err(types::Error::InvalidInput(
                "`complete` continues raw text and cannot require a tool call; use `chat`".into(),
            ));
        }
        let req = self.request(
            Prompt::Text {
                text: prompt.to_owned(),
                add_special_tokens: true,
            },
            budget_left,
            options,
        )?;
        let sampler = self.sampler(options)?;
        let reply = reply_of(self.generate(req, sampler)?, false);
        let message = types::Message {
            role: types::Role::Assistant,
            content: reply.text.clone(),
            reasoning: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        };
        Ok((reply, message))
    }

    /// The generation request of a turn: the agent's parameters, its token
    /// limit within the run's.
    fn request(
        &self,
        prompt: Prompt,
        budget_left: usize,
        options: &inference::GenerateOptions,
    ) -> Result<GenerateRequest, types::Error> {
        let params = sampling_params(&options.params)?;
        let wanted = options
            .max_tokens
            .unwrap_or(self.run.budgets.turn_tokens)
            .max(1) as usize;
        Ok(GenerateRequest {
            max_tokens: wanted.min(budget_left),
            params,
            stop: options.stop.clone(),
            ..GenerateRequest::new(prompt)
        })
    }

    /// The sampler the agent named, or the built-in one.
    fn sampler(
        &self,
        options: &inference::GenerateOptions,
    ) -> Result<Box<dyn Sampler>, types::Error> {
        let Some(wanted) = &options.sampler else {
            return Ok(Box::new(BuiltinSampler));
        };
        let Some(resolve) = &self.run.host.samplers else {
            return Err(types::Error::Unavailable(
                "this host offers no sampler plugins to agents".into(),
            ));
        };
        let plugin = resolve(&wanted.plugin).map_err(types::Error::from)?;
        Ok(Box::new(PluginSampler::new(
            plugin,
            &wanted.config,
            self.run.host.sampler_step_budget,
            MissPolicy::default(),
        )))
    }

    /// Generate within the run's deadline and stop flag.
    fn generate(
        &self,
        req: GenerateRequest,
        sampler: Box<dyn Sampler>,
    ) -> Result<Completion, types::Error> {
        let run = self.run.clone();
        let cancelled = Arc::new(AtomicBool::new(false));
        let cancel = cancelled.clone();
        let watch = Box::new(move |_: &Delta| {
            if run.past_deadline() || run.stop.load(Ordering::Relaxed) {
                cancel.store(true, Ordering::Relaxed);
            }
        });
        let result = self
            .run
            .host
            .generator
            .run(req, sampler, watch, cancelled.clone());
        result.map_err(|e| match e {
            GenerateError::Cancelled if self.run.past_deadline() => {
                self.run.exhaust(self.run.deadline_failure())
            }
            GenerateError::Cancelled => stopped(),
            GenerateError::Invalid(m) | GenerateError::Template(m) | GenerateError::Tokenize(m) => {
                types::Error::InvalidInput(m)
            }
            e @ (GenerateError::PromptTooLong { .. } | GenerateError::CacheBudget { .. }) => {
                types::Error::InvalidInput(e.to_string())
            }
            GenerateError::Sampler(e) => match e.source {
                Some(deepwasm_plugins::PluginError::Guest { error, .. }) => {
                    types::Error::from(error)
                }
                _ => types::Error::Failed(e.to_string()),
            },
            e @ (GenerateError::Model(_)
            | GenerateError::Overloaded { .. }
            | GenerateError::DeviceMemory(_)
            | GenerateError::Upstream { .. }) => types::Error::Failed(e.to_string()),
            GenerateError::Unsupported(m) => types::Error::InvalidInput(m),
        })
    }

    /// `tool-choice: auto` with the grammar at hand: generate freely, and
    /// if the model begins a call, stop there and have the call written
    /// again under the grammar.
    fn watched(
        &self,
        req: GenerateRequest,
        prompt: &[u32],
        opened: bool,
        tools: &[ToolSpec],
    ) -> Result<Reply, types::Error> {
        let engine = self.run.host.generator.engine();
        let watched = Watched::new();
        let watch = Watch::call_start(
            engine.tokenizer.clone(),
            engine.tool_format,
            opened,
            watched.clone(),
        );
        let free = self.generate(req.clone(), Box::new(watch))?;
        let Some(cut) = watched.cut() else {
            return Ok(reply_of(free, false));
        };
        self.continue_constrained(req, prompt, watched.text_before(cut), free, tools, None)
    }

    /// A required call: after the reasoning, if the prompt opened one, the
    /// reply is one call under the grammar.
    fn forced_call(
        &self,
        req: GenerateRequest,
        prompt: &[u32],
        opened: bool,
        tools: &[ToolSpec],
        named: Option<&str>,
    ) -> Result<Reply, types::Error> {
        if !opened {
            let sampler = self.call_sampler(tools, named)?;
            return Ok(reply_of(self.generate(req, sampler)?, true));
        }
        let engine = self.run.host.generator.engine();
        let watched = Watched::new();
        let watch = Watch::reasoning_end(engine.tokenizer.clone(), watched.clone());
        let thought = self.generate(req.clone(), Box::new(watch))?;
        let Some(cut) = watched.cut() else {
            // The reasoning never ended: there is no room for the call.
            return Ok(reply_of(thought, false));
        };
        self.continue_constrained(req, prompt, watched.text_before(cut), thought, tools, named)
    }

    /// The second part of a turn: `before` (generated freely) followed by
    /// one call under the grammar. `first` is the free part's completion,
    /// for the counts.
    fn continue_constrained(
        &self,
        req: GenerateRequest,
        prompt: &[u32],
        before: String,
        first: Completion,
        tools: &[ToolSpec],
        named: Option<&str>,
    ) -> Result<Reply, types::Error> {
        let engine = self.run.host.generator.engine();
        let mut ids = prompt.to_vec();
        ids.extend(
            engine
                .tokenizer
                .encode(&before, false)
                .map_err(|e| types::Error::Failed(format!("cannot tokenize the reply: {e}")))?,
        );
        let spent = first.usage.completion_tokens;
        if spent >= req.max_tokens {
            return Ok(reply_of(first, false));
        }
        let second_req = GenerateRequest {
            prompt: Prompt::Tokens(ids.clone()),
            max_tokens: req.max_tokens - spent,
            ..req
        };
        let sampler = self.call_sampler(tools, named)?;
        let second = self.generate(second_req, sampler)?;
        let mut reply = reply_of(second, true);
        reply.text = before + &reply.text;
        reply.prompt_tokens = first.usage.prompt_tokens;
        reply.completion_tokens += spent;
        Ok(reply)
    }

    fn call_sampler(
        &self,
        tools: &[ToolSpec],
        named: Option<&str>,
    ) -> Result<Box<dyn Sampler>, types::Error> {
        let engine = self.run.host.generator.engine();
        let plugin = self.run.host.call_sampler.clone().ok_or_else(|| {
            types::Error::Unavailable("this host has no JSON-schema sampler".into())
        })?;
        let sampler = CallSampler::new(
            engine.tokenizer.clone(),
            engine.tool_format,
            tools.to_vec(),
            named,
            plugin,
        )
        .map_err(|e| types::Error::InvalidInput(e.to_string()))?;
        Ok(Box::new(sampler))
    }
}

fn stopped() -> types::Error {
    types::Error::Unavailable("the run was stopped".into())
}

fn reply_of(c: Completion, constrained: bool) -> Reply {
    Reply {
        text: c.text,
        tokens: c.tokens,
        finish: c.finish_reason,
        prompt_tokens: c.usage.prompt_tokens,
        completion_tokens: c.usage.completion_tokens,
        constrained,
    }
}

fn usage(reply: &Reply) -> types::Usage {
    types::Usage {
        prompt_tokens: reply.prompt_tokens.try_into().unwrap_or(u32::MAX),
        completion_tokens: reply.completion_tokens.try_into().unwrap_or(u32::MAX),
    }
}

fn finish_reason(reply: &Reply) -> inference::FinishReason {
    match reply.finish {
        FinishReason::Stop => inference::FinishReason::Stop,
        FinishReason::Length => inference::FinishReason::Length,
        // The call grammar ends the turn once the call is written.
        FinishReason::SamplerStop if reply.constrained => inference::FinishReason::ToolCalls,
        FinishReason::SamplerStop => inference::FinishReason::Sampler,
    }
}

fn finish_name(reply: &Reply, message: &types::Message) -> &'static str {
    if !message.tool_calls.is_empty() {
        return "tool_calls";
    }
    match finish_reason(reply) {
        inference::FinishReason::Stop => "stop",
        inference::FinishReason::Length => "length",
        inference::FinishReason::ToolCalls => "tool_calls",
        inference::FinishReason::Sampler => "sampler",
    }
}

/// The assistant's message: content, reasoning and, when tools were
/// offered, the calls in the model's format, with ids unique in the run
/// (`call_<step>_<n>`).
fn parse(text: &str, format: Option<ToolCallFormat>, opened: bool, step: u32) -> types::Message {
    let splitter = match format {
        Some(format) => deepwasm_model::OutputSplitter::new(format, opened)
            .with_id_prefix(format!("call_{step}_")),
        None => deepwasm_model::OutputSplitter::reasoning_only(opened),
    };
    let mut splitter = splitter;
    let mut pieces = splitter.push(text);
    let (rest, calls) = splitter.finish();
    pieces.extend(rest);
    let mut content = String::new();
    let mut reasoning = String::new();
    for piece in pieces {
        match piece {
            deepwasm_model::Piece::Content(t) => content.push_str(&t),
            deepwasm_model::Piece::Reasoning(t) => reasoning.push_str(&t),
        }
    }
    types::Message {
        role: types::Role::Assistant,
        content,
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        tool_calls: calls
            .into_iter()
            .map(|c| types::ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        tool_call_id: None,
        name: None,
    }
}

/// The prompt's text and tokens. Assistant turns that only call tools go
/// to the template with `None` content, as the OpenAI API sends them
/// (DeepSeek's template tests for it); a template that cannot take that
/// (Qwen's) gets an empty string instead.
fn render(
    engine: &crate::Engine,
    messages: &[types::Message],
    tools: &[ToolSpec],
) -> Result<(String, Vec<u32>), types::Error> {
    let mut chat: Vec<ChatMessage> = messages.iter().map(chat_message).collect();
    let attempt = |chat: &[ChatMessage]| {
        engine.render_prompt(&Prompt::Chat {
            messages: chat.to_vec(),
            tools: tools.to_vec(),
        })
    };
    let rendered = match attempt(&chat) {
        Err(GenerateError::Template(_)) if chat.iter().any(|m| m.content.is_none()) => {
            for m in &mut chat {
                m.content.get_or_insert_with(String::new);
            }
            attempt(&chat)
        }
        other => other,
    };
    match rendered {
        Ok((text, ids)) => Ok((text.unwrap_or_default(), ids)),
        Err(e) => Err(types::Error::InvalidInput(e.to_string())),
    }
}

fn chat_message(m: &types::Message) -> ChatMessage {
    let role = match m.role {
        types::Role::System => "system",
        types::Role::User => "user",
        types::Role::Assistant => "assistant",
        types::Role::Tool => "tool",
    };
    let calls_only = !m.tool_calls.is_empty() && m.content.is_empty();
    ChatMessage {
        role: role.to_owned(),
        content: (!calls_only).then(|| m.content.clone()),
        reasoning_content: m.reasoning.clone(),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| deepwasm_model::ToolCall::new(&c.id, &c.name, &c.arguments))
            .collect(),
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
    }
}

/// A tool as the model is shown it; its parameters must be a JSON object.
pub(super) fn tool_spec(t: &types::ToolSpec) -> Result<ToolSpec, types::Error> {
    let parameters: serde_json::Value = if t.parameters.trim().is_empty() {
        serde_json::json!({"type": "object"})
    } else {
        serde_json::from_str(&t.parameters).map_err(|e| {
            types::Error::InvalidInput(format!(
                "the parameters of the tool `{}` are not JSON: {e}",
                t.name
            ))
        })?
    };
    if !parameters.is_object() {
        return Err(types::Error::InvalidInput(format!(
            "the parameters of the tool `{}` must be a JSON Schema object",
            t.name
        )));
    }
    Ok(ToolSpec {
        name: t.name.clone(),
        description: t.description.clone(),
        parameters,
    })
}

/// The agent's sampling parameters over the host's defaults, checked.
fn sampling_params(p: &types::SamplingParams) -> Result<SamplingParams, types::Error> {
    let d = SamplingParams::default();
    let params = SamplingParams {
        temperature: p.temperature.unwrap_or(d.temperature),
        top_k: p.top_k.map_or(d.top_k, |k| k as usize),
        top_p: p.top_p.unwrap_or(d.top_p),
        min_p: p.min_p.unwrap_or(d.min_p),
        repetition_penalty: p.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: p.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: p.frequency_penalty.unwrap_or(d.frequency_penalty),
        logit_bias: Vec::new(),
        seed: p.seed,
    };
    params
        .validate()
        .map_err(|e| types::Error::InvalidInput(e.to_string()))?;
    Ok(params)
}
