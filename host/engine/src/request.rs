//! What a generation is asked for and what it gives back: the request, its
//! streamed deltas, the finished completion and the ways it can fail. Plain
//! data, shared by the sequence loop, the batcher, the scheduler and every
//! caller that serializes them.

use std::time::Duration;

use deepwasm_model::{ChatMessage, ToolSpec};

use crate::sampler::SamplerError;
use crate::sampling::{SamplingParams, TokenLogprobs};

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
    /// Report log-probabilities of the prompt's tokens too (each but the
    /// first, which nothing predicts), with this many alternatives each.
    /// With `max_tokens` 0 the prompt is only scored.
    pub prompt_logprobs: Option<usize>,
    /// Instead of generating, pool the final hidden states of the prompt's
    /// tokens into [`Completion::embedding`] (`max_tokens` is ignored).
    pub embedding: Option<Pooling>,
    /// The structure the output must have, as OpenAI's `response_format`
    /// object (`json_object`, or `json_schema` with its schema), for an
    /// engine that enforces it itself: an upstream. The local engine
    /// steers with the JSON sampler instead and ignores this.
    pub structured: Option<serde_json::Value>,
    /// A LoRA adapter to generate with (the base model when `None`).
    pub adapter: Option<std::sync::Arc<deepwasm_model::lora::ServedAdapter>>,
}

/// How the prompt's final hidden states become one embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Their mean over the prompt's tokens.
    Mean,
    /// The last token's.
    Last,
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
            prompt_logprobs: None,
            embedding: None,
            structured: None,
            adapter: None,
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

/// Where a sequence's streamed text goes.
pub type DeltaSink<'a> = dyn FnMut(&Delta) + Send + 'a;

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub logprobs: Option<Vec<Option<TokenLogprobs>>>,
    /// One entry per prompt token when asked for (`prompt_logprobs`); the
    /// first is `None`.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    /// The pooled embedding, when asked for.
    pub embedding: Option<Vec<f32>>,
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

/// Whether a model failure's text is a device's out-of-memory error (the
/// CUDA driver's `CUDA_ERROR_OUT_OF_MEMORY`, cuBLAS's allocation failure).
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("OUT_OF_MEMORY") || message.contains("ALLOC_FAILED")
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The wording begins as OpenAI's does, which clients such as litellm
    /// match to tell a context overflow from other bad requests.
    #[error(
        "This model's maximum context length is {context} tokens, and the prompt is {prompt} \
         tokens, which leaves no room to generate; shorten the prompt"
    )]
    PromptTooLong { prompt: usize, context: usize },
    /// The prompt alone needs more attention cache than the server holds
    /// for all sequences together (`--kv-cache-mib`).
    #[error(
        "This server's maximum context length is {budget} tokens (its attention cache budget), \
         and the prompt needs {need} tokens of attention cache with its first token; shorten the prompt"
    )]
    CacheBudget { need: usize, budget: usize },
    #[error("cannot render the chat prompt: {0}")]
    Template(String),
    #[error("cannot tokenize the prompt: {0}")]
    Tokenize(String),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error("the model failed: {0}")]
    Model(#[from] candle_core::Error),
    /// What the request asks for cannot be done where this server generates
    /// (an upstream engine: sampler plugins, prompt log-probabilities,
    /// embeddings).
    #[error("{0}")]
    Unsupported(String),
    /// The upstream engine failed; `status` is what a client should be
    /// answered (502 bad gateway, 503 busy, 504 timeout, 400 when the
    /// upstream judged the request bad).
    #[error("the upstream engine failed: {message}")]
    Upstream {
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
    /// The device had no memory left for a forward pass this sequence was
    /// in; the sequence ended, and the server goes on.
    #[error("the device ran out of memory for this step; retry shortly ({0})")]
    DeviceMemory(String),
    /// The caller cancelled the request before it finished.
    #[error("the request was cancelled")]
    Cancelled,
    /// Too many requests are waiting for a place already; try again soon.
    #[error("the server is at capacity ({waiting} requests waiting); retry shortly")]
    Overloaded { waiting: usize },
}
