//! The Llama-family decoder: Llama 2/3, SmolLM2, Mistral, Qwen2/2.5, and so
//! the DeepSeek-R1 distilled models (DeepSeek-R1-Distill-Llama and -Qwen).
//!
//! Touvron et al., "LLaMA: Open and Efficient Foundation Language Models"
//! (2023); reference implementation: Hugging Face transformers
//! `models/llama/modeling_llama.py` and `models/qwen2/modeling_qwen2.py`.
//! Qwen2 is Llama with biases on the query, key and value projections,
//! which this module reads whenever a checkpoint has them.
//!
//! The forward pass takes a batch of sequences packed into one matrix: the
//! projections and the MLP run once over all of their tokens (a decode step
//! of many sequences reads each weight once), attention runs per sequence
//! against that sequence's own cache.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};

use crate::attention;
use crate::cache::KvCache;
use crate::checkpoint::{Checkpoint, TensorName};
use crate::linear::Linear;
use crate::{CausalLm, ModelError, ModelInfo, Output, Outputs, SeqInput, finish_pass};

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension i pairs with i + d/2 (Hugging Face `rotate_half`, GPT-NeoX).
    Half,
    /// Dimension 2i pairs with 2i + 1 (GPT-J). llama.cpp's converter permutes
    /// the query and key weights of Llama models into this layout.
    Interleaved,
}

/// Rotary embedding frequency scaling for long contexts.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a
    /// smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

/// The architecture hyper-parameters, as `config.json` spells them.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_max_position_embeddings() -> usize {
    4096
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or_else(|| self.hidden_size / self.num_attention_heads)
    }

    /// Why these sizes cannot describe a model, if they cannot: a count or
    /// width of zero, heads that do not share key/value heads evenly, or
    /// shapes too large to count. Checked before any weight is read; past
    /// it, every size is bounded by a weight that the file must hold.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (name, value) in [
            ("num_hidden_layers", self.num_hidden_layers),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
        ] {
            if value == 0 {
                return Err(format!("`{name}` is 0"));
            }
        }
        let (heads, kv_heads) = (self.num_attention_heads, self.kv_heads());
        if !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "{heads} attention heads is not a multiple of {kv_heads} key/value heads"
            ));
        }
        let hd = self.head_dim();
        if hd == 0 {
            return Err("the head dimension is 0".into());
        }
        // The widest projection, and the cache of a token in the widest dtype.
        let sizes = [
            heads.checked_mul(hd),
            [2, self.num_hidden_layers, kv_heads, hd, 8]
                .into_iter()
                .try_fold(1usize, usize::checked_mul),
        ];
        if sizes.contains(&None) {
            return Err(format!(
                "{heads} heads of {hd} dimensions in {} layers are too many to count",
                self.num_hidden_layers
            ));
        }
        Ok(())
    }

    /// Read the `<arch>.*` keys of a GGUF file (`arch` is
    /// `general.architecture`: `llama` or `qwen2`).
    pub fn from_gguf(
        metadata: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
        arch: &str,
        path: &Path,
    ) -> std::result::Result<Self, ModelError> {
        let get = |key: &str| {
            let full = format!("{arch}.{key}");
            metadata.get(&full).ok_or_else(|| ModelError::Config {
                path: path.to_owned(),
                reason: format!("missing metadata `{full}`"),
            })
        };
        let int = |key: &str| -> std::result::Result<usize, ModelError> {
            let v = get(key)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| ModelError::Config {
                    path: path.to_owned(),
                    reason: format!("`{arch}.{key}`: {e}"),
                })
        };
        let float = |key: &str| -> std::result::Result<f64, ModelError> {
            get(key)?
                .to_f32()
                .map(f64::from)
                .map_err(|e| ModelError::Config {
                    path: path.to_owned(),
                    reason: format!("`{arch}.{key}`: {e}"),
                })
        };
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let vocab = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.to_vec().ok())
                .map(|t| t.len())
                .ok_or_else(|| ModelError::Config {
                    path: path.to_owned(),
                    reason: format!("neither `{arch}.vocab_size` nor `tokenizer.ggml.tokens`"),
                })?,
        };
        Ok(LlamaConfig {
            model_type: arch.to_owned(),
            hidden_size: hidden,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").ok(),
            head_dim: int("attention.key_length").ok(),
            vocab_size: vocab,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")?,
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: int("context_length").unwrap_or(4096),
            tie_word_embeddings: false,
        })
    }

    /// Inverse frequencies of the rotary embedding, with any scaling applied.
    fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim();
        (0..dim / 2)
            .map(|i| {
                let freq = 1.0 / self.rope_theta.powf(2.0 * i as f64 / dim as f64);
                let freq = match &self.rope_scaling {
                    None => freq,
                    Some(RopeScaling::Linear { factor }) => freq / factor,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => {
                        let old = *original_max_position_embeddings as f64;
                        let low_wavelen = old / low_freq_factor;
                        let high_wavelen = old / high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    }
                };
                freq as f32
            })
            .collect()
    }
}

#[derive(Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(xs, &self.weight, self.eps)
    }
}

/// LoRA pairs of projections that read the same input, as one pair whose
/// output is theirs side by side: the `A`s one above the other, the `B`s
/// on a block diagonal (`widths`: each projection's outputs). `None` when
/// no projection has a pair.
fn stack_pairs(
    pairs: &[Option<&crate::lora::LoraPair>],
    widths: &[usize],
) -> Result<Option<(Tensor, Tensor)>> {
    let present: Vec<&crate::lora::LoraPair> = pairs.iter().flatten().copied().collect();
    if present.is_empty() {
        return Ok(None);
    }
    let r: usize = present.iter().map(|p| p.a.dim(0)).sum::<Result<usize>>()?;
    let a = Tensor::cat(&present.iter().map(|p| &p.a).collect::<Vec<_>>(), 0)?;
    let device = a.device().clone();
    let mut rows = Vec::with_capacity(widths.len());
    let mut at = 0;
    for (&w, pair) in widths.iter().zip(pairs) {
        let row = match pair {
            Some(pair) => {
                let pr = pair.a.dim(0)?;
                let mut cols = Vec::new();
                if at > 0 {
                    cols.push(Tensor::zeros((w, at), DType::F32, &device)?);
                }
                cols.push(pair.b.to_dtype(DType::F32)?);
                if at + pr < r {
                    cols.push(Tensor::zeros((w, r - at - pr), DType::F32, &device)?);
                }
                at += pr;
                Tensor::cat(&cols, 1)?
            }
            None => Tensor::zeros((w, r), DType::F32, &device)?,
        };
        rows.push(row);
    }
    Ok(Some((a.to_dtype(DType::F32)?, Tensor::cat(&rows, 0)?)))
}

/// One layer's adapter for serving, per group of projections that share
/// an input; each delta's output is the group's outputs side by side.
pub(crate) struct LayerDeltas {
    qkv: Option<Delta>,
    o: Option<Delta>,
    gate_up: Option<Delta>,
    down: Option<Delta>,
}

/// `s · (x Aᵀ) Bᵀ`, in the activations' dtype.
struct Delta {
    a_t: Tensor,
    b_t: Tensor,
    scale: f64,
}

impl Delta {
    fn new(pair: Option<(Tensor, Tensor)>, scale: f64, dtype: DType) -> Result<Option<Delta>> {
        let Some((a, b)) = pair else {
            return Ok(None);
        };
        Ok(Some(Delta {
            a_t: a.to_dtype(dtype)?.t()?.contiguous()?,
            b_t: b.to_dtype(dtype)?.t()?.contiguous()?,
            scale,
        }))
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.a_t)?.matmul(&self.b_t)? * self.scale
    }
}

/// The rows of a packed batch each sequence owns (`start`, `len`) and its
/// adapter.
type RowOwners<'a> = [(usize, usize, Option<&'a crate::lora::ServedAdapter>)];

/// Each row's adapter delta for the group `pick` selects in layer `l`, as
/// one `[rows, out]` tensor; `None` when no row has one (no cost then).
fn row_deltas<'a>(
    x: &Tensor,
    owners: &RowOwners<'a>,
    l: usize,
    out: usize,
    pick: impl Fn(&'a LayerDeltas) -> Option<&'a Delta>,
) -> Result<Option<Tensor>> {
    let delta_of = |a: Option<&'a crate::lora::ServedAdapter>| a.and_then(|a| pick(&a.layers[l]));
    if owners.iter().all(|(_, _, a)| delta_of(*a).is_none()) {
        return Ok(None);
    }
    // Runs of consecutive sequences with the same adapter take one product.
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < owners.len() {
        let (start, _, adapter) = owners[i];
        let id = adapter.map(|a| a.id());
        let mut len = 0;
        while i < owners.len() && owners[i].2.map(|a| a.id()) == id {
            len += owners[i].1;
            i += 1;
        }
        pieces.push(match delta_of(adapter) {
            Some(d) => d.apply(&x.narrow(0, start, len)?)?,
            None => Tensor::zeros((len, out), x.dtype(), x.device())?,
        });
    }
    Tensor::cat(&pieces, 0).map(Some)
}

/// Projections that read the same input, as one product when the weights
/// can be stacked (fewer, larger products: less overhead per token and
/// better work splitting across threads), else one product each.
#[derive(Clone)]
enum Projections {
    Stacked { fused: Linear, widths: Vec<usize> },
    Separate(Vec<Linear>),
}

impl Projections {
    fn new(parts: Vec<Linear>) -> std::result::Result<Self, candle_core::Error> {
        let refs: Vec<&Linear> = parts.iter().collect();
        Ok(match Linear::stack(&refs)? {
            Some(fused) => Projections::Stacked {
                widths: parts.iter().map(Linear::out_features).collect(),
                fused,
            },
            None => Projections::Separate(parts),
        })
    }

    /// These projections with LoRA pairs added (`None`: that part keeps
    /// its weight as it is). Stacked parts get one stacked pair: the `A`s
    /// one above the other and the `B`s on a block diagonal, so the
    /// product stays one.
    fn with_lora(
        &self,
        pairs: &[Option<&crate::lora::LoraPair>],
        scale: f64,
        dtype: DType,
    ) -> Result<Projections> {
        match self {
            Projections::Separate(parts) => Ok(Projections::Separate(
                parts
                    .iter()
                    .zip(pairs)
                    .map(|(p, pair)| match pair {
                        Some(pair) => p.with_lora(&pair.a, &pair.b, scale, dtype),
                        None => Ok(p.clone()),
                    })
                    .collect::<Result<_>>()?,
            )),
            Projections::Stacked { fused, widths } => {
                let present: Vec<&crate::lora::LoraPair> =
                    pairs.iter().flatten().copied().collect();
                if present.is_empty() {
                    return Ok(self.clone());
                }
                let r: usize = present.iter().map(|p| p.a.dim(0)).sum::<Result<usize>>()?;
                let a = Tensor::cat(&present.iter().map(|p| &p.a).collect::<Vec<_>>(), 0)?;
                let mut rows = Vec::with_capacity(widths.len());
                let mut at = 0;
                for (&w, pair) in widths.iter().zip(pairs) {
                    let device = a.device();
                    let row = match pair {
                        Some(pair) => {
                            let pr = pair.a.dim(0)?;
                            let mut cols = Vec::new();
                            if at > 0 {
                                cols.push(Tensor::zeros((w, at), DType::F32, device)?);
                            }
                            cols.push(pair.b.to_dtype(DType::F32)?);
                            if at + pr < r {
                                cols.push(Tensor::zeros((w, r - at - pr), DType::F32, device)?);
                            }
                            at += pr;
                            Tensor::cat(&cols, 1)?
                        }
                        None => Tensor::zeros((w, r), DType::F32, device)?,
                    };
                    rows.push(row);
                }
                let b = Tensor::cat(&rows, 0)?;
                Ok(Projections::Stacked {
                    fused: fused.with_lora(&a, &b, scale, dtype)?,
                    widths: widths.clone(),
                })
            }
        }
    }

    /// Each part as a dense f32 layer, any adapter merged in.
    fn merged_parts(&self) -> Result<Vec<Linear>> {
        match self {
            Projections::Separate(parts) => parts.iter().map(|p| p.merged(DType::F32)).collect(),
            Projections::Stacked { fused, widths } => {
                let all = fused.merged(DType::F32)?;
                let w = all.dense_weight()?;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&n| {
                        let bias = match all.bias() {
                            Some(b) => Some(b.narrow(0, at, n)?),
                            None => None,
                        };
                        let part = Linear::dense(w.narrow(0, at, n)?.contiguous()?, bias);
                        at += n;
                        part
                    })
                    .collect()
            }
        }
    }

    /// Each projection of `x`, in order.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Projections::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            Projections::Stacked { fused, widths } => {
                let all = fused.forward(x)?;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = all.narrow(1, at, w)?.contiguous();
                        at += w;
                        part
                    })
                    .collect()
            }
        }
    }
}

#[derive(Clone)]
struct Layer {
    attn_norm: RmsNorm,
    /// Query, key, value.
    qkv: Projections,
    o: Linear,
    mlp_norm: RmsNorm,
    /// Gate, up.
    gate_up: Projections,
    down: Linear,
}

/// A loaded Llama-family model. Holds weights only: each sequence's cache is
/// its own `KvCache`.
pub struct Llama {
    cfg: LlamaConfig,
    info: ModelInfo,
    embed: crate::linear::Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    rope_style: RopeStyle,
    device: Device,
    timers: Timers,
}

/// Where a forward pass spends its time (for `deepwasm bench`).
#[derive(Default)]
struct Timers {
    forward: crate::Timer,
    attention: crate::Timer,
    projections: crate::Timer,
    head: crate::Timer,
}

impl Llama {
    /// Build the model from `ckpt`, whose tensors follow `cfg`.
    pub fn load(
        cfg: LlamaConfig,
        ckpt: &Checkpoint,
        rope_style: RopeStyle,
    ) -> std::result::Result<Self, ModelError> {
        cfg.check().map_err(|reason| ModelError::Config {
            path: ckpt.path().to_owned(),
            reason,
        })?;
        let d = cfg.hidden_size;
        let hd = cfg.head_dim();
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
        let norm = |hf: String, gguf: String| -> std::result::Result<RmsNorm, ModelError> {
            Ok(RmsNorm {
                weight: ckpt.dense(&TensorName::new(hf, gguf), &[d])?,
                eps: cfg.rms_norm_eps as f32,
            })
        };
        let embed_name = TensorName::new("model.embed_tokens.weight", "token_embd.weight");
        let embed = ckpt.embedding(&embed_name, cfg.vocab_size, d)?;
        // Not `with_capacity`: the count comes from the file, and only the
        // layers' weights, read one by one, bound how far this grows.
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let hf = |s: &str| format!("model.layers.{i}.{s}");
            let gg = |s: &str| format!("blk.{i}.{s}");
            let lin = |hf_name: &str, gguf_name: &str, out: usize, inp: usize| {
                ckpt.linear(
                    &TensorName::new(
                        hf(&format!("{hf_name}.weight")),
                        gg(&format!("{gguf_name}.weight")),
                    ),
                    out,
                    inp,
                    Some(&TensorName::new(
                        hf(&format!("{hf_name}.bias")),
                        gg(&format!("{gguf_name}.bias")),
                    )),
                )
            };
            let stack = |parts| {
                Projections::new(parts).map_err(|source| ModelError::Candle {
                    path: ckpt.path().to_owned(),
                    source,
                })
            };
            layers.push(Layer {
                attn_norm: norm(hf("input_layernorm.weight"), gg("attn_norm.weight"))?,
                qkv: stack(vec![
                    lin("self_attn.q_proj", "attn_q", heads * hd, d)?,
                    lin("self_attn.k_proj", "attn_k", kv_heads * hd, d)?,
                    lin("self_attn.v_proj", "attn_v", kv_heads * hd, d)?,
                ])?,
                o: lin("self_attn.o_proj", "attn_output", d, heads * hd)?,
                mlp_norm: norm(hf("post_attention_layernorm.weight"), gg("ffn_norm.weight"))?,
                gate_up: stack(vec![
                    lin("mlp.gate_proj", "ffn_gate", cfg.intermediate_size, d)?,
                    lin("mlp.up_proj", "ffn_up", cfg.intermediate_size, d)?,
                ])?,
                down: lin("mlp.down_proj", "ffn_down", d, cfg.intermediate_size)?,
            });
        }
        let head_name = TensorName::new("lm_head.weight", "output.weight");
        // Tied embeddings: the output projection is the embedding matrix
        // (SmolLM2 and small Qwen2 models ship no separate `lm_head`).
        let lm_head = if !cfg.tie_word_embeddings && ckpt.contains(&head_name) {
            ckpt.linear(&head_name, cfg.vocab_size, d, None)?
        } else {
            ckpt.linear(&embed_name, cfg.vocab_size, d, None)?
        };
        let info = ModelInfo {
            architecture: cfg.model_type.clone(),
            vocab_size: cfg.vocab_size,
            max_context: cfg.max_position_embeddings,
            layers: cfg.num_hidden_layers,
            hidden_size: d,
            kv_bytes_per_token: 2
                * cfg.num_hidden_layers
                * kv_heads
                * hd
                * ckpt.dtype().size_in_bytes(),
        };
        Ok(Llama {
            inv_freq: cfg.inv_freq(),
            info,
            embed,
            layers,
            norm: norm("model.norm.weight".into(), "output_norm.weight".into())?,
            lm_head,
            rope_style,
            device: ckpt.device().clone(),
            timers: Timers::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The parameters of an adapter of this model with `config`.
    pub fn lora_parameters(&self, config: &crate::lora::LoraConfig) -> usize {
        (0..self.layers.len())
            .filter(|&l| config.covers(l))
            .map(|_| {
                config
                    .target_modules
                    .iter()
                    .map(|m| {
                        let (out, inp) = self.projection_shape(m);
                        config.r * (out + inp)
                    })
                    .sum::<usize>()
            })
            .sum()
    }

    /// `(out, in)` of projection `module` (one of [`crate::lora::MODULES`]).
    pub fn projection_shape(&self, module: &str) -> (usize, usize) {
        let d = self.cfg.hidden_size;
        let hd = self.cfg.head_dim();
        let (heads, kv_heads) = (self.cfg.num_attention_heads, self.cfg.kv_heads());
        match module {
            "q_proj" => (heads * hd, d),
            "k_proj" | "v_proj" => (kv_heads * hd, d),
            "o_proj" => (d, heads * hd),
            "gate_proj" | "up_proj" => (self.cfg.intermediate_size, d),
            _ => (d, self.cfg.intermediate_size),
        }
    }

    /// Rows of a query or key projection's output (`heads` heads) moved
    /// between Hugging Face's order and this model's: llama.cpp permutes
    /// a GGUF Llama's query and key rows for interleaved rotary embeddings
    /// (each head's halves, zipped). Nothing moves for a model in Hugging
    /// Face's order. `to_ours`: from Hugging Face's order to this model's.
    fn qk_rows(&self, t: &Tensor, heads: usize, to_ours: bool) -> Result<Tensor> {
        if self.rope_style != RopeStyle::Interleaved {
            return Ok(t.clone());
        }
        let hd = self.cfg.head_dim();
        let rest: Vec<usize> = t.dims()[1..].to_vec();
        let cols: usize = rest.iter().product();
        let (a, b) = if to_ours { (2, hd / 2) } else { (hd / 2, 2) };
        t.contiguous()?
            .reshape((heads, a, b, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape(t.shape())
    }

    /// `adapter` (in PEFT's convention, Hugging Face's row order) with its
    /// query and key rows in this model's order.
    fn adapter_rows(
        &self,
        adapter: &crate::lora::LoraAdapter,
    ) -> std::result::Result<crate::lora::LoraAdapter, crate::lora::LoraError> {
        let mut out = adapter.to_device(&self.device)?;
        for ((_, module), pair) in out.pairs.iter_mut() {
            let heads = match module.as_str() {
                "q_proj" => self.cfg.num_attention_heads,
                "k_proj" => self.cfg.kv_heads(),
                _ => continue,
            };
            pair.b = self.qk_rows(&pair.b, heads, true)?;
        }
        Ok(out)
    }

    fn rebuilt(&self, layers: Vec<Layer>) -> Llama {
        Llama {
            cfg: self.cfg.clone(),
            info: self.info.clone(),
            embed: self.embed.clone(),
            layers,
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            inv_freq: self.inv_freq.clone(),
            rope_style: self.rope_style,
            device: self.device.clone(),
            timers: Timers::default(),
        }
    }

    /// This model with `adapter` applied at run time to every sequence
    /// (the base weights are shared, not copied).
    pub fn with_adapter(
        &self,
        adapter: &crate::lora::LoraAdapter,
    ) -> std::result::Result<Llama, crate::lora::LoraError> {
        adapter.check_shapes(self.layers.len(), |m| self.projection_shape(m))?;
        let adapter = &self.adapter_rows(adapter)?;
        let scale = adapter.config.scale();
        let dtype = self.norm.weight.dtype();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let pair = |m: &str| adapter.pair(i, m);
            let mut l = layer.clone();
            l.qkv = layer.qkv.with_lora(
                &[pair("q_proj"), pair("k_proj"), pair("v_proj")],
                scale,
                dtype,
            )?;
            if let Some(p) = pair("o_proj") {
                l.o = layer.o.with_lora(&p.a, &p.b, scale, dtype)?;
            }
            l.gate_up =
                layer
                    .gate_up
                    .with_lora(&[pair("gate_proj"), pair("up_proj")], scale, dtype)?;
            if let Some(p) = pair("down_proj") {
                l.down = layer.down.with_lora(&p.a, &p.b, scale, dtype)?;
            }
            layers.push(l);
        }
        Ok(self.rebuilt(layers))
    }

    /// This model with every projection dense in f32 and any adapter merged
    /// into its weights (`W + s · B A`): what merging an adapter into the
    /// base gives.
    pub fn merged(&self) -> Result<Llama> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let mut l = layer.clone();
            l.qkv = Projections::new(layer.qkv.merged_parts()?)?;
            l.o = layer.o.merged(DType::F32)?;
            l.gate_up = Projections::new(layer.gate_up.merged_parts()?)?;
            l.down = layer.down.merged(DType::F32)?;
            layers.push(l);
        }
        Ok(self.rebuilt(layers))
    }

    /// `adapter` laid out to apply per sequence of a batch.
    pub fn serve_adapter(
        &self,
        name: &str,
        adapter: &crate::lora::LoraAdapter,
    ) -> std::result::Result<std::sync::Arc<crate::lora::ServedAdapter>, crate::lora::LoraError>
    {
        adapter.check_shapes(self.layers.len(), |m| self.projection_shape(m))?;
        let adapter = &self.adapter_rows(adapter)?;
        let scale = adapter.config.scale();
        let dtype = self.norm.weight.dtype();
        let width = |m: &str| self.projection_shape(m).0;
        let mut layers = Vec::with_capacity(self.layers.len());
        for i in 0..self.layers.len() {
            let pair = |m: &str| adapter.pair(i, m);
            let one = |m: &str| pair(m).map(|p| (p.a.clone(), p.b.clone()));
            let qkv = ["q_proj", "k_proj", "v_proj"];
            let gate_up = ["gate_proj", "up_proj"];
            layers.push(LayerDeltas {
                qkv: Delta::new(stack_pairs(&qkv.map(pair), &qkv.map(width))?, scale, dtype)?,
                o: Delta::new(one("o_proj"), scale, dtype)?,
                gate_up: Delta::new(
                    stack_pairs(&gate_up.map(pair), &gate_up.map(width))?,
                    scale,
                    dtype,
                )?,
                down: Delta::new(one("down_proj"), scale, dtype)?,
            });
        }
        Ok(std::sync::Arc::new(crate::lora::ServedAdapter::new(
            name, layers,
        )))
    }

    /// The weights as dense tensors of `dtype`, for training an adapter
    /// with autograd ([`crate::train::TrainLlama`]), in Hugging Face's
    /// layout (so what trains there is a PEFT adapter as it is). Quantized
    /// weights are expanded once; any adapter applied here is merged in.
    pub fn trainable(&self, dtype: DType) -> Result<crate::train::TrainLlama> {
        let dense =
            |l: &Linear| -> Result<Tensor> { l.merged(dtype)?.dense_weight()?.to_dtype(dtype) };
        let (heads, kv_heads) = (self.cfg.num_attention_heads, self.cfg.kv_heads());
        let hf = |t: Tensor, heads: usize| self.qk_rows(&t, heads, false);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let qkv = layer.qkv.merged_parts()?;
            let gate_up = layer.gate_up.merged_parts()?;
            let bias = |l: &Linear, heads: Option<usize>| -> Result<Option<Tensor>> {
                match (l.bias(), heads) {
                    (Some(b), Some(h)) => Ok(Some(hf(b.to_dtype(dtype)?, h)?)),
                    (Some(b), None) => Ok(Some(b.to_dtype(dtype)?)),
                    (None, _) => Ok(None),
                }
            };
            layers.push(crate::train::TrainLayer {
                attn_norm: layer.attn_norm.weight.to_dtype(dtype)?,
                mlp_norm: layer.mlp_norm.weight.to_dtype(dtype)?,
                weights: [
                    hf(dense(&qkv[0])?, heads)?,
                    hf(dense(&qkv[1])?, kv_heads)?,
                    dense(&qkv[2])?,
                    dense(&layer.o)?,
                    dense(&gate_up[0])?,
                    dense(&gate_up[1])?,
                    dense(&layer.down)?,
                ],
                qkv_bias: [
                    bias(&qkv[0], Some(heads))?,
                    bias(&qkv[1], Some(kv_heads))?,
                    bias(&qkv[2], None)?,
                ],
            });
        }
        let embed = match &self.embed {
            crate::linear::Embedding::Dense(t) => t.to_dtype(dtype)?,
            crate::linear::Embedding::Quantized(m) => {
                Tensor::from_vec(m.dequantize(), (m.rows(), m.cols()), &Device::Cpu)?
                    .to_device(&self.device)?
                    .to_dtype(dtype)?
            }
        };
        Ok(crate::train::TrainLlama {
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.kv_heads(),
            head_dim: self.cfg.head_dim(),
            eps: self.cfg.rms_norm_eps,
            inv_freq: self.inv_freq.clone(),
            embed,
            layers,
            norm: self.norm.weight.to_dtype(dtype)?,
            head: dense(&self.lm_head)?,
            device: self.device.clone(),
            dtype,
        })
    }

    /// Cosines and sines for positions `[start, start + n)`, `[n, head_dim / 2]`.
    /// Rotary tables `[positions, head_dim / 2]` for each position given.
    /// In `dtype`, the activations' (rotary kernels take one dtype).
    fn rope_tables(
        &self,
        positions: impl Iterator<Item = usize>,
        dtype: candle_core::DType,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let n = cos.len() / half;
        Ok((
            Tensor::from_vec(cos, (n, half), &self.device)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (n, half), &self.device)?.to_dtype(dtype)?,
        ))
    }

    /// Rotary embedding of `x`, `[tokens, heads * head_dim]`, each row at the
    /// position of its row of the tables.
    fn rope_rows(&self, x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let hd = self.cfg.head_dim();
        let n = x.dim(0)?;
        let x = x.contiguous()?.reshape((1, n, heads, hd))?;
        let x = match self.rope_style {
            RopeStyle::Half => candle_nn::rotary_emb::rope_thd(&x, cos, sin)?,
            RopeStyle::Interleaved => {
                let x = x.transpose(1, 2)?.contiguous()?;
                candle_nn::rotary_emb::rope_i(&x, cos, sin)?
                    .transpose(1, 2)?
                    .contiguous()?
            }
        };
        x.reshape((n, heads * hd))
    }

    /// Attention of one sequence by matrix products over its gathered
    /// cache: `q` `[n, heads * hd]` (rotary applied) for positions
    /// `[start, start + n)`, whose keys and values layer `layer` of `cache`
    /// already holds.
    fn attend_one(
        &self,
        layer: usize,
        q: &Tensor,
        cache: &KvCache,
        start: usize,
    ) -> Result<Tensor> {
        let hd = self.cfg.head_dim();
        let (heads, kv_heads) = (self.cfg.num_attention_heads, self.cfg.kv_heads());
        let rep = heads / kv_heads;
        let n = q.dim(0)?;
        let len = start + n;
        let (keys, values) = cache.gather(layer, len)?;
        let by_head = |t: &Tensor, rows: usize, h: usize| -> Result<Tensor> {
            t.reshape((rows, h, hd))?.transpose(0, 1)?.contiguous()
        };
        let keys = by_head(&keys, len, kv_heads)?;
        let values = by_head(&values, len, kv_heads)?;
        // Query heads that share a key/value head are stacked so one matmul
        // serves the group, without copying the keys `rep` times.
        let q = by_head(q, n, heads)?.reshape((kv_heads, rep * n, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&keys.t()?)? * scale)?;
        let scores = if n > 1 {
            let mut mask = vec![0f32; n * len];
            for t in 0..n {
                for c in start + t + 1..len {
                    mask[t * len + c] = f32::NEG_INFINITY;
                }
            }
            let mask = Tensor::from_vec(mask, (n, len), &self.device)?.to_dtype(scores.dtype())?;
            scores
                .reshape((kv_heads, rep, n, len))?
                .broadcast_add(&mask)?
                .reshape((kv_heads, rep * n, len))?
        } else {
            scores
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&values)?; // [kv_heads, rep * n, hd]
        out.reshape((heads, n, hd))?
            .transpose(0, 1)?
            .reshape((n, heads * hd))
    }

    /// Attention of every sequence of the batch: `q` `[total, heads * hd]`
    /// (rotary applied), the step's keys and values written to the caches.
    fn attend(&self, layer: usize, q: &Tensor, batch: &[SeqInput<'_>]) -> Result<Tensor> {
        let mut seqs = Vec::with_capacity(batch.len());
        let mut row = 0;
        for s in batch {
            let n = s.tokens.len();
            seqs.push(attention::SeqQueries {
                cache: &*s.cache,
                start: s.cache.len(),
                n,
                row,
            });
            row += n;
        }
        // Decode steps and short chunks in one fused pass; long chunks by
        // matrix products.
        let fuse: Vec<bool> = seqs
            .iter()
            .map(|s| attention::fused_suits(&self.device, q.dtype(), s))
            .collect();
        let fused: Vec<attention::SeqQueries> = seqs
            .iter()
            .zip(&fuse)
            .filter(|(_, f)| **f)
            .map(|(s, _)| *s)
            .collect();
        let fused_out = match fused.is_empty() {
            true => None,
            false => {
                let shape = attention::Heads {
                    heads: self.cfg.num_attention_heads,
                    kv_heads: self.cfg.kv_heads(),
                    head_dim: self.cfg.head_dim(),
                };
                let out = attention::attend(q, layer, &fused, shape)?;
                if fused.len() == seqs.len() {
                    return Ok(out);
                }
                Some(out)
            }
        };
        let mut outs = Vec::with_capacity(seqs.len());
        let mut fused_row = 0;
        for (s, fuse) in seqs.iter().zip(fuse) {
            match &fused_out {
                Some(out) if fuse => {
                    outs.push(out.narrow(0, fused_row, s.n)?);
                    fused_row += s.n;
                }
                _ => outs.push(self.attend_one(
                    layer,
                    &q.narrow(0, s.row, s.n)?,
                    s.cache,
                    s.start,
                )?),
            }
        }
        if outs.len() == 1 {
            Ok(outs.into_iter().next().expect("one output"))
        } else {
            Tensor::cat(&outs, 0)
        }
    }
}

impl CausalLm for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_hidden_layers)
    }

    fn as_llama(&self) -> Option<&Llama> {
        Some(self)
    }

    fn prepare_adapter(
        &self,
        name: &str,
        adapter: &crate::lora::LoraAdapter,
    ) -> std::result::Result<std::sync::Arc<crate::lora::ServedAdapter>, crate::lora::LoraError>
    {
        self.serve_adapter(name, adapter)
    }

    fn profile(&self) -> Vec<(&'static str, std::time::Duration)> {
        vec![
            ("forward", self.timers.forward.total()),
            ("attention", self.timers.attention.total()),
            ("projections", self.timers.projections.total()),
            ("head", self.timers.head.total()),
        ]
    }

    fn forward_outputs(&self, batch: &mut [SeqInput<'_>], outputs: &[Output]) -> Result<Outputs> {
        self.timers
            .forward
            .time(|| self.forward_batch(batch, outputs))
    }
}

impl Llama {
    fn forward_batch(&self, batch: &mut [SeqInput<'_>], outputs: &[Output]) -> Result<Outputs> {
        let total: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if total == 0 {
            candle_core::bail!("forward called with no tokens");
        }
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            );
        }
        let mut x = self.embed.lookup(&ids, &self.device)?; // [total, d]
        // Room in every cache for the step's positions before any layer
        // writes (shared blocks about to be written are copied here).
        for seq in batch.iter_mut() {
            seq.cache.reserve(seq.tokens.len())?;
        }
        let (cos, sin) = self.rope_tables(
            batch
                .iter()
                .flat_map(|s| s.cache.len()..s.cache.len() + s.tokens.len()),
            x.dtype(),
        )?;
        let (heads, kv_heads) = (self.cfg.num_attention_heads, self.cfg.kv_heads());
        let mut owners = Vec::with_capacity(batch.len());
        let mut row = 0;
        for s in batch.iter() {
            if let Some(a) = s.adapter
                && a.layers.len() != self.layers.len()
            {
                candle_core::bail!("adapter `{}` was not made for this model", a.name());
            }
            owners.push((row, s.tokens.len(), s.adapter));
            row += s.tokens.len();
        }
        let qkv_widths = [
            self.projection_shape("q_proj").0,
            self.projection_shape("k_proj").0,
            self.projection_shape("v_proj").0,
        ];
        let ffn = self.cfg.intermediate_size;
        let d = self.cfg.hidden_size;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let mut parts = self.timers.projections.time(|| layer.qkv.forward(&h))?;
            if let Some(delta) =
                row_deltas(&h, &owners, l, qkv_widths.iter().sum(), |d| d.qkv.as_ref())?
            {
                add_split(&mut parts, &delta, &qkv_widths)?;
            }
            let [q, k, v]: [Tensor; 3] = parts
                .try_into()
                .map_err(|_| candle_core::Error::Msg("three projections".into()))?;
            let attention = self.timers.attention.start();
            let q = self.rope_rows(&q, heads, &cos, &sin)?;
            let k = self.rope_rows(&k, kv_heads, &cos, &sin)?;
            let mut row = 0;
            for seq in batch.iter_mut() {
                let n = seq.tokens.len();
                seq.cache
                    .write(l, &k.narrow(0, row, n)?, &v.narrow(0, row, n)?)?;
                row += n;
            }
            let attn = self.attend(l, &q, batch)?;
            drop(attention);
            let mut o = self.timers.projections.time(|| layer.o.forward(&attn))?;
            if let Some(delta) = row_deltas(&attn, &owners, l, d, |d| d.o.as_ref())? {
                o = (o + delta)?;
            }
            x = (x + o)?;
            let h = layer.mlp_norm.forward(&x)?;
            let mut parts = self.timers.projections.time(|| layer.gate_up.forward(&h))?;
            if let Some(delta) = row_deltas(&h, &owners, l, 2 * ffn, |d| d.gate_up.as_ref())? {
                add_split(&mut parts, &delta, &[ffn, ffn])?;
            }
            let [gate, up]: [Tensor; 2] = parts
                .try_into()
                .map_err(|_| candle_core::Error::Msg("two projections".into()))?;
            let gated = (candle_nn::ops::silu(&gate)? * up)?;
            let mut down = self
                .timers
                .projections
                .time(|| layer.down.forward(&gated))?;
            if let Some(delta) = row_deltas(&gated, &owners, l, d, |d| d.down.as_ref())? {
                down = (down + delta)?;
            }
            x = (x + down)?;
        }
        finish_pass(
            batch,
            &x,
            outputs,
            self.cfg.vocab_size,
            |x| self.norm.forward(x),
            |x| self.timers.head.time(|| self.lm_head.forward(x)),
        )
    }
}

/// Add each `widths`-wide column block of `delta` to its part.
fn add_split(parts: &mut [Tensor], delta: &Tensor, widths: &[usize]) -> Result<()> {
    let mut at = 0;
    for (p, &w) in parts.iter_mut().zip(widths) {
        *p = (&*p + delta.narrow(1, at, w)?)?;
        at += w;
    }
    Ok(())
}

/// The device's preferred dtype for dense weights: bf16 on CUDA, f32 on CPU
/// (whose bf16 matmuls are slower than f32 ones).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 1,
            "num_attention_heads": 32, "vocab_size": 10, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        }))
        .unwrap();
        let scaled = cfg.inv_freq();
        let plain = LlamaConfig {
            rope_scaling: None,
            ..cfg
        }
        .inv_freq();
        assert_eq!(scaled[0], plain[0], "the highest frequency is kept");
        let last = plain.len() - 1;
        assert!(
            (scaled[last] - plain[last] / 8.0).abs() < 1e-12,
            "the lowest is divided by the factor"
        );
    }
}
