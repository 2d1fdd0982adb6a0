//! Multi-head Latent Attention (DeepSeek-V2, arXiv:2405.04434, §2.1).
//!
//! Keys and values are projected from a compressed latent `c` of rank
//! `kv_lora_rank` (plus a small rotary part shared by all heads). The cache
//! can hold either:
//!
//! * **Latent** (the default): `c` and the rotary key, `kv_lora_rank +
//!   qk_rope_head_dim` numbers per token per layer. The up-projection is
//!   absorbed: queries are multiplied into latent space (`q·W_UK`), scores
//!   are taken against `c` directly, and the attention-weighted latent is
//!   projected to values afterwards (`·W_UV`). For DeepSeek-V3 that is 576
//!   numbers per token per layer instead of 128 heads × 320 = 40,960.
//! * **Expanded**: per-head keys and values, as the reference code caches
//!   them. Kept to prove the latent path computes the same thing.

use candle_core::{D, Module, Result, Tensor};

use crate::cache::KvCache;
use crate::linear::Linear;

/// Which form the attention cache takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlaCache {
    /// The compressed latent and the rotary key.
    #[default]
    Latent,
    /// Per-head keys and values.
    Expanded,
}

pub(crate) struct RmsNorm {
    pub(crate) weight: Tensor,
    pub(crate) eps: f32,
}

impl RmsNorm {
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(xs, &self.weight, self.eps)
    }
}

/// How queries are made.
pub(crate) enum QueryProj {
    /// V2-Lite: one projection.
    Direct(Linear),
    /// V2, V3: down to `q_lora_rank`, normalised, up to the heads.
    LowRank {
        down: Linear,
        norm: RmsNorm,
        up: Linear,
    },
}

pub(crate) struct Mla {
    pub(crate) heads: usize,
    pub(crate) nope: usize,
    pub(crate) rope: usize,
    pub(crate) v: usize,
    pub(crate) rank: usize,
    pub(crate) scale: f64,
    pub(crate) q: QueryProj,
    /// `[rank + rope, hidden]`: the latent and the rotary key.
    pub(crate) kv_down: Linear,
    pub(crate) kv_norm: RmsNorm,
    /// `[heads · (nope + v), rank]`, used as is by the expanded path.
    pub(crate) kv_up: Linear,
    /// `W_UK` per head, `[heads, nope, rank]`: absorbed into the queries.
    pub(crate) w_uk: Tensor,
    /// `W_UVᵀ` per head, `[heads, rank, v]`: applied after attention.
    pub(crate) w_uv_t: Tensor,
    pub(crate) o: Linear,
    pub(crate) mode: MlaCache,
}

impl Mla {
    /// Split the up-projection `[heads · (nope + v), rank]` into the
    /// per-head pieces the latent path absorbs.
    pub(crate) fn absorbed(
        kv_up: &Tensor,
        heads: usize,
        nope: usize,
        v: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (_, rank) = kv_up.dims2()?;
        let w = kv_up.reshape((heads, nope + v, rank))?;
        let w_uk = w.narrow(1, 0, nope)?.contiguous()?;
        let w_uv_t = w.narrow(1, nope, v)?.transpose(1, 2)?.contiguous()?;
        Ok((w_uk, w_uv_t))
    }

    /// Attention of one sequence over its `n` new tokens `x` (`[n, hidden]`,
    /// already normalised), whose positions start at `cache.len()`.
    pub(crate) fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        cache: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let start = cache.len();
        let (h, nope, rope) = (self.heads, self.nope, self.rope);
        let q = match &self.q {
            QueryProj::Direct(p) => p.forward(x)?,
            QueryProj::LowRank { down, norm, up } => {
                up.forward(&norm.forward(&down.forward(x)?)?)?
            }
        };
        // [n, h, nope + rope] → [h, n, ·]
        let q = q.reshape((n, h, nope + rope))?.transpose(0, 1)?;
        let q_nope = q.narrow(2, 0, nope)?.contiguous()?;
        let q_pe = rope_i(&q.narrow(2, nope, rope)?.contiguous()?, cos, sin)?;

        let kv = self.kv_down.forward(x)?; // [n, rank + rope]
        let latent = self
            .kv_norm
            .forward(&kv.narrow(1, 0, self.rank)?.contiguous()?)?;
        let k_pe = rope_i(
            &kv.narrow(1, self.rank, rope)?.contiguous()?.unsqueeze(0)?,
            cos,
            sin,
        )?; // [1, n, rope]

        let mask = causal_mask(n, start, x)?;
        let out = match self.mode {
            MlaCache::Latent => {
                let (c, k_pe) = cache.append(layer, &latent.unsqueeze(0)?, &k_pe)?; // [1, L, rank], [1, L, rope]
                let (c, k_pe) = (c.squeeze(0)?.contiguous()?, k_pe.squeeze(0)?.contiguous()?);
                if n == 1 {
                    self.attend_absorbed(&q_nope, &q_pe, &c, &k_pe)?
                } else {
                    // Many queries at once (a prefill): expanding the cached
                    // latents to per-head keys and values once costs less
                    // than moving every query into latent space.
                    let (k, v) = self.expand(&c, &k_pe)?;
                    let q = Tensor::cat(&[&q_nope, &q_pe], 2)?;
                    let probs = softmax(&(q.matmul(&k.t()?)? * self.scale)?, mask.as_ref())?;
                    probs.matmul(&v)?
                }
            }
            MlaCache::Expanded => {
                let (k, v) = self.expand(&latent, &k_pe.squeeze(0)?)?;
                let (keys, values) = cache.append(layer, &k, &v)?; // [h, L, nope + rope], [h, L, v]
                let q = Tensor::cat(&[&q_nope, &q_pe], 2)?;
                let scores = q.matmul(&keys.t()?)?;
                let probs = softmax(&(scores * self.scale)?, mask.as_ref())?;
                probs.matmul(&values.contiguous()?)?
            }
        }; // [h, n, v]
        self.o
            .forward(&out.transpose(0, 1)?.reshape((n, h * self.v))?)
    }

    /// Per-head keys `[h, L, nope + rope]` and values `[h, L, v]` from
    /// latents `[L, rank]` (normalised) and rotary keys `[L, rope]`.
    fn expand(&self, latent: &Tensor, k_pe: &Tensor) -> Result<(Tensor, Tensor)> {
        let (h, nope, rope) = (self.heads, self.nope, self.rope);
        let len = latent.dim(0)?;
        let kv = self
            .kv_up
            .forward(latent)?
            .reshape((len, h, nope + self.v))?
            .transpose(0, 1)?;
        let k_nope = kv.narrow(2, 0, nope)?;
        let v = kv.narrow(2, nope, self.v)?.contiguous()?;
        let k = Tensor::cat(
            &[&k_nope, &k_pe.unsqueeze(0)?.broadcast_as((h, len, rope))?],
            2,
        )?
        .contiguous()?;
        Ok((k, v))
    }

    /// One query per head against the cached latents, the up-projection
    /// absorbed: `q_nope` `[h, 1, nope]`, `q_pe` `[h, 1, rope]`, latents
    /// `c` `[L, rank]`, rotary keys `[L, rope]`. Gives `[h, 1, v]`.
    fn attend_absorbed(
        &self,
        q_nope: &Tensor,
        q_pe: &Tensor,
        c: &Tensor,
        k_pe: &Tensor,
    ) -> Result<Tensor> {
        let h = self.heads;
        // Queries in latent space: q_nope · W_UK, [h, 1, rank]. Every head
        // scores against the same latents, so all heads go through one
        // product with them ([h, rank] · [rank, L]).
        let q_lat = q_nope.matmul(&self.w_uk)?.reshape((h, self.rank))?;
        let q_pe = q_pe.reshape((h, self.rope))?;
        let scores = (q_lat.matmul(&c.t()?)? + q_pe.matmul(&k_pe.t()?)?)?;
        let probs = candle_nn::ops::softmax_last_dim(&(scores * self.scale)?)?;
        // The weighted latent ([h, L] · [L, rank]), then up to values per
        // head: [h, 1, rank] · [h, rank, v].
        probs
            .matmul(c)?
            .reshape((h, 1, self.rank))?
            .matmul(&self.w_uv_t)
    }

    /// Bytes of cache per token in this layer, at `dtype_bytes` per number.
    pub(crate) fn cache_bytes_per_token(&self, dtype_bytes: usize) -> usize {
        cache_bytes_per_token(
            self.mode,
            self.heads,
            self.nope,
            self.rope,
            self.v,
            self.rank,
            dtype_bytes,
        )
    }
}

/// Bytes one token takes in one layer's cache: the latent and the rotary key,
/// or every head's key and value.
pub fn cache_bytes_per_token(
    mode: MlaCache,
    heads: usize,
    nope: usize,
    rope: usize,
    v: usize,
    rank: usize,
    dtype_bytes: usize,
) -> usize {
    match mode {
        MlaCache::Latent => (rank + rope) * dtype_bytes,
        MlaCache::Expanded => heads * (nope + rope + v) * dtype_bytes,
    }
}

/// Rotary embedding with DeepSeek's layout: dimensions 2i and 2i + 1 rotate
/// together (its reference code de-interleaves before a half rotation, which
/// leaves dot products the same as rotating the interleaved pairs).
fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x4 = x.unsqueeze(0)?;
    candle_nn::rotary_emb::rope_i(&x4.contiguous()?, cos, sin)?.squeeze(0)
}

/// `[n, start + n]`: position t may attend to positions up to start + t.
/// On `like`'s device, in its dtype (the scores' compute dtype).
fn causal_mask(n: usize, start: usize, like: &Tensor) -> Result<Option<Tensor>> {
    if n == 1 {
        return Ok(None);
    }
    let len = start + n;
    let mut m = vec![0f32; n * len];
    for t in 0..n {
        for c in start + t + 1..len {
            m[t * len + c] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (n, len), like.device())?
        .to_dtype(like.dtype())
        .map(Some)
}

fn softmax(scores: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores.clone(),
    };
    candle_nn::ops::softmax(&scores, D::Minus1)
}
