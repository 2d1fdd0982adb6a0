//! DeepSeek-V2, V2-Lite, V3 and R1: Multi-head Latent Attention and
//! DeepSeekMoE.
//!
//! DeepSeek-AI, "DeepSeek-V2: A Strong, Economical, and Efficient
//! Mixture-of-Experts Language Model" (arXiv:2405.04434) and "DeepSeek-V3
//! Technical Report" (arXiv:2412.19437); reference implementation: the
//! `modeling_deepseek.py` published with the checkpoints. Checked against
//! mlx-lm's `deepseek_v2`/`deepseek_v3` and a float64 port of the modeling
//! file on tiny checkpoints of the real shapes (`tests/goldens/deepseek`).
//!
//! Differences from the reference, on purpose: the cache holds the
//! compressed latent with the up-projection absorbed (see [`mla`]); V3's
//! multi-token-prediction layer is not loaded (it only serves speculative
//! decoding); FP8 weights are dequantized at load (see `checkpoint.rs`).

pub mod config;
pub mod mla;
mod moe;

use candle_core::{DType, Device, Module, Result, Tensor};

pub use config::DeepSeekConfig;
pub use mla::MlaCache;

use crate::cache::KvCache;
use crate::checkpoint::{Checkpoint, TensorName};
use crate::linear::Linear;
use crate::{CausalLm, ModelError, ModelInfo, Output, Outputs, SeqInput, finish_pass};
use mla::{Mla, QueryProj, RmsNorm};
use moe::{Mlp, Moe, Router};

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

struct Layer {
    attn_norm: RmsNorm,
    attn: Mla,
    ffn_norm: RmsNorm,
    ffn: Ffn,
}

/// A loaded DeepSeek model; each sequence's cache is its own `KvCache`.
pub struct DeepSeek {
    cfg: DeepSeekConfig,
    info: ModelInfo,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    rope_mscale: f32,
    device: Device,
    dtype: DType,
    timers: Timers,
}

/// Where a forward pass spends its time.
#[derive(Debug, Default)]
struct Timers {
    forward: crate::Timer,
    attention: crate::Timer,
    moe: crate::Timer,
}

impl DeepSeek {
    pub fn load(
        cfg: DeepSeekConfig,
        ckpt: &Checkpoint,
        mode: MlaCache,
    ) -> std::result::Result<Self, ModelError> {
        cfg.check().map_err(|reason| ModelError::Config {
            path: ckpt.path().to_owned(),
            reason,
        })?;
        let d = cfg.hidden_size;
        let h = cfg.num_attention_heads;
        let (nope, rope, vd, rank) = (
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let eps = cfg.rms_norm_eps as f32;
        let candle_err = |source| ModelError::Candle {
            path: ckpt.path().to_owned(),
            source,
        };
        let name = |s: String| TensorName::new(s.clone(), s);
        let norm = |s: String, dim: usize| -> std::result::Result<RmsNorm, ModelError> {
            Ok(RmsNorm {
                weight: ckpt.dense(&name(s), &[dim])?,
                eps,
            })
        };
        let lin = |s: String, out: usize, inp: usize| {
            ckpt.linear(&name(format!("{s}.weight")), out, inp, None)
        };
        let mlp = |p: &str, width: usize| -> std::result::Result<Mlp, ModelError> {
            Ok(Mlp {
                gate: lin(format!("{p}.gate_proj"), width, d)?,
                up: lin(format!("{p}.up_proj"), width, d)?,
                down: lin(format!("{p}.down_proj"), d, width)?,
            })
        };

        let embed = ckpt.dense(
            &name("model.embed_tokens.weight".into()),
            &[cfg.vocab_size, d],
        )?;
        // Not `with_capacity`: the count comes from the file, and only the
        // layers' weights, read one by one, bound how far this grows.
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let q = match cfg.q_lora_rank {
                None => {
                    QueryProj::Direct(lin(format!("{p}.self_attn.q_proj"), h * (nope + rope), d)?)
                }
                Some(r) => QueryProj::LowRank {
                    down: lin(format!("{p}.self_attn.q_a_proj"), r, d)?,
                    norm: norm(format!("{p}.self_attn.q_a_layernorm.weight"), r)?,
                    up: lin(format!("{p}.self_attn.q_b_proj"), h * (nope + rope), r)?,
                },
            };
            let kv_up_w = ckpt.dense(
                &name(format!("{p}.self_attn.kv_b_proj.weight")),
                &[h * (nope + vd), rank],
            )?;
            let (w_uk, w_uv_t) = Mla::absorbed(&kv_up_w, h, nope, vd).map_err(candle_err)?;
            let attn = Mla {
                heads: h,
                nope,
                rope,
                v: vd,
                rank,
                scale: cfg.softmax_scale(),
                q,
                kv_down: lin(format!("{p}.self_attn.kv_a_proj_with_mqa"), rank + rope, d)?,
                kv_norm: norm(format!("{p}.self_attn.kv_a_layernorm.weight"), rank)?,
                kv_up: Linear::dense(kv_up_w, None).map_err(candle_err)?,
                w_uk,
                w_uv_t,
                o: lin(format!("{p}.self_attn.o_proj"), d, h * vd)?,
                mode,
            };
            let ffn = if cfg.is_moe_layer(i) {
                let experts = cfg.n_routed_experts.unwrap_or(0);
                let gate = ckpt
                    .dense(&name(format!("{p}.mlp.gate.weight")), &[experts, d])?
                    .to_dtype(DType::F32)
                    .map_err(candle_err)?;
                let bias = ckpt
                    .dense_opt(
                        &name(format!("{p}.mlp.gate.e_score_correction_bias")),
                        &[experts],
                    )?
                    .map(|b| b.to_dtype(DType::F32).and_then(|b| b.to_vec1::<f32>()))
                    .transpose()
                    .map_err(candle_err)?;
                if cfg.topk_method == config::TopkMethod::NoauxTc && bias.is_none() {
                    return Err(ModelError::MissingTensor {
                        name: format!("{p}.mlp.gate.e_score_correction_bias"),
                        path: ckpt.path().to_owned(),
                    });
                }
                Ffn::Moe(Moe {
                    gate,
                    bias,
                    router: Router::new(&cfg),
                    experts: (0..experts)
                        .map(|e| mlp(&format!("{p}.mlp.experts.{e}"), cfg.moe_intermediate_size))
                        .collect::<std::result::Result<_, _>>()?,
                    shared: match cfg.n_shared_experts {
                        Some(n) if n > 0 => Some(mlp(
                            &format!("{p}.mlp.shared_experts"),
                            cfg.moe_intermediate_size * n,
                        )?),
                        _ => None,
                    },
                })
            } else {
                Ffn::Dense(mlp(&format!("{p}.mlp"), cfg.intermediate_size)?)
            };
            layers.push(Layer {
                attn_norm: norm(format!("{p}.input_layernorm.weight"), d)?,
                attn,
                ffn_norm: norm(format!("{p}.post_attention_layernorm.weight"), d)?,
                ffn,
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            lin("model.embed_tokens".into(), cfg.vocab_size, d)?
        } else {
            lin("lm_head".into(), cfg.vocab_size, d)?
        };
        let bytes = ckpt.dtype().size_in_bytes();
        let info = ModelInfo {
            architecture: cfg.model_type.clone(),
            vocab_size: cfg.vocab_size,
            max_context: cfg.max_position_embeddings,
            layers: cfg.num_hidden_layers,
            hidden_size: d,
            kv_bytes_per_token: layers
                .iter()
                .map(|l| l.attn.cache_bytes_per_token(bytes))
                .sum(),
        };
        let (inv_freq, rope_mscale) = cfg.rope();
        Ok(DeepSeek {
            norm: norm("model.norm.weight".into(), d)?,
            lm_head,
            embed,
            layers,
            inv_freq,
            rope_mscale,
            info,
            device: ckpt.device().clone(),
            dtype: ckpt.dtype(),
            timers: Timers::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &DeepSeekConfig {
        &self.cfg
    }

    /// Cosines and sines (YaRN-scaled) for positions `[start, start + n)`.
    fn rope_tables(&self, start: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in start..start + n {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos() * self.rope_mscale);
                sin.push(angle.sin() * self.rope_mscale);
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, half), &self.device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(sin, (n, half), &self.device)?.to_dtype(self.dtype)?,
        ))
    }
}

impl CausalLm for DeepSeek {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_hidden_layers)
    }

    fn profile(&self) -> Vec<(&'static str, std::time::Duration)> {
        vec![
            ("forward", self.timers.forward.total()),
            ("attention", self.timers.attention.total()),
            ("moe", self.timers.moe.total()),
        ]
    }

    fn forward_outputs(&self, batch: &mut [SeqInput<'_>], outputs: &[Output]) -> Result<Outputs> {
        self.timers
            .forward
            .time(|| self.forward_batch(batch, outputs))
    }
}

impl DeepSeek {
    fn forward_batch(&self, batch: &mut [SeqInput<'_>], outputs: &[Output]) -> Result<Outputs> {
        if let Some(a) = batch.iter().find_map(|s| s.adapter) {
            candle_core::bail!(
                "adapter `{}`: LoRA adapters apply to Llama-family models",
                a.name()
            );
        }
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
        let mut x = self
            .embed
            .index_select(&Tensor::new(ids.as_slice(), &self.device)?, 0)?;
        let tables = batch
            .iter()
            .map(|s| self.rope_tables(s.cache.len(), s.tokens.len()))
            .collect::<Result<Vec<_>>>()?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let mut outs = Vec::with_capacity(batch.len());
            let mut offset = 0;
            for (seq, (cos, sin)) in batch.iter_mut().zip(&tables) {
                let n = seq.tokens.len();
                let part = h.narrow(0, offset, n)?;
                outs.push(
                    self.timers
                        .attention
                        .time(|| layer.attn.forward(l, &part, seq.cache, cos, sin))?,
                );
                offset += n;
            }
            let attn = if outs.len() == 1 {
                outs.pop().expect("one output")
            } else {
                Tensor::cat(&outs, 0)?
            };
            x = (x + attn)?;
            let h = layer.ffn_norm.forward(&x)?;
            let y = match &layer.ffn {
                Ffn::Dense(mlp) => mlp.forward(&h)?,
                Ffn::Moe(moe) => self.timers.moe.time(|| moe.forward(&h))?,
            };
            x = (x + y)?;
        }
        finish_pass(
            batch,
            &x,
            outputs,
            self.cfg.vocab_size,
            |x| self.norm.forward(x),
            |x| self.lm_head.forward(x),
        )
    }
}
