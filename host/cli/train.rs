//! `deepwasm train grpo`: GRPO with a LoRA adapter, in one process.
//!
//! Each step samples groups of completions from the policy (the base with
//! the adapter as it stands) on the engine, scores them with the reward
//! plugins in their sandbox, normalises rewards within each group into
//! advantages ([`deepwasm_engine::rollout`]), and updates the adapter with
//! the GRPO loss ([`deepwasm_model::train`]): gradients accumulated over
//! the step's completions, clipped, then one AdamW update.
//!
//! The output directory holds the adapter in PEFT's layout, `log.jsonl`
//! (a line per step and per evaluation) and `checkpoint-N/` every
//! `--save-every` steps (the adapter, the optimizer's moments and the
//! step), from which `--resume` goes on.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Tensor};
use clap::{Args, Subcommand};
use deepwasm_engine::rewards::WeightedReward;
use deepwasm_engine::rollout::{self, GroupResult, Rollout, RolloutOptions, RolloutPrompt};
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::train::{reward_means, step_prompts, step_report, step_seed};
use deepwasm_engine::{Engine, Prompt, Scheduler, SchedulerConfig};
use deepwasm_model::ChatMessage;
use deepwasm_model::lora::{LoraAdapter, LoraConfig, MODULES};
use deepwasm_model::train::{AdamW, GrpoParams, LoraVars, TrainLlama};
use serde_json::{Value, json};

use crate::Cli;
use crate::model::ModelArgs;
use crate::rollout::{Row, read_rows};
use crate::score::load_rewards;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train a LoRA adapter with GRPO against reward plugins.
    Grpo(GrpoArgs),
}

#[derive(Args)]
pub struct GrpoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL prompts: each row has `prompt`; its other fields reach the
    /// rewards as `extra` (a ground-truth `answer`).
    #[arg(long, value_name = "FILE")]
    prompts: PathBuf,
    /// Held-out prompts, scored before training, every `--eval-every`
    /// steps and at the end (mean reward over `--eval-samples` each).
    #[arg(long, value_name = "FILE")]
    eval_prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    #[arg(long, default_value_t = 2)]
    eval_samples: usize,
    /// A reward plugin and its weight (default 1); repeatable.
    #[arg(long = "reward", value_name = "FILE.wasm[:WEIGHT]", required = true)]
    rewards: Vec<String>,
    /// JSON config for the reward named NAME.
    #[arg(long = "config", value_name = "NAME=JSON")]
    configs: Vec<String>,
    /// Completions per prompt.
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Prompts per step (taken in the file's order, round and round).
    #[arg(long, default_value_t = 2)]
    prompts_per_step: usize,
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// [default: twice the rank]
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// The projections to adapt, comma-separated [default: all seven].
    #[arg(long, value_delimiter = ',')]
    target_modules: Vec<String>,
    /// AdamW's learning rate.
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    #[arg(long)]
    steps: u64,
    /// β of the KL term to the base (0: none, and no reference pass).
    #[arg(long, default_value_t = 0.04)]
    kl_beta: f64,
    /// ε of the ratio's clip.
    #[arg(long, default_value_t = 0.2)]
    clip_eps: f64,
    /// The gradient's global norm is clipped to this.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Fixes the adapter's start and every rollout's samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send each prompt as a user message through the chat template.
    #[arg(long)]
    chat: bool,
    /// Sequences decoded together [default: a step's completions].
    #[arg(long)]
    batch: Option<usize>,
    /// Where the adapter, the log and checkpoints go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Keep a checkpoint every K steps (0: none).
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Go on from the newest checkpoint in `--out`.
    #[arg(long)]
    resume: bool,
}

pub fn run(cli: &Cli, cmd: &TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Grpo(args) => grpo(cli, args),
    }
}

/// What a checkpoint's `trainer_state.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: u64,
    lr: f64,
    seed: u64,
}

fn prompts_of(rows: &[Row], chat: bool) -> Vec<RolloutPrompt> {
    rows.iter()
        .map(|row| RolloutPrompt {
            prompt: if chat {
                Prompt::Chat {
                    messages: vec![ChatMessage::new("user", &row.prompt)],
                    tools: Vec::new(),
                }
            } else {
                Prompt::Text {
                    text: row.prompt.clone(),
                    add_special_tokens: true,
                }
            },
            extra: row.extra.clone(),
        })
        .collect()
}

/// Run `prompts` on `scheduler` (with `options.adapter`, the policy) and
/// return their groups.
fn sample(
    scheduler: &Scheduler,
    prompts: Vec<RolloutPrompt>,
    options: RolloutOptions,
    rewards: &[WeightedReward],
) -> anyhow::Result<(Vec<GroupResult>, rollout::Summary)> {
    let rollout = Rollout::new(scheduler.engine(), prompts, options)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut groups = Vec::new();
    let summary = rollout::run(scheduler, rollout, rewards, threads, |g| {
        groups.push(g.clone());
        anyhow::Ok(())
    })?;
    Ok((groups, summary))
}

/// The newest `checkpoint-N` in `out`.
fn newest_checkpoint(out: &Path) -> anyhow::Result<Option<(u64, PathBuf)>> {
    let mut best = None;
    let entries = match std::fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", out.display())),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if e.path().join("trainer_state.json").is_file()
            && best.as_ref().is_none_or(|(b, _)| n > *b)
        {
            best = Some((n, e.path()));
        }
    }
    Ok(best)
}

/// Write a checkpoint beside its final name and rename it into place, so
/// a kill leaves the previous one whole.
fn save_checkpoint(
    out: &Path,
    step: u64,
    vars: &LoraVars,
    opt: &AdamW,
    state: &TrainerState,
) -> anyhow::Result<()> {
    let dir = out.join(format!("checkpoint-{step}"));
    let tmp = out.join(format!(".checkpoint-{step}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    vars.to_adapter()?.save(&tmp)?;
    let moments: std::collections::HashMap<String, Tensor> = opt.state().into_iter().collect();
    candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
    std::fs::write(
        tmp.join("trainer_state.json"),
        serde_json::to_vec_pretty(state)?,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot write {}", dir.display()))?;
    Ok(())
}

/// Keep the log's lines up to `step` (what a resumed run repeats goes).
fn trim_log(path: &Path, step: u64) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).with_context(|| format!("cannot write {}", path.display()))
}

fn grpo(cli: &Cli, args: &GrpoArgs) -> anyhow::Result<()> {
    if args.group_size < 2 {
        bail!("--group-size must be at least 2: advantages compare completions within a group");
    }
    if args.prompts_per_step == 0 || args.steps == 0 || args.lora_rank == 0 {
        bail!("--prompts-per-step, --steps and --lora-rank must be at least 1");
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be a positive number");
    }
    let clip_ok = args.clip_eps > 0.0 && args.clip_eps < 1.0;
    let beta_ok = args.kl_beta.is_finite() && args.kl_beta >= 0.0;
    if !clip_ok || !beta_ok {
        bail!("--clip-eps must be in (0, 1) and --kl-beta at least 0");
    }
    let targets: Vec<&str> = args.target_modules.iter().map(String::as_str).collect();
    if let Some(bad) = targets.iter().find(|t| !MODULES.contains(t)) {
        bail!(
            "--target-modules: `{bad}` is not one of {}",
            MODULES.join(", ")
        );
    }
    let rewards = load_rewards(cli, &args.rewards, &args.configs)?;
    let names: Vec<String> = rewards.iter().map(|r| r.name.clone()).collect();
    let rows = read_rows(&args.prompts)?;
    if rows.is_empty() {
        bail!("{} holds no prompts", args.prompts.display());
    }
    let eval_rows = match &args.eval_prompts {
        Some(p) => read_rows(p)?,
        None => Vec::new(),
    };
    let base = Engine::from(args.model.load()?);
    let llama = base
        .model
        .as_llama()
        .context("LoRA training runs on Llama-family models (Llama, Qwen2, DeepSeek-R1-Distill)")?;
    let model_path = args.model.path()?;
    let train: TrainLlama = llama.trainable(DType::F32)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let config = LoraConfig::new(
        args.lora_rank,
        args.lora_alpha.unwrap_or(2.0 * args.lora_rank as f64),
        &targets,
        Some(model_path.display().to_string()),
    );
    let newest = newest_checkpoint(&args.out)?;
    if let (Some((step, dir)), false) = (&newest, args.resume) {
        // Starting afresh beside them, a later --resume would go on from
        // a checkpoint of the earlier run.
        bail!(
            "{} holds a checkpoint of an earlier run (step {step}, {}): pass --resume to go on from it, or choose another --out",
            args.out.display(),
            dir.display()
        );
    }
    let (vars, mut opt, first) = match newest {
        Some((step, dir)) => {
            let adapter = LoraAdapter::load(&dir, train.device())?;
            let vars = LoraVars::from_adapter(&train, &adapter)?;
            let mut opt = AdamW::new(&vars.vars(), args.lr)?;
            let moments =
                candle_core::safetensors::load(dir.join("optimizer.safetensors"), train.device())?;
            opt.restore(step, &moments)
                .with_context(|| format!("cannot resume from {}", dir.display()))?;
            eprintln!("resuming after step {step} from {}", dir.display());
            trim_log(&args.out.join("log.jsonl"), step)?;
            (vars, opt, step + 1)
        }
        None => {
            if args.resume {
                eprintln!("no checkpoint in {}: starting afresh", args.out.display());
            }
            let _ = std::fs::remove_file(args.out.join("log.jsonl"));
            let vars = LoraVars::init(&train, config, args.seed)?;
            let opt = AdamW::new(&vars.vars(), args.lr)?;
            (vars, opt, 1)
        }
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.out.join("log.jsonl"))
        .context("cannot open the log")?;
    let params = GrpoParams {
        kl_beta: args.kl_beta,
        clip_eps: args.clip_eps,
    };
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        ..SamplingParams::default()
    };
    sampling.validate().context("bad sampling parameters")?;
    let batch = args
        .batch
        .unwrap_or(args.group_size * args.prompts_per_step)
        .max(1);
    eprintln!(
        "training a rank-{} adapter ({} parameters) of {} for {} steps: {} prompts x {} completions a step",
        vars.config.r,
        vars.parameters(),
        base.name,
        args.steps,
        args.prompts_per_step,
        args.group_size
    );
    // One scheduler for the run; each rollout names the adapter as it
    // stands (a new one, so no cache of an older policy serves it).
    let scheduler = Scheduler::start(Arc::new(base.clone()), SchedulerConfig::new(batch))?;
    let policy = |vars: &LoraVars| -> anyhow::Result<_> {
        Ok(Some(llama.serve_adapter("policy", &vars.to_adapter()?)?))
    };
    let evaluate = |vars: &LoraVars, step: u64, log: &mut std::fs::File| -> anyhow::Result<()> {
        if eval_rows.is_empty() {
            return Ok(());
        }
        let options = RolloutOptions {
            group_size: args.eval_samples.max(1),
            max_tokens: args.max_tokens,
            params: sampling.clone(),
            seed: args.seed ^ 0xe7a1,
            adapter: policy(vars)?,
            ..RolloutOptions::default()
        };
        let (groups, _) = sample(
            &scheduler,
            prompts_of(&eval_rows, args.chat),
            options,
            &rewards,
        )?;
        let means = reward_means(&groups, &names);
        let line = json!({"step": step, "eval": means});
        eprintln!("eval after step {step}: {}", Value::Object(means));
        writeln!(log, "{line}")?;
        Ok(())
    };
    if first == 1 {
        evaluate(&vars, 0, &mut log)?;
    }
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(args.steps);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} step {pos}/{len} {elapsed_precise} (eta {eta})",
            )
            .expect("a valid progress template"),
        );
        bar.set_position(first - 1);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let all = prompts_of(&rows, args.chat);
    for step in first..=args.steps {
        let started = Instant::now();
        let chosen = step_prompts(&all, step, args.prompts_per_step);
        let options = RolloutOptions {
            group_size: args.group_size,
            max_tokens: args.max_tokens,
            params: sampling.clone(),
            seed: step_seed(args.seed, step),
            adapter: policy(&vars)?,
            ..RolloutOptions::default()
        };
        let (groups, summary) = sample(&scheduler, chosen, options, &rewards)?;
        let rollout_s = started.elapsed().as_secs_f64();
        let learn = Instant::now();
        let stats = deepwasm_engine::train::learn(
            &train,
            &vars,
            &mut opt,
            &groups,
            params,
            args.max_grad_norm,
        )?;
        let learn_s = learn.elapsed().as_secs_f64();
        let mut line = step_report(
            step,
            &groups,
            &names,
            &stats,
            &summary,
            rollout_s,
            started.elapsed().as_secs_f64(),
        );
        line.insert("train_seconds".into(), learn_s.into());
        line.insert(
            "tokens_per_second".into(),
            (summary.completion_tokens as f64 / rollout_s.max(1e-9)).into(),
        );
        let line = Value::Object(line);
        writeln!(log, "{line}")?;
        log.flush()?;
        bar.suspend(|| {
            eprintln!(
                "step {step}/{}: reward {} loss {:.4} kl {:.4} clip {:.3} | {:.1} tok/s, {:.1}s",
                args.steps,
                line["rewards"]["total"],
                stats.loss,
                stats.kl,
                line["clip_fraction"].as_f64().unwrap_or(0.0),
                line["tokens_per_second"].as_f64().unwrap_or(0.0),
                line["step_seconds"].as_f64().unwrap_or(0.0),
            )
        });
        bar.set_position(step);
        let state = TrainerState {
            step,
            lr: args.lr,
            seed: args.seed,
        };
        if args.save_every > 0 && step % args.save_every == 0 {
            save_checkpoint(&args.out, step, &vars, &opt, &state)?;
        }
        if args.eval_every > 0 && step % args.eval_every == 0 && step != args.steps {
            evaluate(&vars, step, &mut log)?;
        }
    }
    bar.finish_and_clear();
    vars.to_adapter()?.save(&args.out)?;
    evaluate(&vars, args.steps, &mut log)?;
    eprintln!("adapter written to {}", args.out.display());
    Ok(())
}
