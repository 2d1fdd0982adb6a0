//! The scheduler: one thread owns the model, and every request's sequences
//! join its continuous batch ([`Batcher`]), so concurrent clients share each
//! forward pass instead of queueing behind each other, and a caller on an
//! async executor never waits on the model (events arrive on a channel).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::batcher::{Batcher, DEFAULT_STEP_TOKENS, Job, KvStats};
use crate::engine::Engine;
use crate::generate::Generator;
use crate::request::{Completion, Delta, GenerateError, GenerateRequest};
use crate::sampler::Sampler;
use deepwasm_upstream::Upstream;
use tokio::sync::mpsc::UnboundedSender;

/// What a submitted sequence reports, tagged with the index the caller gave
/// it (a choice of a request with `n` > 1).
#[derive(Debug)]
pub enum Event {
    Delta(usize, Delta),
    Done(usize, Result<Completion, GenerateError>),
}

/// Counters of the batch, for a server's metrics and benchmarks.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Sequences in the batch now.
    pub running: AtomicUsize,
    /// Sequences waiting for a place.
    pub waiting: AtomicUsize,
    /// Forward passes run.
    pub steps: AtomicU64,
    /// Sum over steps of the sequences in each (mean batch = this / steps).
    pub sequence_steps: AtomicU64,
    /// Steps that panicked (the batch of that step failed; the server went on).
    pub panics: AtomicU64,
    /// The attention cache's budget and what is held of it.
    pub kv: Arc<KvStats>,
    /// Submitted sequences the model's thread has not taken in yet.
    sent: AtomicUsize,
}

/// How the scheduler batches.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Most sequences in one forward pass.
    pub max_batch: usize,
    /// Most prompt tokens a forward pass takes while any sequence decodes
    /// (see [`DEFAULT_STEP_TOKENS`]); `usize::MAX` prefills prompts whole.
    pub step_tokens: usize,
    /// Tokens of attention cache all running sequences may hold
    /// (`usize::MAX`: no bound; see [`Batcher::with_kv_budget`]).
    pub kv_budget_tokens: usize,
    /// Requests waiting for a place, at most; past it, a new one is refused
    /// at once ([`GenerateError::Overloaded`]).
    pub max_waiting: usize,
    /// Copy a prompt's cache from a sequence with the same prompt instead
    /// of computing it again (see [`Batcher::with_prompt_sharing`]).
    pub share_prompts: bool,
}

impl SchedulerConfig {
    /// `max_batch` sequences at a time, everything else at its default
    /// (no cache bound, no waiting bound).
    pub fn new(max_batch: usize) -> Self {
        SchedulerConfig {
            max_batch,
            step_tokens: DEFAULT_STEP_TOKENS,
            kv_budget_tokens: usize::MAX,
            max_waiting: usize::MAX,
            share_prompts: true,
        }
    }
}

type Submit = Job<'static>;

/// Hands requests to the model's thread, or to an upstream engine. Cheap
/// to clone.
#[derive(Clone)]
pub struct Scheduler {
    engine: Arc<Engine>,
    backend: Backend,
    pub stats: Arc<SchedulerStats>,
    max_waiting: usize,
}

/// Where the sequences are computed.
#[derive(Clone)]
enum Backend {
    /// The model's thread, batching them.
    Local(mpsc::Sender<Submit>),
    /// An upstream engine, at most `in_flight` requests at a time, each
    /// holding one of `slots` (more wait, up to `max_waiting`).
    Upstream {
        upstream: Upstream,
        in_flight: usize,
        slots: Arc<tokio::sync::Semaphore>,
    },
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("engine", &self.engine.name)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Start the model's thread, batching as `config` says; requests wait
    /// in arrival order for a place (and for attention cache).
    pub fn start(engine: Arc<Engine>, config: SchedulerConfig) -> std::io::Result<Scheduler> {
        let (tx, rx) = mpsc::channel::<Submit>();
        let stats = Arc::new(SchedulerStats::default());
        stats
            .kv
            .budget_tokens
            .store(config.kv_budget_tokens, Ordering::Relaxed);
        let thread_engine = engine.clone();
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("deepwasm-model".into())
            .spawn(move || run(&thread_engine, config, rx, &thread_stats))?;
        Ok(Scheduler {
            engine,
            backend: Backend::Local(tx),
            stats,
            max_waiting: config.max_waiting,
        })
    }

    /// Generate on `upstream` instead of a local model: `engine` renders
    /// and tokenizes prompts (its model's weights need not be loaded; see
    /// [`deepwasm_model::load_remote`]). `config.max_batch` requests go to
    /// the upstream at once and `config.max_waiting` more may wait.
    pub fn upstream(engine: Arc<Engine>, upstream: Upstream, config: SchedulerConfig) -> Scheduler {
        Scheduler {
            engine,
            backend: Backend::Upstream {
                upstream,
                in_flight: config.max_batch.max(1),
                slots: Arc::new(tokio::sync::Semaphore::new(config.max_batch.max(1))),
            },
            stats: Arc::new(SchedulerStats::default()),
            max_waiting: config.max_waiting,
        }
    }

    /// Whether sequences are generated on an upstream engine.
    pub fn is_upstream(&self) -> bool {
        matches!(self.backend, Backend::Upstream { .. })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Queue one sequence. Its deltas and its end arrive on `events` under
    /// `index`; if `events` is closed (the client went away) or `cancelled`
    /// is set, the sequence leaves the batch at the next step. If the
    /// sequence is lost without an end (a failure of the model's thread),
    /// `events` closes without its `Done`.
    pub fn submit(
        &self,
        index: usize,
        req: GenerateRequest,
        sampler: Box<dyn Sampler>,
        events: UnboundedSender<Event>,
        cancelled: Arc<AtomicBool>,
    ) -> Result<(), GenerateError> {
        let jobs = match &self.backend {
            Backend::Local(jobs) => jobs,
            Backend::Upstream { in_flight, .. } => {
                if let Some(why) = crate::upstream::refusal(&req, sampler.as_ref()) {
                    return Err(GenerateError::Unsupported(why));
                }
                // Counted before it is checked, so that requests arriving
                // together cannot all pass the check.
                let admitted = Admitted(self.stats.clone());
                let before = self.stats.sent.fetch_add(1, Ordering::Relaxed);
                if before >= in_flight.saturating_add(self.max_waiting) {
                    return Err(GenerateError::Overloaded {
                        waiting: before.saturating_sub(*in_flight),
                    });
                }
                self.spawn_upstream(admitted, index, req, events, cancelled);
                return Ok(());
            }
        };
        let waiting =
            self.stats.waiting.load(Ordering::Relaxed) + self.stats.sent.load(Ordering::Relaxed);
        if waiting >= self.max_waiting {
            return Err(GenerateError::Overloaded { waiting });
        }
        let sink_events = events.clone();
        let sink_cancelled = cancelled.clone();
        let job = Job {
            req,
            sampler,
            sink: Box::new(move |d: &Delta| {
                if sink_events.send(Event::Delta(index, d.clone())).is_err() {
                    sink_cancelled.store(true, Ordering::Relaxed);
                }
            }),
            done: Box::new(move |r| {
                let _ = events.send(Event::Done(index, r));
            }),
            cancelled,
        };
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        jobs.send(job).map_err(|_| {
            self.stats.sent.fetch_sub(1, Ordering::Relaxed);
            GenerateError::Invalid("the model's thread has stopped".into())
        })
    }
}

/// A request taken for the upstream, until its task ends (counted in
/// `SchedulerStats::sent`, which bounds waiting and running together).
struct Admitted(Arc<SchedulerStats>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.sent.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request running on the upstream, until its task ends.
struct Running(Arc<SchedulerStats>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Scheduler {
    /// One sequence on the upstream, as a task of its client's runtime: it
    /// always ends with its `Done` (or, if the task is lost, with `events`
    /// closing), and counts as running until then.
    fn spawn_upstream(
        &self,
        admitted: Admitted,
        index: usize,
        req: GenerateRequest,
        events: UnboundedSender<Event>,
        cancelled: Arc<AtomicBool>,
    ) {
        let Backend::Upstream {
            upstream, slots, ..
        } = &self.backend
        else {
            unreachable!("spawn_upstream on a local scheduler")
        };
        let (upstream, slots) = (upstream.clone(), slots.clone());
        let engine = self.engine.clone();
        let stats = self.stats.clone();
        upstream.handle().spawn(async move {
            let _admitted = admitted;
            stats.waiting.fetch_add(1, Ordering::Relaxed);
            let slot = slots.acquire_owned().await;
            stats.waiting.fetch_sub(1, Ordering::Relaxed);
            let Ok(_slot) = slot else { return };
            if cancelled.load(Ordering::Relaxed) || events.is_closed() {
                // The client left while it waited: nothing is sent.
                let _ = events.send(Event::Done(index, Err(GenerateError::Cancelled)));
                return;
            }
            stats.running.fetch_add(1, Ordering::Relaxed);
            let _running = Running(stats.clone());
            let mut sink = |d: Delta| {
                if events.send(Event::Delta(index, d)).is_err() {
                    cancelled.store(true, Ordering::Relaxed);
                }
            };
            let result =
                crate::upstream::generate(&engine, &upstream, req, &mut sink, &cancelled).await;
            let _ = events.send(Event::Done(index, result));
        });
    }
}

/// The thread: wait for work outside rayon's pool, then step the batch on
/// one of its threads until it drains (the kernels split their work from
/// there without a handoff).
fn run(
    engine: &Engine,
    config: SchedulerConfig,
    jobs: mpsc::Receiver<Submit>,
    stats: &SchedulerStats,
) {
    let new_batch = || {
        Batcher::new(engine, config.max_batch)
            .with_step_tokens(config.step_tokens)
            .with_kv_budget(config.kv_budget_tokens, stats.kv.clone())
            .with_prompt_sharing(config.share_prompts)
    };
    // Only this thread and the rayon worker it blocks on touch the
    // receiver; the mutex makes it shareable with that worker.
    let jobs = Mutex::new(jobs);
    let recv = || jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
    // What the last batch kept cached, for the next one.
    let mut prefixes = None;
    while let Ok(first) = recv() {
        let mut pending = Some(first);
        rayon::scope(|_| {
            let mut batcher = match prefixes.take() {
                Some(p) => new_batch().with_prefix_cache(p),
                None => new_batch(),
            };
            loop {
                if let Some(job) = pending.take() {
                    stats.sent.fetch_sub(1, Ordering::Relaxed);
                    batcher.submit(job);
                }
                while let Ok(job) = jobs.lock().unwrap_or_else(|e| e.into_inner()).try_recv() {
                    stats.sent.fetch_sub(1, Ordering::Relaxed);
                    batcher.submit(job);
                }
                stats.waiting.store(batcher.waiting(), Ordering::Relaxed);
                if batcher.is_idle() {
                    prefixes = Some(batcher.into_prefix_cache());
                    break;
                }
                let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| batcher.step()));
                stats.running.store(batcher.running(), Ordering::Relaxed);
                stats.waiting.store(batcher.waiting(), Ordering::Relaxed);
                if stepped.is_err() {
                    // The batch's state cannot be trusted: drop it. Every
                    // sequence in it ends without a `Done` (its events
                    // close; a server answers that as its own error); the
                    // thread goes on.
                    stats.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("a decoding step panicked; its batch was dropped");
                    batcher = new_batch();
                    continue;
                }
                stats.steps.fetch_add(1, Ordering::Relaxed);
                stats
                    .sequence_steps
                    .fetch_add(batcher.running() as u64, Ordering::Relaxed);
            }
        });
        stats.running.store(0, Ordering::Relaxed);
        stats.waiting.store(0, Ordering::Relaxed);
    }
}

/// Blocking generation through the shared batch, for callers on their own
/// threads (agent runs, rollouts).
impl Generator for Scheduler {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn steers(&self) -> bool {
        !self.is_upstream()
    }

    fn run(
        &self,
        req: GenerateRequest,
        sampler: Box<dyn Sampler>,
        mut on_delta: Box<dyn FnMut(&Delta) + Send>,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Completion, GenerateError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.submit(0, req, sampler, tx, cancelled)?;
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Delta(_, d) => on_delta(&d),
                Event::Done(_, r) => return r,
            }
        }
        Err(GenerateError::Cancelled)
    }
}
