//! `deepwasm bench`: benchmarks with their peers, run side by side.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use deepwasm_plugins::{
    Grants, Limits, Prepared, RewardPlugin, Sample, SamplerPlugin, SamplingParams, Sandbox, World,
    top_k,
};

use crate::Cli;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode speed of a model, beside llama.cpp's llama-bench.
    Model(crate::bench_model::ModelBenchArgs),
    /// What a sampler plugin costs per step: masks over DeepSeek's
    /// vocabulary, decode speed with and without plugins.
    Sampler(crate::bench_sampler::SamplerBenchArgs),
    /// Plugin host overheads: instantiation, a sampler step over a
    /// DeepSeek-sized logits handle, reward throughput against CPython.
    Plugins(PluginBenchArgs),
    /// The same reward and sampler built from Rust, C, JavaScript and
    /// Python: size, compile, instantiate and per-call latency.
    Languages(crate::bench_langs::LangBenchArgs),
    /// Concurrent streaming clients against the HTTP API: aggregate
    /// tokens/s and time to first token, with and without a sampler plugin.
    Server(crate::bench_server::ServerBenchArgs),
    /// Neighbour latency under attack: one tenant's short chats, idle and
    /// while another tenant runs hostile plugins.
    Attack(crate::bench_attack::AttackBenchArgs),
    /// A long run: many well-behaved clients beside every attack at once;
    /// their errors, and the process's memory and threads over time.
    Soak(crate::bench_soak::SoakBenchArgs),
    /// What a long prompt costs the streams already running: their
    /// inter-token gaps while it is prefilled, with and without chunking.
    Prefill(crate::bench_prefill::PrefillBenchArgs),
    /// The quantized matrix product at each batch size: time, GFLOP/s and
    /// cost per activation row.
    Kernels(crate::bench_kernels::KernelBenchArgs),
    /// One batched decode step at several batch sizes, beside llama.cpp's
    /// llama-batched-bench.
    Step(crate::bench_step::StepBenchArgs),
    /// The GPU check: fidelity of every architecture on the device against
    /// the CPU, then prefill and decode speed on random-weight checkpoints
    /// of real models' shapes, into one JSON report (scripts/gpu-check).
    Gpu(crate::bench_gpu::GpuBenchArgs),
    /// Sharing state through PostgreSQL (`serve --state`) against the
    /// embedded default: plugin upload, list, first use and delete, and
    /// the admission of a request.
    State(crate::bench_state::StateBenchArgs),
    /// One GRPO update of a LoRA adapter: each completion in a pass of its
    /// own against a group's completions in one pass.
    Train(crate::bench_train::TrainBenchArgs),
}

#[derive(Args)]
pub struct PluginBenchArgs {
    /// Where the built plugins are (`cargo plugins` puts them in target/plugins).
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// Python interpreter for the CPython reward peer.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Samples in the reward throughput run.
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// Iterations of each timed loop.
    #[arg(long, default_value_t = 2_000)]
    iterations: usize,
    /// Samples per reward call.
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

/// The DeepSeek-V3/R1 vocabulary: logits per step.
const VOCAB: usize = 129_280;

pub fn run(cli: &Cli, cmd: &BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Plugins(args) => plugins(cli, args),
        BenchCommand::Model(args) => crate::bench_model::run(args),
        BenchCommand::Sampler(args) => crate::bench_sampler::run(cli, args),
        BenchCommand::Languages(args) => crate::bench_langs::run(args),
        BenchCommand::Server(args) => crate::bench_server::run(cli, args),
        BenchCommand::Attack(args) => crate::bench_attack::run(cli, args),
        BenchCommand::Soak(args) => crate::bench_soak::run(cli, args),
        BenchCommand::Prefill(args) => crate::bench_prefill::run(cli, args),
        BenchCommand::Kernels(args) => crate::bench_kernels::run(args),
        BenchCommand::Train(args) => crate::bench_train::run(args),
        BenchCommand::Step(args) => crate::bench_step::run(args),
        BenchCommand::Gpu(args) => crate::bench_gpu::run(cli, args),
        BenchCommand::State(args) => crate::bench_state::run(args),
    }
}

/// Sampling parameters with nothing set: the request's defaults.
pub(crate) fn no_params() -> SamplingParams {
    SamplingParams {
        temperature: None,
        top_k: None,
        top_p: None,
        min_p: None,
        repetition_penalty: None,
        presence_penalty: None,
        frequency_penalty: None,
        seed: None,
    }
}

/// Median and 99th percentile of `samples`.
pub(crate) fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn time(iterations: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..iterations.min(50) {
        f();
    }
    stats(
        (0..iterations)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn plugins(cli: &Cli, args: &PluginBenchArgs) -> anyhow::Result<()> {
    let engine = cli.engine()?;
    let load = |name: &str| {
        let path = args.plugins.join(format!("{name}.wasm"));
        engine
            .load_file(&path, &Grants::default())
            .with_context(|| {
                format!(
                    "cannot load {} (build the plugins with `cargo plugins`)",
                    path.display()
                )
            })
    };
    let n = args.iterations;
    println!("| what | median | p99 |");
    println!("|---|---|---|");

    // Instantiation of a pre-linked component, with its store and WASI context.
    let probe = load("logits-probe")?;
    let sandbox = Sandbox::new(Limits::for_world(World::Sampler));
    let (median, p99) = time(n, || {
        probe.try_instantiate(&sandbox).expect("instantiate");
    });
    println!(
        "| instantiate a pre-linked Rust component (store + WASI context included) | {} | {} |",
        us(median),
        us(p99)
    );

    // One sampler step over 129,280 logits: the plugin's query through the
    // handle, against the same query done natively.
    let logits = Arc::new(pseudo_random_logits(VOCAB));
    let params = no_params();
    for (query, native) in [
        (
            "top-k",
            Box::new(|v: &[f32]| top_k(v, 40).len()) as Box<dyn Fn(&[f32]) -> usize>,
        ),
        (
            "copy-all",
            Box::new(|v: &[f32]| std::hint::black_box(v.to_vec()).len()),
        ),
    ] {
        let sampler = SamplerPlugin::new(probe.clone(), sandbox.clone())?;
        let config = format!(r#"{{"query": "{query}", "k": 40}}"#);
        let mut seq = sampler.open(&config, &[1, 2, 3], &params)?;
        let mut step = 0;
        let (median, p99) = time(n, || {
            let p = seq.prepare(step, &[]).expect("prepare");
            assert!(matches!(p, Prepared::NeedLogits));
            seq.decide(step, logits.clone()).expect("decide");
            step += 1;
        });
        println!(
            "| sampler step, {query}{} over {VOCAB} logits, through the handle | {} | {} |",
            if query == "top-k" { "(40)" } else { "" },
            us(median),
            us(p99)
        );
        let (median, p99) = time(n, || {
            std::hint::black_box(native(std::hint::black_box(&logits)));
        });
        println!(
            "| the same {query} natively | {} | {} |",
            us(median),
            us(p99)
        );
    }

    reward_throughput(&engine, args, load("r1-format")?)
}

/// A completion of about 430 characters, formatted or not.
fn completion(i: usize) -> String {
    let reasoning = "Let me think about this step by step. First, add the numbers; then check the result again. "
        .repeat(4);
    let answer = format!("The answer is \\boxed{{{}}}.", i * 7 % 1000);
    match i % 4 {
        0 => format!("{reasoning}{answer}"),
        1 => format!("<think>{reasoning}<think>again</think>{answer}"),
        _ => format!("<think>\n{reasoning}\n</think>\n{answer}"),
    }
}

fn reward_throughput(
    _engine: &deepwasm_plugins::PluginEngine,
    args: &PluginBenchArgs,
    plugin: deepwasm_plugins::Plugin,
) -> anyhow::Result<()> {
    let samples: Vec<Sample> = (0..args.samples)
        .map(|i| Sample {
            prompt: "What is the sum?".into(),
            completion: completion(i),
            completion_tokens: vec![],
            extra: "{}".into(),
        })
        .collect();
    let avg_len = samples.iter().map(|s| s.completion.len()).sum::<usize>() / samples.len().max(1);
    let reward = RewardPlugin::new(plugin, Sandbox::new(Limits::for_world(World::Reward)))?;
    println!();
    println!(
        "R1 format reward, {} samples of ~{avg_len} characters, batches of {}:",
        samples.len(),
        args.batch
    );
    println!();
    println!("| scorer | samples/s | scored 1.0 |");
    println!("|---|---|---|");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
    {
        let mut best = Duration::MAX;
        let mut ones = 0;
        for _ in 0..3 {
            let start = Instant::now();
            let scores = reward.score_parallel(&samples, "{}", threads, args.batch);
            best = best.min(start.elapsed());
            ones = scores
                .iter()
                .filter(|s| matches!(s, Ok(Some(v)) if *v == 1.0))
                .count();
        }
        println!(
            "| deepwasm, Wasm sandbox, {threads} thread(s) | {:.0} | {ones} |",
            samples.len() as f64 / best.as_secs_f64()
        );
    }

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("completions.jsonl");
    let lines: Vec<String> = samples
        .iter()
        .map(|s| serde_json::json!({"completion": s.completion}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n"))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/trl_think_format.py");
    let out = Command::new(&args.python)
        .arg(&script)
        .arg(&path)
        .output()
        .with_context(|| format!("cannot run {}", args.python))?;
    if !out.status.success() {
        bail!(
            "the CPython peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let peer: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the CPython peer's output")?;
    println!(
        "| CPython {}, TRL's think-format regex, in process | {:.0} | {} |",
        python_version(&args.python),
        peer["per_second"].as_f64().unwrap_or(0.0),
        peer["ones"]
    );
    Ok(())
}

fn python_version(python: &str) -> String {
    Command::new(python)
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Deterministic logits spread like a model's: a few high, most low.
fn pseudo_random_logits(n: usize) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            (-(1.0 - u).ln() * 2.0 - 8.0) as f32
        })
        .collect()
}
