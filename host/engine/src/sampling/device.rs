//! The built-in sampler over a row of logits kept on its device
//! ([`DeviceLogits`]): the same pipeline as the host's, moving only what
//! the step needs.
//!
//! - Penalties and biases touch a few entries: those are read, edited by
//!   the host's own code ([`process_slots`], [`bias_slots`]) and written
//!   back (`scatter`). A plugin's mask goes up as one byte per token and is
//!   applied where the row is.
//! - Greedy: the maximum and its lowest id.
//! - Top-k: the blocks that can hold the k best (see
//!   [`DeviceLogits::top_k`]), then the host's top-p, min-p and draw over
//!   those k, in the host's order.
//! - Top-p: the total weight `Z` summed on the device, and the mass above
//!   each rung of a ladder of weights in one pass; the tokens above the
//!   highest rung whose mass reaches `top_p · Z` hold every kept token.
//!   They are gathered by block and the host's cut and draw run over them.
//!   A distribution so flat that more than the host's collect limit remain
//!   is left to the host path.
//! - No truncation (min-p at most): block sums of the weights on the
//!   device; the host picks the block and draws within it.
//!
//! Weights of the gathered tokens are computed by the host's kernels, so
//! a seed picks what the host picks; only `Z` and block sums come from the
//! device's arithmetic, which can move a draw that falls within rounding
//! of a boundary. Whatever this path cannot take (infinities, NaN, very
//! large edit lists, flat top-p) is answered `None` before the step's
//! random draw is taken, and the caller samples the copied row instead.

use candle_core::{DType, Tensor};

use super::history::TokenHistory;
use super::kernels::{BLOCK, Keep, draw_in_block, weight};
use super::mask::{MaskError, SparseRow, bias_slots, edited_ids, kept_tokens, process_slots};
use super::params::SamplingParams;
use super::rng::SequenceRng;
use super::sample::{COLLECT_MAX, draw_among};
use super::select::Cand;
use super::spec::SampleSpec;
use crate::logits::{DeviceLogits, device_error};
use deepwasm_plugins::{LogitsError, LogitsSource};

/// Why the device path did not pick.
#[derive(Debug)]
pub(crate) enum DeviceSample {
    /// The step's token.
    Token(u32),
    /// This step is for the host path (nothing drawn from the generator).
    Host,
}

/// A failure of the device path: the mask's (the plugin's error), or the
/// device's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceSampleError {
    #[error(transparent)]
    Mask(#[from] MaskError),
    #[error(transparent)]
    Device(#[from] LogitsError),
}

/// Past this many edited entries, editing the copied row costs less.
const MOST_EDITS: usize = 4096;

/// Samples `logits` as [`sample_step`](super::sample_step) would, with
/// `params` already overridden by the plugin's spec.
pub(crate) fn sample_on_device(
    logits: &DeviceLogits,
    params: &SamplingParams,
    history: &TokenHistory,
    spec: &SampleSpec,
    rng: &mut SequenceRng,
) -> Result<DeviceSample, DeviceSampleError> {
    let len = logits.len();
    let ids = edited_ids(params, history, &spec.bias, len);
    if ids.len() > MOST_EDITS {
        return Ok(DeviceSample::Host);
    }
    let masked = spec.allow.is_some() || spec.deny.is_some();
    let keep = match masked {
        true => Some(kept_tokens(len, spec.allow.as_ref(), spec.deny.as_ref())?),
        false => None,
    };
    let edited = edit(logits, ids, keep, params, history, spec)?;
    let row = edited.as_ref().unwrap_or(logits);
    if params.is_greedy() {
        // The maximum and its lowest id (NaN never wins).
        let best = row.argmax()?;
        return match best.logit {
            l if l.is_finite() => Ok(DeviceSample::Token(best.token)),
            f32::NEG_INFINITY if masked => Err(MaskError::Empty { vocab: len }.into()),
            _ => Ok(DeviceSample::Host),
        };
    }
    let (max, sum) = row.max_and_sum()?;
    if max == f32::NEG_INFINITY && masked {
        return Err(MaskError::Empty { vocab: len }.into());
    }
    if !max.is_finite() || sum.is_nan() {
        // No token above -inf, +inf or NaN: the host's rules, on the row.
        return Ok(DeviceSample::Host);
    }
    let inv_t = 1.0 / params.temperature;
    let blocks = len.div_ceil(BLOCK);
    if params.top_k > 0 && params.top_k < len {
        if params.top_k * 4 > blocks {
            return Ok(DeviceSample::Host);
        }
        let mut cands: Vec<Cand> = row
            .top_k(params.top_k)?
            .into_iter()
            .filter(|t| !t.logit.is_nan())
            .map(|t| Cand::new(t.token, t.logit))
            .collect();
        let best = cands.first().map_or(f32::NEG_INFINITY, |c| c.logit);
        let u = rng.next_unit();
        return Ok(pick(draw_among(&mut cands, best, None, params, u), &cands));
    }
    // The weights `exp((l - max) / T)` on the device.
    let weights = row
        .row()
        .affine(inv_t as f64, -(max * inv_t) as f64)
        .and_then(|s| s.exp())
        .map_err(device_error)?;
    if params.top_p < 1.0 {
        let z = row.scalar_f32(&weights.sum_all().map_err(device_error)?)? as f64;
        let target = params.top_p as f64 * z;
        let w_bound = ((1.0 - params.top_p as f64) * z / (2.0 * len as f64)) as f32;
        let w_lo = w_bound.max(params.min_p).max(f32::MIN_POSITIVE);
        // The kept tokens are the best-first prefix reaching `target`, so
        // they all weigh at least any `t` whose tokens (`w >= t`) reach it:
        // the highest of a ladder of such `t`, measured in one pass.
        let t = highest_reaching(row, &weights, w_lo, target)?;
        // Below `t` by a margin for the device's rounding, in weight and
        // in logit.
        let t = (t * 0.999).max(w_lo);
        let floor = max + (t.ln() - 1e-3) / inv_t;
        let most = (2 * COLLECT_MAX).div_ceil(BLOCK);
        let Some(gathered) = row.blocks_reaching(floor, most)? else {
            return Ok(DeviceSample::Host);
        };
        let mut cands = Vec::new();
        for (base, values) in gathered {
            for (i, l) in values.into_iter().enumerate() {
                let w = weight(l, max, inv_t, 0.0);
                if w >= t {
                    cands.push(Cand {
                        id: base + i as u32,
                        logit: l,
                        w,
                    });
                }
            }
        }
        if cands.len() > COLLECT_MAX {
            return Ok(DeviceSample::Host);
        }
        let u = rng.next_unit();
        return Ok(pick(
            draw_among(&mut cands, max, Some(z), params, u),
            &cands,
        ));
    }
    // No truncation: block sums of the weights that min-p keeps.
    let kept = match params.min_p > 0.0 {
        true => weights
            .ge(params.min_p as f64)
            .and_then(|k| k.to_dtype(DType::F32))
            .and_then(|k| k.mul(&weights))
            .map_err(device_error)?,
        false => weights,
    };
    let sums = row.per_block(&kept, |b, dim| b.sum(dim))?;
    let total: f64 = sums.iter().map(|&s| s as f64).sum();
    let u = rng.next_unit();
    let target = u * total;
    let mut acc = 0.0f64;
    let mut chosen = None;
    for (b, &s) in sums.iter().enumerate() {
        if s <= 0.0 {
            continue;
        }
        chosen = Some((b, acc));
        if acc + s as f64 > target {
            break;
        }
        acc += s as f64;
    }
    let Some((b, acc)) = chosen else {
        return Ok(DeviceSample::Token(row.argmax()?.token));
    };
    let start = b * BLOCK;
    let block = row.range(start, BLOCK)?;
    let w: Vec<f32> = block
        .iter()
        .map(|&l| weight(l, max, inv_t, params.min_p))
        .collect();
    let keep = Keep {
        w_min: params.min_p,
        ..Keep::all()
    };
    let at = draw_in_block(&block, &w, &keep, 0, (acc, target));
    Ok(DeviceSample::Token(start as u32 + at))
}

/// Rungs of [`highest_reaching`]'s ladder.
const RUNGS: usize = 32;

/// The highest weight `t` of a geometric ladder from 1 down to `w_lo`
/// whose tokens (`weights >= t`) weigh at least `target` (with a margin
/// for rounding), or `w_lo`. The ladder's masses come up in one trip.
fn highest_reaching(
    row: &DeviceLogits,
    weights: &Tensor,
    w_lo: f32,
    target: f64,
) -> Result<f32, DeviceSampleError> {
    let ln_lo = w_lo.ln();
    let ladder: Vec<f32> = (0..RUNGS)
        .map(|j| (ln_lo * j as f32 / (RUNGS - 1) as f32).exp())
        .collect();
    let rungs = row
        .upload(ladder.clone())?
        .reshape((RUNGS, 1))
        .map_err(device_error)?;
    let masses = weights
        .unsqueeze(0)
        .and_then(|w| w.broadcast_ge(&rungs))
        .and_then(|m| m.to_dtype(DType::F32))
        .and_then(|m| m.broadcast_mul(&weights.unsqueeze(0)?))
        .and_then(|m| m.sum(1))
        .map_err(device_error)?;
    let masses = row.vec_f32(&masses)?;
    Ok(ladder
        .into_iter()
        .zip(masses)
        .find(|&(_, m)| m as f64 >= target * (1.0 + 1e-4))
        .map_or(w_lo, |(t, _)| t))
}

/// The drawn token, or (when every weight was 0) the best candidate.
fn pick(drawn: Option<u32>, cands: &[Cand]) -> DeviceSample {
    DeviceSample::Token(drawn.or(cands.first().map(|c| c.id)).unwrap_or(0))
}

/// The row with the step's penalties, biases and mask applied (`None`:
/// nothing to apply). The entries edited are read, edited on the host and
/// written back; the mask is applied on the device.
fn edit(
    logits: &DeviceLogits,
    ids: Vec<u32>,
    keep: Option<Vec<u8>>,
    params: &SamplingParams,
    history: &TokenHistory,
    spec: &SampleSpec,
) -> Result<Option<DeviceLogits>, DeviceSampleError> {
    if ids.is_empty() && keep.is_none() {
        return Ok(None);
    }
    let mut row = logits.row().clone();
    if !ids.is_empty() {
        let values = logits.get(&ids)?;
        let mut sparse = SparseRow { ids, values };
        process_slots(&mut sparse, params, history);
        if let Some(keep) = &keep {
            for (&id, v) in sparse.ids.iter().zip(sparse.values.iter_mut()) {
                if keep[id as usize] == 0 {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        bias_slots(&mut sparse, &spec.bias);
        let index = logits.upload(sparse.ids)?;
        let values = logits.upload(sparse.values)?;
        row = row.scatter(&index, &values, 0).map_err(device_error)?;
    }
    if let Some(keep) = keep {
        let mask = logits.upload(keep)?;
        let out = Tensor::full(f32::NEG_INFINITY, logits.len(), row.device())
            .and_then(|neg| mask.where_cond(&row, &neg))
            .map_err(device_error)?;
        row = out;
    }
    Ok(Some(logits.derived(row).map_err(device_error)?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::Device;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::logits::{DeviceIds, LogitsTraffic};
    use crate::sampling::sample::sample_step;
    use crate::sampling::spec::{TokenBias, TokenRange, TokenSet};

    /// Logits shaped like a model's: a few likely tokens over a long tail.
    fn model_like(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let base: f32 = rng.random_range(-4.0..4.0);
                if i % 997 == 3 { base + 12.0 } else { base }
            })
            .collect()
    }

    fn on_device(values: &[f32]) -> (DeviceLogits, Arc<LogitsTraffic>) {
        let traffic = Arc::new(LogitsTraffic::default());
        let t = Tensor::from_vec(values.to_vec(), (1, values.len()), &Device::Cpu).unwrap();
        let d = DeviceLogits::new(&t, 0, &DeviceIds::default(), &traffic).unwrap();
        (d, traffic)
    }

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::default()
        }
    }

    /// How many of `draws` seeds the device path picks as the host does,
    /// after both took the same number of random draws.
    fn agreement(
        values: &[f32],
        p: &SamplingParams,
        history: &TokenHistory,
        spec: &SampleSpec,
        draws: u64,
    ) -> u64 {
        let (d, _) = on_device(values);
        let mut same = 0;
        for seed in 0..draws {
            let (mut a, mut b) = (SequenceRng::new(seed), SequenceRng::new(seed));
            let mut row = values.to_vec();
            let host = sample_step(&mut row, p, history, Some(spec), &mut a).unwrap();
            let device = match sample_on_device(&d, p, history, spec, &mut b).unwrap() {
                DeviceSample::Token(t) => t,
                DeviceSample::Host => panic!("{p:?} was left to the host"),
            };
            assert_eq!(a.next_unit(), b.next_unit(), "both took one draw");
            same += u64::from(host == device);
        }
        same
    }

    #[test]
    fn the_device_picks_what_the_host_picks() {
        let values = model_like(49_152, 1);
        let mut history = TokenHistory::new(&[3, 1000, 1000, 2000]);
        history.extend_output(&[3, 3, 4000]);
        let penalised = SamplingParams {
            repetition_penalty: 1.3,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            logit_bias: vec![(5, 9.0), (6, -100.0), (3, 2.0)],
            ..params(0.9, 0, 1.0, 0.0)
        };
        let masked = SampleSpec {
            allow: Some(TokenSet::Ranges(vec![TokenRange {
                start: 0,
                end: 30_000,
            }])),
            deny: Some(TokenSet::Ids(vec![3, 1000, 2000])),
            bias: vec![TokenBias {
                token: 7,
                bias: 11.0,
            }],
            params: None,
        };
        let plain = SampleSpec::default();
        let cases = [
            ("greedy", params(0.0, 0, 1.0, 0.0), &plain),
            ("temperature", params(1.0, 0, 1.0, 0.0), &plain),
            ("hot", params(1.7, 0, 1.0, 0.0), &plain),
            ("min-p", params(0.8, 0, 1.0, 0.05), &plain),
            ("top-k", params(0.8, 40, 1.0, 0.0), &plain),
            ("top-k, top-p", params(1.2, 50, 0.8, 0.0), &plain),
            ("top-p", params(0.7, 0, 0.9, 0.0), &plain),
            ("top-p, min-p", params(1.0, 0, 0.5, 0.02), &plain),
            ("penalties", penalised.clone(), &plain),
            (
                "greedy, penalties",
                SamplingParams {
                    temperature: 0.0,
                    ..penalised
                },
                &plain,
            ),
            ("masked", params(0.5, 0, 0.9, 0.0), &masked),
            ("masked greedy", params(0.0, 0, 1.0, 0.0), &masked),
            ("masked top-k", params(1.0, 20, 1.0, 0.0), &masked),
        ];
        for (name, p, spec) in cases {
            let same = agreement(&values, &p, &history, spec, 300);
            // Only a draw within rounding of a boundary may differ.
            assert!(same >= 297, "{name}: {same} of 300 alike");
        }
    }

    /// Logits with a long tail, as a small model's often are: top-p keeps
    /// thousands of tokens and the host finds its cut over the vocabulary.
    fn long_tail(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let u: f32 = rng.random_range(1e-6..1.0);
                -(-u.ln()).ln() * 1.5
            })
            .collect()
    }

    #[test]
    fn the_device_picks_what_the_host_picks_over_a_long_tail() {
        let values = long_tail(49_152, 9);
        let history = TokenHistory::new(&[]);
        for p in [
            params(0.8, 0, 0.9, 0.0),
            params(1.0, 0, 0.5, 0.0),
            params(0.6, 0, 0.95, 0.01),
        ] {
            let same = agreement(&values, &p, &history, &SampleSpec::default(), 300);
            assert!(same >= 297, "{p:?}: {same} of 300 alike");
        }
    }

    #[test]
    fn a_step_moves_a_small_part_of_the_row() {
        let values = model_like(129_280, 2);
        let history = TokenHistory::new(&[1, 2, 3]);
        let row_bytes = 129_280 * 4;
        for p in [
            params(0.0, 0, 1.0, 0.0),
            params(1.0, 0, 1.0, 0.0),
            params(0.8, 40, 0.95, 0.0),
            params(0.7, 0, 0.9, 0.0),
        ] {
            let (d, traffic) = on_device(&values);
            let mut rng = SequenceRng::new(3);
            sample_on_device(&d, &p, &history, &SampleSpec::default(), &mut rng).unwrap();
            assert_eq!(traffic.whole_rows_copied(), 0, "{p:?}");
            assert!(
                traffic.to_host_bytes() * 10 < row_bytes,
                "{p:?}: {}",
                traffic.to_host_bytes()
            );
        }
    }

    #[test]
    fn a_mask_that_leaves_nothing_is_the_plugins_error() {
        let values = model_like(1000, 3);
        let (d, _) = on_device(&values);
        let spec = SampleSpec {
            allow: Some(TokenSet::Ids(vec![])),
            ..SampleSpec::default()
        };
        let got = sample_on_device(
            &d,
            &params(1.0, 0, 1.0, 0.0),
            &TokenHistory::new(&[]),
            &spec,
            &mut SequenceRng::new(1),
        );
        assert!(
            matches!(got, Err(DeviceSampleError::Mask(MaskError::Empty { .. }))),
            "{got:?}"
        );
    }

    /// `values` under `p` go to the host path, before anything is drawn.
    fn assert_left_to_the_host(values: &[f32], p: &SamplingParams) {
        let (d, _) = on_device(values);
        let mut rng = SequenceRng::new(1);
        let before = rng.clone().next_unit();
        let history = TokenHistory::new(&[]);
        let got = sample_on_device(&d, p, &history, &SampleSpec::default(), &mut rng).unwrap();
        assert!(matches!(got, DeviceSample::Host));
        assert_eq!(rng.next_unit(), before, "nothing drawn");
    }

    #[test]
    fn top_p_over_a_flat_distribution_is_left_to_the_host() {
        // Every token nearly as likely: top-p keeps tens of thousands.
        let values: Vec<f32> = (0..49_152).map(|i| (i % 7) as f32 * 1e-3).collect();
        assert_left_to_the_host(&values, &params(1.0, 0, 0.9, 0.0));
    }

    #[test]
    fn infinities_and_nan_are_left_to_the_host() {
        for special in [f32::INFINITY, f32::NAN] {
            let mut values = model_like(1000, 4);
            values[10] = special;
            assert_left_to_the_host(&values, &params(1.0, 0, 1.0, 0.0));
        }
    }
}
