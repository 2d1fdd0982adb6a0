//! `deepwasm generate`: one completion on the command line.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::{BuiltinSampler, Engine, GenerateRequest, Prompt};
use deepwasm_model::ChatMessage;

use crate::model::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
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
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let load_time = loaded.load_time;
    let engine = Engine::from(loaded);
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
        ..GenerateRequest::new(prompt)
    };
    let mut write_error = None;
    let completion = engine
        .generate(&request, &mut BuiltinSampler, &mut |delta| {
            if !args.json
                && write_error.is_none()
                && let Err(e) = write_stdout(&delta.text)
            {
                write_error = Some(e);
            }
        })
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
