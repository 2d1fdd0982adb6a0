//! `deepwasm score`: score samples from JSONL with reward plugins.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_engine::rewards::{WeightedReward, score_samples};
use deepwasm_plugins::{Grants, Limits, RewardPlugin, Sample, Sandbox, World};
use serde_json::{Map, Value, json};

use crate::Cli;

#[derive(Args)]
pub struct ScoreArgs {
    /// A reward plugin and its weight in the total (default 1). Repeat for
    /// several rewards.
    #[arg(long = "reward", value_name = "FILE.wasm[:WEIGHT]", required = true)]
    rewards: Vec<String>,
    /// JSON config for the reward named NAME (its file name without `.wasm`).
    #[arg(long = "config", value_name = "NAME=JSON")]
    configs: Vec<String>,
    /// JSONL samples: each line an object with `completion`, optionally
    /// `prompt` and `completion_ids`; every other field reaches the rewards
    /// as `extra` (a ground-truth `answer`, say). `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Threads scoring in parallel [default: the machine's cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Samples handed to a scoring thread at a time (each sample is scored
    /// in a fresh instance of its own).
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

/// A reward named on the command line.
pub struct RewardSpec {
    pub name: String,
    pub path: PathBuf,
    pub weight: f64,
}

/// Parse `FILE.wasm[:WEIGHT]`.
pub fn parse_reward_spec(spec: &str) -> anyhow::Result<RewardSpec> {
    let (path, weight) = match spec.rsplit_once(':') {
        Some((path, w)) if !path.is_empty() => match w.parse::<f64>() {
            Ok(weight) if weight.is_finite() => (path, weight),
            Ok(_) => bail!("the weight in `{spec}` must be a finite number"),
            Err(_) => bail!("the weight in `{spec}` is not a number (expected FILE.wasm[:WEIGHT])"),
        },
        _ => (spec, 1.0),
    };
    let path = PathBuf::from(path);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .with_context(|| format!("`{spec}` names no file"))?;
    Ok(RewardSpec { name, path, weight })
}

/// Load the rewards named on the command line, giving each its config.
pub fn load_rewards(
    cli: &Cli,
    specs: &[String],
    configs: &[String],
) -> anyhow::Result<Vec<WeightedReward>> {
    let engine = cli.engine()?;
    let mut config_by_name = BTreeMap::new();
    for c in configs {
        let (name, json) = c
            .split_once('=')
            .with_context(|| format!("`--config {c}` must be NAME=JSON"))?;
        serde_json::from_str::<Value>(json)
            .with_context(|| format!("the config for `{name}` is not valid JSON"))?;
        config_by_name.insert(name.to_owned(), json.to_owned());
    }
    let mut rewards: Vec<WeightedReward> = Vec::new();
    for spec in specs {
        let mut spec = parse_reward_spec(spec)?;
        if rewards.iter().any(|r| r.name == spec.name) {
            spec.name = format!("{}#{}", spec.name, rewards.len() + 1);
        }
        let plugin = engine
            .load_file(&spec.path, &Grants::default())
            .with_context(|| format!("cannot load reward {}", spec.path.display()))?;
        let reward = RewardPlugin::new(plugin, Sandbox::new(Limits::for_world(World::Reward)))?;
        let config = config_by_name
            .remove(&spec.name)
            .unwrap_or_else(|| "{}".to_owned());
        rewards.push(WeightedReward {
            name: spec.name,
            reward,
            weight: spec.weight,
            config,
        });
    }
    if let Some(name) = config_by_name.keys().next() {
        bail!("`--config {name}=...` names no reward given with --reward");
    }
    Ok(rewards)
}

/// Turn one JSONL row into a sample: `prompt`, `completion`,
/// `completion_ids` (or `completion_tokens`) are the sample, the rest is
/// `extra`.
pub fn sample_from_row(row: Value) -> anyhow::Result<Sample> {
    let Value::Object(mut fields) = row else {
        bail!("a sample must be a JSON object");
    };
    let text =
        |fields: &mut Map<String, Value>, key: &str, required: bool| -> anyhow::Result<String> {
            match fields.remove(key) {
                Some(Value::String(s)) => Ok(s),
                Some(other) => bail!("`{key}` must be a string, not {other}"),
                None if required => bail!("missing field `{key}`"),
                None => Ok(String::new()),
            }
        };
    let prompt = text(&mut fields, "prompt", false)?;
    let completion = text(&mut fields, "completion", true)?;
    let ids = fields
        .remove("completion_ids")
        .or_else(|| fields.remove("completion_tokens"));
    let completion_tokens = match ids {
        None => Vec::new(),
        Some(v) => {
            serde_json::from_value(v).context("`completion_ids` must be a list of token ids")?
        }
    };
    Ok(Sample {
        prompt,
        completion,
        completion_tokens,
        extra: Value::Object(fields).to_string(),
    })
}

fn read_samples(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut samples = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not valid JSON", path.display(), i + 1))?;
        samples.push(
            sample_from_row(row).with_context(|| format!("{} line {}", path.display(), i + 1))?,
        );
    }
    Ok(samples)
}

pub fn run(cli: &Cli, args: &ScoreArgs) -> anyhow::Result<()> {
    let rewards = load_rewards(cli, &args.rewards, &args.configs)?;
    let samples = read_samples(&args.input)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let start = Instant::now();
    let scored = score_samples(&rewards, &samples, threads, args.batch);
    let elapsed = start.elapsed();

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = 0usize;
    for (i, s) in scored.iter().enumerate() {
        let (fields, f) = s.to_json();
        failed += f;
        let mut row = Map::new();
        row.insert("index".into(), json!(i));
        row.extend(fields);
        writeln!(out, "{}", Value::Object(row))?;
    }
    out.flush()?;
    eprintln!(
        "scored {} samples with {} reward(s) in {:.3} s ({} failed)",
        samples.len(),
        rewards.len(),
        elapsed.as_secs_f64(),
        failed
    );
    Ok(())
}
