//! `deepwasm rollout`: GRPO-style rollouts for RL trainers.
//!
//! For each prompt of a JSONL file, `G` completions with their own seeds,
//! their token ids and per-token log-probabilities, each reward plugin's
//! score, the weighted total, and the advantage of each completion within its
//! group. One JSON line per prompt on stdout, in the file's order, then one
//! summary line: the engine's rollout ([`deepwasm_engine::rollout`]), the
//! same lines `POST /v1/rollouts` streams (docs/rollouts.md).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_engine::rollout::{self, Rollout, RolloutOptions, RolloutPrompt};
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::{Engine, Prompt, Scheduler, SchedulerConfig};
use deepwasm_model::ChatMessage;
use serde_json::{Map, Value};

use crate::Cli;
use crate::model::ModelArgs;
use crate::score::load_rewards;

#[derive(Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    upstream: crate::upstream::UpstreamArgs,
    /// JSONL prompts: each row has `prompt` (text); every other field (the
    /// ground-truth `answer`, an `id`) reaches the rewards as `extra` and is
    /// echoed in the output's `extra`.
    #[arg(long, value_name = "FILE")]
    prompts: PathBuf,
    /// Completions per prompt.
    #[arg(long, default_value_t = rollout::DEFAULT_GROUP_SIZE)]
    group_size: usize,
    /// A reward plugin and its weight (default 1); repeatable.
    #[arg(long = "reward", value_name = "FILE.wasm[:WEIGHT]")]
    rewards: Vec<String>,
    /// JSON config for the reward named NAME.
    #[arg(long = "config", value_name = "NAME=JSON")]
    configs: Vec<String>,
    #[arg(long, default_value_t = rollout::DEFAULT_MAX_TOKENS)]
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
    /// Sequences decoded together; the rest wait for a place (groups
    /// overlap: a finished sequence's place goes to the next at once).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Compute every completion's prompt itself instead of copying the
    /// cache of a completion of the same prompt (for comparison: the
    /// outputs are the same).
    #[arg(long)]
    no_prompt_sharing: bool,
    /// A completion passes when its total reaches this.
    #[arg(long, default_value_t = rollout::DEFAULT_PASS_THRESHOLD)]
    pass_threshold: f64,
    /// Threads scoring rewards [default: the machine's cores].
    #[arg(long)]
    reward_threads: Option<usize>,
}

/// One prompt of the input.
pub(crate) struct Row {
    pub(crate) prompt: String,
    /// The row's other fields.
    pub(crate) extra: Map<String, Value>,
}

pub(crate) fn read_rows(path: &PathBuf) -> anyhow::Result<Vec<Row>> {
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
pub(crate) fn progress(total: u64) -> indicatif::ProgressBar {
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
    let upstream = args.upstream.connect()?;
    let engine = Arc::new(Engine::from(match &upstream {
        Some((_, served)) => args.model.load_remote(served)?,
        None => args.model.load()?,
    }));
    let threads = args
        .reward_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = RolloutOptions {
        group_size: args.group_size,
        max_tokens: args.max_tokens,
        params: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            ..SamplingParams::default()
        },
        seed: args.seed,
        pass_threshold: args.pass_threshold,
        adapter: None,
    };
    options
        .params
        .validate()
        .context("bad sampling parameters")?;
    let prompts = rows
        .into_iter()
        .map(|row| RolloutPrompt {
            prompt: if args.chat {
                Prompt::Chat {
                    messages: vec![ChatMessage::new("user", &row.prompt)],
                    tools: Vec::new(),
                }
            } else {
                Prompt::Text {
                    text: row.prompt,
                    add_special_tokens: true,
                }
            },
            extra: row.extra,
        })
        .collect();
    let rollout = Rollout::new(&engine, prompts, options)?;
    // Nobody streams here: the scheduler's default step budget only keeps
    // a long prompt from holding up groups that are decoding.
    let config = SchedulerConfig {
        share_prompts: !args.no_prompt_sharing,
        ..SchedulerConfig::new(args.batch)
    };
    let scheduler = match upstream {
        // `--batch` requests to the upstream at once.
        Some((up, _)) => Scheduler::upstream(engine, up, config),
        None => Scheduler::start(engine, config)?,
    };
    let bar = progress((rollout.prompts() * args.group_size) as u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let summary = rollout::run(&scheduler, rollout, &rewards, threads, |group| {
        bar.inc(group.completions.len() as u64);
        serde_json::to_writer(&mut out, group)?;
        writeln!(out)?;
        out.flush()?;
        anyhow::Ok(())
    })?;
    bar.finish_and_clear();
    writeln!(out, "{}", summary.to_line())?;
    out.flush()?;
    Ok(())
}
