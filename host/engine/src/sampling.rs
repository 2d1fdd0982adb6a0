//! The built-in sampler: penalties, bias, plugin masks, temperature, top-k,
//! top-p, min-p and the draw.
//!
//! # Pipeline
//!
//! Each generated token of each sequence goes through these steps, in this
//! order (OpenAI and vLLM semantics):
//!
//! 1. **Penalties** ([`process_logits`]): the repetition penalty on every
//!    token seen in the prompt or the output, then the presence and frequency
//!    penalties on tokens of the output.
//! 2. **Logit bias** ([`process_logits`]): the request's `logit_bias`.
//! 3. **Plugin mask** ([`apply_mask`]): a sampler plugin's `deny` set, then
//!    its `allow` set. A mask that leaves nothing to pick is an error.
//! 4. **Plugin bias** ([`apply_bias`]): the plugin's sparse biases.
//! 5. **Temperature** ([`sample()`]): logits are divided by it; below
//!    [`GREEDY_TEMPERATURE`] the step is greedy (argmax, ties to the lowest
//!    id) and steps 6–9 are skipped.
//! 6. **Top-k**: keep the k most likely tokens.
//! 7. **Top-p**: of those, keep the smallest most-likely-first prefix whose
//!    probability (renormalised over what top-k kept) is at least p.
//! 8. **Min-p**: of those, keep tokens at least `min_p` times as likely as
//!    the most likely token.
//! 9. **Draw** one token in proportion to the remaining probabilities, with
//!    the sequence's [`SequenceRng`].
//!
//! [`sample_step`] runs steps 1–9 on one step's logits; the engine may also
//! call the pieces itself (for example to report [`logprobs()`] of the raw
//! logits before they are changed).
//!
//! # Cost
//!
//! A step costs a few vectorised passes over the vocabulary (129,280 entries
//! for DeepSeek-V3/R1) and never sorts it: penalties and biases touch only the
//! tokens they name, top-k keeps a bounded heap and skips blocks that cannot
//! enter it, and top-p looks for its cut among the few tokens that can be in
//! it. The exponential is a polynomial of our own so that the same seed,
//! parameters and logits pick the same tokens on every platform.

pub(crate) mod device;
mod history;
mod kernels;
mod logprobs;
mod mask;
mod params;
mod rng;
mod sample;
mod select;
mod spec;

pub use history::TokenHistory;
pub use logprobs::{MAX_TOP_LOGPROBS, TokenLogprobs, logprobs, logprobs_from_parts};
pub use mask::{MaskError, apply_bias, apply_mask, has_pickable, process_logits};
pub use params::{GREEDY_TEMPERATURE, InvalidParam, SamplingParams};
pub use rng::SequenceRng;
pub use sample::{sample, sample_step};
pub use spec::{SampleSpec, SamplingOverrides, TokenBias, TokenRange, TokenSet};
