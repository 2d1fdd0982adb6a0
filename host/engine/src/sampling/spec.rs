//! What a sampler asks of one step's draw, in the engine's own terms: a
//! mask, sparse biases and parameter overrides ([`SampleSpec`]).
//!
//! These mirror the `deepwasm:plugin` WIT records (`sample-spec`,
//! `token-set`, `token-bias`, `sampling-params`) but belong to the engine:
//! built-in samplers speak them without a plugin in sight, and a plugin's
//! answers are converted to them at one edge
//! ([`plugin_sampler`](crate::plugin_sampler)).

use std::borrow::Cow;

use deepwasm_plugins::{SetTooLarge, words_of_bitset, words_of_ids, words_of_ranges};

/// The half-open range of token ids `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRange {
    pub start: u32,
    pub end: u32,
}

/// A set of token ids, in whichever encoding was compact for its writer.
/// Ids at or past the vocabulary size are ignored when it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSet {
    /// Exactly these ids (order and duplicates do not matter).
    Ids(Vec<u32>),
    /// The union of these ranges.
    Ranges(Vec<TokenRange>),
    /// Token `t` is in the set when bit `t % 32` of word `t / 32` is set;
    /// tokens past the last word are out.
    Bitset(Vec<u32>),
}

impl TokenSet {
    /// This set over `len` tokens as a bitset's words, `ceil(len / 32)` of
    /// them: ids and ranges past `len` dropped, repeats and overlaps merged
    /// (see [`deepwasm_plugins::normalize_words`] for the cost). A set of
    /// more than [`max_set_entries`](deepwasm_plugins::max_set_entries)
    /// ids or ranges is refused.
    pub fn to_words(&self, len: u32) -> Result<Vec<u32>, SetTooLarge> {
        match self {
            TokenSet::Ids(ids) => words_of_ids(ids, len),
            TokenSet::Ranges(ranges) => {
                words_of_ranges(ranges.iter().map(|r| (r.start, r.end)), len)
            }
            TokenSet::Bitset(words) => Ok(words_of_bitset(words, len)),
        }
    }

    /// [`to_words`](Self::to_words), except that a bitset is lent as it
    /// is: its words past `len` only name tokens that do not exist.
    pub fn words(&self, len: u32) -> Result<Cow<'_, [u32]>, SetTooLarge> {
        Ok(match self {
            TokenSet::Bitset(w) => Cow::Borrowed(w),
            _ => Cow::Owned(self.to_words(len)?),
        })
    }
}

/// An additive bias on one token's logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBias {
    pub token: u32,
    pub bias: f32,
}

/// A sampler's replacements for the request's sampling parameters; a field
/// left `None` keeps the request's value
/// ([`SamplingParams::with_overrides`](super::SamplingParams::with_overrides)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

/// How the built-in sampler draws a step for a sampler that asked it to:
/// the default leaves everything to the request's parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleSpec {
    /// Only these tokens may be picked.
    pub allow: Option<TokenSet>,
    /// These tokens may not be picked.
    pub deny: Option<TokenSet>,
    /// Added to the logits after the request's own bias.
    pub bias: Vec<TokenBias>,
    /// Replace the request's parameters for this step.
    pub params: Option<SamplingOverrides>,
}
