//! Reading weights from a checkpoint: a Hugging Face directory
//! (`config.json` + `*.safetensors`, sharded or not) or a GGUF file.
//!
//! Model code asks for a tensor by its Hugging Face name and its GGUF name
//! and the shape it expects; a missing tensor, a wrong shape or a truncated
//! file becomes a `ModelError` naming the tensor and the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QMatMul, gguf_file};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use std::sync::Arc;

use crate::ModelError;
use crate::linear::Linear;
use crate::quant::QuantMatrix;

/// The names one tensor has in the two checkpoint formats.
#[derive(Clone, Debug)]
pub struct TensorName {
    pub hf: String,
    pub gguf: String,
}

impl TensorName {
    pub fn new(hf: impl Into<String>, gguf: impl Into<String>) -> Self {
        TensorName {
            hf: hf.into(),
            gguf: gguf.into(),
        }
    }
}

enum Source {
    Gguf {
        content: gguf_file::Content,
        file: Mutex<File>,
    },
    Safetensors(MmapedSafetensors),
}

/// An open checkpoint.
pub struct Checkpoint {
    path: PathBuf,
    source: Source,
    device: Device,
    /// The dtype activations and dense weights are computed in.
    dtype: DType,
}

impl Checkpoint {
    /// Open a GGUF file; returns the checkpoint and its metadata.
    pub fn open_gguf(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // candle divides by the alignment the file gives: refuse a 0 first.
        if gguf_alignment(BufReader::new(&mut file)) == Some(0) {
            return Err(ModelError::Format {
                path: path.to_owned(),
                reason: "not a readable GGUF file: `general.alignment` is 0".into(),
            });
        }
        file.rewind().map_err(|e| ModelError::io(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| ModelError::Format {
            path: path.to_owned(),
            reason: format!("not a readable GGUF file: {e}"),
        })?;
        Ok(Checkpoint {
            path: path.to_owned(),
            source: Source::Gguf {
                content,
                file: Mutex::new(file),
            },
            device: device.clone(),
            dtype: DType::F32,
        })
    }

    /// Memory-map the `.safetensors` files of a Hugging Face directory.
    pub fn open_safetensors(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let files = safetensors_files(dir)?;
        // SAFETY: the files are mapped read-only; deepwasm never writes model
        // files while serving them. Like every mmap-based loader, a file
        // changed underneath would change the weights read.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ModelError::Format {
            path: dir.to_owned(),
            reason: format!("cannot read the safetensors files: {e}"),
        })?;
        Ok(Checkpoint {
            path: dir.to_owned(),
            source: Source::Safetensors(st),
            device: device.clone(),
            dtype,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// GGUF metadata, empty for safetensors checkpoints.
    pub fn gguf_metadata(&self) -> Option<&HashMap<String, gguf_file::Value>> {
        match &self.source {
            Source::Gguf { content, .. } => Some(&content.metadata),
            Source::Safetensors(_) => None,
        }
    }

    fn key<'a>(&self, name: &'a TensorName) -> &'a str {
        match self.source {
            Source::Gguf { .. } => &name.gguf,
            Source::Safetensors(_) => &name.hf,
        }
    }

    pub fn contains(&self, name: &TensorName) -> bool {
        let key = self.key(name);
        match &self.source {
            Source::Gguf { content, .. } => content.tensor_infos.contains_key(key),
            Source::Safetensors(st) => st.get(key).is_ok(),
        }
    }

    fn missing(&self, name: &TensorName) -> ModelError {
        ModelError::MissingTensor {
            name: self.key(name).to_owned(),
            path: self.path.clone(),
        }
    }

    fn check_shape(
        &self,
        name: &TensorName,
        actual: &[usize],
        expected: &[usize],
    ) -> Result<(), ModelError> {
        if actual != expected {
            return Err(ModelError::WrongShape {
                name: self.key(name).to_owned(),
                path: self.path.clone(),
                expected: expected.to_vec(),
                actual: actual.to_vec(),
            });
        }
        Ok(())
    }

    fn read_gguf(
        &self,
        name: &TensorName,
        shape: &[usize],
    ) -> Result<candle_core::quantized::QTensor, ModelError> {
        let Source::Gguf { content, file } = &self.source else {
            unreachable!("read_gguf on a safetensors checkpoint")
        };
        let info = content
            .tensor_infos
            .get(&name.gguf)
            .ok_or_else(|| self.missing(name))?;
        self.check_shape(name, info.shape.dims(), shape)?;
        // candle counts the elements and bytes of the shape the file gives
        // unchecked (and checks the bytes against the file's length after),
        // and reads an empty tensor's buffer through a misaligned pointer:
        // refuse both first.
        let dtype = info.ggml_dtype;
        let bytes = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| (n / dtype.block_size()).checked_mul(dtype.type_size()));
        let problem = match bytes {
            None => "is too large to count",
            Some(0) => "has no elements",
            Some(_) => "",
        };
        if !problem.is_empty() {
            return Err(ModelError::Format {
                path: self.path.clone(),
                reason: format!(
                    "tensor `{}`: shape {:?} {problem}",
                    name.gguf,
                    info.shape.dims()
                ),
            });
        }
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        content
            .tensor(&mut *file, &name.gguf, &self.device)
            .map_err(|e| self.format_error(name, e))
    }

    fn format_error(&self, name: &TensorName, e: candle_core::Error) -> ModelError {
        ModelError::Format {
            path: self.path.clone(),
            reason: format!("tensor `{}`: {e}", self.key(name)),
        }
    }

    /// A dense tensor in the compute dtype (GGUF tensors are dequantized).
    pub fn dense(&self, name: &TensorName, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = match &self.source {
            Source::Gguf { .. } => {
                let q = self.read_gguf(name, shape)?;
                q.dequantize(&self.device)
                    .map_err(|e| self.format_error(name, e))?
            }
            Source::Safetensors(st) => {
                let view = st.get(&name.hf).map_err(|_| self.missing(name))?;
                self.check_shape(name, view.shape(), shape)?;
                let t = st
                    .load(&name.hf, &self.device)
                    .map_err(|e| self.format_error(name, e))?;
                if t.dtype() == DType::F8E4M3 {
                    return self.dequantize_fp8(name, &t, shape);
                }
                t
            }
        };
        t.to_dtype(self.dtype)
            .map_err(|e| self.format_error(name, e))
    }

    /// An embedding table `[vocab, dim]`: kept quantized (rows expanded on
    /// lookup) when it is a GGUF block format our CPU kernels read, dense
    /// otherwise.
    pub fn embedding(
        &self,
        name: &TensorName,
        vocab: usize,
        dim: usize,
    ) -> Result<crate::linear::Embedding, ModelError> {
        if matches!(self.source, Source::Gguf { .. }) && self.device.is_cpu() {
            let q = self.read_gguf(name, &[vocab, dim])?;
            if let Some(m) =
                QuantMatrix::from_qtensor(&q).map_err(|e| self.format_error(name, e))?
            {
                return Ok(crate::linear::Embedding::Quantized(Arc::new(m)));
            }
        }
        Ok(crate::linear::Embedding::Dense(
            self.dense(name, &[vocab, dim])?,
        ))
    }

    /// An FP8 (e4m3) weight with DeepSeek-V3's block scales: `<name>_scale_inv`
    /// holds one f32 per 128×128 block and the weight is `fp8 · scale_inv`.
    ///
    /// Dequantizing at load keeps one kernel path for every checkpoint at the
    /// price of memory: each weight grows from 1 byte to the compute dtype's
    /// 2 (bf16 on GPUs) or 4 (f32 on the CPU) — DeepSeek-V3's 671 B
    /// parameters take ~1.34 TB in bf16 instead of ~671 GB in FP8.
    fn dequantize_fp8(
        &self,
        name: &TensorName,
        t: &Tensor,
        shape: &[usize],
    ) -> Result<Tensor, ModelError> {
        let Source::Safetensors(st) = &self.source else {
            unreachable!("FP8 tensors come from safetensors")
        };
        let scale_name = format!("{}_scale_inv", name.hf);
        let err = |e| self.format_error(name, e);
        let scale = st
            .load(&scale_name, &self.device)
            .map_err(|_| ModelError::MissingTensor {
                name: scale_name.clone(),
                path: self.path.clone(),
            })?;
        let &[rows, cols] = shape else {
            return Err(ModelError::Format {
                path: self.path.clone(),
                reason: format!("FP8 tensor `{}` is not a matrix", name.hf),
            });
        };
        const BLOCK: usize = 128;
        let (sr, sc) = (rows.div_ceil(BLOCK), cols.div_ceil(BLOCK));
        if scale.dims() != [sr, sc] {
            return Err(ModelError::WrongShape {
                name: scale_name,
                path: self.path.clone(),
                expected: vec![sr, sc],
                actual: scale.dims().to_vec(),
            });
        }
        // Each scale covers a 128×128 block: broadcast it over its block,
        // then crop the padding of the last row and column of blocks.
        let scale = scale
            .to_dtype(DType::F32)
            .and_then(|s| s.reshape((sr, 1, sc, 1)))
            .and_then(|s| s.broadcast_as((sr, BLOCK, sc, BLOCK)))
            .and_then(|s| s.reshape((sr * BLOCK, sc * BLOCK)))
            .and_then(|s| s.narrow(0, 0, rows))
            .and_then(|s| s.narrow(1, 0, cols))
            .map_err(err)?;
        t.to_dtype(DType::F32)
            .and_then(|w| w * scale)
            .and_then(|w| w.to_dtype(self.dtype))
            .map_err(err)
    }

    /// The dense tensor if present, `None` if the checkpoint lacks it.
    pub fn dense_opt(
        &self,
        name: &TensorName,
        shape: &[usize],
    ) -> Result<Option<Tensor>, ModelError> {
        if self.contains(name) {
            self.dense(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A linear layer `[out, in]`: quantized as stored in a GGUF file, dense
    /// from safetensors. `bias` names an optional `[out]` bias.
    pub fn linear(
        &self,
        name: &TensorName,
        out_features: usize,
        in_features: usize,
        bias: Option<&TensorName>,
    ) -> Result<Linear, ModelError> {
        let bias = match bias {
            Some(b) => self.dense_opt(b, &[out_features])?,
            None => None,
        };
        match &self.source {
            Source::Gguf { .. } => {
                let q = self.read_gguf(name, &[out_features, in_features])?;
                let w = match q.dtype() {
                    // Unquantized weights stay dense: faster than a matmul
                    // through the quantized path.
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        let t = q
                            .dequantize(&self.device)
                            .map_err(|e| self.format_error(name, e))?;
                        return Linear::dense(t, bias).map_err(|e| self.format_error(name, e));
                    }
                    _ if self.device.is_cpu() => {
                        if let Some(m) =
                            QuantMatrix::from_qtensor(&q).map_err(|e| self.format_error(name, e))?
                        {
                            return Ok(Linear::cpu_quantized(Arc::new(m), bias));
                        }
                        QMatMul::from_qtensor(q).map_err(|e| self.format_error(name, e))?
                    }
                    _ => QMatMul::from_qtensor(q).map_err(|e| self.format_error(name, e))?,
                };
                Ok(Linear::quantized(w, out_features, in_features, bias))
            }
            Source::Safetensors(_) => {
                let w = self.dense(name, &[out_features, in_features])?;
                Linear::dense(w, bias).map_err(|e| self.format_error(name, e))
            }
        }
    }
}

/// The `general.alignment` candle's reader will take from a GGUF file (the
/// last such key, if its value is an integer type it reads as one), or
/// `None`. Reads as far as it must and stops at the first thing it cannot
/// read, which candle then reports: every count and length is bounded by
/// the bytes that are there.
fn gguf_alignment(reader: impl Read) -> Option<u64> {
    const KEY: &[u8] = b"general.alignment";
    let mut scan = GgufScan {
        reader,
        wide_lengths: true,
    };
    if ![0x4655_4747, 0x4747_5546].contains(&scan.u32()?) {
        return None;
    }
    scan.wide_lengths = match scan.u32()? {
        1 => false,
        2 | 3 => true,
        _ => return None,
    };
    let _tensors = scan.len()?;
    let entries = scan.len()?;
    let mut alignment = None;
    for _ in 0..entries {
        let n = scan.len()?;
        let is_alignment = if n <= 64 {
            let mut key = vec![0; n as usize];
            scan.reader.read_exact(&mut key).ok()?;
            // candle drops a key's trailing NULs.
            while key.last() == Some(&0) {
                key.pop();
            }
            key == KEY
        } else {
            scan.skip(n)?;
            false
        };
        let value_type = scan.u32()?;
        let value = scan.value(value_type, 0)?;
        if is_alignment {
            alignment = value;
        }
    }
    alignment
}

/// Just enough of a GGUF reader for [`gguf_alignment`].
struct GgufScan<R> {
    reader: R,
    /// Lengths are u64 from version 2 on, u32 before.
    wide_lengths: bool,
}

impl<R: Read> GgufScan<R> {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0; N];
        self.reader.read_exact(&mut b).ok()?;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes().map(u32::from_le_bytes)
    }

    fn len(&mut self) -> Option<u64> {
        if self.wide_lengths {
            self.bytes().map(u64::from_le_bytes)
        } else {
            self.u32().map(u64::from)
        }
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        let skipped = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink()).ok()?;
        (skipped == n).then_some(())
    }

    /// Read past one value of type `value_type`: `Some(alignment)` for the
    /// integer types candle takes an alignment from (`None` for a negative
    /// one, or another type); `None` when it cannot be read.
    fn value(&mut self, value_type: u32, depth: usize) -> Option<Option<u64>> {
        // candle refuses values nested deeper.
        if depth > 64 {
            return None;
        }
        let non_negative = |v: i64| u64::try_from(v).ok();
        Some(match value_type {
            0 => Some(self.bytes::<1>()?[0].into()),
            1 => non_negative(i8::from_le_bytes(self.bytes()?).into()),
            2 => Some(u16::from_le_bytes(self.bytes()?).into()),
            3 => non_negative(i16::from_le_bytes(self.bytes()?).into()),
            4 => Some(self.u32()?.into()),
            5 => non_negative(i32::from_le_bytes(self.bytes()?).into()),
            // f32, bool
            6 => self.skip(4).map(|()| None)?,
            7 => self.skip(1).map(|()| None)?,
            8 => {
                let n = self.len()?;
                self.skip(n).map(|()| None)?
            }
            9 => {
                let item = self.u32()?;
                for _ in 0..self.len()? {
                    self.value(item, depth + 1)?;
                }
                None
            }
            // u64, i64, f64
            10..=12 => self.skip(8).map(|()| None)?,
            _ => return None,
        })
    }
}

/// The `.safetensors` files of a directory: those an index file names, else
/// every `*.safetensors` file.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Format {
                path: index.clone(),
                reason: format!("not valid JSON: {e}"),
            })?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Format {
                path: index.clone(),
                reason: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.is_file() {
                return Err(ModelError::Format {
                    path: index.clone(),
                    reason: format!("names the shard {}, which is missing", f.display()),
                });
            }
        }
        return Ok(files);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
        let path = entry.map_err(|e| ModelError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(ModelError::Format {
            path: dir.to_owned(),
            reason: "no .safetensors files".into(),
        });
    }
    files.sort();
    Ok(files)
}
