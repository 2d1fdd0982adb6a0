//! `deepwasm bench model`: prefill and decode speed of a model, beside
//! llama.cpp's `llama-bench` on the same file when it is available.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_model::SeqInput;

use crate::model::ModelArgs;

#[derive(Args)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens processed in one forward pass (llama-bench's `-p`).
    #[arg(long, default_value_t = 64)]
    prompt: usize,
    /// Tokens decoded one at a time after it (llama-bench's `-n`).
    #[arg(long, default_value_t = 64)]
    decode: usize,
    /// Thread counts to measure, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// llama.cpp's llama-bench, run on the same file as the peer [default:
    /// the reference build of scripts/reference/build-llama-cpp, if present]
    #[arg(long)]
    llama_bench: Option<PathBuf>,
    /// Measure in this process with its thread settings and print JSON (the
    /// parent runs one such child per thread count).
    #[arg(long, hide = true)]
    child: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Prefill and decode rates in this process, as the thread pool is set up.
fn measure(args: &ModelBenchArgs) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    let loaded = args.model.load()?;
    let load_time = start.elapsed();
    let model = loaded.model.clone();
    let vocab = model.info().vocab_size as u32;
    // A fixed, varied prompt: token ids spread over the vocabulary.
    let prompt: Vec<u32> = (0..args.prompt as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..args.repetitions.max(1) {
        // On a pool thread, as the engine runs: kernels split work inline.
        let (p, t) = rayon::scope(|_| -> anyhow::Result<(Duration, Duration)> {
            let mut cache = model.new_cache();
            let start = Instant::now();
            let logits = model.forward(&mut [SeqInput {
                adapter: None,
                tokens: &prompt,
                cache: &mut cache,
            }])?;
            let prefill = start.elapsed();
            let mut next = deepwasm_plugins::argmax(&logits.squeeze(0)?.to_vec1::<f32>()?).token;
            let start = Instant::now();
            for _ in 0..args.decode {
                let logits = model.forward(&mut [SeqInput {
                    adapter: None,
                    tokens: &[next],
                    cache: &mut cache,
                }])?;
                next = deepwasm_plugins::argmax(&logits.squeeze(0)?.to_vec1::<f32>()?).token;
            }
            Ok((prefill, start.elapsed()))
        })?;
        pp.push(args.prompt as f64 / p.as_secs_f64());
        tg.push(args.decode as f64 / t.as_secs_f64());
    }
    let profile: serde_json::Map<String, serde_json::Value> = model
        .profile()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), serde_json::json!(v.as_secs_f64())))
        .collect();
    Ok(serde_json::json!({
        "name": loaded.name,
        "load_s": load_time.as_secs_f64(),
        "pp": median(pp),
        "tg": median(tg),
        "peak_rss_mib": peak_rss_mib(),
        "kv_bytes_per_token": model.info().kv_bytes_per_token,
        "profile": profile,
    }))
}

pub fn run(args: &ModelBenchArgs) -> anyhow::Result<()> {
    if args.child {
        println!("{}", measure(args)?);
        return Ok(());
    }
    let path = args.model.path()?;
    println!("model: {}", path.display());
    println!();
    let mut notes = Vec::new();
    println!(
        "| engine | threads | prefill pp{} (tok/s) | decode tg{} (tok/s) | load (s) | peak RSS (MiB) |",
        args.prompt, args.decode
    );
    println!("|---|---|---|---|---|---|");
    for &threads in &args.threads {
        // A process per thread count: rayon's pool and candle's kernels both
        // take their thread count from RAYON_NUM_THREADS, once.
        let out = Command::new(std::env::current_exe()?)
            .args(["bench", "model", "--child", "--device", &args.model.device])
            .args(["--mla-cache", &args.model.mla_cache])
            .arg("--model")
            .arg(&path)
            .args([
                "--prompt",
                &args.prompt.to_string(),
                "--decode",
                &args.decode.to_string(),
            ])
            .args(["--repetitions", &args.repetitions.to_string()])
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()?;
        if !out.status.success() {
            bail!(
                "the measurement with {threads} thread(s) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let r: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("the measurement's JSON")?;
        println!(
            "| deepwasm | {threads} | {:.1} | {:.1} | {:.2} | {:.0} |",
            r["pp"].as_f64().unwrap_or(0.0),
            r["tg"].as_f64().unwrap_or(0.0),
            r["load_s"].as_f64().unwrap_or(0.0),
            r["peak_rss_mib"].as_f64().unwrap_or(0.0)
        );
        let p = &r["profile"];
        if let Some(forward) = p["forward"].as_f64().filter(|f| *f > 0.0) {
            let share = |k: &str| 100.0 * p[k].as_f64().unwrap_or(0.0) / forward;
            notes.push(format!(
                "{threads} thread(s): attention {:.0}% and mixture-of-experts {:.0}% of forward time",
                share("attention"),
                share("moe")
            ));
        }
        if threads == args.threads[0] {
            notes.push(format!(
                "attention cache: {} bytes per token ({} cache)",
                r["kv_bytes_per_token"], args.model.mla_cache
            ));
        }
    }
    for n in notes {
        println!("\n{n}");
    }

    let llama_bench = args
        .llama_bench
        .clone()
        .or_else(|| reference_bin("llama-bench"));
    match llama_bench {
        Some(bin) if bin.is_file() => {
            let threads: Vec<String> = args.threads.iter().map(|t| t.to_string()).collect();
            let out = Command::new(&bin)
                .arg("-m")
                .arg(&path)
                .args(["-t", &threads.join(",")])
                .args([
                    "-p",
                    &args.prompt.to_string(),
                    "-n",
                    &args.decode.to_string(),
                ])
                .args(["-r", &args.repetitions.to_string(), "-o", "json"])
                .output()
                .with_context(|| format!("cannot run {}", bin.display()))?;
            if !out.status.success() {
                bail!(
                    "llama-bench failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let rows: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("llama-bench's JSON")?;
            println!();
            println!(
                "peer: llama.cpp {} ({})",
                rows[0]["build_commit"].as_str().unwrap_or("?"),
                bin.display()
            );
            println!();
            println!("| engine | threads | test | tok/s |");
            println!("|---|---|---|---|");
            for r in rows.as_array().into_iter().flatten() {
                let test = if r["n_gen"].as_u64().unwrap_or(0) > 0 {
                    format!("tg{}", r["n_gen"])
                } else {
                    format!("pp{}", r["n_prompt"])
                };
                println!(
                    "| llama.cpp | {} | {} | {:.1} |",
                    r["n_threads"],
                    test,
                    r["avg_ts"].as_f64().unwrap_or(0.0)
                );
            }
        }
        _ => println!(
            "\n(no llama-bench found: build it with scripts/reference/build-llama-cpp, or pass --llama-bench)"
        ),
    }
    Ok(())
}

/// Where `scripts/reference/build-llama-cpp` puts the llama.cpp program
/// `name`, if it has been built.
pub fn reference_bin(name: &str) -> Option<PathBuf> {
    let cache = crate::model::model_cache().parent()?.to_owned();
    let src = cache.join("reference/src");
    for entry in std::fs::read_dir(&src).ok()? {
        let bin = entry
            .ok()?
            .path()
            .join("vendor/llama.cpp/build/bin")
            .join(name);
        if bin.is_file() {
            return Some(bin);
        }
    }
    None
}
