//! A sampler plugin as a [`Sampler`]: the model's tokenizer as the plugin's
//! `tokenizer` import, a per-step time budget with a policy for misses.
//!
//! The plugin runs on a thread of its own, so nothing it does holds the
//! batch: its sequence is opened there (setup included) while the batch
//! goes on, and each step's call is sent to it and collected later. A step
//! waits for the answer at most the step budget (25 ms by default, as AICI
//! had), counted from when the call was sent; when it is late, the policy
//! decides:
//!
//! * [`MissPolicy::Wait`] (the default): the sequence sits steps out until
//!   the answer comes. A plugin's mask is never bypassed; the call ends at
//!   its hard deadline at the latest, and then so does the request.
//! * [`MissPolicy::Fail`]: the request ends with an error naming the plugin.
//! * [`MissPolicy::Fallback`]: this step is sampled by the built-in sampler
//!   with the request's parameters; the plugin's late answer is dropped (the
//!   tokens appended meanwhile reach it with its next call). After
//!   `max_misses` misses the request ends with an error. For plugins whose
//!   decisions are preferences, not constraints.
//!
//! A call still running at the plugin's hard deadline is interrupted, which
//! ends the sequence with the typed error. A trapping plugin ends only its
//! own request.
//!
//! This is the one place the plugin's WIT types meet the engine's: its
//! decisions become [`Decision`]s here (token sets normalised on the way,
//! [`decision_from_wit`]), and the request's parameters become the WIT
//! record its `open` takes.
//!
//! A plugin's pool of instances ([`SamplerPlugin`]) is made in one place,
//! [`SamplerHosting`]: the model's tokenizer as its import, the limits of a
//! step budget and policy, and the meter its calls count against. The
//! server, the CLI, agents, benchmarks and tests all go through it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use deepwasm_model::{SpecialKind, Tokenizer};
use deepwasm_plugins::{
    self as wit, Capabilities, Limits, LoadError, LogitsHandle, Meter, Plugin, PluginError,
    SamplerPlugin, Sandbox, SetTooLarge, TokenizerAccess, tokenizer as wit_tokenizer,
};

use crate::engine::Engine;
use crate::sampler::{Decision, Prepared, Reply, Sampler, SamplerError};
use crate::sampling::{
    SampleSpec, SamplingOverrides, SamplingParams, TokenBias, TokenRange, TokenSet,
};

/// The default time a step may wait for a sampler plugin.
pub const DEFAULT_STEP_BUDGET: Duration = Duration::from_millis(25);

/// What a missed step budget does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissPolicy {
    /// Sit steps out until the answer comes (at most the hard deadline).
    #[default]
    Wait,
    /// End the request with an error.
    Fail,
    /// Sample the step with the built-in sampler; end the request after
    /// more than `max_misses` misses.
    Fallback { max_misses: u32 },
}

/// How many step budgets a plugin call may run, under the wait and
/// fallback policies, before it is interrupted: long enough that a slow
/// step is absorbed and the plugin keeps its state, short enough that a
/// stuck one is cut.
pub const HARD_DEADLINE_STEPS: u32 = 8;

impl MissPolicy {
    /// The hard deadline of one call under `budget`: the budget itself when
    /// a miss fails the request, `HARD_DEADLINE_STEPS` budgets otherwise.
    pub fn hard_deadline(self, budget: Duration) -> Duration {
        match self {
            MissPolicy::Fail => budget,
            MissPolicy::Wait | MissPolicy::Fallback { .. } => budget * HARD_DEADLINE_STEPS,
        }
    }
}

/// The limits of a sampler plugin serving under `budget` and `policy`: the
/// sampler defaults, with the per-call deadline at the policy's hard
/// deadline. Each call carries its own deadline too (the shorter one
/// holds), so one pool of instances, made for the longest budget a tenant
/// may ask for, serves every shorter budget and every policy.
pub fn sampler_limits(budget: Duration, policy: MissPolicy) -> Limits {
    let mut limits = Limits::for_world(wit::World::Sampler);
    limits.call_deadline = policy.hard_deadline(budget);
    limits
}

/// How a sampler plugin is hosted on a model: what its `tokenizer` import
/// sees, its limits, and whose meter its calls count against. Cheap to
/// clone; [`SamplerHosting::load`] makes a plugin's pool of instances, and
/// [`PluginSampler::new`] a request's sampler from that pool.
#[derive(Clone)]
pub struct SamplerHosting {
    tokenizer: Arc<ModelTokenizer>,
    limits: Limits,
    meter: Option<Arc<Meter>>,
}

impl SamplerHosting {
    /// Plugins seeing `tokenizer`, under the limits of `budget` and
    /// `policy` ([`sampler_limits`]); the pool made for the longest budget
    /// a caller may ask for serves every shorter one.
    pub fn new(tokenizer: Arc<ModelTokenizer>, budget: Duration, policy: MissPolicy) -> Self {
        SamplerHosting {
            tokenizer,
            limits: sampler_limits(budget, policy),
            meter: None,
        }
    }

    /// Plugins on `engine`'s model ([`ModelTokenizer::for_engine`]).
    pub fn for_engine(engine: &Engine, budget: Duration, policy: MissPolicy) -> Self {
        Self::new(Arc::new(ModelTokenizer::for_engine(engine)), budget, policy)
    }

    /// Change a limit: a tenant's memory, a longer setup for a benchmark.
    pub fn with_limits(mut self, change: impl FnOnce(&mut Limits)) -> Self {
        change(&mut self.limits);
        self
    }

    /// Count the plugins' calls, fuel and time on `meter` (a tenant's).
    pub fn with_meter(mut self, meter: Arc<Meter>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// The sandbox every instance runs in.
    pub fn sandbox(&self) -> Sandbox {
        let sandbox = Sandbox::new(self.limits.clone()).with_caps(Capabilities {
            tokenizer: Some(self.tokenizer.clone()),
            ..Capabilities::default()
        });
        match &self.meter {
            Some(meter) => sandbox.with_meter(meter.clone()),
            None => sandbox,
        }
    }

    /// `plugin`'s pool of instances in this sandbox; fails when `plugin` is
    /// not a sampler.
    pub fn load(&self, plugin: Plugin) -> Result<SamplerPlugin, LoadError> {
        SamplerPlugin::new(plugin, self.sandbox())
    }
}

/// The model's tokenizer as the `tokenizer` interface shows it to plugins.
#[derive(Clone)]
pub struct ModelTokenizer {
    tokenizer: Arc<Tokenizer>,
    model: String,
    vocab_size: u32,
}

impl ModelTokenizer {
    /// `vocab_size` is the model's number of logits (it may exceed the
    /// tokenizer's: DeepSeek-V3 pads its vocabulary to 129,280).
    pub fn new(tokenizer: Arc<Tokenizer>, model: &str, vocab_size: usize) -> Self {
        ModelTokenizer {
            tokenizer,
            model: model.to_owned(),
            vocab_size: vocab_size as u32,
        }
    }

    /// `engine`'s tokenizer, name and number of logits.
    pub fn for_engine(engine: &Engine) -> Self {
        Self::new(
            engine.tokenizer.clone(),
            &engine.name,
            engine.model.info().vocab_size,
        )
    }
}

impl TokenizerAccess for ModelTokenizer {
    fn info(&self) -> wit_tokenizer::TokenizerInfo {
        wit_tokenizer::TokenizerInfo {
            model: self.model.clone(),
            vocab_size: self.vocab_size,
            bos: self.tokenizer.bos(),
            eos: self.tokenizer.eos().to_vec(),
        }
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .unwrap_or_default()
    }

    fn decode(&self, tokens: &[u32], skip_special_tokens: bool) -> String {
        // Unknown ids decode to U+FFFD, as the WIT promises for bad input.
        self.tokenizer
            .decode(tokens, skip_special_tokens)
            .unwrap_or_else(|_| {
                let mut d = self.tokenizer.detokenizer(skip_special_tokens);
                let mut s: String = tokens.iter().map(|&t| d.push(t)).collect();
                s.push_str(&d.finish());
                s
            })
    }

    fn token_bytes(&self, token: u32) -> Option<Vec<u8>> {
        self.tokenizer.token_bytes(token).map(<[u8]>::to_vec)
    }

    fn token_id(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_id(text)
    }

    fn special_tokens(&self) -> Vec<wit_tokenizer::SpecialToken> {
        self.tokenizer
            .special_tokens()
            .iter()
            .map(|t| wit_tokenizer::SpecialToken {
                id: t.id,
                text: t.text.clone(),
                kind: match t.kind {
                    SpecialKind::Bos => wit_tokenizer::SpecialKind::Bos,
                    SpecialKind::Eos => wit_tokenizer::SpecialKind::Eos,
                    SpecialKind::Pad => wit_tokenizer::SpecialKind::Pad,
                    SpecialKind::Other => wit_tokenizer::SpecialKind::Other,
                },
            })
            .collect()
    }
}

enum Call {
    Prepare(u32, Vec<u32>),
    Decide(u32, LogitsHandle),
}

enum Answer {
    Opened(Result<(), PluginError>),
    Prepared(Result<Prepared, PluginError>),
    Decided(Result<Decision, PluginError>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Prepare,
    Decide,
}

/// The call the plugin is working on.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    phase: Phase,
    step: u32,
    sent: Instant,
    /// Given up on under the fallback policy: its answer is dropped.
    abandoned: bool,
}

/// The channels to a sequence's worker thread.
struct Worker {
    calls: Sender<Call>,
    answers: Receiver<Answer>,
}

/// One request's sampler plugin.
pub struct PluginSampler {
    name: String,
    plugin: SamplerPlugin,
    config: String,
    budget: Duration,
    policy: MissPolicy,
    misses: u32,
    worker: Option<Worker>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The worker has not yet said whether the sequence opened.
    opening: bool,
    in_flight: Option<InFlight>,
    /// Tokens appended while an abandoned call kept the plugin busy; they
    /// go with its next `prepare`.
    backlog: Vec<u32>,
    /// The step whose new tokens are in (or went out of) the backlog.
    tokens_of_step: Option<u32>,
}

impl Drop for PluginSampler {
    /// Close the sequence. When the worker is idle this is quick and the
    /// instance is back in its pool when the request is over; a worker
    /// still in a call is left to finish it (by its hard deadline at the
    /// latest) and then close, so dropping never waits on a plugin.
    fn drop(&mut self) {
        let busy = self.opening || self.in_flight.is_some();
        self.worker = None;
        if let Some(thread) = self.thread.take()
            && !busy
        {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for PluginSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSampler")
            .field("name", &self.name)
            .field("misses", &self.misses)
            .finish_non_exhaustive()
    }
}

impl PluginSampler {
    /// A sampler that will open a sequence of `plugin` with `config` (JSON)
    /// when generation begins. A call may run `policy.hard_deadline(budget)`
    /// at most, and never longer than the plugin's sandbox allows.
    pub fn new(plugin: SamplerPlugin, config: &str, budget: Duration, policy: MissPolicy) -> Self {
        PluginSampler {
            name: plugin.plugin().name().to_owned(),
            plugin,
            config: config.to_owned(),
            budget,
            policy,
            misses: 0,
            worker: None,
            thread: None,
            opening: false,
            in_flight: None,
            backlog: Vec::new(),
            tokens_of_step: None,
        }
    }

    /// Steps this request sampled with the built-in sampler because the
    /// plugin missed its budget.
    pub fn misses(&self) -> u32 {
        self.misses
    }

    fn error(&self, message: impl Into<String>, source: Option<PluginError>) -> SamplerError {
        SamplerError {
            sampler: self.name.clone(),
            message: message.into(),
            source,
        }
    }

    fn plugin_error(&self, e: PluginError) -> SamplerError {
        self.error("failed", Some(e))
    }

    fn stopped(&self) -> SamplerError {
        self.error("its worker stopped", None)
    }

    /// The step's answer for `phase`, sending the call first unless it is
    /// already in flight; waits until `until` at most, and never past the
    /// budget unless the policy is to wait.
    fn reply(
        &mut self,
        phase: Phase,
        step: u32,
        call: impl FnOnce(&mut Self) -> Call,
        until: Instant,
    ) -> Result<Reply<Answer>, SamplerError> {
        if self.worker.is_none() {
            return Err(self.error("no sequence is open", None));
        }
        if self.opening {
            match self.recv(until) {
                Ok(Answer::Opened(Ok(()))) => self.opening = false,
                Ok(Answer::Opened(Err(e))) => return Err(self.plugin_error(e)),
                Ok(_) => return Err(self.error("answered out of order", None)),
                Err(RecvTimeoutError::Timeout) => return Ok(Reply::Pending),
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped()),
            }
        }
        if let Some(f) = self.in_flight
            && f.abandoned
        {
            // The plugin is still busy with a call given up on; until it is
            // done, every step is another miss.
            match self.try_recv() {
                Ok(Answer::Prepared(Err(e)) | Answer::Decided(Err(e))) => {
                    self.in_flight = None;
                    return Err(self.error("failed after missing its step budget", Some(e)));
                }
                Ok(_) => self.in_flight = None,
                Err(TryRecvError::Empty) => return self.missed(phase),
                Err(TryRecvError::Disconnected) => return Err(self.stopped()),
            }
        }
        let f = match self.in_flight {
            Some(f) if f.phase == phase && f.step == step => f,
            Some(_) => {
                return Err(self.error("was asked a new step before it answered the last", None));
            }
            None => {
                let call = call(self);
                let sent = self
                    .worker
                    .as_ref()
                    .is_some_and(|w| w.calls.send(call).is_ok());
                if !sent {
                    return Err(self.stopped());
                }
                let f = InFlight {
                    phase,
                    step,
                    sent: Instant::now(),
                    abandoned: false,
                };
                self.in_flight = Some(f);
                f
            }
        };
        let budget_end = f.sent + self.budget;
        let wait_end = match self.policy {
            MissPolicy::Wait => until,
            _ => until.min(budget_end),
        };
        match self.recv(wait_end) {
            Ok(answer) => {
                self.in_flight = None;
                Ok(Reply::Ready(answer))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.stopped()),
            Err(RecvTimeoutError::Timeout)
                if self.policy == MissPolicy::Wait || Instant::now() < budget_end =>
            {
                Ok(Reply::Pending)
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(f) = &mut self.in_flight {
                    f.abandoned = true;
                }
                match self.policy {
                    MissPolicy::Fail => Err(self.error(
                        format!("missed its step budget of {} ms", self.budget.as_millis()),
                        None,
                    )),
                    _ => self.missed(phase),
                }
            }
        }
    }

    /// A step the plugin did not answer in time, under the fallback policy:
    /// the built-in sampler's answer, or the end once misses pile up.
    fn missed(&mut self, phase: Phase) -> Result<Reply<Answer>, SamplerError> {
        self.misses += 1;
        let max_misses = match self.policy {
            MissPolicy::Fallback { max_misses } => max_misses,
            MissPolicy::Wait | MissPolicy::Fail => 0,
        };
        let budget_ms = self.budget.as_millis();
        if self.misses > max_misses {
            return Err(self.error(
                format!(
                    "missed its step budget of {budget_ms} ms {} times",
                    self.misses
                ),
                None,
            ));
        }
        tracing::warn!(sampler = %self.name, "missed its step budget; the built-in sampler picks this step");
        Ok(Reply::Ready(match phase {
            Phase::Prepare => Answer::Prepared(Ok(Prepared::Decided(Decision::Sample(
                SampleSpec::default(),
            )))),
            Phase::Decide => Answer::Decided(Ok(Decision::Sample(SampleSpec::default()))),
        }))
    }

    fn recv(&self, until: Instant) -> Result<Answer, RecvTimeoutError> {
        let worker = self.worker.as_ref().ok_or(RecvTimeoutError::Disconnected)?;
        match until.checked_duration_since(Instant::now()) {
            Some(wait) if !wait.is_zero() => worker.answers.recv_timeout(wait),
            _ => worker.answers.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
        }
    }

    fn try_recv(&self) -> Result<Answer, TryRecvError> {
        let worker = self.worker.as_ref().ok_or(TryRecvError::Disconnected)?;
        worker.answers.try_recv()
    }
}

/// The worker: opens the plugin's sequence, then answers calls in order,
/// each under `deadline`, in the engine's types. Token sets in its answers
/// are normalised here, on the plugin's own time, to bitsets over `vocab`
/// tokens (when the plugin has a tokenizer to tell it), so that applying
/// them costs the batch one pass over the vocabulary however the plugin
/// wrote them.
fn serve(
    plugin: SamplerPlugin,
    open: (String, Vec<u32>, wit::SamplingParams),
    deadline: Duration,
    calls: Receiver<Call>,
    answers: Sender<Answer>,
) {
    let vocab = plugin
        .sandbox()
        .caps
        .tokenizer
        .as_ref()
        .map(|t| t.info().vocab_size);
    let name = plugin.plugin().name().to_owned();
    let (config, prompt, params) = open;
    let mut seq = match plugin.open(&config, &prompt, &params) {
        Ok(seq) => {
            if answers.send(Answer::Opened(Ok(()))).is_err() {
                return;
            }
            seq
        }
        Err(e) => {
            let _ = answers.send(Answer::Opened(Err(e)));
            return;
        }
    };
    let refused = |e: SetTooLarge| PluginError::protocol(&name, format!("sent {e}"));
    for call in calls {
        let answer = match call {
            Call::Prepare(step, tokens) => {
                let prepared = seq.prepare_within(deadline, step, &tokens).and_then(|p| {
                    prepared_from_wit(p, vocab).map_err(|e| {
                        let e = refused(e);
                        seq.record_failure(&e);
                        e
                    })
                });
                Answer::Prepared(prepared)
            }
            Call::Decide(step, logits) => {
                let decided = seq.decide_within(deadline, step, logits).and_then(|d| {
                    decision_from_wit(d, vocab).map_err(|e| {
                        let e = refused(e);
                        seq.record_failure(&e);
                        e
                    })
                });
                Answer::Decided(decided)
            }
        };
        if answers.send(answer).is_err() {
            break;
        }
    }
}

/// A plugin's `prepared` in the engine's types ([`decision_from_wit`]).
fn prepared_from_wit(p: wit::Prepared, vocab: Option<u32>) -> Result<Prepared, SetTooLarge> {
    Ok(match p {
        wit::Prepared::Decided(d) => Prepared::Decided(decision_from_wit(d, vocab)?),
        wit::Prepared::NeedLogits => Prepared::NeedLogits,
    })
}

/// A plugin's `decision` in the engine's types. With the vocabulary size
/// known, its token sets become bitsets over it; a set longer than
/// [`max_set_entries`](deepwasm_plugins::max_set_entries) is refused.
pub fn decision_from_wit(d: wit::Decision, vocab: Option<u32>) -> Result<Decision, SetTooLarge> {
    Ok(match d {
        wit::Decision::Pick(t) => Decision::Pick(t),
        wit::Decision::Sample(spec) => Decision::Sample(spec_from_wit(spec, vocab)?),
        wit::Decision::Force(tokens) => Decision::Force(tokens),
        wit::Decision::Stop => Decision::Stop,
    })
}

fn spec_from_wit(spec: wit::SampleSpec, vocab: Option<u32>) -> Result<SampleSpec, SetTooLarge> {
    let set = |s: Option<wit::TokenSet>| s.map(|s| set_from_wit(s, vocab)).transpose();
    Ok(SampleSpec {
        allow: set(spec.allow)?,
        deny: set(spec.deny)?,
        bias: spec
            .bias
            .into_iter()
            .map(|b| TokenBias {
                token: b.token,
                bias: b.bias,
            })
            .collect(),
        params: spec.params.map(overrides_from_wit),
    })
}

/// `set` as the engine's: normalised to a bitset over `vocab` tokens when
/// that is known, else as the plugin wrote it.
fn set_from_wit(set: wit::TokenSet, vocab: Option<u32>) -> Result<TokenSet, SetTooLarge> {
    if let Some(len) = vocab {
        return wit::normalize_words(&set, len).map(TokenSet::Bitset);
    }
    Ok(match set {
        wit::TokenSet::Ids(ids) => TokenSet::Ids(ids),
        wit::TokenSet::Ranges(ranges) => TokenSet::Ranges(
            ranges
                .into_iter()
                .map(|r| TokenRange {
                    start: r.start,
                    end: r.end,
                })
                .collect(),
        ),
        wit::TokenSet::Bitset(words) => TokenSet::Bitset(words),
    })
}

fn overrides_from_wit(p: wit::SamplingParams) -> SamplingOverrides {
    SamplingOverrides {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        seed: p.seed,
    }
}

/// The request's parameters as the WIT record a plugin's `open` takes.
fn params_to_wit(params: &SamplingParams) -> wit::SamplingParams {
    wit::SamplingParams {
        temperature: Some(params.temperature),
        top_k: Some(params.top_k.min(u32::MAX as usize) as u32),
        top_p: Some(params.top_p),
        min_p: Some(params.min_p),
        repetition_penalty: Some(params.repetition_penalty),
        presence_penalty: Some(params.presence_penalty),
        frequency_penalty: Some(params.frequency_penalty),
        seed: params.seed,
    }
}

impl Sampler for PluginSampler {
    fn name(&self) -> &str {
        &self.name
    }

    fn begin(&mut self, prompt: &[u32], params: &SamplingParams) -> Result<(), SamplerError> {
        let (call_tx, call_rx) = channel();
        let (answer_tx, answer_rx) = channel();
        let plugin = self.plugin.clone();
        let open = (self.config.clone(), prompt.to_vec(), params_to_wit(params));
        let deadline = self.policy.hard_deadline(self.budget);
        let thread = std::thread::Builder::new()
            .name(format!("sampler-{}", self.name))
            .spawn(move || serve(plugin, open, deadline, call_rx, answer_tx))
            .map_err(|e| self.error(format!("cannot start its thread: {e}"), None))?;
        self.worker = Some(Worker {
            calls: call_tx,
            answers: answer_rx,
        });
        self.thread = Some(thread);
        self.opening = true;
        Ok(())
    }

    fn prepare(
        &mut self,
        step: u32,
        new_tokens: &[u32],
        until: Instant,
    ) -> Result<Reply<Prepared>, SamplerError> {
        // Later calls for the same step only collect its answer; the
        // tokens wait in the backlog until a call carries them (with a
        // call given up on still running, that is a later step's).
        if self.tokens_of_step != Some(step) {
            self.tokens_of_step = Some(step);
            self.backlog.extend_from_slice(new_tokens);
        }
        let call = |me: &mut Self| Call::Prepare(step, std::mem::take(&mut me.backlog));
        match self.reply(Phase::Prepare, step, call, until)? {
            Reply::Pending => Ok(Reply::Pending),
            Reply::Ready(Answer::Prepared(r)) => {
                r.map(Reply::Ready).map_err(|e| self.plugin_error(e))
            }
            Reply::Ready(_) => Err(self.error("answered out of order", None)),
        }
    }

    fn decide(
        &mut self,
        step: u32,
        logits: &LogitsHandle,
        until: Instant,
    ) -> Result<Reply<Decision>, SamplerError> {
        let call = |_: &mut Self| Call::Decide(step, logits.clone());
        match self.reply(Phase::Decide, step, call, until)? {
            Reply::Pending => Ok(Reply::Pending),
            Reply::Ready(Answer::Decided(r)) => {
                r.map(Reply::Ready).map_err(|e| self.plugin_error(e))
            }
            Reply::Ready(_) => Err(self.error("answered out of order", None)),
        }
    }
}
