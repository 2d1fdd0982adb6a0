//! `deepwasm bench sampler`: what a sampler plugin costs per step.
//!
//! Part one drives the JSON-schema plugin (llguidance inside the Wasm
//! sandbox) over DeepSeek-R1's real vocabulary (129,280 logits) the way a
//! model would write a fixed document, timing each `prepare`: the mask
//! computation, from the host's side of the call. Part two decodes on the
//! default model with the built-in sampler alone, a plugin that only defers,
//! and the JSON-schema plugin, and compares tokens per second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::{
    BuiltinSampler, Engine, GenerateRequest, MissPolicy, ModelTokenizer, PluginSampler, Prompt,
    Sampler, SamplerHosting,
};
use deepwasm_plugins::{
    Decision, Grants, Prepared, SampleSpec, SamplerPlugin, SamplingParams as WitParams, TokenSet,
    for_each_run,
};

use crate::Cli;
use crate::model::{ModelArgs, model_cache};

#[derive(Args)]
pub struct SamplerBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Where the built plugins are (`cargo plugins` puts them in target/plugins).
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// Documents written through the JSON-schema plugin for the mask timings.
    #[arg(long, default_value_t = 40)]
    runs: usize,
    /// Tokens decoded per throughput measurement.
    #[arg(long, default_value_t = 96)]
    tokens: usize,
    /// Repetitions of each throughput measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
}

/// The schema and the document the mask timing writes (the same as the
/// plugin's native benchmark, `cargo test --release -p json-schema -- --ignored`).
const SCHEMA: &str = r#"{"schema": {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "role": {"enum": ["admin", "user", "guest"]}
    },
    "required": ["name", "age", "email", "tags", "role"],
    "additionalProperties": false
}}"#;
const DOC: &[u8] = br#"{"name":"Ada Lovelace, Countess of Lovelace","age":36,"email":"ada.lovelace@example.com","tags":["mathematics","poetical science","analytical engine"],"role":"admin"}"#;

/// DeepSeek-V3/R1's number of logits (the tokenizer has fewer entries).
const DEEPSEEK_LOGITS: usize = 129_280;

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn allowed(set: &TokenSet, token: u32) -> bool {
    let mut hit = false;
    for_each_run(set, token + 1, |a, b| hit |= (a..b).contains(&token));
    hit
}

pub fn run(cli: &Cli, args: &SamplerBenchArgs) -> anyhow::Result<()> {
    let engine = cli.engine()?;
    let json_path = args.plugins.join("json-schema.wasm");
    let plugin = engine
        .load_file(&json_path, &Grants::default())
        .with_context(|| {
            format!(
                "cannot load {} (build the plugins with `cargo plugins`)",
                json_path.display()
            )
        })?;

    // Part one: masks over DeepSeek-R1's vocabulary.
    let dir = model_cache().join("deepseek-r1-tokenizer");
    let r1 = Arc::new(
        deepwasm_model::Tokenizer::from_hf_dir(&dir)
            .context("the DeepSeek-R1 tokenizer (run scripts/setup)")?,
    );
    let access = Arc::new(ModelTokenizer::new(
        r1.clone(),
        "deepseek-r1",
        DEEPSEEK_LOGITS,
    ));
    let sampler = SamplerHosting::new(access, Duration::from_secs(1), MissPolicy::Fail)
        .load(plugin.clone())?;
    let start = Instant::now();
    sampler.warm_up()?;
    let setup = start.elapsed();
    let params = WitParams {
        temperature: None,
        top_k: None,
        top_p: None,
        min_p: None,
        repetition_penalty: None,
        presence_penalty: None,
        frequency_penalty: None,
        seed: None,
    };
    let (mut masks, mut forced, mut opens) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let start = Instant::now();
        let mut seq = sampler.open(SCHEMA, &[], &params)?;
        opens.push(start.elapsed());
        let (mut pos, mut step, mut new) = (0usize, 0u32, Vec::new());
        loop {
            let start = Instant::now();
            let prepared = seq.prepare(step, &new)?;
            let dt = start.elapsed();
            step += 1;
            match prepared {
                Prepared::Decided(Decision::Force(tokens)) => {
                    forced.push(dt);
                    pos += tokens
                        .iter()
                        .map(|&t| r1.token_bytes(t).map_or(0, <[u8]>::len))
                        .sum::<usize>();
                    new = tokens;
                }
                Prepared::Decided(Decision::Sample(SampleSpec {
                    allow: Some(set), ..
                })) => {
                    if pos == DOC.len() {
                        break; // only end-of-sequence tokens are left
                    }
                    masks.push(dt);
                    // The model's choice: the longest allowed token that spells
                    // the document onwards.
                    let rest = &DOC[pos..];
                    let t = (1..=rest.len().min(64))
                        .rev()
                        .filter_map(|n| {
                            std::str::from_utf8(&rest[..n])
                                .ok()
                                .and_then(|s| r1.token_id(&r1_piece(s)))
                        })
                        .find(|&t| allowed(&set, t))
                        .with_context(|| {
                            format!("no allowed token at {:?}", String::from_utf8_lossy(rest))
                        })?;
                    pos += r1.token_bytes(t).map_or(0, <[u8]>::len);
                    new = vec![t];
                }
                other => bail!("unexpected decision {other:?}"),
            }
        }
    }
    masks.sort();
    forced.sort();
    opens.sort();
    println!(
        "JSON-schema plugin (llguidance in Wasm), DeepSeek-R1 vocabulary, {DEEPSEEK_LOGITS} logits:"
    );
    println!();
    println!("| what | median | p90 | p99 | n |");
    println!("|---|---|---|---|---|");
    println!(
        "| setup (token trie + parser factory), once per instance | {:.0} ms | | | 1 |",
        setup.as_secs_f64() * 1e3
    );
    println!(
        "| open (schema compile, cached after the first) | {} | {} | {} | {} |",
        us(quantile(&opens, 0.5)),
        us(quantile(&opens, 0.9)),
        us(quantile(&opens, 0.99)),
        opens.len()
    );
    println!(
        "| prepare answering a mask | {} | {} | {} | {} |",
        us(quantile(&masks, 0.5)),
        us(quantile(&masks, 0.9)),
        us(quantile(&masks, 0.99)),
        masks.len()
    );
    if !forced.is_empty() {
        println!(
            "| prepare answering forced tokens | {} | {} | {} | {} |",
            us(quantile(&forced, 0.5)),
            us(quantile(&forced, 0.9)),
            us(quantile(&forced, 0.99)),
            forced.len()
        );
    }

    // Part two: throughput on the default model.
    let loaded = args.model.load()?;
    let model = Engine::from(loaded);
    let budget = deepwasm_engine::DEFAULT_STEP_BUDGET;
    let policy = MissPolicy::Fail;
    let hosting = SamplerHosting::for_engine(&model, budget, policy);
    let make = |path: &str| -> anyhow::Result<SamplerPlugin> {
        let p = engine.load_file(&args.plugins.join(path), &Grants::default())?;
        let s = hosting.load(p)?;
        s.warm_up()?;
        Ok(s)
    };
    let defer = make("word-ban.wasm")?;
    let json = make("json-schema.wasm")?;
    let numbers = format!(
        r#"{{"schema": {{"type": "array", "items": {{"type": "integer", "minimum": 0, "maximum": 99}}, "minItems": {n}, "maxItems": {n}}}}}"#,
        n = args.tokens
    );
    let request = GenerateRequest {
        max_tokens: args.tokens,
        params: SamplingParams {
            temperature: 0.7,
            seed: Some(1),
            ..SamplingParams::default()
        },
        ignore_eos: true,
        ..GenerateRequest::new(Prompt::Text {
            text: "Here are some numbers:".into(),
            add_special_tokens: true,
        })
    };
    let rate = |mut sampler: Box<dyn Sampler>| -> anyhow::Result<f64> {
        let c = model.generate(&request, sampler.as_mut(), &mut |_| {})?;
        let decoded = c.usage.completion_tokens.saturating_sub(1).max(1);
        Ok(decoded as f64 / c.timings.decode.as_secs_f64())
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut base, mut deferring, mut constrained) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repetitions.max(1) {
        base.push(rate(Box::new(BuiltinSampler))?);
        deferring.push(rate(Box::new(PluginSampler::new(
            defer.clone(),
            r#"{"words": []}"#,
            budget,
            policy,
        )))?);
        constrained.push(rate(Box::new(PluginSampler::new(
            json.clone(),
            &numbers,
            budget,
            policy,
        )))?);
    }
    let (base, deferring, constrained) = (median(base), median(deferring), median(constrained));
    println!();
    println!(
        "Decoding {} tokens on {} (threads: RAYON_NUM_THREADS or all cores):",
        args.tokens, model.name
    );
    println!();
    println!("| sampler | decode tok/s | ratio to built-in |");
    println!("|---|---|---|");
    println!("| built-in | {base:.1} | 1.000 |");
    println!(
        "| plugin that defers every step (word-ban, no words) | {deferring:.1} | {:.3} |",
        deferring / base
    );
    println!(
        "| JSON-schema plugin, {}-integer array | {constrained:.1} | {:.3} |",
        args.tokens,
        constrained / base
    );
    Ok(())
}

/// A vocabulary entry as DeepSeek's byte-level BPE writes it: the text's
/// bytes through GPT-2's byte-to-character table.
fn r1_piece(s: &str) -> String {
    s.bytes().map(byte_char).collect()
}

fn byte_char(b: u8) -> char {
    // Printable ASCII and Latin-1 stay; the others are shifted past 255.
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("a valid character")
}
