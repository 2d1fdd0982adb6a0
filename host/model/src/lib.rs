//! Language models on candle: checkpoint loading (Hugging Face directories
//! and GGUF), the model architectures, tokenizers and chat templates.
//!
//! Nothing here knows about serving: the engine drives these models through
//! [`CausalLm`], one batch of sequences at a time, each sequence carrying its
//! own [`KvCache`].

pub mod attention;
pub mod cache;
pub mod chat;
pub mod checkpoint;
pub mod deepseek;
pub mod linear;
pub mod llama;
pub mod loader;
pub mod quant;
pub mod tokenizer;
pub mod toolcall;

use std::path::{Path, PathBuf};

pub use cache::KvCache;
pub use chat::{ChatMessage, ChatTemplate, ToolCall, ToolSpec};
pub use loader::{LoadOptions, LoadedModel, load};
pub use tokenizer::{Detokenizer, SpecialKind, SpecialToken, Tokenizer};
pub use toolcall::{CallConstraint, OutputSplitter, ParsedOutput, Piece, ToolCallFormat};

/// What the engine needs to know about a model.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModelInfo {
    /// `model_type` of config.json, or `general.architecture` of a GGUF file.
    pub architecture: String,
    /// Logits per step.
    pub vocab_size: usize,
    /// Longest sequence the model was trained for.
    pub max_context: usize,
    pub layers: usize,
    pub hidden_size: usize,
    /// Bytes of attention cache one token takes, summed over layers.
    pub kv_bytes_per_token: usize,
}

/// One sequence's part of a forward pass: the tokens to append and its cache
/// (positions continue from `cache.len()`).
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// A causal language model.
pub trait CausalLm: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// An empty cache for a new sequence.
    fn new_cache(&self) -> KvCache;

    /// Run the tokens of every sequence in `batch` through the model,
    /// appending them to their caches. Returns the logits after each
    /// sequence's last token, `[batch.len(), vocab_size]`, in f32.
    fn forward(&self, batch: &mut [SeqInput<'_>]) -> candle_core::Result<candle_core::Tensor>;

    /// Time spent in named parts of the forward pass since the model was
    /// loaded (for benchmarks: where the time goes), if the model keeps it.
    fn profile(&self) -> Vec<(&'static str, std::time::Duration)> {
        Vec::new()
    }
}

/// Accumulated wall time, cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Timer(std::sync::atomic::AtomicU64);

impl Timer {
    /// Run `f`, adding its duration.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = f();
        let ns = start.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
        self.0.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        out
    }

    /// Time until the returned guard drops.
    pub fn start(&self) -> TimerGuard<'_> {
        TimerGuard(self, std::time::Instant::now())
    }

    pub fn total(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Adds the time since [`Timer::start`] to its timer when dropped.
pub struct TimerGuard<'a>(&'a Timer, std::time::Instant);

impl Drop for TimerGuard<'_> {
    fn drop(&mut self) {
        let ns = self.1.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
        self.0.0.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: bad model configuration: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { name: String, path: PathBuf },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: unknown architecture `{found}`; deepwasm runs {supported}")]
    UnknownArchitecture {
        found: String,
        path: PathBuf,
        supported: String,
    },
    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: tokenizer::TokenizerError,
    },
    #[error("{path}: the chat template: {source}")]
    ChatTemplate {
        path: PathBuf,
        #[source]
        source: chat::ChatTemplateError,
    },
    #[error("{path}: {source}")]
    Candle {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
}

impl ModelError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
