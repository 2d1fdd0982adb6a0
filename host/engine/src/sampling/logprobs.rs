//! Log-probabilities of a step, as reported to the client.

use serde::{Deserialize, Serialize};

use super::kernels::{max_all, total_weight};
use super::select::{rank_cmp, top_k};

/// The most alternatives OpenAI's API reports per token (`top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The token that was picked.
    pub token: u32,
    /// Its natural-log probability under the raw logits.
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, best first, ties
    /// to the lower id.
    pub top: Vec<(u32, f32)>,
}

/// The log-softmax of the model's raw logits at `chosen` and at the `top_n`
/// most likely tokens, as vLLM reports by default: before penalties, masks,
/// temperature and truncation, so the numbers describe the model rather
/// than the sampler. OpenAI allows `top_n` up to [`MAX_TOP_LOGPROBS`]; the
/// caller enforces that.
///
/// NaN logits get NaN and are never in `top`. If some logits are +inf, they
/// share the probability equally and every other token gets -inf; if none is
/// above -inf, all get -inf. A `chosen` outside the vocabulary gets -inf.
/// One pass for the normaliser and one for the top list: O(vocab).
pub fn logprobs(raw_logits: &[f32], chosen: u32, top_n: usize) -> TokenLogprobs {
    let logprob = log_softmax_at(raw_logits);
    let at = |t: u32| {
        raw_logits
            .get(t as usize)
            .map_or(f32::NEG_INFINITY, |&l| logprob(l))
    };
    let mut top = Vec::new();
    top_k(raw_logits, top_n.min(raw_logits.len()), &mut top);
    top.sort_unstable_by(rank_cmp);
    TokenLogprobs {
        token: chosen,
        logprob: at(chosen),
        top: top.iter().map(|c| (c.id, logprob(c.logit))).collect(),
    }
}

/// [`logprobs`] from parts a caller found without the whole row: the
/// chosen token's raw logit, the log-sum-exp of the row (finite) and the
/// likeliest tokens' raw logits, best first.
pub fn logprobs_from_parts(
    chosen: u32,
    chosen_logit: f32,
    log_sum_exp: f32,
    top: impl IntoIterator<Item = (u32, f32)>,
) -> TokenLogprobs {
    let at = |l: f32| ((l as f64) - (log_sum_exp as f64)) as f32;
    TokenLogprobs {
        token: chosen,
        logprob: at(chosen_logit),
        top: top
            .into_iter()
            .filter(|(_, l)| !l.is_nan())
            .map(|(t, l)| (t, at(l)))
            .collect(),
    }
}

/// A function mapping a raw logit to its log-probability.
fn log_softmax_at(logits: &[f32]) -> impl Fn(f32) -> f32 {
    let max = max_all(logits);
    // ln of the normaliser relative to `max`; for +inf, the count of +inf.
    let ln_z = if max == f32::INFINITY {
        (logits.iter().filter(|&&l| l == f32::INFINITY).count() as f64).ln()
    } else if max == f32::NEG_INFINITY {
        0.0
    } else {
        total_weight(logits, max, 1.0).ln()
    };
    move |l: f32| {
        if l.is_nan() {
            f32::NAN
        } else if max == f32::INFINITY {
            if l == f32::INFINITY {
                -ln_z as f32
            } else {
                f32::NEG_INFINITY
            }
        } else if max == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            ((l as f64 - max as f64) - ln_z) as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax_f64(l: &[f32]) -> Vec<f64> {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = l.iter().map(|&x| (x as f64 - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    fn wavy(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 50.0) - 10.0)
            .collect()
    }

    #[test]
    fn probabilities_sum_to_one_over_the_vocabulary() {
        let l = wavy(129_280);
        let lp = log_softmax_at(&l);
        let sum: f64 = l.iter().map(|&x| (lp(x) as f64).exp()).sum();
        assert!((sum - 1.0).abs() < 1e-5, "sum {sum}");
    }

    #[test]
    fn matches_a_reference_log_softmax() {
        let l = [2.0f32, -1.0, 0.5, 0.5, -30.0, 7.25];
        let want = softmax_f64(&l);
        let got = logprobs(&l, 2, 3);
        assert_eq!(got.token, 2);
        assert!((got.logprob as f64 - want[2].ln()).abs() < 1e-6);
        let ids: Vec<u32> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![5, 0, 2], "best first, ties to the lower id");
        for &(t, lp) in &got.top {
            assert!((lp as f64 - want[t as usize].ln()).abs() < 1e-6);
        }
    }

    #[test]
    fn top_list_is_sorted_and_capped() {
        let l = wavy(5000);
        let got = logprobs(&l, 0, MAX_TOP_LOGPROBS);
        assert_eq!(got.top.len(), 20);
        for w in got.top.windows(2) {
            assert!(
                w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0),
                "{w:?}"
            );
        }
        let mut all: Vec<(u32, f32)> = (0..l.len() as u32).map(|i| (i, l[i as usize])).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<u32> = all[..20].iter().map(|t| t.0).collect();
        let ids: Vec<u32> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, want);
        assert_eq!(logprobs(&l[..3], 0, 20).top.len(), 3);
        assert!(logprobs(&l, 0, 0).top.is_empty());
    }

    #[test]
    fn non_finite_logits() {
        let n = f32::NAN;
        let got = logprobs(&[n, 1.0, f32::NEG_INFINITY, 1.0], 0, 4);
        assert!(got.logprob.is_nan());
        let half = -(2f64.ln()) as f32;
        assert_eq!(got.top[0], (1, half));
        assert_eq!(got.top[1], (3, half));
        assert_eq!(got.top[2], (2, f32::NEG_INFINITY));
        assert_eq!(got.top.len(), 3, "NaN is never listed");

        let inf = f32::INFINITY;
        let got = logprobs(&[inf, 1.0, inf, inf], 1, 2);
        assert_eq!(got.logprob, f32::NEG_INFINITY);
        let third = -(3f64.ln()) as f32;
        assert_eq!(got.top, vec![(0, third), (2, third)]);

        assert_eq!(logprobs(&[1.0], 5, 0).logprob, f32::NEG_INFINITY);
    }
}
