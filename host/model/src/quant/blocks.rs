//! ggml's block formats, and the layout we keep them in.
//!
//! In a GGUF file a block of 32 weights is stored whole:
//!
//! | format | bytes | weight i |
//! |--------|-------|----------|
//! | Q4_0   | 18: `d` (f16), 16 nibble bytes | `(q_i − 8) · d` |
//! | Q4_1   | 20: `d`, `m` (f16), 16 nibble bytes | `q_i · d + m` |
//! | Q8_0   | 34: `d` (f16), 32 signed bytes | `q_i · d` |
//!
//! In the Q4 formats, byte j holds weight j in its low nibble and weight
//! j + 16 in its high nibble.
//!
//! At load the blocks are split into three arrays (quants, scales, offsets),
//! so the kernels read the quants contiguously and convert sixteen scales
//! with one instruction instead of one at a time.

use half::f16;

/// Weights per block.
pub const BLOCK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Format {
    /// Bytes of one block in ggml's layout.
    pub fn ggml_block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }

    /// Bytes of quants per block.
    pub fn quant_bytes(self) -> usize {
        match self {
            Format::Q4_0 | Format::Q4_1 => 16,
            Format::Q8_0 => 32,
        }
    }
}

/// A matrix's blocks, split by field.
#[derive(Debug, Default)]
pub(crate) struct Split {
    pub(crate) quants: Vec<u8>,
    /// `d` of every block, f16 bits.
    pub(crate) scales: Vec<u16>,
    /// `m` of every Q4_1 block, f16 bits; empty for the other formats.
    pub(crate) mins: Vec<u16>,
}

pub(crate) fn split(format: Format, ggml: &[u8]) -> Split {
    let bb = format.ggml_block_bytes();
    let n = ggml.len() / bb;
    let mut s = Split {
        quants: Vec::with_capacity(n * format.quant_bytes()),
        scales: Vec::with_capacity(n),
        mins: Vec::with_capacity(if format == Format::Q4_1 { n } else { 0 }),
    };
    for block in ggml.chunks_exact(bb) {
        s.scales.push(u16::from_le_bytes([block[0], block[1]]));
        match format {
            Format::Q4_1 => {
                s.mins.push(u16::from_le_bytes([block[2], block[3]]));
                s.quants.extend_from_slice(&block[4..20]);
            }
            Format::Q4_0 | Format::Q8_0 => s.quants.extend_from_slice(&block[2..]),
        }
    }
    s
}

#[inline]
pub(crate) fn f16_bits(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// One row's view of a split matrix.
#[derive(Clone, Copy)]
pub(crate) struct Row<'a> {
    pub(crate) format: Format,
    pub(crate) quants: &'a [u8],
    pub(crate) scales: &'a [u16],
    pub(crate) mins: &'a [u16],
}

/// Expand one row to f32 portably, with ggml's expressions so the weights are
/// bit-identical to its.
pub(crate) fn expand_scalar(row: Row<'_>, out: &mut [f32]) {
    let qb = row.format.quant_bytes();
    for (b, (q, out)) in row
        .quants
        .chunks_exact(qb)
        .zip(out.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let d = f16_bits(row.scales[b]);
        match row.format {
            Format::Q8_0 => {
                for (o, &v) in out.iter_mut().zip(q) {
                    *o = (v as i8) as f32 * d;
                }
            }
            Format::Q4_0 => {
                for j in 0..16 {
                    out[j] = ((q[j] & 0x0F) as f32 - 8.0) * d;
                    out[j + 16] = ((q[j] >> 4) as f32 - 8.0) * d;
                }
            }
            Format::Q4_1 => {
                let m = f16_bits(row.mins[b]);
                for j in 0..16 {
                    out[j] = (q[j] & 0x0F) as f32 * d + m;
                    out[j + 16] = (q[j] >> 4) as f32 * d + m;
                }
            }
        }
    }
}
