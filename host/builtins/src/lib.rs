//! The plugins deepwasm ships inside its binary, as component bytes: the
//! server loads them for every tenant like any uploaded plugin, under the
//! same limits.
//!
//! - [`JSON_SCHEMA`]: the llguidance JSON-schema sampler, behind
//!   `response_format` and constrained tool calls.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
