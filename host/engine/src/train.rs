//! One GRPO update of a LoRA adapter from a rollout's scored groups: what
//! `deepwasm train grpo` and `POST /v1/train/grpo` both run after each
//! rollout ([`deepwasm_model::train`] has the loss and the optimizer).

use candle_core::Tensor;
use deepwasm_model::train::{AdamW, Completion, GrpoParams, LoraVars, TrainLlama, group_loss};
use serde_json::{Map, Value};

use crate::rollout::{GroupResult, Summary};

/// The prompts of step `step` (from 1): `per_step` of them, in order,
/// round and round.
pub fn step_prompts<T: Clone>(prompts: &[T], step: u64, per_step: usize) -> Vec<T> {
    let first = (step.saturating_sub(1) as usize).wrapping_mul(per_step);
    (0..per_step)
        .map(|j| prompts[first.wrapping_add(j) % prompts.len()].clone())
        .collect()
}

/// The rollout seed of step `step` of a run seeded with `seed`: a step's
/// samples depend on the step only, so a resumed run repeats an unbroken
/// one.
pub fn step_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_add(step.wrapping_mul(0x9e37_79b9))
}

/// What a step reports: its rewards' means, the update's figures, its
/// completions and its seconds.
pub fn step_report(
    step: u64,
    groups: &[GroupResult],
    names: &[String],
    stats: &StepStats,
    summary: &Summary,
    rollout_seconds: f64,
    step_seconds: f64,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("step".into(), step.into());
    m.insert("rewards".into(), Value::Object(reward_means(groups, names)));
    m.insert("loss".into(), stats.loss.into());
    m.insert("kl".into(), stats.kl.into());
    m.insert("clip_fraction".into(), stats.clip_fraction.into());
    m.insert("grad_norm".into(), stats.grad_norm.into());
    m.insert("updated".into(), stats.updated.into());
    m.insert("completions".into(), summary.completions.into());
    m.insert("completion_tokens".into(), summary.completion_tokens.into());
    m.insert("rollout_seconds".into(), rollout_seconds.into());
    m.insert("step_seconds".into(), step_seconds.into());
    m
}

/// What one update did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StepStats {
    /// The step's loss (the mean over its completions).
    pub loss: f64,
    /// The mean per-token KL to the base, over completions.
    pub kl: f64,
    /// The share of completion tokens whose ratio was clipped.
    pub clip_fraction: f64,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
    /// Completions in the step's mean (those with an advantage).
    pub samples: usize,
    /// Completions whose gradient was computed (a non-zero advantage, or
    /// a KL term).
    pub updated: usize,
}

/// How many completion tokens one training pass takes at most: a group's
/// completions go through together (their prompt computed once) up to
/// this many, or fewer where [`PASS_BYTES`] says so. A completion longer
/// than that goes alone.
pub const ROWS_PER_PASS: usize = 512;

/// About what one pass's activations may take: a larger model takes
/// fewer tokens a pass ([`TrainLlama::activation_bytes_per_token`]).
pub const PASS_BYTES: usize = 2 << 30;

/// The completion tokens a pass of `model` takes at most.
pub fn rows_per_pass(model: &TrainLlama) -> usize {
    (PASS_BYTES / model.activation_bytes_per_token().max(1)).clamp(1, ROWS_PER_PASS)
}

/// Accumulate the GRPO gradient over every completion of `groups` that has
/// an advantage, clip its global norm to `max_grad_norm`, and take one
/// `opt` step. A group's completions go through in passes of up to
/// [`rows_per_pass`] tokens. A completion with no advantage and no KL term
/// is skipped: it has no gradient.
pub fn learn(
    model: &TrainLlama,
    vars: &LoraVars,
    opt: &mut AdamW,
    groups: &[GroupResult],
    params: GrpoParams,
    max_grad_norm: f64,
) -> candle_core::Result<StepStats> {
    learn_in_passes(
        model,
        vars,
        opt,
        groups,
        params,
        max_grad_norm,
        rows_per_pass(model),
    )
}

/// [`learn`], with passes of up to `rows_per_pass` completion tokens (1:
/// each completion alone, prompt and all).
pub fn learn_in_passes(
    model: &TrainLlama,
    vars: &LoraVars,
    opt: &mut AdamW,
    groups: &[GroupResult],
    params: GrpoParams,
    max_grad_norm: f64,
    rows_per_pass: usize,
) -> candle_core::Result<StepStats> {
    // Every completion with an advantage is in the mean; those with no
    // gradient are not computed.
    let samples = groups
        .iter()
        .flat_map(|g| &g.completions)
        .filter(|c| c.advantage.is_some() && !c.tokens.is_empty())
        .count();
    let n = samples.max(1) as f64;
    let list = vars.vars();
    let mut grads: Vec<Option<Tensor>> = vec![None; list.len()];
    let mut stats = StepStats {
        samples,
        ..StepStats::default()
    };
    let (mut clipped, mut tokens) = (0usize, 0usize);
    for g in groups {
        let live: Vec<Completion<'_>> = g
            .completions
            .iter()
            .filter_map(|c| {
                let adv = c.advantage?;
                (!c.tokens.is_empty() && (adv != 0.0 || params.kl_beta > 0.0)).then_some(
                    Completion {
                        tokens: &c.tokens,
                        advantage: adv,
                        old_logprobs: None,
                        ref_logprobs: None,
                    },
                )
            })
            .collect();
        let mut rest = live.as_slice();
        while !rest.is_empty() {
            let mut take = 1;
            let mut rows = rest[0].tokens.len();
            while take < rest.len() && rows + rest[take].tokens.len() <= rows_per_pass {
                rows += rest[take].tokens.len();
                take += 1;
            }
            let (pass, after) = rest.split_at(take);
            rest = after;
            stats.updated += pass.len();
            let l = group_loss(model, vars, &g.prompt_tokens, pass, params, 1.0 / n)?;
            stats.loss += l
                .loss
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            stats.kl += l.kl.iter().sum::<f64>() / n;
            clipped += l.clipped;
            tokens += l.tokens;
            let g = l.loss.backward()?;
            for (acc, v) in grads.iter_mut().zip(&list) {
                if let Some(g) = g.get(v) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
    }
    let mut grads: Vec<Tensor> = grads
        .into_iter()
        .zip(&list)
        .map(|(g, v)| g.map_or_else(|| v.zeros_like(), Ok))
        .collect::<candle_core::Result<_>>()?;
    stats.grad_norm = deepwasm_model::train::clip_grad_norm(&mut grads, max_grad_norm)?;
    stats.clip_fraction = if tokens > 0 {
        clipped as f64 / tokens as f64
    } else {
        0.0
    };
    opt.update(&list, &grads)?;
    Ok(stats)
}

/// The mean score of each reward named in `names`, and of the totals
/// (`total`), over every completion of `groups`; `null` where none has one.
pub fn reward_means(groups: &[GroupResult], names: &[String]) -> Map<String, Value> {
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let mut out = Map::new();
    for name in names {
        let scores: Vec<f64> = groups
            .iter()
            .flat_map(|g| &g.completions)
            .filter_map(|c| c.scores.get("rewards")?.get(name)?.as_f64())
            .collect();
        out.insert(name.clone(), mean(&scores).map_or(Value::Null, Value::from));
    }
    let totals: Vec<f64> = groups
        .iter()
        .flat_map(|g| &g.completions)
        .filter_map(|c| c.scores.get("total")?.as_f64())
        .collect();
    out.insert(
        "total".into(),
        mean(&totals).map_or(Value::Null, Value::from),
    );
    out
}
