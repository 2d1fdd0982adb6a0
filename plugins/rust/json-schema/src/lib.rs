//! `json-schema`: a sampler plugin that constrains the generated text to JSON
//! matching a JSON Schema, with llguidance compiled into the plugin.
//!
//! Config, one of:
//!
//! ```json
//! {"schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}
//! {"json_object": true}
//! ```
//!
//! - `schema`: a JSON Schema (an object, `true`, or a string holding the
//!   schema's JSON text). The features llguidance supports are supported
//!   (types, `properties`/`required`/`additionalProperties`, `enum`/`const`,
//!   `anyOf`/`oneOf`/`allOf`, local `$ref`/`$defs`, string `pattern`/
//!   `format`/length, number bounds, array `items`/`minItems`/`maxItems`, ...).
//! - `json_object: true`: any JSON object (OpenAI's `response_format:
//!   {"type": "json_object"}`); the same as `{"schema": {"type": "object"}}`.
//!
//! Exactly one of the two must be given. Whitespace is compact: no free
//! whitespace between tokens, items separated by `,` and keys by `:`
//! (llguidance's `x-guidance: {"whitespace_flexible": false}`), so that a
//! model cannot wander into endless whitespace. A schema may carry its own
//! `"x-guidance"` object (llguidance's JSON options, for example
//! `{"item_separator": ", ", "key_separator": ": "}`); its fields override
//! these defaults.
//!
//! Behaviour:
//! - `setup` reads the whole vocabulary through the `tokenizer` import and
//!   builds llguidance's token trie and parser factory, once per instance
//!   (special tokens never spell JSON text; EOS ids are `info().eos`).
//! - `open` compiles the schema (the last 16 schemas stay compiled for
//!   reuse). A schema llguidance cannot compile is an `invalid-input` error
//!   with llguidance's message. The prompt is not looked at: the constraint
//!   applies to the generated tokens only.
//! - `prepare` never needs logits. It feeds `new-tokens` to the parser (a
//!   token the schema does not allow there is an `invalid-input` error
//!   naming it), then answers `force(tokens)` when the schema fixes the next
//!   text (keys, punctuation, `const` values), else `sample{allow: mask}`
//!   with the tokens that keep the output valid. Once the JSON value is
//!   complete it answers `sample{allow: EOS ids}`, so the sequence ends with
//!   the model's own EOS (finish reason `stop`); if the host goes on past
//!   EOS anyway, `stop`.
//!
//! See the `deepwasm-grammar` crate for the machinery.

use deepwasm_grammar::GrammarSequence;
use deepwasm_grammar::llguidance::api::TopLevelGrammar;
use deepwasm_sdk::config::Fields;
use deepwasm_sdk::sampler::{Decision, Guest, GuestSequence, Logits, Prepared, Sequence};
use deepwasm_sdk::types::{Error, SamplingParams, TokenId};
use serde_json::{Map, Value, json};

/// The llguidance JSON options this plugin defaults to.
pub fn default_options() -> Value {
    json!({"whitespace_flexible": false})
}

/// The schema to compile, from the config: with the default `x-guidance`
/// options merged under the schema's own.
pub fn schema_from_config(config: &str) -> Result<Value, Error> {
    let cfg = Fields::parse("config", config)?;
    cfg.only(&["schema", "json_object"])?;
    let json_object: bool = cfg.get_or("json_object", false)?;
    let given = cfg.raw("schema").filter(|v| !v.is_null());
    let schema = match (given, json_object) {
        (Some(_), true) => {
            return Err(Error::invalid_input(
                "config: give either `schema` or `json_object`, not both",
            ));
        }
        (None, false) => {
            return Err(Error::invalid_input(
                "config: missing `schema` (a JSON Schema) or `json_object: true`",
            ));
        }
        (_, true) => json!({"type": "object"}),
        (Some(Value::String(text)), false) => serde_json::from_str(text)
            .map_err(|e| cfg.error("schema", format!("not valid JSON: {e}")))?,
        (Some(v), false) => v.clone(),
    };
    let mut schema = match schema {
        Value::Object(map) => map,
        Value::Bool(true) => Map::new(),
        Value::Bool(false) => return Err(cfg.error("schema", "`false` matches nothing")),
        other => {
            return Err(cfg.error(
                "schema",
                format!("expected a JSON Schema object, got {other}"),
            ));
        }
    };
    let mut options = default_options();
    match schema.remove("x-guidance") {
        None => {}
        Some(Value::Object(own)) => {
            let merged = options.as_object_mut().expect("options are an object");
            merged.extend(own);
        }
        Some(_) => {
            return Err(cfg.error("schema.x-guidance", "expected an object of options"));
        }
    }
    schema.insert("x-guidance".to_string(), options);
    Ok(Value::Object(schema))
}

struct JsonSchema;

struct JsonSchemaSequence(GrammarSequence);

impl Guest for JsonSchema {
    type Sequence = JsonSchemaSequence;

    fn setup() -> Result<(), Error> {
        deepwasm_grammar::setup()
    }
}

impl GuestSequence for JsonSchemaSequence {
    fn open(
        config: String,
        _prompt: Vec<TokenId>,
        _params: SamplingParams,
    ) -> Result<Sequence, Error> {
        let schema = schema_from_config(&config)?;
        let key = schema.to_string();
        let seq = GrammarSequence::open(&key, || Ok(TopLevelGrammar::from_json_schema(schema)))?;
        Ok(Sequence::new(JsonSchemaSequence(seq)))
    }

    fn prepare(&self, _step: u32, new_tokens: Vec<TokenId>) -> Result<Prepared, Error> {
        self.0.prepare(&new_tokens)
    }

    fn decide(&self, _step: u32, _logits: &Logits) -> Result<Decision, Error> {
        self.0.decide()
    }
}

deepwasm_sdk::export_sampler!(JsonSchema);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_forms() {
        let s = schema_from_config(r#"{"schema": {"type": "integer"}}"#).unwrap();
        assert_eq!(
            s,
            json!({"type": "integer", "x-guidance": {"whitespace_flexible": false}})
        );
        let s = schema_from_config(r#"{"json_object": true}"#).unwrap();
        assert_eq!(s["type"], "object");
        let s = schema_from_config(r#"{"json_object": true, "schema": null}"#).unwrap();
        assert_eq!(s["type"], "object");
        let s = schema_from_config(r#"{"schema": "{\"type\": \"string\"}"}"#).unwrap();
        assert_eq!(s["type"], "string");
        let s = schema_from_config(r#"{"schema": true}"#).unwrap();
        assert_eq!(s, json!({"x-guidance": {"whitespace_flexible": false}}));
        let s = schema_from_config(
            r#"{"schema": {"type": "object", "x-guidance": {"item_separator": ", "}}}"#,
        )
        .unwrap();
        assert_eq!(
            s["x-guidance"],
            json!({"whitespace_flexible": false, "item_separator": ", "})
        );
    }

    /// The config's schema, compiled on the toy vocabulary, generates valid
    /// compact JSON that follows it.
    #[test]
    fn generates_valid_json() {
        use deepwasm_grammar::testing::{Lcg, generate, toy_engine};
        let engine = toy_engine();
        let config = r#"{"schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 3},
                "tags": {"type": "array", "items": {"enum": ["ab", "abc"]}, "maxItems": 2},
                "n": {"type": "integer", "minimum": 10, "maximum": 12}
            },
            "required": ["name", "tags", "n"],
            "additionalProperties": false
        }}"#;
        let schema = schema_from_config(config).unwrap();
        let key = schema.to_string();
        let mut rng = Lcg(11);
        let mut finished = 0;
        for _ in 0..30 {
            let mut seq = engine
                .open(&key, || {
                    Ok(TopLevelGrammar::from_json_schema(schema.clone()))
                })
                .unwrap();
            let run = generate(&engine, &mut seq, &mut rng, 60);
            if !run.finished {
                continue;
            }
            finished += 1;
            let text = String::from_utf8(run.text).unwrap();
            let v: Value = serde_json::from_str(&text).expect(&text);
            assert!(v["name"].as_str().unwrap().chars().count() <= 3, "{text}");
            let tags = v["tags"].as_array().unwrap();
            assert!(tags.len() <= 2, "{text}");
            assert!(tags.iter().all(|t| t == "ab" || t == "abc"), "{text}");
            assert!((10..=12).contains(&v["n"].as_i64().unwrap()), "{text}");
            assert!(!text.contains(' ') || v["name"].as_str().unwrap().contains(' '));
        }
        assert!(finished > 10, "{finished}");
        // A schema llguidance rejects is an error with its message.
        let bad = schema_from_config(r#"{"schema": {"type": "strin"}}"#).unwrap();
        let e = engine
            .open(&bad.to_string(), || {
                Ok(TopLevelGrammar::from_json_schema(bad.clone()))
            })
            .err()
            .unwrap();
        assert!(e.contains("strin"), "{e}");
    }

    #[test]
    fn config_errors() {
        for (config, needle) in [
            ("{}", "missing"),
            (r#"{"json_object": false}"#, "missing"),
            (r#"{"schema": {}, "json_object": true}"#, "not both"),
            (r#"{"schema": null}"#, "missing"),
            (r#"{"schema": false}"#, "config.schema"),
            (r#"{"schema": 3}"#, "config.schema"),
            (r#"{"schema": "{"}"#, "not valid JSON"),
            (r#"{"schema": {"x-guidance": 1}}"#, "x-guidance"),
            (r#"{"shema": {}}"#, "config.shema"),
            (r#"{"json_object": "yes"}"#, "config.json_object"),
        ] {
            let e = schema_from_config(config).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{config}: {e}");
            assert!(e.message().contains(needle), "{config}: {e}");
        }
    }
}

/// A native benchmark of the grammar engine on the real DeepSeek-R1
/// vocabulary: `cargo test --release -p json-schema -- --ignored --nocapture`
/// (needs `scripts/setup`'s tokenizer download).
#[cfg(test)]
mod bench {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use deepwasm_grammar::{Engine, Step, Vocab};
    use serde_json::Value;

    use super::*;

    /// Logits of DeepSeek-V3/R1: more than the tokenizer's entries.
    const DEEPSEEK_VOCAB_SIZE: usize = 129_280;

    fn tokenizer_dir() -> PathBuf {
        let cache = std::env::var_os("DEEPWASM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/deepwasm")
            });
        cache.join("models/deepseek-r1-tokenizer")
    }

    /// The vocabulary as the host would report it: token bytes from
    /// `tokenizer.json`, every added token special, EOS from
    /// `tokenizer_config.json`, padded to the model's logits count.
    fn deepseek_vocab() -> Vocab {
        let dir = tokenizer_dir();
        let read = |name: &str| -> Value {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", path.display()));
            serde_json::from_str(&text).expect(name)
        };
        let tokenizer = read("tokenizer.json");
        let config = read("tokenizer_config.json");
        let mut tokens = deepwasm_grammar::llguidance::token_bytes_from_tokenizer_json(&tokenizer)
            .expect("token bytes");
        let mut special = Vec::new();
        let mut eos = Vec::new();
        let eos_text = config["eos_token"]["content"]
            .as_str()
            .or(config["eos_token"].as_str())
            .expect("eos_token");
        for added in tokenizer["added_tokens"].as_array().expect("added_tokens") {
            let id = added["id"].as_u64().expect("id") as usize;
            let content = added["content"].as_str().expect("content");
            tokens[id] = content.as_bytes().to_vec();
            special.push(id as u32);
            if content == eos_text {
                eos.push(id as u32);
            }
        }
        tokens.resize(tokens.len().max(DEEPSEEK_VOCAB_SIZE), Vec::new());
        Vocab {
            tokens,
            special,
            eos,
            bos: Some(0),
        }
    }

    fn quantile(sorted: &[Duration], q: f64) -> Duration {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    fn micros(d: Duration) -> f64 {
        d.as_secs_f64() * 1e6
    }

    #[test]
    #[ignore = "benchmark: needs the DeepSeek-R1 tokenizer; run with --release"]
    fn deepseek_mask_timing() {
        let t0 = Instant::now();
        let vocab = deepseek_vocab();
        let read = t0.elapsed();
        let t0 = Instant::now();
        let engine = Engine::new(&vocab, None, true).expect("engine");
        let setup = t0.elapsed();
        println!(
            "vocab: {} ids, {} special; read {:.0} ms, engine (trie + parser factory) {:.0} ms",
            vocab.tokens.len(),
            vocab.special.len(),
            read.as_secs_f64() * 1e3,
            setup.as_secs_f64() * 1e3
        );

        let config = r#"{"schema": {
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
        let doc = br#"{"name":"Ada Lovelace, Countess of Lovelace","age":36,"email":"ada.lovelace@example.com","tags":["mathematics","poetical science","analytical engine"],"role":"admin"}"#;
        let schema = schema_from_config(config).unwrap();
        let key = schema.to_string();

        let trie = engine.trie();
        let mut compile = Duration::ZERO;
        let mut masks = Vec::new();
        let mut uncached = Vec::new();
        let mut first_run = Vec::new();
        let mut forced = Vec::new();
        let (mut forced_steps, mut forced_tokens) = (0usize, 0usize);
        const RUNS: usize = 40;
        // Runs 0..RUNS as a host would drive them (llguidance's mask cache
        // on), then RUNS more with the cache dropped before every step.
        for run in 0..2 * RUNS {
            let cold = run >= RUNS;
            let t0 = Instant::now();
            let mut seq = engine
                .open(&key, || {
                    Ok(TopLevelGrammar::from_json_schema(schema.clone()))
                })
                .expect("compile");
            if run == 0 {
                compile = t0.elapsed();
            }
            let mut pos = 0;
            let mut new: Vec<u32> = Vec::new();
            loop {
                seq.advance(&new).expect("advance");
                if cold {
                    seq.invalidate_mask_cache();
                }
                let t0 = Instant::now();
                let step = seq.next_step().expect("step");
                let dt = t0.elapsed();
                match step {
                    Step::Force(tokens) => {
                        if !cold {
                            forced.push(dt);
                            forced_steps += 1;
                            forced_tokens += tokens.len();
                        }
                        pos += trie.decode(&tokens).len();
                        new = tokens;
                    }
                    Step::Allow(mask) => {
                        if cold {
                            uncached.push(dt);
                        } else {
                            masks.push(dt);
                        }
                        if run == 0 {
                            first_run.push(dt);
                        }
                        // The model's choice: the longest allowed token that
                        // spells the document onwards.
                        let rest = &doc[pos..];
                        let t = (1..=rest.len().min(trie.max_token_len()))
                            .rev()
                            .filter_map(|n| trie.token_id(&rest[..n]))
                            .find(|&t| mask.is_allowed(t))
                            .unwrap_or_else(|| {
                                panic!("no allowed token at {:?}", String::from_utf8_lossy(rest))
                            });
                        pos += trie.token(t).len();
                        new = vec![t];
                    }
                    Step::End => {
                        assert_eq!(pos, doc.len());
                        break;
                    }
                    Step::Stop => unreachable!(),
                }
            }
        }
        masks.sort();
        uncached.sort();
        first_run.sort();
        forced.sort();
        println!(
            "schema compile (first open) {:.2} ms; per run: {} mask steps, {} forced steps ({} tokens)",
            compile.as_secs_f64() * 1e3,
            masks.len() / RUNS,
            forced_steps / RUNS,
            forced_tokens / RUNS
        );
        println!(
            "mask step (prepare without host calls), {} samples: median {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            masks.len(),
            micros(quantile(&masks, 0.5)),
            micros(quantile(&masks, 0.9)),
            micros(quantile(&masks, 0.99)),
            micros(*masks.last().unwrap())
        );
        println!(
            "mask step without llguidance's mask cache, {} samples: median {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            uncached.len(),
            micros(quantile(&uncached, 0.5)),
            micros(quantile(&uncached, 0.9)),
            micros(quantile(&uncached, 0.99)),
            micros(*uncached.last().unwrap())
        );
        println!(
            "first sequence (cold lexer caches): median {:.1} µs, max {:.1} µs",
            micros(quantile(&first_run, 0.5)),
            micros(*first_run.last().unwrap())
        );
        println!(
            "forced step: median {:.1} µs, p99 {:.1} µs",
            micros(quantile(&forced, 0.5)),
            micros(quantile(&forced, 0.99))
        );
    }
}
