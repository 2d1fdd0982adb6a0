//! `regex`: a sampler plugin that constrains the generated text to match a
//! regular expression, then end, with llguidance compiled into the plugin.
//!
//! Config:
//!
//! ```json
//! {"pattern": "(yes|no)\\. [A-Z][a-z]+"}
//! ```
//!
//! - `pattern` (string, required): a regular expression in Rust `regex`
//!   syntax, matched against the whole generated text (it is implicitly
//!   anchored at both ends; `^` and `$` are not needed). `.` matches any
//!   character but a newline.
//!
//! Behaviour:
//! - `setup` reads the whole vocabulary through the `tokenizer` import and
//!   builds llguidance's token trie and parser factory, once per instance.
//! - `open` compiles the pattern (the last 16 stay compiled for reuse); a
//!   pattern llguidance cannot compile is an `invalid-input` error with its
//!   message. The prompt is not looked at.
//! - `prepare` never needs logits. It feeds `new-tokens` to the matcher (a
//!   token that cannot continue a match is an `invalid-input` error naming
//!   it), then answers `force(tokens)` when the pattern fixes the next text,
//!   else `sample{allow: mask}` with the tokens that can continue a match
//!   (EOS included where the text so far is a full match). When nothing can
//!   follow the match it answers `sample{allow: EOS ids}`, so the sequence
//!   ends with the model's own EOS; if the host goes on past EOS anyway,
//!   `stop`.
//!
//! See the `deepwasm-grammar` crate for the machinery.

use deepwasm_grammar::GrammarSequence;
use deepwasm_grammar::llguidance::api::TopLevelGrammar;
use deepwasm_sdk::config::Fields;
use deepwasm_sdk::sampler::{Decision, Guest, GuestSequence, Logits, Prepared, Sequence};
use deepwasm_sdk::types::{Error, SamplingParams, TokenId};

/// The pattern from the config.
pub fn pattern_from_config(config: &str) -> Result<String, Error> {
    let cfg = Fields::parse("config", config)?;
    cfg.only(&["pattern"])?;
    let pattern: String = cfg.require("pattern")?;
    if pattern.is_empty() {
        return Err(cfg.error("pattern", "must not be empty"));
    }
    Ok(pattern)
}

struct Regex;

struct RegexSequence(GrammarSequence);

impl Guest for Regex {
    type Sequence = RegexSequence;

    fn setup() -> Result<(), Error> {
        deepwasm_grammar::setup()
    }
}

impl GuestSequence for RegexSequence {
    fn open(
        config: String,
        _prompt: Vec<TokenId>,
        _params: SamplingParams,
    ) -> Result<Sequence, Error> {
        let pattern = pattern_from_config(&config)?;
        let key = format!("regex:{pattern}");
        let seq = GrammarSequence::open(&key, || Ok(TopLevelGrammar::from_regex(&pattern)))?;
        Ok(Sequence::new(RegexSequence(seq)))
    }

    fn prepare(&self, _step: u32, new_tokens: Vec<TokenId>) -> Result<Prepared, Error> {
        self.0.prepare(&new_tokens)
    }

    fn decide(&self, _step: u32, _logits: &Logits) -> Result<Decision, Error> {
        self.0.decide()
    }
}

deepwasm_sdk::export_sampler!(Regex);

#[cfg(test)]
mod tests {
    use super::*;

    /// The config's pattern, compiled on the toy vocabulary, generates
    /// matching text only.
    #[test]
    fn generates_matches() {
        use deepwasm_grammar::testing::{Lcg, generate, toy_engine};
        let engine = toy_engine();
        let pattern = pattern_from_config(r#"{"pattern": "(yes|no): [0-9]{1,3}!?"}"#).unwrap();
        let matches = |s: &str| {
            let Some(rest) = s.strip_prefix("yes: ").or(s.strip_prefix("no: ")) else {
                return false;
            };
            let digits = rest.strip_suffix('!').unwrap_or(rest);
            (1..=3).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        };
        let mut rng = Lcg(5);
        let mut finished = 0;
        for _ in 0..40 {
            let mut seq = engine
                .open(&pattern, || Ok(TopLevelGrammar::from_regex(&pattern)))
                .unwrap();
            let run = generate(&engine, &mut seq, &mut rng, 20);
            assert!(run.finished, "{run:?}");
            finished += 1;
            let text = String::from_utf8(run.text).unwrap();
            assert!(matches(&text), "{text:?}");
        }
        assert_eq!(finished, 40);
        assert!(
            engine
                .open("(", || Ok(TopLevelGrammar::from_regex("(")))
                .is_err()
        );
    }

    #[test]
    fn config() {
        assert_eq!(pattern_from_config(r#"{"pattern": "a+b"}"#).unwrap(), "a+b");
        for (config, needle) in [
            ("{}", "config.pattern: missing"),
            (r#"{"pattern": ""}"#, "must not be empty"),
            (r#"{"pattern": 1}"#, "config.pattern"),
            (r#"{"regex": "a"}"#, "config.regex"),
        ] {
            let e = pattern_from_config(config).unwrap_err();
            assert!(e.message().contains(needle), "{config}: {e}");
        }
    }
}
