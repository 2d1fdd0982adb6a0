//! Paths of the guest plugins under `plugins/`, built from source for
//! `wasm32-wasip2` by this crate's build script.
//!
//! `cargo build -p deepwasm-plugin-artifacts` (alias `cargo plugins`) builds
//! them all into `target/plugins/<name>.wasm`.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
