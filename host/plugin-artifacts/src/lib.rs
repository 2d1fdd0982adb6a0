//! Paths of the guest plugins under `plugins/`, built from source by this
//! crate's build script: the Rust ones for `wasm32-wasip2`, the Python,
//! JavaScript and C ones with their own toolchains.
//!
//! `cargo build -p deepwasm-plugin-artifacts` (alias `cargo plugins`) builds
//! them all into `target/plugins/<name>.wasm` (`<lang>-<name>.wasm` for the
//! languages other than Rust).

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
