//! The sampler's passes over the whole vocabulary: maxima, weights, masks
//! and the draw.
//!
//! They are written as eight independent lanes over blocks of [`BLOCK`]
//! entries, which the compiler turns into SIMD code while keeping the order
//! of every floating-point operation fixed: the results are the same bits on
//! every platform, which the sampler's reproducibility rests on. NaN means
//! "never pick" and -inf "probability zero" throughout.

use super::select::Cand;

/// Entries per block: the unit of block maxima, block weights and skipping.
pub(crate) const BLOCK: usize = 64;
const LANES: usize = 8;

/// Scaled logits below this have weight 0: `e^-87` is near the smallest
/// normal `f32`, and the mass of a whole vocabulary of them is lost in the
/// rounding of the largest weight (which is 1).
const EXP_FLOOR: f32 = -87.0;

/// `e^x` for `x <= 0`, to about 2 ulp, from operations that are exact or
/// correctly rounded in IEEE arithmetic, so it gives the same bits
/// everywhere (unlike the platform's `expf`) and vectorises. Arguments below
/// [`EXP_FLOOR`] (NaN included) are clamped to it; callers discard them.
#[inline(always)]
pub(crate) fn exp_nonpos(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^11.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer and leaves it in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x > EXP_FLOOR { x } else { EXP_FLOOR };
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r for |r| <= ln(2)/2; the first omitted term is
    // below 1.2e-7 relative.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n built from its exponent bits; n is in [-126, 0] for clamped x.
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    p * scale
}

/// The weight of a logit: `exp((logit - max) * inv_t)`, or 0 for NaN, -inf,
/// weights below `w_min`, and scaled logits below [`EXP_FLOOR`].
#[inline(always)]
pub(crate) fn weight(logit: f32, max: f32, inv_t: f32, w_min: f32) -> f32 {
    let s = (logit - max) * inv_t;
    let w = exp_nonpos(s);
    if s >= EXP_FLOOR && w >= w_min { w } else { 0.0 }
}

/// The largest entry, ignoring NaN; -inf for an empty or all-NaN slice.
#[inline(always)]
pub(crate) fn max_of(values: &[f32]) -> f32 {
    if let Ok(block) = <&[f32; BLOCK]>::try_from(values) {
        return max_of_block(block);
    }
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            // NaN never wins `>`.
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.into_iter().chain(chunks.remainder().iter().copied()) {
        m = if v > m { v } else { m };
    }
    m
}

/// A full block's maximum by halving, so that no step waits on the one
/// before (a running maximum would). NaN becomes -inf at the first level.
#[inline(always)]
fn max_of_block(b: &[f32; BLOCK]) -> f32 {
    const NEG: f32 = f32::NEG_INFINITY;
    let mut a = [0.0f32; BLOCK / 2];
    for i in 0..BLOCK / 2 {
        let x = if b[i] > NEG { b[i] } else { NEG };
        let y = b[i + BLOCK / 2];
        a[i] = if y > x { y } else { x };
    }
    let mut half = BLOCK / 4;
    while half > 0 {
        for i in 0..half {
            a[i] = if a[i + half] > a[i] {
                a[i + half]
            } else {
                a[i]
            };
        }
        half /= 2;
    }
    a[0]
}

/// Defines `$name` to run `$generic`, compiled for AVX2 when the CPU has it
/// (checked once per process, then a cached load). Only the vector width
/// changes: the operations and their order are the generic code's, and Rust
/// never fuses a multiply with an add, so the results are the same bits.
macro_rules! with_avx2 {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $generic:ident;) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(crate) use with_avx2;

with_avx2! {
    /// The largest logit, ignoring NaN (-inf when nothing is above it).
    pub(crate) fn max_all(logits: &[f32]) -> f32 = max_all_generic;
}

#[inline(always)]
fn max_all_generic(logits: &[f32]) -> f32 {
    // Four vectors of eight lanes, so that consecutive steps do not wait on
    // each other.
    const WIDE: usize = 4 * LANES;
    let mut acc = [f32::NEG_INFINITY; WIDE];
    let mut chunks = logits.chunks_exact(WIDE);
    for c in &mut chunks {
        for j in 0..WIDE {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = max_of(chunks.remainder());
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

with_avx2! {
    /// The lowest index holding exactly `value`, found block by block.
    pub(crate) fn first_index_of(logits: &[f32], value: f32) -> Option<usize> = first_index_of_generic;
}

#[inline(always)]
fn first_index_of_generic(logits: &[f32], value: f32) -> Option<usize> {
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        if block.iter().fold(false, |hit, &l| hit | (l == value)) {
            return block
                .iter()
                .position(|&l| l == value)
                .map(|i| b * BLOCK + i);
        }
    }
    None
}

/// The sum of weights in a fixed order: eight lanes, then the lanes in turn,
/// then the remainder.
#[inline(always)]
fn lane_sum(w: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = w.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    let mut s = 0.0f32;
    for a in acc.into_iter().chain(chunks.remainder().iter().copied()) {
        s += a;
    }
    s
}

with_avx2! {
    /// Computes every token's weight (`shape` is `(max, 1 / temperature,
    /// w_min)`, see [`weight`]) into `weights`, resized to the
    /// vocabulary, and each block's sum and largest weight into `sums` and
    /// `maxima`; returns the total, summed across blocks in `f64`.
    pub(crate) fn weigh(
        logits: &[f32],
        shape: (f32, f32, f32),
        weights: &mut Vec<f32>,
        sums: &mut Vec<f32>,
        maxima: &mut Vec<f32>,
    ) -> f64 = weigh_generic;
}

#[inline(always)]
fn weigh_generic(
    logits: &[f32],
    (max, inv_t, w_min): (f32, f32, f32),
    weights: &mut Vec<f32>,
    sums: &mut Vec<f32>,
    maxima: &mut Vec<f32>,
) -> f64 {
    let blocks = logits.len().div_ceil(BLOCK);
    weights.resize(logits.len(), 0.0);
    sums.resize(blocks, 0.0);
    maxima.resize(blocks, 0.0);
    let mut total = 0.0f64;
    let per_block = logits.chunks(BLOCK).zip(weights.chunks_mut(BLOCK));
    for ((block, out), (sum, top)) in per_block.zip(sums.iter_mut().zip(maxima.iter_mut())) {
        for (o, &l) in out.iter_mut().zip(block) {
            *o = weight(l, max, inv_t, w_min);
        }
        *sum = lane_sum(out);
        *top = max_of(out);
        total += *sum as f64;
    }
    total
}

with_avx2! {
    /// The total weight of the vocabulary, as [`weigh`] sums it, without
    /// storing anything.
    pub(crate) fn total_weight(logits: &[f32], max: f32, inv_t: f32) -> f64 = total_weight_generic;
}

#[inline(always)]
fn total_weight_generic(logits: &[f32], max: f32, inv_t: f32) -> f64 {
    let mut total = 0.0f64;
    let mut w = [0.0f32; BLOCK];
    for block in logits.chunks(BLOCK) {
        let out = &mut w[..block.len()];
        for (o, &l) in out.iter_mut().zip(block) {
            *o = weight(l, max, inv_t, 0.0);
        }
        total += lane_sum(out) as f64;
    }
    total
}

/// Appends to `out`, in id order, the tokens of blocks whose largest weight
/// is at least `skip_below` for which `member(logit, id, weight)` holds.
/// Membership is worked out for a whole block without branches, into a bit
/// per token, and only members are visited: a branch per token would be
/// mispredicted whenever membership looks random.
#[inline(always)]
fn gather(
    logits: &[f32],
    weights: &[f32],
    block_max: &[f32],
    skip_below: f32,
    member: impl Fn(f32, u32, f32) -> bool,
    out: &mut Vec<Cand>,
) {
    let blocks = logits.chunks(BLOCK).zip(weights.chunks(BLOCK));
    for (b, ((lb, wb), &top)) in blocks.zip(block_max).enumerate() {
        if top < skip_below {
            continue;
        }
        let base = (b * BLOCK) as u32;
        let mut flags = [0u8; BLOCK];
        for (j, (f, (&l, &w))) in flags.iter_mut().zip(lb.iter().zip(wb)).enumerate() {
            *f = member(l, base + j as u32, w) as u8;
        }
        let mut bits = 0u64;
        for (j, &f) in flags.iter().enumerate() {
            bits |= (f as u64) << j;
        }
        while bits != 0 {
            let j = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            out.push(Cand {
                id: base + j as u32,
                logit: lb[j],
                w: wb[j],
            });
        }
    }
}

with_avx2! {
    /// Collects the tokens whose stored weight is at least `w_lo` (and above
    /// 0), in id order, skipping blocks whose largest weight is below it.
    pub(crate) fn collect(
        logits: &[f32],
        weights: &[f32],
        block_max: &[f32],
        w_lo: f32,
        out: &mut Vec<Cand>,
    ) = collect_generic;
}

#[inline(always)]
fn collect_generic(
    logits: &[f32],
    weights: &[f32],
    block_max: &[f32],
    w_lo: f32,
    out: &mut Vec<Cand>,
) {
    out.clear();
    let w_lo = w_lo.max(f32::MIN_POSITIVE);
    gather(logits, weights, block_max, w_lo, |_, _, w| w >= w_lo, out);
}

with_avx2! {
    /// Collects the tokens of weight above 0 ranked at or after `lo` and at
    /// or before `hi`, in id order. Blocks whose largest weight is below
    /// `hi`'s (with a margin: the polynomial need not be monotonic to the
    /// last ulp) cannot reach `hi` and are skipped.
    pub(crate) fn collect_between(
        logits: &[f32],
        weights: &[f32],
        block_max: &[f32],
        lo: &Cand,
        hi: &Cand,
        out: &mut Vec<Cand>,
    ) = collect_between_generic;
}

#[inline(always)]
fn collect_between_generic(
    logits: &[f32],
    weights: &[f32],
    block_max: &[f32],
    lo: &Cand,
    hi: &Cand,
    out: &mut Vec<Cand>,
) {
    out.clear();
    let skip_below = (hi.w * (1.0 - 1e-5)).max(f32::MIN_POSITIVE);
    let member = |l: f32, id: u32, w: f32| {
        (w > 0.0) & ranks_before(l, id, hi, false) & !ranks_before(l, id, lo, true)
    };
    gather(logits, weights, block_max, skip_below, member, out);
}

with_avx2! {
    /// How many stored weights are at least `w_lo` (and above 0), skipping
    /// blocks whose largest weight is below it.
    pub(crate) fn count_at_least(weights: &[f32], block_max: &[f32], w_lo: f32) -> usize =
        count_at_least_generic;
}

#[inline(always)]
fn count_at_least_generic(weights: &[f32], block_max: &[f32], w_lo: f32) -> usize {
    let w_lo = w_lo.max(f32::MIN_POSITIVE);
    let mut n = 0;
    for (block, &top) in weights.chunks(BLOCK).zip(block_max) {
        if top >= w_lo {
            n += block.iter().map(|&w| (w >= w_lo) as usize).sum::<usize>();
        }
    }
    n
}

/// Whether the token `id` with logit `l` ranks at or before `bound`
/// (see [`rank_cmp`](super::select::rank_cmp)), strictly before with
/// `strict`.
#[inline(always)]
fn ranks_before(l: f32, id: u32, bound: &Cand, strict: bool) -> bool {
    let tie = if strict {
        id < bound.id
    } else {
        id <= bound.id
    };
    (l > bound.logit) | ((l == bound.logit) & tie)
}

with_avx2! {
    /// The total stored weight of the tokens ranked strictly before `bound`.
    pub(crate) fn weight_before(logits: &[f32], weights: &[f32], bound: &Cand) -> f64 =
        weight_before_generic;
}

#[inline(always)]
fn weight_before_generic(logits: &[f32], weights: &[f32], bound: &Cand) -> f64 {
    let mut total = 0.0f64;
    let mut kept = [0.0f32; BLOCK];
    for (b, (lb, wb)) in logits.chunks(BLOCK).zip(weights.chunks(BLOCK)).enumerate() {
        let base = (b * BLOCK) as u32;
        let kept = &mut kept[..lb.len()];
        for (j, (k, (&l, &w))) in kept.iter_mut().zip(lb.iter().zip(wb)).enumerate() {
            *k = if ranks_before(l, base + j as u32, bound, true) {
                w
            } else {
                0.0
            };
        }
        total += lane_sum(kept) as f64;
    }
    total
}

/// Which tokens a draw from the whole vocabulary may pick: those ranked at
/// or before `cut` whose weight is at least `w_min`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keep {
    pub cut: Cand,
    pub w_min: f32,
}

impl Keep {
    /// Every token with a weight.
    pub fn all() -> Self {
        Keep {
            cut: Cand::new(u32::MAX, f32::NEG_INFINITY),
            w_min: 0.0,
        }
    }

    #[inline(always)]
    fn holds(&self, l: f32, id: u32, w: f32) -> bool {
        ranks_before(l, id, &self.cut, false) & (w >= self.w_min)
    }
}

with_avx2! {
    /// Each block's total weight of the tokens `keep` holds, into `sums`;
    /// returns their total. The stored weights are left as they are.
    pub(crate) fn kept_block_sums(
        logits: &[f32],
        weights: &[f32],
        keep: &Keep,
        sums: &mut [f32],
    ) -> f64 = kept_block_sums_generic;
}

#[inline(always)]
fn kept_block_sums_generic(logits: &[f32], weights: &[f32], keep: &Keep, sums: &mut [f32]) -> f64 {
    let mut total = 0.0f64;
    let mut kept = [0.0f32; BLOCK];
    let per_block = logits.chunks(BLOCK).zip(weights.chunks(BLOCK));
    for (b, ((lb, wb), sum)) in per_block.zip(sums.iter_mut()).enumerate() {
        let base = (b * BLOCK) as u32;
        let kept = &mut kept[..lb.len()];
        for (j, (k, (&l, &w))) in kept.iter_mut().zip(lb.iter().zip(wb)).enumerate() {
            *k = if keep.holds(l, base + j as u32, w) {
                w
            } else {
                0.0
            };
        }
        *sum = lane_sum(kept);
        total += *sum as f64;
    }
    total
}

/// Draws from the whole vocabulary with stored weights and the block sums of
/// the tokens `keep` holds (from [`weigh`] or [`kept_block_sums`]): the
/// block where the running sum passes `u * total`, then the token within it.
/// `None` only when every kept weight is 0.
pub(crate) fn draw_from_blocks(
    logits: &[f32],
    weights: &[f32],
    sums: &[f32],
    (total, keep): (f64, &Keep),
    u: f64,
) -> Option<u32> {
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last_nonzero = None;
    for (b, &s) in sums.iter().enumerate() {
        if s <= 0.0 {
            continue;
        }
        last_nonzero = Some(b);
        if acc + s as f64 > target {
            return Some(draw_in_block(logits, weights, keep, b, (acc, target)));
        }
        acc += s as f64;
    }
    // Rounding put the target past the last block: take its last token.
    let b = last_nonzero?;
    let past = (f64::NEG_INFINITY, f64::INFINITY);
    Some(draw_in_block(logits, weights, keep, b, past))
}

pub(crate) fn draw_in_block(
    logits: &[f32],
    weights: &[f32],
    keep: &Keep,
    b: usize,
    (mut acc, target): (f64, f64),
) -> u32 {
    let start = b * BLOCK;
    let end = (start + BLOCK).min(weights.len());
    let mut last = start;
    for i in start..end {
        let w = weights[i];
        if w > 0.0 && keep.holds(logits[i], i as u32, w) {
            last = i;
            acc += w as f64;
            if acc > target {
                return last as u32;
            }
        }
    }
    // The block's lane sum rounded above its sequential sum.
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut x = 0.0f32;
        let mut worst = 0.0f64;
        while x > -87.0 {
            let want = (x as f64).exp();
            let got = exp_nonpos(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x -= 0.001_37;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-0.0), 1.0);
    }

    #[test]
    fn weights_of_nan_and_neg_inf_are_zero() {
        assert_eq!(weight(f32::NAN, 1.0, 1.0, 0.0), 0.0);
        assert_eq!(weight(f32::NEG_INFINITY, 1.0, 1.0, 0.0), 0.0);
        assert_eq!(weight(1.0, 1.0, 1.0, 0.0), 1.0);
        assert_eq!(weight(-200.0, 0.0, 1.0, 0.0), 0.0);
        assert_eq!(weight(-1.0, 0.0, 1.0, 0.5), 0.0, "below w_min");
    }

    #[test]
    fn max_ignores_nan() {
        for n in [37, 64] {
            let v: Vec<f32> = (0..n)
                .map(|i| if i == 20 { 5.0 } else { f32::NAN })
                .collect();
            assert_eq!(max_of(&v), 5.0);
        }
        assert_eq!(max_of(&[f32::NAN; 64]), f32::NEG_INFINITY);
        let mut v = [f32::NEG_INFINITY; 64];
        v[63] = -1.0;
        assert_eq!(max_of(&v), -1.0);
        assert_eq!(max_of(&[f32::NAN; 9]), f32::NEG_INFINITY);
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn avx2_and_generic_agree_to_the_bit() {
        let v: Vec<f32> = (0..10_000)
            .map(|i| ((i * 7919 % 1013) as f32 / 37.0) - 20.0)
            .collect();
        let max = max_of(&v);
        let (mut w1, mut s1, mut m1) = (Vec::new(), Vec::new(), Vec::new());
        let (mut w2, mut s2, mut m2) = (Vec::new(), Vec::new(), Vec::new());
        let t1 = weigh(&v, (max, 1.3, 0.0), &mut w1, &mut s1, &mut m1);
        let t2 = weigh_generic(&v, (max, 1.3, 0.0), &mut w2, &mut s2, &mut m2);
        assert_eq!(t1.to_bits(), t2.to_bits());
        assert!(w1.iter().zip(&w2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!((s1, m1), (s2, m2));
        assert_eq!(
            total_weight(&v, max, 0.7),
            total_weight_generic(&v, max, 0.7)
        );
        assert_eq!(max_all(&v), max_all_generic(&v));
    }

    #[test]
    fn tokens_are_kept_by_rank_and_floor() {
        let v = [0.0f32, -1.0, 0.0, -2.0, f32::NAN, -1.0];
        let (mut w, mut sums, mut top) = (Vec::new(), Vec::new(), Vec::new());
        let total = weigh(&v, (0.0, 1.0, 0.0), &mut w, &mut sums, &mut top);
        assert_eq!(count_at_least(&w, &top, 0.3), 4);
        assert_eq!(count_at_least(&w, &top, 0.0), 5, "NaN has no weight");
        let e1 = weight(-1.0, 0.0, 1.0, 0.0) as f64;
        let bound = Cand::new(5, -1.0);
        assert!((weight_before(&v, &w, &bound) - (2.0 + e1)).abs() < 1e-6);
        let all = kept_block_sums(&v, &w, &Keep::all(), &mut sums.clone());
        assert_eq!(all, total);
        // Keep through token 1 (logit -1): tokens 0, 2 and 1.
        let keep = Keep {
            cut: Cand::new(1, -1.0),
            w_min: 0.0,
        };
        let kept = kept_block_sums(&v, &w, &keep, &mut sums);
        assert!((kept - (2.0 + e1)).abs() < 1e-6);
        let picks: Vec<u32> = (0..100)
            .map(|i| draw_from_blocks(&v, &w, &sums, (kept, &keep), i as f64 / 100.0).unwrap())
            .collect();
        assert!(picks.iter().all(|t| [0, 1, 2].contains(t)), "{picks:?}");
        assert!([0, 1, 2].iter().all(|t| picks.contains(t)), "{picks:?}");
        // A weight floor drops token 1.
        let keep = Keep { w_min: 0.5, ..keep };
        let kept = kept_block_sums(&v, &w, &keep, &mut sums);
        assert_eq!(kept, 2.0);
    }
}
