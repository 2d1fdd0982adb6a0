//! Reward plugins applied to completions: several completions per prompt
//! with their own seeds, weighted reward totals, best-of-n, and GRPO's
//! group-normalised advantages.

use deepwasm_plugins::{PluginError, RewardPlugin, Sample};

use crate::engine::Engine;
use crate::generate::BatchItem;
use crate::request::{Completion, Delta, GenerateError, GenerateRequest};
use crate::sampler::BuiltinSampler;

/// A reward plugin as a request uses it: under a name, with a weight in the
/// total and a JSON config.
#[derive(Clone, Debug)]
pub struct WeightedReward {
    pub name: String,
    pub reward: RewardPlugin,
    pub weight: f64,
    pub config: String,
}

/// One completion's rewards.
#[derive(Clone, Debug)]
pub struct Scored {
    /// Each reward's score (`None`: it does not apply) or why it has none.
    pub rewards: Vec<(String, Result<Option<f64>, PluginError>)>,
    /// The weighted sum of the scores present; `None` when no reward gave one.
    pub total: Option<f64>,
}

impl Scored {
    /// As JSON: `rewards` by name (`null` when a reward does not apply or
    /// failed), the weighted `total`, and `errors` by name (kind and
    /// message) when a reward failed. Also returns the number of failures.
    pub fn to_json(&self) -> (serde_json::Map<String, serde_json::Value>, usize) {
        use serde_json::{Map, Value, json};
        let mut by_name = Map::new();
        let mut errors = Map::new();
        for (name, score) in &self.rewards {
            match score {
                Ok(s) => {
                    by_name.insert(name.clone(), json!(s));
                }
                Err(e) => {
                    by_name.insert(name.clone(), Value::Null);
                    errors.insert(
                        name.clone(),
                        json!({"kind": e.kind(), "message": e.to_string()}),
                    );
                }
            }
        }
        let failed = errors.len();
        let mut row = Map::new();
        row.insert("rewards".into(), Value::Object(by_name));
        row.insert("total".into(), json!(self.total));
        if !errors.is_empty() {
            row.insert("errors".into(), Value::Object(errors));
        }
        (row, failed)
    }
}

/// Score `samples` with every reward (across `threads`), and total each
/// sample's scores, saturating at `±f64::MAX`. A reward that fails on a sample leaves that
/// sample without its score, recorded with the reason; other samples and
/// other rewards are not affected.
pub fn score_samples(
    rewards: &[WeightedReward],
    samples: &[Sample],
    threads: usize,
    batch: usize,
) -> Vec<Scored> {
    let per_reward: Vec<Vec<Result<Option<f64>, PluginError>>> = rewards
        .iter()
        .map(|r| r.reward.score_parallel(samples, &r.config, threads, batch))
        .collect();
    (0..samples.len())
        .map(|i| {
            let mut total = None::<f64>;
            let scores = rewards
                .iter()
                .zip(&per_reward)
                .map(|(r, scores)| {
                    let s = scores[i].clone();
                    if let Ok(Some(v)) = &s {
                        let t = total.get_or_insert(0.0);
                        *t = saturating_sum(*t, r.weight * v);
                    }
                    (r.name.clone(), s)
                })
                .collect();
            Scored {
                rewards: scores,
                total,
            }
        })
        .collect()
}

/// `a + b` held within the finite numbers: a weighted sum past `f64::MAX`
/// (two scores of `f64::MAX`, say) is `f64::MAX`, not infinity, so a total
/// always ranks and serialises as a number. Scores are finite (rewards
/// that answer otherwise fail that sample) and weights are checked finite,
/// so NaN cannot arise.
fn saturating_sum(a: f64, b: f64) -> f64 {
    (a + b.clamp(-f64::MAX, f64::MAX)).clamp(-f64::MAX, f64::MAX)
}

/// The index of the best total; ties go to the lowest index, and samples
/// without a total rank below every sample with one.
pub fn best_index(scored: &[Scored]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in scored.iter().enumerate() {
        if let Some(t) = s.total
            && best.is_none_or(|(_, b)| t > b)
        {
            best = Some((i, t));
        }
    }
    best.map(|(i, _)| i)
        .or(if scored.is_empty() { None } else { Some(0) })
}

/// The value GRPO adds to the group's standard deviation before dividing.
pub const ADVANTAGE_EPS: f64 = 1e-4;

/// GRPO's advantages for one group: `(r − mean) / (std + ε)`, with the
/// sample standard deviation (Bessel's correction, as TRL computes it). Only
/// samples with a total take part; the others get `None`.
pub fn group_advantages(totals: &[Option<f64>]) -> Vec<Option<f64>> {
    let present: Vec<f64> = totals.iter().flatten().copied().collect();
    if present.is_empty() {
        return vec![None; totals.len()];
    }
    // Work on totals scaled into [-1, 1] when they are large, so that totals
    // near `f64::MAX` give finite advantages; the result is the same.
    let scale = present.iter().fold(1.0_f64, |m, r| m.max(r.abs()));
    let n = present.len() as f64;
    let mean = present.iter().map(|r| r / scale).sum::<f64>() / n;
    let std = if present.len() > 1 {
        (present
            .iter()
            .map(|r| (r / scale - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0))
            .sqrt()
    } else {
        0.0
    };
    totals
        .iter()
        .map(|t| t.map(|r| (r / scale - mean) / (std + ADVANTAGE_EPS / scale)))
        .collect()
}

/// Seeds for `n` completions of one prompt: distinct, and the same for the
/// same base seed and index (SplitMix64 over `base + index`).
pub fn completion_seeds(base: u64, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| {
            let mut z = base.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
        .collect()
}

impl Engine {
    /// `n` completions of `req`, each with its own seed from
    /// `completion_seeds(base_seed, n)`, decoded together with the built-in
    /// sampler.
    pub fn generate_n(
        &self,
        req: &GenerateRequest,
        n: usize,
        base_seed: u64,
    ) -> Vec<Result<Completion, GenerateError>> {
        let reqs: Vec<GenerateRequest> = completion_seeds(base_seed, n)
            .into_iter()
            .map(|seed| {
                let mut r = req.clone();
                r.params.seed = Some(seed);
                r
            })
            .collect();
        self.generate_requests(&reqs)
    }

    /// Every request of `reqs`, decoded together with the built-in sampler,
    /// without streaming.
    pub fn generate_requests(
        &self,
        reqs: &[GenerateRequest],
    ) -> Vec<Result<Completion, GenerateError>> {
        let mut samplers: Vec<BuiltinSampler> = reqs.iter().map(|_| BuiltinSampler).collect();
        let mut sinks: Vec<fn(&Delta)> = reqs.iter().map(|_| ignore as fn(&_)).collect();
        let items = reqs
            .iter()
            .zip(samplers.iter_mut())
            .zip(sinks.iter_mut())
            .map(|((req, sampler), sink)| BatchItem {
                req,
                sampler,
                on_delta: sink,
            })
            .collect();
        self.generate_batch(items)
    }
}

fn ignore(_: &Delta) {}

/// The reward sample of a completion: the prompt as the model saw it, the
/// completion's text and tokens, and the dataset row's other fields.
pub fn sample_of(prompt_text: &str, completion: &Completion, extra: &str) -> Sample {
    Sample {
        prompt: prompt_text.to_owned(),
        completion: completion.text.clone(),
        completion_tokens: completion.tokens.clone(),
        extra: extra.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_saturate_instead_of_overflowing() {
        assert_eq!(saturating_sum(f64::MAX, f64::MAX), f64::MAX);
        assert_eq!(saturating_sum(-f64::MAX, -f64::MAX * 2.0), -f64::MAX);
        assert_eq!(saturating_sum(f64::MAX, -f64::MAX), 0.0);
        assert_eq!(saturating_sum(1.5, 2.0), 3.5);
    }

    #[test]
    fn advantages_of_huge_totals_are_finite_and_ordered() {
        let a = group_advantages(&[Some(f64::MAX), Some(-f64::MAX), Some(0.0)]);
        let a: Vec<f64> = a.into_iter().map(Option::unwrap).collect();
        assert!(a.iter().all(|v| v.is_finite()), "{a:?}");
        assert!(a[0] > a[2] && a[2] > a[1], "{a:?}");
        assert!(
            (a[0] - 1.0).abs() < 1e-9 && (a[1] + 1.0).abs() < 1e-9,
            "{a:?}"
        );
    }

    #[test]
    fn advantages_are_centred_and_scaled_like_grpo() {
        let a = group_advantages(&[Some(1.0), Some(0.0), Some(0.0), Some(1.0)]);
        let a: Vec<f64> = a.into_iter().flatten().collect();
        assert!(a.iter().sum::<f64>().abs() < 1e-12);
        // mean 0.5, sample std sqrt(1/3)
        let std = (1.0f64 / 3.0).sqrt();
        assert!((a[0] - 0.5 / (std + ADVANTAGE_EPS)).abs() < 1e-12);
        assert_eq!(group_advantages(&[Some(2.0), None]), vec![Some(0.0), None]);
        assert_eq!(group_advantages(&[None, None]), vec![None, None]);
    }

    #[test]
    fn seeds_differ_and_repeat() {
        let s = completion_seeds(7, 4);
        assert_eq!(s, completion_seeds(7, 4));
        assert_eq!(s.iter().collect::<std::collections::HashSet<_>>().len(), 4);
        assert_ne!(s, completion_seeds(8, 4));
    }

    #[test]
    fn the_best_is_the_highest_total_and_the_first_on_ties() {
        let s = |t| Scored {
            rewards: vec![],
            total: t,
        };
        assert_eq!(
            best_index(&[s(None), s(Some(0.5)), s(Some(0.5)), s(Some(0.1))]),
            Some(1)
        );
        assert_eq!(best_index(&[s(None), s(None)]), Some(0));
        assert_eq!(best_index(&[]), None);
    }
}
