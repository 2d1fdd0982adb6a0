//! The model registry: from a path to a ready model, tokenizer and chat
//! template, with the architecture chosen by the checkpoint itself
//! (`model_type` in config.json, `general.architecture` in GGUF).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};

use crate::checkpoint::Checkpoint;
use crate::deepseek::{DeepSeek, DeepSeekConfig, MlaCache};
use crate::llama::{Llama, LlamaConfig, RopeStyle, default_dtype};
use crate::{
    CausalLm, ChatTemplate, KvCache, ModelError, ModelInfo, Output, Outputs, SeqInput, Tokenizer,
};

/// The architectures this build can load, by their config.json `model_type`
/// (GGUF `general.architecture` in parentheses where it differs).
pub const SUPPORTED: &str = "llama, mistral, qwen2, deepseek_v2, deepseek_v3";

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// Dtype of dense weights and activations; `None` picks the device's
    /// default (f32 on CPU, bf16 on CUDA). GGUF models compute in f32.
    pub dtype: Option<DType>,
    /// What DeepSeek models keep in their attention cache.
    pub mla_cache: MlaCache,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: None,
            mla_cache: MlaCache::Latent,
        }
    }
}

/// A model ready to serve.
pub struct LoadedModel {
    /// A short name: the file or directory name.
    pub name: String,
    pub path: PathBuf,
    pub model: Arc<dyn CausalLm>,
    pub tokenizer: Arc<Tokenizer>,
    /// `None` when the checkpoint ships no template (a base model).
    pub chat_template: Option<Arc<ChatTemplate>>,
    pub load_time: Duration,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("info", self.model.info())
            .finish_non_exhaustive()
    }
}

/// Load the model at `path`: a `.gguf` file, or a Hugging Face directory
/// with `config.json`, `*.safetensors` and `tokenizer.json`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel, ModelError> {
    let start = Instant::now();
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    let (model, tokenizer): (Arc<dyn CausalLm>, Tokenizer) = if meta.is_dir() {
        load_hf_dir(path, opts)?
    } else {
        load_gguf(path, opts)?
    };
    finish(path, model, tokenizer, start)
}

/// What a server needs of a model that generates on another engine (an
/// upstream): its tokenizer, chat template and shape, read from the same
/// files as [`load`] reads (GGUF metadata, or `config.json` and the
/// tokenizer files of a Hugging Face directory) without reading a weight.
/// The model it returns refuses to compute. `max_context`, when given,
/// replaces the context length the files state (the serving engine's own).
pub fn load_remote(path: &Path, max_context: Option<usize>) -> Result<LoadedModel, ModelError> {
    let start = Instant::now();
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    let (info, tokenizer) = if meta.is_dir() {
        let config_path = path.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: config_path.clone(),
                reason: format!("not valid JSON: {e}"),
            })?;
        let int = |key: &str| {
            json[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Config {
                    path: config_path.clone(),
                    reason: format!("`{key}` is missing or not a number"),
                })
        };
        let info = ModelInfo {
            architecture: json["model_type"].as_str().unwrap_or_default().to_owned(),
            vocab_size: int("vocab_size")?,
            max_context: int("max_position_embeddings").unwrap_or(4096),
            layers: int("num_hidden_layers")?,
            hidden_size: int("hidden_size")?,
            kv_bytes_per_token: 0,
        };
        let tokenizer = Tokenizer::from_hf_dir(path).map_err(|source| ModelError::Tokenizer {
            path: path.to_owned(),
            source,
        })?;
        (info, tokenizer)
    } else {
        let ckpt = Checkpoint::open_gguf(path, &Device::Cpu)?;
        let metadata = ckpt
            .gguf_metadata()
            .expect("a GGUF checkpoint has metadata");
        let arch = gguf_architecture(metadata, path)?;
        let cfg = LlamaConfig::from_gguf(metadata, &arch, path)?;
        let tokenizer = Tokenizer::from_gguf(metadata).map_err(|source| ModelError::Tokenizer {
            path: path.to_owned(),
            source,
        })?;
        let info = ModelInfo {
            architecture: arch,
            vocab_size: cfg.vocab_size,
            max_context: cfg.max_position_embeddings,
            layers: cfg.num_hidden_layers,
            hidden_size: cfg.hidden_size,
            kv_bytes_per_token: 0,
        };
        (info, tokenizer)
    };
    let mut info = info;
    if let Some(n) = max_context {
        info.max_context = n;
    }
    finish(path, Arc::new(Remote { info }), tokenizer, start)
}

/// A model whose weights are elsewhere: it has a shape, and no forward
/// pass.
struct Remote {
    info: ModelInfo,
}

impl CausalLm for Remote {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.info.layers)
    }

    fn forward_outputs(
        &self,
        _batch: &mut [SeqInput<'_>],
        _outputs: &[Output],
    ) -> candle_core::Result<Outputs> {
        Err(candle_core::Error::Msg(
            "this model's weights are not loaded here: it generates on an upstream engine".into(),
        ))
    }
}

/// The chat template, the vocabulary check and the name, for a model and
/// tokenizer read from `path`.
fn finish(
    path: &Path,
    model: Arc<dyn CausalLm>,
    tokenizer: Tokenizer,
    start: Instant,
) -> Result<LoadedModel, ModelError> {
    let chat_template = match tokenizer.chat_template() {
        Some(source) => Some(Arc::new(
            ChatTemplate::new(source, tokenizer.bos_text(), tokenizer.eos_text()).map_err(
                |source| ModelError::ChatTemplate {
                    path: path.to_owned(),
                    source,
                },
            )?,
        )),
        None => None,
    };
    if tokenizer.vocab_size() > model.info().vocab_size {
        return Err(ModelError::Config {
            path: path.to_owned(),
            reason: format!(
                "the tokenizer has {} tokens but the model only {} logits",
                tokenizer.vocab_size(),
                model.info().vocab_size
            ),
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(LoadedModel {
        name,
        path: path.to_owned(),
        model,
        tokenizer: Arc::new(tokenizer),
        chat_template,
        load_time: start.elapsed(),
    })
}

/// `general.architecture` of a GGUF file's metadata.
fn gguf_architecture(
    metadata: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
    path: &Path,
) -> Result<String, ModelError> {
    metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| ModelError::Config {
            path: path.to_owned(),
            reason: "missing metadata `general.architecture`".into(),
        })
}

fn load_gguf(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Arc<dyn CausalLm>, Tokenizer), ModelError> {
    let ckpt = Checkpoint::open_gguf(path, &opts.device)?;
    let metadata = ckpt
        .gguf_metadata()
        .expect("a GGUF checkpoint has metadata");
    let arch = gguf_architecture(metadata, path)?;
    let tokenizer = Tokenizer::from_gguf(metadata).map_err(|source| ModelError::Tokenizer {
        path: path.to_owned(),
        source,
    })?;
    let model: Arc<dyn CausalLm> = match arch.as_str() {
        // llama.cpp permutes Llama's query and key weights for interleaved
        // rotary embeddings; it leaves Qwen2's in the NeoX layout.
        "llama" => Arc::new(Llama::load(
            LlamaConfig::from_gguf(metadata, &arch, path)?,
            &ckpt,
            RopeStyle::Interleaved,
        )?),
        "qwen2" => Arc::new(Llama::load(
            LlamaConfig::from_gguf(metadata, &arch, path)?,
            &ckpt,
            RopeStyle::Half,
        )?),
        other => {
            return Err(ModelError::UnknownArchitecture {
                found: other.to_owned(),
                path: path.to_owned(),
                supported: "GGUF llama, qwen2".into(),
            });
        }
    };
    Ok((model, tokenizer))
}

fn load_hf_dir(
    dir: &Path,
    opts: &LoadOptions,
) -> Result<(Arc<dyn CausalLm>, Tokenizer), ModelError> {
    let config_path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: config_path.clone(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let model_type = json["model_type"].as_str().unwrap_or_default().to_owned();
    let dtype = opts.dtype.unwrap_or_else(|| default_dtype(&opts.device));
    let tokenizer = Tokenizer::from_hf_dir(dir).map_err(|source| ModelError::Tokenizer {
        path: dir.to_owned(),
        source,
    })?;
    let model: Arc<dyn CausalLm> = match model_type.as_str() {
        "llama" | "mistral" | "qwen2" => {
            let cfg: LlamaConfig =
                serde_json::from_value(json).map_err(|e| ModelError::Config {
                    path: config_path.clone(),
                    reason: e.to_string(),
                })?;
            let ckpt = Checkpoint::open_safetensors(dir, &opts.device, dtype)?;
            Arc::new(Llama::load(cfg, &ckpt, RopeStyle::Half)?)
        }
        "deepseek_v2" | "deepseek_v3" => {
            let cfg: DeepSeekConfig =
                serde_json::from_value(json).map_err(|e| ModelError::Config {
                    path: config_path.clone(),
                    reason: e.to_string(),
                })?;
            let ckpt = Checkpoint::open_safetensors(dir, &opts.device, dtype)?;
            Arc::new(DeepSeek::load(cfg, &ckpt, opts.mla_cache)?)
        }
        other => {
            return Err(ModelError::UnknownArchitecture {
                found: if other.is_empty() {
                    "(no model_type)".into()
                } else {
                    other.to_owned()
                },
                path: config_path,
                supported: SUPPORTED.into(),
            });
        }
    };
    Ok((model, tokenizer))
}

#[cfg(test)]
mod fuzz;
