//! Matrix products with GGUF-quantized weights on the CPU, activations kept
//! in f32.
//!
//! ggml (and candle's quantized path) round the activations to 8 bits
//! before each quantized matmul so the inner loop can use integer dot
//! products. On a 135M-parameter model that moves the logits by ~0.2 on
//! average against exact arithmetic on the same weights. Here each block of
//! weights is expanded to f32 in registers and multiplied with the f32
//! activations: the result is exact up to f32 rounding, and the cost is a
//! few more instructions per block of a loop that is bound by memory
//! bandwidth at decode time anyway.
//!
//! Supported block formats: Q4_0, Q4_1 and Q8_0 (blocks of 32 weights).
//! Rows are split across rayon's threads when the product is big enough to
//! pay for it. For a batch of activation rows (prefill), each weight row is
//! expanded once into an f32 buffer and reused for every activation row.

mod blocks;
mod kernels;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

pub use blocks::Format;

/// Weights below this many elements are multiplied on the calling thread:
/// handing them to the pool costs more than it saves.
const PARALLEL_MIN_WEIGHTS: usize = 1 << 18;

/// From this many activation rows on, weights are expanded to f32 tiles and
/// multiplied by a blocked GEMM; below it, the fused kernels win.
const GEMM_MIN_ROWS: usize = 40;

/// Weight rows expanded per GEMM tile: `GEMM_TILE × cols` floats stay in
/// the L2 cache for the usual widths.
const GEMM_TILE: usize = 64;

/// Activation rows multiplied together with one pass over a weight row.
const TILE: usize = 8;

/// Output rows per task when a product is split across threads.
const ROWS_PER_TASK: usize = 64;

/// A quantized weight matrix `[rows, cols]`, its blocks split by field.
#[derive(Debug)]
pub struct QuantMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    blocks: blocks::Split,
}

impl QuantMatrix {
    /// The matrix of `q` (`[rows, cols]`), if its format has a kernel here.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let format = match q.dtype() {
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            _ => return Ok(None),
        };
        let (rows, cols) = q.shape().dims2()?;
        if !cols.is_multiple_of(blocks::BLOCK) {
            return Ok(None);
        }
        let data = q.data()?;
        if data.len() != rows * cols / blocks::BLOCK * format.ggml_block_bytes() {
            candle_core::bail!("a {rows}x{cols} {format:?} tensor has {} bytes", data.len());
        }
        Ok(Some(QuantMatrix {
            format,
            rows,
            cols,
            blocks: blocks::split(format, &data),
        }))
    }

    pub fn format(&self) -> Format {
        self.format
    }

    fn row(&self, r: usize) -> blocks::Row<'_> {
        let nb = self.cols / blocks::BLOCK;
        let qb = self.format.quant_bytes();
        blocks::Row {
            format: self.format,
            quants: &self.blocks.quants[r * nb * qb..(r + 1) * nb * qb],
            scales: &self.blocks.scales[r * nb..(r + 1) * nb],
            mins: if self.blocks.mins.is_empty() {
                &[]
            } else {
                &self.blocks.mins[r * nb..(r + 1) * nb]
            },
        }
    }

    /// `out[m][n] = Σ_k x[m][k] · W[n][k]` for `m` rows of `x` (row-major,
    /// `cols` wide); `out` is `m × rows`, row-major.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "activation shape");
        assert_eq!(out.len(), m * self.rows, "output shape");
        let kern = kernels::Kernels::detect();
        let nb = self.cols / blocks::BLOCK;
        // Per activation row, the sums of each block of 32: Q4 formats fold
        // their offset into them (Σ(d·q + o)·x = d·Σq·x + o·Σx).
        let sums: Vec<f32> = x
            .chunks_exact(blocks::BLOCK)
            .map(|b| b.iter().sum())
            .collect();
        let xrow = |i: usize| &x[i * self.cols..(i + 1) * self.cols];
        let srow = |i: usize| &sums[i * nb..(i + 1) * nb];
        let work = |first: usize, out_rows: &mut [f32]| {
            // out_rows: for each activation row i, the outputs [first, first + n).
            let n = out_rows.len() / m;
            // Eight activation rows at a time share each expanded block,
            // then four and two for what is left: a row expanded to f32 and
            // read back once per activation row costs more than the fused
            // kernel does for two. The tile of activation rows is the outer
            // loop, so it stays in the L1 cache while the task's weight rows
            // pass by.
            let mut i = 0;
            macro_rules! tiles {
                ($r:expr) => {
                    while i + $r <= m {
                        let x = std::array::from_fn(|t| xrow(i + t));
                        if kern.dot_rows::<{ $r }>(self.row(first), x).is_none() {
                            break;
                        }
                        for j in 0..n {
                            let dots = kern
                                .dot_rows::<{ $r }>(self.row(first + j), x)
                                .expect("the kernel was there for the first row");
                            for (t, v) in dots.into_iter().enumerate() {
                                out_rows[(i + t) * n + j] = v;
                            }
                        }
                        i += $r;
                    }
                };
            }
            tiles!(TILE);
            tiles!(4);
            tiles!(2);
            let mut expanded = Vec::new();
            for j in 0..n {
                let row = self.row(first + j);
                if m - i > 1 {
                    // No multi-row kernel here: expand the row once, reuse it.
                    expanded.resize(self.cols, 0f32);
                    kern.expand(row, &mut expanded);
                    for i in i..m {
                        out_rows[i * n + j] = kern.dot_f32(&expanded, xrow(i));
                    }
                } else if m - i == 1 {
                    out_rows[i * n + j] = kern.dot(row, xrow(i), srow(i));
                }
            }
        };
        if m >= GEMM_MIN_ROWS {
            self.matmul_gemm(kern, x, m, out);
            return;
        }
        if m == 1 {
            if self.rows * self.cols < PARALLEL_MIN_WEIGHTS || rayon::current_num_threads() == 1 {
                work(0, out);
            } else {
                out.par_chunks_mut(ROWS_PER_TASK)
                    .enumerate()
                    .for_each(|(t, chunk)| work(t * ROWS_PER_TASK, chunk));
            }
            return;
        }
        // Several activation rows: tasks own column blocks of the output,
        // gathered into place afterwards.
        let tasks: Vec<(usize, Vec<f32>)> = (0..self.rows)
            .step_by(ROWS_PER_TASK)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|first| {
                let n = ROWS_PER_TASK.min(self.rows - first);
                let mut buf = vec![0f32; m * n];
                work(first, &mut buf);
                (first, buf)
            })
            .collect();
        for (first, buf) in tasks {
            let n = buf.len() / m;
            for i in 0..m {
                out[i * self.rows + first..i * self.rows + first + n]
                    .copy_from_slice(&buf[i * n..(i + 1) * n]);
            }
        }
    }

    /// Many activation rows (a prefill): expand `GEMM_TILE` weight rows at a
    /// time to f32 (they stay in cache) and multiply them with every
    /// activation row through the `gemm` crate's blocked kernels, which
    /// reach a large share of the FMA units' peak. Tiles are split across
    /// rayon's threads; each writes its own columns of `out`.
    fn matmul_gemm(&self, kern: kernels::Kernels, x: &[f32], m: usize, out: &mut [f32]) {
        struct Out(*mut f32);
        // SAFETY: tasks write disjoint columns of the output (see below).
        unsafe impl Send for Out {}
        unsafe impl Sync for Out {}
        let dst = Out(out.as_mut_ptr());
        let (rows, cols) = (self.rows, self.cols);
        let tiles: Vec<usize> = (0..rows).step_by(GEMM_TILE).collect();
        let run = |first: usize| {
            let n = GEMM_TILE.min(rows - first);
            let mut w = vec![0f32; n * cols];
            for (j, dst_row) in w.chunks_exact_mut(cols).enumerate() {
                kern.expand(self.row(first + j), dst_row);
            }
            let dst = &dst;
            // SAFETY: `x` is `m × cols`, `w` is `n × cols` read as its
            // transpose (`cols × n`), and the destination is columns
            // `[first, first + n)` of the `m × rows` output, which no other
            // tile writes.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    cols,
                    dst.0.add(first),
                    1,
                    rows as isize,
                    false,
                    x.as_ptr(),
                    1,
                    cols as isize,
                    w.as_ptr(),
                    cols as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        };
        if rayon::current_num_threads() == 1 {
            tiles.into_iter().for_each(run);
        } else {
            tiles.into_par_iter().for_each(run);
        }
    }

    /// The matrices stacked row-wise (`[Σ rows, cols]`), when they share a
    /// format and a width: one product then serves several projections.
    pub fn stack(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.format != first.format || p.cols != first.cols)
        {
            return None;
        }
        let mut blocks = blocks::Split::default();
        for p in parts {
            blocks.quants.extend_from_slice(&p.blocks.quants);
            blocks.scales.extend_from_slice(&p.blocks.scales);
            blocks.mins.extend_from_slice(&p.blocks.mins);
        }
        Some(QuantMatrix {
            format: first.format,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            blocks,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows `ids` expanded to f32, one after another: an embedding lookup.
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let kern = kernels::Kernels::detect();
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            if id as usize >= self.rows {
                candle_core::bail!("row {id} is outside a matrix of {} rows", self.rows);
            }
            kern.expand(self.row(id as usize), dst);
        }
        Ok(out)
    }

    /// Expand the whole matrix to f32 (for tests and checks).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            blocks::expand_scalar(self.row(r), row);
        }
        out
    }
}

impl CustomOp1 for QuantMatrix {
    fn name(&self) -> &'static str {
        "deepwasm-quant-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = match storage {
            CpuStorage::F32(x) => x,
            _ => candle_core::bail!("quantized matmul wants f32 activations"),
        };
        let dims = layout.shape().dims();
        let (&k, lead) = dims
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("empty shape".into()))?;
        if k != self.cols {
            candle_core::bail!(
                "quantized matmul: activations have {k} columns, the weights {}",
                self.cols
            );
        }
        let x = match layout.contiguous_offsets() {
            Some((start, end)) => &x[start..end],
            None => candle_core::bail!("quantized matmul wants contiguous activations"),
        };
        let m: usize = lead.iter().product();
        let mut out = vec![0f32; m * self.rows];
        self.matmul(x, m, &mut out);
        let mut shape = lead.to_vec();
        shape.push(self.rows);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests;
