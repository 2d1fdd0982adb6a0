//! A request's sampling parameters and their validation.

use serde::{Deserialize, Serialize};

use super::spec::SamplingOverrides;

/// Temperatures below this sample greedily, as in vLLM: dividing logits by a
/// smaller number only magnifies rounding noise, and the answer is the argmax
/// anyway.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// One request's sampling parameters, with OpenAI's and vLLM's meanings.
///
/// Logits are the model's unnormalised log-probabilities (natural log), and
/// every parameter below is in those units unless it says otherwise.
/// [`validate`](Self::validate) checks the documented ranges; the sampler
/// assumes they hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature: logits are divided by it before sampling.
    /// Default 1.0; a finite number >= 0. Below [`GREEDY_TEMPERATURE`]
    /// (0 included) the most likely token is picked, ties going to the
    /// lowest id.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties to the lower id).
    /// Default 0, which turns the filter off; any value is allowed, and one at
    /// or above the vocabulary size keeps everything.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose
    /// probability sums to at least `top_p`. Default 1.0 (off); in (0, 1].
    /// At least one token is always kept.
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` times that of the
    /// most likely token. Default 0.0 (off); in [0, 1].
    pub min_p: f32,
    /// HF/vLLM repetition penalty on every distinct token seen in the prompt
    /// or the output: a positive logit is divided by it, a negative one
    /// multiplied, so values above 1 discourage repeats. Default 1.0 (off);
    /// a finite number > 0.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty: subtracted once from the logit of every token
    /// that occurs in the output so far (the prompt does not count).
    /// Default 0.0; in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted from a token's logit once per
    /// occurrence in the output so far (the prompt does not count).
    /// Default 0.0; in [-2, 2].
    pub frequency_penalty: f32,
    /// OpenAI logit bias: `(token, bias)` pairs, the bias added to the
    /// token's logit. Each bias in [-100, 100]; entries for the same token
    /// add up, and ids outside the vocabulary are ignored by the sampler
    /// ([`validate_vocab`](Self::validate_vocab) rejects them). Default empty.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the sequence's [`SequenceRng`](super::SequenceRng); `None`
    /// lets the engine draw one from the OS. Default `None`; any value.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

/// A sampling parameter outside its allowed range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid sampling parameter `{field}`: must be {allowed}, got {got}")]
pub struct InvalidParam {
    /// The field, as named in the request (`logit_bias[42]` for one entry).
    pub field: String,
    /// The allowed range, in words.
    pub allowed: String,
    /// The rejected value.
    pub got: String,
}

fn check(ok: bool, field: &str, allowed: &str, got: impl ToString) -> Result<(), InvalidParam> {
    if ok {
        Ok(())
    } else {
        Err(InvalidParam {
            field: field.to_owned(),
            allowed: allowed.to_owned(),
            got: got.to_string(),
        })
    }
}

impl SamplingParams {
    /// Checks every field against its documented range. NaN is never valid.
    pub fn validate(&self) -> Result<(), InvalidParam> {
        let t = self.temperature;
        check(
            t.is_finite() && t >= 0.0,
            "temperature",
            "a finite number >= 0",
            t,
        )?;
        let p = self.top_p;
        check(p > 0.0 && p <= 1.0, "top_p", "in (0, 1]", p)?;
        let m = self.min_p;
        check((0.0..=1.0).contains(&m), "min_p", "in [0, 1]", m)?;
        let r = self.repetition_penalty;
        check(
            r.is_finite() && r > 0.0,
            "repetition_penalty",
            "a finite number > 0",
            r,
        )?;
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            check((-2.0..=2.0).contains(&v), field, "in [-2, 2]", v)?;
        }
        for &(token, bias) in &self.logit_bias {
            check(
                (-100.0..=100.0).contains(&bias),
                &format!("logit_bias[{token}]"),
                "in [-100, 100]",
                bias,
            )?;
        }
        Ok(())
    }

    /// Checks that every `logit_bias` token is in a vocabulary of
    /// `vocab_size` tokens (the sampler would silently ignore the others).
    pub fn validate_vocab(&self, vocab_size: usize) -> Result<(), InvalidParam> {
        for &(token, _) in &self.logit_bias {
            check(
                (token as usize) < vocab_size,
                "logit_bias",
                &format!("token ids below the vocabulary size {vocab_size}"),
                token,
            )?;
        }
        Ok(())
    }

    /// Whether this request samples greedily (temperature below
    /// [`GREEDY_TEMPERATURE`]).
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }

    /// Whether a repetition, presence or frequency penalty is set.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// These parameters with the fields a sampler plugin set replacing ours
    /// (fields it left `None` keep their value). `logit_bias` is kept: a
    /// plugin biases through its sample spec instead.
    pub fn with_overrides(&self, o: &SamplingOverrides) -> SamplingParams {
        SamplingParams {
            temperature: o.temperature.unwrap_or(self.temperature),
            top_k: o.top_k.map_or(self.top_k, |k| k as usize),
            top_p: o.top_p.unwrap_or(self.top_p),
            min_p: o.min_p.unwrap_or(self.min_p),
            repetition_penalty: o.repetition_penalty.unwrap_or(self.repetition_penalty),
            presence_penalty: o.presence_penalty.unwrap_or(self.presence_penalty),
            frequency_penalty: o.frequency_penalty.unwrap_or(self.frequency_penalty),
            logit_bias: self.logit_bias.clone(),
            seed: o.seed.or(self.seed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(p: SamplingParams) -> InvalidParam {
        p.validate().expect_err("out-of-range value accepted")
    }

    #[test]
    fn defaults_are_valid_and_off() {
        let p = SamplingParams::default();
        p.validate().unwrap();
        assert_eq!(p.temperature, 1.0);
        assert_eq!((p.top_k, p.top_p, p.min_p), (0, 1.0, 0.0));
        assert_eq!(p.repetition_penalty, 1.0);
        assert_eq!((p.presence_penalty, p.frequency_penalty), (0.0, 0.0));
        assert!(p.logit_bias.is_empty() && p.seed.is_none());
        assert!(!p.is_greedy());
    }

    #[test]
    fn range_edges_are_accepted() {
        let p = SamplingParams {
            temperature: 0.0,
            top_k: usize::MAX,
            top_p: 1.0,
            min_p: 1.0,
            repetition_penalty: 1e-3,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            logit_bias: vec![(0, -100.0), (7, 100.0)],
            seed: Some(u64::MAX),
        };
        p.validate().unwrap();
        assert!(p.is_greedy());
    }

    #[test]
    fn each_out_of_range_field_is_named_with_its_range() {
        let d = SamplingParams::default;
        let cases: Vec<(SamplingParams, &str, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.1,
                    ..d()
                },
                "temperature",
                ">= 0",
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..d()
                },
                "temperature",
                ">= 0",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..d()
                },
                "temperature",
                ">= 0",
            ),
            (SamplingParams { top_p: 0.0, ..d() }, "top_p", "(0, 1]"),
            (SamplingParams { top_p: 1.01, ..d() }, "top_p", "(0, 1]"),
            (SamplingParams { min_p: -0.1, ..d() }, "min_p", "[0, 1]"),
            (SamplingParams { min_p: 1.5, ..d() }, "min_p", "[0, 1]"),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..d()
                },
                "repetition_penalty",
                "> 0",
            ),
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..d()
                },
                "presence_penalty",
                "[-2, 2]",
            ),
            (
                SamplingParams {
                    frequency_penalty: -2.01,
                    ..d()
                },
                "frequency_penalty",
                "[-2, 2]",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(5, 1.0), (9, 150.0)],
                    ..d()
                },
                "logit_bias[9]",
                "[-100, 100]",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(5, f32::NAN)],
                    ..d()
                },
                "logit_bias[5]",
                "[-100, 100]",
            ),
        ];
        for (p, field, range) in cases {
            let e = rejected(p);
            assert_eq!(e.field, field);
            let msg = e.to_string();
            assert!(msg.contains(&format!("`{field}`")), "{msg}");
            assert!(msg.contains(range), "{msg}");
        }
    }

    #[test]
    fn message_reads_well() {
        let e = rejected(SamplingParams {
            top_p: 1.5,
            ..SamplingParams::default()
        });
        assert_eq!(
            e.to_string(),
            "invalid sampling parameter `top_p`: must be in (0, 1], got 1.5"
        );
    }

    #[test]
    fn logit_bias_ids_are_checked_against_the_vocabulary() {
        let p = SamplingParams {
            logit_bias: vec![(3, 1.0), (10, 1.0)],
            ..SamplingParams::default()
        };
        p.validate().unwrap();
        p.validate_vocab(11).unwrap();
        let e = p.validate_vocab(10).unwrap_err();
        assert_eq!(e.field, "logit_bias");
        assert!(e.to_string().contains("10"), "{e}");
    }

    #[test]
    fn plugin_overrides_replace_only_the_fields_they_set() {
        let base = SamplingParams {
            temperature: 0.7,
            top_k: 40,
            logit_bias: vec![(1, 2.0)],
            seed: Some(9),
            ..SamplingParams::default()
        };
        let o = SamplingOverrides {
            temperature: Some(0.0),
            top_p: Some(0.5),
            presence_penalty: Some(1.0),
            ..SamplingOverrides::default()
        };
        let got = base.with_overrides(&o);
        assert_eq!(
            got,
            SamplingParams {
                temperature: 0.0,
                top_p: 0.5,
                presence_penalty: 1.0,
                ..base.clone()
            }
        );
    }
}
