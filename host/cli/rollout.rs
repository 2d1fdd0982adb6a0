//! `deepwasm rollout`: GRPO-style rollouts for RL trainers.
//!
//! For each prompt of a JSONL file, `G` completions with their own seeds,
//! their token ids and per-token log-probabilities, each reward plugin's
//! score, the weighted total, and the advantage of each completion within its
//! group. One JSON line per prompt on stdout, then one summary line.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_engine::rewards::{completion_seeds, group_advantages, sample_of, score_samples};
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::{Completion, Engine, GenerateRequest, Prompt};
use deepwasm_model::ChatMessage;
use serde_json::{Map, Value, json};

use crate::Cli;
use crate::model::ModelArgs;
use crate::score::load_rewards;

#[derive(Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL prompts: each row has `prompt` (text); every other field (the
    /// ground-truth `answer`, an `id`) reaches the rewards as `extra` and is
    /// echoed in the output.
    #[arg(long, value_name = "FILE")]
    prompts: PathBuf,
    /// Completions per prompt.
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// A reward plugin and its weight (default 1); repeatable.
    #[arg(long = "reward", value_name = "FILE.wasm[:WEIGHT]")]
    rewards: Vec<String>,
    /// JSON config for the reward named NAME.
    #[arg(long = "config", value_name = "NAME=JSON")]
    configs: Vec<String>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Base seed: completion j of prompt i is seeded from it, i and j, so a
    /// rollout repeats exactly.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send each prompt as a user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Sequences decoded together in one batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// A completion passes when its total reaches this.
    #[arg(long, default_value_t = 1.0)]
    pass_threshold: f64,
    /// Threads scoring rewards [default: the machine's cores].
    #[arg(long)]
    reward_threads: Option<usize>,
}

/// One prompt of the input.
struct Row {
    prompt: String,
    /// The row's other fields.
    extra: Map<String, Value>,
}

fn read_rows(path: &PathBuf) -> anyhow::Result<Vec<Row>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{} line {}", path.display(), i + 1);
        let Value::Object(mut fields) =
            serde_json::from_str(&line).with_context(|| format!("{}: not valid JSON", where_()))?
        else {
            bail!("{}: a row must be a JSON object", where_());
        };
        let prompt = match fields.remove("prompt") {
            Some(Value::String(p)) => p,
            Some(other) => bail!("{}: `prompt` must be a string, not {other}", where_()),
            None => bail!("{}: missing field `prompt`", where_()),
        };
        rows.push(Row {
            prompt,
            extra: fields,
        });
    }
    Ok(rows)
}

/// A progress bar on a terminal, nothing otherwise.
fn progress(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} completions {elapsed_precise} (eta {eta})",
        )
        .expect("a valid progress template"),
    );
    bar
}

pub fn run(cli: &Cli, args: &RolloutArgs) -> anyhow::Result<()> {
    if args.group_size == 0 {
        bail!("--group-size must be at least 1");
    }
    let rewards = load_rewards(cli, &args.rewards, &args.configs)?;
    let rows = read_rows(&args.prompts)?;
    let engine = Engine::from(args.model.load()?);
    let threads = args
        .reward_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        ..SamplingParams::default()
    };
    params.validate().context("bad sampling parameters")?;

    let start = Instant::now();
    let bar = progress((rows.len() * args.group_size) as u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut completions, mut tokens, mut passed, mut scored_n) = (0usize, 0usize, 0usize, 0usize);
    let (mut reward_sum, mut failures) = (0f64, 0usize);
    let mut generation = std::time::Duration::ZERO;
    let mut scoring = std::time::Duration::ZERO;
    // Whole groups per batch, so a group's completions are decoded together.
    let prompts_per_batch = (args.batch / args.group_size).max(1);
    for (chunk_index, chunk) in rows.chunks(prompts_per_batch).enumerate() {
        let mut reqs = Vec::new();
        let mut seeds = Vec::new();
        for (k, row) in chunk.iter().enumerate() {
            let index = chunk_index * prompts_per_batch + k;
            let prompt = if args.chat {
                Prompt::Chat {
                    messages: vec![ChatMessage::new("user", &row.prompt)],
                    tools: Vec::new(),
                }
            } else {
                Prompt::Text {
                    text: row.prompt.clone(),
                    add_special_tokens: true,
                }
            };
            for seed in completion_seeds(args.seed.wrapping_add(index as u64), args.group_size) {
                reqs.push(GenerateRequest {
                    max_tokens: args.max_tokens,
                    params: SamplingParams {
                        seed: Some(seed),
                        ..params.clone()
                    },
                    logprobs: Some(0),
                    ..GenerateRequest::new(prompt.clone())
                });
                seeds.push(seed);
            }
        }
        let t = Instant::now();
        let results = engine.generate_requests(&reqs);
        generation += t.elapsed();
        let mut done: Vec<Completion> = Vec::with_capacity(results.len());
        for r in results {
            done.push(r.context("generation failed")?);
        }
        bar.inc(done.len() as u64);

        // The prompt as the model saw it, per row, for the rewards.
        let t = Instant::now();
        let mut samples = Vec::with_capacity(done.len());
        for (k, row) in chunk.iter().enumerate() {
            let (text, _) = engine.render_prompt(&reqs[k * args.group_size].prompt)?;
            let extra = Value::Object(row.extra.clone()).to_string();
            for c in &done[k * args.group_size..(k + 1) * args.group_size] {
                samples.push(sample_of(text.as_deref().unwrap_or(&row.prompt), c, &extra));
            }
        }
        let scored = score_samples(&rewards, &samples, threads, 256);
        scoring += t.elapsed();

        for (k, row) in chunk.iter().enumerate() {
            let group = k * args.group_size..(k + 1) * args.group_size;
            let totals: Vec<Option<f64>> = scored[group.clone()].iter().map(|s| s.total).collect();
            let advantages = group_advantages(&totals);
            let present: Vec<f64> = totals.iter().flatten().copied().collect();
            let mean =
                (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64);
            let mut items = Vec::with_capacity(args.group_size);
            for (j, i) in group.clone().enumerate() {
                let c = &done[i];
                let (mut fields, failed) = scored[i].to_json();
                failures += failed;
                completions += 1;
                tokens += c.tokens.len();
                if let Some(t) = scored[i].total {
                    scored_n += 1;
                    reward_sum += t;
                    if t >= args.pass_threshold {
                        passed += 1;
                    }
                }
                let logprobs: Vec<Option<f32>> = c
                    .logprobs
                    .iter()
                    .flatten()
                    .map(|lp| lp.as_ref().map(|l| l.logprob))
                    .collect();
                let mut item = Map::new();
                item.insert("seed".into(), json!(seeds[i]));
                item.insert("text".into(), json!(c.text));
                item.insert("tokens".into(), json!(c.tokens));
                item.insert("logprobs".into(), json!(logprobs));
                item.insert("finish_reason".into(), json!(c.finish_reason));
                item.append(&mut fields);
                item.insert("advantage".into(), json!(advantages[j]));
                items.push(Value::Object(item));
            }
            let mut line = Map::new();
            line.insert("index".into(), json!(chunk_index * prompts_per_batch + k));
            line.insert("prompt".into(), json!(row.prompt));
            line.insert(
                "prompt_tokens".into(),
                json!(done[group.start].prompt_tokens),
            );
            for (key, value) in &row.extra {
                line.insert(key.clone(), value.clone());
            }
            line.insert("mean_reward".into(), json!(mean));
            line.insert("completions".into(), Value::Array(items));
            writeln!(out, "{}", Value::Object(line))?;
        }
        out.flush()?;
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed();
    let summary = json!({
        "summary": {
            "prompts": rows.len(),
            "completions": completions,
            "completion_tokens": tokens,
            "mean_reward": (scored_n > 0).then(|| reward_sum / scored_n as f64),
            "pass_rate": (completions > 0).then(|| passed as f64 / completions as f64),
            "pass_threshold": args.pass_threshold,
            "reward_failures": failures,
            "seconds": elapsed.as_secs_f64(),
            "generation_seconds": generation.as_secs_f64(),
            "reward_seconds": scoring.as_secs_f64(),
            "completions_per_second": completions as f64 / elapsed.as_secs_f64(),
            "tokens_per_second": tokens as f64 / elapsed.as_secs_f64(),
        }
    });
    writeln!(out, "{summary}")?;
    out.flush()?;
    Ok(())
}
