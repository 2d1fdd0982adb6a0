//! The inner loops: AVX-512 or AVX2 + FMA + F16C, chosen at run time, and a
//! portable path for every other machine.
//!
//! A row's dot product with activations `x` is
//! `Σ_b d_b · (Σ_i q_bi · x_bi) + Σ_b o_b · Σ_i x_bi`, where `o_b` is the
//! block's offset (`m` for Q4_1, `−8·d` for Q4_0, none for Q8_0). The block
//! sums of `x` are computed once per activation row and shared by every
//! weight row, so the offsets cost one vector FMA per sixteen blocks.

use super::blocks::{self, BLOCK, Format, Row, f16_bits};

/// Which implementation of the inner loops this machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernels {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernels {
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static DETECTED: OnceLock<Kernels> = OnceLock::new();
            return *DETECTED.get_or_init(|| {
                let avx2 = std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c");
                if avx2 && std::is_x86_feature_detected!("avx512f") {
                    Kernels::Avx512
                } else if avx2 {
                    Kernels::Avx2
                } else {
                    Kernels::Portable
                }
            });
        }
        #[allow(unreachable_code)]
        Kernels::Portable
    }

    /// Every implementation this machine can run, for tests.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernels> {
        let mut all = vec![Kernels::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            match Kernels::detect() {
                Kernels::Avx512 => all.extend([Kernels::Avx2, Kernels::Avx512]),
                Kernels::Avx2 => all.push(Kernels::Avx2),
                Kernels::Portable => {}
            }
        }
        all
    }

    /// Σ_k W[row][k] · x[k], with `sums[b]` the sum of x over block b.
    pub(crate) fn dot(self, row: Row<'_>, x: &[f32], sums: &[f32]) -> f32 {
        assert!(x.len() >= row.scales.len() * BLOCK && sums.len() >= row.scales.len());
        match self {
            Kernels::Portable => dot_portable(row, x, sums),
            // SAFETY: `detect` chose these variants only where the CPU has
            // the features they are compiled for; lengths are checked above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { avx2::dot(row, x, sums) },
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { avx512::dot(row, x, sums) },
        }
    }

    /// `R` dot products of one weight row with `R` activation rows at once:
    /// each block is expanded once, its offset folded in, and used `R`
    /// times. `None` when this machine has no such kernel (the caller
    /// expands the row instead).
    pub(crate) fn dot_rows<const R: usize>(self, row: Row<'_>, x: [&[f32]; R]) -> Option<[f32; R]> {
        for x in &x {
            assert!(x.len() >= row.scales.len() * BLOCK);
        }
        match self {
            // SAFETY: as in `dot`; lengths are checked above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => Some(unsafe { avx512::dot_rows(row, x) }),
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 if R <= 4 => Some(unsafe { avx2::dot_rows(row, x) }),
            _ => None,
        }
    }

    /// Expand a row of blocks to f32, bit-identical to ggml's dequantization.
    pub(crate) fn expand(self, row: Row<'_>, out: &mut [f32]) {
        assert!(out.len() >= row.scales.len() * BLOCK);
        match self {
            Kernels::Portable => blocks::expand_scalar(row, out),
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 | Kernels::Avx512 => unsafe { avx2::expand(row, out) },
        }
    }

    /// Σ a[k] · b[k].
    pub(crate) fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        match self {
            Kernels::Portable => dot_f32_portable(a, b),
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 | Kernels::Avx512 => unsafe { avx2::dot_f32(a, b) },
        }
    }
}

/// The offset of block `b`: weight = q · d + offset.
#[inline]
fn offset(row: Row<'_>, b: usize) -> f32 {
    match row.format {
        Format::Q4_0 => -8.0 * f16_bits(row.scales[b]),
        Format::Q4_1 => f16_bits(row.mins[b]),
        Format::Q8_0 => 0.0,
    }
}

fn dot_portable(row: Row<'_>, x: &[f32], sums: &[f32]) -> f32 {
    let qb = row.format.quant_bytes();
    let mut total = 0f32;
    for (b, (q, xb)) in row
        .quants
        .chunks_exact(qb)
        .zip(x.chunks_exact(BLOCK))
        .enumerate()
    {
        let s = match row.format {
            Format::Q8_0 => q.iter().zip(xb).map(|(&v, &x)| (v as i8) as f32 * x).sum(),
            Format::Q4_0 | Format::Q4_1 => (0..16)
                .map(|j| (q[j] & 0x0F) as f32 * xb[j] + (q[j] >> 4) as f32 * xb[j + 16])
                .sum::<f32>(),
        };
        total += f16_bits(row.scales[b]) * s + offset(row, b) * sums[b];
    }
    total
}

fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, so the compiler can vectorise without reassociating.
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::blocks::{BLOCK, Format, Row};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Eight f16 values (bits) as f32; short tails are padded with zeros.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn load8_f16(bits: &[u16]) -> __m256 {
        let mut buf = [0u16; 8];
        let n = bits.len().min(8);
        buf[..n].copy_from_slice(&bits[..n]);
        // SAFETY: `buf` holds 8 u16, the 16 bytes loaded.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(buf.as_ptr() as *const __m128i) })
    }

    /// The 32 weights of a block before scale and offset, as four vectors
    /// of eight (weights 0-7, 8-15, 16-23, 24-31).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block_weights(format: Format, q: &[u8]) -> [__m256; 4] {
        let p = q.as_ptr();
        // SAFETY: `q` is one block of quants: 16 bytes for Q4, 32 for Q8.
        unsafe {
            match format {
                Format::Q8_0 => [
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        p.add(8) as *const __m128i
                    ))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        p.add(16) as *const __m128i
                    ))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        p.add(24) as *const __m128i
                    ))),
                ],
                Format::Q4_0 | Format::Q4_1 => {
                    let v = _mm_loadu_si128(p as *const __m128i);
                    let mask = _mm_set1_epi8(0x0F);
                    let lo = _mm_and_si128(v, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
                    [
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                    ]
                }
            }
        }
    }

    /// Σ_i q_i · x_i over one block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block_dot(format: Format, q: &[u8], x: &[f32]) -> __m256 {
        let w = block_weights(format, q);
        let p = x.as_ptr();
        // SAFETY: `x` holds the block's 32 floats.
        unsafe {
            let s = _mm256_mul_ps(w[0], _mm256_loadu_ps(p));
            let s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(p.add(8)), s);
            let s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(p.add(16)), s);
            _mm256_fmadd_ps(w[3], _mm256_loadu_ps(p.add(24)), s)
        }
    }

    /// Σ_b offset_b · sums_b over all blocks of `row`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn offsets(row: Row<'_>, sums: &[f32]) -> f32 {
        let (bits, scale) = match row.format {
            Format::Q8_0 => return 0.0,
            Format::Q4_0 => (row.scales, -8.0),
            Format::Q4_1 => (row.mins, 1.0),
        };
        let nb = bits.len();
        let full = nb / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut b = 0;
        // SAFETY: full groups of 8 stay below `nb`; `sums` has `nb` entries.
        unsafe {
            while b < full {
                let o = _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().add(b) as *const __m128i));
                acc = _mm256_fmadd_ps(o, _mm256_loadu_ps(sums.as_ptr().add(b)), acc);
                b += 8;
            }
        }
        let mut total = hsum(acc);
        while b < nb {
            total += super::f16_bits(bits[b]) * sums[b];
            b += 1;
        }
        total * scale
    }

    /// The products of one weight row with `R` activation rows (`R` ≤ 4:
    /// sixteen registers hold the block's four weight vectors and the
    /// accumulators), offsets folded into the expanded weights as in the
    /// AVX-512 kernel.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_rows<const R: usize>(row: Row<'_>, x: [&[f32]; R]) -> [f32; R] {
        let qb = row.format.quant_bytes();
        let nb = row.scales.len();
        for x in &x {
            assert!(x.len() >= nb * BLOCK);
        }
        let mut acc = [_mm256_setzero_ps(); R];
        let mut b = 0;
        while b < nb {
            let scales = load8_f16(&row.scales[b..]);
            let offsets = match row.format {
                Format::Q4_1 => load8_f16(&row.mins[b..]),
                Format::Q4_0 => _mm256_mul_ps(scales, _mm256_set1_ps(-8.0)),
                Format::Q8_0 => _mm256_setzero_ps(),
            };
            let end = (b + 8).min(nb);
            for i in b..end {
                let lane = _mm256_set1_epi32((i - b) as i32);
                let d = _mm256_permutevar8x32_ps(scales, lane);
                let o = _mm256_permutevar8x32_ps(offsets, lane);
                let w = block_weights(row.format, &row.quants[i * qb..(i + 1) * qb])
                    .map(|q| _mm256_fmadd_ps(d, q, o));
                for m in 0..R {
                    // SAFETY: `x[m]` holds `nb` blocks (asserted above).
                    let xb = unsafe { x[m].as_ptr().add(i * BLOCK) };
                    for (k, w) in w.iter().enumerate() {
                        // SAFETY: as above, eight floats within the block.
                        let xv = unsafe { _mm256_loadu_ps(xb.add(8 * k)) };
                        acc[m] = _mm256_fmadd_ps(*w, xv, acc[m]);
                    }
                }
            }
            b = end;
        }
        acc.map(|a| hsum(a))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot(row: Row<'_>, x: &[f32], sums: &[f32]) -> f32 {
        let qb = row.format.quant_bytes();
        let nb = row.scales.len();
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b < nb {
            let mut d = [0f32; 8];
            // SAFETY: `d` holds 8 floats.
            unsafe { _mm256_storeu_ps(d.as_mut_ptr(), load8_f16(&row.scales[b..])) };
            let end = (b + 8).min(nb);
            let mut i = b;
            // Two blocks per turn, into two accumulators, so consecutive
            // blocks do not wait on each other's FMA.
            while i + 1 < end {
                let s0 = block_dot(row.format, &row.quants[i * qb..], &x[i * BLOCK..]);
                let s1 = block_dot(
                    row.format,
                    &row.quants[(i + 1) * qb..],
                    &x[(i + 1) * BLOCK..],
                );
                acc0 = _mm256_fmadd_ps(s0, _mm256_set1_ps(d[i - b]), acc0);
                acc1 = _mm256_fmadd_ps(s1, _mm256_set1_ps(d[i + 1 - b]), acc1);
                i += 2;
            }
            if i < end {
                let s = block_dot(row.format, &row.quants[i * qb..], &x[i * BLOCK..]);
                acc0 = _mm256_fmadd_ps(s, _mm256_set1_ps(d[i - b]), acc0);
            }
            b = end;
        }
        hsum(_mm256_add_ps(acc0, acc1)) + offsets(row, sums)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn expand(row: Row<'_>, out: &mut [f32]) {
        let qb = row.format.quant_bytes();
        let nb = row.scales.len();
        let mut b = 0;
        while b < nb {
            let mut d = [0f32; 8];
            let mut m = [0f32; 8];
            // SAFETY: the buffers hold 8 floats each.
            unsafe {
                _mm256_storeu_ps(d.as_mut_ptr(), load8_f16(&row.scales[b..]));
                if row.format == Format::Q4_1 {
                    _mm256_storeu_ps(m.as_mut_ptr(), load8_f16(&row.mins[b..]));
                }
            }
            for i in b..(b + 8).min(nb) {
                let mut w = block_weights(row.format, &row.quants[i * qb..]);
                if row.format == Format::Q4_0 {
                    // ggml's order of operations, (q − 8) · d.
                    for v in &mut w {
                        *v = _mm256_sub_ps(*v, _mm256_set1_ps(8.0));
                    }
                }
                let dv = _mm256_set1_ps(d[i - b]);
                let mv = _mm256_set1_ps(m[i - b]);
                let dst = &mut out[i * BLOCK..(i + 1) * BLOCK];
                for (j, wj) in w.into_iter().enumerate() {
                    // Multiply and add unfused: ggml rounds twice.
                    // SAFETY: `dst` holds 32 floats.
                    unsafe {
                        _mm256_storeu_ps(
                            dst.as_mut_ptr().add(8 * j),
                            _mm256_add_ps(_mm256_mul_ps(wj, dv), mv),
                        )
                    };
                }
            }
            b += 8;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load stays below `n`.
        unsafe {
            while i + 32 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * j));
                    let y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * j));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
                i += 32;
            }
        }
        let mut total = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            total += a[i] * b[i];
            i += 1;
        }
        total
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::blocks::{BLOCK, Format, Row, f16_bits};

    /// Σ_i q_i · x_i over the block at `q` (16 nibble bytes when `Q4`, else
    /// 32 signed bytes) and its 32 activations at `x`, as sixteen lanes.
    ///
    /// # Safety
    /// `q` and `x` must point at a whole block; the CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn block_dot<const Q4: bool>(q: *const u8, x: *const f32) -> __m512 {
        // SAFETY: the caller's contract.
        unsafe {
            let (w0, w1) = if Q4 {
                let v = _mm_loadu_si128(q as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                (
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(v, mask))),
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(
                        _mm_srli_epi16(v, 4),
                        mask,
                    ))),
                )
            } else {
                (
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i))),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        q.add(16) as *const __m128i
                    ))),
                )
            };
            _mm512_fmadd_ps(
                w1,
                _mm512_loadu_ps(x.add(16)),
                _mm512_mul_ps(w0, _mm512_loadu_ps(x)),
            )
        }
    }

    /// # Safety
    /// The row's arrays must match (`scales.len()` blocks of quants, `x` at
    /// least 32 activations per block); the CPU must have AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn dot_blocks<const Q4: bool>(row: Row<'_>, x: &[f32]) -> f32 {
        let qb = if Q4 { 16 } else { 32 };
        let nb = row.scales.len();
        let (q, xs, sc) = (row.quants.as_ptr(), x.as_ptr(), row.scales.as_ptr());
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut d = [0f32; 8];
        let full = nb / 8 * 8;
        let mut b = 0;
        // SAFETY: every block index stays below `nb`, and the arrays hold
        // `nb` blocks (the caller's contract).
        unsafe {
            while b < full {
                _mm256_storeu_ps(
                    d.as_mut_ptr(),
                    _mm256_cvtph_ps(_mm_loadu_si128(sc.add(b) as *const __m128i)),
                );
                let mut i = 0;
                while i < 8 {
                    let s0 = block_dot::<Q4>(q.add((b + i) * qb), xs.add((b + i) * BLOCK));
                    let s1 = block_dot::<Q4>(q.add((b + i + 1) * qb), xs.add((b + i + 1) * BLOCK));
                    acc0 = _mm512_fmadd_ps(s0, _mm512_set1_ps(d[i]), acc0);
                    acc1 = _mm512_fmadd_ps(s1, _mm512_set1_ps(d[i + 1]), acc1);
                    i += 2;
                }
                b += 8;
            }
            while b < nb {
                let s = block_dot::<Q4>(q.add(b * qb), xs.add(b * BLOCK));
                acc0 = _mm512_fmadd_ps(s, _mm512_set1_ps(f16_bits(row.scales[b])), acc0);
                b += 1;
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// # Safety
    /// As `dot_blocks`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn dot(row: Row<'_>, x: &[f32], sums: &[f32]) -> f32 {
        // SAFETY: the caller's contract.
        let products = unsafe {
            match row.format {
                Format::Q8_0 => dot_blocks::<false>(row, x),
                Format::Q4_0 | Format::Q4_1 => dot_blocks::<true>(row, x),
            }
        };
        products + super::avx2::offsets(row, sums)
    }

    /// Sixteen f16 values from `bits[b..]` as f32 lanes, zeros past the end.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn load16_f16(bits: &[u16], b: usize) -> __m512 {
        let rest = &bits[b..];
        // SAFETY: 16 u16 are read, from `rest` when it has them, else from
        // a copy padded with zeros.
        unsafe {
            if rest.len() >= 16 {
                _mm512_cvtph_ps(_mm256_loadu_si256(rest.as_ptr() as *const __m256i))
            } else {
                let mut buf = [0u16; 16];
                buf[..rest.len()].copy_from_slice(rest);
                _mm512_cvtph_ps(_mm256_loadu_si256(buf.as_ptr() as *const __m256i))
            }
        }
    }

    /// The products of one weight row with `R` activation rows, offsets
    /// included: each block's weights are expanded once (`d·q + m` for
    /// Q4_1, `d·(q − 8)` for Q4_0, `d·q` for Q8_0) and used `R` times.
    ///
    /// # Safety
    /// As `dot_blocks`, for each of the `R` activation rows.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn rows_blocks<const R: usize>(row: Row<'_>, x: [&[f32]; R]) -> [f32; R] {
        let q4 = row.format != Format::Q8_0;
        let qb = if q4 { 16 } else { 32 };
        let nb = row.scales.len();
        let q = row.quants.as_ptr();
        let xp = x.map(|x| x.as_ptr());
        // Two accumulators per activation row, for the low and the high
        // sixteen weights of a block: no FMA waits for the one before it,
        // and all of them stay in registers (2·R + 6 of the 32).
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        let mut b = 0;
        // SAFETY: every block index stays below `nb`, and the arrays hold
        // `nb` blocks (the caller's contract).
        unsafe {
            let nibble = _mm_set1_epi8(0x0F);
            let eight = _mm512_set1_epi32(8);
            while b < nb {
                // Sixteen blocks' scales (and mins) at once, each broadcast
                // from its lane.
                let group = (nb - b).min(16);
                let scales = load16_f16(row.scales, b);
                let mins = if row.format == Format::Q4_1 {
                    load16_f16(row.mins, b)
                } else {
                    _mm512_setzero_ps()
                };
                for g in 0..group {
                    let lane = _mm512_set1_epi32(g as i32);
                    let scale = _mm512_permutexvar_ps(lane, scales);
                    let p = q.add((b + g) * qb);
                    let (q0, q1) = if q4 {
                        let v = _mm_loadu_si128(p as *const __m128i);
                        (
                            _mm512_cvtepu8_epi32(_mm_and_si128(v, nibble)),
                            _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), nibble)),
                        )
                    } else {
                        (
                            _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)),
                            _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(16) as *const __m128i)),
                        )
                    };
                    let (w0, w1) = match row.format {
                        Format::Q4_1 => {
                            let min = _mm512_permutexvar_ps(lane, mins);
                            (
                                _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(q0), min),
                                _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(q1), min),
                            )
                        }
                        Format::Q4_0 => (
                            _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_sub_epi32(q0, eight))),
                            _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_sub_epi32(q1, eight))),
                        ),
                        Format::Q8_0 => (
                            _mm512_mul_ps(scale, _mm512_cvtepi32_ps(q0)),
                            _mm512_mul_ps(scale, _mm512_cvtepi32_ps(q1)),
                        ),
                    };
                    let at = (b + g) * BLOCK;
                    for m in 0..R {
                        let xb = xp[m].add(at);
                        lo[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb), lo[m]);
                        hi[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb.add(16)), hi[m]);
                    }
                }
                b += group;
            }
        }
        std::array::from_fn(|m| _mm512_reduce_add_ps(_mm512_add_ps(lo[m], hi[m])))
    }

    /// # Safety
    /// As `dot_blocks`, for each of the `R` activation rows.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows<const R: usize>(row: Row<'_>, x: [&[f32]; R]) -> [f32; R] {
        // SAFETY: the caller's contract.
        unsafe { rows_blocks::<R>(row, x) }
    }
}
