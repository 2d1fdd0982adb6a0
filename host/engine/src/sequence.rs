//! One sequence's generation state: what to feed the model next, and what
//! to do with the logits that come back. The batcher drives any number of
//! these through shared forward passes.
//!
//! A step is: feed the model (while the sampler prepares), then settle the
//! logits into tokens once the sampler has decided. A sampler that has not
//! decided by the time the batch moves on leaves its sequence holding its
//! logits: it sits out forward passes until the decision comes, and the
//! batch never waits for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deepwasm_model::{Detokenizer, KvCache, Output, SeqInput};
use deepwasm_plugins::{LogitsHandle, LogitsSource};

use crate::engine::Engine;
use crate::logits::DeviceLogits;
use crate::request::{
    Completion, Delta, FinishReason, GenerateError, GenerateRequest, Pooling, Timings, Usage,
};
use crate::sampler::{Decision, Prepared, Reply, SampleSpec, Sampler, SamplerError};
use crate::sampling::device::{DeviceSample, DeviceSampleError};
use crate::sampling::{self, SamplingParams, SequenceRng, TokenHistory};
use crate::stop::StopMatcher;

/// A sequence being generated.
pub(crate) struct Sequence<'e, 'r> {
    params: SamplingParams,
    logprobs: Option<usize>,
    pub(crate) sampler: Box<dyn Sampler + 'r>,
    pub(crate) cache: KvCache,
    history: TokenHistory,
    rng: SequenceRng,
    detok: Detokenizer<'e>,
    stops: StopMatcher,
    eos: &'e [u32],
    vocab: u32,
    max_tokens: usize,
    out: Completion,
    /// Tokens still to append before the sampler's next step: the prompt,
    /// then each step's token(s). A long feed goes in over several forward
    /// passes (chunks); the sampler sees only the last one's logits.
    pub(crate) feed: Vec<u32>,
    /// Forward time of the chunks of the feed already appended, counted
    /// into the step that ends it.
    chunked: Duration,
    /// Tokens appended since the sampler's last `prepare`.
    new_tokens: Vec<u32>,
    pub(crate) step: u32,
    pub(crate) done: bool,
    hit_stop_string: bool,
    /// Logits of this step waiting for the sampler; `None` while the
    /// sequence is to be fed.
    held: Option<Held>,
    /// Alternatives to report with each prompt token's log-probability,
    /// when the prompt is scored.
    prompt_logprobs: Option<usize>,
    /// The pooling of an embedding, and its running sum (or last row) and
    /// rows counted so far.
    embedding: Option<(Pooling, Vec<f32>, usize)>,
    /// The adapter its rows go through; its cache holds what they gave.
    pub(crate) adapter: Option<Arc<deepwasm_model::lora::ServedAdapter>>,
}

/// Most prompt tokens a sequence whose prompt is scored takes in one
/// forward pass: each brings a row of logits (`vocab_size` floats).
pub(crate) const SCORED_CHUNK: usize = 256;

/// A step's logits, and what the sampler has said about them so far.
struct Held {
    logits: LogitsHandle,
    /// The same row, when it is kept on the device.
    device: Option<Arc<DeviceLogits>>,
    prepared: Option<Prepared>,
    /// The forward pass's share of the step, and when it ended.
    forward: Duration,
    since: Instant,
}

impl<'e, 'r> Sequence<'e, 'r> {
    /// Check the request, render and tokenize its prompt, and start its
    /// sampler. The sequence's positions go into `cache` (empty).
    pub(crate) fn start(
        engine: &'e Engine,
        req: &GenerateRequest,
        mut sampler: Box<dyn Sampler + 'r>,
        seed: u64,
        cache: KvCache,
    ) -> Result<Self, GenerateError> {
        req.params
            .validate()
            .map_err(|e| GenerateError::Invalid(e.to_string()))?;
        let (_, prompt) = engine.render_prompt(&req.prompt)?;
        if prompt.is_empty() {
            return Err(GenerateError::Invalid("the prompt has no tokens".into()));
        }
        let info = engine.model.info();
        let context = info.max_context;
        if prompt.len() >= context {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt.len(),
                context,
            });
        }
        let vocab = info.vocab_size as u32;
        req.params
            .validate_vocab(info.vocab_size)
            .map_err(|e| GenerateError::Invalid(e.to_string()))?;
        if let Some(bad) = prompt.iter().find(|&&t| t >= vocab) {
            return Err(GenerateError::Invalid(format!(
                "prompt token {bad} is outside the vocabulary of {vocab}"
            )));
        }
        sampler.begin(&prompt, &req.params)?;
        let max_tokens = match req.embedding {
            Some(_) => 0,
            None => req.max_tokens.min(context - prompt.len()),
        };
        let prompt_only = req.prompt_logprobs.is_some() || req.embedding.is_some();
        Ok(Sequence {
            params: req.params.clone(),
            logprobs: req.logprobs,
            sampler,
            cache,
            history: TokenHistory::new(&prompt),
            rng: SequenceRng::new(seed),
            detok: engine.tokenizer.detokenizer(true),
            stops: StopMatcher::new(&req.stop),
            eos: if req.ignore_eos {
                &[]
            } else {
                engine.tokenizer.eos()
            },
            vocab,
            max_tokens,
            out: Completion {
                text: String::new(),
                tokens: Vec::new(),
                prompt_tokens: prompt.clone(),
                finish_reason: FinishReason::Length,
                usage: Usage {
                    prompt_tokens: prompt.len(),
                    completion_tokens: 0,
                },
                logprobs: req.logprobs.map(|_| Vec::new()),
                prompt_logprobs: req.prompt_logprobs.map(|_| vec![None]),
                embedding: None,
                timings: Timings::default(),
            },
            feed: prompt,
            chunked: Duration::ZERO,
            new_tokens: Vec::new(),
            step: 0,
            done: max_tokens == 0 && !prompt_only,
            hit_stop_string: false,
            held: None,
            prompt_logprobs: req.prompt_logprobs,
            embedding: req.embedding.map(|p| (p, Vec::new(), 0)),
            adapter: req.adapter.clone(),
        })
    }

    /// The id of the adapter its cache was built under (`None`: the base).
    pub(crate) fn adapter_id(&self) -> Option<u64> {
        self.adapter.as_ref().map(|a| a.id())
    }

    /// What the next forward pass returns for this sequence: every row's
    /// logits while a scored prompt goes in, hidden states for an
    /// embedding, else the last row's logits.
    pub(crate) fn output(&self) -> Output {
        if self.embedding.is_some() {
            Output::Hidden
        } else if self.prompt_logprobs.is_some() && !self.started() {
            Output::AllLogits
        } else {
            Output::Last
        }
    }

    /// Whether the forward passes over the prompt produce more than the
    /// next token's logits: such a prompt is computed whole, never taken
    /// from another sequence's cache.
    pub(crate) fn needs_prompt_rows(&self) -> bool {
        self.output() != Output::Last
    }

    /// Most feed tokens one forward pass may take.
    pub(crate) fn max_take(&self) -> usize {
        match self.output() {
            Output::AllLogits => SCORED_CHUNK,
            _ => usize::MAX,
        }
    }

    /// Take the rows a forward pass returned beside the next token's
    /// logits, for the `n` feed tokens it took: each scored prompt token's
    /// log-probability (from the row before it), or the hidden states. The
    /// pass's positions began at `start`.
    pub(crate) fn take_prompt_rows(&mut self, start: usize, rows: &[Vec<f32>]) {
        let prompt = &self.out.prompt_tokens;
        if let (Some(top), Some(all)) = (self.prompt_logprobs, self.out.prompt_logprobs.as_mut()) {
            for (k, row) in rows.iter().enumerate() {
                let next = start + k + 1;
                if next < prompt.len() && all.len() == next {
                    all.push(Some(sampling::logprobs(row, prompt[next], top)));
                }
            }
        }
        if let Some((pooling, acc, count)) = self.embedding.as_mut() {
            for row in rows {
                match pooling {
                    Pooling::Last => acc.clone_from(row),
                    Pooling::Mean if acc.is_empty() => acc.clone_from(row),
                    Pooling::Mean => acc.iter_mut().zip(row).for_each(|(a, b)| *a += b),
                }
                *count += 1;
            }
        }
    }

    /// The prompt has gone in and nothing is to be generated: end with the
    /// embedding or the prompt's scores.
    pub(crate) fn end_after_prompt(&mut self) {
        if let Some((pooling, acc, count)) = self.embedding.take() {
            let mut v = acc;
            if pooling == Pooling::Mean && count > 0 {
                let inv = 1.0 / count as f32;
                v.iter_mut().for_each(|x| *x *= inv);
            }
            self.out.embedding = Some(v);
        }
        self.finish_with(FinishReason::Length);
    }

    /// Whether the prompt is all this sequence runs (scoring or an
    /// embedding, no tokens to generate).
    pub(crate) fn prompt_only(&self) -> bool {
        self.max_tokens == 0
    }

    /// Whether this sequence goes into the next forward pass (else it is
    /// waiting for its sampler, logits in hand, or has ended).
    pub(crate) fn wants_feed(&self) -> bool {
        self.held.is_none() && !self.done
    }

    /// Forget the cache (to free its memory): everything it held, and what
    /// was still to be fed, becomes the feed, recomputed when the sequence
    /// runs again. The sampler is not asked again for the steps it already
    /// decided.
    pub(crate) fn preempt(&mut self) {
        if !self.started() {
            // What the prompt's passes gave so far is recomputed.
            if let Some(all) = self.out.prompt_logprobs.as_mut() {
                all.truncate(1);
            }
            if let Some((_, acc, count)) = self.embedding.as_mut() {
                acc.clear();
                *count = 0;
            }
        }
        let mut all = self.out.prompt_tokens.clone();
        all.extend_from_slice(&self.out.tokens);
        self.cache = self.cache.empty_like();
        self.feed = all;
    }

    /// The tokens whose keys and values the cache holds: the prompt and
    /// the tokens generated so far, as far as they went through the model.
    pub(crate) fn cached_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.out
            .prompt_tokens
            .iter()
            .chain(&self.out.tokens)
            .copied()
            .take(self.cache.len())
    }

    /// The prompt's tokens.
    pub(crate) fn prompt(&self) -> &[u32] {
        &self.out.prompt_tokens
    }

    /// Start from `cache`, a fork of another sequence's cache whose first
    /// `common` positions hold this one's first `common` prompt tokens
    /// (`common` below the prompt's length: its last token is always fed,
    /// for its logits). The rest of the prompt is fed. How many tokens were
    /// taken over.
    pub(crate) fn take_prefix_from(&mut self, mut cache: KvCache, common: usize) -> usize {
        let common = common.min(self.out.prompt_tokens.len() - 1);
        cache.truncate(common);
        self.cache = cache;
        self.feed = self.out.prompt_tokens[common..].to_vec();
        common
    }

    /// End now with `length`: the attention cache has no room to go on.
    pub(crate) fn end_for_length(&mut self) {
        self.finish_with(FinishReason::Length);
    }

    /// Whether this sequence has produced a token yet (else it is still
    /// taking in its prompt).
    pub(crate) fn started(&self) -> bool {
        self.step > 0
    }

    /// The first `n` tokens of the feed went through a forward pass that did
    /// not end it (a chunk taking `forward`): they are in the cache now.
    pub(crate) fn fed_chunk(&mut self, n: usize, forward: Duration) {
        self.feed.drain(..n);
        self.chunked += forward;
    }

    /// Keep the logits of the forward pass just run, and what `prepare`
    /// answered beside it (`None`: not yet).
    pub(crate) fn hold(&mut self, rows: Rows, prepared: Option<Prepared>, forward: Duration) {
        self.held = Some(Held {
            logits: rows.last,
            device: rows.device,
            prepared,
            forward: forward + std::mem::take(&mut self.chunked),
            since: Instant::now(),
        });
    }

    /// Ask the sampler for what the held step still lacks (waiting until
    /// `until` at most) and, once it has decided, append the tokens.
    /// `Ok(false)`: still waiting for the sampler.
    pub(crate) fn settle(
        &mut self,
        until: Instant,
        on_delta: &mut (dyn FnMut(&Delta) + Send),
    ) -> Result<bool, GenerateError> {
        let Some(held) = self.held.as_mut() else {
            return Ok(true);
        };
        let prepared = match held.prepared.take() {
            Some(p) => p,
            None => match self.sampler.prepare(self.step, &self.new_tokens, until)? {
                Reply::Ready(p) => p,
                Reply::Pending => return Ok(false),
            },
        };
        let decision = match prepared {
            Prepared::Decided(d) => d,
            Prepared::NeedLogits => match self.sampler.decide(self.step, &held.logits, until)? {
                Reply::Ready(d) => d,
                Reply::Pending => {
                    held.prepared = Some(Prepared::NeedLogits);
                    return Ok(false);
                }
            },
        };
        let Some(held) = self.held.take() else {
            return Ok(true);
        };
        let spent = held.forward + held.since.elapsed();
        self.advance(&held, decision, spent, on_delta)?;
        Ok(true)
    }

    /// Append the step's tokens as the sampler decided, given the step's raw
    /// logits. `spent` is the step's time, for the timings.
    fn advance(
        &mut self,
        held: &Held,
        decision: Decision,
        spent: Duration,
        on_delta: &mut (dyn FnMut(&Delta) + Send),
    ) -> Result<(), GenerateError> {
        let chosen = match decision {
            Decision::Pick(t) => vec![t],
            Decision::Sample(spec) => vec![self.sample(held, &spec)?],
            Decision::Force(tokens) if tokens.is_empty() => {
                return Err(self.invalid("forced an empty list of tokens"));
            }
            Decision::Force(tokens) => tokens,
            Decision::Stop => {
                self.out.finish_reason = FinishReason::SamplerStop;
                self.done = true;
                return Ok(());
            }
        };
        if let Some(bad) = chosen.iter().find(|&&t| t >= self.vocab) {
            return Err(self.invalid(&format!(
                "chose token {bad}, outside the vocabulary of {}",
                self.vocab
            )));
        }
        let mut delta = Delta::default();
        let mut appended = Vec::with_capacity(chosen.len());
        for (i, &token) in chosen.iter().enumerate() {
            appended.push(token);
            self.out.tokens.push(token);
            self.history.push_output(token);
            if let Some(n) = self.logprobs {
                // Only the first token of a forced run has the model's scores
                // for its position.
                let lp = match i {
                    0 => Some(logprobs_of(&held.logits, token, n)?),
                    _ => None,
                };
                delta.logprobs.push(lp.clone());
                if let Some(all) = self.out.logprobs.as_mut() {
                    all.push(lp);
                }
            }
            delta.tokens.push(token);
            if self.eos.contains(&token) {
                self.finish_with(FinishReason::Stop);
                break;
            }
            let released = self.stops.push(&self.detok.push(token));
            delta.text.push_str(&released.text);
            if released.stopped {
                self.hit_stop_string = true;
                self.finish_with(FinishReason::Stop);
                break;
            }
            if self.out.tokens.len() >= self.max_tokens {
                self.finish_with(FinishReason::Length);
                break;
            }
        }
        self.out.text.push_str(&delta.text);
        on_delta(&delta);
        if self.step == 0 {
            self.out.timings.prefill = spent;
        } else {
            self.out.timings.decode += spent;
        }
        self.out.timings.forward_passes += 1;
        self.feed.clone_from(&appended);
        self.new_tokens = appended;
        self.step += 1;
        Ok(())
    }

    fn finish_with(&mut self, reason: FinishReason) {
        self.out.finish_reason = reason;
        self.done = true;
    }

    /// The finished completion, with text held back for an incomplete
    /// character or a possible stop string released.
    pub(crate) fn finish(mut self, on_delta: &mut (dyn FnMut(&Delta) + Send)) -> Completion {
        if !self.hit_stop_string {
            let rest = self.stops.push(&self.detok.finish());
            let mut tail = rest.text;
            if !rest.stopped {
                tail.push_str(&self.stops.finish());
            }
            if !tail.is_empty() {
                self.out.text.push_str(&tail);
                on_delta(&Delta {
                    text: tail,
                    ..Delta::default()
                });
            }
        }
        self.out.usage.completion_tokens = self.out.tokens.len();
        self.out
    }

    /// The built-in sampler's pick under `spec`.
    fn sample(&mut self, held: &Held, spec: &SampleSpec) -> Result<u32, GenerateError> {
        let params: SamplingParams = match &spec.params {
            // A sampler's overrides are held to the rules a request's
            // parameters are: NaN or out-of-range values are its error.
            Some(p) => {
                let params = self.params.with_overrides(p);
                params.validate().map_err(|e| {
                    self.invalid(&format!("asked to sample with invalid parameters: {e}"))
                })?;
                params
            }
            None => self.params.clone(),
        };
        // A row on the device is sampled there unless a query copied it.
        if let Some(device) = &held.device
            && device.host_values().is_none()
        {
            if !spec.bias.is_empty() {
                self.check_bias_len(spec)?;
            }
            match sampling::device::sample_on_device(
                device,
                &params,
                &self.history,
                spec,
                &mut self.rng,
            ) {
                Ok(DeviceSample::Token(t)) => return Ok(t),
                Ok(DeviceSample::Host) => {}
                Err(DeviceSampleError::Mask(e)) => return Err(self.invalid(&e.to_string())),
                Err(DeviceSampleError::Device(e)) => return Err(logits_failed(e)),
            }
        }
        let mut logits = held.logits.values().map_err(logits_failed)?.to_vec();
        sampling::process_logits(&mut logits, &params, &self.history);
        if spec.allow.is_some() || spec.deny.is_some() {
            sampling::apply_mask(&mut logits, spec.allow.as_ref(), spec.deny.as_ref())
                .map_err(|e| self.invalid(&e.to_string()))?;
        }
        if !spec.bias.is_empty() {
            self.check_bias_len(spec)?;
            sampling::apply_bias(&mut logits, &spec.bias);
        }
        Ok(sampling::sample(&logits, &params, &mut self.rng))
    }

    /// A plugin's bias list is refused past
    /// [`max_set_entries`](deepwasm_plugins::max_set_entries).
    fn check_bias_len(&self, spec: &SampleSpec) -> Result<(), GenerateError> {
        let max = deepwasm_plugins::max_set_entries(self.vocab);
        if spec.bias.len() > max {
            return Err(self.invalid(&format!(
                "sent {} biases, more than the {max} allowed over {} tokens",
                spec.bias.len(),
                self.vocab
            )));
        }
        Ok(())
    }

    fn invalid(&self, message: &str) -> GenerateError {
        GenerateError::Sampler(SamplerError {
            sampler: self.sampler.name().to_owned(),
            message: message.to_owned(),
            source: None,
        })
    }
}

/// A failed read of logits kept on the device, as the model's failure.
fn logits_failed(e: deepwasm_plugins::LogitsError) -> GenerateError {
    GenerateError::Model(candle_core::Error::Msg(e.to_string()))
}

/// The log-probabilities of `token` and the `n` likeliest tokens: from the
/// whole row when it is in host memory, else from queries that move only
/// their answers.
fn logprobs_of(
    logits: &LogitsHandle,
    token: u32,
    n: usize,
) -> Result<sampling::TokenLogprobs, GenerateError> {
    if let Some(values) = logits.source().host_values() {
        return Ok(sampling::logprobs(&values, token, n));
    }
    let source = logits.source();
    let lse = source.log_sum_exp().map_err(logits_failed)?;
    if !lse.is_finite() {
        // Infinite or NaN logits: the whole row's rules apply.
        let values = logits.values().map_err(logits_failed)?;
        return Ok(sampling::logprobs(&values, token, n));
    }
    let chosen = source.get(&[token]).map_err(logits_failed)?;
    let top = source.top_k(n).map_err(logits_failed)?;
    Ok(sampling::logprobs_from_parts(
        token,
        chosen.first().copied().unwrap_or(f32::NEG_INFINITY),
        lse,
        top.into_iter().map(|t| (t.token, t.logit)),
    ))
}

/// What one forward pass gave one sequence.
pub(crate) struct Rows {
    /// The logits after the last token it took (empty for an embedding).
    pub last: LogitsHandle,
    /// The same row, when it is kept on the device.
    pub device: Option<Arc<DeviceLogits>>,
    /// The rows a scored prompt (logits) or an embedding (hidden states)
    /// asked for, one per token taken.
    pub prompt: Vec<Vec<f32>>,
}

/// The rows of one forward pass, per sequence, and what each sampler's
/// `prepare` answered at once (`None`: not yet, or the pass took only a
/// chunk of the sequence's feed, or it generates nothing; asked again when
/// the step settles).
type StepResults = (
    candle_core::Result<Vec<Rows>>,
    Vec<Result<Option<Prepared>, SamplerError>>,
);

/// One forward pass over `seqs`, each taking the first `take[i]` tokens of
/// its feed. Every sequence whose feed this pass ends has its sampler's
/// `prepare` for the step started first, so that plugins work while the
/// model computes; a chunk that leaves some of the feed asks nothing of the
/// sampler. Nothing here waits for a sampler.
pub(crate) fn forward_and_prepare<'e, 'r>(
    engine: &Engine,
    seqs: &mut [&mut Sequence<'e, 'r>],
    take: &[usize],
) -> StepResults {
    let now = Instant::now();
    let mut inputs = Vec::with_capacity(seqs.len());
    let mut prepared = Vec::with_capacity(seqs.len());
    let mut outputs = Vec::with_capacity(seqs.len());
    for (seq, &take) in seqs.iter_mut().zip(take) {
        let output = seq.output();
        let prompt_only = seq.prompt_only();
        let Sequence {
            sampler,
            new_tokens,
            step,
            feed,
            cache,
            adapter,
            ..
        } = &mut **seq;
        let take = take.clamp(1, feed.len().max(1));
        prepared.push(if take < feed.len() || prompt_only {
            Ok(None)
        } else {
            match sampler.prepare(*step, new_tokens, now) {
                Ok(Reply::Ready(p)) => Ok(Some(p)),
                Ok(Reply::Pending) => Ok(None),
                Err(e) => Err(e),
            }
        });
        outputs.push((output, take));
        inputs.push(SeqInput {
            adapter: adapter.as_deref(),
            tokens: &feed[..take],
            cache,
        });
    }
    let only: Vec<Output> = outputs.iter().map(|o| o.0).collect();
    let rows = engine
        .model
        .forward_outputs(&mut inputs, &only)
        .and_then(|out| split_rows(engine, &out, &outputs));
    (rows, prepared)
}

/// Each sequence's rows of a pass's `out`, for `outputs` (what it asked
/// for, and how many tokens it took). Last rows stay where the engine keeps
/// logits; scored prompts' rows and hidden states come to the host whole.
fn split_rows(
    engine: &Engine,
    out: &deepwasm_model::Outputs,
    outputs: &[(Output, usize)],
) -> candle_core::Result<Vec<Rows>> {
    let on_device = engine.logits_placement.on_device(out.logits.device());
    let traffic = &engine.logits_traffic;
    let host_rows = |t: &candle_core::Tensor| -> candle_core::Result<Vec<Vec<f32>>> {
        let rows = t.to_vec2::<f32>()?;
        if on_device {
            traffic.count_to_host(4 * rows.iter().map(Vec::len).sum::<usize>());
        }
        Ok(rows)
    };
    let mut hidden = match &out.hidden {
        Some(h) => host_rows(h)?,
        None => Vec::new(),
    }
    .into_iter();
    let mut host_logits = match on_device {
        true => Vec::new(),
        false => host_rows(&out.logits)?,
    }
    .into_iter();
    let mut at = 0;
    let empty = || LogitsHandle::new(Arc::new(Vec::new()));
    let mut rows = Vec::with_capacity(outputs.len());
    for &(output, n) in outputs {
        rows.push(match (output, on_device) {
            (Output::Last, false) => Rows {
                last: LogitsHandle::new(Arc::new(host_logits.next().unwrap_or_default())),
                device: None,
                prompt: Vec::new(),
            },
            (Output::Last, true) => {
                at += 1;
                let row = Arc::new(DeviceLogits::new(
                    &out.logits,
                    at - 1,
                    &engine.device_ids,
                    traffic,
                )?);
                Rows {
                    last: LogitsHandle::from_source(row.clone()),
                    device: Some(row),
                    prompt: Vec::new(),
                }
            }
            (Output::AllLogits, _) => {
                let prompt: Vec<Vec<f32>> = match on_device {
                    false => host_logits.by_ref().take(n).collect(),
                    true => {
                        at += n;
                        host_rows(&out.logits.narrow(0, at - n, n)?)?
                    }
                };
                Rows {
                    last: LogitsHandle::new(Arc::new(prompt.last().cloned().unwrap_or_default())),
                    device: None,
                    prompt,
                }
            }
            (Output::Hidden, _) => Rows {
                last: empty(),
                device: None,
                prompt: hidden.by_ref().take(n).collect(),
            },
        });
    }
    Ok(rows)
}
