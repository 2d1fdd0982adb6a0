//! The per-sequence decision maker: the built-in sampler or a plugin.
//!
//! Both implement [`Sampler`], so the generation loop treats them alike.
//! A step has two phases, as in the `controller` WIT interface: `prepare`
//! needs only the tokens so far and runs while the model computes the step's
//! logits; `decide` sees the logits and runs only when `prepare` asked for
//! them.

use std::sync::Arc;

use crate::sampling::SamplingParams;

pub use deepwasm_plugins::{Decision, Prepared, SampleSpec};

/// Why a sampler could not decide.
#[derive(Debug, thiserror::Error)]
#[error("sampler `{sampler}`: {message}")]
pub struct SamplerError {
    pub sampler: String,
    pub message: String,
    /// The failure that caused this, when a plugin failed.
    #[source]
    pub source: Option<deepwasm_plugins::PluginError>,
}

/// Decides each step's token of one sequence.
pub trait Sampler: Send {
    /// A name for errors and logs.
    fn name(&self) -> &str;

    /// Called once before the first step with the prompt's tokens and the
    /// request's parameters.
    fn begin(&mut self, _prompt: &[u32], _params: &SamplingParams) -> Result<(), SamplerError> {
        Ok(())
    }

    /// Phase one of step `step`; `new_tokens` were appended since the last
    /// call (empty at step 0).
    fn prepare(&mut self, step: u32, new_tokens: &[u32]) -> Result<Prepared, SamplerError>;

    /// Phase two, with the step's raw logits; called only after `prepare`
    /// answered `NeedLogits`.
    fn decide(&mut self, step: u32, logits: &Arc<Vec<f32>>) -> Result<Decision, SamplerError>;

    /// Whether `prepare` is cheap enough to run inline instead of beside the
    /// forward pass on another thread.
    fn prepare_is_trivial(&self) -> bool {
        false
    }
}

/// A spec that leaves everything to the request's parameters.
pub fn default_spec() -> SampleSpec {
    SampleSpec {
        allow: None,
        deny: None,
        bias: Vec::new(),
        params: None,
    }
}

/// The built-in sampler: every step is sampled with the request's
/// parameters, no plugin involved.
#[derive(Debug, Default)]
pub struct BuiltinSampler;

impl Sampler for BuiltinSampler {
    fn name(&self) -> &str {
        "built-in"
    }

    fn prepare(&mut self, _step: u32, _new_tokens: &[u32]) -> Result<Prepared, SamplerError> {
        Ok(Prepared::Decided(Decision::Sample(default_spec())))
    }

    fn decide(&mut self, _step: u32, _logits: &Arc<Vec<f32>>) -> Result<Decision, SamplerError> {
        Ok(Decision::Sample(default_spec()))
    }

    fn prepare_is_trivial(&self) -> bool {
        true
    }
}

/// A borrowed sampler is a sampler: lets callers lend theirs to a batch.
impl<S: Sampler + ?Sized> Sampler for &mut S {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn begin(&mut self, prompt: &[u32], params: &SamplingParams) -> Result<(), SamplerError> {
        (**self).begin(prompt, params)
    }

    fn prepare(&mut self, step: u32, new_tokens: &[u32]) -> Result<Prepared, SamplerError> {
        (**self).prepare(step, new_tokens)
    }

    fn decide(&mut self, step: u32, logits: &Arc<Vec<f32>>) -> Result<Decision, SamplerError> {
        (**self).decide(step, logits)
    }

    fn prepare_is_trivial(&self) -> bool {
        (**self).prepare_is_trivial()
    }
}
