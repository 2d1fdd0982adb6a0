//! Generation on deepwasm models: the per-sequence loop (prefill, decode
//! with the KV cache, two-phase sampler steps, stop rules, UTF-8-safe
//! streaming) and the built-in sampling pipeline plugins plug into.

pub mod agent;
pub mod batcher;
pub mod generate;
pub mod plugin_sampler;
pub mod rewards;
pub mod sampler;
pub mod sampling;
mod sequence;
pub mod stop;

pub use generate::{
    BatchItem, Completion, Delta, Engine, FinishReason, GenerateError, GenerateRequest, Generator,
    Prompt, Timings, Usage,
};
pub use plugin_sampler::{
    DEFAULT_STEP_BUDGET, MissPolicy, ModelTokenizer, PluginSampler, sampler_limits,
};
pub use sampler::{BuiltinSampler, Reply, Sampler, SamplerError};
