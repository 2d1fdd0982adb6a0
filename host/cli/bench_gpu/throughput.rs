//! Throughput on random-weight checkpoints of real models' shapes: prefill
//! tok/s of one long prompt, and decode tok/s at each batch size through
//! the engine's batched generation (`Engine::generate_batch`, the batcher
//! the CLI runs), with the built-in sampler and with a Wasm sampler plugin
//! on every sequence.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::{DType, Device};
use deepwasm_engine::generate::DeltaSink;
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::{
    BatchItem, BuiltinSampler, DEFAULT_STEP_BUDGET, Delta, Engine, GenerateRequest,
    LogitsPlacement, MissPolicy, PluginSampler, Prompt, Sampler, SamplerHosting,
};
use deepwasm_model::LoadOptions;
use deepwasm_plugins::{Grants, PluginEngine, SamplerPlugin};
use serde_json::{Value, json};

use super::checkpoint::Spec;
use super::{Outcome, error_text};

/// How the throughput runs are set up.
pub struct Plan<'a> {
    pub device: &'a Device,
    pub prompt_tokens: usize,
    pub batches: &'a [usize],
    pub steps: usize,
    /// Where checkpoints are written (each removed after its run).
    pub scratch: &'a Path,
    /// The top-k sampler component, when it was found.
    pub top_k: Option<&'a Path>,
    pub plugins: &'a PluginEngine,
    /// Where each step's logits are kept.
    pub logits: LogitsPlacement,
}

/// Prompt tokens of each sequence of a decode run: short, so the batch's
/// prompts all go in the first step and the window measured is decode.
const DECODE_PROMPT: usize = 16;
/// Prefill runs measured; the median is reported.
const PREFILL_RUNS: usize = 3;
/// Sampling at every decode step: what both samplers do (the top-k
/// plugin's own configuration is the same).
const TOP_K: usize = 40;
const TEMPERATURE: f32 = 0.7;
/// Seed of every random checkpoint.
const SEED: u64 = 0x5EED_0001;

/// Write `spec`, load it through the normal loader on the device and
/// measure it; its entry of the report.
pub fn measure(spec: &Spec, plan: &Plan<'_>, outcome: &mut Outcome) -> Value {
    let mut entry = json!({
        "name": spec.name,
        "shapes_from": spec.source,
        "config": spec.config,
        "parameters": spec.parameters(),
    });
    match run(spec, plan, &mut entry) {
        Ok(()) => entry["status"] = json!("measured"),
        Err(e) => {
            let text = error_text(&format!("{e:#}"));
            outcome.fail(&format!("{}: {text}", spec.name));
            entry["status"] = json!("failed");
            entry["error"] = json!(text);
        }
    }
    entry
}

fn run(spec: &Spec, plan: &Plan<'_>, entry: &mut Value) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("deepwasm-gpu-check-")
        .tempdir_in(plan.scratch)
        .with_context(|| format!("cannot make a directory in {}", plan.scratch.display()))?;
    // The public checkpoints ship bf16 weights; the loader computes in the
    // device's default dtype (bf16 on CUDA, f32 on the CPU).
    eprintln!(
        "throughput: {}: writing {:.2} GB of random weights",
        spec.name,
        spec.parameters() as f64 * 2e-9
    );
    let start = Instant::now();
    let bytes = spec.write(dir.path(), DType::BF16, super::shapes::STD, SEED)?;
    entry["weights_file_dtype"] = json!("bf16");
    entry["checkpoint_bytes"] = json!(bytes);
    entry["write_s"] = json!(start.elapsed().as_secs_f64());

    eprintln!("throughput: {}: loading", spec.name);
    let start = Instant::now();
    let loaded = deepwasm_model::load(
        dir.path(),
        &LoadOptions {
            device: plan.device.clone(),
            ..LoadOptions::default()
        },
    )
    .with_context(|| {
        format!(
            "cannot load the checkpoint written to {}",
            dir.path().display()
        )
    })?;
    entry["load_s"] = json!(start.elapsed().as_secs_f64());
    entry["compute_dtype"] = json!(super::fidelity::dtype_label(
        deepwasm_model::llama::default_dtype(plan.device)
    ));
    let engine = Engine::from(loaded).with_logits_placement(plan.logits);
    entry["logits_on_device"] = json!(plan.logits.on_device(plan.device));
    let vocab = engine.model.info().vocab_size as u32;
    entry["kv_bytes_per_token"] = json!(engine.model.info().kv_bytes_per_token);

    eprintln!("throughput: {}: measuring", spec.name);
    // First launches compile kernels (CUDA) and size buffers: not timed.
    decode(&engine, 2, 4, vocab, None)?;

    let mut prefill = Vec::new();
    for run in 0..PREFILL_RUNS {
        let tokens = spread(plan.prompt_tokens, run as u32, vocab);
        let req = GenerateRequest {
            max_tokens: 1,
            ignore_eos: true,
            ..GenerateRequest::new(Prompt::Tokens(tokens))
        };
        let c = engine
            .generate(&req, &mut BuiltinSampler, &mut |_| {})
            .context("the prefill run")?;
        prefill.push(plan.prompt_tokens as f64 / c.timings.prefill.as_secs_f64());
    }
    prefill.sort_by(f64::total_cmp);
    entry["prefill"] = json!({
        "prompt_tokens": plan.prompt_tokens,
        "tok_s": prefill[prefill.len() / 2],
        "runs": prefill,
    });

    let sampler = match plan.top_k {
        Some(path) => Some(top_k_sampler(&engine, plan.plugins, path)?),
        None => None,
    };
    let mut rows = Vec::new();
    for &batch in plan.batches {
        let built_in = decode(&engine, batch, plan.steps, vocab, None)
            .with_context(|| format!("decode at batch {batch}, built-in sampler"))?;
        rows.push(built_in.json(batch, "built-in"));
        match &sampler {
            Some(s) => {
                let with_plugin = decode(&engine, batch, plan.steps, vocab, Some(s))
                    .with_context(|| format!("decode at batch {batch}, top-k plugin"))?;
                rows.push(with_plugin.json(batch, "top-k plugin"));
            }
            None => rows.push(json!({
                "batch": batch,
                "sampler": "top-k plugin",
                "status": "skipped: the top-k plugin component was not found",
            })),
        }
    }
    entry["decode"] = json!(rows);
    Ok(())
}

/// The top-k sampler plugin, hosted for `engine`, instantiated once.
fn top_k_sampler(
    engine: &Engine,
    plugins: &PluginEngine,
    path: &Path,
) -> anyhow::Result<SamplerPlugin> {
    let plugin = plugins
        .load_file(path, &Grants::default())
        .with_context(|| format!("cannot load {}", path.display()))?;
    let sampler =
        SamplerHosting::for_engine(engine, DEFAULT_STEP_BUDGET, MissPolicy::Wait).load(plugin)?;
    sampler.warm_up()?;
    Ok(sampler)
}

/// `n` token ids spread over the vocabulary, different for each `salt`
/// from the first token on (so no two prompts share a cached prefix).
fn spread(n: usize, salt: u32, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(7919) + salt.wrapping_mul(104_729) + 13) % vocab)
        .collect()
}

/// One decode run's result.
struct Decoded {
    /// Tokens produced after every sequence had its first.
    tokens: usize,
    window: Duration,
    /// Steps a plugin answered past its budget (plugin runs).
    misses: u32,
    /// The run's logits traffic: rows kept on the device, bytes to the
    /// host and to the device, rows copied whole.
    traffic: [u64; 4],
}

impl Decoded {
    fn json(&self, batch: usize, sampler: &str) -> Value {
        let secs = self.window.as_secs_f64();
        let steps = self.tokens as f64 / batch as f64;
        json!({
            "batch": batch,
            "sampler": sampler,
            "tokens": self.tokens,
            "seconds": secs,
            "tok_s": self.tokens as f64 / secs,
            "step_ms": 1e3 * secs / steps.max(1.0),
            "plugin_misses": self.misses,
            "logits": {
                "device_rows": self.traffic[0],
                "to_host_bytes_per_row": self.traffic[1] as f64 / self.traffic[0].max(1) as f64,
                "to_device_bytes_per_row": self.traffic[2] as f64 / self.traffic[0].max(1) as f64,
                "whole_rows_copied": self.traffic[3],
            },
        })
    }
}

/// `batch` sequences of `steps + 1` tokens each, generated together; the
/// rate over the window from the moment the last of them had its first
/// token (its prompt done) to the last token.
fn decode(
    engine: &Engine,
    batch: usize,
    steps: usize,
    vocab: u32,
    plugin: Option<&SamplerPlugin>,
) -> anyhow::Result<Decoded> {
    let requests: Vec<GenerateRequest> = (0..batch)
        .map(|i| GenerateRequest {
            max_tokens: steps + 1,
            ignore_eos: true,
            params: SamplingParams {
                temperature: TEMPERATURE,
                top_k: TOP_K,
                seed: Some(i as u64),
                ..SamplingParams::default()
            },
            ..GenerateRequest::new(Prompt::Tokens(spread(DECODE_PROMPT, i as u32 + 1, vocab)))
        })
        .collect();
    let mut builtin: Vec<BuiltinSampler> = Vec::new();
    let mut plugged: Vec<PluginSampler> = Vec::new();
    match plugin {
        Some(p) => plugged.extend((0..batch).map(|i| {
            PluginSampler::new(
                p.clone(),
                &format!(r#"{{"k": {TOP_K}, "temperature": {TEMPERATURE}, "seed": {i}}}"#),
                DEFAULT_STEP_BUDGET,
                MissPolicy::Wait,
            )
        })),
        None => builtin.resize_with(batch, BuiltinSampler::default),
    }
    let samplers = builtin
        .iter_mut()
        .map(|s| s as &mut dyn Sampler)
        .chain(plugged.iter_mut().map(|s| s as &mut dyn Sampler));
    // (when, sequence, tokens) of every delta.
    let arrivals: Mutex<Vec<(Instant, usize, usize)>> = Mutex::new(Vec::new());
    let mut sinks: Vec<Box<DeltaSink<'_>>> = (0..batch)
        .map(|i| {
            let arrivals = &arrivals;
            Box::new(move |d: &Delta| {
                let now = Instant::now();
                arrivals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((now, i, d.tokens.len()));
            }) as Box<DeltaSink<'_>>
        })
        .collect();
    let items: Vec<BatchItem<'_>> = requests
        .iter()
        .zip(samplers)
        .zip(sinks.iter_mut())
        .map(|((req, sampler), on_delta)| BatchItem {
            req,
            sampler,
            on_delta: on_delta.as_mut(),
        })
        .collect();
    let traffic = &engine.logits_traffic;
    let count = || {
        [
            traffic.device_rows(),
            traffic.to_host_bytes(),
            traffic.to_device_bytes(),
            traffic.whole_rows_copied(),
        ]
    };
    let before = count();
    for (i, result) in engine.generate_batch(items).into_iter().enumerate() {
        result.with_context(|| format!("sequence {i} of {batch}"))?;
    }
    let after = count();
    drop(sinks);
    let arrivals = arrivals.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut first = vec![None; batch];
    for &(t, i, _) in &arrivals {
        first[i].get_or_insert(t);
    }
    let from = first
        .iter()
        .flatten()
        .max()
        .copied()
        .context("no sequence produced a token")?;
    let to = arrivals.iter().map(|a| a.0).max().unwrap_or(from);
    let tokens = arrivals
        .iter()
        .filter(|(t, ..)| *t > from)
        .map(|a| a.2)
        .sum();
    let misses = plugged.iter().map(PluginSampler::misses).sum();
    Ok(Decoded {
        tokens,
        window: to - from,
        misses,
        traffic: std::array::from_fn(|i| after[i] - before[i]),
    })
}
