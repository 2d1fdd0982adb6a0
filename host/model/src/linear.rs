//! Linear layers over dense or GGUF-quantized weights.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::quant::QuantMatrix;

/// `y = x Wᵀ + b` with `W` of shape `[out, in]`, dense or quantized, plus
/// a low-rank adapter's `s · (x Aᵀ) Bᵀ` when one is applied.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    lora: Option<Arc<LoraDelta>>,
    out_features: usize,
    in_features: usize,
}

/// A low-rank update applied at run time: `a` `[r, in]`, `b` `[out, r]`,
/// in the dtype of the activations.
#[derive(Debug)]
struct LoraDelta {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

#[derive(Clone, Debug)]
enum Weight {
    Dense(Tensor),
    /// candle's quantized matmul (GPUs, and block formats without a kernel
    /// of ours).
    Quantized(QMatMul),
    /// Our CPU kernels: f32 activations against quantized blocks.
    CpuQuantized(Arc<QuantMatrix>),
}

impl Linear {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        Ok(Linear {
            weight: Weight::Dense(weight),
            bias,
            lora: None,
            out_features,
            in_features,
        })
    }

    pub fn quantized(
        weight: QMatMul,
        out_features: usize,
        in_features: usize,
        bias: Option<Tensor>,
    ) -> Self {
        Linear {
            weight: Weight::Quantized(weight),
            bias,
            lora: None,
            out_features,
            in_features,
        }
    }

    pub fn cpu_quantized(weight: Arc<QuantMatrix>, bias: Option<Tensor>) -> Self {
        Linear {
            out_features: weight.rows(),
            in_features: weight.cols(),
            weight: Weight::CpuQuantized(weight),
            bias,
            lora: None,
        }
    }

    /// This layer with `s · (x Aᵀ) Bᵀ` added to its output (replacing any
    /// adapter it had): `a` `[r, in]`, `b` `[out, r]`, converted to the
    /// dtype of `activations`.
    pub fn with_lora(
        &self,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        activations: DType,
    ) -> Result<Linear> {
        let (r, inp) = a.dims2()?;
        let (out, r_b) = b.dims2()?;
        if inp != self.in_features || out != self.out_features || r != r_b {
            candle_core::bail!(
                "a LoRA pair A {:?} B {:?} does not fit a [{}, {}] projection",
                a.dims(),
                b.dims(),
                self.out_features,
                self.in_features
            );
        }
        Ok(Linear {
            lora: Some(Arc::new(LoraDelta {
                a: a.to_dtype(activations)?.contiguous()?,
                b: b.to_dtype(activations)?.contiguous()?,
                scale,
            })),
            ..self.clone()
        })
    }

    /// The weight `[out, in]` as a dense f32 tensor (dequantized when it is
    /// quantized), with no adapter.
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Dense(w) => w.to_dtype(DType::F32),
            Weight::Quantized(QMatMul::QTensor(q)) => q.dequantize(&q.device()),
            Weight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.to_dtype(DType::F32),
            Weight::CpuQuantized(m) => {
                Tensor::from_vec(m.dequantize(), (m.rows(), m.cols()), &Device::Cpu)
            }
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// This layer as a dense one of `dtype`, any adapter merged into its
    /// weight: `W + s · B A`.
    pub fn merged(&self, dtype: DType) -> Result<Linear> {
        let mut w = self.dense_weight()?;
        if let Some(l) = &self.lora {
            let ba =
                l.b.to_dtype(DType::F32)?
                    .matmul(&l.a.to_dtype(DType::F32)?)?;
            w = (w + (ba * l.scale)?)?;
        }
        Linear::dense(w.to_dtype(dtype)?, self.bias.clone())
    }

    /// The layers stacked into one, `[Σ out, in]`, so one product computes
    /// them all (the query, key and value projections; the gate and up
    /// projections). `None` when they cannot share a product: candle's
    /// quantized weights, mixed kinds or widths.
    pub fn stack(parts: &[&Linear]) -> Result<Option<Linear>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        if parts
            .iter()
            .any(|p| p.in_features != first.in_features || p.lora.is_some())
        {
            return Ok(None);
        }
        let bias = match parts.iter().find_map(|p| p.bias.as_ref()) {
            Some(any) => {
                let mut bs = Vec::with_capacity(parts.len());
                for p in parts {
                    bs.push(match &p.bias {
                        Some(b) => b.clone(),
                        None => Tensor::zeros(p.out_features, any.dtype(), any.device())?,
                    });
                }
                Some(Tensor::cat(&bs, 0)?)
            }
            None => None,
        };
        let dense: Option<Vec<&Tensor>> = parts
            .iter()
            .map(|p| match &p.weight {
                Weight::Dense(w) => Some(w),
                _ => None,
            })
            .collect();
        if let Some(ws) = dense {
            return Linear::dense(Tensor::cat(&ws, 0)?, bias).map(Some);
        }
        let quantized: Option<Vec<&QuantMatrix>> = parts
            .iter()
            .map(|p| match &p.weight {
                Weight::CpuQuantized(w) => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        Ok(quantized
            .and_then(|qs| QuantMatrix::stack(&qs))
            .map(|m| Linear::cpu_quantized(Arc::new(m), bias)))
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = match &self.weight {
            Weight::Dense(w) => match xs.rank() {
                // [tokens, in] · [in, out]
                2 => xs.matmul(&w.t()?)?,
                _ => xs.broadcast_matmul(&w.t()?)?,
            },
            Weight::Quantized(w) => w.forward(xs)?,
            Weight::CpuQuantized(w) => xs.contiguous()?.apply_op1_no_bwd(w.as_ref())?,
        };
        let ys = match &self.lora {
            None => ys,
            Some(l) => {
                let low = match xs.rank() {
                    2 => xs.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?,
                    _ => xs
                        .broadcast_matmul(&l.a.t()?)?
                        .broadcast_matmul(&l.b.t()?)?,
                };
                (ys + (low * l.scale)?)?
            }
        };
        match &self.bias {
            Some(b) => ys.broadcast_add(b),
            None => Ok(ys),
        }
    }
}

/// A token embedding table.
#[derive(Clone, Debug)]
pub enum Embedding {
    Dense(Tensor),
    /// Quantized rows, expanded on lookup: a quarter of the memory of f32.
    Quantized(Arc<QuantMatrix>),
}

impl Embedding {
    /// The rows of `ids`, `[ids.len(), dim]`.
    pub fn lookup(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => t.index_select(&Tensor::new(ids, device)?, 0),
            Embedding::Quantized(m) => {
                Tensor::from_vec(m.gather_rows(ids)?, (ids.len(), m.cols()), device)
            }
        }
    }
}
