//! `deepwasm bench prefill`: what a long prompt costs the streams already
//! running. One client streams a chat; while it does, a second client sends
//! a chat with a long prompt. The first client's inter-token gaps while that
//! prompt is prefilled, against the same stream on an idle server, show
//! whether the long prompt holds the shared step; the second client's time
//! to first token shows what chunking costs the long prompt itself.
//!
//! Each `--step-tokens` value runs on a server of its own, started in this
//! process on 127.0.0.1; `0` turns chunking off (each prompt is prefilled in
//! one forward pass), the behaviour to compare against.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use deepwasm_server::tenants::Tenants;
use serde_json::{Value, json};

use crate::Cli;
use crate::bench_server::{Client, Timing, runtime, start_in_process};
use crate::model::ModelArgs;

#[derive(Args)]
pub struct PrefillBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The servers' `--step-tokens` values to compare; 0 prefills each
    /// prompt in one forward pass.
    #[arg(long, value_delimiter = ',', default_value = "0,32")]
    step_tokens: Vec<usize>,
    /// Tokens of the long prompt, about (the table gives the exact count).
    #[arg(long, default_value_t = 2000)]
    prompt_tokens: usize,
    /// Tokens the streaming client receives on the idle server.
    #[arg(long, default_value_t = 128)]
    stream_tokens: usize,
    /// Times the long prompt is sent (one after another, each beside a new
    /// stream, each prompt labelled with its run so none is a cache hit);
    /// the gaps of all runs are pooled.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    repetitions: u8,
    /// Print every run's gaps as JSON as well.
    #[arg(long)]
    json: bool,
}

/// One long-prompt run beside a stream.
struct Run {
    /// The stream's inter-token gaps from the long prompt's send to its
    /// first token.
    gaps: Vec<Duration>,
    /// The long prompt's request.
    long: Timing,
    prompt_tokens: usize,
}

pub fn run(cli: &Cli, args: &PrefillBenchArgs) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let prompt = long_prompt(args.prompt_tokens);
    println!(
        "one client streams (temperature 0, EOS ignored); a second sends a ~{}-token prompt \
         for 1 token after the stream's 16th token; {} runs per setting",
        args.prompt_tokens, args.repetitions
    );
    println!(
        "\n| step tokens | idle gap p50 / p99 ms | gap p50 / p99 / max ms during the prefill | \
         p99 ÷ idle | long prompt TTFT ms | prompt tokens |"
    );
    println!("|--:|--:|--:|--:|--:|--:|");
    for &step_tokens in &args.step_tokens {
        let base = start_in_process(
            &runtime,
            cli,
            &args.model,
            Tenants::single(),
            deepwasm_server::Config {
                step_tokens: if step_tokens == 0 {
                    usize::MAX
                } else {
                    step_tokens
                },
                ..Default::default()
            },
        )?;
        let client = Client::new(&base, None);
        let (idle, runs) = runtime.block_on(measure(&client, &prompt, args))?;
        let (idle_p50, idle_p99) = crate::bench::stats(idle.clone());
        let gaps: Vec<Duration> = runs.iter().flat_map(|r| r.gaps.iter().copied()).collect();
        let (p50, p99) = crate::bench::stats(gaps.clone());
        let max = gaps.iter().max().copied().unwrap_or_default();
        let (ttft, _) = crate::bench::stats(runs.iter().map(|r| r.long.ttft).collect());
        let label = if step_tokens == 0 {
            "off (one pass)".to_owned()
        } else {
            step_tokens.to_string()
        };
        println!(
            "| {label} | {} / {} | {} / {} / {} | {:.2}× | {} | {} |",
            ms(idle_p50),
            ms(idle_p99),
            ms(p50),
            ms(p99),
            ms(max),
            p99.as_secs_f64() / idle_p99.as_secs_f64(),
            ms(ttft),
            runs.first().map_or(0, |r| r.prompt_tokens),
        );
        if args.json {
            let runs: Vec<Value> = runs
                .iter()
                .map(|r| {
                    json!({
                        "gaps_ms": r.gaps.iter().map(|g| g.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                        "long_ttft_ms": r.long.ttft.as_secs_f64() * 1e3,
                        "prompt_tokens": r.prompt_tokens,
                    })
                })
                .collect();
            println!(
                "{}",
                json!({
                    "step_tokens": step_tokens,
                    "idle_gaps_ms": idle.iter().map(|g| g.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                    "runs": runs,
                })
            );
        }
    }
    Ok(())
}

/// The stream's gaps on the idle server, and each long-prompt run.
async fn measure(
    client: &Client,
    prompt: &str,
    args: &PrefillBenchArgs,
) -> anyhow::Result<(Vec<Duration>, Vec<Run>)> {
    let model = client.model().await?;
    let stream_body = |max_tokens: usize| {
        json!({
            "model": model,
            "messages": [{"role": "user", "content": "Tell me about the history of bicycles."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": true,
        })
    };
    // Warm up, then the idle stream.
    client.stream_chat(stream_body(8)).await?;
    let idle = gaps(
        &client
            .stream_chat(stream_body(args.stream_tokens))
            .await?
            .arrivals,
    );

    // Each run's prompt begins differently, so none is served from the
    // blocks the server keeps of an earlier one (only the chat template's
    // opening is shared, as between any two chats). They have one length:
    // counted once, with a label no run uses.
    let labelled = |r: u8| format!("Run {r}. {prompt}");
    let counted = prompt_tokens(client, &model, &labelled(args.repetitions)).await?;
    let mut runs = Vec::new();
    for r in 0..args.repetitions {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        // The stream runs until the long prompt's answer is in.
        let stream = {
            let client = client.clone();
            let body = stream_body(8192);
            tokio::spawn(async move {
                let stop = async {
                    let _ = done_rx.await;
                };
                client.stream_chat_until(body, stop).await
            })
        };
        // The long prompt goes when the stream is well under way.
        tokio::time::sleep(STREAM_LEAD).await;
        let long = client
            .stream_chat(json!({
                "model": model,
                "messages": [{"role": "user", "content": labelled(r)}],
                "max_tokens": 1,
                "temperature": 0,
            }))
            .await;
        let _ = done_tx.send(());
        let stream = stream.await.context("the stream's task panicked")??;
        let long = long?;
        runs.push(Run {
            gaps: window_gaps(&stream, &long),
            long,
            prompt_tokens: counted,
        });
    }
    Ok((idle, runs))
}

/// How long the stream runs before the long prompt is sent: dozens of its
/// tokens on an idle server.
const STREAM_LEAD: Duration = Duration::from_millis(300);

/// The stream's inter-token gaps that overlap the long request's wait for
/// its first token (when the long prompt is being prefilled).
fn window_gaps(stream: &Timing, long: &Timing) -> Vec<Duration> {
    let from = long.started;
    let to = long.started + long.ttft;
    stream
        .arrivals
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (stream.started + w[0], stream.started + w[1]);
            (b > from && a < to).then(|| b - a)
        })
        .collect()
}

/// Differences between consecutive arrivals.
fn gaps(arrivals: &[Duration]) -> Vec<Duration> {
    arrivals.windows(2).map(|w| w[1] - w[0]).collect()
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

/// A prompt of about `tokens` tokens: numbered sentences of ordinary prose.
fn long_prompt(tokens: usize) -> String {
    // Each sentence is ~16 tokens with a Llama-style tokenizer.
    let mut text = String::from("Summarise the following notes in one sentence.\n\n");
    for i in 0..tokens.div_ceil(16) {
        text.push_str(&format!(
            "Note {i}: the keeper walked to the lighthouse and counted the ships at sea. "
        ));
    }
    text
}

/// The prompt's token count, as the server counts it (one token generated).
async fn prompt_tokens(client: &Client, model: &str, prompt: &str) -> anyhow::Result<usize> {
    let v = client
        .request(
            "POST",
            "/v1/chat/completions",
            Some(json!({
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 1,
            })),
        )
        .await?;
    v["usage"]["prompt_tokens"]
        .as_u64()
        .map(|n| n as usize)
        .context("the answer has no usage")
}
