//! Hosting deepwasm's Wasm component plugins under hard limits.
//!
//! A plugin is a component implementing one of the worlds in `wit/`:
//! a sampler steers generation, a reward scores completions, a tool answers
//! calls, an agent runs tasks. This crate loads components
//! ([`PluginEngine::load`]), checks what they import against their world and
//! their tenant's grants, and runs them in stores bounded by memory, a
//! wall-clock deadline, fuel and instance/table counts ([`Limits`]). Whatever
//! a plugin does, the caller gets a value or a [`PluginError`] naming the
//! plugin and what stopped it; the host process carries on.
//!
//! No ambient authority: plugins see no files, environment, network or host
//! stdio. What they can reach is what their [`Capabilities`] hold.

mod agent;
mod bindings;
mod cache;
mod engine;
mod error;
mod host;
mod limits;
mod plugin;
mod reward;
mod sampler;
mod sandbox;
mod tool;
mod worker;

pub use agent::{AgentAnswer, AgentControl, AgentPlugin, LogSink, MAX_ANSWER_BYTES};
pub use bindings::{inference, log, logits as logits_api, tokenizer, types};
pub use cache::{PARTIAL_MAX_AGE, PARTIAL_PREFIX, sweep_partial, write_atomically};
pub use engine::{
    CompileSource, EPOCH_TICK, EngineConfig, MAX_IDLE_BYTES, MAX_IDLE_INSTANCES, PluginEngine,
    TOTAL_INSTANCES,
};
pub use error::{GuestError, PluginError};
pub use host::logits::{
    LogitsError, LogitsHandle, LogitsResult, LogitsSource, ScoredToken, SetTooLarge, TopK, argmax,
    for_each_bit_run, for_each_run, log_sum_exp, max_set_entries, normalize, normalize_words,
    top_k, words_of_bitset, words_of_ids, words_of_ranges,
};
pub use host::{
    CallOutput, Capabilities, InferenceAccess, KvAccess, LogLine, MAX_PROMPT_BYTES,
    MAX_TOOL_ARGUMENT_BYTES, MemoryKv, TokenizerAccess, ToolsAccess,
};
pub use limits::{LimitHit, Limits, MIB};
pub use plugin::{
    ExportInfo, Grants, HostInterface, ImportInfo, LoadError, PACKAGE, PACKAGE_VERSION, Plugin,
    PluginInfo, World, content_id,
};
pub use reward::{RewardPlugin, Sample, Score};
pub use sampler::{
    DEFAULT_MAX_IDLE, Decision, FIRST_BACKOFF, IDLE_TTL, MAX_BACKOFF, Prepared, STRIKES,
    SampleSpec, SamplerPlugin, SamplerSequence, SamplingParams, TokenBias, TokenRange, TokenSet,
};
pub use sandbox::{Meter, Sandbox, Usage};
pub use tool::{MAX_TOOL_OUTPUT_BYTES, ToolPlugin, ToolResult};
pub use worker::{
    CompileWorker, DEFAULT_MAX_COMPILE_MEMORY, DEFAULT_MAX_COMPILE_TIME, compile_worker_main,
};
