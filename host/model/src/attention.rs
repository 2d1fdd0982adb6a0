//! Attention of every sequence of a batch in one pass over the paged cache,
//! reading keys and values where they lie (no gather, no per-sequence
//! tensor operations): for decode steps and short chunks on the CPU, where
//! the many small operations of per-sequence attention cost more than the
//! arithmetic. Longer chunks, other devices and other dtypes take the
//! general path (gather, then matrix products).

use candle_core::{DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use crate::cache::{BLOCK_TOKENS, KvCache, LayerViews};

/// Query-key pairs up to which a sequence's chunk goes through the fused
/// kernel (a decode step always does): it computes one pair at a time, so a
/// long chunk deep into a long prompt is better served by the matrix
/// products of the general path (measured with `bench prefill`: every
/// chunk of 16 or fewer through the fused kernel took a stream's gap p99
/// beside a 2,311-token prompt from ~150 to 209 ms).
pub const FUSED_MAX_PAIRS: usize = 4096;

/// One sequence's part of the batch: its cache (the step's keys and values
/// already written at `[start, start + n)`), and its queries' first row in
/// the batch.
#[derive(Clone, Copy)]
pub struct SeqQueries<'a> {
    pub cache: &'a KvCache,
    pub start: usize,
    pub n: usize,
    pub row: usize,
}

/// The shape of grouped-query attention.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Whether [`attend`] suits a sequence's part of a step on this device and
/// dtype.
pub fn fused_suits(device: &Device, dtype: DType, s: &SeqQueries) -> bool {
    device.is_cpu() && dtype == DType::F32 && (s.n == 1 || s.n * (s.start + s.n) <= FUSED_MAX_PAIRS)
}

/// Causal attention of each sequence's rows of `q` (`[rows, heads *
/// head_dim]`, rotary applied) against layer `layer` of its cache, whose
/// rows are `kv_heads * head_dim` wide. Gives the sequences' outputs one
/// after another, `[Σ n, heads * head_dim]`.
pub fn attend(q: &Tensor, layer: usize, seqs: &[SeqQueries], shape: Heads) -> Result<Tensor> {
    let Heads {
        heads,
        kv_heads,
        head_dim: hd,
    } = shape;
    let width = heads * hd;
    let rows = q.dim(0)?;
    let total: usize = seqs.iter().map(|s| s.n).sum();
    let q = q.contiguous()?;
    let (q_storage, q_layout) = q.storage_and_layout();
    let Storage::Cpu(q_cpu) = &*q_storage else {
        candle_core::bail!("fused attention runs on the CPU");
    };
    let q_all = &q_cpu.as_slice::<f32>()?[q_layout.start_offset()..][..rows * width];
    if seqs.iter().any(|s| s.row + s.n > rows) {
        candle_core::bail!("a sequence's queries lie past the {rows} rows given");
    }

    let views = LayerViews::new(layer, seqs.iter().map(|s| s.cache))?;
    let guards: Vec<_> = views
        .stores()
        .iter()
        .map(|s| (s.k.storage_and_layout(), s.v.storage_and_layout()))
        .collect();
    let slices = guards
        .iter()
        .map(|((k, kl), (v, vl))| match (&**k, &**v) {
            (Storage::Cpu(k), Storage::Cpu(v)) => Ok((
                &k.as_slice::<f32>()?[kl.start_offset()..],
                &v.as_slice::<f32>()?[vl.start_offset()..],
            )),
            _ => candle_core::bail!("fused attention runs on the CPU"),
        })
        .collect::<Result<Vec<_>>>()?;
    let kv_width = kv_heads * hd;
    for s in views.stores() {
        if s.k.dim(1)? != kv_width || s.v.dim(1)? != kv_width {
            candle_core::bail!(
                "cache rows are {} and {} wide, attention expects {kv_width}",
                s.k.dim(1)?,
                s.v.dim(1)?
            );
        }
    }

    let mut out = vec![0f32; total * width];
    let scale = 1.0 / (hd as f32).sqrt();
    let blocks = seqs
        .iter()
        .map(|s| views.block_rows(s.cache, s.start + s.n))
        .collect::<Result<Vec<_>>>()?;
    let run = |s: &SeqQueries,
               blocks: &[(usize, usize)],
               heads_of: std::ops::Range<usize>,
               out: &mut [f32]| {
        Job {
            q: &q_all[s.row * width..][..s.n * width],
            out,
            out_width: heads_of.len() * hd,
            heads_of,
            blocks,
            slices: &slices,
            start: s.start,
            shape,
            scale,
        }
        .run()
    };
    if seqs.len() >= 2 * rayon::current_num_threads() {
        // Enough sequences to keep every thread busy: one task each,
        // writing its own rows of the output.
        let mut parts = Vec::with_capacity(seqs.len());
        let mut rest = out.as_mut_slice();
        for (s, b) in seqs.iter().zip(&blocks) {
            let (mine, tail) = rest.split_at_mut(s.n * width);
            parts.push((s, b, mine));
            rest = tail;
        }
        parts
            .into_par_iter()
            .for_each(|(s, b, out)| run(s, b, 0..heads, out));
    } else {
        // A few sequences (one stream, or a short prompt beside it): one
        // task per sequence and key/value head, each into a buffer of its
        // own, so every thread reads its share of the cache.
        let rep = heads / kv_heads;
        let tasks: Vec<(usize, usize)> = (0..seqs.len())
            .flat_map(|i| (0..kv_heads).map(move |g| (i, g)))
            .collect();
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(i, g)| {
                let mut buf = vec![0f32; seqs[i].n * rep * hd];
                run(&seqs[i], &blocks[i], g * rep..(g + 1) * rep, &mut buf);
                buf
            })
            .collect();
        let firsts: Vec<usize> = seqs
            .iter()
            .scan(0, |at, s| {
                let first = *at;
                *at += s.n;
                Some(first)
            })
            .collect();
        for (&(i, g), buf) in tasks.iter().zip(&results) {
            for t in 0..seqs[i].n {
                let row = (firsts[i] + t) * width + g * rep * hd;
                out[row..row + rep * hd].copy_from_slice(&buf[t * rep * hd..][..rep * hd]);
            }
        }
    }
    drop(slices);
    drop(guards);
    Tensor::from_vec(out, (total, width), q.device())
}

/// One sequence's attention.
struct Job<'a> {
    q: &'a [f32],
    /// The output of heads `heads_of`: per query, `out_width` numbers, the
    /// first head's first.
    out: &'a mut [f32],
    out_width: usize,
    heads_of: std::ops::Range<usize>,
    /// Per block: index into `slices`, first row.
    blocks: &'a [(usize, usize)],
    slices: &'a [(&'a [f32], &'a [f32])],
    start: usize,
    shape: Heads,
    scale: f32,
}

impl Job<'_> {
    fn run(self) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { self.run_avx512() };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                return unsafe { self.run_avx2() };
            }
        }
        self.body()
    }

    /// Heads 64 or 128 wide (most models') through the AVX-512 kernel;
    /// others through the body compiled for AVX-512 (its loops vectorise
    /// 16 wide).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn run_avx512(self) {
        match self.shape.head_dim {
            64 => self.heads_avx512::<4>(),
            128 => self.heads_avx512::<8>(),
            _ => self.body(),
        }
    }

    /// Its loops mirror [`Job::body`]'s on purpose: walking the blocks
    /// through one shared helper (an iterator, or a closure per position)
    /// cost 15–20% of a 16-sequence decode step.
    ///
    /// Each head with its query and its output in registers (`C` vectors
    /// of 16), so the weighted sum of values is not a store and a load per
    /// key, and each score is reduced by a shuffle tree rather than lane by
    /// lane. `C` is even.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    fn heads_avx512<const C: usize>(self) {
        use std::arch::x86_64::*;
        let Heads {
            heads,
            kv_heads,
            head_dim: hd,
        } = self.shape;
        debug_assert!(hd == 16 * C && C.is_multiple_of(2));
        let rep = heads / kv_heads;
        let width = heads * hd;
        let kv_width = kv_heads * hd;
        let n = self.q.len() / width;
        // `hd` floats from the start of `row` (bounds checked by the slice).
        let load = |row: &[f32], c: usize| -> __m512 {
            let row = &row[..hd];
            // SAFETY: `row` holds `hd` = 16 * C floats and `c` < C.
            unsafe { _mm512_loadu_ps(row.as_ptr().add(16 * c)) }
        };
        let mut scores = Vec::with_capacity(self.start + n);
        let h0 = self.heads_of.start;
        for t in 0..n {
            let ctx = self.start + t + 1;
            for h in self.heads_of.clone() {
                let g = h / rep;
                let q_row = &self.q[t * width + h * hd..][..hd];
                let q: [__m512; C] = std::array::from_fn(|c| load(q_row, c));
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for (b, &(si, row)) in self.blocks.iter().enumerate() {
                    let first = b * BLOCK_TOKENS;
                    if first >= ctx {
                        break;
                    }
                    let keys = self.slices[si].0;
                    for p in 0..(ctx - first).min(BLOCK_TOKENS) {
                        let k = &keys[(row + p) * kv_width + g * hd..][..hd];
                        let mut a0 = _mm512_mul_ps(q[0], load(k, 0));
                        let mut a1 = _mm512_mul_ps(q[1], load(k, 1));
                        for c in (2..C).step_by(2) {
                            a0 = _mm512_fmadd_ps(q[c], load(k, c), a0);
                            a1 = _mm512_fmadd_ps(q[c + 1], load(k, c + 1), a1);
                        }
                        let s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * self.scale;
                        max = max.max(s);
                        scores.push(s);
                    }
                }
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let mut acc = [_mm512_setzero_ps(); C];
                for (b, &(si, row)) in self.blocks.iter().enumerate() {
                    let first = b * BLOCK_TOKENS;
                    if first >= ctx {
                        break;
                    }
                    let values = self.slices[si].1;
                    for p in 0..(ctx - first).min(BLOCK_TOKENS) {
                        let v = &values[(row + p) * kv_width + g * hd..][..hd];
                        let w = _mm512_set1_ps(scores[first + p]);
                        for (c, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(w, load(v, c), *a);
                        }
                    }
                }
                let inv = _mm512_set1_ps(1.0 / sum);
                let o = &mut self.out[t * self.out_width + (h - h0) * hd..][..hd];
                for (c, a) in acc.iter().enumerate() {
                    // SAFETY: `o` holds `hd` = 16 * C floats and `c` < C.
                    unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), _mm512_mul_ps(*a, inv)) };
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(self) {
        self.body()
    }

    #[inline(always)]
    fn body(self) {
        let Heads {
            heads,
            kv_heads,
            head_dim: hd,
        } = self.shape;
        let rep = heads / kv_heads;
        let width = heads * hd;
        let kv_width = kv_heads * hd;
        let n = self.q.len() / width;
        let mut scores = Vec::with_capacity(self.start + n);
        let h0 = self.heads_of.start;
        for t in 0..n {
            let ctx = self.start + t + 1;
            for h in self.heads_of.clone() {
                let g = h / rep;
                let q = &self.q[t * width + h * hd..][..hd];
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for (b, &(si, row)) in self.blocks.iter().enumerate() {
                    let first = b * BLOCK_TOKENS;
                    if first >= ctx {
                        break;
                    }
                    let keys = self.slices[si].0;
                    for p in 0..(ctx - first).min(BLOCK_TOKENS) {
                        let k = &keys[(row + p) * kv_width + g * hd..][..hd];
                        let s = dot(q, k) * self.scale;
                        max = max.max(s);
                        scores.push(s);
                    }
                }
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut self.out[t * self.out_width + (h - h0) * hd..][..hd];
                for (b, &(si, row)) in self.blocks.iter().enumerate() {
                    let first = b * BLOCK_TOKENS;
                    if first >= ctx {
                        break;
                    }
                    let values = self.slices[si].1;
                    for p in 0..(ctx - first).min(BLOCK_TOKENS) {
                        let v = &values[(row + p) * kv_width + g * hd..][..hd];
                        axpy(o, scores[first + p], v);
                    }
                }
                let inv = 1.0 / sum;
                for x in o.iter_mut() {
                    *x *= inv;
                }
            }
        }
    }
}

/// `a · b`, in sixteen lanes (so the compiler can vectorise it).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// `o += w · v`.
#[inline(always)]
fn axpy(o: &mut [f32], w: f32, v: &[f32]) {
    for (o, v) in o.iter_mut().zip(v) {
        *o += w * v;
    }
}
