//! Choosing and loading the model, shared by the subcommands that need one.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_model::{LoadOptions, LoadedModel};

/// The file name of the default model in the model cache.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face directory (config.json, *.safetensors,
    /// tokenizer.json) [default: SmolLM2-135M-Instruct from the model cache]
    #[arg(long, env = "DEEPWASM_MODEL")]
    pub model: Option<PathBuf>,
    /// Where to run: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// What DeepSeek models cache per token: the compressed `latent` (with
    /// the up-projection absorbed), or `expanded` per-head keys and values.
    #[arg(long, default_value = "latent", value_parser = ["latent", "expanded"])]
    pub mla_cache: String,
    /// The dtype of a Hugging Face checkpoint's weights and activations:
    /// `auto` is bf16 on a GPU and f32 on the CPU. GGUF models keep their
    /// quantized weights and compute in f32.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16", "f16"])]
    pub dtype: String,
}

/// `$DEEPWASM_CACHE/models`, default `~/.cache/deepwasm/models`: where
/// `scripts/setup` puts the default model.
pub fn model_cache() -> PathBuf {
    let base = std::env::var_os("DEEPWASM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/deepwasm"))
                .unwrap_or_else(|| PathBuf::from(".cache/deepwasm"))
        });
    base.join("models")
}

impl ModelArgs {
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.model {
            return Ok(p.clone());
        }
        let p = model_cache().join(DEFAULT_MODEL);
        if !p.is_file() {
            bail!(
                "the default model is not in the cache ({}); fetch it with `scripts/setup`, or name one with --model",
                p.display()
            );
        }
        Ok(p)
    }

    pub fn device(&self) -> anyhow::Result<candle_core::Device> {
        match self.device.as_str() {
            "cpu" => Ok(candle_core::Device::Cpu),
            d if d == "cuda" || d.starts_with("cuda:") => {
                let ordinal: usize = d
                    .strip_prefix("cuda:")
                    .map_or(Ok(0), str::parse)
                    .context("bad CUDA ordinal")?;
                cuda_device(ordinal)
            }
            other => bail!("unknown device `{other}`; use cpu, cuda or cuda:N"),
        }
    }

    /// The model's tokenizer, chat template and shape, without its weights,
    /// for generating on `upstream` (whose context length, when it says,
    /// is the one that holds).
    pub fn load_remote(&self, served: &deepwasm_upstream::Served) -> anyhow::Result<LoadedModel> {
        let path = self.path()?;
        deepwasm_model::load_remote(&path, served.max_model_len)
            .with_context(|| format!("cannot read the model {}", path.display()))
    }

    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let path = self.path()?;
        let opts = LoadOptions {
            device: self.device()?,
            mla_cache: if self.mla_cache == "expanded" {
                deepwasm_model::deepseek::MlaCache::Expanded
            } else {
                deepwasm_model::deepseek::MlaCache::Latent
            },
            dtype: match self.dtype.as_str() {
                "f32" => Some(candle_core::DType::F32),
                "bf16" => Some(candle_core::DType::BF16),
                "f16" => Some(candle_core::DType::F16),
                _ => None,
            },
        };
        let device = opts.device.clone();
        deepwasm_model::load(&path, &opts).map_err(|e| {
            let e = anyhow::Error::new(e);
            match out_of_device_memory(&e, &device, &path) {
                Some(why) => e.context(why),
                None => e,
            }
            .context(format!("cannot load the model {}", path.display()))
        })
    }
}

/// CUDA device `ordinal`, or an error that names the cause: a build
/// without CUDA, no driver, or no such device.
fn cuda_device(ordinal: usize) -> anyhow::Result<candle_core::Device> {
    if !cfg!(feature = "cuda") {
        bail!(
            "this deepwasm was built without CUDA; build it with `cargo build --release --features cuda` \
             (README, GPUs) or use --device cpu"
        );
    }
    // cudarc panics when it cannot load the driver's libcuda: that is
    // "no driver", not a crash. The panic's own report is kept quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let made = std::panic::catch_unwind(|| candle_core::Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match made {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot use CUDA device {ordinal}: {e} (is there a GPU with that number? \
             `nvidia-smi -L` lists them)"
        )),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown");
            bail!(
                "no NVIDIA driver: the CUDA driver library (libcuda.so) could not be loaded ({why}); \
                 install the driver, or use --device cpu"
            )
        }
    }
}

/// When loading onto a GPU ran out of its memory: what the weights need
/// (their files' size, as stored) against what the device has free.
fn out_of_device_memory(
    e: &anyhow::Error,
    device: &candle_core::Device,
    path: &std::path::Path,
) -> Option<String> {
    if !device.is_cuda() || !format!("{e:#}").contains("OUT_OF_MEMORY") {
        return None;
    }
    let stored: u64 = if path.is_dir() {
        std::fs::read_dir(path)
            .ok()?
            .flatten()
            .filter(|f| f.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    } else {
        std::fs::metadata(path).ok()?.len()
    };
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let free = device_memory(device)
        .map(|(free, total)| format!("{:.1} GiB free of {:.1} GiB", gib(free), gib(total)))
        .unwrap_or_else(|| "its free memory unknown".into());
    Some(format!(
        "out of device memory: the weights take {:.1} GiB as stored (more where they are \
         widened to bf16 or f32), and the device has {free}",
        gib(stored)
    ))
}

/// The attention cache's default budget on a GPU: the memory free once the
/// weights are loaded, less [`activation_reserve`] (and never less than a
/// twentieth of the device kept back). `None` off a GPU, where the
/// server's own default (a share of the machine's memory) applies.
pub fn device_kv_cache_bytes(
    device: &candle_core::Device,
    info: &deepwasm_model::ModelInfo,
    step_tokens: usize,
    max_batch: usize,
) -> Option<u64> {
    let (free, total) = device_memory(device)?;
    let reserve = activation_reserve(info, step_tokens, max_batch).max(total / 20);
    Some(free.saturating_sub(reserve))
}

/// Device memory a forward pass may need beside the weights and the
/// cache, with room to spare: per token of the pass, about sixteen f32
/// vectors of the hidden size (residual, norms, attention and MLP
/// intermediates, freed layer by layer) and the MLP's intermediate
/// (taken as four hidden sizes); per sequence, its row of logits in f32
/// and in the weights' dtype.
pub fn activation_reserve(
    info: &deepwasm_model::ModelInfo,
    step_tokens: usize,
    max_batch: usize,
) -> u64 {
    let tokens = step_tokens.max(max_batch) as u64;
    let per_token = 20 * info.hidden_size as u64 * 4;
    let per_sequence = info.vocab_size as u64 * (4 + 4);
    tokens * per_token + max_batch as u64 * per_sequence
}

/// `(free, total)` bytes of a CUDA device's memory.
#[cfg(feature = "cuda")]
fn device_memory(device: &candle_core::Device) -> Option<(u64, u64)> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some((free as u64, total as u64))
}

#[cfg(not(feature = "cuda"))]
fn device_memory(_: &candle_core::Device) -> Option<(u64, u64)> {
    None
}
