//! `deepwasm generate`: one completion on the command line.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use deepwasm_engine::sampling::SamplingParams;
use std::time::Duration;

use deepwasm_engine::{
    BuiltinSampler, Engine, GenerateRequest, MissPolicy, PluginSampler, Prompt, Sampler,
    SamplerHosting,
};
use deepwasm_model::ChatMessage;
use deepwasm_plugins::Grants;

use crate::model::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    upstream: crate::upstream::UpstreamArgs,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Send the prompt as a user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// At most this many new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling mass (1 disables).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 disables).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Drop tokens below this fraction of the most likely one's probability.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalise tokens already in the prompt or output (1 disables).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampler's random numbers: the same seed gives the same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (text, token ids, finish reason, usage) instead
    /// of streaming text.
    #[arg(long)]
    json: bool,
    /// A LoRA adapter (a PEFT directory) to generate with.
    #[arg(long, value_name = "DIR")]
    lora: Option<std::path::PathBuf>,
    /// A sampler plugin (`.wasm`) that steers every step.
    #[arg(long, value_name = "FILE.wasm")]
    sampler: Option<std::path::PathBuf>,
    /// The sampler's JSON config.
    #[arg(long, value_name = "JSON", default_value = "{}", requires = "sampler")]
    sampler_config: String,
    /// Milliseconds a step may wait for the sampler plugin.
    #[arg(long, default_value_t = 25, requires = "sampler")]
    step_budget_ms: u64,
    /// What a missed step budget does: `wait` for the plugin (at most 8
    /// budgets; its mask is never bypassed), `fail` the request, or
    /// `fallback` to the built-in sampler for that step (the request fails
    /// after --max-misses of them).
    #[arg(long, default_value = "wait", value_parser = ["wait", "fail", "fallback"], requires = "sampler")]
    on_miss: String,
    /// Missed steps tolerated under `--on-miss fallback`.
    #[arg(long, default_value_t = 3, requires = "sampler")]
    max_misses: u32,
    /// Generate this many completions, each with its own seed (derived from
    /// --seed), decoded together.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["sampler", "best_of"])]
    n: usize,
    /// Generate this many completions and print the best by the weighted sum
    /// of the --reward plugins (ties: the first).
    #[arg(long, requires = "rewards", conflicts_with = "sampler")]
    best_of: Option<usize>,
    /// A reward plugin for --best-of, with its weight (default 1); repeatable.
    #[arg(long = "reward", value_name = "FILE.wasm[:WEIGHT]")]
    rewards: Vec<String>,
    /// JSON config for the reward named NAME.
    #[arg(long = "reward-config", value_name = "NAME=JSON")]
    reward_configs: Vec<String>,
    /// JSON object of fields the rewards get as `extra` (a ground-truth
    /// `answer`, say).
    #[arg(long, default_value = "{}")]
    extra: String,
}

pub fn run(cli: &crate::Cli, args: &GenerateArgs) -> anyhow::Result<()> {
    let upstream = args.upstream.connect()?;
    if upstream.is_some() && (args.n > 1 || args.best_of.is_some() || args.sampler.is_some()) {
        anyhow::bail!(
            "--n, --best-of and --sampler run on a local model; over --upstream, generate one \
             completion at a time (a server with --upstream serves `n` and `best_of`)"
        );
    }
    let loaded = match &upstream {
        Some((_, served)) => args.model.load_remote(served)?,
        None => args.model.load()?,
    };
    let load_time = loaded.load_time;
    let engine = Engine::from(loaded);
    let adapter = match &args.lora {
        Some(dir) if upstream.is_some() => {
            anyhow::bail!(
                "--lora {}: adapters apply to a local model, not an upstream",
                dir.display()
            )
        }
        Some(dir) => {
            let lora = deepwasm_model::lora::LoraAdapter::read(dir)?;
            Some(
                engine
                    .model
                    .prepare_adapter("lora", &lora)
                    .map_err(|e| anyhow::anyhow!("--lora {}: {e}", dir.display()))?,
            )
        }
        None => None,
    };
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        Prompt::Chat {
            messages,
            tools: Vec::new(),
        }
    } else {
        Prompt::Text {
            text: args.prompt.clone(),
            add_special_tokens: true,
        }
    };
    let request = GenerateRequest {
        max_tokens: args.max_tokens,
        params: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
            ..SamplingParams::default()
        },
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        logprobs: None,
        adapter,
        ..GenerateRequest::new(prompt)
    };
    if args.n > 1 || args.best_of.is_some() {
        return several(cli, args, &engine, &request);
    }
    let mut sampler: Box<dyn Sampler> = match &args.sampler {
        None => Box::new(BuiltinSampler),
        Some(path) => Box::new(plugin_sampler(cli, args, path, &engine)?),
    };
    let mut write_error = None;
    let completion = match upstream {
        Some((up, _)) => {
            let scheduler = deepwasm_engine::Scheduler::upstream(
                std::sync::Arc::new(engine.clone()),
                up,
                deepwasm_engine::SchedulerConfig::new(1),
            );
            let json = args.json;
            let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
            let sink_failed = failed.clone();
            let completion = deepwasm_engine::Generator::run(
                &scheduler,
                request.clone(),
                Box::new(BuiltinSampler),
                Box::new(move |delta: &deepwasm_engine::Delta| {
                    let mut failed = sink_failed.lock().unwrap_or_else(|e| e.into_inner());
                    if !json
                        && failed.is_none()
                        && let Err(e) = write_stdout(&delta.text)
                    {
                        *failed = Some(e);
                    }
                }),
                Default::default(),
            );
            write_error = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
            completion
        }
        None => engine.generate(&request, sampler.as_mut(), &mut |delta| {
            if !args.json
                && write_error.is_none()
                && let Err(e) = write_stdout(&delta.text)
            {
                write_error = Some(e);
            }
        }),
    }
    .context("generation failed")?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write to stdout");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let json = serde_json::json!({
            "model": engine.name,
            "text": completion.text,
            "tokens": completion.tokens,
            "prompt_tokens": completion.prompt_tokens,
            "finish_reason": completion.finish_reason,
            "usage": completion.usage,
        });
        writeln!(out, "{json}")?;
    } else {
        writeln!(out)?;
    }
    let t = completion.timings;
    let decode_tokens = completion.usage.completion_tokens.saturating_sub(1);
    eprintln!(
        "[{}: loaded in {:.2} s; prompt {} tokens in {:.3} s; {} tokens at {:.1} tok/s; finish: {:?}]",
        engine.name,
        load_time.as_secs_f64(),
        completion.usage.prompt_tokens,
        t.prefill.as_secs_f64(),
        completion.usage.completion_tokens,
        if t.decode.is_zero() {
            0.0
        } else {
            decode_tokens as f64 / t.decode.as_secs_f64()
        },
        completion.finish_reason
    );
    Ok(())
}

fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Load the sampler plugin with the model's tokenizer as its `tokenizer`.
fn plugin_sampler(
    cli: &crate::Cli,
    args: &GenerateArgs,
    path: &std::path::Path,
    engine: &Engine,
) -> anyhow::Result<PluginSampler> {
    serde_json::from_str::<serde_json::Value>(&args.sampler_config)
        .context("--sampler-config is not valid JSON")?;
    let plugin = cli
        .engine()?
        .load_file(path, &Grants::default())
        .with_context(|| format!("cannot load the sampler {}", path.display()))?;
    let budget = Duration::from_millis(args.step_budget_ms);
    let policy = match args.on_miss.as_str() {
        "wait" => MissPolicy::Wait,
        "fail" => MissPolicy::Fail,
        _ => MissPolicy::Fallback {
            max_misses: args.max_misses,
        },
    };
    let sampler = SamplerHosting::for_engine(engine, budget, policy).load(plugin)?;
    Ok(PluginSampler::new(
        sampler,
        &args.sampler_config,
        budget,
        policy,
    ))
}

/// `--n` and `--best-of`: several completions with their own seeds.
fn several(
    cli: &crate::Cli,
    args: &GenerateArgs,
    engine: &Engine,
    request: &GenerateRequest,
) -> anyhow::Result<()> {
    let k = args.best_of.unwrap_or(args.n);
    if k == 0 {
        anyhow::bail!("--n and --best-of must be at least 1");
    }
    let seed = args.seed.unwrap_or(0);
    let completions = engine
        .generate_n(request, k, seed)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("generation failed")?;
    let seeds = deepwasm_engine::rewards::completion_seeds(seed, k);
    let mut out = std::io::stdout().lock();
    let Some(_) = args.best_of else {
        for (i, c) in completions.iter().enumerate() {
            if args.json {
                let json = serde_json::json!({
                    "index": i, "seed": seeds[i], "text": c.text, "tokens": c.tokens,
                    "finish_reason": c.finish_reason, "usage": c.usage,
                });
                writeln!(out, "{json}")?;
            } else {
                writeln!(out, "--- completion {i} (seed {})\n{}", seeds[i], c.text)?;
            }
        }
        return Ok(());
    };
    let extra: serde_json::Value =
        serde_json::from_str(&args.extra).context("--extra is not valid JSON")?;
    if !extra.is_object() {
        anyhow::bail!("--extra must be a JSON object");
    }
    let rewards = crate::score::load_rewards(cli, &args.rewards, &args.reward_configs)?;
    let (prompt_text, _) = engine.render_prompt(&request.prompt)?;
    let samples: Vec<_> = completions
        .iter()
        .map(|c| {
            deepwasm_engine::rewards::sample_of(
                prompt_text.as_deref().unwrap_or(""),
                c,
                &args.extra,
            )
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scored = deepwasm_engine::rewards::score_samples(&rewards, &samples, threads, 256);
    let best = deepwasm_engine::rewards::best_index(&scored).expect("at least one completion");
    let c = &completions[best];
    if args.json {
        let candidates: Vec<serde_json::Value> = scored
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (fields, _) = s.to_json();
                let mut v = serde_json::Map::new();
                v.insert("index".into(), serde_json::json!(i));
                v.insert("seed".into(), serde_json::json!(seeds[i]));
                v.extend(fields);
                serde_json::Value::Object(v)
            })
            .collect();
        let json = serde_json::json!({
            "best": best, "text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason,
            "usage": c.usage, "candidates": candidates,
        });
        writeln!(out, "{json}")?;
    } else {
        writeln!(out, "{}", c.text)?;
        eprintln!(
            "[best of {k}: completion {best} (seed {}), total {:?}]",
            seeds[best], scored[best].total
        );
    }
    Ok(())
}
