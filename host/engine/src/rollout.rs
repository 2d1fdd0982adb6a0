//! GRPO-style rollouts for RL trainers: for each prompt, a group of
//! completions with their own seeds, their token ids and log-probabilities,
//! each reward plugin's score, the weighted total, and each completion's
//! advantage within its group.
//!
//! One flow for `deepwasm rollout` and `POST /v1/rollouts`: a [`Rollout`]
//! renders every prompt once, submits all its completions to a
//! [`Scheduler`] (continuous batching: groups overlap, and a group is
//! scored as soon as its last completion ends), and turns each scored group
//! into a [`GroupResult`]; at the end a [`Summary`]. Callers only choose how
//! to wait and score (a thread, or an async task that holds a tenant's
//! place) and how to frame the lines. The shape of both lines is documented
//! in `docs/rollouts.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deepwasm_plugins::Sample;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::engine::Engine;
use crate::request::{Completion, FinishReason, GenerateError, GenerateRequest, Prompt};
use crate::rewards::{Scored, WeightedReward, completion_seeds, group_advantages, sample_of};
use crate::sampler::BuiltinSampler;
use crate::sampling::SamplingParams;
use crate::scheduler::{Event, Scheduler};

/// Completions per prompt when the caller names none: GRPO's usual group
/// (DeepSeekMath used 64; 8 keeps a CPU rollout interactive).
pub const DEFAULT_GROUP_SIZE: usize = 8;
/// New tokens per completion when the caller names none.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// A completion passes when its total reaches this: 1.0 is a full score
/// from an accuracy reward that answers 0 or 1.
pub const DEFAULT_PASS_THRESHOLD: f64 = 1.0;
/// Samples per call when a rollout scores on its own thread: large enough
/// that a reward's per-call cost vanishes, small enough to split a group.
const SCORE_BATCH: usize = 256;

/// One prompt of a rollout.
#[derive(Clone, Debug)]
pub struct RolloutPrompt {
    pub prompt: Prompt,
    /// What the rewards get as `extra` (a ground-truth `answer`, an `id`);
    /// echoed in the prompt's line.
    pub extra: Map<String, Value>,
}

/// How a rollout samples and what counts as a pass.
#[derive(Clone, Debug)]
pub struct RolloutOptions {
    /// Completions per prompt.
    pub group_size: usize,
    /// New tokens per completion, at most.
    pub max_tokens: usize,
    /// Sampling for every completion; its `seed` is replaced by each
    /// completion's own.
    pub params: SamplingParams,
    /// Base seed: completion `j` of prompt `i` is seeded from it, `i` and
    /// `j` ([`completion_seeds`]), so a rollout repeats exactly.
    pub seed: u64,
    /// A completion passes when its total reaches this ([`Summary::pass_rate`]).
    pub pass_threshold: f64,
    /// The LoRA adapter to sample with (the base model when `None`).
    pub adapter: Option<Arc<deepwasm_model::lora::ServedAdapter>>,
}

impl Default for RolloutOptions {
    /// [`DEFAULT_GROUP_SIZE`], [`DEFAULT_MAX_TOKENS`], temperature and
    /// top-p 1 (GRPO samples the policy as it is), seed 0,
    /// [`DEFAULT_PASS_THRESHOLD`].
    fn default() -> Self {
        RolloutOptions {
            group_size: DEFAULT_GROUP_SIZE,
            max_tokens: DEFAULT_MAX_TOKENS,
            params: SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                ..SamplingParams::default()
            },
            seed: 0,
            pass_threshold: DEFAULT_PASS_THRESHOLD,
            adapter: None,
        }
    }
}

/// Why a rollout could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A prompt could not be rendered, or leaves no room to generate.
    #[error("prompt {index}: {source}")]
    Prompt {
        index: usize,
        #[source]
        source: GenerateError,
    },
    /// The options, or a completion's generation, failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// The scheduler lost completions without ending them (its thread
    /// failed).
    #[error("generation stopped before the rollout was done")]
    Stopped,
}

/// One prompt's line: its group of completions, scored.
#[derive(Clone, Debug, Serialize)]
pub struct GroupResult {
    /// The prompt's place in the input, from 0.
    pub index: usize,
    /// The prompt as the model saw it (a chat through its template) and as
    /// the rewards got it.
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    /// The prompt's `extra`, as given (`{}` when none).
    pub extra: Map<String, Value>,
    /// The mean of the group's totals; `null` when none has one.
    pub mean_reward: Option<f64>,
    pub completions: Vec<CompletionResult>,
}

/// One completion of a group.
#[derive(Clone, Debug, Serialize)]
pub struct CompletionResult {
    pub seed: u64,
    pub text: String,
    pub tokens: Vec<u32>,
    /// Each token's log-probability.
    pub logprobs: Vec<Option<f32>>,
    pub finish_reason: FinishReason,
    /// `rewards` by name, the weighted `total` and, when a reward failed on
    /// this completion, `errors` by name ([`Scored::to_json`]).
    #[serde(flatten)]
    pub scores: Map<String, Value>,
    /// `(total − group mean) / (group std + ε)`; `null` without a total.
    pub advantage: Option<f64>,
}

/// The last line: totals over the whole rollout.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub prompts: usize,
    pub completions: usize,
    pub completion_tokens: usize,
    /// The mean total over completions with one.
    pub mean_reward: Option<f64>,
    /// The share of completions whose total reached `pass_threshold`.
    pub pass_rate: Option<f64>,
    pub pass_threshold: f64,
    /// Reward scores that failed (a trap, a limit), over all completions.
    pub reward_failures: usize,
    /// Wall time of the whole rollout.
    pub seconds: f64,
    /// From the start until the last completion ended.
    pub generation_seconds: f64,
    /// Time spent scoring, summed over groups (it overlaps generation:
    /// a group is scored while others decode).
    pub reward_seconds: f64,
    pub completions_per_second: f64,
    pub tokens_per_second: f64,
}

impl Summary {
    /// As its line: `{"summary": {...}}`.
    pub fn to_line(&self) -> Value {
        serde_json::json!({ "summary": self })
    }
}

/// A prompt's group while its completions are generated.
struct Group {
    text: String,
    ids: Vec<u32>,
    extra: Map<String, Value>,
    seeds: Vec<u64>,
    done: Vec<Option<Completion>>,
    left: usize,
}

/// A group whose completions have all ended, to be scored.
#[derive(Debug)]
pub struct FinishedGroup {
    pub index: usize,
    /// The reward samples of its completions, in order.
    pub samples: Vec<Sample>,
    completions: Vec<Completion>,
}

/// A rollout under way: its groups and running totals.
pub struct Rollout {
    options: RolloutOptions,
    groups: Vec<Group>,
    groups_left: usize,
    started: Instant,
    generated: Option<Duration>,
    scoring: Duration,
    completions: usize,
    tokens: usize,
    reward_sum: f64,
    scored: usize,
    passed: usize,
    failures: usize,
}

impl Rollout {
    /// Check the options and render every prompt (each once; its group
    /// shares the tokens). A prompt that fills the model's context is
    /// refused: no completion would have room.
    pub fn new(
        engine: &Engine,
        prompts: Vec<RolloutPrompt>,
        options: RolloutOptions,
    ) -> Result<Rollout, RolloutError> {
        if options.group_size == 0 {
            return Err(GenerateError::Invalid("the group size must be at least 1".into()).into());
        }
        if options.max_tokens == 0 {
            return Err(GenerateError::Invalid("max_tokens must be at least 1".into()).into());
        }
        options
            .params
            .validate()
            .map_err(|e| GenerateError::Invalid(e.to_string()))?;
        let context = engine.model.info().max_context;
        let mut groups = Vec::with_capacity(prompts.len());
        for (index, p) in prompts.into_iter().enumerate() {
            let at = |source| RolloutError::Prompt { index, source };
            let (text, ids) = engine.render_prompt(&p.prompt).map_err(at)?;
            if ids.len() >= context {
                return Err(at(GenerateError::PromptTooLong {
                    prompt: ids.len(),
                    context,
                }));
            }
            let g = options.group_size;
            groups.push(Group {
                text: text.unwrap_or_default(),
                ids,
                extra: p.extra,
                seeds: completion_seeds(options.seed.wrapping_add(index as u64), g),
                done: vec![None; g],
                left: g,
            });
        }
        Ok(Rollout {
            groups_left: groups.len(),
            groups,
            options,
            started: Instant::now(),
            generated: None,
            scoring: Duration::ZERO,
            completions: 0,
            tokens: 0,
            reward_sum: 0.0,
            scored: 0,
            passed: 0,
            failures: 0,
        })
    }

    /// Prompts in the rollout.
    pub fn prompts(&self) -> usize {
        self.groups.len()
    }

    /// Prompt tokens, each prompt counted once (its group shares them).
    pub fn prompt_tokens(&self) -> usize {
        self.groups.iter().map(|g| g.ids.len()).sum()
    }

    /// Every group has been scored.
    pub fn is_done(&self) -> bool {
        self.groups_left == 0
    }

    /// Queue every completion on `scheduler`, prompt by prompt; their
    /// events arrive on `events` for [`Rollout::on_event`]. Setting
    /// `cancelled` drops those still running.
    pub fn submit(
        &self,
        scheduler: &Scheduler,
        events: &UnboundedSender<Event>,
        cancelled: &Arc<AtomicBool>,
    ) -> Result<(), GenerateError> {
        let g = self.options.group_size;
        for (i, group) in self.groups.iter().enumerate() {
            for (j, &seed) in group.seeds.iter().enumerate() {
                let req = GenerateRequest {
                    max_tokens: self.options.max_tokens,
                    params: SamplingParams {
                        seed: Some(seed),
                        ..self.options.params.clone()
                    },
                    logprobs: Some(0),
                    adapter: self.options.adapter.clone(),
                    ..GenerateRequest::new(Prompt::Tokens(group.ids.clone()))
                };
                scheduler.submit(
                    i * g + j,
                    req,
                    Box::new(BuiltinSampler),
                    events.clone(),
                    cancelled.clone(),
                )?;
            }
        }
        Ok(())
    }

    /// Take one of the scheduler's events. When it ends the last
    /// completion of a group, that group, to be scored and handed to
    /// [`Rollout::scored`]. A failed completion fails the rollout.
    pub fn on_event(&mut self, event: Event) -> Result<Option<FinishedGroup>, RolloutError> {
        let (index, completion) = match event {
            Event::Delta(..) => return Ok(None),
            Event::Done(_, Err(e)) => return Err(e.into()),
            Event::Done(index, Ok(c)) => (index, c),
        };
        let g = self.options.group_size;
        let (pi, j) = (index / g, index % g);
        let group = &mut self.groups[pi];
        group.done[j] = Some(completion);
        group.left -= 1;
        if group.left > 0 {
            return Ok(None);
        }
        if self.groups.iter().all(|g| g.left == 0) {
            self.generated = Some(self.started.elapsed());
        }
        let group = &mut self.groups[pi];
        let completions: Vec<Completion> = group.done.iter_mut().filter_map(Option::take).collect();
        let extra = Value::Object(group.extra.clone()).to_string();
        let samples = completions
            .iter()
            .map(|c| sample_of(&group.text, c, &extra))
            .collect();
        Ok(Some(FinishedGroup {
            index: pi,
            samples,
            completions,
        }))
    }

    /// The line of a finished group given its scores (one per sample, in
    /// order) and the time they took; counted into the summary.
    pub fn scored(
        &mut self,
        finished: FinishedGroup,
        scores: Vec<Scored>,
        took: Duration,
    ) -> GroupResult {
        self.scoring += took;
        self.groups_left -= 1;
        let totals: Vec<Option<f64>> = scores.iter().map(|s| s.total).collect();
        let advantages = group_advantages(&totals);
        let group = &self.groups[finished.index];
        let mut completions = Vec::with_capacity(finished.completions.len());
        for (j, (c, s)) in finished.completions.into_iter().zip(&scores).enumerate() {
            let (fields, failed) = s.to_json();
            self.failures += failed;
            self.completions += 1;
            self.tokens += c.tokens.len();
            if let Some(t) = s.total {
                self.scored += 1;
                self.reward_sum += t;
                if t >= self.options.pass_threshold {
                    self.passed += 1;
                }
            }
            let logprobs = c
                .logprobs
                .iter()
                .flatten()
                .map(|lp| lp.as_ref().map(|l| l.logprob))
                .collect();
            completions.push(CompletionResult {
                seed: group.seeds[j],
                text: c.text,
                tokens: c.tokens,
                logprobs,
                finish_reason: c.finish_reason,
                scores: fields,
                advantage: advantages[j],
            });
        }
        let present: Vec<f64> = totals.iter().flatten().copied().collect();
        GroupResult {
            index: finished.index,
            prompt: group.text.clone(),
            prompt_tokens: group.ids.clone(),
            extra: group.extra.clone(),
            mean_reward: (!present.is_empty())
                .then(|| present.iter().sum::<f64>() / present.len() as f64),
            completions,
        }
    }

    /// Totals so far (all of them once [`Rollout::is_done`]).
    pub fn summary(&self) -> Summary {
        let seconds = self.started.elapsed().as_secs_f64();
        let per_second = |n: usize| n as f64 / seconds.max(1e-9);
        Summary {
            prompts: self.groups.len(),
            completions: self.completions,
            completion_tokens: self.tokens,
            mean_reward: (self.scored > 0).then(|| self.reward_sum / self.scored as f64),
            pass_rate: (self.completions > 0).then(|| self.passed as f64 / self.completions as f64),
            pass_threshold: self.options.pass_threshold,
            reward_failures: self.failures,
            seconds,
            generation_seconds: self.generated.map_or(seconds, |d| d.as_secs_f64()),
            reward_seconds: self.scoring.as_secs_f64(),
            completions_per_second: per_second(self.completions),
            tokens_per_second: per_second(self.tokens),
        }
    }
}

/// Run a rollout on this thread: submit it to `scheduler`, score each group
/// with `rewards` (over `threads`) as it ends, and hand the groups to
/// `on_group` in prompt order (a group that ends early waits for those
/// before it, so the output repeats line for line). An error from
/// `on_group` stops the rollout and drops what is still running.
pub fn run<E>(
    scheduler: &Scheduler,
    mut rollout: Rollout,
    rewards: &[WeightedReward],
    threads: usize,
    mut on_group: impl FnMut(&GroupResult) -> Result<(), E>,
) -> Result<Summary, E>
where
    E: From<RolloutError>,
{
    let cancelled = Arc::new(AtomicBool::new(false));
    // Whatever way this returns, nothing of the rollout runs on.
    struct Cancel<'a>(&'a AtomicBool);
    impl Drop for Cancel<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _cancel = Cancel(&cancelled);
    let (tx, mut rx) = unbounded_channel();
    rollout
        .submit(scheduler, &tx, &cancelled)
        .map_err(RolloutError::from)?;
    drop(tx);
    let mut ready: Vec<Option<GroupResult>> = vec![None; rollout.prompts()];
    let mut next = 0;
    while !rollout.is_done() {
        let event = rx.blocking_recv().ok_or(RolloutError::Stopped)?;
        let Some(finished) = rollout.on_event(event)? else {
            continue;
        };
        let t = Instant::now();
        let scores =
            crate::rewards::score_samples(rewards, &finished.samples, threads, SCORE_BATCH);
        let line = rollout.scored(finished, scores, t.elapsed());
        let index = line.index;
        ready[index] = Some(line);
        while let Some(line) = ready.get_mut(next).and_then(Option::take) {
            on_group(&line)?;
            next += 1;
        }
    }
    Ok(rollout.summary())
}
