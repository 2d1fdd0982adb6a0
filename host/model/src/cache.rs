//! Paged attention caches: one pool of fixed-size blocks serves many
//! sequences.
//!
//! A [`KvPool`] hands out blocks of [`BLOCK_TOKENS`] positions; a
//! sequence's [`KvCache`] is a table of block ids and a length. Blocks are
//! reference counted: a fork ([`KvCache::clone`]) shares every block of its
//! source, and the first write into a shared block copies that block (copy
//! on write), so sequences with a common prefix hold it once. Dropping a
//! cache releases its blocks.
//!
//! Storage lives in segments of [`SEGMENT_BLOCKS`] blocks: per layer, one
//! key and one value tensor of `[positions, width]` rows, created on the
//! device (and in the dtype) of the first rows written to them. Segments
//! never move, so a block id stays valid while the pool grows. Nothing here
//! assumes a CPU: every copy is a tensor operation on the storage's device.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{Result, Tensor};

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;
/// Blocks per storage segment.
pub const SEGMENT_BLOCKS: usize = 64;
const SEGMENT_TOKENS: usize = BLOCK_TOKENS * SEGMENT_BLOCKS;

/// One layer's storage in one segment: `[SEGMENT_TOKENS, k_width]` keys and
/// `[SEGMENT_TOKENS, v_width]` values, a position per row.
#[derive(Clone, Debug)]
pub struct LayerStore {
    pub k: Tensor,
    pub v: Tensor,
}

#[derive(Debug)]
struct Segment {
    layers: Mutex<Vec<Option<LayerStore>>>,
}

#[derive(Debug, Default)]
struct Blocks {
    /// References to each block id handed out so far; 0: free.
    refs: Vec<u32>,
    /// Free ids, lowest first (so a sequence's blocks tend to be adjacent).
    free: BinaryHeap<Reverse<u32>>,
    in_use: usize,
    segments: Vec<Arc<Segment>>,
}

/// Blocks of attention cache shared by the sequences of one batch.
#[derive(Debug)]
pub struct KvPool {
    layers: usize,
    max_blocks: usize,
    blocks: Mutex<Blocks>,
}

/// Where a run of positions lives: `len` rows from `row` of `segment`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Run {
    pub segment: usize,
    pub row: usize,
    pub len: usize,
}

impl KvPool {
    /// A pool for a model of `layers` layers, holding at most `max_blocks`
    /// blocks (`usize::MAX`: as many as memory allows).
    pub fn new(layers: usize, max_blocks: usize) -> Arc<Self> {
        Arc::new(KvPool {
            layers,
            max_blocks,
            blocks: Mutex::new(Blocks::default()),
        })
    }

    /// An empty cache drawing on this pool.
    pub fn new_cache(self: &Arc<Self>) -> KvCache {
        KvCache {
            pool: self.clone(),
            blocks: Vec::new(),
            len: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Blocks> {
        // The lock guards plain counters that every path leaves consistent
        // before it can panic, so a poisoned lock's data is still good.
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Layers each cache holds.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Blocks held by some cache now.
    pub fn blocks_in_use(&self) -> usize {
        self.lock().in_use
    }

    /// The most blocks the pool hands out.
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// Bytes one position takes across layers, as stored (0 before
    /// anything was written).
    pub fn bytes_per_token(&self) -> usize {
        let Some(seg) = self.lock().segments.first().cloned() else {
            return 0;
        };
        let layers = seg.layers.lock().unwrap_or_else(|e| e.into_inner());
        layers
            .iter()
            .flatten()
            .map(|s| {
                let width = s.k.dim(1).unwrap_or(0) + s.v.dim(1).unwrap_or(0);
                width * s.k.dtype().size_in_bytes()
            })
            .sum()
    }

    /// The reference counts of blocks `ids`, read under one lock.
    pub fn ref_counts_of(&self, ids: &[u32]) -> Vec<u32> {
        let b = self.lock();
        ids.iter()
            .map(|&id| b.refs.get(id as usize).copied().unwrap_or(0))
            .collect()
    }

    /// Every block id's reference count (for checks: a free block counts 0).
    pub fn ref_counts(&self) -> Vec<u32> {
        self.lock().refs.clone()
    }

    /// Free block ids, ascending.
    pub fn free_blocks(&self) -> Vec<u32> {
        let mut free: Vec<u32> = self.lock().free.iter().map(|r| r.0).collect();
        free.sort_unstable();
        free
    }

    fn alloc(&self) -> Result<u32> {
        let mut b = self.lock();
        let id = match b.free.pop() {
            Some(Reverse(id)) => id,
            None if b.refs.len() < self.max_blocks => {
                let id = u32::try_from(b.refs.len())
                    .map_err(|_| candle_core::Error::Msg("too many cache blocks".into()))?;
                b.refs.push(0);
                if b.refs.len() > b.segments.len() * SEGMENT_BLOCKS {
                    b.segments.push(Arc::new(Segment {
                        layers: Mutex::new(vec![None; self.layers]),
                    }));
                }
                id
            }
            None => candle_core::bail!(
                "the attention cache is full: all {} blocks of {BLOCK_TOKENS} positions are in use",
                self.max_blocks
            ),
        };
        b.refs[id as usize] = 1;
        b.in_use += 1;
        Ok(id)
    }

    fn retain(&self, ids: &[u32]) {
        let mut b = self.lock();
        for &id in ids {
            b.refs[id as usize] += 1;
        }
    }

    fn release(&self, ids: &[u32]) {
        let mut b = self.lock();
        for &id in ids {
            let r = &mut b.refs[id as usize];
            debug_assert!(*r > 0, "block {id} released more often than held");
            *r = r.saturating_sub(1);
            if *r == 0 {
                b.free.push(Reverse(id));
                b.in_use -= 1;
            }
        }
    }

    fn refs(&self, id: u32) -> u32 {
        self.lock().refs[id as usize]
    }

    fn segment(&self, index: usize) -> Arc<Segment> {
        self.lock().segments[index].clone()
    }

    /// Layer `layer`'s storage in segment `index`, if anything was written
    /// to it yet.
    pub fn layer_store(&self, index: usize, layer: usize) -> Option<LayerStore> {
        let seg = self.segment(index);
        let layers = seg.layers.lock().unwrap_or_else(|e| e.into_inner());
        layers[layer].clone()
    }

    /// Layer `layer`'s storage in segment `index`, created to hold rows
    /// like `k` and `v` (`[n, width]`) if it does not exist yet.
    fn layer_store_for(
        &self,
        index: usize,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<LayerStore> {
        let seg = self.segment(index);
        let mut layers = seg.layers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &layers[layer] {
            return Ok(s.clone());
        }
        let store = LayerStore {
            k: Tensor::zeros((SEGMENT_TOKENS, k.dim(1)?), k.dtype(), k.device())?,
            v: Tensor::zeros((SEGMENT_TOKENS, v.dim(1)?), v.dtype(), v.device())?,
        };
        layers[layer] = Some(store.clone());
        Ok(store)
    }
}

/// The attention cache of one sequence: a table of blocks in a pool and
/// the number of positions filled.
#[derive(Debug)]
pub struct KvCache {
    pool: Arc<KvPool>,
    blocks: Vec<u32>,
    len: usize,
}

impl KvCache {
    /// A cache in a pool of its own (for a lone sequence).
    pub fn new(layers: usize) -> Self {
        KvPool::new(layers, usize::MAX).new_cache()
    }

    /// An empty cache in the same pool.
    pub fn empty_like(&self) -> KvCache {
        self.pool.new_cache()
    }

    pub fn pool(&self) -> &Arc<KvPool> {
        &self.pool
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the blocks held have room for.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * BLOCK_TOKENS
    }

    /// The block table.
    pub fn block_ids(&self) -> &[u32] {
        &self.blocks
    }

    /// Forget positions from `len` on, releasing blocks no longer needed.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let keep = self.len.div_ceil(BLOCK_TOKENS);
        if keep < self.blocks.len() {
            let dropped: Vec<u32> = self.blocks.drain(keep..).collect();
            self.pool.release(&dropped);
        }
    }

    /// Blocks the pool must hand out for `n` more positions: new blocks,
    /// and a copy of the last one if it is shared and not full.
    pub fn blocks_to_append(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let grow = (self.len + n)
            .div_ceil(BLOCK_TOKENS)
            .saturating_sub(self.blocks.len());
        grow + usize::from(self.shared_tail().is_some())
    }

    /// The index of the block positions from `len` on would be written
    /// into, when other caches share it.
    fn shared_tail(&self) -> Option<usize> {
        let i = self.len / BLOCK_TOKENS;
        (!self.len.is_multiple_of(BLOCK_TOKENS)
            && i < self.blocks.len()
            && self.pool.refs(self.blocks[i]) > 1)
            .then_some(i)
    }

    /// Make room for `n` more positions: copy a shared last block, and take
    /// new blocks from the pool. Fails, holding what it had, when the pool
    /// is out of blocks.
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if let Some(i) = self.shared_tail() {
            let old = self.blocks[i];
            let new = self.pool.alloc()?;
            if let Err(e) = self.copy_block(old, new) {
                self.pool.release(&[new]);
                return Err(e);
            }
            self.blocks[i] = new;
            self.pool.release(&[old]);
        }
        while self.blocks.len() * BLOCK_TOKENS < self.len + n {
            let id = self.pool.alloc()?;
            self.blocks.push(id);
        }
        Ok(())
    }

    /// Copy every layer's rows of block `from` into block `to`.
    fn copy_block(&self, from: u32, to: u32) -> Result<()> {
        let (fs, frow) = locate(from);
        let (ts, trow) = locate(to);
        for layer in 0..self.pool.layers {
            let Some(src) = self.pool.layer_store(fs, layer) else {
                continue;
            };
            // A copy: the destination may be in the same storage.
            let k = src.k.narrow(0, frow, BLOCK_TOKENS)?.copy()?;
            let v = src.v.narrow(0, frow, BLOCK_TOKENS)?.copy()?;
            let dst = self.pool.layer_store_for(ts, layer, &k, &v)?;
            dst.k.slice_set(&k, 0, trow)?;
            dst.v.slice_set(&v, 0, trow)?;
        }
        Ok(())
    }

    /// Where positions `[from, to)` live, as runs of adjacent rows.
    pub fn runs(&self, from: usize, to: usize) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let mut p = from;
        while p < to {
            let (segment, base) = locate(self.blocks[p / BLOCK_TOKENS]);
            let within = p % BLOCK_TOKENS;
            let len = (BLOCK_TOKENS - within).min(to - p);
            let row = base + within;
            match runs.last_mut() {
                Some(last) if last.segment == segment && last.row + last.len == row => {
                    last.len += len
                }
                _ => runs.push(Run { segment, row, len }),
            }
            p += len;
        }
        runs
    }

    /// Write rows `k` (`[n, k_width]`) and `v` (`[n, v_width]`) of layer
    /// `layer` at positions `[len, len + n)`, which [`KvCache::reserve`]
    /// made room for.
    pub fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let n = k.dim(0)?;
        if v.dim(0)? != n {
            candle_core::bail!("appending {n} keys but {} values", v.dim(0)?);
        }
        if self.capacity() < self.len + n {
            candle_core::bail!(
                "writing {n} positions after {} into a cache with room for {}",
                self.len,
                self.capacity()
            );
        }
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let mut done = 0;
        for run in self.runs(self.len, self.len + n) {
            let store = self.pool.layer_store_for(run.segment, layer, &k, &v)?;
            store
                .k
                .slice_set(&k.narrow(0, done, run.len)?, 0, run.row)?;
            store
                .v
                .slice_set(&v.narrow(0, done, run.len)?, 0, run.row)?;
            done += run.len;
        }
        Ok(())
    }

    /// Layer `layer`'s keys and values of positions `[0, upto)`, as
    /// `[upto, width]` rows (a view when they lie in one run, else a copy).
    pub fn gather(&self, layer: usize, upto: usize) -> Result<(Tensor, Tensor)> {
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for run in self.runs(0, upto) {
            let store = self.pool.layer_store(run.segment, layer).ok_or_else(|| {
                candle_core::Error::Msg(format!("layer {layer} of the cache was never written"))
            })?;
            ks.push(store.k.narrow(0, run.row, run.len)?);
            vs.push(store.v.narrow(0, run.row, run.len)?);
        }
        if ks.len() == 1 {
            return Ok((ks.remove(0), vs.remove(0)));
        }
        if ks.is_empty() {
            candle_core::bail!("gathering an empty cache");
        }
        Ok((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?))
    }

    /// Append `k` (`[heads, new, dim]`) and `v` (`[v_heads, new, v_dim]`) to
    /// layer `layer` and return all of that layer's keys and values so far,
    /// `[heads, len + new, dim]` and `[v_heads, len + new, v_dim]`.
    ///
    /// Every layer appends the same number of positions per step; the step's
    /// length is committed with `advance` after the last layer.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (heads, new, dim) = k.dims3()?;
        // Keys and values may differ in heads and width (a latent cache keeps
        // the latent as "keys" and the rotary key as "values").
        let (v_heads, v_new, v_dim) = v.dims3()?;
        if v_new != new {
            candle_core::bail!("appending {new} keys but {v_new} values");
        }
        self.reserve(new)?;
        let rows = |t: &Tensor, h: usize, d: usize| -> Result<Tensor> {
            t.transpose(0, 1)?.contiguous()?.reshape((new, h * d))
        };
        self.write(layer, &rows(k, heads, dim)?, &rows(v, v_heads, v_dim)?)?;
        let all = self.len + new;
        let (ks, vs) = self.gather(layer, all)?;
        let unrows = |t: Tensor, h: usize, d: usize| -> Result<Tensor> {
            if h == 1 {
                t.reshape((1, all, d))
            } else {
                t.reshape((all, h, d))?.transpose(0, 1)?.contiguous()
            }
        };
        Ok((unrows(ks, heads, dim)?, unrows(vs, v_heads, v_dim)?))
    }

    /// Commit `n` new positions, after every layer appended them.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// A fork: the same positions, sharing every block (copied when either
/// side first writes into a shared, partly filled block).
impl Clone for KvCache {
    fn clone(&self) -> Self {
        self.pool.retain(&self.blocks);
        KvCache {
            pool: self.pool.clone(),
            blocks: self.blocks.clone(),
            len: self.len,
        }
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        self.pool.release(&self.blocks);
    }
}

/// The segment of block `id`, and the row its first position is at.
fn locate(id: u32) -> (usize, usize) {
    let id = id as usize;
    (id / SEGMENT_BLOCKS, (id % SEGMENT_BLOCKS) * BLOCK_TOKENS)
}

/// Read access to one layer's storage across the segments a batch's caches
/// use, keyed by pool and segment (for kernels that read the cache in
/// place).
pub struct LayerViews {
    index: HashMap<(usize, usize), usize>,
    stores: Vec<LayerStore>,
}

impl LayerViews {
    /// The storage of layer `layer` behind every block of `caches`.
    pub fn new<'a>(layer: usize, caches: impl IntoIterator<Item = &'a KvCache>) -> Result<Self> {
        let mut index = HashMap::new();
        let mut stores = Vec::new();
        for c in caches {
            let pool = Arc::as_ptr(&c.pool) as usize;
            for &id in &c.blocks {
                let (segment, _) = locate(id);
                if let std::collections::hash_map::Entry::Vacant(e) = index.entry((pool, segment)) {
                    let store = c.pool.layer_store(segment, layer).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "layer {layer} of the cache was never written"
                        ))
                    })?;
                    e.insert(stores.len());
                    stores.push(store);
                }
            }
        }
        Ok(LayerViews { index, stores })
    }

    pub fn stores(&self) -> &[LayerStore] {
        &self.stores
    }

    /// For each block of `cache` (up to position `upto`): the index of its
    /// storage in [`LayerViews::stores`] and its first row there.
    pub fn block_rows(&self, cache: &KvCache, upto: usize) -> Result<Vec<(usize, usize)>> {
        let pool = Arc::as_ptr(&cache.pool) as usize;
        let Some(blocks) = cache.blocks.get(..upto.div_ceil(BLOCK_TOKENS)) else {
            candle_core::bail!(
                "{upto} positions asked of a cache with room for {}",
                cache.capacity()
            );
        };
        blocks
            .iter()
            .map(|&id| {
                let (segment, row) = locate(id);
                let store = self.index.get(&(pool, segment)).ok_or_else(|| {
                    candle_core::Error::Msg("a cache outside the views asked for".into())
                })?;
                Ok((*store, row))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    const LAYERS: usize = 2;
    const WIDTH: usize = 3;

    /// A live cache and the values its positions must hold (one number per
    /// position, written to every column of every layer, keys and values
    /// told apart by sign).
    struct Live {
        cache: KvCache,
        values: Vec<f32>,
    }

    #[derive(Clone, Debug)]
    enum Op {
        New,
        Append {
            which: usize,
            n: usize,
        },
        Fork {
            which: usize,
        },
        Truncate {
            which: usize,
            keep: usize,
        },
        Drop {
            which: usize,
        },
        /// Free and start again empty, as a preempted sequence does.
        Preempt {
            which: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::New),
            4 => (any::<usize>(), 1usize..40).prop_map(|(which, n)| Op::Append { which, n }),
            2 => any::<usize>().prop_map(|which| Op::Fork { which }),
            1 => (any::<usize>(), 0usize..80).prop_map(|(which, keep)| Op::Truncate { which, keep }),
            1 => any::<usize>().prop_map(|which| Op::Drop { which }),
            1 => any::<usize>().prop_map(|which| Op::Preempt { which }),
        ]
    }

    fn append(live: &mut Live, n: usize, next: &mut f32) -> Result<()> {
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                *next += 1.0;
                *next
            })
            .collect();
        live.cache.reserve(n)?;
        for layer in 0..LAYERS {
            let k: Vec<f32> = vals
                .iter()
                .flat_map(|v| [*v + layer as f32 * 1e4; WIDTH])
                .collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            let k = Tensor::from_vec(k, (n, WIDTH), &Device::Cpu)?;
            let v = Tensor::from_vec(v, (n, WIDTH), &Device::Cpu)?;
            live.cache.write(layer, &k, &v)?;
        }
        live.cache.advance(n);
        live.values.extend(vals);
        Ok(())
    }

    /// Reference counts equal the caches holding each block, the free list
    /// is exactly the unreferenced blocks, and every cache reads back what
    /// was written to it (no write reached another through a shared block).
    fn check(pool: &KvPool, live: &[Live]) -> Result<()> {
        let refs = pool.ref_counts();
        let mut expect = vec![0u32; refs.len()];
        for l in live {
            for &b in l.cache.block_ids() {
                expect[b as usize] += 1;
            }
        }
        assert_eq!(refs, expect, "reference counts");
        let free: Vec<u32> = (0..refs.len() as u32)
            .filter(|&b| refs[b as usize] == 0)
            .collect();
        assert_eq!(pool.free_blocks(), free, "free list");
        assert_eq!(pool.blocks_in_use(), refs.len() - free.len());
        for l in live {
            assert_eq!(l.cache.len(), l.values.len());
            if l.cache.is_empty() {
                continue;
            }
            for layer in 0..LAYERS {
                let (k, v) = l.cache.gather(layer, l.cache.len())?;
                let k = k.to_vec2::<f32>()?;
                let v = v.to_vec2::<f32>()?;
                for (p, want) in l.values.iter().enumerate() {
                    let want = want + layer as f32 * 1e4;
                    assert_eq!(k[p], vec![want; WIDTH], "key at {p}, layer {layer}");
                    assert_eq!(v[p], vec![-want; WIDTH], "value at {p}, layer {layer}");
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

        /// Blocks are never leaked, freed twice or miscounted, and
        /// copy-on-write keeps forks apart, under any mix of joins, leaves,
        /// forks, truncations and preemptions, with and without a cap.
        #[test]
        fn blocks_stay_exact_under_random_operations(
            ops in proptest::collection::vec(op(), 1..60),
            cap in prop_oneof![Just(usize::MAX), 4usize..24],
        ) {
            let pool = KvPool::new(LAYERS, cap);
            let mut live: Vec<Live> = Vec::new();
            let mut next = 0f32;
            for op in ops {
                let pick = |w: usize| w % live.len().max(1);
                match op {
                    Op::New => live.push(Live { cache: pool.new_cache(), values: Vec::new() }),
                    Op::Append { which, n } if !live.is_empty() => {
                        let i = pick(which);
                        let before = (live[i].cache.len(), live[i].cache.block_ids().to_vec());
                        let need = live[i].cache.blocks_to_append(n);
                        let free_before = cap.saturating_sub(pool.blocks_in_use());
                        match append(&mut live[i], n, &mut next) {
                            Ok(()) => prop_assert!(need <= free_before),
                            Err(e) => {
                                // Only for want of blocks, and the cache is
                                // still what it was, save blocks it took.
                                prop_assert!(e.to_string().contains("full"), "{e}");
                                prop_assert!(need > free_before);
                                prop_assert_eq!(live[i].cache.len(), before.0);
                                live[i].cache.truncate(before.0);
                            }
                        }
                    }
                    Op::Fork { which } if !live.is_empty() => {
                        let i = pick(which);
                        let fork = Live { cache: live[i].cache.clone(), values: live[i].values.clone() };
                        live.push(fork);
                    }
                    Op::Truncate { which, keep } if !live.is_empty() => {
                        let i = pick(which);
                        live[i].cache.truncate(keep);
                        let len = live[i].cache.len();
                        live[i].values.truncate(len);
                    }
                    Op::Drop { which } if !live.is_empty() => {
                        live.remove(pick(which));
                    }
                    Op::Preempt { which } if !live.is_empty() => {
                        let i = pick(which);
                        live[i].cache = live[i].cache.empty_like();
                        live[i].values.clear();
                    }
                    _ => {}
                }
                check(&pool, &live).unwrap();
            }
            drop(live);
            prop_assert_eq!(pool.blocks_in_use(), 0);
            prop_assert!(pool.ref_counts().iter().all(|&r| r == 0));
        }
    }

    #[test]
    fn a_fork_shares_blocks_until_it_writes_into_a_shared_one() -> Result<()> {
        let pool = KvPool::new(LAYERS, usize::MAX);
        let mut a = Live {
            cache: pool.new_cache(),
            values: Vec::new(),
        };
        let mut next = 0.0;
        append(&mut a, 40, &mut next)?; // 2 full blocks and 8 positions
        let mut b = Live {
            cache: a.cache.clone(),
            values: a.values.clone(),
        };
        assert_eq!(pool.blocks_in_use(), 3);
        assert_eq!(b.cache.blocks_to_append(1), 1, "the shared tail is copied");
        append(&mut b, 1, &mut next)?;
        assert_eq!(pool.blocks_in_use(), 4);
        assert_eq!(a.cache.block_ids()[..2], b.cache.block_ids()[..2]);
        assert_ne!(a.cache.block_ids()[2], b.cache.block_ids()[2]);
        // The original's tail is its own again: no copy.
        assert_eq!(a.cache.blocks_to_append(1), 0);
        append(&mut a, 1, &mut next)?;
        check(&pool, &[a, b])?;
        assert_eq!(pool.blocks_in_use(), 0);
        Ok(())
    }
}
