//! Pipeline steps 5–9: temperature, top-k, top-p, min-p and the draw.
//!
//! Every filter keeps a prefix of the vocabulary in the order "higher logit
//! first, then lower id" (temperature does not change that order), so the
//! kept set is always such a prefix and is found without sorting the
//! vocabulary. A token's weight is `exp((logit - max) / T)`: 1 for the most
//! likely token, proportional to its probability.
//!
//! - **top-k** (`0 < k < vocab`): a bounded heap fed block by block, skipping
//!   blocks whose maximum cannot enter it. Top-p is then renormalised over
//!   the k tokens, so nothing else is read.
//! - **top-p** without top-k: one pass stores every weight and sums them
//!   (`Z`). Tokens lighter than `w_lo = (1 - p) Z / (2 n)` weigh at most
//!   `(1 - p) Z / 2` together, so the top-p prefix lies among the heavier
//!   ones. Usually they are few: they are collected and the cut is found
//!   among them by partitioning, expected linear in their number. When they
//!   are many thousands (a flat distribution), a sample of the vocabulary
//!   brackets the cut, only the bracket's tokens are collected, and the draw
//!   walks the stored weights of the kept tokens.
//! - **min-p** keeps weights `>= min_p`. Top-p's kept set is a prefix of the
//!   order and so is min-p's, so applying min-p after top-p intersects them.
//! - **no truncation**: the pass that stores the weights also sums them per
//!   block; the draw finds its block, then its token.
//!
//! The draw walks the kept tokens in an order fixed by the input alone, so a
//! seed picks the same token on every platform.

use std::cell::RefCell;

use super::history::TokenHistory;
use super::kernels::{
    Keep, collect, count_at_least, draw_from_blocks, first_index_of, kept_block_sums, max_all,
    weigh, weight,
};
use super::mask::{MaskError, apply_bias, apply_mask, process_logits};
use super::params::SamplingParams;
use super::rng::SequenceRng;
use super::select::{
    Cand, at_or_before, compact, draw, top_k, top_p_cut, vocab_top_p_cut, weight_sum,
};
use super::spec::SampleSpec;

const NEG_INF: f32 = f32::NEG_INFINITY;

/// Buffers reused across calls on a thread, so a step allocates nothing
/// once warm: about 2 MB at most for a 129,280-token vocabulary.
#[derive(Default)]
struct Scratch {
    /// Tokens that may be kept, at most one per token.
    cands: Vec<Cand>,
    /// Each token's weight.
    weights: Vec<f32>,
    /// Each block's total weight.
    block_sum: Vec<f32>,
    /// Each block's largest weight.
    block_max: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Picks one token from processed logits (steps 5–9 of the
/// [pipeline](super)).
///
/// A token whose logit is NaN is never picked, nor one at -inf while any
/// token is above -inf. If some logits are +inf, the pick is among those
/// (the limit of the softmax), as if they were all equally likely. If no
/// logit is above -inf (which [`apply_mask`] reports as an error first) the
/// lowest id that is not NaN is returned, or 0.
///
/// Greedy steps take nothing from `rng`; all others take exactly one draw.
/// `params` are assumed valid ([`SamplingParams::validate`]).
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut SequenceRng) -> u32 {
    if params.is_greedy() {
        return greedy(logits);
    }
    let u = rng.next_unit();
    SCRATCH.with(|s| pick(&mut s.borrow_mut(), logits, params, u))
}

/// Runs the whole pipeline on one step's `logits`, in place. With a sampler
/// plugin's spec (its `sample` decision), the fields its `params` set
/// replace the request's for the whole step, penalties included; its
/// `deny`/`allow` mask and its bias come after the request's penalties and
/// bias, as the [pipeline](super) lists.
///
/// A plugin's `seed` override does not reseed `rng` here: the engine owns
/// the sequence's generator.
pub fn sample_step(
    logits: &mut [f32],
    params: &SamplingParams,
    history: &TokenHistory,
    plugin: Option<&SampleSpec>,
    rng: &mut SequenceRng,
) -> Result<u32, MaskError> {
    let overridden = plugin
        .and_then(|spec| spec.params.as_ref())
        .map(|o| params.with_overrides(o));
    let params = overridden.as_ref().unwrap_or(params);
    process_logits(logits, params, history);
    if let Some(spec) = plugin {
        apply_mask(logits, spec.allow.as_ref(), spec.deny.as_ref())?;
        apply_bias(logits, &spec.bias);
    }
    Ok(sample(logits, params, rng))
}

/// The lowest id of the largest logit (NaN ignored).
fn greedy(logits: &[f32]) -> u32 {
    let max = max_all(logits);
    if max == NEG_INF {
        return fallback(logits);
    }
    first_index_of(logits, max).unwrap_or(0) as u32
}

/// The pick when nothing is above -inf: the lowest id that is not NaN.
fn fallback(logits: &[f32]) -> u32 {
    logits.iter().position(|l| !l.is_nan()).unwrap_or(0) as u32
}

/// Above this many tokens that top-p may keep, its cut is sought in the
/// stored weights rather than among collected candidates.
pub(crate) const COLLECT_MAX: usize = 8192;

/// What is left to do once the kept set is known.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Nothing to draw: this token.
    Token(u32),
    /// Draw from `Scratch::cands`, whose weights sum to `total`.
    Cands { total: f64 },
    /// Draw from the tokens of the whole vocabulary that `keep` holds,
    /// through `Scratch::weights` and block sums that add up to `total`.
    Blocks { total: f64, keep: Keep },
}

fn pick(scratch: &mut Scratch, logits: &[f32], params: &SamplingParams, u: f64) -> u32 {
    let plan = plan(scratch, logits, params);
    draw_planned(scratch, logits, plan, u)
}

/// Steps 5–8: finds the kept set and its weights.
fn plan(scratch: &mut Scratch, logits: &[f32], params: &SamplingParams) -> Plan {
    let Scratch {
        cands,
        weights,
        block_max,
        block_sum,
    } = scratch;
    let inv_t = 1.0 / params.temperature;
    let n = logits.len();

    if params.top_k > 0 && params.top_k < n {
        top_k(logits, params.top_k, cands);
        let best = cands.iter().map(|c| c.logit).fold(NEG_INF, f32::max);
        if best == NEG_INF {
            return Plan::Token(fallback(logits));
        }
        if best == f32::INFINITY {
            return among_infinite(cands, params);
        }
        cands.retain(|c| c.logit > NEG_INF);
        for c in cands.iter_mut() {
            c.w = weight(c.logit, best, inv_t, 0.0);
        }
        return keep(cands, None, params);
    }

    let max = max_all(logits);
    if max == NEG_INF {
        return Plan::Token(fallback(logits));
    }
    if max == f32::INFINITY {
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| **l == f32::INFINITY)
                .map(|(i, &l)| Cand::new(i as u32, l)),
        );
        return among_infinite(cands, params);
    }

    if params.top_p < 1.0 {
        let z = weigh(logits, (max, inv_t, 0.0), weights, block_sum, block_max);
        let target = params.top_p as f64 * z;
        let w_bound = ((1.0 - params.top_p as f64) * z / (2.0 * n as f64)) as f32;
        let w_lo = w_bound.max(params.min_p);
        if count_at_least(weights, block_max, w_lo) > COLLECT_MAX
            && let Some(cut) = vocab_top_p_cut(logits, weights, block_max, z, target)
        {
            let keep = Keep {
                cut: cut.unwrap_or(Keep::all().cut),
                w_min: params.min_p,
            };
            let total = kept_block_sums(logits, weights, &keep, block_sum);
            return Plan::Blocks { total, keep };
        }
        collect(logits, weights, block_max, w_lo, cands);
        return keep(cands, Some(z), params);
    }

    let shape = (max, inv_t, params.min_p);
    let total = weigh(logits, shape, weights, block_sum, block_max);
    Plan::Blocks {
        total,
        keep: Keep::all(),
    }
}

/// Steps 7–9 over candidates found elsewhere (a device's top-k, best
/// first; or, for top-p, every token of weight at least the bound `plan`
/// collects by, in id order, with `z` the whole vocabulary's weight): the
/// weights relative to `best`, top-p, min-p and the draw at `u`, as `plan`
/// and `draw_planned` run them.
pub(crate) fn draw_among(
    cands: &mut Vec<Cand>,
    best: f32,
    z: Option<f64>,
    params: &SamplingParams,
    u: f64,
) -> Option<u32> {
    let inv_t = 1.0 / params.temperature;
    cands.retain(|c| c.logit > NEG_INF);
    for c in cands.iter_mut() {
        c.w = weight(c.logit, best, inv_t, 0.0);
    }
    match keep(cands, z, params) {
        Plan::Cands { total } => draw(cands, total, u),
        Plan::Token(t) => Some(t),
        Plan::Blocks { .. } => None,
    }
}

/// Step 9.
fn draw_planned(scratch: &Scratch, logits: &[f32], plan: Plan, u: f64) -> u32 {
    let drawn = match plan {
        Plan::Token(t) => return t,
        Plan::Cands { total } => draw(&scratch.cands, total, u),
        Plan::Blocks { total, keep } => {
            let (weights, sums) = (&scratch.weights, &scratch.block_sum);
            draw_from_blocks(logits, weights, sums, (total, &keep), u)
        }
    };
    drawn.unwrap_or_else(|| fallback(logits))
}

/// +inf logits: each such token counts as weight 1, the others 0.
fn among_infinite(cands: &mut Vec<Cand>, params: &SamplingParams) -> Plan {
    cands.retain(|c| c.logit == f32::INFINITY);
    for c in cands.iter_mut() {
        c.w = 1.0;
    }
    keep(cands, None, params)
}

/// Top-p (against `z`, or the candidates' own total), then min-p. The
/// candidates hold the most likely token, at weight 1, which both keep.
///
/// Top-p over the vocabulary (`z` given) leaves the kept tokens in id
/// order, the order the vocabulary-wide draw walks: the draw then depends
/// on the kept set alone, not on which lighter tokens were collected
/// beside it, so any superset of the kept tokens draws the same.
fn keep(cands: &mut Vec<Cand>, z: Option<f64>, params: &SamplingParams) -> Plan {
    if params.top_p < 1.0 {
        let whole_vocab = z.is_some();
        let z = z.unwrap_or_else(|| weight_sum(cands));
        if let Some(cut) = top_p_cut(cands, params.top_p as f64 * z) {
            compact(cands, |c| at_or_before(c, &cut));
        }
        if whole_vocab {
            cands.sort_unstable_by_key(|c| c.id);
        }
    }
    if params.min_p > 0.0 {
        compact(cands, |c| c.w >= params.min_p);
    }
    Plan::Cands {
        total: weight_sum(cands),
    }
}

#[cfg(test)]
mod tests;
