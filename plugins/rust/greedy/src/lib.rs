//! `greedy`: a sampler plugin that always picks the highest-scoring token.
//!
//! Config: none (any JSON object is accepted and ignored).
//!
//! Behaviour, at every step:
//! - `prepare` answers `need-logits`;
//! - `decide` answers `pick(t)` where `t` is `logits.argmax()` (ties go to the
//!   lowest id, as the host defines `argmax`).
//!
//! It never ends the sequence itself: EOS ends it when EOS is the argmax.

use deepwasm_sdk::sampler::{Decision, Guest, GuestSequence, Logits, Prepared, Sequence};
use deepwasm_sdk::types::{Error, SamplingParams, TokenId};

struct Greedy;

/// A greedy sequence keeps no state.
struct GreedySequence;

impl Guest for Greedy {
    type Sequence = GreedySequence;

    fn setup() -> Result<(), Error> {
        Ok(())
    }
}

impl GuestSequence for GreedySequence {
    fn open(
        _config: String,
        _prompt: Vec<TokenId>,
        _params: SamplingParams,
    ) -> Result<Sequence, Error> {
        Ok(Sequence::new(GreedySequence))
    }

    fn prepare(&self, _step: u32, _new_tokens: Vec<TokenId>) -> Result<Prepared, Error> {
        Ok(Prepared::NeedLogits)
    }

    fn decide(&self, _step: u32, logits: &Logits) -> Result<Decision, Error> {
        Ok(Decision::Pick(logits.argmax().token))
    }
}

deepwasm_sdk::export_sampler!(Greedy);
