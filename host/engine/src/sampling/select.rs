//! Choosing among candidates: top-k, top-p's cut, and the draw.
//!
//! Candidates are ordered by [`rank_cmp`]: higher logit first, then lower
//! id. Every filter keeps a prefix of that order, found here by partitioning
//! (expected linear time) rather than by sorting. The order in which
//! candidates end up is fixed by the input alone, so the draw, which walks
//! them in that order, picks the same token for the same seed everywhere.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::kernels::{BLOCK, collect_between, max_of, weight_before, with_avx2};

/// A token that may be picked, with its logit and its weight
/// `exp((logit - max) / temperature)` (1 for the most likely token).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cand {
    pub id: u32,
    pub logit: f32,
    pub w: f32,
}

impl Cand {
    pub fn new(id: u32, logit: f32) -> Self {
        Cand { id, logit, w: 0.0 }
    }
}

/// The sampler's total order: higher logit first, then lower id. Ids are
/// unique, so no two candidates compare equal and any sort gives the same
/// result. Candidates never hold NaN.
pub(crate) fn rank_cmp(a: &Cand, b: &Cand) -> Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// `rank_cmp(a, b) != Greater`, without branches.
#[inline(always)]
pub(crate) fn at_or_before(a: &Cand, b: &Cand) -> bool {
    (a.logit > b.logit) | ((a.logit == b.logit) & (a.id <= b.id))
}

/// A candidate ordered so that the heap's top is the worst one kept.
struct ByRank(Cand);

impl PartialEq for ByRank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ByRank {}
impl PartialOrd for ByRank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByRank {
    fn cmp(&self, other: &Self) -> Ordering {
        rank_cmp(&self.0, &other.0)
    }
}

/// Above this `k`, [`top_k`] selects by partitioning instead of a heap.
const HEAP_MAX: usize = 2048;

with_avx2! {
    /// Fills `out` with the `k` best entries of `logits` by [`rank_cmp`]
    /// (NaN excluded, -inf included), `w` left 0.
    ///
    /// For `k <= 2048` a bounded heap is fed in id order, so a newcomer
    /// must beat the worst kept logit strictly (it loses ties on id), and a
    /// block whose maximum does not is skipped whole: after the first
    /// blocks, almost all are. The result is then sorted best first. Larger
    /// `k` collect everything and partition; the result is the k best in an
    /// order fixed by the input.
    pub(crate) fn top_k(logits: &[f32], k: usize, out: &mut Vec<Cand>) = top_k_generic;
}

#[inline(always)]
fn top_k_generic(logits: &[f32], k: usize, out: &mut Vec<Cand>) {
    out.clear();
    if k == 0 {
        return;
    }
    if k > HEAP_MAX {
        out.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| Cand::new(i as u32, l)),
        );
        if out.len() > k {
            select_best(out, k);
            out.truncate(k);
        }
        return;
    }
    let mut heap: BinaryHeap<ByRank> = BinaryHeap::with_capacity(k);
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let base = b * BLOCK;
        let mut i = 0;
        while heap.len() < k && i < block.len() {
            if !block[i].is_nan() {
                heap.push(ByRank(Cand::new((base + i) as u32, block[i])));
            }
            i += 1;
        }
        if i == block.len() {
            continue;
        }
        let mut worst = heap.peek().map_or(f32::NEG_INFINITY, |c| c.0.logit);
        if max_of(&block[i..]) <= worst {
            continue;
        }
        for (j, &l) in block.iter().enumerate().skip(i) {
            if l > worst {
                if let Some(mut top) = heap.peek_mut() {
                    *top = ByRank(Cand::new((base + j) as u32, l));
                }
                worst = heap.peek().map_or(f32::NEG_INFINITY, |c| c.0.logit);
            }
        }
    }
    out.extend(heap.into_iter().map(|c| c.0));
    out.sort_unstable_by(rank_cmp);
}

/// Below this many candidates, selection sorts instead of partitioning.
const SMALL: usize = 16;
/// Partition rounds before selection gives up on pivots and sorts.
const MAX_ROUNDS: usize = 64;

/// The median of the first, middle and last candidates, by rank.
fn median_of_three(c: &[Cand]) -> Cand {
    let (a, b, d) = (c[0], c[c.len() / 2], c[c.len() - 1]);
    let before = |x: &Cand, y: &Cand| rank_cmp(x, y) == Ordering::Less;
    if before(&a, &b) {
        if before(&b, &d) {
            b
        } else if before(&a, &d) {
            d
        } else {
            a
        }
    } else if before(&a, &d) {
        a
    } else if before(&b, &d) {
        d
    } else {
        b
    }
}

/// Moves the candidates ranked at or before `pivot` to the front, keeping
/// their order, and returns how many there are. `rest` (at least as long as
/// `c`) holds the others meanwhile. Branch-free, since the comparison is a
/// coin toss; and nothing is read soon after it is written, which would
/// stall on store forwarding of these 12-byte values.
fn partition(c: &mut [Cand], pivot: &Cand, rest: &mut [Cand]) -> usize {
    let mut front = 0;
    let mut back = 0;
    for j in 0..c.len() {
        let x = c[j];
        let take = at_or_before(&x, pivot);
        c[front] = x;
        rest[back] = x;
        front += take as usize;
        back += !take as usize;
    }
    c[front..].copy_from_slice(&rest[..back]);
    front
}

/// The candidates' total weight, in a fixed order.
pub(crate) fn weight_sum(c: &[Cand]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks = c.chunks_exact(4);
    for q in &mut chunks {
        for j in 0..4 {
            acc[j] += q[j].w as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|x| x.w as f64).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Keeps the candidates for which `keep` holds, in order, without branching
/// on it.
pub(crate) fn compact(c: &mut Vec<Cand>, keep: impl Fn(&Cand) -> bool) {
    let mut k = 0;
    for j in 0..c.len() {
        let x = c[j];
        c[k] = x;
        k += keep(&x) as usize;
    }
    c.truncate(k);
}

/// Rearranges `c` so that its `k` best candidates come first (in no
/// particular order). Expected O(len).
pub(crate) fn select_best(c: &mut [Cand], k: usize) {
    let mut rest = vec![Cand::new(0, 0.0); c.len()];
    let (mut lo, mut hi) = (0, c.len());
    // c[..lo] are among the k best; c[hi..] are not.
    for _ in 0..MAX_ROUNDS {
        if !(lo < k && k < hi) || hi - lo <= SMALL {
            break;
        }
        let pivot = median_of_three(&c[lo..hi]);
        let n = partition(&mut c[lo..hi], &pivot, &mut rest);
        if lo + n <= k {
            lo += n;
        } else {
            hi = lo + n;
        }
    }
    if lo < k && k < hi {
        c[lo..hi].sort_unstable_by(rank_cmp);
    }
}

/// Top-p's cut: the last candidate of the shortest best-first prefix whose
/// weight reaches `target`, or `None` when that is all of `c` (or none
/// reaches it). The kept set is then everything ranked at or before the cut.
/// Rearranges `c`. Expected O(len), without sorting it.
pub(crate) fn top_p_cut(c: &mut [Cand], target: f64) -> Option<Cand> {
    let m = mass_prefix(c, target);
    if m >= c.len() {
        return None;
    }
    worst(&c[..m])
}

/// The lowest-ranked candidate.
fn worst(c: &[Cand]) -> Option<Cand> {
    c.iter()
        .copied()
        .reduce(|a, b| if at_or_before(&a, &b) { b } else { a })
}

/// Rearranges `c` so that its best candidates come first and returns the
/// length of the shortest best-first prefix whose weight reaches `target`
/// (all of `c` if none does).
fn mass_prefix(c: &mut [Cand], target: f64) -> usize {
    let mut rest = vec![Cand::new(0, 0.0); c.len()];
    let (mut lo, mut hi) = (0, c.len());
    // c[..lo] are all in the prefix and weigh `acc`; the cut is in c[lo..hi].
    let mut acc = 0.0f64;
    for _ in 0..MAX_ROUNDS {
        if hi - lo <= SMALL {
            break;
        }
        let pivot = median_of_three(&c[lo..hi]);
        let n = partition(&mut c[lo..hi], &pivot, &mut rest);
        let mass = weight_sum(&c[lo..lo + n]);
        if acc + mass >= target {
            hi = lo + n;
        } else {
            acc += mass;
            lo += n;
        }
    }
    c[lo..hi].sort_unstable_by(rank_cmp);
    for (i, x) in c[lo..hi].iter().enumerate() {
        acc += x.w as f64;
        if acc >= target {
            return lo + i + 1;
        }
    }
    hi
}

/// Draws one candidate in proportion to its weight, walking `c` in order;
/// `total` is the sum of the weights. A candidate of weight 0 is never drawn
/// unless all are 0.
pub(crate) fn draw(c: &[Cand], total: f64, u: f64) -> Option<u32> {
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last = None;
    for x in c {
        if x.w > 0.0 {
            acc += x.w as f64;
            last = Some(x.id);
            if acc > target {
                return last;
            }
        }
    }
    last.or(c.first().map(|x| x.id))
}

/// Candidates sampled to place [`vocab_top_p_cut`]'s bracket.
const BRACKET_SAMPLES: usize = 1024;

/// [`top_p_cut`] over the whole vocabulary's stored weights (tokens of
/// weight 0 are not candidates), for distributions so flat that top-p keeps
/// many thousands of tokens, where collecting them all would cost more than
/// the rest of the step.
///
/// An evenly spaced sample estimates where the cut falls. One vectorised
/// pass sums the weight ranked above a bracket of samples around it,
/// another collects the tokens inside (a few percent), and the exact cut is
/// sought among those. `None` when the estimate missed, which a few heavy
/// tokens that the sample skipped can cause: the caller then falls back to
/// collecting candidates.
pub(crate) fn vocab_top_p_cut(
    logits: &[f32],
    weights: &[f32],
    block_max: &[f32],
    total: f64,
    target: f64,
) -> Option<Option<Cand>> {
    if total < target {
        return Some(None);
    }
    let n = logits.len();
    let stride = (n / BRACKET_SAMPLES).max(1);
    let mut sample: Vec<Cand> = (0..n)
        .step_by(stride)
        .filter(|&i| weights[i] > 0.0)
        .map(|i| Cand {
            id: i as u32,
            logit: logits[i],
            w: weights[i],
        })
        .collect();
    sample.sort_unstable_by(rank_cmp);
    let scale = total / weight_sum(&sample);
    let mut acc = 0.0f64;
    let at = sample.iter().position(|x| {
        acc += x.w as f64 * scale;
        acc >= target
    })?;
    // The bracket spans four standard deviations of the sample's position
    // either side of the estimate (the sample is about evenly weighted when
    // this runs), and a few samples more.
    let len = sample.len() as f64;
    let f = at as f64 / len;
    let slack = (4.0 * (f * (1.0 - f) * len).sqrt()) as usize + 4;
    // The bounds; past the ends of the sample, sentinels that rank before or
    // after every token.
    let lo = at
        .checked_sub(slack)
        .map_or(Cand::new(0, f32::INFINITY), |i| sample[i]);
    let hi = sample
        .get(at + slack)
        .copied()
        .unwrap_or(Cand::new(u32::MAX, f32::NEG_INFINITY));
    let above = weight_before(logits, weights, &lo);
    if above >= target {
        return None;
    }
    let mut inside = Vec::new();
    collect_between(logits, weights, block_max, &lo, &hi, &mut inside);
    if above + weight_sum(&inside) < target {
        return None;
    }
    let m = mass_prefix(&mut inside, target - above);
    Some(worst(&inside[..m.min(inside.len())]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::kernels::{weigh, weight};

    fn pseudo_logits(n: usize, distinct: u64, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % distinct) as f32 / 7.0
            })
            .collect()
    }

    fn sorted(values: &[f32]) -> Vec<Cand> {
        let mut all: Vec<Cand> = values
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| Cand::new(i as u32, l))
            .collect();
        all.sort_by(rank_cmp);
        all
    }

    #[test]
    fn top_k_matches_a_full_sort_with_ties() {
        let mut v = pseudo_logits(10_000, 50, 3);
        v[17] = f32::NAN;
        v[9000] = f32::NEG_INFINITY;
        let all = sorted(&v);
        let mut out = Vec::new();
        for k in [1, 2, 40, 63, 64, 65, 500, 2048, 2049, 5000, 9999, 20_000] {
            top_k(&v, k, &mut out);
            out.sort_by(rank_cmp);
            assert_eq!(out, all[..k.min(all.len())], "k = {k}");
        }
    }

    /// The shortest best-first prefix reaching `target`, by brute force.
    fn reference_prefix(sorted: &[Cand], target: f64) -> usize {
        let mut acc = 0.0;
        sorted
            .iter()
            .position(|c| {
                acc += c.w as f64;
                acc >= target
            })
            .map_or(sorted.len(), |i| i + 1)
    }

    fn weighted(v: &[f32], inv_t: f32) -> Vec<Cand> {
        let max = max_of(v);
        let mut all = sorted(v);
        for c in &mut all {
            c.w = weight(c.logit, max, inv_t, 0.0);
        }
        all
    }

    /// `top_p_cut` on a scrambled copy of best-first `all`, as a prefix length.
    fn cut_len(all: &[Cand], target: f64) -> usize {
        let mut c = all.to_vec();
        c.reverse();
        c.rotate_left(all.len() / 3);
        match top_p_cut(&mut c, target) {
            None => all.len(),
            Some(cut) => all.iter().position(|x| *x == cut).unwrap() + 1,
        }
    }

    #[test]
    fn top_p_cut_finds_the_shortest_prefix() {
        // Small (partitioning) and large (bracketed) candidate sets, peaked
        // and nearly even.
        for (n, distinct, inv_t) in [(3000, 300, 1.0), (20_000, 5000, 1.0), (50_000, 40, 0.05)] {
            let all = weighted(&pseudo_logits(n, distinct, 11), inv_t);
            let total: f64 = all.iter().map(|c| c.w as f64).sum();
            for p in [1e-9, 0.1, 0.5, 0.9, 0.95, 0.999, 1.5] {
                let want = reference_prefix(&all, p * total);
                assert_eq!(cut_len(&all, p * total), want, "n = {n}, p = {p}");
            }
        }
    }

    /// The vocabulary's weights at temperature `1 / inv_t`, with block maxima.
    fn stored(v: &[f32], inv_t: f32) -> (Vec<f32>, Vec<f32>, f64) {
        let (mut w, mut sums, mut top) = (Vec::new(), Vec::new(), Vec::new());
        let total = weigh(v, (max_of(v), inv_t, 0.0), &mut w, &mut sums, &mut top);
        (w, top, total)
    }

    #[test]
    fn vocab_cut_matches_the_shortest_prefix() {
        // Nearly even logits: top-p keeps most of the vocabulary.
        let v: Vec<f32> = pseudo_logits(40_000, 10_000, 5)
            .iter()
            .map(|x| x / 500.0)
            .collect();
        let (w, top, total) = stored(&v, 1.0);
        let all = weighted(&v, 1.0);
        for p in [0.05, 0.5, 0.9, 0.95, 0.999, 1.5] {
            let want = reference_prefix(&all, p * total);
            let got = vocab_top_p_cut(&v, &w, &top, total, p * total).expect("bracket missed");
            let got = got.map_or(all.len(), |cut| {
                all.iter().position(|x| *x == cut).unwrap() + 1
            });
            assert_eq!(got, want, "p = {p}");
        }
    }

    #[test]
    fn vocab_cut_reports_a_misleading_sample() {
        // One heavy token where the evenly spaced sample never looks.
        let n = 40_000;
        let mut v: Vec<f32> = (0..n).map(|i| -9.0 - (i % 97) as f32 * 0.01).collect();
        v[n / BRACKET_SAMPLES * 3 + 1] = 0.0;
        let (w, top, total) = stored(&v, 1.0);
        assert_eq!(vocab_top_p_cut(&v, &w, &top, total, 0.5 * total), None);
    }

    #[test]
    fn draw_skips_zero_weights_and_survives_rounding() {
        let c = [
            Cand {
                id: 1,
                logit: 0.0,
                w: 0.0,
            },
            Cand {
                id: 2,
                logit: 0.0,
                w: 1.0,
            },
            Cand {
                id: 3,
                logit: 0.0,
                w: 0.0,
            },
        ];
        assert_eq!(draw(&c, 1.0, 0.0), Some(2));
        assert_eq!(draw(&c, 1.0, 0.999_999_999), Some(2));
        // A total rounded above the walk's sum.
        assert_eq!(draw(&c, 1.5, 0.9), Some(2));
        assert_eq!(draw(&[], 0.0, 0.5), None);
    }
}
