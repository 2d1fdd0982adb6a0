//! The `sampler` world: steer generation token by token.
//!
//! Implement [`Guest`] (instance-wide `setup`) and [`GuestSequence`] (one value
//! per generated sequence), then export them with
//! [`export_sampler!`](crate::export_sampler). The host calls
//! [`GuestSequence::prepare`] at every step while the model runs; only when it
//! answers [`Prepared::NeedLogits`] does it call [`GuestSequence::decide`] with
//! the step's [`Logits`].
//!
//! Methods take `&self`: keep per-sequence state that changes between steps in
//! a `Cell` or `RefCell`.
//!
//! Imports available here: [`tokenizer`], [`logits`], [`log`](crate::log).

#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "deepwasm:plugin/sampler",
        pub_export_macro: true,
        export_macro_name: "export_sampler",
        default_bindings_module: "::deepwasm_sdk::sampler::bindings",
        runtime_path: "::deepwasm_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(inline)]
pub use bindings::deepwasm::plugin::{logits, tokenizer};
#[doc(inline)]
pub use bindings::exports::deepwasm::plugin::controller::{
    Decision, Guest, GuestSequence, Prepared, SampleSpec, Sequence,
};
#[doc(inline)]
pub use logits::{Logits, ScoredToken};

use crate::types::TokenSet;

impl Default for SampleSpec {
    /// Nothing allowed, denied or biased, no parameter overridden: the
    /// built-in sampler picks as the request asked.
    fn default() -> Self {
        SampleSpec {
            allow: None,
            deny: None,
            bias: Vec::new(),
            params: None,
        }
    }
}

impl SampleSpec {
    /// A spec that only denies the tokens of `set`.
    pub fn deny(set: TokenSet) -> Self {
        SampleSpec {
            deny: Some(set),
            ..SampleSpec::default()
        }
    }

    /// A spec that only allows the tokens of `set`.
    pub fn allow(set: TokenSet) -> Self {
        SampleSpec {
            allow: Some(set),
            ..SampleSpec::default()
        }
    }
}

/// "No opinion this step": let the built-in sampler pick with the request's
/// parameters, without asking for the logits.
pub fn defer() -> Prepared {
    Prepared::Decided(Decision::Sample(SampleSpec::default()))
}

/// Every token id that ends generation or is otherwise special (BOS, EOS, pad,
/// added control tokens), sorted and without duplicates.
///
/// Samplers that deny tokens by their text usually exempt these.
pub fn special_token_ids() -> Vec<crate::types::TokenId> {
    let info = tokenizer::info();
    let mut ids: Vec<_> = tokenizer::special_tokens().iter().map(|t| t.id).collect();
    ids.extend(info.eos);
    ids.extend(info.bos);
    ids.sort_unstable();
    ids.dedup();
    ids
}
