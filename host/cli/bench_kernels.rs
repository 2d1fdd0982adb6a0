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
    println!("\n| format | batch | µs per product | GFLOP/s | µs per row | per row ÷ batch 1 |");
    println!("|---|--:|--:|--:|--:|--:|");
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
            println!(
                "| {dtype:?} | {m} | {us:.1} | {:.1} | {per_row:.1} | {:.2} |",
                flops / median.as_secs_f64() / 1e9,
                per_row / base
            );
        }
    }
    Ok(())
}
