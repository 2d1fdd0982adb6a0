//! Continuous batching: sequences join and leave a running batch between
//! forward passes.
//!
//! Every step runs one forward pass over all running sequences: new ones
//! with their whole prompt (prefill), the others with the token(s) of their
//! last step (decode). A sequence that finishes, fails or is cancelled leaves
//! at once and frees its cache; waiting jobs take its place.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::generate::{Completion, DeltaSink, Engine, GenerateError, GenerateRequest, random_seed};
use crate::sampler::Sampler;
use crate::sequence::{Sequence, forward_and_prepare};

/// What becomes of a finished job.
pub type Done<'r> = Box<dyn FnOnce(Result<Completion, GenerateError>) + Send + 'r>;

/// A request waiting to run or running.
pub struct Job<'r> {
    pub req: GenerateRequest,
    pub sampler: Box<dyn Sampler + 'r>,
    /// Text as it is produced.
    pub sink: Box<DeltaSink<'r>>,
    /// Called once, with the completion or the failure.
    pub done: Done<'r>,
    /// Set by the caller when nobody wants the result any more (a client
    /// that disconnected): the sequence leaves at the next step.
    pub cancelled: Arc<AtomicBool>,
}

struct Running<'e, 'r> {
    seq: Sequence<'e, 'r>,
    sink: Box<DeltaSink<'r>>,
    done: Done<'r>,
    cancelled: Arc<AtomicBool>,
}

/// Sequences generated together on one engine.
pub struct Batcher<'e, 'r> {
    engine: &'e Engine,
    max_batch: usize,
    queue: VecDeque<Job<'r>>,
    running: Vec<Running<'e, 'r>>,
}

impl<'e, 'r> Batcher<'e, 'r> {
    /// At most `max_batch` sequences run at once; the rest wait in order.
    pub fn new(engine: &'e Engine, max_batch: usize) -> Self {
        Batcher {
            engine,
            max_batch: max_batch.max(1),
            queue: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn submit(&mut self, job: Job<'r>) {
        self.queue.push_back(job);
    }

    /// Nothing running and nothing waiting.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.running.is_empty()
    }

    /// Sequences running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Jobs waiting for a place.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Admit waiting jobs, drop cancelled ones, and run one forward pass.
    pub fn step(&mut self) {
        self.running
            .retain(|r| !r.cancelled.load(Ordering::Relaxed));
        while self.running.len() < self.max_batch
            && let Some(job) = self.queue.pop_front()
        {
            if job.cancelled.load(Ordering::Relaxed) {
                continue;
            }
            let seed = job.req.params.seed.unwrap_or_else(random_seed);
            let Job {
                req,
                sampler,
                mut sink,
                done,
                cancelled,
            } = job;
            match Sequence::start(self.engine, &req, sampler, seed) {
                Ok(seq) if seq.done => done(Ok(seq.finish(&mut *sink))),
                Ok(seq) => self.running.push(Running {
                    seq,
                    sink,
                    done,
                    cancelled,
                }),
                Err(e) => done(Err(e)),
            }
        }
        if self.running.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut seqs = Vec::with_capacity(self.running.len());
        let mut rest = Vec::with_capacity(self.running.len());
        for r in self.running.drain(..) {
            seqs.push(r.seq);
            rest.push((r.sink, r.done, r.cancelled));
        }
        let (logits, prepared) = forward_and_prepare(self.engine.model.as_ref(), &mut seqs);
        let elapsed = started.elapsed();
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                // The model failed for the whole batch: each sequence in it ends.
                let msg = e.to_string();
                for (_, done, _) in rest {
                    done(Err(GenerateError::Model(candle_core::Error::Msg(
                        msg.clone(),
                    ))));
                }
                return;
            }
        };
        for (((mut seq, (mut sink, done, cancelled)), row), prepared) in
            seqs.into_iter().zip(rest).zip(logits).zip(prepared)
        {
            let outcome = prepared
                .map_err(GenerateError::from)
                .and_then(|p| seq.advance(row, p, elapsed, &mut *sink));
            match outcome {
                Err(e) => done(Err(e)),
                Ok(()) if seq.done => done(Ok(seq.finish(&mut *sink))),
                Ok(()) => self.running.push(Running {
                    seq,
                    sink,
                    done,
                    cancelled,
                }),
            }
        }
    }

    /// Step until every job has finished.
    pub fn run_to_end(&mut self) {
        while !self.is_idle() {
            self.step();
        }
    }
}
