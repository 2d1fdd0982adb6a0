//! The host side of the interfaces plugins import, and the per-store state
//! they live in.
//!
//! Each capability (tokenizer, inference, tools, kv) is supplied by the
//! embedder as a trait object in `Capabilities`. A capability left `None` is
//! not there for the plugin: its functions answer `not-granted` where the WIT
//! lets them return an error, and trap otherwise. The loader refuses
//! components that import interfaces their world or tenant does not allow, so
//! these answers are a second line, not the first.

pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod logits;
pub(crate) mod output;
mod services;
pub(crate) mod tokenizer;
pub(crate) mod wait;

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;
use sha2::{Digest, Sha256};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{inference, tokenizer as tok, types};
use crate::limits::{Limits, StoreLimiter};

pub use kv::MemoryKv;
pub use output::{CallOutput, LogLine};
pub use services::{MAX_PROMPT_BYTES, MAX_TOOL_ARGUMENT_BYTES};

/// The serving model's tokenizer, as the `tokenizer` interface shows it.
pub trait TokenizerAccess: Send + Sync {
    fn info(&self) -> tok::TokenizerInfo;
    fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32>;
    fn decode(&self, tokens: &[u32], skip_special_tokens: bool) -> String;
    /// The raw bytes of one token; `None` for an unknown id.
    fn token_bytes(&self, token: u32) -> Option<Vec<u8>>;
    fn token_id(&self, text: &str) -> Option<u32>;
    fn special_tokens(&self) -> Vec<tok::SpecialToken>;
}

/// Generation for agents, as the `inference` interface shows it.
pub trait InferenceAccess: Send + Sync {
    fn model(&self) -> String;
    fn chat(
        &self,
        messages: Vec<types::Message>,
        options: inference::GenerateOptions,
    ) -> Result<inference::ChatResponse, types::Error>;
    fn complete(
        &self,
        prompt: String,
        options: inference::GenerateOptions,
    ) -> Result<inference::Completion, types::Error>;
}

/// The tools granted to a plugin, as the `tools` interface shows them.
pub trait ToolsAccess: Send + Sync {
    fn list(&self) -> Vec<types::ToolSpec>;
    fn call(&self, name: &str, arguments: &str) -> Result<types::ToolOutput, types::Error>;
}

/// A tenant's key-value store, as the `kv` interface shows it.
pub trait KvAccess: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, types::Error>;
    fn set(&self, key: &str, value: Vec<u8>) -> Result<(), types::Error>;
    fn delete(&self, key: &str) -> Result<bool, types::Error>;
    fn keys(&self, prefix: &str) -> Result<Vec<String>, types::Error>;
}

/// The capabilities one plugin instance is given.
#[derive(Clone, Default)]
pub struct Capabilities {
    pub tokenizer: Option<Arc<dyn TokenizerAccess>>,
    pub inference: Option<Arc<dyn InferenceAccess>>,
    pub tools: Option<Arc<dyn ToolsAccess>>,
    pub kv: Option<Arc<dyn KvAccess>>,
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capabilities")
            .field("tokenizer", &self.tokenizer.is_some())
            .field("inference", &self.inference.is_some())
            .field("tools", &self.tools.is_some())
            .field("kv", &self.kv.is_some())
            .finish()
    }
}

/// How a store's WASI context is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wasi {
    /// Clocks read the host's time; random numbers are random; waits last
    /// until what they wait for, or the call's deadline.
    Live,
    /// Clocks are frozen at the Unix epoch, every wait ends at once, and
    /// "random" bytes come from this seed, so the same inputs always give
    /// the same outputs.
    Deterministic([u8; 32]),
}

/// The data of every plugin store.
pub(crate) struct HostState {
    /// The plugin's display name, for logs and errors.
    pub(crate) plugin: Arc<str>,
    wasi_ctx: WasiCtx,
    /// Live or deterministic: how clocks, randomness and waits behave.
    pub(crate) wasi: Wasi,
    /// The deadline of the call in progress (or of instantiation), which
    /// bounds every wait inside a host function.
    pub(crate) deadline: wait::CallDeadline,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: StoreLimiter,
    pub(crate) caps: Capabilities,
    pub(crate) output: output::CallOutputs,
}

impl HostState {
    pub(crate) fn new(plugin: Arc<str>, limits: &Limits, caps: Capabilities, wasi: Wasi) -> Self {
        let output = output::CallOutputs::new(plugin.clone(), limits);
        // No ambient authority: no preopened directories, no environment, no
        // arguments, no network (TCP, UDP and name lookup all off), stdin
        // empty, stdout/stderr captured into bounded buffers.
        let mut builder = WasiCtx::builder();
        builder
            .stdout(output.stdout.clone())
            .stderr(output.stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Wasi::Deterministic(seed) = wasi {
            // ChaCha streams: the secure one from the seed, the insecure one
            // and the insecure seed from its hash, so none repeats another.
            let other: [u8; 32] = Sha256::digest(seed).into();
            let mut low = [0u8; 16];
            low.copy_from_slice(&other[16..]);
            builder
                .wall_clock(output::FrozenClock)
                .monotonic_clock(output::FrozenClock)
                .secure_random(ChaCha12Rng::from_seed(seed))
                .insecure_random(ChaCha12Rng::from_seed(other))
                .insecure_random_seed(u128::from_le_bytes(low));
        }
        HostState {
            plugin,
            wasi_ctx: builder.build(),
            wasi,
            deadline: wait::CallDeadline::after(limits.setup_deadline),
            table: ResourceTable::new(),
            limiter: StoreLimiter::new(limits),
            caps,
            output,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi_ctx,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

/// A trap raised by the host when a plugin calls a capability it does not have
/// and the interface has no way to say so as a value.
pub(crate) fn missing(plugin: &str, interface: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "plugin `{plugin}` called `{interface}`, which is not available to it"
    ))
}

pub(crate) fn not_granted(interface: &str) -> types::Error {
    types::Error::NotGranted(format!("this plugin was not granted `{interface}`"))
}
