//! DeepSeekMoE: shared experts every token goes through, plus routed
//! experts chosen per token (DeepSeek-V2 §2.2; V3, arXiv:2412.19437, §2.1.2).
//!
//! Routing runs on the host in f32 over the router's logits; each expert then
//! computes only the tokens routed to it.

use candle_core::{DType, Module, Result, Tensor};

use super::config::{DeepSeekConfig, ScoringFunc, TopkMethod};
use crate::linear::Linear;

/// A SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
pub(crate) struct Mlp {
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

impl Mlp {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

/// How one model's router chooses.
#[derive(Clone, Debug)]
pub(crate) struct Router {
    pub(crate) scoring: ScoringFunc,
    pub(crate) method: TopkMethod,
    pub(crate) top_k: usize,
    pub(crate) n_group: usize,
    pub(crate) topk_group: usize,
    pub(crate) norm_topk_prob: bool,
    pub(crate) scaling: f32,
    /// V3 rescales after normalising; V2 only when it does not normalise.
    pub(crate) scale_after_norm: bool,
}

impl Router {
    pub(crate) fn new(cfg: &DeepSeekConfig) -> Self {
        Router {
            scoring: cfg.scoring_func,
            method: cfg.topk_method,
            top_k: cfg.num_experts_per_tok.unwrap_or(1),
            n_group: cfg.n_group.max(1),
            topk_group: cfg.topk_group.max(1),
            norm_topk_prob: cfg.norm_topk_prob,
            scaling: cfg.routed_scaling_factor as f32,
            scale_after_norm: cfg.model_type == "deepseek_v3",
        }
    }

    /// The experts of one token and their weights, from its router logits
    /// and (V3) the selection bias.
    pub(crate) fn route(&self, logits: &[f32], bias: Option<&[f32]>) -> Vec<(usize, f32)> {
        let e = logits.len();
        let scores: Vec<f32> = match self.scoring {
            ScoringFunc::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
            ScoringFunc::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                exps.into_iter().map(|x| x / sum).collect()
            }
        };
        // Scores the choice is made on: V3 adds the load-balancing bias,
        // which steers selection but not the weights.
        let choice: Vec<f32> = match (self.method, bias) {
            (TopkMethod::NoauxTc, Some(b)) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
            _ => scores.clone(),
        };
        let per_group = e / self.n_group;
        let allowed: Vec<bool> = match self.method {
            TopkMethod::Greedy => vec![true; e],
            TopkMethod::GroupLimitedGreedy | TopkMethod::NoauxTc => {
                let group_score = |g: usize| -> f32 {
                    let s = &choice[g * per_group..(g + 1) * per_group];
                    if self.method == TopkMethod::NoauxTc {
                        // The sum of the group's two best.
                        top_indices(s, 2).iter().map(|&i| s[i]).sum()
                    } else {
                        s.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    }
                };
                let groups: Vec<f32> = (0..self.n_group).map(group_score).collect();
                let keep = top_indices(&groups, self.topk_group);
                (0..e).map(|i| keep.contains(&(i / per_group))).collect()
            }
        };
        let masked: Vec<f32> = choice
            .iter()
            .zip(&allowed)
            .map(|(&s, &ok)| if ok { s } else { f32::NEG_INFINITY })
            .collect();
        let chosen = top_indices(&masked, self.top_k);
        let mut weights: Vec<f32> = chosen.iter().map(|&i| scores[i]).collect();
        let normalise = self.top_k > 1 && self.norm_topk_prob;
        if normalise {
            let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
            for w in &mut weights {
                *w /= sum;
            }
        }
        if self.scale_after_norm || !normalise {
            for w in &mut weights {
                *w *= self.scaling;
            }
        }
        chosen.into_iter().zip(weights).collect()
    }
}

/// The indices of the `k` largest values, best first (ties to the lower
/// index; NaN never chosen over a number).
fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// A mixture-of-experts layer.
pub(crate) struct Moe {
    /// `[experts, hidden]`, in f32.
    pub(crate) gate: Tensor,
    /// V3's selection bias, `[experts]`.
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) router: Router,
    pub(crate) experts: Vec<Mlp>,
    pub(crate) shared: Option<Mlp>,
}

impl Moe {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, _) = x.dims2()?;
        let logits: Vec<Vec<f32>> = x.to_dtype(DType::F32)?.matmul(&self.gate.t()?)?.to_vec2()?;
        // Tokens and weights per expert.
        let mut assigned: Vec<Vec<(u32, f32)>> = vec![Vec::new(); self.experts.len()];
        for (token, l) in logits.iter().enumerate() {
            for (expert, w) in self.router.route(l, self.bias.as_deref()) {
                assigned[expert].push((token as u32, w));
            }
        }
        let mut out = match &self.shared {
            Some(shared) => shared.forward(x)?,
            None => x.zeros_like()?,
        };
        for (expert, tokens) in self.experts.iter().zip(&assigned) {
            if tokens.is_empty() {
                continue;
            }
            let ids: Vec<u32> = tokens.iter().map(|&(t, _)| t).collect();
            let weights: Vec<f32> = tokens.iter().map(|&(_, w)| w).collect();
            let ids = Tensor::new(ids.as_slice(), x.device())?;
            let y = expert.forward(&x.index_select(&ids, 0)?)?;
            let w =
                Tensor::from_vec(weights, (tokens.len(), 1), x.device())?.to_dtype(y.dtype())?;
            out = out.index_add(&ids, &y.broadcast_mul(&w)?, 0)?;
        }
        debug_assert_eq!(out.dim(0)?, t);
        Ok(out)
    }
}
