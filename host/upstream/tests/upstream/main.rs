//! The upstream client against fake upstreams on real loopback sockets:
//! each fake answers with HTTP/1.1 bytes written by hand, the way vLLM,
//! SGLang, llama-server and deepwasm answer (or fail to).

mod fake;

/// Streams that end well: chunks, ids, usage and what the request carried.
mod streaming;

/// Upstreams that stall, cut, answer garbage or are cancelled on.
mod faults;

/// What is tried again, how often, and what never is.
mod retries;

/// `GET /v1/models` in the shapes the engines answer it.
mod probe;

/// The API key stays out of every error; URLs that would leak it are refused.
mod secrets;
