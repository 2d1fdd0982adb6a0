//! `deepwasm bench step`: one batched decode step of many sequences, beside
//! llama.cpp's `llama-batched-bench` on the same file.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_model::SeqInput;

use crate::model::ModelArgs;

#[derive(Args)]
pub struct StepBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Sequences decoded together, comma-separated.
    #[arg(long, default_value = "1,8,16,32", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Prompt tokens each sequence holds before decoding
    /// (llama-batched-bench's `-npp`).
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Decode steps timed at each batch size (`-ntg`).
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// llama.cpp's llama-batched-bench, run on the same file as the peer
    /// [default: the reference build of scripts/reference/build-llama-cpp,
    /// if present]
    #[arg(long)]
    llama_batched_bench: Option<PathBuf>,
}

/// One batch size's decode: seconds per step and where the time went.
struct Measured {
    step: Duration,
    profile: Vec<(&'static str, Duration)>,
}

fn measure(
    model: &dyn deepwasm_model::CausalLm,
    args: &StepBenchArgs,
    batch: usize,
) -> anyhow::Result<Measured> {
    let vocab = model.info().vocab_size as u32;
    // Distinct prompts, so nothing is shared between sequences.
    let prompts: Vec<Vec<u32>> = (0..batch as u32)
        .map(|s| {
            (0..args.context as u32)
                .map(|i| (i * 7919 + s * 104_729 + 13) % vocab)
                .collect()
        })
        .collect();
    rayon::scope(|_| {
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
        let mut inputs: Vec<SeqInput> = prompts
            .iter()
            .zip(caches.iter_mut())
            .map(|(p, cache)| SeqInput {
                adapter: None,
                tokens: p,
                cache,
            })
            .collect();
        let mut next = argmax_rows(&model.forward(&mut inputs)?)?;
        let before = model.profile();
        let start = Instant::now();
        for _ in 0..args.steps {
            let mut inputs: Vec<SeqInput> = next
                .iter()
                .zip(caches.iter_mut())
                .map(|(t, cache)| SeqInput {
                    adapter: None,
                    tokens: std::slice::from_ref(t),
                    cache,
                })
                .collect();
            next = argmax_rows(&model.forward(&mut inputs)?)?;
        }
        let step = start.elapsed() / args.steps.max(1) as u32;
        let profile = model
            .profile()
            .into_iter()
            .zip(before)
            .map(|((name, after), (_, before))| (name, (after - before) / args.steps.max(1) as u32))
            .collect();
        Ok(Measured { step, profile })
    })
}

fn argmax_rows(logits: &candle_core::Tensor) -> anyhow::Result<Vec<u32>> {
    Ok(logits
        .to_vec2::<f32>()?
        .iter()
        .map(|row| deepwasm_plugins::argmax(row).token)
        .collect())
}

pub fn run(args: &StepBenchArgs) -> anyhow::Result<()> {
    let path = args.model.path()?;
    let loaded = args.model.load()?;
    let model = loaded.model.clone();
    let threads = rayon::current_num_threads();
    println!("model: {}", path.display());
    println!(
        "each sequence holds {} prompt tokens, then {} decode steps are timed; {threads} thread(s)",
        args.context, args.steps
    );
    println!();
    println!(
        "| engine | batch | step (ms) | decode (tok/s) | per sequence (ms) | where the step goes |"
    );
    println!("|---|--:|--:|--:|--:|---|");
    for &batch in &args.batch {
        let m = measure(&*model, args, batch)?;
        let ms = m.step.as_secs_f64() * 1e3;
        let forward = m
            .profile
            .iter()
            .find(|(n, _)| *n == "forward")
            .map(|(_, d)| d.as_secs_f64())
            .unwrap_or(0.0);
        let parts: Vec<String> = m
            .profile
            .iter()
            .filter(|(n, _)| *n != "forward" && forward > 0.0)
            .map(|(n, d)| format!("{n} {:.0}%", 100.0 * d.as_secs_f64() / forward))
            .collect();
        println!(
            "| deepwasm | {batch} | {ms:.2} | {:.1} | {:.2} | {} |",
            batch as f64 / m.step.as_secs_f64(),
            ms / batch as f64,
            parts.join(", ")
        );
    }

    let bin = args
        .llama_batched_bench
        .clone()
        .or_else(|| crate::bench_model::reference_bin("llama-batched-bench"));
    let Some(bin) = bin.filter(|b| b.is_file()) else {
        println!(
            "\n(no llama-batched-bench found: build it with scripts/reference/build-llama-cpp, or pass --llama-batched-bench)"
        );
        return Ok(());
    };
    let most = args.batch.iter().max().copied().unwrap_or(1);
    let batches: Vec<String> = args.batch.iter().map(|b| b.to_string()).collect();
    let out = Command::new(&bin)
        .arg("-m")
        .arg(&path)
        .args(["-t", &threads.to_string()])
        .args(["-c", &(most * (args.context + args.steps) + 16).to_string()])
        .args(["-b", "2048", "-ub", "512"])
        .args(["-npp", &args.context.to_string()])
        .args(["-ntg", &args.steps.to_string()])
        .args(["-npl", &batches.join(",")])
        .args(["--output-format", "jsonl"])
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "llama-batched-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!();
    println!("peer: {}", bin.display());
    println!();
    println!("| engine | batch | step (ms) | decode (tok/s) | per sequence (ms) |");
    println!("|---|--:|--:|--:|--:|");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(b), Some(t_tg), Some(ntg)) =
            (r["pl"].as_u64(), r["t_tg"].as_f64(), r["tg"].as_u64())
        else {
            continue;
        };
        let ms = 1e3 * t_tg / ntg.max(1) as f64;
        println!(
            "| llama.cpp | {b} | {ms:.2} | {:.1} | {:.2} |",
            r["speed_tg"].as_f64().unwrap_or(0.0),
            ms / b.max(1) as f64
        );
    }
    Ok(())
}
