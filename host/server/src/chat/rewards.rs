//! Reward plugins and `best_of`: the rewards a request names, scoring
//! samples off the async executor (also for rollouts and `/v1/score`), and
//! which candidates a request answers with.

use deepwasm_engine::Completion;
use deepwasm_engine::rewards::{Scored, WeightedReward, score_samples};
use deepwasm_plugins::{Sample, World};

use super::plan::Plan;
use super::steer::config_text;
use crate::AppState;
use crate::api::RewardRef;
use crate::error::ApiError;
use crate::tenants::{Admission, Tenant};

/// Most samples a thread scores in one batch.
const SCORE_BATCH: usize = 64;

/// The reward plugins a request names.
pub(crate) fn weighted_rewards(
    st: &AppState,
    tenant: &Tenant,
    refs: &[RewardRef],
) -> Result<Vec<WeightedReward>, ApiError> {
    refs.iter()
        .enumerate()
        .map(|(i, r)| {
            let param = format!("rewards[{i}].plugin");
            let stored = st
                .stored(tenant, &r.plugin)?
                .ok_or_else(|| ApiError::plugin_not_found(&param, &r.plugin))?;
            if stored.record.world != World::Reward {
                return Err(ApiError::invalid_param(
                    &param,
                    format!(
                        "`{}` is a {} plugin, not a reward",
                        r.plugin, stored.record.world
                    ),
                ));
            }
            let weight = r.weight.unwrap_or(1.0);
            if !weight.is_finite() {
                return Err(ApiError::invalid_param(
                    &format!("rewards[{i}].weight"),
                    "must be a finite number",
                ));
            }
            Ok(WeightedReward {
                name: stored.record.name.clone(),
                reward: st.reward(tenant, &stored)?,
                weight,
                config: config_text(r.config.as_ref()),
            })
        })
        .collect()
}

/// Scores of samples by reward plugins (also used by rollouts), on a
/// blocking thread that holds the request's `admission` until it is done:
/// a client that goes away does not free its place while its scoring still
/// runs, so abandoned requests cannot pile up threads.
pub(crate) async fn score_async(
    rewards: Vec<WeightedReward>,
    samples: Vec<Sample>,
    admission: Admission,
) -> Result<Vec<Scored>, ApiError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::task::spawn_blocking(move || {
        let _admission = admission;
        score_samples(&rewards, &samples, threads, SCORE_BATCH)
    })
    .await
    .map_err(|e| ApiError::internal(format!("scoring stopped: {e}")))
}

/// Which candidates to answer, best first, with their reward rows: per
/// prompt, the `n` with the highest reward total, or with the highest mean
/// log-probability under `best_of` without rewards, or the first `n`.
pub(super) async fn choose(
    plan: &Plan,
    completions: &[Completion],
    admission: &Admission,
) -> Result<Vec<(usize, Option<Scored>)>, ApiError> {
    let scored: Option<Vec<Scored>> = if plan.rewards.is_empty() {
        None
    } else {
        let samples: Vec<_> = completions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = plan.prompt_of(i);
                deepwasm_engine::rewards::sample_of(p.text.as_deref().unwrap_or(""), c, &plan.extra)
            })
            .collect();
        Some(score_async(plan.rewards.clone(), samples, admission.clone()).await?)
    };
    let mut chosen = Vec::new();
    for pi in 0..plan.prompts.len() {
        let range = pi * plan.per_prompt..(pi + 1) * plan.per_prompt;
        let mut order: Vec<usize> = range.collect();
        if let Some(scored) = &scored {
            if plan.per_prompt > plan.n {
                // Highest total first; ties keep candidate order; no total last.
                order.sort_by(|&a, &b| {
                    let key = |i: usize| scored[i].total.unwrap_or(f64::NEG_INFINITY);
                    key(b).total_cmp(&key(a))
                });
            }
        } else if plan.rank_by_logprob {
            let mean = |c: &Completion| {
                let lps: Vec<f32> = c
                    .logprobs
                    .iter()
                    .flatten()
                    .flatten()
                    .map(|l| l.logprob)
                    .collect();
                if lps.is_empty() {
                    f64::NEG_INFINITY
                } else {
                    lps.iter().map(|&l| f64::from(l)).sum::<f64>() / lps.len() as f64
                }
            };
            order.sort_by(|&a, &b| mean(&completions[b]).total_cmp(&mean(&completions[a])));
        }
        for i in order.into_iter().take(plan.n) {
            chosen.push((i, scored.as_ref().map(|s| s[i].clone())));
        }
    }
    Ok(chosen)
}
