//! A sampler plugin as a [`Sampler`]: the model's tokenizer as the plugin's
//! `tokenizer` import, a per-step time budget with a policy for misses.
//!
//! The plugin runs on a thread of its own. The generation loop waits for
//! each call at most the step budget (25 ms by default, as AICI had). On a
//! miss, the policy decides:
//!
//! * [`MissPolicy::Fail`]: the request ends with an error naming the plugin.
//! * [`MissPolicy::Fallback`]: this step is sampled by the built-in sampler
//!   with the request's parameters; the plugin's late answer is dropped (the
//!   next `new-tokens` tell it what was appended instead). After `max_misses`
//!   misses the request ends with an error.
//!
//! A call still running at the plugin's hard deadline (its sandbox's
//! `call_deadline`) is interrupted, which ends the sequence with the typed
//! error. A trapping plugin ends only its own request.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use deepwasm_model::{SpecialKind, Tokenizer};
use deepwasm_plugins::{
    PluginError, SamplerPlugin, SamplerSequence, TokenizerAccess, tokenizer as wit_tokenizer,
};

use crate::sampler::{Decision, Prepared, Sampler, SamplerError, default_spec};
use crate::sampling::SamplingParams;

/// The default time a step may wait for a sampler plugin.
pub const DEFAULT_STEP_BUDGET: Duration = Duration::from_millis(25);

/// What a missed step budget does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissPolicy {
    /// End the request with an error.
    Fail,
    /// Sample the step with the built-in sampler; end the request after
    /// more than `max_misses` misses.
    Fallback { max_misses: u32 },
}

impl Default for MissPolicy {
    fn default() -> Self {
        MissPolicy::Fallback { max_misses: 3 }
    }
}

/// How many step budgets a plugin call may run, under the fallback policy,
/// before it is interrupted: long enough that a slow step is absorbed and
/// the plugin keeps its state, short enough that a stuck one is cut.
pub const HARD_DEADLINE_STEPS: u32 = 8;

/// The limits of a sampler plugin serving under `budget` and `policy`: the
/// sampler defaults, with the hard per-call deadline at the budget (fail) or
/// `HARD_DEADLINE_STEPS` budgets (fallback).
pub fn sampler_limits(budget: Duration, policy: MissPolicy) -> deepwasm_plugins::Limits {
    let mut limits = deepwasm_plugins::Limits::for_world(deepwasm_plugins::World::Sampler);
    limits.call_deadline = match policy {
        MissPolicy::Fail => budget,
        MissPolicy::Fallback { .. } => budget * HARD_DEADLINE_STEPS,
    };
    limits
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
    Decide(u32, Arc<Vec<f32>>),
}

enum Answer {
    Prepared(Result<Prepared, PluginError>),
    Decided(Result<Decision, PluginError>),
}

/// One request's sampler plugin.
pub struct PluginSampler {
    name: String,
    plugin: SamplerPlugin,
    config: String,
    budget: Duration,
    policy: MissPolicy,
    misses: u32,
    worker: Option<(Sender<Call>, Receiver<Answer>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A call whose answer came too late and must be drained first.
    late: bool,
}

impl Drop for PluginSampler {
    /// Close the sequence before returning: the instance goes back to its
    /// pool (or is discarded) by the time the request is over. A call still
    /// running ends at the latest at the plugin's hard deadline.
    fn drop(&mut self) {
        self.worker = None;
        if let Some(thread) = self.thread.take() {
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
    /// when generation begins.
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
            late: false,
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

    /// Send `call` and wait for its answer within the budget. `Ok(None)`
    /// is a miss the policy absorbed.
    fn call(&mut self, call: Call) -> Result<Option<Answer>, SamplerError> {
        let Some((tx, rx)) = &self.worker else {
            return Err(self.error("no sequence is open", None));
        };
        if self.late {
            // The last call overran; its answer is stale. Wait for it (the
            // instance runs one call at a time) before asking anything new;
            // if it ended in a failure (its hard deadline, a trap), that
            // failure ends the sequence.
            let stale = rx.recv();
            self.late = false;
            match stale {
                Ok(Answer::Prepared(Err(e)) | Answer::Decided(Err(e))) => {
                    return Err(self.error("failed after missing its step budget", Some(e)));
                }
                Ok(_) => {}
                Err(_) => return Err(self.error("its worker stopped after a late call", None)),
            }
        }
        if tx.send(call).is_err() {
            return Err(self.error("its worker stopped", None));
        }
        match rx.recv_timeout(self.budget) {
            Ok(answer) => Ok(Some(answer)),
            Err(RecvTimeoutError::Timeout) => {
                let budget_ms = self.budget.as_millis();
                match self.policy {
                    MissPolicy::Fail => {
                        // Drain the answer so the sequence closes cleanly.
                        self.late = true;
                        Err(self.error(format!("missed its step budget of {budget_ms} ms"), None))
                    }
                    MissPolicy::Fallback { max_misses } => {
                        self.misses += 1;
                        self.late = true;
                        if self.misses > max_misses {
                            Err(self.error(
                                format!(
                                    "missed its step budget of {budget_ms} ms {} times",
                                    self.misses
                                ),
                                None,
                            ))
                        } else {
                            tracing::warn!(sampler = %self.name, "missed its step budget; the built-in sampler picks this step");
                            Ok(None)
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.error("its worker stopped", None)),
        }
    }
}

/// The worker: owns the plugin's sequence and answers calls in order.
fn serve(mut seq: SamplerSequence, calls: Receiver<Call>, answers: Sender<Answer>) {
    for call in calls {
        let answer = match call {
            Call::Prepare(step, tokens) => Answer::Prepared(seq.prepare(step, &tokens)),
            Call::Decide(step, logits) => Answer::Decided(seq.decide(step, logits)),
        };
        if answers.send(answer).is_err() {
            break;
        }
    }
}

impl Sampler for PluginSampler {
    fn name(&self) -> &str {
        &self.name
    }

    fn begin(&mut self, prompt: &[u32], params: &SamplingParams) -> Result<(), SamplerError> {
        let wit_params = deepwasm_plugins::SamplingParams {
            temperature: Some(params.temperature),
            top_k: Some(params.top_k.min(u32::MAX as usize) as u32),
            top_p: Some(params.top_p),
            min_p: Some(params.min_p),
            repetition_penalty: Some(params.repetition_penalty),
            presence_penalty: Some(params.presence_penalty),
            frequency_penalty: Some(params.frequency_penalty),
            seed: params.seed,
        };
        let seq = self
            .plugin
            .open(&self.config, prompt, &wit_params)
            .map_err(|e| self.plugin_error(e))?;
        let (call_tx, call_rx) = channel();
        let (answer_tx, answer_rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("sampler-{}", self.name))
            .spawn(move || serve(seq, call_rx, answer_tx))
            .map_err(|e| self.error(format!("cannot start its thread: {e}"), None))?;
        self.worker = Some((call_tx, answer_rx));
        self.thread = Some(thread);
        Ok(())
    }

    fn prepare(&mut self, step: u32, new_tokens: &[u32]) -> Result<Prepared, SamplerError> {
        match self.call(Call::Prepare(step, new_tokens.to_vec()))? {
            None => Ok(Prepared::Decided(Decision::Sample(default_spec()))),
            Some(Answer::Prepared(r)) => r.map_err(|e| self.plugin_error(e)),
            Some(Answer::Decided(_)) => Err(self.error("answered out of order", None)),
        }
    }

    fn decide(&mut self, step: u32, logits: &Arc<Vec<f32>>) -> Result<Decision, SamplerError> {
        match self.call(Call::Decide(step, logits.clone()))? {
            None => Ok(Decision::Sample(default_spec())),
            Some(Answer::Decided(r)) => r.map_err(|e| self.plugin_error(e)),
            Some(Answer::Prepared(_)) => Err(self.error("answered out of order", None)),
        }
    }
}
