//! `{{name}}`: a deepwasm sampler plugin (world `sampler`).
//!
//! Picks the most likely token at every step (greedy decoding) and ends the
//! sequence after `max_steps` tokens when the config sets it. Config:
//! `{"max_steps": 64}` (default: no limit).

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::sampler::{Decision, Guest, GuestSequence, Logits, Prepared, Sequence};
use deepwasm_sdk::types::{Error, SamplingParams, TokenId};

struct Plugin;

/// One generated sequence. Methods take `&self`: keep state that changes
/// between steps in a `Cell` or `RefCell`.
struct Greedy {
    max_steps: Option<u32>,
}

impl Guest for Plugin {
    type Sequence = Greedy;

    /// Called once per instance before any sequence: build indexes here.
    fn setup() -> Result<(), Error> {
        Ok(())
    }
}

impl GuestSequence for Greedy {
    fn open(config: String, _prompt: Vec<TokenId>, _params: SamplingParams) -> Result<Sequence, Error> {
        let cfg = Fields::parse("config", &config)?;
        cfg.only(&["max_steps"])?;
        let max_steps = cfg.get("max_steps")?;
        Ok(Sequence::new(Greedy { max_steps }))
    }

    /// Runs while the model computes the step's logits: decide here what
    /// needs no logits.
    fn prepare(&self, step: u32, _new_tokens: Vec<TokenId>) -> Result<Prepared, Error> {
        if self.max_steps.is_some_and(|max| step >= max) {
            return Ok(Prepared::Decided(Decision::Stop));
        }
        Ok(Prepared::NeedLogits)
    }

    /// The logits stay in the host; ask for what you need.
    fn decide(&self, _step: u32, logits: &Logits) -> Result<Decision, Error> {
        Ok(Decision::Pick(logits.argmax().token))
    }
}

deepwasm_sdk::export_sampler!(Plugin);
