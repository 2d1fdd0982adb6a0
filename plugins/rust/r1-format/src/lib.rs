//! `r1-format`: the DeepSeek-R1 format reward, scoring 1.0 when a completion
//! has the `<think>…</think>` shape and 0.0 otherwise.
//!
//! Config:
//!
//! ```json
//! {"strict": false}
//! ```
//!
//! Rule, for every sample (the score is never `none`):
//! - Default, the same as TRL's `think_format_reward` (the regex
//!   `^<think>(?!.*<think>)(.*?)</think>.*$` with `DOTALL`): the completion
//!   starts with `<think>`, has no second `<think>` after it, and has a
//!   `</think>` after it.
//! - When the sample's prompt ends (trailing whitespace ignored) with
//!   `<think>` and the completion does not start with `<think>`, the prompt
//!   is taken to have opened the think block, as the R1 chat template does:
//!   the completion then must contain no `<think>` and a `</think>`.
//! - `strict: true` also requires exactly one `</think>` and some
//!   non-whitespace text (the answer) after it.
//!
//! Plain string scanning, no regular expressions.

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::reward::{Guest, Sample};
use deepwasm_sdk::types::Error;

use memchr::memmem;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Substring search with memchr's SIMD prefilter (wasm `simd128`, enabled
/// for the plugins in `plugins/.cargo/config.toml`): several times faster
/// than `str::find` on long completions.
fn find(haystack: &str, needle: &str) -> Option<usize> {
    memmem::find(haystack.as_bytes(), needle.as_bytes())
}

/// Whether `completion` (to `prompt`) has the R1 format.
pub fn well_formed(prompt: &str, completion: &str, strict: bool) -> bool {
    let after_open = if let Some(rest) = completion.strip_prefix(OPEN) {
        rest
    } else if prompt.trim_end().ends_with(OPEN) {
        completion
    } else {
        return false;
    };
    if find(after_open, OPEN).is_some() {
        return false;
    }
    let Some(close) = find(after_open, CLOSE) else {
        return false;
    };
    if !strict {
        return true;
    }
    let answer = &after_open[close + CLOSE.len()..];
    find(answer, CLOSE).is_none() && !answer.trim().is_empty()
}

struct R1Format;

impl Guest for R1Format {
    fn score(samples: Vec<Sample>, config: String) -> Result<Vec<Option<f64>>, Error> {
        let cfg = Fields::parse("config", &config)?;
        cfg.only(&["strict"])?;
        let strict = cfg.get_or("strict", false)?;
        Ok(samples
            .iter()
            .map(|s| {
                Some(if well_formed(&s.prompt, &s.completion, strict) {
                    1.0
                } else {
                    0.0
                })
            })
            .collect())
    }
}

deepwasm_sdk::export_reward!(R1Format);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trl_rule() {
        let ok = |c: &str| well_formed("", c, false);
        assert!(ok("<think>\nreasoning\n</think>\nanswer"));
        assert!(ok("<think></think>"));
        assert!(ok("<think>a</think>b</think>c"));
        assert!(!ok("<think>a<think>b</think>c"));
        assert!(!ok("<think>a</think>b<think>"));
        assert!(!ok("<think>no close"));
        assert!(!ok(" <think>a</think>"));
        assert!(!ok("a<think>b</think>"));
        assert!(!ok("</think>"));
        assert!(!ok(""));
        assert!(!ok("<think</think>"));
    }

    #[test]
    fn opened_by_the_prompt() {
        let p = "<｜User｜>2+2?<｜Assistant｜><think>\n";
        assert!(well_formed(p, "4 obviously</think>4", false));
        assert!(well_formed(p, "<think>4</think>4", false));
        assert!(!well_formed(p, "no close", false));
        assert!(!well_formed(p, "a<think>b</think>", false));
        assert!(!well_formed("<think> then text", "a</think>b", false));
    }

    #[test]
    fn strict_rule() {
        let s = |c: &str| well_formed("", c, true);
        assert!(s("<think>a</think>42"));
        assert!(!s("<think>a</think>  \n"));
        assert!(!s("<think>a</think>b</think>c"));
        assert!(well_formed("<think>", "a</think> b", true));
    }

    #[test]
    fn config_errors() {
        let e = R1Format::score(vec![], r#"{"strict": "yes"}"#.into()).unwrap_err();
        assert!(e.message().contains("config.strict"), "{e}");
        assert!(R1Format::score(vec![], r#"{"strikt": true}"#.into()).is_err());
        let s = Sample {
            prompt: String::new(),
            completion: "<think>x</think>y".into(),
            completion_tokens: vec![],
            extra: "{}".into(),
        };
        assert_eq!(
            R1Format::score(vec![s], "{}".into()).unwrap(),
            vec![Some(1.0)]
        );
    }
}
