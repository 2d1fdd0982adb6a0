//! Generating sequences: prefill, then decode step by step with the KV
//! cache, a sampler deciding each token, stop rules ending it, and text
//! streamed as it is produced; several sequences share each forward pass.
//!
//! The request and completion types live in [`crate::request`] and are
//! re-exported here.

use std::sync::Arc;

use crate::batcher::{Batcher, Job};
use crate::sampler::Sampler;

pub use crate::engine::Engine;
pub use crate::request::{
    Completion, Delta, DeltaSink, FinishReason, GenerateError, GenerateRequest, Prompt, Timings,
    Usage,
};

impl Engine {
    /// Generate one sequence, calling `on_delta` as text is produced.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        sampler: &mut dyn Sampler,
        on_delta: &mut (dyn FnMut(&Delta) + Send),
    ) -> Result<Completion, GenerateError> {
        let mut results = self.generate_batch(vec![BatchItem {
            req,
            sampler,
            on_delta,
        }]);
        results.pop().expect("one result per item")
    }

    /// Generate several sequences together: each step runs one forward pass
    /// over every unfinished sequence (the weights are read once for all of
    /// them), each with its own sampler, stop rules and stream. A sequence
    /// that fails ends alone; the others go on. Results are in order.
    ///
    /// Runs on a thread of rayon's pool: the model's kernels split their
    /// work with rayon, and a split started from a pool thread runs inline
    /// instead of being handed to the pool and waited for (a futex round
    /// trip per matmul, measured at ~10% of a decode step).
    pub fn generate_batch(
        &self,
        items: Vec<BatchItem<'_>>,
    ) -> Vec<Result<Completion, GenerateError>> {
        if rayon::current_thread_index().is_some() {
            return self.generate_batch_here(items);
        }
        rayon::scope(|_| self.generate_batch_here(items))
    }

    fn generate_batch_here(
        &self,
        items: Vec<BatchItem<'_>>,
    ) -> Vec<Result<Completion, GenerateError>> {
        let n = items.len();
        let results: Vec<std::sync::Mutex<Option<Result<Completion, GenerateError>>>> =
            (0..n).map(|_| std::sync::Mutex::new(None)).collect();
        {
            let mut batcher = Batcher::new(self, n);
            for (i, item) in items.into_iter().enumerate() {
                let slot = &results[i];
                batcher.submit(Job {
                    req: item.req.clone(),
                    sampler: Box::new(item.sampler),
                    sink: Box::new(item.on_delta),
                    done: Box::new(move |r| {
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r)
                    }),
                    cancelled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                });
            }
            batcher.run_to_end();
        }
        results
            .into_iter()
            .map(|r| {
                r.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| Err(GenerateError::Invalid("the sequence never ran".into())))
            })
            .collect()
    }
}

/// One sequence of a batch: its request, its sampler and where its text goes.
pub struct BatchItem<'r> {
    pub req: &'r GenerateRequest,
    pub sampler: &'r mut dyn Sampler,
    pub on_delta: &'r mut (dyn FnMut(&Delta) + Send),
}

/// Runs generation requests one at a time from the caller's view: the
/// engine itself (the CLI), or a server's shared batch, where the request
/// joins whatever else is decoding. Agents and other multi-turn callers
/// generate through this, so they work the same in both places.
pub trait Generator: Send + Sync {
    /// The engine requests run on (its tokenizer, template and model info).
    fn engine(&self) -> &Engine;

    /// Whether samplers other than the built-in one can steer each token
    /// (false where the logits are out of reach: an upstream engine).
    fn steers(&self) -> bool {
        true
    }

    /// Generate `req` with `sampler`, streaming to `on_delta`. Setting
    /// `cancelled` ends the sequence at the next step.
    fn run(
        &self,
        req: GenerateRequest,
        sampler: Box<dyn Sampler>,
        on_delta: Box<dyn FnMut(&Delta) + Send>,
        cancelled: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Completion, GenerateError>;
}

impl Generator for Engine {
    fn engine(&self) -> &Engine {
        self
    }

    fn run(
        &self,
        req: GenerateRequest,
        sampler: Box<dyn Sampler>,
        on_delta: Box<dyn FnMut(&Delta) + Send>,
        cancelled: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Completion, GenerateError> {
        let result = std::sync::Mutex::new(None);
        let run = || {
            // Turn after turn, each starts from what the last one cached.
            let kept = self
                .prefixes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let mut batcher = Batcher::new(self, 1).with_kv_budget(usize::MAX, self.kv.clone());
            if let Some(kept) = kept {
                batcher = batcher.with_prefix_cache(kept);
            }
            batcher.submit(Job {
                req,
                sampler,
                sink: on_delta,
                done: Box::new(|r| *result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r)),
                cancelled,
            });
            batcher.run_to_end();
            *self.prefixes.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(batcher.into_prefix_cache());
        };
        if rayon::current_thread_index().is_some() {
            run();
        } else {
            rayon::scope(|_| run());
        }
        result
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(Err(GenerateError::Cancelled))
    }
}
