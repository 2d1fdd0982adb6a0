use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::*;

/// Weights with a spread of magnitudes and signs.
fn weights(rows: usize, cols: usize) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn activations(m: usize, cols: usize) -> Vec<f32> {
    (0..m * cols)
        .map(|i| (i * 104_729 % 997) as f32 / 498.5 - 1.0)
        .collect()
}

/// The exact product of the dequantized weights, in f64.
fn reference(w: &[f32], x: &[f32], m: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * rows];
    for i in 0..m {
        for r in 0..rows {
            let s: f64 = (0..cols)
                .map(|k| w[r * cols + k] as f64 * x[i * cols + k] as f64)
                .sum();
            out[i * rows + r] = s as f32;
        }
    }
    out
}

#[test]
fn dequantization_matches_candles() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let q = QTensor::quantize(&weights(8, 96), dtype).unwrap();
        let ours = QuantMatrix::from_qtensor(&q).unwrap().unwrap().dequantize();
        let theirs: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours, theirs, "{dtype:?}");
    }
}

#[test]
fn products_are_exact_up_to_f32_rounding() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        for (m, rows, cols) in [
            (1, 70, 64),
            (1, 300, 1024),
            (2, 70, 96),
            (3, 70, 96),
            (7, 70, 1056),
            (9, 130, 576),
            (15, 40, 64),
            (33, 150, 192),
        ] {
            let q = QTensor::quantize(&weights(rows, cols), dtype).unwrap();
            let mat = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let w = mat.dequantize();
            let x = activations(m, cols);
            let mut out = vec![0f32; m * rows];
            mat.matmul(&x, m, &mut out);
            let want = reference(&w, &x, m, rows, cols);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                let tol = 1e-4 * (1.0 + b.abs());
                assert!(
                    (a - b).abs() <= tol,
                    "{dtype:?} m={m} {rows}x{cols} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}

/// Every kernel this machine runs agrees with the portable one, on row
/// lengths that leave partial groups of blocks (7, 8, 9, 17 blocks).
#[test]
fn every_kernel_agrees_with_the_portable_one() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        for blocks in [1, 7, 8, 9, 17] {
            let cols = blocks * 32;
            let q = QTensor::quantize(&weights(3, cols), dtype).unwrap();
            let mat = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let x = activations(1, cols);
            let sums: Vec<f32> = x.chunks_exact(32).map(|b| b.iter().sum()).collect();
            for kern in kernels::Kernels::available() {
                for r in 0..3 {
                    let a = kernels::Kernels::Portable.dot(mat.row(r), &x, &sums);
                    let b = kern.dot(mat.row(r), &x, &sums);
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                        "{dtype:?} {kern:?} {blocks}: {a} vs {b}"
                    );
                    // The multi-row kernels, where the machine has them.
                    let x2 = activations(4, cols);
                    let rows: [&[f32]; 4] = std::array::from_fn(|t| &x2[t * cols..(t + 1) * cols]);
                    if let Some(got) = kern.dot_rows::<4>(mat.row(r), rows) {
                        for (t, g) in got.iter().enumerate() {
                            let s: Vec<f32> =
                                rows[t].chunks_exact(32).map(|b| b.iter().sum()).collect();
                            let want = kernels::Kernels::Portable.dot(mat.row(r), rows[t], &s);
                            assert!(
                                (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{dtype:?} {kern:?} {blocks} rows: {g} vs {want}"
                            );
                        }
                    }
                    let mut e1 = vec![0f32; cols];
                    let mut e2 = vec![0f32; cols];
                    kernels::Kernels::Portable.expand(mat.row(r), &mut e1);
                    kern.expand(mat.row(r), &mut e2);
                    assert_eq!(e1, e2, "{dtype:?} {kern:?} expand");
                }
            }
        }
    }
}

#[test]
fn unsupported_formats_are_left_to_candle() {
    let q = QTensor::quantize(&weights(4, 256), GgmlDType::Q4K).unwrap();
    assert!(QuantMatrix::from_qtensor(&q).unwrap().is_none());
}
