//! Linear layers over dense or GGUF-quantized weights.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

use crate::quant::QuantMatrix;

/// `y = x Wᵀ + b` with `W` of shape `[out, in]`, dense or quantized.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    out_features: usize,
    in_features: usize,
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
        }
    }

    /// The layers stacked into one, `[Σ out, in]`, so one product computes
    /// them all (the query, key and value projections; the gate and up
    /// projections). `None` when they cannot share a product: candle's
    /// quantized weights, mixed kinds or widths.
    pub fn stack(parts: &[&Linear]) -> Result<Option<Linear>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        if parts.iter().any(|p| p.in_features != first.in_features) {
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
