//! Generation on deepwasm models: the per-sequence loop (prefill, decode
//! with the KV cache, two-phase sampler steps, stop rules, UTF-8-safe
//! streaming) and the built-in sampling pipeline plugins plug into.

pub mod agent;
pub mod batcher;
mod engine;
pub mod generate;
pub mod logits;
pub mod plugin_sampler;
pub mod request;
pub mod rewards;
pub mod rollout;
pub mod sampler;
pub mod sampling;
pub mod scheduler;
mod sequence;
pub mod stop;
pub mod train;
pub mod upstream;

pub use engine::Engine;
pub use generate::{BatchItem, Generator};
pub use logits::{LogitsPlacement, LogitsTraffic};
pub use plugin_sampler::{
    DEFAULT_STEP_BUDGET, MissPolicy, ModelTokenizer, PluginSampler, SamplerHosting, sampler_limits,
};
pub use request::{
    Completion, Delta, FinishReason, GenerateError, GenerateRequest, Pooling, Prompt, Timings,
    Usage,
};
pub use sampler::{BuiltinSampler, Reply, Sampler, SamplerError};
pub use scheduler::{Event, Scheduler, SchedulerConfig, SchedulerStats};
