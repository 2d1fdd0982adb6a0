//! DeepSeek-V2/V3 hyper-parameters, as their `config.json` spells them.

use serde::Deserialize;

/// How the router scores experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoringFunc {
    /// V2: softmax over all experts.
    Softmax,
    /// V3: an independent sigmoid per expert.
    Sigmoid,
}

/// How the router picks the top-k experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopkMethod {
    /// V2: the k best scores.
    Greedy,
    /// V2: the k best scores within the `topk_group` groups with the best
    /// single score.
    GroupLimitedGreedy,
    /// V3: the k best bias-corrected scores within the `topk_group` groups
    /// whose two best corrected scores sum highest; weights are the
    /// uncorrected scores.
    NoauxTc,
}

/// YaRN rotary scaling (Peng et al., 2023), as DeepSeek configures it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    #[serde(default = "default_beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "default_beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "default_one")]
    pub mscale: f64,
    #[serde(default)]
    pub mscale_all_dim: f64,
}

fn default_beta_fast() -> f64 {
    32.0
}

fn default_beta_slow() -> f64 {
    1.0
}

fn default_one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    Yarn(Yarn),
}

/// The architecture of DeepSeek-V2, V2-Lite, V3 and R1.
#[derive(Clone, Debug, Deserialize)]
pub struct DeepSeekConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense MLP of the first `first_k_dense_replace` layers.
    pub intermediate_size: usize,
    /// Width of each routed and shared expert.
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `None` (V2-Lite): queries come from a plain projection; otherwise
    /// through a low-rank bottleneck of this rank.
    pub q_lora_rank: Option<usize>,
    /// Rank of the compressed key/value latent: what the cache stores.
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    #[serde(default = "default_one_usize")]
    pub n_group: usize,
    #[serde(default = "default_one_usize")]
    pub topk_group: usize,
    #[serde(default = "default_one")]
    pub routed_scaling_factor: f64,
    #[serde(default = "default_scoring")]
    pub scoring_func: ScoringFunc,
    #[serde(default = "default_topk")]
    pub topk_method: TopkMethod,
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default)]
    pub first_k_dense_replace: usize,
    #[serde(default = "default_one_usize")]
    pub moe_layer_freq: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// V3's multi-token-prediction layers, stored after the decoder layers.
    /// Generation does not use them; they are not loaded.
    #[serde(default)]
    pub num_nextn_predict_layers: usize,
}

fn default_one_usize() -> usize {
    1
}

fn default_scoring() -> ScoringFunc {
    ScoringFunc::Softmax
}

fn default_topk() -> TopkMethod {
    TopkMethod::Greedy
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_max_position_embeddings() -> usize {
    4096
}

fn default_eps() -> f64 {
    1e-6
}

/// `yarn_get_mscale`: YaRN's attention temperature correction.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl DeepSeekConfig {
    /// Bytes of attention cache per token over all layers, at `dtype_bytes`
    /// per number.
    pub fn kv_bytes_per_token(&self, mode: super::MlaCache, dtype_bytes: usize) -> usize {
        self.num_hidden_layers
            * super::mla::cache_bytes_per_token(
                mode,
                self.num_attention_heads,
                self.qk_nope_head_dim,
                self.qk_rope_head_dim,
                self.v_head_dim,
                self.kv_lora_rank,
                dtype_bytes,
            )
    }

    /// Why these sizes cannot describe a model, if they cannot: no layers,
    /// no width or no heads, or projection shapes too large to count.
    /// Checked before any weight is read; past it, every size is bounded by
    /// a weight that the file must hold.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("num_hidden_layers", self.num_hidden_layers),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
        ] {
            if value == 0 {
                return Err(format!("`{name}` is 0"));
            }
        }
        let (h, nope, rope, v) = (
            self.num_attention_heads,
            self.qk_nope_head_dim,
            self.qk_rope_head_dim,
            self.v_head_dim,
        );
        let product = |factors: &[usize]| {
            factors
                .iter()
                .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        };
        // Every projection's width, and a token's cache in the widest dtype
        // (heads × (nope + rope + v) bounds the latent's rank + rope too).
        let sizes = [
            nope.checked_add(rope)
                .and_then(|q| q.checked_add(v))
                .and_then(|w| product(&[self.num_hidden_layers, h, w, 8])),
            self.kv_lora_rank
                .checked_add(rope)
                .and_then(|w| product(&[self.num_hidden_layers, w, 8])),
            product(&[
                self.moe_intermediate_size,
                self.n_shared_experts.unwrap_or(1),
            ]),
        ];
        if sizes.contains(&None) {
            return Err(format!(
                "{h} heads of {nope} + {rope} + {v} dimensions (latent rank {}) in {} layers \
                 are too many to count",
                self.kv_lora_rank, self.num_hidden_layers
            ));
        }
        Ok(())
    }

    pub fn q_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Whether layer `i` has a mixture of experts (else a dense MLP).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.n_routed_experts.is_some()
            && i >= self.first_k_dense_replace
            && i.is_multiple_of(self.moe_layer_freq.max(1))
    }

    /// `1/sqrt(q_head_dim)`, times YaRN's `mscale(factor, mscale_all_dim)²`.
    pub fn softmax_scale(&self) -> f64 {
        let base = 1.0 / (self.q_head_dim() as f64).sqrt();
        match &self.rope_scaling {
            Some(RopeScaling::Yarn(y)) if y.mscale_all_dim != 0.0 => {
                let m = yarn_mscale(y.factor, y.mscale_all_dim);
                base * m * m
            }
            _ => base,
        }
    }

    /// Rotary inverse frequencies and the factor on cos/sin.
    pub fn rope(&self) -> (Vec<f32>, f32) {
        let dim = self.qk_rope_head_dim;
        let base = self.rope_theta;
        let extra: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
            .collect();
        let Some(RopeScaling::Yarn(y)) = &self.rope_scaling else {
            return (extra.iter().map(|&f| f as f32).collect(), 1.0);
        };
        // Dimensions that rotate fewer than `beta_slow` times over the
        // original context are interpolated (divided by the factor), those
        // that rotate more than `beta_fast` times are kept, with a linear
        // ramp between.
        let correction_dim = |rotations: f64| {
            dim as f64
                * (y.original_max_position_embeddings as f64
                    / (rotations * 2.0 * std::f64::consts::PI))
                    .ln()
                / (2.0 * base.ln())
        };
        let low = correction_dim(y.beta_fast).floor().max(0.0);
        let high = correction_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
        let high = if low == high { high + 0.001 } else { high };
        let inv_freq = extra
            .iter()
            .enumerate()
            .map(|(i, &e)| {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                (e / y.factor * (1.0 - keep) + e * keep) as f32
            })
            .collect();
        let mscale = yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim);
        (inv_freq, mscale as f32)
    }
}
