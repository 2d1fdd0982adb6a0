//! A client for an upstream engine that speaks the OpenAI completions API
//! (vLLM, SGLang, llama.cpp's llama-server, another deepwasm server), so
//! deepwasm can generate on weights served elsewhere: a multi-GPU
//! DeepSeek-V3 deployment, say, while tenants, plugins, rewards and agents
//! stay here.
//!
//! [`Upstream::complete`] streams one completion (`POST /v1/completions`
//! with `"stream": true`), handing each piece of text (and its token ids,
//! where the upstream reports them) to a callback as it arrives;
//! [`Upstream::probe`] asks `GET /v1/models` what is served. Every wait is
//! bounded (connect, first byte, between pieces), a cancel flag is honoured
//! within 250 ms, and failures that are safe to retry (nothing was passed on
//! yet) are tried again with backoff. The API key travels only in the
//! `Authorization` header: it is redacted from every error, including text
//! the upstream echoes back.
//!
//! Plain HTTP/1.1 only: an `https://` URL is refused (put a TLS-terminating
//! proxy next to this server instead).

mod client;
mod config;
mod error;
mod models;
mod sse;
mod timing;
mod wire;

pub use client::Upstream;
pub use config::{Secret, UpstreamConfig};
pub use error::UpstreamError;
pub use models::Served;
pub use wire::{Chunk, CompletionRequest, Finished, PromptBody, Usage};
