//! Random-weight checkpoints of public models' shapes and architectures,
//! written as a Hugging Face directory (config.json, safetensors shards with
//! their index, tokenizer.json), so that the fidelity checks and throughput
//! runs load them through the same loader as a downloaded model. A lent GPU
//! machine has no network and the real checkpoints are too large to carry:
//! everything here is generated on it.
//!
//! Weights are drawn uniformly, of the standard deviation asked for, from a
//! generator seeded per tensor and per chunk, so a checkpoint is the same
//! bytes whatever the thread count. Norm weights are 1.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use candle_core::DType;
use rayon::prelude::*;
use serde_json::{Value, json};

/// The byte-level tokenizer of the tiny test checkpoints (256 byte tokens
/// and a few merges): the throughput runs feed token ids and the fidelity
/// prompts become bytes, so it only has to load and to be no larger than
/// the vocabulary.
const TOKENIZER: &str = include_str!("../../../tests/fixtures/tiny-llama/tokenizer.json");
/// Its BOS and EOS ids.
pub const BOS: u32 = 356;
pub const EOS: u32 = 357;

/// Elements per generator seed: chunks are filled in parallel.
const CHUNK: usize = 1 << 16;

/// What a weight starts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    /// Uniform, of the standard deviation asked for, in the checkpoint's
    /// dtype.
    Random,
    /// 1, in the checkpoint's dtype.
    One,
    /// float8 e4m3 values spread over its whole range, ±448: DeepSeek-V3's
    /// FP8 weights, each 128×128 block to be multiplied by its scale.
    Fp8,
    /// f32 block scales (`<weight>_scale_inv`) that bring FP8 weights to
    /// about the standard deviation asked for, each block's different (×0.5 to
    /// ×1.5) so a block read with a neighbour's scale shows.
    Fp8Scale,
}

impl Init {
    /// The safetensors dtype and its bytes per element, for a checkpoint
    /// in `dtype`.
    fn encoding(self, dtype: DType) -> anyhow::Result<(&'static str, usize)> {
        Ok(match (self, dtype) {
            (Init::Fp8, _) => ("F8_E4M3", 1),
            (Init::Fp8Scale, _) | (Init::Random | Init::One, DType::F32) => ("F32", 4),
            (Init::Random | Init::One, DType::BF16) => ("BF16", 2),
            (_, other) => {
                anyhow::bail!("random checkpoints are written in bf16 or f32, not {other:?}")
            }
        })
    }
}

/// Rows and columns of weight one FP8 scale covers (DeepSeek-V3's
/// `weight_block_size`).
pub const FP8_BLOCK: usize = 128;

pub struct TensorSpec {
    name: String,
    shape: Vec<usize>,
    init: Init,
}

impl TensorSpec {
    pub fn random(name: String, shape: &[usize]) -> Self {
        TensorSpec {
            name,
            shape: shape.to_vec(),
            init: Init::Random,
        }
    }

    pub fn ones(name: String, len: usize) -> Self {
        TensorSpec {
            name,
            shape: vec![len],
            init: Init::One,
        }
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// A decoder layer's projection weight as DeepSeek-V3 stores it: FP8,
    /// followed by its block scales; any other tensor as it is.
    pub fn into_fp8(self) -> Vec<TensorSpec> {
        let projection =
            self.name.ends_with("_proj.weight") || self.name.ends_with("_proj_with_mqa.weight");
        if !projection {
            return vec![self];
        }
        let scales = TensorSpec {
            name: format!("{}_scale_inv", self.name),
            shape: self.shape.iter().map(|n| n.div_ceil(FP8_BLOCK)).collect(),
            init: Init::Fp8Scale,
        };
        vec![
            TensorSpec {
                init: Init::Fp8,
                ..self
            },
            scales,
        ]
    }
}

/// A checkpoint to write: its config.json and its tensors, shard by shard.
pub struct Spec {
    /// A short name for the report and the table.
    pub name: &'static str,
    /// The public model whose config.json the shapes follow.
    pub source: &'static str,
    pub config: Value,
    /// The tensors of each file, in order.
    pub shards: Vec<Vec<TensorSpec>>,
}

impl Spec {
    pub fn parameters(&self) -> u64 {
        self.shards.iter().flatten().map(|t| t.len() as u64).sum()
    }

    /// Write the checkpoint into `dir` with weights in `dtype` (bf16 or
    /// f32) of standard deviation `std`, drawn from `seed`. Returns the
    /// bytes of weights written.
    pub fn write(&self, dir: &Path, dtype: DType, std: f32, seed: u64) -> anyhow::Result<u64> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("config.json", &serde_json::to_string_pretty(&self.config)?)?;
        write("tokenizer.json", TOKENIZER)?;
        let count = self.shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut bytes = 0;
        let mut index = 0u64;
        for (i, shard) in self.shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
            let path = dir.join(&file);
            bytes += write_safetensors(&path, shard, dtype, std, seed, &mut index)
                .with_context(|| format!("cannot write {}", path.display()))?;
            for t in shard {
                weight_map.insert(t.name.clone(), json!(file));
            }
        }
        let index_json = json!({
            "metadata": {"total_size": bytes},
            "weight_map": weight_map,
        });
        write(
            "model.safetensors.index.json",
            &serde_json::to_string_pretty(&index_json)?,
        )?;
        Ok(bytes)
    }
}

/// One safetensors file: an 8-byte little-endian header length, the JSON
/// header (padded with spaces to a multiple of 8), then the tensors' bytes
/// in order. Tensors are generated one at a time, so memory holds at most
/// the largest. `index` numbers tensors across shards (each its own seed).
/// Returns the bytes of tensor data written.
fn write_safetensors(
    path: &Path,
    tensors: &[TensorSpec],
    dtype: DType,
    std: f32,
    seed: u64,
    index: &mut u64,
) -> anyhow::Result<u64> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in tensors {
        let (tag, width) = t.init.encoding(dtype)?;
        let end = offset + (t.len() * width) as u64;
        header.insert(
            t.name.clone(),
            json!({"dtype": tag, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&header)?;
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(text.as_bytes())?;
    let mut buf = Vec::new();
    for t in tensors {
        let seed = seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407);
        fill(t, dtype, std, seed, &mut buf);
        *index += 1;
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(offset)
}

/// `t`'s values as little-endian bytes of its encoding into `buf`.
fn fill(t: &TensorSpec, dtype: DType, std: f32, seed: u64, buf: &mut Vec<u8>) {
    let (_, width) = t.init.encoding(dtype).expect("checked with the header");
    buf.clear();
    buf.resize(t.len() * width, 0);
    // Uniform on [-a, a] has standard deviation a / sqrt(3).
    let a = std * 3f32.sqrt();
    let init = t.init;
    let fp8 = (init == Init::Fp8).then(fp8_values);
    buf.par_chunks_mut(CHUNK * width)
        .enumerate()
        .for_each(|(c, out)| {
            let mut rng = SplitMix64(seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            // A uniform float in [0, 1) from 24 random bits.
            let mut uniform = || (rng.next() >> 40) as f32 / (1u32 << 24) as f32;
            for x in out.chunks_exact_mut(width) {
                let v = match init {
                    Init::One => 1.0,
                    Init::Random => (2.0 * uniform() - 1.0) * a,
                    Init::Fp8 => {
                        let table = fp8.as_ref().expect("made for FP8");
                        x[0] = fp8_nearest(table, (2.0 * uniform() - 1.0) * 448.0);
                        continue;
                    }
                    Init::Fp8Scale => a / 448.0 * (0.5 + uniform()),
                };
                match width {
                    2 => x.copy_from_slice(&bf16_bits(v).to_le_bytes()),
                    _ => x.copy_from_slice(&v.to_le_bytes()),
                }
            }
        });
}

/// The non-negative finite float8 e4m3fn values, by code (0x00 to 0x7E,
/// ascending): 4 exponent bits with bias 7, 3 mantissa bits, subnormals
/// below 2^-6, no infinities (0x7F is NaN).
fn fp8_values() -> Vec<f32> {
    (0u8..0x7F)
        .map(|code| {
            let (e, m) = (i32::from(code >> 3), f32::from(code & 7));
            if e == 0 {
                m * 2f32.powi(-9)
            } else {
                (8.0 + m) * 2f32.powi(e - 10)
            }
        })
        .collect()
}

/// The e4m3fn code nearest to `v` (|v| ≤ 448), from [`fp8_values`].
fn fp8_nearest(table: &[f32], v: f32) -> u8 {
    let a = v.abs();
    let i = table.partition_point(|&x| x < a);
    let code = match i {
        0 => 0,
        i if i == table.len() => i - 1,
        i if a - table[i - 1] < table[i] - a => i - 1,
        i => i,
    } as u8;
    if v < 0.0 { code | 0x80 } else { code }
}

/// The bfloat16 nearest to `v` (ties to even), as bits. `v` is finite.
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = bits + 0x7FFF + ((bits >> 16) & 1);
    (rounded >> 16) as u16
}

/// The splitmix64 generator: a counter through a mixing function; fast,
/// and any seed is a good one.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
