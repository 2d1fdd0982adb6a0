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
pub mod lora;
pub mod quant;
pub mod tokenizer;
pub mod toolcall;
pub mod train;

use std::path::{Path, PathBuf};

pub use cache::KvCache;
pub use chat::{ChatMessage, ChatTemplate, ToolCall, ToolSpec};
pub use loader::{LoadOptions, LoadedModel, load, load_remote};
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
    /// A LoRA adapter applied to this sequence's rows only (sequences with
    /// different adapters, or none, share the pass). Its cache must have
    /// been built with the same adapter.
    pub adapter: Option<&'a lora::ServedAdapter>,
}

/// What a forward pass returns for one sequence of its batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// The logits after its last token: what generation needs.
    #[default]
    Last,
    /// The logits after each of its tokens, in order (scoring a prompt).
    AllLogits,
    /// The final hidden state (after the last norm) of each of its tokens,
    /// and no logits (embeddings).
    Hidden,
}

/// What a forward pass returns: rows in batch order, each sequence's rows
/// in token order, as its [`Output`] asked.
#[derive(Debug)]
pub struct Outputs {
    /// `[rows, vocab_size]`, f32; no rows when every sequence asked for
    /// hidden states.
    pub logits: candle_core::Tensor,
    /// `[rows, hidden_size]`, f32, when some sequence asked for them.
    pub hidden: Option<candle_core::Tensor>,
}

/// The rows of a pass's `total` activations that `outputs` need, for
/// sequences of `lens` tokens each: `(logit rows, hidden rows)`.
pub fn output_rows(lens: &[usize], outputs: &[Output]) -> (Vec<u32>, Vec<u32>) {
    let (mut logits, mut hidden) = (Vec::with_capacity(lens.len()), Vec::new());
    let mut start = 0u32;
    for (i, &n) in lens.iter().enumerate() {
        let n = n as u32;
        match outputs.get(i).copied().unwrap_or_default() {
            Output::Last => logits.push(start + n - 1),
            Output::AllLogits => logits.extend(start..start + n),
            Output::Hidden => hidden.extend(start..start + n),
        }
        start += n;
    }
    (logits, hidden)
}

/// The end of a forward pass over `batch`: each sequence's cache moves
/// past the tokens it took, and the [`Outputs`] come from the final
/// activations `x` (`[total, hidden]`, before the last norm) through the
/// model's final `norm` and `head`, only the rows asked for.
pub fn finish_pass(
    batch: &mut [SeqInput<'_>],
    x: &candle_core::Tensor,
    outputs: &[Output],
    vocab: usize,
    norm: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
    head: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
) -> candle_core::Result<Outputs> {
    use candle_core::{DType, Tensor};
    let lens: Vec<usize> = batch.iter().map(|s| s.tokens.len()).collect();
    for (seq, &n) in batch.iter_mut().zip(&lens) {
        seq.cache.advance(n);
    }
    let (logit_rows, hidden_rows) = output_rows(&lens, outputs);
    let rows = |r: Vec<u32>| -> candle_core::Result<Tensor> {
        let n = r.len();
        norm(&x.index_select(&Tensor::from_vec(r, n, x.device())?, 0)?)
    };
    let logits = if logit_rows.is_empty() {
        Tensor::zeros((0, vocab), DType::F32, x.device())?
    } else {
        head(&rows(logit_rows)?)?.to_dtype(DType::F32)?
    };
    let hidden = match hidden_rows.is_empty() {
        true => None,
        false => Some(rows(hidden_rows)?.to_dtype(DType::F32)?),
    };
    Ok(Outputs { logits, hidden })
}

/// A causal language model.
pub trait CausalLm: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// An empty cache for a new sequence.
    fn new_cache(&self) -> KvCache;

    /// Run the tokens of every sequence in `batch` through the model,
    /// appending them to their caches. Returns the logits after each
    /// sequence's last token, `[batch.len(), vocab_size]`, in f32.
    fn forward(&self, batch: &mut [SeqInput<'_>]) -> candle_core::Result<candle_core::Tensor> {
        let outputs = vec![Output::Last; batch.len()];
        Ok(self.forward_outputs(batch, &outputs)?.logits)
    }

    /// [`CausalLm::forward`], returning for each sequence what its entry of
    /// `outputs` asks.
    fn forward_outputs(
        &self,
        batch: &mut [SeqInput<'_>],
        outputs: &[Output],
    ) -> candle_core::Result<Outputs>;

    /// Time spent in named parts of the forward pass since the model was
    /// loaded (for benchmarks: where the time goes), if the model keeps it.
    fn profile(&self) -> Vec<(&'static str, std::time::Duration)> {
        Vec::new()
    }

    /// The Llama-family model underneath, for what only it supports (LoRA
    /// adapters and training).
    fn as_llama(&self) -> Option<&llama::Llama> {
        None
    }

    /// `adapter`, checked against this model and laid out for
    /// [`SeqInput::adapter`], named `name`.
    fn prepare_adapter(
        &self,
        name: &str,
        adapter: &lora::LoraAdapter,
    ) -> Result<std::sync::Arc<lora::ServedAdapter>, lora::LoraError> {
        let _ = (name, adapter);
        Err(lora::LoraError::Mismatch(format!(
            "LoRA adapters apply to Llama-family models; this one is `{}`",
            self.info().architecture
        )))
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
