//! Training a LoRA adapter of a Llama-family model with candle's autograd:
//! a differentiable forward pass over dense frozen weights, the adapter's
//! pairs as the only variables, the GRPO objective and AdamW.
//!
//! The forward pass is the one of [`crate::llama::Llama`] written with
//! operations that have gradients (the serving pass uses fused kernels
//! that have none): one sequence at a time, its whole length at once, no
//! cache. Quantized bases are expanded once ([`Llama::trainable`]).
//!
//! The objective is the clipped per-token one of GRPO (Shao et al.,
//! "DeepSeekMath", 2024; DeepSeek-AI, "DeepSeek-R1", 2025): for a
//! completion `o` of advantage `Â`, with `ρ_t = π(o_t)/π_old(o_t)`,
//! `L = −1/|o| Σ_t [min(ρ_t Â, clip(ρ_t, 1−ε, 1+ε) Â) − β KL_t]`, where
//! `KL_t = π_ref/π − log(π_ref/π) − 1` (the k3 estimator) against the
//! frozen base. A batch's loss is the mean of its completions'.
//!
//! [`Llama::trainable`]: crate::llama::Llama::trainable

use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Result, Shape, Tensor, Var};

use crate::lora::{LoraAdapter, LoraConfig, LoraPair, MODULES};

/// A Llama-family model's weights, dense and frozen, for training.
pub struct TrainLlama {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) eps: f64,
    pub(crate) inv_freq: Vec<f32>,
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<TrainLayer>,
    pub(crate) norm: Tensor,
    pub(crate) head: Tensor,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
}

pub(crate) struct TrainLayer {
    pub(crate) attn_norm: Tensor,
    pub(crate) mlp_norm: Tensor,
    /// `[out, in]` for each of [`MODULES`], in order.
    pub(crate) weights: [Tensor; 7],
    /// Query, key and value biases (Qwen2).
    pub(crate) qkv_bias: [Option<Tensor>; 3],
}

/// An adapter being trained: for each layer, a pair of variables per
/// adapted module (`A` `[r, in]`, `B` `[out, r]`).
pub struct LoraVars {
    pub config: LoraConfig,
    layers: Vec<[Option<(Var, Var)>; 7]>,
}

impl LoraVars {
    /// A new adapter as PEFT starts one: `A` uniform in `±1/√in` (Kaiming
    /// with `a = √5`), `B` zero, so it starts as the base model. `seed`
    /// fixes `A`.
    pub fn init(model: &TrainLlama, config: LoraConfig, seed: u64) -> Result<LoraVars> {
        let mut rng = SplitMix(seed ^ 0x6c6f_7261);
        let mut layers = Vec::with_capacity(model.layers.len());
        for layer in &model.layers {
            let mut pairs: [Option<(Var, Var)>; 7] = Default::default();
            for (i, m) in MODULES.iter().enumerate() {
                if !config.target_modules.iter().any(|t| t == m) {
                    continue;
                }
                let (out, inp) = layer.weights[i].dims2()?;
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..config.r * inp)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                let a =
                    Tensor::from_vec(a, (config.r, inp), &model.device)?.to_dtype(model.dtype)?;
                let b = Tensor::zeros((out, config.r), model.dtype, &model.device)?;
                pairs[i] = Some((Var::from_tensor(&a)?, Var::from_tensor(&b)?));
            }
            layers.push(pairs);
        }
        Ok(LoraVars { config, layers })
    }

    /// Variables holding `adapter`'s weights (to train it further).
    pub fn from_adapter(model: &TrainLlama, adapter: &LoraAdapter) -> Result<LoraVars> {
        let mut layers: Vec<[Option<(Var, Var)>; 7]> = (0..model.layers.len())
            .map(|_| Default::default())
            .collect();
        for ((layer, module), pair) in &adapter.pairs {
            let i = MODULES
                .iter()
                .position(|m| m == module)
                .expect("adapters hold known modules");
            let slot = layers
                .get_mut(*layer)
                .ok_or_else(|| candle_core::Error::Msg(format!("no layer {layer}")))?;
            slot[i] = Some((
                Var::from_tensor(&pair.a.to_device(&model.device)?.to_dtype(model.dtype)?)?,
                Var::from_tensor(&pair.b.to_device(&model.device)?.to_dtype(model.dtype)?)?,
            ));
        }
        Ok(LoraVars {
            config: adapter.config.clone(),
            layers,
        })
    }

    /// The adapter as it stands, in f32.
    pub fn to_adapter(&self) -> Result<LoraAdapter> {
        let mut pairs = std::collections::BTreeMap::new();
        for (l, layer) in self.layers.iter().enumerate() {
            for (i, pair) in layer.iter().enumerate() {
                if let Some((a, b)) = pair {
                    pairs.insert(
                        (l, MODULES[i].to_owned()),
                        LoraPair {
                            a: a.as_tensor().to_dtype(DType::F32)?,
                            b: b.as_tensor().to_dtype(DType::F32)?,
                        },
                    );
                }
            }
        }
        Ok(LoraAdapter {
            config: self.config.clone(),
            pairs,
        })
    }

    /// Every variable, in a fixed order (layer, module, `A` then `B`).
    pub fn vars(&self) -> Vec<&Var> {
        self.layers
            .iter()
            .flat_map(|l| l.iter().flatten())
            .flat_map(|(a, b)| [a, b])
            .collect()
    }

    /// How many numbers the adapter trains.
    pub fn parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }
}

/// `x Wᵀ` against a frozen weight `W` `[out, in]`, whose backward gives
/// the input's gradient only: candle's matrix product also computes the
/// weight's, a second product as large as the forward one (and, for the
/// output head, a vocabulary-sized gradient per sequence), for nothing
/// when the weight does not train.
struct Frozen {
    w: Tensor,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-linear takes a contiguous input");
        };
        let x = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?,
            _ => candle_core::bail!("frozen-linear computes in f32 or f64"),
        };
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        let y = y.flatten_all()?;
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(y.to_vec1()?),
            _ => CpuStorage::F64(y.to_vec1()?),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `x Wᵀ` for a frozen `w`, with no gradient to `w` (on the CPU; elsewhere
/// candle's product, which computes one and drops it).
fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.rank() == 2 {
        x.contiguous()?.apply_op1(Frozen { w: w.clone() })
    } else {
        x.matmul(&w.t()?)
    }
}

/// A small seeded generator for initial weights (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl TrainLlama {
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + self.eps)?.sqrt()?)?.broadcast_mul(w)
    }

    fn project(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        lora: Option<&(Var, Var)>,
        scale: f64,
    ) -> Result<Tensor> {
        let mut y = frozen_matmul(x, w)?;
        if let Some(b) = bias {
            y = y.broadcast_add(b)?;
        }
        if let Some((a, b)) = lora {
            let low = x.matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)?;
            y = (y + (low * scale)?)?;
        }
        Ok(y)
    }

    /// Rotary embedding of `x` `[n, heads, hd]` at positions `0..n`, in
    /// Hugging Face's layout (each head's two halves rotated together).
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = x.dim(2)? / 2;
        let cos = cos.unsqueeze(1)?;
        let sin = sin.unsqueeze(1)?;
        let x1 = x.narrow(2, 0, half)?;
        let x2 = x.narrow(2, half, half)?;
        let re = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let im = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[re, im], 2)
    }

    /// About what the training pass keeps per token for the backward pass:
    /// per layer, some sixteen hidden-sized and six MLP-sized rows (norms,
    /// projections, rotations, residuals, the gated product), at the
    /// pass's dtype. Attention's scores come on top and grow with the
    /// context.
    pub fn activation_bytes_per_token(&self) -> usize {
        let d = self.embed.dim(1).unwrap_or(0);
        let ffn = self
            .layers
            .first()
            .map_or(0, |l| l.weights[4].dim(0).unwrap_or(0));
        self.layers.len() * (16 * d + 6 * ffn) * self.dtype.size_in_bytes()
    }

    /// The final hidden states `[n, d]` (after the last norm) of `tokens`,
    /// with `lora` applied when given.
    pub fn hidden(&self, tokens: &[u32], lora: Option<&LoraVars>) -> Result<Tensor> {
        self.tree_hidden(tokens, &[], lora)
    }

    /// The final hidden states of a prefix and of branches that each
    /// continue it: rows `[prefix, branch 0, branch 1, …]`, where each
    /// branch sees the prefix and itself, never another branch. A group's
    /// completions share their prompt this way: its rows are computed once,
    /// and the projections run over every row in one product.
    pub fn tree_hidden(
        &self,
        prefix: &[u32],
        branches: &[&[u32]],
        lora: Option<&LoraVars>,
    ) -> Result<Tensor> {
        let p = prefix.len();
        if p == 0 {
            candle_core::bail!("a forward pass needs at least one token");
        }
        let vocab = self.embed.dim(0)?;
        let all = || prefix.iter().chain(branches.iter().flat_map(|b| b.iter()));
        if let Some(bad) = all().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let ids: Vec<u32> = all().copied().collect();
        let n = ids.len();
        // Each row's position: the prefix's, then each branch after it.
        let positions: Vec<usize> = (0..p)
            .chain(branches.iter().flat_map(|b| p..p + b.len()))
            .collect();
        let scale = lora.map_or(0.0, |l| l.config.scale());
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        // Detached: the table does not train, and its gradient would be a
        // vocabulary-sized tensor per sequence.
        let mut x = self.embed.index_select(&ids, 0)?.detach();
        let half = self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for &pos in &positions {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), &self.device)?.to_dtype(self.dtype)?;
        // The prefix attends causally to itself; a branch of length m to
        // the whole prefix and causally to itself.
        let causal = |rows: usize, before: usize| -> Result<Tensor> {
            let cols = before + rows;
            let mut mask = vec![0f32; rows * cols];
            for t in 0..rows {
                for c in before + t + 1..cols {
                    mask[t * cols + c] = f32::NEG_INFINITY;
                }
            }
            Tensor::from_vec(mask, (rows, cols), &self.device)?.to_dtype(self.dtype)
        };
        let prefix_mask = causal(p, 0)?;
        let branch_masks: Vec<Tensor> = branches
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| causal(b.len(), p))
            .collect::<Result<_>>()?;
        let (hd, heads, kv_heads) = (self.head_dim, self.heads, self.kv_heads);
        for (l, layer) in self.layers.iter().enumerate() {
            let pairs = lora.map(|v| &v.layers[l]);
            let pair = |i: usize| pairs.and_then(|p| p[i].as_ref());
            let w = &layer.weights;
            let h = self.rms_norm(&x, &layer.attn_norm)?;
            let q = self.project(&h, &w[0], layer.qkv_bias[0].as_ref(), pair(0), scale)?;
            let k = self.project(&h, &w[1], layer.qkv_bias[1].as_ref(), pair(1), scale)?;
            let v = self.project(&h, &w[2], layer.qkv_bias[2].as_ref(), pair(2), scale)?;
            let q = self.rope(&q.reshape((n, heads, hd))?, &cos, &sin)?;
            let k = self.rope(&k.reshape((n, kv_heads, hd))?, &cos, &sin)?;
            let v = v.reshape((n, kv_heads, hd))?;
            let (kp, vp) = (k.narrow(0, 0, p)?, v.narrow(0, 0, p)?);
            let mut outs = vec![self.attend(&q.narrow(0, 0, p)?, &kp, &vp, &prefix_mask)?];
            let mut at = p;
            for (b, mask) in branches.iter().filter(|b| !b.is_empty()).zip(&branch_masks) {
                let m = b.len();
                let kb = Tensor::cat(&[&kp, &k.narrow(0, at, m)?], 0)?;
                let vb = Tensor::cat(&[&vp, &v.narrow(0, at, m)?], 0)?;
                outs.push(self.attend(&q.narrow(0, at, m)?, &kb, &vb, mask)?);
                at += m;
            }
            let attn = if outs.len() == 1 {
                outs.pop().expect("one output")
            } else {
                Tensor::cat(&outs, 0)?
            };
            x = (x + self.project(&attn, &w[3], None, pair(3), scale)?)?;
            let h = self.rms_norm(&x, &layer.mlp_norm)?;
            let gate = self.project(&h, &w[4], None, pair(4), scale)?;
            let up = self.project(&h, &w[5], None, pair(5), scale)?;
            let gated = (gate.silu()? * up)?;
            x = (x + self.project(&gated, &w[6], None, pair(6), scale)?)?;
        }
        self.rms_norm(&x, &self.norm)
    }

    /// Attention of queries `q` `[nq, heads, hd]` over keys and values
    /// `[nk, kv_heads, hd]` under `mask` `[nq, nk]` (0 or −∞), as rows
    /// `[nq, heads · hd]`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (hd, heads, kv_heads) = (self.head_dim, self.heads, self.kv_heads);
        let rep = heads / kv_heads;
        let (nq, nk) = (q.dim(0)?, k.dim(0)?);
        // Heads that share a key/value head, stacked: [kv, rep * nq, hd].
        let q = q
            .transpose(0, 1)?
            .contiguous()?
            .reshape((kv_heads, rep * nq, hd))?;
        let k = k.transpose(0, 1)?.contiguous()?;
        let v = v.transpose(0, 1)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?
            .reshape((kv_heads, rep, nq, nk))?
            .broadcast_add(mask)?
            .reshape((kv_heads, rep * nq, nk))?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        probs
            .matmul(&v)?
            .reshape((heads, nq, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((nq, heads * hd))
    }

    /// The logits `[n, vocab]` after each of `tokens`.
    pub fn logits(&self, tokens: &[u32], lora: Option<&LoraVars>) -> Result<Tensor> {
        frozen_matmul(&self.hidden(tokens, lora)?, &self.head)
    }

    /// The log-probability of each of `tokens[from..]` given the tokens
    /// before it, `[n − from]` (`from` ≥ 1).
    pub fn token_logprobs(
        &self,
        tokens: &[u32],
        from: usize,
        lora: Option<&LoraVars>,
    ) -> Result<Tensor> {
        if from == 0 || from >= tokens.len() {
            candle_core::bail!(
                "scoring tokens {from}.. of {}: at least one token must come before, and one after",
                tokens.len()
            );
        }
        self.group_logprobs(&tokens[..from], &[&tokens[from..]], lora)
    }

    /// The log-probability of each token of each completion of `prompt`,
    /// given the prompt and the completion's tokens before it: one tensor,
    /// completion after completion (`Σ |completion|`). The prompt is
    /// computed once for all of them ([`TrainLlama::tree_hidden`]).
    pub fn group_logprobs(
        &self,
        prompt: &[u32],
        completions: &[&[u32]],
        lora: Option<&LoraVars>,
    ) -> Result<Tensor> {
        if prompt.is_empty() || completions.iter().any(|c| c.is_empty()) {
            candle_core::bail!("scoring completions needs a prompt and a token in each completion");
        }
        // A completion's last token is scored, never fed.
        let fed: Vec<&[u32]> = completions.iter().map(|c| &c[..c.len() - 1]).collect();
        let hidden = self.tree_hidden(prompt, &fed, lora)?;
        // The rows that predict each completion token: the prompt's last,
        // then the completion's own.
        let mut rows = Vec::new();
        let mut at = prompt.len();
        for f in &fed {
            rows.push(prompt.len() as u32 - 1);
            rows.extend((at..at + f.len()).map(|r| r as u32));
            at += f.len();
        }
        let rows = Tensor::new(rows.as_slice(), &self.device)?;
        let logits = frozen_matmul(&hidden.index_select(&rows, 0)?, &self.head)?;
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let logp = shifted.broadcast_sub(&lse)?;
        let targets: Vec<u32> = completions.iter().flat_map(|c| c.iter().copied()).collect();
        let targets = Tensor::new(targets.as_slice(), &self.device)?.unsqueeze(1)?;
        logp.gather(&targets, 1)?.squeeze(1)
    }
}

/// GRPO's knobs.
#[derive(Clone, Copy, Debug)]
pub struct GrpoParams {
    /// β: the weight of the KL term to the frozen base (0: none, and no
    /// reference pass).
    pub kl_beta: f64,
    /// ε: how far the probability ratio may move before it is clipped.
    pub clip_eps: f64,
}

impl Default for GrpoParams {
    fn default() -> Self {
        GrpoParams {
            kl_beta: 0.04,
            clip_eps: 0.2,
        }
    }
}

/// One completion of a prompt, as [`group_loss`] takes it.
#[derive(Clone, Debug)]
pub struct Completion<'a> {
    /// The completion's tokens (the prompt's are not repeated).
    pub tokens: &'a [u32],
    /// Its group-normalised advantage.
    pub advantage: f64,
    /// The sampling policy's log-probability of each token; `None`: the
    /// policy being trained is the one that sampled (one update per
    /// rollout), so the ratio is 1 with the policy's gradient.
    pub old_logprobs: Option<&'a [f32]>,
    /// The frozen base's log-probabilities, when computed already
    /// (otherwise [`group_loss`] computes them if β > 0).
    pub ref_logprobs: Option<&'a [f32]>,
}

/// Several completions' losses, computed together.
pub struct GroupLoss {
    /// `weight` times the sum of the completions' losses, with gradients
    /// to the adapter.
    pub loss: Tensor,
    /// Each completion's mean per-token KL to the base (k3).
    pub kl: Vec<f64>,
    /// The tokens whose ratio was clipped.
    pub clipped: usize,
    /// Completion tokens.
    pub tokens: usize,
}

/// The GRPO losses of completions of one `prompt` under `lora`, summed and
/// times `weight`: the prompt is computed once and every projection runs
/// over all their tokens in one product ([`TrainLlama::group_logprobs`]);
/// the result, and its gradient, are those of computing each alone.
pub fn group_loss(
    model: &TrainLlama,
    lora: &LoraVars,
    prompt: &[u32],
    completions: &[Completion<'_>],
    params: GrpoParams,
    weight: f64,
) -> Result<GroupLoss> {
    let toks: Vec<&[u32]> = completions.iter().map(|c| c.tokens).collect();
    let lens: Vec<usize> = toks.iter().map(|t| t.len()).collect();
    for (i, c) in completions.iter().enumerate() {
        for (what, given) in [("old", c.old_logprobs), ("reference", c.ref_logprobs)] {
            if let Some(g) = given
                && g.len() != c.tokens.len()
            {
                candle_core::bail!(
                    "completion {i} has {} tokens but {} {what} log-probabilities",
                    c.tokens.len(),
                    g.len()
                );
            }
        }
    }
    let lp = model.group_logprobs(prompt, &toks, Some(lora))?;
    let device = lp.device().clone();
    let dtype = lp.dtype();
    // Per-completion pieces (given, or computed), laid end to end.
    let gather =
        |given: Vec<Option<&[f32]>>, computed: &dyn Fn() -> Result<Tensor>| -> Result<Tensor> {
            if given.iter().all(Option::is_none) {
                return computed();
            }
            let mut parts = Vec::with_capacity(completions.len());
            let mut whole = None;
            let mut at = 0;
            for (g, &m) in given.into_iter().zip(&lens) {
                parts.push(match g {
                    Some(v) => Tensor::new(v, &device)?.to_dtype(dtype)?,
                    None => {
                        if whole.is_none() {
                            whole = Some(computed()?);
                        }
                        whole.as_ref().expect("computed").narrow(0, at, m)?
                    }
                });
                at += m;
            }
            Tensor::cat(&parts, 0)
        };
    let old = gather(
        completions.iter().map(|c| c.old_logprobs).collect(),
        &|| Ok(lp.detach()),
    )?;
    let ratio = (&lp - &old)?.exp()?;
    let adv: Vec<f64> = completions
        .iter()
        .zip(&lens)
        .flat_map(|(c, &m)| std::iter::repeat_n(c.advantage, m))
        .collect();
    let adv_t = Tensor::new(adv.as_slice(), &device)?.to_dtype(dtype)?;
    let eps = params.clip_eps;
    let unclipped = (&ratio * &adv_t)?;
    let clipped_ratio = ratio.clamp(1.0 - eps, 1.0 + eps)?;
    let objective = unclipped.minimum(&(&clipped_ratio * &adv_t)?)?;
    let clipped = {
        let r: Vec<f64> = ratio.to_dtype(DType::F64)?.to_vec1()?;
        r.iter()
            .zip(&adv)
            .filter(|&(&r, &a)| (a > 0.0 && r > 1.0 + eps) || (a < 0.0 && r < 1.0 - eps))
            .count()
    };
    let (per_token, kl) = if params.kl_beta > 0.0 {
        let reference = gather(
            completions.iter().map(|c| c.ref_logprobs).collect(),
            &|| Ok(model.group_logprobs(prompt, &toks, None)?.detach()),
        )?;
        let d = (reference - &lp)?;
        let kl = ((d.exp()? - &d)? - 1.0)?;
        let per: Vec<f64> = kl.to_dtype(DType::F64)?.to_vec1()?;
        let mut means = Vec::with_capacity(lens.len());
        let mut at = 0;
        for &m in &lens {
            means.push(per[at..at + m].iter().sum::<f64>() / m as f64);
            at += m;
        }
        ((objective - (kl * params.kl_beta)?)?, means)
    } else {
        (objective, vec![0.0; lens.len()])
    };
    // Each completion's mean over its tokens, then the weighted sum.
    let w: Vec<f64> = lens
        .iter()
        .flat_map(|&m| std::iter::repeat_n(weight / m as f64, m))
        .collect();
    let w = Tensor::new(w.as_slice(), &device)?.to_dtype(dtype)?;
    let loss = (per_token * w)?.sum_all()?.neg()?;
    Ok(GroupLoss {
        loss,
        kl,
        clipped,
        tokens: lens.iter().sum(),
    })
}

/// AdamW (Loshchilov and Hutter, 2019) over an adapter's variables, with
/// its moments kept so a run resumes where it stopped.
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken.
    pub step: u64,
    moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    /// PyTorch's defaults (β = 0.9, 0.999; ε = 1e-8) and no weight decay,
    /// as transformers' trainers.
    pub fn new(vars: &[&Var], lr: f64) -> Result<AdamW> {
        let moments = vars
            .iter()
            .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<_>>()?;
        Ok(AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 0,
            moments,
        })
    }

    /// One update of `vars` (the order of [`AdamW::new`]) by `grads`.
    pub fn update(&mut self, vars: &[&Var], grads: &[Tensor]) -> Result<()> {
        if vars.len() != self.moments.len() || grads.len() != vars.len() {
            candle_core::bail!("AdamW: variables and gradients do not match its state");
        }
        self.step += 1;
        let t = self.step as i32;
        let c1 = 1.0 - self.beta1.powi(t);
        let c2 = 1.0 - self.beta2.powi(t);
        for ((v, g), (m, s)) in vars.iter().zip(grads).zip(self.moments.iter_mut()) {
            *m = ((&*m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            *s = ((&*s * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let m_hat = (&*m / c1)?;
            let s_hat = (&*s / c2)?;
            let step = (m_hat / (s_hat.sqrt()? + self.eps)?)?;
            let decayed = (v.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            v.set(&(decayed - (step * self.lr)?)?)?;
        }
        Ok(())
    }

    /// The moments, named for a safetensors file.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.moments.len() * 2);
        for (i, (m, s)) in self.moments.iter().enumerate() {
            out.push((format!("m.{i}"), m.clone()));
            out.push((format!("v.{i}"), s.clone()));
        }
        out
    }

    /// Moments saved by [`AdamW::state`], after `step` steps.
    pub fn restore(
        &mut self,
        step: u64,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        for (i, (m, s)) in self.moments.iter_mut().enumerate() {
            let get = |name: String| {
                tensors.get(&name).cloned().ok_or_else(|| {
                    candle_core::Error::Msg(format!("the optimizer state has no `{name}`"))
                })
            };
            let (m2, s2) = (get(format!("m.{i}"))?, get(format!("v.{i}"))?);
            if m2.dims() != m.dims() || s2.dims() != s.dims() {
                candle_core::bail!("the optimizer state's `m.{i}` does not fit the adapter");
            }
            *m = m2.to_dtype(m.dtype())?;
            *s = s2.to_dtype(s.dtype())?;
        }
        self.step = step;
        Ok(())
    }
}

/// Scale `grads` so their global L2 norm is at most `max_norm`; returns
/// the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0.0;
    for g in grads.iter() {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    if norm > max_norm && norm > 0.0 {
        let k = max_norm / norm;
        for g in grads.iter_mut() {
            *g = (&*g * k)?;
        }
    }
    Ok(norm)
}
