//! Guest-side SDK for deepwasm plugins.
//!
//! A deepwasm plugin is a WebAssembly component that implements one of the
//! worlds of the `deepwasm:plugin@0.1.0` WIT package (in `wit/` at the root of
//! the repository). This crate holds the bindings of every world, generated once
//! by `wit-bindgen`, so that a plugin crate depends on `deepwasm-sdk` only:
//!
//! | world     | module        | export macro                 | the plugin implements                       |
//! |-----------|---------------|------------------------------|---------------------------------------------|
//! | `sampler` | [`sampler`]   | [`export_sampler!`]          | [`sampler::Guest`], [`sampler::GuestSequence`] |
//! | `reward`  | [`reward`]    | [`export_reward!`]           | [`reward::Guest`]                           |
//! | `tool`    | [`tool`]      | [`export_tool!`]             | [`tool::Guest`]                             |
//! | `agent`   | [`agent`]     | [`export_agent!`]            | [`agent::Guest`]                            |
//!
//! The `types` and `log` interfaces are shared by every world and generated
//! once: [`types::Error`] is the same type whichever world a plugin exports.
//! Likewise `kv` is shared by the `tool` and `agent` modules.
//!
//! ```no_run
//! use deepwasm_sdk::sampler::{Decision, Guest, GuestSequence, Logits, Prepared, Sequence};
//! use deepwasm_sdk::types::{Error, SamplingParams, TokenId};
//!
//! struct Greedy;
//! struct Seq;
//!
//! impl Guest for Greedy {
//!     type Sequence = Seq;
//!     fn setup() -> Result<(), Error> {
//!         Ok(())
//!     }
//! }
//!
//! impl GuestSequence for Seq {
//!     fn open(_: String, _: Vec<TokenId>, _: SamplingParams) -> Result<Sequence, Error> {
//!         Ok(Sequence::new(Seq))
//!     }
//!     fn prepare(&self, _: u32, _: Vec<TokenId>) -> Result<Prepared, Error> {
//!         Ok(Prepared::NeedLogits)
//!     }
//!     fn decide(&self, _: u32, logits: &Logits) -> Result<Decision, Error> {
//!         Ok(Decision::Pick(logits.argmax().token))
//!     }
//! }
//!
//! deepwasm_sdk::export_sampler!(Greedy);
//! ```
//!
//! The export macros expand to paths under `::deepwasm_sdk`, so the dependency
//! must keep that name (no renaming in `Cargo.toml`). A plugin crate is a
//! `cdylib` built with `cargo build --release --target wasm32-wasip2`, which
//! makes the component directly.
//!
//! Besides the bindings the SDK has a few helpers that most plugins need:
//! [`config`] (JSON config and argument parsing with errors that name the
//! field), [`token_set`] (a bitset builder for [`types::TokenSet`]) and small
//! constructors on the generated types ([`sampler::defer`], [`types::Error`]'s
//! `invalid_input` and friends, [`tool::spec`]).

// The generated export macros name this crate `::deepwasm_sdk`; make that path
// resolve inside the crate too.
extern crate self as deepwasm_sdk;

pub mod agent;
pub mod config;
pub mod reward;
pub mod sampler;
pub mod token_set;
pub mod tool;
mod types_ext;

#[doc(inline)]
pub use sampler::bindings::deepwasm::plugin::log;
#[doc(inline)]
pub use sampler::bindings::deepwasm::plugin::types;

#[doc(inline)]
pub use agent::bindings::export_agent;
#[doc(inline)]
pub use reward::bindings::export_reward;
#[doc(inline)]
pub use sampler::bindings::export_sampler;
#[doc(inline)]
pub use tool::bindings::export_tool;

/// Runtime support that the generated bindings and export macros refer to.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}
