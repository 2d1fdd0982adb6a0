//! `length-penalty`: a reward plugin that penalises over-long completions
//! softly, as DAPO's overlong reward shaping does (Yu et al., 2025, §3.4).
//!
//! Config: `{"max_length": 1024, "buffer": 256, "unit": "tokens"}` (all
//! optional; those are the defaults). `unit` is `tokens` (the sample's
//! completion tokens; a sample without them is measured in characters / 4,
//! a rough token count) or `chars`.
//!
//! With length L, max M and buffer B, the score is:
//! - `0` when L ≤ M − B;
//! - `(M − B − L) / B`, falling linearly from 0 to −1, when M − B < L ≤ M;
//! - `−1` when L > M.
//!
//! It applies to every sample (never `none`).

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::reward::{Guest, Sample};
use deepwasm_sdk::types::Error;

/// How long a completion is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Completion tokens (characters / 4 when a sample has none).
    Tokens,
    /// Unicode characters.
    Chars,
}

/// The score of a completion of `length` under `max` and `buffer`.
pub fn penalty(length: u64, max: u64, buffer: u64) -> f64 {
    let soft = max.saturating_sub(buffer);
    if length <= soft {
        0.0
    } else if length <= max && buffer > 0 {
        -((length - soft) as f64) / buffer as f64
    } else {
        -1.0
    }
}

/// The length of `sample` in `unit`.
pub fn length(sample: &Sample, unit: Unit) -> u64 {
    let chars = sample.completion.chars().count() as u64;
    match unit {
        Unit::Chars => chars,
        Unit::Tokens if !sample.completion_tokens.is_empty() => {
            sample.completion_tokens.len() as u64
        }
        Unit::Tokens => chars.div_ceil(4),
    }
}

struct LengthPenalty;

impl Guest for LengthPenalty {
    fn score(samples: Vec<Sample>, config: String) -> Result<Vec<Option<f64>>, Error> {
        let cfg = Fields::parse("config", &config)?;
        cfg.only(&["max_length", "buffer", "unit"])?;
        let max: u64 = cfg.get_or("max_length", 1024)?;
        let buffer: u64 = cfg.get_or("buffer", 256)?;
        if buffer > max {
            return Err(cfg.error(
                "buffer",
                format!("{buffer} is larger than max_length {max}"),
            ));
        }
        let unit = match cfg.get_or("unit", "tokens".to_string())?.as_str() {
            "tokens" => Unit::Tokens,
            "chars" => Unit::Chars,
            other => {
                return Err(cfg.error(
                    "unit",
                    format!("{other:?} is neither \"tokens\" nor \"chars\""),
                ));
            }
        };
        Ok(samples
            .iter()
            .map(|s| Some(penalty(length(s, unit), max, buffer)))
            .collect())
    }
}

deepwasm_sdk::export_reward!(LengthPenalty);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_penalty_ramps_from_zero_to_minus_one() {
        assert_eq!(penalty(700, 1024, 256), 0.0);
        assert_eq!(penalty(768, 1024, 256), 0.0);
        assert_eq!(penalty(896, 1024, 256), -0.5);
        assert_eq!(penalty(1024, 1024, 256), -1.0);
        assert_eq!(penalty(5000, 1024, 256), -1.0);
        assert_eq!(penalty(10, 8, 0), -1.0);
        assert_eq!(penalty(8, 8, 0), 0.0);
    }

    #[test]
    fn length_counts_tokens_or_characters() {
        let s = Sample {
            prompt: String::new(),
            completion: "héllo world!".into(),
            completion_tokens: vec![1, 2, 3],
            extra: "{}".into(),
        };
        assert_eq!(length(&s, Unit::Tokens), 3);
        assert_eq!(length(&s, Unit::Chars), 12);
        let no_tokens = Sample {
            completion_tokens: vec![],
            ..s
        };
        assert_eq!(length(&no_tokens, Unit::Tokens), 3);
    }
}
