//! Continuous batching: sequences join and leave a running batch between
//! forward passes.
//!
//! Every step runs one forward pass over all running sequences: the others
//! with the token(s) of their last step (decode), new ones with a chunk of
//! their prompt (prefill). A step takes at most a budget of tokens, so a long
//! prompt goes in over many steps between which every stream moves on: no
//! member holds the step. A sequence that finishes, fails or is cancelled
//! leaves at once and frees its cache (during its prefill too); waiting jobs
//! take its place.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use deepwasm_model::cache::{BLOCK_TOKENS, KvPool};
use deepwasm_model::{KvCache, Output};
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::request::{Completion, DeltaSink, GenerateError, GenerateRequest};
use crate::sampler::Sampler;
use crate::sequence::{Sequence, forward_and_prepare};

/// The least a step waits for samplers after its forward pass.
const MIN_GRACE: Duration = Duration::from_millis(2);
/// How long a step with nothing to feed waits for a sampler before it
/// returns (to admit new jobs).
const IDLE_WAIT: Duration = Duration::from_millis(5);

/// Prompt tokens a step takes, at most, while some sequence is decoding
/// (beside each decoding sequence's own token), or as many as there are
/// decoding sequences if that is more, so prompts keep pace with a large
/// batch. A step's cost grows with its tokens, and a decoding stream waits
/// for the whole step: with SmolLM2-135M on two cores a step of one
/// sequence takes ~7 ms and each more token ~4 ms, so beside a 2,300-token
/// prompt a stream's gaps stay under ~0.25 s at 16, while the prompt's own
/// first token comes sooner than from one pass over it (see `bench
/// prefill` in docs/BENCHMARKS.md).
pub const DEFAULT_STEP_TOKENS: usize = 16;
/// Prompt tokens a step takes, at most, while no sequence is decoding:
/// nobody's stream waits on the step, so requests that arrive together
/// (a burst of clients, the choices of one request) go in in one pass, as
/// efficiently as the kernels allow; a longer prompt is cut so that a
/// request arriving meanwhile waits for one such chunk at most.
pub const IDLE_STEP_TOKENS: usize = 1024;
/// Tokens of whole prompts a step takes, at most, beside its chunk budget
/// while some sequence is decoding: a prompt that fits goes in at once
/// (shortest first), so a burst of ordinary chats starts within a step or
/// two, as it would without chunking; only prompts longer than what is
/// left are cut into chunks. This bounds what a burst adds to a step.
pub const WHOLE_PROMPT_TOKENS: usize = 256;
/// The least chunk the oldest prompt gets at each step, whatever the
/// budget: prompts make progress beside however many decoding streams.
pub const MIN_CHUNK: usize = 4;

/// Prompt tokens of scored prompts (each bringing a row of logits, a
/// vocabulary's worth of floats) one forward pass takes, at most, over all
/// sequences: many scoring requests at once cannot make a pass's logits
/// outgrow what one of them may take.
pub const SCORED_ROWS_PER_PASS: usize = 2 * crate::sequence::SCORED_CHUNK;

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

/// The attention cache's budget across a batch's sequences, and what is
/// held now. Readable from any thread (for metrics).
#[derive(Debug, Default)]
pub struct KvStats {
    /// Tokens of cache the budget allows in all; `usize::MAX`: no bound.
    pub budget_tokens: AtomicUsize,
    /// Tokens of cache held or promised to running sequences now: blocks in
    /// use, and the blocks the rest of their feeds will take, in tokens.
    pub reserved_tokens: AtomicUsize,
    /// Blocks of [`BLOCK_TOKENS`] positions in use now (a block shared by
    /// several sequences counts once), kept prefixes included.
    pub blocks_in_use: AtomicUsize,
    /// Blocks held only by kept prefixes of ended sequences: a cache for
    /// later requests, freed first when a sequence needs room.
    pub blocks_cached: AtomicUsize,
    /// Sequences preempted (cache freed, recomputed later) for want of
    /// cache.
    pub preemptions: AtomicU64,
    /// Prompt tokens taken from another sequence's cache instead of
    /// computed.
    pub shared_prompt_tokens: AtomicU64,
}

/// Where a new sequence's prompt cache can come from.
enum Donor {
    /// Compute it.
    None,
    /// Fork the running sequence at this index, for this many positions.
    Running(usize, usize),
    /// Fork the kept cache at this index, for this many positions.
    Kept(usize, usize),
    /// A running sequence is prefilling the same prompt: wait for it.
    Pending,
}

/// Caches of ended sequences kept for later sequences that begin with the
/// same tokens (the next of a rollout group past the batch, a repeated
/// system prompt, an agent's next turn).
const KEPT_PROMPTS: usize = 8;

/// Prefixes shorter than this are computed, not shared: the saving is
/// not worth the search.
const MIN_SHARED_PROMPT: usize = 16;

/// Blocks that hold `tokens` positions.
fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_TOKENS)
}

/// How many leading tokens `a` and `b` have in common.
fn common_prefix(a: impl Iterator<Item = u32>, b: &[u32]) -> usize {
    a.zip(b).take_while(|(x, y)| x == *y).count()
}

/// An ended sequence's cache kept for later ones: the adapter it was
/// built under (a cache serves only sequences with the same one), the
/// tokens it holds, the cache.
type Kept = (Option<u64>, Vec<u32>, KvCache);

/// The attention cache an idle batch leaves behind: its pool and the
/// prefixes it kept.
pub struct PrefixCache {
    pool: KvCache,
    kept: VecDeque<Kept>,
    budget: usize,
}

/// Sequences generated together on one engine.
pub struct Batcher<'e, 'r> {
    engine: &'e Engine,
    max_batch: usize,
    step_tokens: usize,
    queue: VecDeque<Job<'r>>,
    running: Vec<Running<'e, 'r>>,
    /// Started sequences waiting for attention cache: new ones whose prompt
    /// did not fit yet, and preempted ones. They go first when cache frees.
    parked: VecDeque<Running<'e, 'r>>,
    /// An empty cache in the batch's pool, to start sequences from.
    pool: KvCache,
    /// Blocks the batch may hold.
    kv_budget: usize,
    kv_stats: Arc<KvStats>,
    share_prefixes: bool,
    /// Caches of ended sequences (the tokens they hold, the cache), oldest
    /// first.
    kept: VecDeque<Kept>,
    /// Blocks of kept prefixes handed to the next batch.
    handed_over: usize,
}

impl<'e, 'r> Batcher<'e, 'r> {
    /// At most `max_batch` sequences run at once; the rest wait in order.
    /// A step takes [`DEFAULT_STEP_TOKENS`] prompt tokens while any decodes.
    pub fn new(engine: &'e Engine, max_batch: usize) -> Self {
        Batcher {
            engine,
            max_batch: max_batch.max(1),
            step_tokens: DEFAULT_STEP_TOKENS,
            queue: VecDeque::new(),
            running: Vec::new(),
            parked: VecDeque::new(),
            pool: engine.model.new_cache(),
            kv_budget: usize::MAX,
            kv_stats: Arc::new(KvStats::default()),
            share_prefixes: true,
            kept: VecDeque::new(),
            handed_over: 0,
        }
    }

    /// Whether a new sequence starts from the cache of a running or
    /// recently ended sequence whose tokens begin the same way (on by
    /// default). The shared blocks give the same logits as computing them;
    /// only the time differs.
    pub fn with_prompt_sharing(mut self, on: bool) -> Self {
        self.share_prefixes = on;
        self
    }

    /// Hold at most `tokens` tokens of attention cache across the running
    /// sequences (in blocks of [`BLOCK_TOKENS`]), reporting to `stats`. A
    /// request starts only when its whole prompt's cache can be held; one
    /// that can never fit fails. When a decoding sequence needs a block and
    /// none is free, the newest sequence is preempted: its cache is freed
    /// and it is recomputed (prompt and tokens so far, without asking its
    /// sampler again) when cache frees. A sequence alone that outgrows the
    /// budget ends with `length`.
    pub fn with_kv_budget(mut self, tokens: usize, stats: Arc<KvStats>) -> Self {
        self.kv_budget = tokens / BLOCK_TOKENS;
        let layers = self.pool.pool().layers();
        self.pool = KvPool::new(layers, self.kv_budget).new_cache();
        stats.budget_tokens.store(tokens, Ordering::Relaxed);
        stats.reserved_tokens.store(0, Ordering::Relaxed);
        stats.blocks_in_use.store(0, Ordering::Relaxed);
        self.kv_stats = stats;
        self
    }

    /// Blocks a running sequence will still take for the rest of its feed
    /// (or its next token).
    fn pending(seq: &Sequence<'e, 'r>) -> usize {
        if seq.done {
            0
        } else {
            seq.cache.blocks_to_append(seq.feed.len().max(1))
        }
    }

    /// Blocks in use, and promised to running sequences' feeds.
    fn kv_committed(&self) -> usize {
        self.pool.pool().blocks_in_use()
            + self
                .running
                .iter()
                .map(|r| Self::pending(&r.seq))
                .sum::<usize>()
    }

    /// Blocks that only kept prefixes hold.
    fn kept_only_blocks(&self) -> usize {
        if self.kept.is_empty() {
            return 0;
        }
        let mut held: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for (_, _, c) in &self.kept {
            for &b in c.block_ids() {
                *held.entry(b).or_default() += 1;
            }
        }
        let ids: Vec<u32> = held.keys().copied().collect();
        let refs = self.pool.pool().ref_counts_of(&ids);
        ids.iter().zip(refs).filter(|(b, r)| held[b] == *r).count()
    }

    fn publish_kv(&self) {
        let cached = self.kept_only_blocks();
        let committed = self.kv_committed() - cached;
        self.kv_stats
            .reserved_tokens
            .store(committed.saturating_mul(BLOCK_TOKENS), Ordering::Relaxed);
        self.kv_stats
            .blocks_in_use
            .store(self.pool.pool().blocks_in_use(), Ordering::Relaxed);
        self.kv_stats.blocks_cached.store(cached, Ordering::Relaxed);
    }

    /// The pool and the kept prefixes, for the next batch on the same
    /// engine and budget (so a prefix stays cached while the engine idles).
    pub fn into_prefix_cache(mut self) -> PrefixCache {
        self.handed_over = self.kept_only_blocks();
        PrefixCache {
            pool: self.pool.empty_like(),
            kept: std::mem::take(&mut self.kept),
            budget: self.kv_budget,
        }
    }

    /// Start from what an earlier batch with the same budget kept (after
    /// [`Batcher::with_kv_budget`]; one made for another budget is dropped).
    pub fn with_prefix_cache(mut self, cache: PrefixCache) -> Self {
        if cache.budget == self.kv_budget && self.share_prefixes {
            self.pool = cache.pool;
            self.kept = cache.kept;
            self.publish_kv();
        }
        self
    }

    /// Free the cache of the running sequence at `i` and park it, to be
    /// recomputed when there is room.
    fn preempt(&mut self, i: usize) {
        let mut r = self.running.remove(i);
        r.seq.preempt();
        self.kv_stats.preemptions.fetch_add(1, Ordering::Relaxed);
        self.parked.push_front(r);
    }

    /// Move parked sequences into the batch while their cache fits (in
    /// order: one that does not fit holds the rest back; one waiting for
    /// another's prefill of its prompt lets the rest by). `false` when one
    /// is waiting for cache, so no new sequence should start.
    fn unpark(&mut self) -> bool {
        let mut i = 0;
        while self.running.len() < self.max_batch && i < self.parked.len() {
            let r = &self.parked[i];
            if r.cancelled.load(Ordering::Relaxed) {
                self.parked.remove(i);
                continue;
            }
            let whole = r.seq.cache.len() + r.seq.feed.len() + 1;
            if blocks_for(whole) > self.kv_budget {
                let mut r = self.parked.remove(i).expect("a parked sequence");
                if r.seq.started() {
                    // Preempted, and grown past what the budget holds at all.
                    r.seq.end_for_length();
                    (r.done)(Ok(r.seq.finish(&mut *r.sink)));
                } else {
                    (r.done)(Err(GenerateError::CacheBudget {
                        need: r.seq.feed.len() + 1,
                        budget: self.kv_budget.saturating_mul(BLOCK_TOKENS),
                    }));
                }
                continue;
            }
            // A prompt that begins like what a running or recently ended
            // sequence holds starts from a fork of its cache.
            let donor = match self.share_prefixes {
                true => self.prefix_donor(&self.parked[i].seq),
                false => Donor::None,
            };
            let fork = match donor {
                Donor::Pending => {
                    i += 1;
                    continue;
                }
                Donor::None => None,
                Donor::Running(j, common) => Some((self.running[j].seq.cache.clone(), common)),
                Donor::Kept(k, common) => Some((self.kept[k].2.clone(), common)),
            }
            .map(|(mut cache, common)| {
                cache.truncate(common);
                (cache, common)
            });
            let seq = &self.parked[i].seq;
            let need = match &fork {
                Some((cache, common)) => cache.blocks_to_append(seq.feed.len() - common + 1),
                None => seq.cache.blocks_to_append(seq.feed.len() + 1),
            };
            while self.kv_committed() + need > self.kv_budget && !self.kept.is_empty() {
                self.kept.pop_front();
            }
            if self.kv_committed() + need > self.kv_budget {
                return false;
            }
            let mut r = self.parked.remove(i).expect("a parked sequence");
            if let Some((cache, common)) = fork {
                let shared = r.seq.take_prefix_from(cache, common);
                self.kv_stats
                    .shared_prompt_tokens
                    .fetch_add(shared as u64, Ordering::Relaxed);
            }
            self.running.push(r);
        }
        true
    }

    /// The running or kept cache that holds the longest prefix of `seq`'s
    /// prompt (all but its last token at most), if that is worth sharing;
    /// or `Pending` when a running sequence with the same prompt will hold
    /// all of it after its prefill. Only a sequence not yet begun takes
    /// from another.
    fn prefix_donor(&self, seq: &Sequence<'e, 'r>) -> Donor {
        let prompt = seq.prompt();
        if seq.started()
            || !seq.cache.is_empty()
            || prompt.len() < MIN_SHARED_PROMPT
            || seq.needs_prompt_rows()
        {
            return Donor::None;
        }
        let limit = prompt.len() - 1;
        let mut best = (Donor::None, 0);
        let adapter = seq.adapter_id();
        for (k, (_, tokens, _)) in self
            .kept
            .iter()
            .enumerate()
            .filter(|(_, (a, _, _))| *a == adapter)
        {
            let common = common_prefix(tokens.iter().copied(), prompt).min(limit);
            if common > best.1 {
                best = (Donor::Kept(k, common), common);
            }
        }
        let mut pending = false;
        for (j, r) in self.running.iter().enumerate() {
            if r.seq.adapter_id() != adapter {
                continue;
            }
            let common = common_prefix(r.seq.cached_tokens(), prompt).min(limit);
            if common > best.1 {
                best = (Donor::Running(j, common), common);
            }
            pending |= r.seq.prompt() == prompt && !r.seq.started() && common < limit;
        }
        if pending && best.1 < limit {
            Donor::Pending
        } else if best.1 >= MIN_SHARED_PROMPT {
            best.0
        } else {
            Donor::None
        }
    }

    /// Keep the cache of a sequence that ended for later sequences that
    /// begin with the same tokens; the oldest kept one goes past
    /// [`KEPT_PROMPTS`]. Kept blocks count against the budget and are the
    /// first thing freed when a sequence needs room.
    fn keep_cache(&mut self, seq: &Sequence<'e, 'r>) {
        if !self.share_prefixes || seq.cache.len() < MIN_SHARED_PROMPT {
            return;
        }
        let tokens: Vec<u32> = seq.cached_tokens().collect();
        // One that holds these tokens already (or more) is enough; one that
        // these extend is replaced.
        let adapter = seq.adapter_id();
        if self
            .kept
            .iter()
            .any(|(a, t, _)| *a == adapter && t.starts_with(&tokens))
        {
            return;
        }
        self.kept
            .retain(|(a, t, _)| *a != adapter || !tokens.starts_with(t));
        self.kept.push_back((adapter, tokens, seq.cache.clone()));
        while self.kept.len() > KEPT_PROMPTS {
            self.kept.pop_front();
        }
    }

    /// Make room for every running sequence's next feed: free kept caches,
    /// else preempt the newest sequence (or end a sequence that is alone
    /// and has outgrown the budget).
    fn grow(&mut self) {
        while self.kv_committed() > self.kv_budget {
            if self.kept.pop_front().is_some() {
                continue;
            }
            if self.running.len() == 1 {
                // Alone, and still too big: the budget is its length.
                self.running[0].seq.end_for_length();
                break;
            }
            // The newest sequence not waiting on its sampler gives way.
            match (0..self.running.len())
                .rev()
                .find(|&j| self.running[j].seq.wants_feed())
            {
                Some(victim) => self.preempt(victim),
                None => break,
            }
        }
    }

    /// Take at most `tokens` prompt tokens per step while any sequence
    /// decodes (see [`DEFAULT_STEP_TOKENS`]). `usize::MAX` turns chunking
    /// off: each feed goes in whole.
    pub fn with_step_tokens(mut self, tokens: usize) -> Self {
        self.step_tokens = tokens.max(1);
        self
    }

    pub fn submit(&mut self, job: Job<'r>) {
        self.queue.push_back(job);
    }

    /// Nothing running and nothing waiting.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.running.is_empty() && self.parked.is_empty()
    }

    /// Sequences running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Jobs waiting for a place (or for attention cache).
    pub fn waiting(&self) -> usize {
        self.queue.len() + self.parked.len()
    }

    /// Admit waiting jobs, drop cancelled ones, run one forward pass over
    /// the sequences that are to be fed, and settle every sequence whose
    /// sampler has decided.
    ///
    /// The step waits for samplers only a short grace after the forward
    /// pass (a quarter of it, at least `MIN_GRACE`): a sampler still working
    /// then leaves its sequence holding its logits until a later step, and
    /// the others go on. When no sequence is to be fed the step waits up to
    /// `IDLE_WAIT` for a sampler and returns, so new jobs are admitted.
    pub fn step(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled.load(Ordering::Relaxed) {
                self.running.remove(i);
            } else {
                i += 1;
            }
        }
        let mut room = self.unpark();
        while room
            && self.running.len() < self.max_batch
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
            match Sequence::start(self.engine, &req, sampler, seed, self.pool.empty_like()) {
                Ok(seq) if seq.done => done(Ok(seq.finish(&mut *sink))),
                Ok(seq) => {
                    // Through the parking lot, which holds it until its
                    // prompt's cache fits.
                    self.parked.push_back(Running {
                        seq,
                        sink,
                        done,
                        cancelled,
                    });
                    room = self.unpark();
                }
                Err(e) => done(Err(e)),
            }
        }
        self.grow();
        self.publish_kv();
        if self.running.is_empty() {
            return;
        }
        let until = match self.forward() {
            Some(forward) => Instant::now() + (forward / 4).max(MIN_GRACE),
            None => Instant::now() + IDLE_WAIT,
        };
        // Two passes: the first starts every sampler call without waiting,
        // the second waits (all of them at once) until `until`.
        for deadline in [Instant::now(), until] {
            let mut i = 0;
            while i < self.running.len() {
                let r = &mut self.running[i];
                match r.seq.settle(deadline, &mut *r.sink) {
                    Ok(true) if r.seq.done => {
                        let r = self.running.remove(i);
                        self.keep_cache(&r.seq);
                        let mut sink = r.sink;
                        (r.done)(Ok(r.seq.finish(&mut *sink)));
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let r = self.running.remove(i);
                        (r.done)(Err(e));
                        continue;
                    }
                }
                i += 1;
            }
        }
    }

    /// How many tokens of its feed each sequence to be fed takes this step
    /// (0: none).
    ///
    /// Decoding sequences take their feed when it is a single token: they
    /// are what the batch is for, and `max_batch` bounds them. Longer feeds
    /// (prompts, forced runs) go shortest first, so a short prompt is not
    /// queued behind a long one: prompts not yet begun go whole while they
    /// fit in [`WHOLE_PROMPT_TOKENS`], the rest by a chunk of the step's chunk budget (see
    /// [`DEFAULT_STEP_TOKENS`] and [`IDLE_STEP_TOKENS`]). The sequence that
    /// joined first among them gets at least [`MIN_CHUNK`] tokens, so none
    /// starves.
    fn plan(&self) -> Vec<usize> {
        let seqs: Vec<&Sequence<'e, 'r>> = self.running.iter().map(|r| &r.seq).collect();
        // A sequence waiting for its sampler counts: its stream resumes
        // only when a step ends.
        let decoding = seqs.iter().filter(|s| s.started()).count();
        let (mut budget, mut whole) = if decoding > 0 {
            (self.step_tokens.max(decoding), WHOLE_PROMPT_TOKENS)
        } else {
            (self.step_tokens.max(IDLE_STEP_TOKENS), 0)
        };
        let mut take = vec![0; seqs.len()];
        let mut long = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if !s.wants_feed() {
                continue;
            }
            if s.started() && s.feed.len() == 1 {
                take[i] = 1;
            } else {
                long.push(i);
            }
        }
        let oldest = long.first().copied();
        long.sort_by_key(|&i| seqs[i].feed.len());
        for i in long {
            let left = seqs[i].feed.len();
            // Only a prompt not yet begun goes whole: the tail of a long one
            // stays in chunks.
            if left <= whole && seqs[i].cache.is_empty() {
                take[i] = left;
                whole -= left;
            } else {
                take[i] = left.min(budget);
                budget -= take[i];
            }
        }
        if let Some(i) = oldest {
            take[i] = take[i].max(seqs[i].feed.len().min(MIN_CHUNK));
        }
        // Rows of logits a scored prompt brings are bounded per sequence
        // and per pass: the first scored prompt always moves on.
        let mut scored_rows = 0;
        for (t, s) in take.iter_mut().zip(&seqs) {
            *t = (*t).min(s.max_take());
            if *t > 0 && s.output() == Output::AllLogits {
                if scored_rows > 0 {
                    *t = (*t).min(SCORED_ROWS_PER_PASS.saturating_sub(scored_rows));
                }
                scored_rows += *t;
            }
        }
        take
    }

    /// One forward pass over the sequences to be fed, each taking its part
    /// of the step's tokens ([`Batcher::plan`]); the logits of those whose
    /// feed it ends are held for settling. How long it took, or `None`
    /// when none was to be fed. A sequence whose sampler failed at once, or
    /// every one of them when the model failed, leaves the batch.
    fn forward(&mut self) -> Option<Duration> {
        let started = Instant::now();
        let plan = self.plan();
        let at: Vec<usize> = (0..self.running.len()).filter(|&i| plan[i] > 0).collect();
        if at.is_empty() {
            return None;
        }
        let take: Vec<usize> = at.iter().map(|&i| plan[i]).collect();
        let mut fed: Vec<&mut Sequence<'e, 'r>> = self
            .running
            .iter_mut()
            .zip(&plan)
            .filter(|(_, t)| **t > 0)
            .map(|(r, _)| &mut r.seq)
            .collect();
        let starts: Vec<usize> = fed.iter().map(|s| s.cache.len()).collect();
        let (rows, prepared) = forward_and_prepare(self.engine, &mut fed, &take);
        let elapsed = started.elapsed();
        let mut failed = Vec::new();
        match rows {
            Ok(rows) => {
                for (((((seq, rows), prepared), &i), &n), &start) in fed
                    .into_iter()
                    .zip(rows)
                    .zip(prepared)
                    .zip(&at)
                    .zip(&take)
                    .zip(&starts)
                {
                    if !rows.prompt.is_empty() {
                        seq.take_prompt_rows(start, &rows.prompt);
                    }
                    match prepared {
                        Ok(_) if n < seq.feed.len() => seq.fed_chunk(n, elapsed),
                        Ok(_) if seq.prompt_only() => {
                            seq.fed_chunk(n, elapsed);
                            seq.end_after_prompt();
                        }
                        Ok(p) => seq.hold(rows, p, elapsed),
                        Err(e) => failed.push((i, GenerateError::from(e))),
                    }
                }
            }
            Err(e) => {
                // The model failed for the whole pass: each sequence in it ends.
                let msg = e.to_string();
                let oom = crate::request::is_out_of_memory(&msg);
                if oom {
                    tracing::warn!(
                        sequences = at.len(),
                        "a forward pass ran out of device memory: {msg}"
                    );
                }
                for &i in &at {
                    failed.push((
                        i,
                        match oom {
                            true => GenerateError::DeviceMemory(msg.clone()),
                            false => GenerateError::Model(candle_core::Error::Msg(msg.clone())),
                        },
                    ));
                }
            }
        }
        // Highest index first, so the others stay where they are.
        for (i, e) in failed.into_iter().rev() {
            let r = self.running.remove(i);
            (r.done)(Err(e));
        }
        Some(elapsed)
    }

    /// Step until every job has finished.
    pub fn run_to_end(&mut self) {
        while !self.is_idle() {
            self.step();
        }
    }
}

/// A seed for a request that gave none: different every call.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl Drop for Batcher<'_, '_> {
    /// A batch that ends holds no cache but what it kept, which
    /// [`Batcher::into_prefix_cache`] may have taken over.
    fn drop(&mut self) {
        self.kv_stats.reserved_tokens.store(0, Ordering::Relaxed);
        let kept = match self.kept.is_empty() {
            true => self.handed_over,
            false => self.kept_only_blocks(),
        };
        self.kv_stats.blocks_in_use.store(kept, Ordering::Relaxed);
        self.kv_stats.blocks_cached.store(kept, Ordering::Relaxed);
    }
}
