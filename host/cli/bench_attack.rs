//! `deepwasm bench attack`: what one tenant's hostile plugins cost its
//! neighbour. Tenant `b` sends short chats one after another, first on an
//! idle server, then while tenant `a` runs each attack without pause:
//! samplers that sleep or loop inside a step or in `open`, a slow sampler
//! within policy, a sampler that hands the host 200,000 deny ranges a step,
//! a reward and an agent that sleep, an agent that calls a sleeping tool
//! forever. Each row is `b`'s latency under one attack beside its idle
//! latency, and what became of `a`'s requests.
//!
//! The server runs in this process on 127.0.0.1, with two tenants written
//! to a temporary tenants file; the hostile plugins are those `cargo
//! plugins` builds from `plugins/rust/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use deepwasm_server::tenants::{Tenants, hash_key};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Cli;
use crate::bench_server::Client;
use crate::model::ModelArgs;

#[derive(Args)]
pub struct AttackBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Where `cargo plugins` put the built plugins [default: `plugins` in
    /// the target directory this binary was built in, else target/plugins]
    #[arg(long, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// Chats tenant b sends one after another, idle and under each attack.
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// The attacks to run, comma-separated [default: all]
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<Attack>,
    /// Tenant a's attack requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// What tenant `a` does to the server, each with one of the hostile plugins
/// (see their sources under `plugins/rust/` for the modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Attack {
    /// No plugin: the same chats a sampler attack rides on, as a
    /// well-behaved neighbour would send them. The reference for the
    /// other rows: what sharing the model with `--concurrency` requests
    /// costs b whatever they do.
    Chats,
    /// A sampler that sleeps 60 s in WASI at every step, default budget.
    SamplerSleepPrepare,
    /// A sampler whose `open` sleeps 60 s.
    SamplerSleepOpen,
    /// A sampler that takes 200 ms a step under a 250 ms budget: slow, but
    /// within policy.
    SamplerSlow,
    /// A sampler that loops forever in `prepare`.
    SamplerLoop,
    /// A sampler that answers every step with 200,000 deny ranges.
    SamplerWideDeny,
    /// A well-behaved sampler on requests that each ask for another step
    /// budget (1 to 250 ms) and miss policy.
    SamplerBudgets,
    /// Reward scoring where every sample makes the reward sleep 20 s.
    RewardSleep,
    /// An agent that sleeps 30 s in WASI.
    AgentSleep,
    /// An agent that calls a tool sleeping 30 s, again and again.
    AgentToolSleep,
}

/// The API keys of the two tenants (loopback only, so fixed ones will do).
pub(crate) const KEY_A: &str = "bench-attack-tenant-a";
pub(crate) const KEY_B: &str = "bench-attack-tenant-b";

/// Each tenant's `max_concurrent_requests`: the most `--concurrency` may be.
pub(crate) const TENANT_CONCURRENCY: usize = 16;

/// Tenant b's chat: short and greedy, always `B_TOKENS` tokens.
const B_PROMPT: &str = "Name a colour.";
const B_TOKENS: usize = 16;

/// The chat a sampler attack rides on: long enough for many steps.
const ATTACK_PROMPT: &str = "Count from 1 to 100.";
const ATTACK_TOKENS: usize = 32;

/// Reward samples per scoring request (each one a 20 s sleep).
const REWARD_SAMPLES: usize = 4;

/// The wall-time budget of an attacking agent run, ms: it would otherwise
/// keep its place for the agent world's 300 s.
const AGENT_DEADLINE_MS: u64 = 10_000;

/// How long one of b's chats may take before it counts as failed (16
/// tokens take well under a second on an idle server).
const CHAT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one attack request may take: past the longest sleep of any
/// hostile plugin (60 s), so a request the host never cuts short shows.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(90);

/// Most requests one attacking task sends; an attack the server refuses at
/// once would otherwise loop as fast as the loopback allows.
const MAX_CALLS_PER_TASK: usize = 2_000;

/// How long the attack runs before b's first chat, so b meets it in full.
const RAMP: Duration = Duration::from_secs(1);

/// Pause between rows, for work an attack left behind (a request cut off by
/// the client stops at the server's next step) to end.
const SETTLE: Duration = Duration::from_secs(2);

/// How long a stopped attacking task may take to return before it is
/// aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long requests still running at the end may take before the process
/// leaves without them.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest error message kept per outcome in the text output.
const MESSAGE_CHARS: usize = 200;

impl Attack {
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }

    /// The plugins tenant a uploads for this attack, by the names it gives
    /// them: their file names in the plugins directory, without `.wasm`.
    fn plugins(self) -> &'static [&'static str] {
        match self {
            Attack::RewardSleep => &["hostile-reward"],
            Attack::AgentSleep => &["looping-agent"],
            Attack::AgentToolSleep => &["looping-agent", "hostile-tool"],
            Attack::Chats => &[],
            _ => &["hostile-sampler"],
        }
    }

    /// The name under which tenant a uploads this attack's own copy of the
    /// hostile sampler: each attack gets a plugin of its own, so that one
    /// row's throttling (see `SamplerPlugin::throttled`) is not the next
    /// row's.
    fn sampler_name(self) -> String {
        format!("hostile-sampler-{}", self.name())
    }

    /// The `i`th request of the attack: its path and JSON body.
    fn request(self, model: &str, i: usize) -> (&'static str, Value) {
        let chat = json!({
            "model": model,
            "messages": [{"role": "user", "content": ATTACK_PROMPT}],
            "max_tokens": ATTACK_TOKENS,
            "temperature": 0,
            "ignore_eos": true,
        });
        let sampler = |config: Value, budget_ms: Option<u64>, on_miss: Option<&str>| {
            let mut s = json!({"plugin": self.sampler_name(), "config": config});
            if let Some(ms) = budget_ms {
                s["step_budget_ms"] = json!(ms);
            }
            if let Some(policy) = on_miss {
                s["on_miss"] = json!(policy);
            }
            let mut body = chat.clone();
            body["sampler"] = s;
            ("/v1/chat/completions", body)
        };
        let agent = |config: Value, tools: &[&str]| {
            (
                "/v1/agents/looping-agent/runs",
                json!({
                    "task": "Keep going.",
                    "config": config,
                    "tools": tools,
                    "budgets": {"deadline_ms": AGENT_DEADLINE_MS},
                    "stream": false,
                }),
            )
        };
        match self {
            Attack::Chats => ("/v1/chat/completions", chat.clone()),
            Attack::SamplerSleepPrepare => sampler(json!({"mode": "sleep-prepare"}), None, None),
            Attack::SamplerSleepOpen => sampler(json!({"mode": "sleep-open"}), None, None),
            Attack::SamplerSlow => sampler(
                json!({"mode": "slow-pick", "token": 42, "delay_ms": 200}),
                Some(250),
                None,
            ),
            Attack::SamplerLoop => sampler(json!({"mode": "loop-prepare"}), None, None),
            Attack::SamplerWideDeny => sampler(json!({"mode": "wide-deny"}), None, None),
            Attack::SamplerBudgets => {
                // Budgets 1..=250 ms in a stride that visits them all.
                let budget = 1 + (i as u64 * 37) % 250;
                let policy = ["wait", "fail", "fallback"][i % 3];
                sampler(json!({"mode": "ok"}), Some(budget), Some(policy))
            }
            Attack::RewardSleep => (
                "/v1/rewards/score",
                json!({
                    "rewards": [{"plugin": "hostile-reward"}],
                    "samples": vec![json!({"prompt": "Say something.", "completion": "SLEEP"}); REWARD_SAMPLES],
                }),
            ),
            Attack::AgentSleep => agent(json!({"mode": "sleep"}), &[]),
            Attack::AgentToolSleep => agent(
                json!({"mode": "tools", "tool": "sleep", "stop_on_error": false}),
                &["hostile-tool"],
            ),
        }
    }
}

/// How one attack request ended.
pub(crate) struct Call {
    pub(crate) took: Duration,
    /// The HTTP status (`200+error` when a 200 answer reports a failure
    /// inside), or `timeout`, `cancelled`, `connection error`.
    pub(crate) outcome: String,
    /// The error message, if any.
    pub(crate) message: Option<String>,
}

/// One row: b's chats, idle or under one attack.
struct Row {
    attack: Option<Attack>,
    /// Total time of each of b's chats that succeeded.
    b: Vec<Duration>,
    /// Why each of the others failed.
    b_failed: Vec<String>,
    calls: Vec<Call>,
}

pub fn run(cli: &Cli, args: &AttackBenchArgs) -> anyhow::Result<()> {
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if !(1..=TENANT_CONCURRENCY).contains(&args.concurrency) {
        bail!(
            "--concurrency must be in 1..={TENANT_CONCURRENCY} (the attacking tenant's max_concurrent_requests)"
        );
    }
    let attacks = if args.attacks.is_empty() {
        Attack::value_variants().to_vec()
    } else {
        args.attacks.clone()
    };
    let dir = args.plugins_dir.clone().unwrap_or_else(default_plugins_dir);
    let components = read_components(&dir, &attacks)?;
    let runtime = crate::bench_server::runtime()?;
    let base = start_two_tenants(&runtime, cli, &args.model, TENANT_CONCURRENCY)?;
    let result = runtime.block_on(bench(&base, components, &attacks, args));
    // Requests the host has not yet cut short (a sleeping plugin's) must
    // not keep the process alive.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// Start the in-process server with tenants `a` and `b` (see
/// `tenants_file`) on `runtime`; its base URL.
pub(crate) fn start_two_tenants(
    runtime: &tokio::runtime::Runtime,
    cli: &Cli,
    model: &ModelArgs,
    b_concurrency: usize,
) -> anyhow::Result<String> {
    let dir = tempfile::tempdir().context("cannot make a directory for the tenants file")?;
    let path = dir.path().join("tenants.toml");
    std::fs::write(&path, tenants_file(b_concurrency))
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Read now: the file is not needed once the server has its tenants.
    let tenants = Tenants::load(&path)?;
    crate::bench_server::start_in_process(
        runtime,
        cli,
        model,
        tenants,
        deepwasm_server::Config::default(),
    )
}

/// The components `attacks` need, read from `dir`, by name.
pub(crate) fn read_components(
    dir: &std::path::Path,
    attacks: &[Attack],
) -> anyhow::Result<BTreeMap<&'static str, Vec<u8>>> {
    let mut components = BTreeMap::new();
    for name in attacks.iter().flat_map(|a| a.plugins()) {
        let path = dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {} (build the plugins with `cargo plugins`, or name their directory with --plugins-dir)",
                path.display()
            )
        })?;
        components.insert(*name, bytes);
    }
    Ok(components)
}

/// Upload, as tenant `a`, what `attacks` need: each sampler attack its own
/// copy of the hostile sampler, the other plugins once.
pub(crate) async fn upload_attacks(
    a: &Client,
    components: &BTreeMap<&str, Vec<u8>>,
    attacks: &[Attack],
) -> anyhow::Result<()> {
    for (name, bytes) in components {
        if *name == "hostile-sampler" {
            for attack in attacks.iter().filter(|a| a.plugins().contains(name)) {
                let copy = with_custom_section(bytes, "attack", attack.name().as_bytes());
                a.upload(&attack.sampler_name(), copy).await?;
            }
        } else {
            a.upload(name, bytes.clone()).await?;
        }
    }
    Ok(())
}

/// `component` with a custom section `name` holding `data` appended: the
/// same plugin under another content id.
fn with_custom_section(component: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
    use wasm_encoder::ComponentSection;
    let mut out = component.to_vec();
    wasm_encoder::CustomSection {
        name: name.into(),
        data: data.into(),
    }
    .append_to_component(&mut out);
    out
}

/// `plugins` in the target directory of this binary (`<target>/<profile>/
/// deepwasm`, or `<target>/<triple>/<profile>/deepwasm`), where `cargo
/// plugins` puts them; `target/plugins` when there is none.
pub(crate) fn default_plugins_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .skip(2)
                .take(2)
                .map(|dir| dir.join("plugins"))
                .find(|dir| dir.is_dir())
        })
        .unwrap_or_else(|| PathBuf::from("target/plugins"))
}

/// Two tenants with the same grants; only `a` may give its agents the
/// hostile tool, and `b` may run `b_concurrency` requests at once.
fn tenants_file(b_concurrency: usize) -> String {
    let tenant = |name: &str, key: &str, tools: &str, concurrency: usize| {
        format!(
            "[[tenant]]\nname = \"{name}\"\napi_keys = [\"{}\"]\n\n\
             [tenant.limits]\nmax_concurrent_requests = {concurrency}\n\n\
             [tenant.grants]\n\
             interfaces = [\"tokenizer\", \"logits\", \"log\", \"kv\", \"inference\", \"tools\"]\n\
             tools = [{tools}]\n\n",
            hash_key(key)
        )
    };
    tenant("a", KEY_A, "\"hostile-tool\"", TENANT_CONCURRENCY)
        + &tenant("b", KEY_B, "", b_concurrency)
}

async fn bench(
    base: &str,
    components: BTreeMap<&str, Vec<u8>>,
    attacks: &[Attack],
    args: &AttackBenchArgs,
) -> anyhow::Result<()> {
    let (a, b) = (
        Client::new(base, Some(KEY_A)),
        Client::new(base, Some(KEY_B)),
    );
    let model = b.model().await?;
    upload_attacks(&a, &components, attacks).await?;
    // The first chat pays for warming up; it is not counted.
    if let Some(e) = chats(&b, &model, 1).await.1.first() {
        bail!("tenant b's first chat failed on the idle server: {e}");
    }
    eprintln!("idle: {} chats by tenant b", args.requests);
    let (b_idle, b_failed) = chats(&b, &model, args.requests).await;
    let mut rows = vec![Row {
        attack: None,
        b: b_idle,
        b_failed,
        calls: Vec::new(),
    }];
    for &attack in attacks {
        tokio::time::sleep(SETTLE).await;
        eprintln!(
            "{}: {} chats by tenant b, {} attack requests in flight",
            attack.name(),
            args.requests,
            args.concurrency
        );
        rows.push(under_attack(&a, &b, &model, attack, args).await);
    }
    if args.json {
        println!("{}", report_json(&model, args, &rows));
    } else {
        print_table(&model, args, &rows);
    }
    Ok(())
}

/// `n` of tenant b's chats, one after another: the total time of each that
/// succeeded, and why each other one failed.
async fn chats(b: &Client, model: &str, n: usize) -> (Vec<Duration>, Vec<String>) {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": B_PROMPT}],
        "max_tokens": B_TOKENS,
        "temperature": 0,
        "ignore_eos": true,
    });
    let (mut took, mut failed) = (Vec::new(), Vec::new());
    for _ in 0..n {
        match tokio::time::timeout(CHAT_TIMEOUT, b.stream_chat(body.clone())).await {
            Ok(Ok(timing)) => took.push(timing.total),
            Ok(Err(e)) => failed.push(format!("{e:#}")),
            Err(_) => failed.push(format!("no answer in {} s", CHAT_TIMEOUT.as_secs())),
        }
    }
    (took, failed)
}

/// b's chats while `args.concurrency` tasks send the attack's requests
/// without pause; the tasks stop, their requests in flight cut off, once
/// b is done.
async fn under_attack(
    a: &Client,
    b: &Client,
    model: &str,
    attack: Attack,
    args: &AttackBenchArgs,
) -> Row {
    let (stop, stopped) = watch::channel(false);
    let sent = Arc::new(AtomicUsize::new(0));
    // Past the longest b's chats may take, should the stop never come.
    let deadline = Instant::now() + RAMP + CHAT_TIMEOUT * (args.requests as u32 + 1);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(attacker(
                a.clone(),
                model.to_owned(),
                attack,
                sent.clone(),
                stopped.clone(),
                deadline,
            ))
        })
        .collect();
    tokio::time::sleep(RAMP).await;
    let (b_took, b_failed) = chats(b, model, args.requests).await;
    let _ = stop.send(true);
    let mut calls = Vec::new();
    for mut task in tasks {
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(Ok(c)) => calls.extend(c),
            Ok(Err(e)) => tracing::warn!("an attacking task failed: {e}"),
            Err(_) => {
                task.abort();
                tracing::warn!("an attacking task did not stop; aborted it");
            }
        }
    }
    Row {
        attack: Some(attack),
        b: b_took,
        b_failed,
        calls,
    }
}

/// One attacking task: the attack's requests one after another until told
/// to stop, past `deadline`, or after `MAX_CALLS_PER_TASK`.
pub(crate) async fn attacker(
    a: Client,
    model: String,
    attack: Attack,
    sent: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Vec<Call> {
    paced_attacker(a, model, attack, sent, stop, deadline, Duration::ZERO).await
}

/// `attacker`, pausing `pause` after each request (a long run's attacker
/// would otherwise spend its call budget on answers refused at once).
pub(crate) async fn paced_attacker(
    a: Client,
    model: String,
    attack: Attack,
    sent: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
    pause: Duration,
) -> Vec<Call> {
    let mut calls = Vec::new();
    while !*stop.borrow() && calls.len() < MAX_CALLS_PER_TASK && Instant::now() < deadline {
        if !pause.is_zero() && !calls.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
        let (path, body) = attack.request(&model, sent.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        let (outcome, message) = tokio::select! {
            ended = attack_call(&a, path, &body) => ended,
            _ = stop.changed() => ("cancelled".to_owned(), None),
        };
        calls.push(Call {
            took: started.elapsed(),
            outcome,
            message,
        });
    }
    calls
}

/// Send one attack request: how it ended, and the error it reported.
pub(crate) async fn attack_call(a: &Client, path: &str, body: &Value) -> (String, Option<String>) {
    let exchange = a.exchange(
        "POST",
        path,
        "application/json",
        Bytes::from(body.to_string()),
    );
    let (status, bytes) = match tokio::time::timeout(ATTACK_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return ("connection error".to_owned(), Some(format!("{e:#}"))),
        Err(_) => {
            let message = format!("no answer in {} s", ATTACK_TIMEOUT.as_secs());
            return ("timeout".to_owned(), Some(message));
        }
    };
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // An agent run's failure, or a reward's on one of the samples.
    let error = answer.get("error").filter(|e| !e.is_null()).or_else(|| {
        answer["data"].as_array().and_then(|rows| {
            rows.iter()
                .find_map(|r| r["errors"].as_object()?.values().next())
        })
    });
    let message = error.map(|e| {
        e["message"]
            .as_str()
            .map_or_else(|| e.to_string(), str::to_owned)
    });
    let code = status.as_u16();
    let outcome = match &message {
        Some(_) if status.is_success() => format!("{code}+error"),
        _ => code.to_string(),
    };
    (outcome, message)
}

/// Milliseconds, for the output.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The outcomes of a row's attack requests, each with its count and the
/// first error message it came with.
fn outcomes(calls: &[Call]) -> BTreeMap<&str, (usize, Option<&str>)> {
    let mut by = BTreeMap::new();
    for c in calls {
        let (n, message) = by.entry(c.outcome.as_str()).or_insert((0, None));
        *n += 1;
        if message.is_none() {
            *message = c.message.as_deref();
        }
    }
    by
}

impl Row {
    fn name(&self) -> String {
        self.attack.map_or_else(|| "idle".to_owned(), Attack::name)
    }

    /// b's median and 99th percentile, none if every chat failed.
    fn percentiles(&self) -> Option<(Duration, Duration)> {
        (!self.b.is_empty()).then(|| crate::bench::stats(self.b.clone()))
    }

    /// b's 99th percentile over its idle one.
    fn ratio(&self, idle_p99: Option<Duration>) -> Option<f64> {
        let (_, p99) = self.percentiles()?;
        Some(p99.as_secs_f64() / idle_p99?.as_secs_f64())
    }

    fn slowest_call(&self) -> Option<Duration> {
        self.calls.iter().map(|c| c.took).max()
    }
}

fn print_table(model: &str, args: &AttackBenchArgs, rows: &[Row]) {
    println!(
        "model {model}; tenant b: {} streaming chats of {B_TOKENS} tokens (EOS ignored, temperature 0) per row, one after another; \
         tenant a: {} attack requests in flight",
        args.requests, args.concurrency
    );
    if args.requests <= 50 {
        println!("(p99 of {} requests is their maximum)", args.requests);
    }
    println!(
        "\n| attack | B p50 ms | B p99 ms | p99 ÷ idle | B failed | attack calls | attack call max ms | attack outcomes |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|---|");
    let or_dash = |s: Option<String>| s.unwrap_or_else(|| "—".into());
    let whole_ms = |d: Option<Duration>| or_dash(d.map(|d| format!("{:.0}", ms(d))));
    let idle_p99 = rows[0].percentiles().map(|(_, p99)| p99);
    for row in rows {
        let (p50, p99) = row.percentiles().unzip();
        let outcomes: Vec<String> = outcomes(&row.calls)
            .iter()
            .map(|(outcome, (n, _))| format!("{outcome}×{n}"))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name(),
            whole_ms(p50),
            whole_ms(p99),
            or_dash(row.ratio(idle_p99).map(|r| format!("{r:.2}×"))),
            row.b_failed.len(),
            row.calls.len(),
            whole_ms(row.slowest_call()),
            or_dash((!outcomes.is_empty()).then(|| outcomes.join(", "))),
        );
    }
    let mut notes = Vec::new();
    for row in rows {
        for (outcome, (_, message)) in outcomes(&row.calls) {
            if let Some(m) = message {
                notes.push(format!("{} {outcome}: {}", row.name(), shorten(m)));
            }
        }
        if let Some(m) = row.b_failed.first() {
            notes.push(format!("{} tenant b: {}", row.name(), shorten(m)));
        }
    }
    if !notes.is_empty() {
        println!("\nerrors (the first of each kind):");
        for n in notes {
            println!("- {n}");
        }
    }
}

fn shorten(message: &str) -> String {
    match message.char_indices().nth(MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_owned(),
    }
}

fn report_json(model: &str, args: &AttackBenchArgs, rows: &[Row]) -> Value {
    let idle_p99 = rows[0].percentiles().map(|(_, p99)| p99);
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let (p50, p99) = row.percentiles().unzip();
            let b_ms: Vec<f64> = row.b.iter().map(|&d| ms(d)).collect();
            let outcomes: serde_json::Map<String, Value> = outcomes(&row.calls)
                .into_iter()
                .map(|(outcome, (n, message))| {
                    let summary = json!({"count": n, "first_message": message});
                    (outcome.to_owned(), summary)
                })
                .collect();
            let calls: Vec<Value> = row
                .calls
                .iter()
                .map(|c| json!({"ms": ms(c.took), "outcome": c.outcome}))
                .collect();
            json!({
                "attack": row.name(),
                "b_ms": b_ms,
                "b_p50_ms": p50.map(ms),
                "b_p99_ms": p99.map(ms),
                "b_p99_to_idle": row.ratio(idle_p99),
                "b_failed": row.b_failed,
                "attack_calls": row.calls.len(),
                "attack_call_max_ms": row.slowest_call().map(ms),
                "attack_outcomes": outcomes,
                "attack_call_list": calls,
            })
        })
        .collect();
    json!({
        "model": model,
        "b_requests": args.requests,
        "b_tokens": B_TOKENS,
        "attack_concurrency": args.concurrency,
        "rows": rows,
    })
}
