//! deepwasm's integration tests: one binary, one module per area.
//!
//! Plugins are real components built from `plugins/` for wasm32-wasip2 by the
//! `deepwasm-plugin-artifacts` build script; the CLI tests run the real
//! `deepwasm` binary.

mod util;

/// Loading components: world detection, import checks, grants, bad bytes.
mod loading;

/// The on-disk cache of compiled components.
mod cache;

/// Reward plugins: R1 format and math accuracy, determinism, failures
/// confined to their sample.
mod rewards;

/// Tool plugins: the calculator.
mod tools;

/// Sampler plugins driven with synthetic logits: decisions, pooling, limits.
mod samplers;

/// Logits kept on the device: the same tokens as host rows, and only the
/// answers moved.
mod device_logits;

/// Hostile plugins: every attack contained, with its typed error, and the
/// host serving the next call.
mod hostile;

/// Property tests of the component loader: random bytes, bytes behind a
/// component header and mutated real components give a plugin or a
/// `LoadError`, never a panic.
mod fuzz;

/// The `deepwasm` command line.
mod cli;

/// LoRA adapters: PEFT files, applied at run time or merged, and their
/// training (gradients, GRPO loss, AdamW).
mod lora;

/// Chat templates: real models' templates, byte for byte as jinja2 renders them.
mod chat;

/// Tokenizers against llama.cpp and the DeepSeek reference: ids, BOS/EOS,
/// decoding and streaming.
mod tokenizer;

/// Model loading: tiny Hugging Face checkpoints against a float64
/// reference, the KV cache and batching, and clear errors for broken
/// checkpoints.
mod model;

/// Generation on the default model: llama.cpp's greedy tokens, seeds,
/// streaming, stop rules, logprobs, the CLI.
mod generate;

/// DeepSeek-V3/R1 and V2: tiny checkpoints of the real shapes against
/// mlx-lm, the latent cache against the expanded one, FP8 dequantization.
mod deepseek;

/// Sampler plugins steering generation on the real model: bans, plugins
/// that sample themselves, budgets and miss policies, traps.
mod steering;

/// Agent runs on the default model: the ReAct agent answering with the
/// calculator through constrained tool calls, grants, step, token, tool-call
/// and time budgets, trapping tools, the kv store, `deepwasm agent run`.
mod agents;

/// GRPO rollouts on the real model: groups, advantages, reproducibility, a
/// failing reward confined to its samples.
mod rollout;

/// A throwaway PostgreSQL cluster, and the shared state's registry,
/// admissions and usage ledger against it from two replicas.
mod postgres;

/// Replicas sharing plugins, quotas and usage through PostgreSQL, their
/// faults, and the tenants file re-read on SIGHUP.
mod replicas;

/// The HTTP server end to end: the official `openai` Python SDK and a
/// schemathesis fuzz pass against a real `deepwasm serve` on loopback.
mod server;

/// Compiling out of process: a plugin compiled by the compile worker runs
/// and is cached like any; a compile bomb meets the worker's time or memory
/// cap, in the library and through a real server, which serves on.
mod compiling;

/// The same plugins written in Rust, Python, JavaScript and C: every
/// language's build passes the same behavioural tests, with the same
/// scores, sampler decisions and tool answers as the Rust build.
mod polyglot;

/// The GPU check (`deepwasm bench gpu`) run on the CPU: fidelity of every
/// architecture in f32 and bf16, throughput on generated checkpoints, the
/// report.
mod gpu_check;

/// `deepwasm plugin new` skeletons in every language and world, built with
/// `deepwasm plugin build`, loaded and run.
mod skeletons;
