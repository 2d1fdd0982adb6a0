//! Generating one sequence: prefill, then decode step by step with the KV
//! cache, a sampler deciding each token, stop rules ending it, and text
//! streamed as it is produced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deepwasm_model::{
    CausalLm, ChatMessage, ChatTemplate, KvCache, LoadedModel, SeqInput, Tokenizer, ToolSpec,
};

use crate::sampler::{Decision, Prepared, SampleSpec, Sampler};
use crate::sampling::{self, SamplingParams, SequenceRng, TokenHistory, TokenLogprobs};
use crate::stop::StopMatcher;

/// What to continue.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Raw text; `add_special_tokens` adds the model's BOS where it uses one.
    Text {
        text: String,
        add_special_tokens: bool,
    },
    /// Token ids as they are.
    Tokens(Vec<u32>),
    /// A conversation, rendered through the model's chat template with the
    /// assistant's turn opened.
    Chat {
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
    },
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// At most this many new tokens (capped by the model's context).
    pub max_tokens: usize,
    pub params: SamplingParams,
    /// Generation ends before the first of these strings; it is not returned.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Report log-probabilities of each token and this many alternatives.
    pub logprobs: Option<usize>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt) -> Self {
        GenerateRequest {
            prompt,
            max_tokens: 256,
            params: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context window.
    Length,
    /// The sampler plugin ended it.
    SamplerStop,
}

/// Token counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A piece of streamed output.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    /// New text; never splits a UTF-8 character, never shows part of a stop
    /// string.
    pub text: String,
    /// Tokens appended since the last delta.
    pub tokens: Vec<u32>,
    /// Their log-probabilities when asked for; `None` for a token a sampler
    /// forced after the first of a run (the model scored no alternatives).
    pub logprobs: Vec<Option<TokenLogprobs>>,
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub logprobs: Option<Vec<Option<TokenLogprobs>>>,
    pub timings: Timings,
}

/// Where the time went.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Timings {
    /// The first forward pass, over the prompt.
    pub prefill: Duration,
    /// Every later step.
    pub decode: Duration,
    /// Forward passes run (forced tokens share one).
    pub forward_passes: usize,
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the prompt is {prompt} tokens, and the model's context is {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("cannot render the chat prompt: {0}")]
    Template(String),
    #[error("cannot tokenize the prompt: {0}")]
    Tokenize(String),
    #[error(transparent)]
    Sampler(#[from] crate::sampler::SamplerError),
    #[error("the model failed: {0}")]
    Model(#[from] candle_core::Error),
}

/// A loaded model and what it takes to prompt it.
#[derive(Clone)]
pub struct Engine {
    pub name: String,
    pub model: Arc<dyn CausalLm>,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl From<LoadedModel> for Engine {
    fn from(m: LoadedModel) -> Self {
        Engine {
            name: m.name,
            model: m.model,
            tokenizer: m.tokenizer,
            chat_template: m.chat_template,
        }
    }
}

impl Engine {
    /// The prompt's text (for a chat, the rendered template) and tokens.
    pub fn render_prompt(
        &self,
        prompt: &Prompt,
    ) -> Result<(Option<String>, Vec<u32>), GenerateError> {
        let tokenize = |text: &str, special: bool| {
            self.tokenizer
                .encode(text, special)
                .map_err(|e| GenerateError::Tokenize(e.to_string()))
        };
        match prompt {
            Prompt::Tokens(ids) => Ok((None, ids.clone())),
            Prompt::Text {
                text,
                add_special_tokens,
            } => Ok((Some(text.clone()), tokenize(text, *add_special_tokens)?)),
            Prompt::Chat { messages, tools } => {
                let template = self.chat_template.as_ref().ok_or_else(|| {
                    GenerateError::Template(format!(
                        "the model `{}` has no chat template",
                        self.name
                    ))
                })?;
                let text = template
                    .render(messages, tools, true)
                    .map_err(|e| GenerateError::Template(e.to_string()))?;
                // The template writes BOS itself where the model wants one.
                let ids = tokenize(&text, false)?;
                Ok((Some(text), ids))
            }
        }
    }

    /// Generate one sequence, calling `on_delta` as text is produced.
    ///
    /// Runs on a thread of rayon's pool: the model's kernels split their
    /// work with rayon, and a split started from a pool thread runs inline
    /// instead of being handed to the pool and waited for (a futex round
    /// trip per matmul, measured at ~10% of a decode step).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        sampler: &mut dyn Sampler,
        on_delta: &mut (dyn FnMut(&Delta) + Send),
    ) -> Result<Completion, GenerateError> {
        if rayon::current_thread_index().is_some() {
            return self.generate_here(req, sampler, on_delta);
        }
        rayon::scope(|_| self.generate_here(req, sampler, on_delta))
    }

    fn generate_here(
        &self,
        req: &GenerateRequest,
        sampler: &mut dyn Sampler,
        on_delta: &mut (dyn FnMut(&Delta) + Send),
    ) -> Result<Completion, GenerateError> {
        req.params
            .validate()
            .map_err(|e| GenerateError::Invalid(e.to_string()))?;
        let (_, prompt) = self.render_prompt(&req.prompt)?;
        if prompt.is_empty() {
            return Err(GenerateError::Invalid("the prompt has no tokens".into()));
        }
        let info = self.model.info();
        let context = info.max_context;
        if prompt.len() >= context {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt.len(),
                context,
            });
        }
        let max_tokens = req.max_tokens.min(context - prompt.len());
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
        let mut cache = self.model.new_cache();
        let mut history = TokenHistory::new(&prompt);
        let mut rng = SequenceRng::new(req.params.seed.unwrap_or_else(random_seed));
        let mut detok = self.tokenizer.detokenizer(true);
        let mut stops = StopMatcher::new(&req.stop);
        let eos: &[u32] = if req.ignore_eos {
            &[]
        } else {
            self.tokenizer.eos()
        };

        let mut out = Completion {
            text: String::new(),
            tokens: Vec::new(),
            prompt_tokens: prompt.clone(),
            finish_reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: prompt.len(),
                completion_tokens: 0,
            },
            logprobs: req.logprobs.map(|_| Vec::new()),
            timings: Timings::default(),
        };
        let mut feed = prompt;
        let mut new_tokens: Vec<u32> = Vec::new();
        let mut step = 0u32;
        let mut done = max_tokens == 0;
        let mut hit_stop_string = false;
        while !done {
            let started = Instant::now();
            let (logits, prepared) =
                self.forward_and_prepare(&feed, &mut cache, sampler, step, &new_tokens)?;
            let logits = Arc::new(logits);
            let decision = match prepared? {
                Prepared::Decided(d) => d,
                Prepared::NeedLogits => sampler.decide(step, &logits)?,
            };
            let chosen = match decision {
                Decision::Pick(t) => vec![t],
                Decision::Sample(spec) => {
                    vec![self.sample(&logits, &spec, &req.params, &history, &mut rng, sampler)?]
                }
                Decision::Force(tokens) if tokens.is_empty() => {
                    return Err(invalid_decision(sampler, "forced an empty list of tokens"));
                }
                Decision::Force(tokens) => tokens,
                Decision::Stop => {
                    out.finish_reason = FinishReason::SamplerStop;
                    break;
                }
            };
            if let Some(bad) = chosen.iter().find(|&&t| t >= vocab) {
                return Err(invalid_decision(
                    sampler,
                    &format!("chose token {bad}, outside the vocabulary of {vocab}"),
                ));
            }

            let mut delta = Delta::default();
            let mut appended = Vec::with_capacity(chosen.len());
            for (i, &token) in chosen.iter().enumerate() {
                appended.push(token);
                out.tokens.push(token);
                history.push_output(token);
                if let Some(n) = req.logprobs {
                    // Only the first token of a forced run has the model's
                    // scores for its position.
                    let lp = (i == 0).then(|| sampling::logprobs(&logits, token, n));
                    delta.logprobs.push(lp.clone());
                    if let Some(all) = out.logprobs.as_mut() {
                        all.push(lp);
                    }
                }
                delta.tokens.push(token);
                if eos.contains(&token) {
                    out.finish_reason = FinishReason::Stop;
                    done = true;
                    break;
                }
                let released = stops.push(&detok.push(token));
                delta.text.push_str(&released.text);
                if released.stopped {
                    out.finish_reason = FinishReason::Stop;
                    hit_stop_string = true;
                    done = true;
                    break;
                }
                if out.tokens.len() >= max_tokens {
                    out.finish_reason = FinishReason::Length;
                    done = true;
                    break;
                }
            }
            out.text.push_str(&delta.text);
            on_delta(&delta);
            if step == 0 {
                out.timings.prefill = started.elapsed();
            } else {
                out.timings.decode += started.elapsed();
            }
            out.timings.forward_passes += 1;
            feed = appended.clone();
            new_tokens = appended;
            step += 1;
        }
        if !hit_stop_string {
            // Flush text held back for an incomplete character or a
            // possible stop string that never completed.
            let rest = stops.push(&detok.finish());
            let mut tail = rest.text;
            if !rest.stopped {
                tail.push_str(&stops.finish());
            }
            if !tail.is_empty() {
                out.text.push_str(&tail);
                on_delta(&Delta {
                    text: tail,
                    ..Delta::default()
                });
            }
        }
        out.usage.completion_tokens = out.tokens.len();
        Ok(out)
    }

    /// Run the forward pass over `feed` and, beside it on another thread,
    /// the sampler's `prepare` (unless it is trivial).
    fn forward_and_prepare(
        &self,
        feed: &[u32],
        cache: &mut KvCache,
        sampler: &mut dyn Sampler,
        step: u32,
        new_tokens: &[u32],
    ) -> Result<(Vec<f32>, Result<Prepared, crate::sampler::SamplerError>), GenerateError> {
        let forward = |cache: &mut KvCache| -> Result<Vec<f32>, GenerateError> {
            let logits = self.model.forward(&mut [SeqInput {
                tokens: feed,
                cache,
            }])?;
            Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
        };
        if sampler.prepare_is_trivial() {
            let prepared = sampler.prepare(step, new_tokens);
            return Ok((forward(cache)?, prepared));
        }
        std::thread::scope(|s| {
            let prepare = s.spawn(|| sampler.prepare(step, new_tokens));
            let logits = forward(cache);
            let prepared = prepare.join().unwrap_or_else(|_| {
                Err(crate::sampler::SamplerError {
                    sampler: "sampler".into(),
                    message: "its prepare step panicked".into(),
                    source: None,
                })
            });
            Ok((logits?, prepared))
        })
    }

    /// The built-in sampler's pick under `spec`.
    fn sample(
        &self,
        raw: &[f32],
        spec: &SampleSpec,
        request: &SamplingParams,
        history: &TokenHistory,
        rng: &mut SequenceRng,
        sampler: &dyn Sampler,
    ) -> Result<u32, GenerateError> {
        let params = match &spec.params {
            Some(p) => request.with_overrides(p),
            None => request.clone(),
        };
        let mut logits = raw.to_vec();
        sampling::process_logits(&mut logits, &params, history);
        if spec.allow.is_some() || spec.deny.is_some() {
            sampling::apply_mask(&mut logits, spec.allow.as_ref(), spec.deny.as_ref())
                .map_err(|e| invalid_decision(sampler, &e.to_string()))?;
        }
        if !spec.bias.is_empty() {
            sampling::apply_bias(&mut logits, &spec.bias);
        }
        Ok(sampling::sample(&logits, &params, rng))
    }
}

fn invalid_decision(sampler: &dyn Sampler, message: &str) -> GenerateError {
    GenerateError::Sampler(crate::sampler::SamplerError {
        sampler: sampler.name().to_owned(),
        message: message.to_owned(),
        source: None,
    })
}

/// A seed for a request that gave none.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
