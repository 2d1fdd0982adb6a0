//! Reward plugins: scoring completions deterministically, each sample on its
//! own, so that a failure stays with the sample that caused it and a score
//! never depends on the batch.

use std::time::Duration;

use sha2::{Digest, Sha256};

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
    /// Each sample is scored alone, in a fresh instance whose clocks are
    /// frozen and whose random numbers are seeded from that sample's own
    /// content: a score depends on the sample, the config and the plugin,
    /// never on the other samples of the batch, the order, the machine or
    /// the time. A sample that makes the plugin trap, hit a limit, or answer
    /// something other than one finite number (or none) gets that error;
    /// every other sample still gets its score.
    pub fn score(&self, samples: &[Sample], config: &str) -> Vec<Score> {
        samples.iter().map(|s| self.score_one(s, config)).collect()
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

    fn score_one(&self, sample: &Sample, config: &str) -> Score {
        let name = self.plugin.name();
        let mut session = self
            .plugin
            .instantiate(&self.sandbox, Wasi::Deterministic(sample_seed(sample)))?;
        let guest = self
            .indices
            .load(&mut session.store, &session.instance)
            .map_err(|e| PluginError::protocol(name, format!("{e:#}")))?;
        let deadline = self.sandbox.limits.call_deadline;
        let result = session.call(deadline.max(Duration::from_millis(1)), 1, |store, _| {
            guest.call_score(store, std::slice::from_ref(sample), config)
        })?;
        let scores = result.map_err(|e| PluginError::guest(name, e))?;
        match scores[..] {
            [Some(score)] if !score.is_finite() => Err(PluginError::protocol(
                name,
                format!("gave the score {score}, which is not a finite number"),
            )),
            [score] => Ok(score),
            _ => Err(PluginError::protocol(
                name,
                format!("gave {} scores for one sample", scores.len()),
            )),
        }
    }
}

/// The seed of a sample's random numbers: SHA-256 over its fields, each
/// prefixed by its length so that no two samples share a seed by
/// concatenation.
fn sample_seed(sample: &Sample) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"deepwasm reward sample seed v1");
    for field in [&sample.prompt, &sample.completion, &sample.extra] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.update((sample.completion_tokens.len() as u64).to_le_bytes());
    for t in &sample.completion_tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}
