//! Reward plugins: scoring batches of completions deterministically, with a
//! failure confined to the sample that caused it.

use std::time::Duration;

use crate::bindings::scorer;
use crate::error::PluginError;
use crate::host::Wasi;
use crate::plugin::{LoadError, Plugin, World};
use crate::sandbox::Sandbox;

/// One completion to score: the WIT `sample` record itself, so a batch is
/// handed to the plugin without copying its strings first.
pub use crate::bindings::scorer::Sample;

/// A sample's score: a number, `None` when the reward does not apply, or why
/// there is none.
pub type Score = Result<Option<f64>, PluginError>;

/// A reward plugin ready to score.
#[derive(Clone)]
pub struct RewardPlugin {
    plugin: Plugin,
    sandbox: Sandbox,
    indices: scorer::GuestIndices,
}

impl std::fmt::Debug for RewardPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardPlugin")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl RewardPlugin {
    pub fn new(plugin: Plugin, sandbox: Sandbox) -> Result<Self, LoadError> {
        plugin.expect_world(World::Reward)?;
        let indices = plugin.indices(scorer::GuestIndices::new)?;
        Ok(RewardPlugin {
            plugin,
            sandbox,
            indices,
        })
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Score `samples` with the reward's JSON `config`; one score per sample.
    ///
    /// The batch is scored in one call to a fresh instance, with the
    /// per-sample deadline and fuel multiplied by its size. If that call fails
    /// by trapping or hitting a limit, the batch is split in halves and each
    /// half scored again, down to single samples: a sample that breaks the
    /// plugin gets the error, every other sample still gets its score, and
    /// the result does not depend on how samples were batched. An error
    /// value from the plugin (such as a bad config) applies to the whole
    /// batch and is not retried.
    pub fn score(&self, samples: &[Sample], config: &str) -> Vec<Score> {
        let mut out = Vec::with_capacity(samples.len());
        self.score_into(samples, config, &mut out);
        out
    }

    /// Score across `threads` threads, each with its own instances, in batches
    /// of at most `batch`. The result is the same as `score`'s.
    pub fn score_parallel(
        &self,
        samples: &[Sample],
        config: &str,
        threads: usize,
        batch: usize,
    ) -> Vec<Score> {
        let batch = batch.max(1);
        let threads = threads.max(1);
        let chunks: Vec<&[Sample]> = samples.chunks(batch).collect();
        if threads == 1 || chunks.len() <= 1 {
            return chunks.iter().flat_map(|c| self.score(c, config)).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut results: Vec<Option<Vec<Score>>> = vec![None; chunks.len()];
        let done = std::sync::Mutex::new(&mut results);
        std::thread::scope(|s| {
            for _ in 0..threads.min(chunks.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else { break };
                        let scores = self.score(chunk, config);
                        done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(scores);
                    }
                });
            }
        });
        results.into_iter().flatten().flatten().collect()
    }

    fn score_into(&self, samples: &[Sample], config: &str, out: &mut Vec<Score>) {
        if samples.is_empty() {
            return;
        }
        match self.score_batch(samples, config) {
            Ok(scores) => out.extend(scores.into_iter().map(Ok)),
            Err(e @ (PluginError::Guest { .. } | PluginError::Protocol { .. })) => {
                out.extend(std::iter::repeat_n(Err(e), samples.len()))
            }
            Err(e) if samples.len() == 1 => out.push(Err(e)),
            Err(_) => {
                let (a, b) = samples.split_at(samples.len() / 2);
                self.score_into(a, config, out);
                self.score_into(b, config, out);
            }
        }
    }

    fn score_batch(
        &self,
        samples: &[Sample],
        config: &str,
    ) -> Result<Vec<Option<f64>>, PluginError> {
        let name = self.plugin.name();
        let mut session = self
            .plugin
            .instantiate(&self.sandbox, Wasi::Deterministic)?;
        let guest = self
            .indices
            .load(&mut session.store, &session.instance)
            .map_err(|e| PluginError::protocol(name, format!("{e:#}")))?;
        let n = samples.len() as u64;
        let deadline = self
            .sandbox
            .limits
            .call_deadline
            .saturating_mul(n.try_into().unwrap_or(u32::MAX));
        let result = session.call(deadline.max(Duration::from_millis(1)), n, |store, _| {
            guest.call_score(store, samples, config)
        })?;
        let scores = result.map_err(|e| PluginError::guest(name, e))?;
        if scores.len() != samples.len() {
            return Err(PluginError::protocol(
                name,
                format!(
                    "scored {} samples but was given {}",
                    scores.len(),
                    samples.len()
                ),
            ));
        }
        if let Some(bad) = scores.iter().flatten().find(|s| !s.is_finite()) {
            return Err(PluginError::protocol(
                name,
                format!("gave the score {bad}, which is not a finite number"),
            ));
        }
        Ok(scores)
    }
}
