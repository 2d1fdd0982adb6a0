//! `deepwasm bench train`: what one GRPO update costs, with each completion
//! in a pass of its own (prompt and all) and with a group's completions in
//! one pass (the prompt once, every projection over all their tokens).
//!
//! The groups are synthetic (token ids spread over the vocabulary, each
//! completion a different length, advantages of both signs), so the
//! figures depend on the shapes only; `deepwasm train grpo` runs the same
//! update on real rollouts.

use std::time::Instant;

use anyhow::Context;
use candle_core::DType;
use clap::Args;
use deepwasm_engine::FinishReason;
use deepwasm_engine::rollout::{CompletionResult, GroupResult};
use deepwasm_engine::train::{learn_in_passes, rows_per_pass};
use deepwasm_model::lora::LoraConfig;
use deepwasm_model::train::{AdamW, GrpoParams, LoraVars};

use crate::model::ModelArgs;

#[derive(Args)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompts per update.
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// Completions per prompt.
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Tokens per prompt.
    #[arg(long, default_value_t = 48)]
    prompt_tokens: usize,
    /// The longest completion; the others are spread down to half of it.
    #[arg(long, default_value_t = 64)]
    completion_tokens: usize,
    /// The adapter's rank (on all seven projections).
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// Updates timed per way; the median is reported.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
}

pub fn run(args: &TrainBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.prompts > 0 && args.group_size > 0 && args.prompt_tokens > 0,
        "--prompts, --group-size and --prompt-tokens must be at least 1"
    );
    anyhow::ensure!(
        args.completion_tokens >= 2,
        "--completion-tokens must be at least 2"
    );
    let loaded = args.model.load()?;
    let llama = loaded
        .model
        .as_llama()
        .context("training runs on Llama-family models")?;
    let vocab = loaded.model.info().vocab_size;
    let train = llama.trainable(DType::F32)?;
    let spread = |i: usize, k: usize| ((i * 7919 + k * 104_729) % (vocab - 1)) as u32 + 1;
    let groups: Vec<GroupResult> = (0..args.prompts)
        .map(|p| {
            let completions = (0..args.group_size)
                .map(|c| {
                    let len = args.completion_tokens
                        - (c * args.completion_tokens / 2) / args.group_size.max(1);
                    CompletionResult {
                        seed: c as u64,
                        text: String::new(),
                        tokens: (0..len).map(|i| spread(i, p * 100 + c + 1)).collect(),
                        logprobs: vec![None; len],
                        finish_reason: FinishReason::Length,
                        scores: Default::default(),
                        advantage: Some(if c % 2 == 0 { 1.0 } else { -1.0 }),
                    }
                })
                .collect();
            GroupResult {
                index: p,
                prompt: String::new(),
                prompt_tokens: (0..args.prompt_tokens).map(|i| spread(i, p)).collect(),
                extra: Default::default(),
                mean_reward: Some(0.0),
                completions,
            }
        })
        .collect();
    let tokens: usize = groups
        .iter()
        .flat_map(|g| &g.completions)
        .map(|c| c.tokens.len())
        .sum();
    println!(
        "{} prompts × {} completions; {} prompt tokens each, {} completion tokens in all; rank {}; {} threads; median of {}",
        args.prompts,
        args.group_size,
        args.prompt_tokens,
        tokens,
        args.lora_rank,
        rayon::current_num_threads(),
        args.repetitions
    );
    println!("\n| pass | s per update | completion tokens/s |");
    println!("|---|--:|--:|");
    for (name, rows) in [
        ("each completion alone", 1),
        ("a group's completions together", rows_per_pass(&train)),
    ] {
        let config = LoraConfig::new(args.lora_rank, 2.0 * args.lora_rank as f64, &[], None);
        let vars = LoraVars::init(&train, config, 7)?;
        let mut opt = AdamW::new(&vars.vars(), 3e-4)?;
        let params = GrpoParams {
            kl_beta: 0.0,
            clip_eps: 0.2,
        };
        let mut times: Vec<f64> = (0..args.repetitions.max(1))
            .map(|_| {
                let start = Instant::now();
                learn_in_passes(&train, &vars, &mut opt, &groups, params, 1.0, rows)?;
                Ok(start.elapsed().as_secs_f64())
            })
            .collect::<anyhow::Result<_>>()?;
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("| {name} | {median:.2} | {:.0} |", tokens as f64 / median);
    }
    Ok(())
}
