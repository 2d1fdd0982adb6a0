//! The per-sequence decision maker: the built-in sampler or a plugin.
//!
//! Both implement [`Sampler`], so the generation loop treats them alike.
//! A step has two phases, as in the `controller` WIT interface: `prepare`
//! needs only the tokens so far and runs while the model computes the step's
//! logits; `decide` sees the logits and runs only when `prepare` asked for
//! them.
//!
//! Neither phase may hold up the batch: a sampler that works elsewhere (a
//! plugin on its own thread) answers [`Reply::Pending`] when its answer is
//! not in by the time the caller stops waiting, and the caller asks again
//! for the same step later. Its sequence sits steps out meanwhile; the
//! other sequences go on.

use std::time::Instant;

use deepwasm_plugins::LogitsHandle;

use crate::sampling::SamplingParams;

pub use crate::sampling::SampleSpec;

/// What a sampler decided for a step (the WIT `decision`, in the engine's
/// types).
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Append this token.
    Pick(u32),
    /// Let the built-in sampler pick, shaped by the spec.
    Sample(SampleSpec),
    /// Append these tokens (at least one) without sampling, in one forward
    /// pass.
    Force(Vec<u32>),
    /// End the sequence now.
    Stop,
}

/// What a sampler's first phase answered (the WIT `prepared`).
#[derive(Clone, Debug, PartialEq)]
pub enum Prepared {
    /// The decision is known without the logits: `decide` is not called.
    Decided(Decision),
    /// Call `decide` with this step's logits.
    NeedLogits,
}

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

/// A sampler's answer for a step, or word that it is still working on it.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply<T> {
    Ready(T),
    /// Ask again (same step) later; the sequence sits this step out.
    Pending,
}

/// Decides each step's token of one sequence.
///
/// `prepare` and `decide` may be called more than once for the same step:
/// the first call starts the step's work, later ones (for the same step,
/// their other arguments ignored) collect it. Each waits at most until
/// `until` before answering `Pending`; the sampler's own budget and miss
/// policy decide when a late answer turns into a fallback or an error.
pub trait Sampler: Send {
    /// A name for errors and logs.
    fn name(&self) -> &str;

    /// Whether this is the engine's own sampler, which needs nothing but
    /// the request's parameters (so an engine without logits can honour it).
    fn is_builtin(&self) -> bool {
        false
    }

    /// Called once before the first step with the prompt's tokens and the
    /// request's parameters. It must not block for long: a sampler that
    /// sets up slowly does so in the background and answers `Pending`
    /// until it is ready.
    fn begin(&mut self, _prompt: &[u32], _params: &SamplingParams) -> Result<(), SamplerError> {
        Ok(())
    }

    /// Phase one of step `step`; `new_tokens` were appended since the last
    /// step (empty at step 0).
    fn prepare(
        &mut self,
        step: u32,
        new_tokens: &[u32],
        until: Instant,
    ) -> Result<Reply<Prepared>, SamplerError>;

    /// Phase two, with the step's raw logits; called only after `prepare`
    /// answered `NeedLogits`.
    fn decide(
        &mut self,
        step: u32,
        logits: &LogitsHandle,
        until: Instant,
    ) -> Result<Reply<Decision>, SamplerError>;
}

/// The built-in sampler: every step is sampled with the request's
/// parameters, no plugin involved.
#[derive(Debug, Default)]
pub struct BuiltinSampler;

impl Sampler for BuiltinSampler {
    fn name(&self) -> &str {
        "built-in"
    }

    fn is_builtin(&self) -> bool {
        true
    }

    fn prepare(
        &mut self,
        _step: u32,
        _new_tokens: &[u32],
        _until: Instant,
    ) -> Result<Reply<Prepared>, SamplerError> {
        Ok(Reply::Ready(Prepared::Decided(Decision::Sample(
            SampleSpec::default(),
        ))))
    }

    fn decide(
        &mut self,
        _step: u32,
        _logits: &LogitsHandle,
        _until: Instant,
    ) -> Result<Reply<Decision>, SamplerError> {
        Ok(Reply::Ready(Decision::Sample(SampleSpec::default())))
    }
}

/// A borrowed sampler is a sampler: lets callers lend theirs to a batch.
impl<S: Sampler + ?Sized> Sampler for &mut S {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn is_builtin(&self) -> bool {
        (**self).is_builtin()
    }

    fn begin(&mut self, prompt: &[u32], params: &SamplingParams) -> Result<(), SamplerError> {
        (**self).begin(prompt, params)
    }

    fn prepare(
        &mut self,
        step: u32,
        new_tokens: &[u32],
        until: Instant,
    ) -> Result<Reply<Prepared>, SamplerError> {
        (**self).prepare(step, new_tokens, until)
    }

    fn decide(
        &mut self,
        step: u32,
        logits: &LogitsHandle,
        until: Instant,
    ) -> Result<Reply<Decision>, SamplerError> {
        (**self).decide(step, logits, until)
    }
}
