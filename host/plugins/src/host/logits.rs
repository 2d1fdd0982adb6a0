//! `deepwasm:plugin/logits`: the step's logits, held by the host and queried
//! by the plugin.
//!
//! Queries must cost far less than copying the vocabulary (129,280 floats for
//! DeepSeek-V3/R1). `top_k` therefore skips whole blocks whose maximum cannot
//! enter the current top k, which after the first few blocks is almost all of
//! them.

use std::sync::Arc;

use wasmtime::component::Resource;

pub use crate::bindings::logits::ScoredToken;
use crate::bindings::logits::{Host, HostLogits};
use crate::bindings::types::TokenSet;
use crate::host::HostState;

/// A query the logits' device could not answer.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the logits could not be read: {0}")]
pub struct LogitsError(pub String);

pub type LogitsResult<T> = Result<T, LogitsError>;

/// Where one step's logits live and how a query reaches them.
///
/// The host's own vector answers everything in place. A source that keeps
/// the logits on an accelerator answers each query there and moves only
/// the answer; [`LogitsSource::values`] is the one query that moves the
/// whole row, and a source copies it at most once.
pub trait LogitsSource: Send + Sync + std::fmt::Debug {
    /// Number of entries (the vocabulary size).
    fn len(&self) -> usize;
    /// Whether there are no entries.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The highest entry; ties go to the lowest id, NaN never wins.
    fn argmax(&self) -> LogitsResult<ScoredToken>;
    /// The `k` highest entries, best first (ties to the lowest id).
    fn top_k(&self, k: usize) -> LogitsResult<Vec<ScoredToken>>;
    /// The entries of `ids`, in order; ids out of range give negative
    /// infinity.
    fn get(&self, ids: &[u32]) -> LogitsResult<Vec<f32>>;
    /// `ln(sum(exp(x)))` over every entry.
    fn log_sum_exp(&self) -> LogitsResult<f32>;
    /// Entries `[start, start + len)`, clipped to the vocabulary.
    fn range(&self, start: usize, len: usize) -> LogitsResult<Vec<f32>>;
    /// Every entry, in host memory.
    fn values(&self) -> LogitsResult<Arc<Vec<f32>>>;
    /// Every entry, when they are in host memory already (no copy made).
    fn host_values(&self) -> Option<Arc<Vec<f32>>> {
        None
    }
}

impl LogitsSource for Arc<Vec<f32>> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn argmax(&self) -> LogitsResult<ScoredToken> {
        Ok(argmax(self))
    }

    fn top_k(&self, k: usize) -> LogitsResult<Vec<ScoredToken>> {
        Ok(top_k(self, k))
    }

    fn get(&self, ids: &[u32]) -> LogitsResult<Vec<f32>> {
        Ok(ids
            .iter()
            .map(|&t| {
                self.as_slice()
                    .get(t as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY)
            })
            .collect())
    }

    fn log_sum_exp(&self) -> LogitsResult<f32> {
        Ok(log_sum_exp(self))
    }

    fn range(&self, start: usize, len: usize) -> LogitsResult<Vec<f32>> {
        let start = start.min(self.as_slice().len());
        let end = start.saturating_add(len).min(self.as_slice().len());
        Ok(self[start..end].to_vec())
    }

    fn values(&self) -> LogitsResult<Arc<Vec<f32>>> {
        Ok(self.clone())
    }

    fn host_values(&self) -> Option<Arc<Vec<f32>>> {
        Some(self.clone())
    }
}

/// One step's logits, shared with the engine without a copy: in host
/// memory, or wherever a [`LogitsSource`] keeps them.
#[derive(Clone, Debug)]
pub struct LogitsHandle {
    source: Arc<dyn LogitsSource>,
}

impl LogitsHandle {
    pub fn new(values: Arc<Vec<f32>>) -> Self {
        LogitsHandle {
            source: Arc::new(values),
        }
    }

    pub fn from_source(source: Arc<dyn LogitsSource>) -> Self {
        LogitsHandle { source }
    }

    /// How queries reach the logits.
    pub fn source(&self) -> &dyn LogitsSource {
        &*self.source
    }

    /// Every entry in host memory (for a source off the host, a copy of
    /// the row, made once).
    pub fn values(&self) -> LogitsResult<Arc<Vec<f32>>> {
        self.source.values()
    }

    pub fn len(&self) -> usize {
        self.source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }
}

impl From<Arc<Vec<f32>>> for LogitsHandle {
    fn from(values: Arc<Vec<f32>>) -> Self {
        LogitsHandle::new(values)
    }
}

impl From<Vec<f32>> for LogitsHandle {
    fn from(values: Vec<f32>) -> Self {
        LogitsHandle::new(Arc::new(values))
    }
}

/// Tokens compared best first: higher logit, then lower id. NaN sorts last.
fn better(a: ScoredToken, b: ScoredToken) -> bool {
    a.logit > b.logit
        || (a.logit == b.logit && a.token < b.token)
        || (b.logit.is_nan() && !a.logit.is_nan())
}

/// The k best entries of `values` (ids offset by `base`), best first.
pub fn top_k(values: &[f32], k: usize) -> Vec<ScoredToken> {
    let mut best = TopK::new(k);
    best.scan(values, 0);
    best.into_sorted()
}

/// The index and value of the largest entry; ties go to the lowest index.
pub fn argmax(values: &[f32]) -> ScoredToken {
    top_k(values, 1).pop().unwrap_or(ScoredToken {
        token: 0,
        logit: f32::NEG_INFINITY,
    })
}

/// `ln(sum(exp(x)))`, computed stably.
pub fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = values.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The largest value of `block` (NaN never wins, so a block of NaNs gives
/// negative infinity, and is skipped unless the buffer has room). Sixteen
/// independent lanes let the compiler keep the loop in vector registers; a
/// single running maximum would serialise it.
fn block_max(block: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = block.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut max = lanes
        .into_iter()
        .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
    for &v in chunks.remainder() {
        max = if v > max { v } else { max };
    }
    max
}

/// A bounded best-first buffer for top-k selection.
pub struct TopK {
    k: usize,
    /// Kept sorted best first; at most `k` entries.
    items: Vec<ScoredToken>,
}

/// Entries per block whose maximum is checked before the block is looked at.
const BLOCK: usize = 64;

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            items: Vec::with_capacity(k.min(1024) + 1),
        }
    }

    /// The logit a new entry must beat (ties are decided by id in `offer`).
    fn threshold(&self) -> f32 {
        if self.items.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.items.last().map_or(f32::NEG_INFINITY, |t| t.logit)
        }
    }

    fn offer(&mut self, item: ScoredToken) {
        if self.k == 0 {
            return;
        }
        if self.items.len() == self.k {
            match self.items.last() {
                Some(&last) if !better(item, last) => return,
                _ => {}
            }
            self.items.pop();
        }
        let at = self.items.partition_point(|&t| better(t, item));
        self.items.insert(at, item);
    }

    /// Offer every entry of `values`, whose ids start at `base`.
    pub fn scan(&mut self, values: &[f32], base: u32) {
        let mut start = 0;
        for block in values.chunks(BLOCK) {
            let max = block_max(block);
            let threshold = self.threshold();
            if max >= threshold || self.items.len() < self.k {
                for (i, &v) in block.iter().enumerate() {
                    if v >= threshold || self.items.len() < self.k {
                        self.offer(ScoredToken {
                            token: base + (start + i) as u32,
                            logit: v,
                        });
                    }
                }
            }
            start += block.len();
        }
    }

    /// The best entries offered, best first.
    pub fn into_sorted(self) -> Vec<ScoredToken> {
        self.items
    }
}

/// The most ids or ranges a token set over `len` tokens may hold: twice the
/// vocabulary (a longer list only repeats itself), and at least 4,096. The
/// host refuses a longer set rather than spend time in proportion to what
/// a plugin chose to send.
pub fn max_set_entries(len: u32) -> usize {
    (len as usize).saturating_mul(2).max(4096)
}

/// A token set longer than [`max_set_entries`] allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a token set of {entries} entries, more than the {max} allowed over {len} tokens")]
pub struct SetTooLarge {
    pub entries: usize,
    pub max: usize,
    pub len: u32,
}

/// `set` over `len` tokens as a bitset of `ceil(len / 32)` words: ids and
/// ranges past `len` dropped, repeats and overlaps merged. Costs O(n) for
/// ids, O(n log n) for ranges, plus O(len / 32); a set longer than
/// [`max_set_entries`] is refused before any of that.
pub fn normalize(set: &TokenSet, len: u32) -> Result<TokenSet, SetTooLarge> {
    normalize_words(set, len).map(TokenSet::Bitset)
}

/// [`normalize`], as the bitset's words.
pub fn normalize_words(set: &TokenSet, len: u32) -> Result<Vec<u32>, SetTooLarge> {
    match set {
        TokenSet::Ids(ids) => words_of_ids(ids, len),
        TokenSet::Ranges(ranges) => words_of_ranges(ranges.iter().map(|r| (r.start, r.end)), len),
        TokenSet::Bitset(w) => Ok(words_of_bitset(w, len)),
    }
}

/// Refuses a set of `entries` ids or ranges over `len` tokens when it is
/// longer than [`max_set_entries`].
fn check_entries(entries: usize, len: u32) -> Result<(), SetTooLarge> {
    let max = max_set_entries(len);
    if entries > max {
        return Err(SetTooLarge { entries, max, len });
    }
    Ok(())
}

/// [`normalize_words`] of the ids `ids`.
pub fn words_of_ids(ids: &[u32], len: u32) -> Result<Vec<u32>, SetTooLarge> {
    check_entries(ids.len(), len)?;
    let mut bits = vec![0u32; (len as usize).div_ceil(32)];
    for &id in ids {
        if id < len {
            bits[id as usize / 32] |= 1 << (id % 32);
        }
    }
    Ok(bits)
}

/// [`normalize_words`] of the union of the half-open ranges
/// `(start, end)`.
pub fn words_of_ranges(
    ranges: impl ExactSizeIterator<Item = (u32, u32)>,
    len: u32,
) -> Result<Vec<u32>, SetTooLarge> {
    check_entries(ranges.len(), len)?;
    let mut bits = vec![0u32; (len as usize).div_ceil(32)];
    let mut runs: Vec<(u32, u32)> = ranges
        .map(|(start, end)| (start, end.min(len)))
        .filter(|(start, end)| start < end)
        .collect();
    runs.sort_unstable();
    let mut merged: Option<(u32, u32)> = None;
    for (start, end) in runs {
        match &mut merged {
            Some((_, e)) if start <= *e => *e = (*e).max(end),
            _ => {
                if let Some((s, e)) = merged {
                    set_bit_run(&mut bits, s, e);
                }
                merged = Some((start, end));
            }
        }
    }
    if let Some((s, e)) = merged {
        set_bit_run(&mut bits, s, e);
    }
    Ok(bits)
}

/// [`normalize_words`] of the bitset `w`: cut or padded to
/// `ceil(len / 32)` words, bits past `len` cleared.
pub fn words_of_bitset(w: &[u32], len: u32) -> Vec<u32> {
    let words = (len as usize).div_ceil(32);
    let mut bits = vec![0u32; words];
    let n = w.len().min(words);
    bits[..n].copy_from_slice(&w[..n]);
    if let Some(last) = bits.last_mut()
        && !len.is_multiple_of(32)
        && n == words
    {
        *last &= (1u32 << (len % 32)) - 1;
    }
    bits
}

/// Sets bits `[start, end)` of a bitset of 32-bit words.
fn set_bit_run(bits: &mut [u32], start: u32, end: u32) {
    let (start, end) = (start as usize, end as usize);
    let (first, last) = (start / 32, (end - 1) / 32);
    let lo = u32::MAX << (start % 32);
    let hi = u32::MAX >> (31 - (end - 1) % 32);
    if first == last {
        bits[first] |= lo & hi;
    } else {
        bits[first] |= lo;
        bits[first + 1..last].fill(u32::MAX);
        bits[last] |= hi;
    }
}

/// Calls `f` with runs `[start, end)` of ids in `set`, clipped to `len`.
/// Runs may overlap for `ids` and `ranges`, and a bitset's runs stop at word
/// boundaries; callers must not care.
pub fn for_each_run(set: &TokenSet, len: u32, mut f: impl FnMut(u32, u32)) {
    match set {
        TokenSet::Ids(ids) => {
            for &id in ids {
                if id < len {
                    f(id, id + 1);
                }
            }
        }
        TokenSet::Ranges(ranges) => {
            for r in ranges {
                let end = r.end.min(len);
                if r.start < end {
                    f(r.start, end);
                }
            }
        }
        TokenSet::Bitset(words) => for_each_bit_run(words, len, f),
    }
}

/// Calls `f` with the runs `[start, end)` of set bits in the bitset
/// `words` (bit `t % 32` of word `t / 32`), clipped to `len`, in order;
/// runs stop at word boundaries.
pub fn for_each_bit_run(words: &[u32], len: u32, mut f: impl FnMut(u32, u32)) {
    for (w, &word) in words.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let lo = bits.trailing_zeros();
            let run = (!(bits >> lo)).trailing_zeros();
            let start = w as u32 * 32 + lo;
            let end = (start + run).min(len);
            if start >= len {
                return;
            }
            f(start, end);
            bits = if lo + run >= 32 {
                0
            } else {
                bits & !(((1u32 << run) - 1) << lo)
            };
        }
    }
}

impl HostState {
    fn logits(&self, handle: &Resource<LogitsHandle>) -> wasmtime::Result<&LogitsHandle> {
        Ok(self.table.get(handle)?)
    }
}

impl Host for HostState {}

impl HostLogits for HostState {
    fn len(&mut self, this: Resource<LogitsHandle>) -> wasmtime::Result<u32> {
        Ok(self.logits(&this)?.len() as u32)
    }

    fn argmax(&mut self, this: Resource<LogitsHandle>) -> wasmtime::Result<ScoredToken> {
        Ok(self.logits(&this)?.source().argmax()?)
    }

    fn top_k(
        &mut self,
        this: Resource<LogitsHandle>,
        k: u32,
    ) -> wasmtime::Result<Vec<ScoredToken>> {
        let logits = self.logits(&this)?;
        // Asking for more than the vocabulary is asking for all of it.
        Ok(logits.source().top_k((k as usize).min(logits.len()))?)
    }

    fn top_k_in(
        &mut self,
        this: Resource<LogitsHandle>,
        set: TokenSet,
        k: u32,
    ) -> wasmtime::Result<Vec<ScoredToken>> {
        let plugin = self.plugin.clone();
        let values = self.logits(&this)?.values()?;
        // Normalised first, so that each token is looked at once however
        // the plugin repeated it, and the cost is bounded by the vocabulary.
        let set = normalize(&set, values.len() as u32).map_err(|e| {
            wasmtime::Error::msg(format!("plugin `{plugin}` asked `top-k-in` over {e}"))
        })?;
        let mut best = TopK::new(k as usize);
        for_each_run(&set, values.len() as u32, |start, end| {
            best.scan(&values[start as usize..end as usize], start)
        });
        Ok(best.into_sorted())
    }

    fn get(
        &mut self,
        this: Resource<LogitsHandle>,
        tokens: Vec<u32>,
    ) -> wasmtime::Result<Vec<f32>> {
        Ok(self.logits(&this)?.source().get(&tokens)?)
    }

    fn log_sum_exp(&mut self, this: Resource<LogitsHandle>) -> wasmtime::Result<f32> {
        Ok(self.logits(&this)?.source().log_sum_exp()?)
    }

    fn copy_range(
        &mut self,
        this: Resource<LogitsHandle>,
        start: u32,
        len: u32,
    ) -> wasmtime::Result<Vec<f32>> {
        Ok(self
            .logits(&this)?
            .source()
            .range(start as usize, len as usize)?)
    }

    fn copy_all(&mut self, this: Resource<LogitsHandle>) -> wasmtime::Result<Vec<f32>> {
        let logits = self.logits(&this)?;
        Ok(logits.source().range(0, logits.len())?)
    }

    fn drop(&mut self, this: Resource<LogitsHandle>) -> wasmtime::Result<()> {
        // The host lends logits only as `borrow`, so a guest never owns one to
        // drop; should it ever, the entry goes like any owned resource.
        self.table.delete(this)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::TokenRange;

    fn ids_of(set: &TokenSet, len: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for_each_run(set, len, |s, e| out.extend(s..e));
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn normalising_keeps_exactly_the_same_tokens() {
        let len = 1000;
        let sets = [
            TokenSet::Ids(vec![5, 3, 5, 999, 1000, 4_000_000_000, 64, 31, 32]),
            TokenSet::Ranges(vec![
                TokenRange { start: 10, end: 40 },
                TokenRange { start: 0, end: 12 },
                TokenRange {
                    start: 900,
                    end: 2000,
                },
                TokenRange { start: 39, end: 70 },
                TokenRange { start: 5, end: 5 },
                TokenRange { start: 80, end: 81 },
            ]),
            TokenSet::Bitset(vec![u32::MAX; 40]),
            TokenSet::Bitset(vec![0b1010]),
        ];
        for set in sets {
            let n = normalize(&set, len).unwrap();
            assert!(
                matches!(n, TokenSet::Bitset(ref w) if w.len() == 32),
                "{n:?}"
            );
            assert_eq!(ids_of(&n, len), ids_of(&set, len), "{set:?}");
        }
    }

    #[test]
    fn a_set_longer_than_twice_the_vocabulary_is_refused() {
        let many = TokenSet::Ranges(vec![TokenRange { start: 0, end: 100 }; 10_000]);
        assert_eq!(
            normalize(&many, 100).unwrap_err(),
            SetTooLarge {
                entries: 10_000,
                max: 4096,
                len: 100
            }
        );
        let ok = TokenSet::Ranges(vec![TokenRange { start: 0, end: 100 }; 4096]);
        assert_eq!(ids_of(&normalize(&ok, 100).unwrap(), 100).len(), 100);
    }

    fn naive_top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = values
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, x))
            .collect();
        v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let mut state = 0x1234_5678u64;
        let values: Vec<f32> = (0..10_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Few distinct values, so ties are common.
                (state % 997) as f32 / 10.0
            })
            .collect();
        for k in [0, 1, 2, 40, 63, 64, 65, 500] {
            let got: Vec<(u32, f32)> = top_k(&values, k)
                .iter()
                .map(|t| (t.token, t.logit))
                .collect();
            assert_eq!(got, naive_top_k(&values, k), "k = {k}");
        }
    }

    #[test]
    fn argmax_prefers_the_lowest_id_and_ignores_nan() {
        let values = [1.0, f32::NAN, 3.0, 3.0, -1.0];
        let best = argmax(&values);
        assert_eq!((best.token, best.logit), (2, 3.0));
    }

    #[test]
    fn bitset_runs() {
        let set = TokenSet::Bitset(vec![0b1011, 0, 1 << 31, u32::MAX]);
        let mut runs = Vec::new();
        for_each_run(&set, 120, |a, b| runs.push((a, b)));
        assert_eq!(runs, vec![(0, 2), (3, 4), (95, 96), (96, 120)]);
    }

    #[test]
    fn log_sum_exp_is_stable() {
        let v = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&v) - (1000.0 + 2f32.ln())).abs() < 1e-3);
    }
}
