//! Generating sequences: prefill, then decode step by step with the KV
//! cache, a sampler deciding each token, stop rules ending it, and text
//! streamed as it is produced; several sequences share each forward pass.

use std::sync::Arc;
use std::time::Duration;

use deepwasm_model::{
    CausalLm, ChatMessage, ChatTemplate, LoadedModel, Tokenizer, ToolCallFormat, ToolSpec,
};

use crate::batcher::{Batcher, Job};
use crate::sampler::Sampler;
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
    /// The caller cancelled the request before it finished.
    #[error("the request was cancelled")]
    Cancelled,
}

/// A loaded model and what it takes to prompt it.
#[derive(Clone)]
pub struct Engine {
    pub name: String,
    pub model: Arc<dyn CausalLm>,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
    /// How the model writes tool calls.
    pub tool_format: ToolCallFormat,
    /// Whether the chat template describes `tools` itself; when it does not,
    /// [`render_prompt`](Self::render_prompt) adds a system message that
    /// does, and writes past calls and their results as text (see
    /// [`ToolCallFormat::adapt_messages`]).
    pub template_renders_tools: bool,
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
        let source = m.chat_template.as_ref().map(|t| t.source());
        let tool_format = ToolCallFormat::detect(source, &m.tokenizer);
        let template_renders_tools = m.chat_template.as_ref().is_some_and(|t| {
            t.has_tool_use() || ToolCallFormat::template_renders_tools(t.source())
        });
        Engine {
            name: m.name,
            model: m.model,
            tokenizer: m.tokenizer,
            chat_template: m.chat_template,
            tool_format,
            template_renders_tools,
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
                // Past calls and their results need adapting even when no
                // tools are offered this turn.
                let tool_history = messages
                    .iter()
                    .any(|m| !m.tool_calls.is_empty() || m.role == "tool");
                let adapted;
                let messages = if self.template_renders_tools || (tools.is_empty() && !tool_history)
                {
                    messages
                } else {
                    adapted = self
                        .tool_format
                        .adapt_messages(template.source(), messages, tools);
                    &adapted
                };
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
    pub fn generate(
        &self,
        req: &GenerateRequest,
        sampler: &mut dyn Sampler,
        on_delta: &mut (dyn FnMut(&Delta) + Send),
    ) -> Result<Completion, GenerateError> {
        let mut results = self.generate_batch(vec![BatchItem {
            req,
            sampler,
            on_delta,
        }]);
        results.pop().expect("one result per item")
    }

    /// Generate several sequences together: each step runs one forward pass
    /// over every unfinished sequence (the weights are read once for all of
    /// them), each with its own sampler, stop rules and stream. A sequence
    /// that fails ends alone; the others go on. Results are in order.
    ///
    /// Runs on a thread of rayon's pool: the model's kernels split their
    /// work with rayon, and a split started from a pool thread runs inline
    /// instead of being handed to the pool and waited for (a futex round
    /// trip per matmul, measured at ~10% of a decode step).
    pub fn generate_batch(
        &self,
        items: Vec<BatchItem<'_>>,
    ) -> Vec<Result<Completion, GenerateError>> {
        if rayon::current_thread_index().is_some() {
            return self.generate_batch_here(items);
        }
        rayon::scope(|_| self.generate_batch_here(items))
    }

    fn generate_batch_here(
        &self,
        items: Vec<BatchItem<'_>>,
    ) -> Vec<Result<Completion, GenerateError>> {
        let n = items.len();
        let results: Vec<std::sync::Mutex<Option<Result<Completion, GenerateError>>>> =
            (0..n).map(|_| std::sync::Mutex::new(None)).collect();
        {
            let mut batcher = Batcher::new(self, n);
            for (i, item) in items.into_iter().enumerate() {
                let slot = &results[i];
                batcher.submit(Job {
                    req: item.req.clone(),
                    sampler: Box::new(item.sampler),
                    sink: Box::new(item.on_delta),
                    done: Box::new(move |r| {
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r)
                    }),
                    cancelled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                });
            }
            batcher.run_to_end();
        }
        results
            .into_iter()
            .map(|r| {
                r.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| Err(GenerateError::Invalid("the sequence never ran".into())))
            })
            .collect()
    }
}

/// Where a sequence's streamed text goes.
pub type DeltaSink<'a> = dyn FnMut(&Delta) + Send + 'a;

/// One sequence of a batch: its request, its sampler and where its text goes.
pub struct BatchItem<'r> {
    pub req: &'r GenerateRequest,
    pub sampler: &'r mut dyn Sampler,
    pub on_delta: &'r mut (dyn FnMut(&Delta) + Send),
}

/// A seed for a request that gave none.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Runs generation requests one at a time from the caller's view: the
/// engine itself (the CLI), or a server's shared batch, where the request
/// joins whatever else is decoding. Agents and other multi-turn callers
/// generate through this, so they work the same in both places.
pub trait Generator: Send + Sync {
    /// The engine requests run on (its tokenizer, template and model info).
    fn engine(&self) -> &Engine;

    /// Generate `req` with `sampler`, streaming to `on_delta`. Setting
    /// `cancelled` ends the sequence at the next step.
    fn run(
        &self,
        req: GenerateRequest,
        sampler: Box<dyn Sampler>,
        on_delta: Box<dyn FnMut(&Delta) + Send>,
        cancelled: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Completion, GenerateError>;
}

impl Generator for Engine {
    fn engine(&self) -> &Engine {
        self
    }

    fn run(
        &self,
        req: GenerateRequest,
        sampler: Box<dyn Sampler>,
        on_delta: Box<dyn FnMut(&Delta) + Send>,
        cancelled: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Completion, GenerateError> {
        let result = std::sync::Mutex::new(None);
        let run = || {
            let mut batcher = Batcher::new(self, 1);
            batcher.submit(Job {
                req,
                sampler,
                sink: on_delta,
                done: Box::new(|r| *result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r)),
                cancelled,
            });
            batcher.run_to_end();
        };
        if rayon::current_thread_index().is_some() {
            run();
        } else {
            rayon::scope(|_| run());
        }
        result
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(Err(GenerateError::Cancelled))
    }
}
