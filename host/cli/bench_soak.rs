//! `deepwasm bench soak`: a long run of well-behaved clients beside every
//! attack at once. Tenant `b`'s clients loop over plain chats, chats
//! steered by its own sampler plugin and reward scoring; tenant `a` runs
//! every attack of `bench attack` the whole time. At the end: `b`'s
//! requests, errors (there should be none) and latency by kind, and the
//! process's memory and thread count sampled along the way (they should
//! stay flat after warm-up).
//!
//! Every loop is bounded in time and count, and all traffic goes to the
//! in-process server on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Cli;
use crate::bench_attack::{
    Attack, Call, KEY_A, KEY_B, SHUTDOWN_GRACE, attack_call, default_plugins_dir, paced_attacker,
    read_components, upload_attacks,
};
use crate::bench_server::Client;
use crate::model::ModelArgs;

#[derive(Args)]
pub struct SoakBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Where `cargo plugins` put the built plugins [default: as `bench
    /// attack`]
    #[arg(long, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// How long the run lasts, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Tenant b's clients, each sending one request after another.
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

/// How often memory and threads are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The first part of the run, left out of "after warm-up".
const WARM_UP_SHARE: f64 = 0.2;

/// Pause of each attacking task between requests.
const ATTACK_PAUSE: Duration = Duration::from_millis(50);

/// Most requests one client sends.
const MAX_CALLS_PER_CLIENT: usize = 100_000;

/// What tenant b's clients send, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Chat,
    SteeredChat,
    Score,
}

/// The plugins tenant b uploads: a sampler for its steered chats, a reward.
const B_SAMPLER: &str = "greedy";
const B_REWARD: &str = "r1-format";

pub fn run(cli: &Cli, args: &SoakBenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.seconds == 0 {
        bail!("--clients and --seconds must be at least 1");
    }
    let attacks = Attack::value_variants()
        .iter()
        .copied()
        .filter(|a| *a != Attack::Chats)
        .collect::<Vec<_>>();
    let dir = args.plugins_dir.clone().unwrap_or_else(default_plugins_dir);
    let components = read_components(&dir, &attacks)?;
    let mut own = BTreeMap::new();
    for name in [B_SAMPLER, B_REWARD] {
        let path = dir.join(format!("{name}.wasm"));
        own.insert(
            name,
            std::fs::read(&path)
                .with_context(|| format!("cannot read {} (run `cargo plugins`)", path.display()))?,
        );
    }
    let runtime = crate::bench_server::runtime()?;
    let base = crate::bench_attack::start_two_tenants(&runtime, cli, &args.model, args.clients)?;
    let result = runtime.block_on(soak(&base, &components, own, &attacks, args));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

async fn soak(
    base: &str,
    components: &BTreeMap<&'static str, Vec<u8>>,
    own: BTreeMap<&str, Vec<u8>>,
    attacks: &[Attack],
    args: &SoakBenchArgs,
) -> anyhow::Result<()> {
    let (a, b) = (
        Client::new(base, Some(KEY_A)),
        Client::new(base, Some(KEY_B)),
    );
    let model = b.model().await?;
    upload_attacks(&a, components, attacks).await?;
    for (name, bytes) in own {
        b.upload(name, bytes).await?;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let (stop, stopped) = watch::channel(false);
    let sent = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = attacks
        .iter()
        .map(|&attack| {
            tokio::spawn(paced_attacker(
                a.clone(),
                model.clone(),
                attack,
                sent.clone(),
                stopped.clone(),
                deadline,
                ATTACK_PAUSE,
            ))
        })
        .collect();
    let clients: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(client(b.clone(), model.clone(), i, deadline)))
        .collect();
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        samples.push((started.elapsed(), process_status()));
        tokio::time::sleep(SAMPLE_EVERY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
    samples.push((started.elapsed(), process_status()));
    let mut by_kind: BTreeMap<Kind, Vec<Call>> = BTreeMap::new();
    for c in clients {
        for (kind, call) in c.await.context("a client task failed")? {
            by_kind.entry(kind).or_default().push(call);
        }
    }
    let _ = stop.send(true);
    let mut attack_outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for t in attackers {
        if let Ok(Ok(calls)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            for c in calls {
                *attack_outcomes.entry(c.outcome).or_default() += 1;
            }
        }
    }
    report(&model, args, &by_kind, &samples, &attack_outcomes);
    Ok(())
}

/// One of b's clients: its requests in turn until `deadline`.
async fn client(b: Client, model: String, i: usize, deadline: Instant) -> Vec<(Kind, Call)> {
    let mut calls = Vec::new();
    let kinds = [Kind::Chat, Kind::SteeredChat, Kind::Score];
    while Instant::now() < deadline && calls.len() < MAX_CALLS_PER_CLIENT {
        let kind = kinds[(i + calls.len()) % kinds.len()];
        let (path, body) = request(kind, &model);
        let started = Instant::now();
        let (outcome, message) = attack_call(&b, path, &body).await;
        calls.push((
            kind,
            Call {
                took: started.elapsed(),
                outcome,
                message,
            },
        ));
    }
    calls
}

fn request(kind: Kind, model: &str) -> (&'static str, Value) {
    let chat = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": true,
    });
    match kind {
        Kind::Chat => ("/v1/chat/completions", chat),
        Kind::SteeredChat => {
            let mut body = chat;
            body["sampler"] = json!({"plugin": B_SAMPLER});
            ("/v1/chat/completions", body)
        }
        Kind::Score => (
            "/v1/rewards/score",
            json!({
                "rewards": [{"plugin": B_REWARD}],
                "samples": [{"prompt": "Say hi.", "completion": "<think>hi</think>Hi!"}],
            }),
        ),
    }
}

/// Resident memory (MiB) and threads of this process, from /proc.
fn process_status() -> (f64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:") as f64 / 1024.0, field("Threads:"))
}

fn report(
    model: &str,
    args: &SoakBenchArgs,
    by_kind: &BTreeMap<Kind, Vec<Call>>,
    samples: &[(Duration, (f64, u64))],
    attack_outcomes: &BTreeMap<String, usize>,
) {
    println!(
        "model {model}; {} s; tenant b: {} clients (chat, chat with its `{B_SAMPLER}` sampler, \
         `{B_REWARD}` scoring, in turn); tenant a: every attack at once\n",
        args.seconds, args.clients
    );
    println!("| b's requests | sent | failed | p50 ms | p99 ms |");
    println!("|---|--:|--:|--:|--:|");
    for (kind, calls) in by_kind {
        let ok: Vec<Duration> = calls
            .iter()
            .filter(|c| c.outcome == "200")
            .map(|c| c.took)
            .collect();
        let (p50, p99) = if ok.is_empty() {
            ("—".to_owned(), "—".to_owned())
        } else {
            let (p50, p99) = crate::bench::stats(ok.clone());
            (
                format!("{:.0}", p50.as_secs_f64() * 1e3),
                format!("{:.0}", p99.as_secs_f64() * 1e3),
            )
        };
        println!(
            "| {kind:?} | {} | {} | {p50} | {p99} |",
            calls.len(),
            calls.len() - ok.len()
        );
        if let Some(c) = calls.iter().find(|c| c.outcome != "200") {
            println!(
                "|   first failure: {} {} | | | | |",
                c.outcome,
                c.message.as_deref().unwrap_or("")
            );
        }
    }
    let warm = samples
        .iter()
        .filter(|(t, _)| t.as_secs_f64() >= args.seconds as f64 * WARM_UP_SHARE)
        .map(|(_, s)| *s)
        .collect::<Vec<_>>();
    let (first, last) = (warm.first().copied(), warm.last().copied());
    let max_rss = warm.iter().map(|s| s.0).fold(0.0, f64::max);
    let max_threads = warm.iter().map(|s| s.1).max().unwrap_or(0);
    if let (Some(first), Some(last)) = (first, last) {
        println!(
            "\nafter warm-up ({}% of the run): RSS {:.0} → {:.0} MiB (max {:.0}); threads {} → {} (max {})",
            (WARM_UP_SHARE * 100.0) as u32,
            first.0,
            last.0,
            max_rss,
            first.1,
            last.1,
            max_threads
        );
    }
    let outcomes: Vec<String> = attack_outcomes
        .iter()
        .map(|(o, n)| format!("{o}×{n}"))
        .collect();
    println!("tenant a's requests: {}", outcomes.join(", "));
}
