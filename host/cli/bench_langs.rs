//! `deepwasm bench languages`: the same plugins built from Rust, Python,
//! JavaScript and C, side by side.
//!
//! For each language: the components' sizes; loading them (a cold compile
//! by Cranelift, then a load of the compiled form from the on-disk cache);
//! instantiating the reward; one call of the R1 format reward on the same
//! batch; and the word-ban sampler on DeepSeek-R1's vocabulary (its
//! once-per-instance setup, then one `prepare` per generated token, the
//! call a per-token sampler makes at every step).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use deepwasm_engine::{MissPolicy, ModelTokenizer, SamplerHosting};
use deepwasm_plugins::{
    EngineConfig, Grants, Limits, Plugin, PluginEngine, RewardPlugin, Sample, Sandbox, World,
};

use crate::model::model_cache;

#[derive(Args)]
pub struct LangBenchArgs {
    /// Where the built plugins are (`cargo plugins` puts them in target/plugins).
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// Timed calls of each kind (reward calls, sampler steps, instantiations).
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Samples in the reward call.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Words the sampler bans.
    #[arg(long, default_value = r#"{"words": ["paris", "the"]}"#)]
    sampler_config: String,
}

/// The languages and the file stems of their builds of each plugin.
const LANGS: [(&str, &str); 4] = [
    ("Rust", ""),
    ("C", "c-"),
    ("JavaScript", "js-"),
    ("Python", "python-"),
];

/// The default per-step budget of a sampler plugin (`generate --step-budget-ms`).
const STEP_BUDGET: Duration = Duration::from_millis(25);

/// DeepSeek-V3/R1's number of logits (the tokenizer has fewer entries).
const DEEPSEEK_LOGITS: usize = 129_280;

pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub(crate) fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Median and p99 of `n` timed runs of `f`, after a few untimed ones.
fn time(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<[Duration; 2]> {
    for _ in 0..n.min(5) {
        f()?;
    }
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let start = Instant::now();
        f()?;
        runs.push(start.elapsed());
    }
    runs.sort();
    Ok([quantile(&runs, 0.5), quantile(&runs, 0.99)])
}

/// What a language's builds measured.
struct Row {
    lang: &'static str,
    sizes: [u64; 2],
    compile: [Duration; 2],
    cached: [Duration; 2],
    instantiate: [Duration; 2],
    reward: [Duration; 2],
    setup: Duration,
    steps: Vec<Duration>,
}

/// Load `name` twice: compiled cold by an engine with an empty cache, then
/// from that cache by a fresh engine. The plugin, and the two times.
fn load_twice(
    path: &std::path::Path,
    grants: &Grants,
) -> anyhow::Result<(Plugin, Duration, Duration)> {
    let cache = tempfile::tempdir()?;
    let config = || EngineConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..EngineConfig::default()
    };
    let start = Instant::now();
    PluginEngine::new(config())?
        .load_file(path, grants)
        .with_context(|| {
            format!(
                "cannot load {} (build the plugins with `cargo plugins`)",
                path.display()
            )
        })?;
    let compile = start.elapsed();
    let start = Instant::now();
    let plugin = PluginEngine::new(config())?.load_file(path, grants)?;
    Ok((plugin, compile, start.elapsed()))
}

/// A completion of about 430 characters, formatted or not.
fn completion(i: usize) -> String {
    let reasoning = "Let me think about this step by step. First, add the numbers; then check the result again. "
        .repeat(4);
    let answer = format!("The answer is \\boxed{{{}}}.", i * 7 % 1000);
    match i % 4 {
        0 => format!("{reasoning}{answer}"),
        1 => format!("<think>{reasoning}<think>again</think>{answer}"),
        _ => format!("<think>\n{reasoning}\n</think>\n{answer}"),
    }
}

pub fn run(args: &LangBenchArgs) -> anyhow::Result<()> {
    let dir = model_cache().join("deepseek-r1-tokenizer");
    let r1 = Arc::new(
        deepwasm_model::Tokenizer::from_hf_dir(&dir)
            .context("the DeepSeek-R1 tokenizer (run scripts/setup)")?,
    );
    let text = "The capital of France is Paris. The Parisian parade paused; then the crowd \
                walked along the Seine, past the cathedral and the old bridges, talking about \
                the weather, the theatre, and the price of bread. "
        .repeat(4);
    let tokens = r1.encode(&text, false)?;
    let samples: Vec<Sample> = (0..args.batch)
        .map(|i| Sample {
            prompt: "What is the sum?".into(),
            completion: completion(i),
            completion_tokens: vec![],
            extra: "{}".into(),
        })
        .collect();
    let params = crate::bench::no_params();
    let mut rows = Vec::new();
    let mut want_scores: Option<Vec<Option<f64>>> = None;
    for (lang, prefix) in LANGS {
        eprintln!("{lang}...");
        let reward_path = args.plugins.join(format!("{prefix}r1-format.wasm"));
        let sampler_path = args.plugins.join(format!("{prefix}word-ban.wasm"));
        let (reward, reward_compile, reward_cached) = load_twice(&reward_path, &Grants::default())?;
        let (sampler, sampler_compile, sampler_cached) =
            load_twice(&sampler_path, &Grants::default())?;

        let sandbox = Sandbox::new(Limits::for_world(World::Reward));
        let instantiate = time(args.iterations, || Ok(reward.try_instantiate(&sandbox)?))?;
        let reward = RewardPlugin::new(reward, sandbox)?;
        let mut scores = Vec::new();
        let reward_call = time(args.iterations, || {
            scores = reward
                .score(&samples, "{}")
                .into_iter()
                .collect::<Result<_, _>>()?;
            Ok(())
        })?;
        // The same scores from every language, or the comparison is void.
        match &want_scores {
            None => want_scores = Some(scores),
            Some(want) => anyhow::ensure!(
                *want == scores,
                "{lang}'s r1-format scored differently from Rust's"
            ),
        }

        // Steps get a generous deadline here so that slow ones are measured
        // rather than stopped; setup gets one to match.
        let r1_view = Arc::new(ModelTokenizer::new(
            r1.clone(),
            "deepseek-r1",
            DEEPSEEK_LOGITS,
        ));
        let sampler = SamplerHosting::new(r1_view, Duration::from_secs(5), MissPolicy::Fail)
            .with_limits(|l| l.setup_deadline = Duration::from_secs(300))
            .load(sampler)?;
        let start = Instant::now();
        sampler.warm_up()?;
        let setup = start.elapsed();
        let mut steps = Vec::new();
        while steps.len() < args.iterations {
            let mut seq = sampler.open(&args.sampler_config, &[], &params)?;
            seq.prepare(0, &[])?;
            for (i, t) in tokens.iter().enumerate() {
                let start = Instant::now();
                seq.prepare(i as u32 + 1, &[*t])?;
                steps.push(start.elapsed());
            }
        }
        steps.sort();
        let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len());
        rows.push(Row {
            lang,
            sizes: [size(&reward_path)?, size(&sampler_path)?],
            compile: [reward_compile, sampler_compile],
            cached: [reward_cached, sampler_cached],
            instantiate,
            reward: reward_call,
            setup,
            steps,
        });
    }
    print(args, &rows, tokens.len());
    Ok(())
}

fn print(args: &LangBenchArgs, rows: &[Row], tokens: usize) {
    let kib = |b: u64| format!("{:.0} KiB", b as f64 / 1024.0);
    println!("Loading (r1-format / word-ban):");
    println!();
    println!("| language | component size | cold compile | load from cache |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} / {} | {} / {} | {} / {} |",
            r.lang,
            kib(r.sizes[0]),
            kib(r.sizes[1]),
            ms(r.compile[0]),
            ms(r.compile[1]),
            ms(r.cached[0]),
            ms(r.cached[1]),
        );
    }
    println!();
    println!(
        "Calls (median / p99 of {}; the reward call scores {} samples of ~430 characters \
         in a fresh instance; a sampler step is one `prepare` with one new token, on \
         DeepSeek-R1's vocabulary, config {}; {tokens} tokens per sequence):",
        args.iterations, args.batch, args.sampler_config
    );
    println!();
    println!(
        "| language | instantiate | reward call | sampler setup (once) | sampler step | steps over {} ms |",
        STEP_BUDGET.as_millis()
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let over = r.steps.iter().filter(|d| **d > STEP_BUDGET).count();
        println!(
            "| {} | {} / {} | {} / {} | {} | {} / {} | {over} of {} |",
            r.lang,
            ms(r.instantiate[0]),
            ms(r.instantiate[1]),
            ms(r.reward[0]),
            ms(r.reward[1]),
            ms(r.setup),
            ms(quantile(&r.steps, 0.5)),
            ms(quantile(&r.steps, 0.99)),
            r.steps.len()
        );
    }
}
