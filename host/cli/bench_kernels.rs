//! `deepwasm bench kernels`: the quantized matrix product at each batch
//! size, the part of a decode step that grows with the sequences in it.
//!
//! One weight matrix per GGUF format (random weights, quantized by candle)
//! times `m` activation rows; the median time over repetitions, the
//! GFLOP/s it reaches (2·m·rows·cols per product), and the cost per
//! activation row against the single-row product: a batch is worth running
//! only where that ratio falls well below 1.

use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clap::Args;
use deepwasm_model::quant::QuantMatrix;

#[derive(Args)]
pub struct KernelBenchArgs {
    /// Activation rows per product (the batch: sequences, or prompt tokens).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,9,16,32,64")]
    batch: Vec<usize>,
    /// Output rows of the weight matrix (SmolLM2-135M's MLP up-projection:
    /// 1536).
    #[arg(long, default_value_t = 1536)]
    rows: usize,
    /// Input columns of the weight matrix, a multiple of 32 (SmolLM2: 576).
    #[arg(long, default_value_t = 576)]
    cols: usize,
    /// Products timed per batch size; the median is reported.
    #[arg(long, default_value_t = 200)]
    repetitions: usize,
}

pub fn run(args: &KernelBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.cols.is_multiple_of(32),
        "--cols must be a multiple of 32"
    );
    println!(
        "weights {} × {}; {} threads; median of {} products",
        args.rows,
        args.cols,
        rayon::current_num_threads(),
        args.repetitions
    );
    let peak = fma_peak(rayon::current_num_threads());
    if let Some((peak, isa)) = peak {
        println!("machine peak: {peak:.1} GFLOP/s (f32 {isa} multiply-adds on every thread)");
    }
    println!(
        "\n| format | batch | µs per product | GFLOP/s | of peak | µs per row | per row ÷ batch 1 |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|");
    let weights: Vec<f32> = (0..args.rows * args.cols)
        .map(|i| ((i.wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0) - 1.0)
        .collect();
    let weights = Tensor::from_vec(weights, (args.rows, args.cols), &Device::Cpu)?;
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let q = QTensor::quantize(&weights, dtype)?;
        let matrix = QuantMatrix::from_qtensor(&q)?
            .with_context(|| format!("no kernel of ours for {dtype:?}"))?;
        let mut single = None;
        for &m in &args.batch {
            let x: Vec<f32> = (0..m * args.cols)
                .map(|i| ((i * 7919 % 997) as f32 / 498.5) - 1.0)
                .collect();
            let mut out = vec![0f32; m * args.rows];
            let median = rayon::scope(|_| {
                for _ in 0..args.repetitions.min(20) {
                    matrix.matmul(&x, m, &mut out);
                }
                let mut times: Vec<Duration> = (0..args.repetitions)
                    .map(|_| {
                        let start = Instant::now();
                        matrix.matmul(&x, m, &mut out);
                        start.elapsed()
                    })
                    .collect();
                times.sort();
                times[times.len() / 2]
            });
            let us = median.as_secs_f64() * 1e6;
            let flops = 2.0 * (m * args.rows * args.cols) as f64;
            let per_row = us / m as f64;
            let base = *single.get_or_insert(per_row);
            let gflops = flops / median.as_secs_f64() / 1e9;
            let share = peak.map_or_else(
                || "?".into(),
                |(p, _)| format!("{:.0}%", 100.0 * gflops / p),
            );
            println!(
                "| {dtype:?} | {m} | {us:.1} | {gflops:.1} | {share} | {per_row:.1} | {:.2} |",
                per_row / base
            );
        }
    }
    Ok(())
}

/// The f32 multiply-add rate of `threads` threads running nothing else
/// (independent chains in registers, so neither latency nor memory
/// limits it): the ceiling for f32 kernels. `None` on CPUs without AVX2.
fn fma_peak(threads: usize) -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        let (isa, lanes): (&'static str, usize) = if is_x86_feature_detected!("avx512f") {
            ("AVX-512", 16)
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            ("AVX2", 8)
        } else {
            return None;
        };
        const ITERS: usize = 20_000_000;
        let run = move || {
            // SAFETY: the features each loop needs were detected above.
            unsafe {
                if lanes == 16 {
                    fma_chains_avx512(ITERS)
                } else {
                    fma_chains_avx2(ITERS)
                }
            }
        };
        run();
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(run);
            }
        });
        let flops = (threads * ITERS * CHAINS * lanes * 2) as f64;
        Some((flops / start.elapsed().as_secs_f64() / 1e9, isa))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

/// Independent multiply-add chains per loop: enough to cover the latency
/// of two FMA units.
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    acc.iter().map(|r| _mm512_reduce_add_ps(*r)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut sum = 0.0;
    for r in acc {
        // SAFETY: `out` holds the eight lanes stored.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), r) };
        sum += out.iter().sum::<f32>();
    }
    sum
}
