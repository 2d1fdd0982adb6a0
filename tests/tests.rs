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

/// Hostile plugins: every attack contained, with its typed error, and the
/// host serving the next call.
mod hostile;

/// The `deepwasm` command line.
mod cli;
