//! Guest stdout, stderr and `log` messages: captured per call, bounded, and
//! tagged with the plugin's name.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::bindings::log::Level;
use crate::limits::Limits;

/// What a plugin wrote during one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub logs: Vec<LogLine>,
    /// Bytes of stdout, stderr and log messages dropped past the caps.
    pub dropped_bytes: u64,
}

/// One `log` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

impl CallOutput {
    /// What the guest said last on stderr before it stopped: a Rust guest's
    /// panic message (`panicked at src/lib.rs:3:5: boom`), else the last
    /// non-empty line.
    pub fn last_words(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        if let Some(i) = lines.iter().rposition(|l| l.contains("panicked at")) {
            let at = lines[i]
                .split_once("panicked at ")
                .map_or(lines[i], |(_, at)| at);
            let message = lines.get(i + 1).copied().unwrap_or("");
            return Some(format!("panicked at {at} {message}").trim_end().to_owned());
        }
        lines.last().map(|l| (*l).to_owned())
    }
}

/// Bytes charged per `log` message on top of its text.
const LOG_MESSAGE_OVERHEAD: usize = 16;

/// The capture buffers of one store.
pub(crate) struct CallOutputs {
    plugin: Arc<str>,
    pub(crate) stdout: CappedPipe,
    pub(crate) stderr: CappedPipe,
    logs: Vec<LogLine>,
    log_bytes: usize,
    log_cap: usize,
    log_dropped: u64,
    /// Sees each kept `log` message as it is written.
    sink: Option<crate::agent::LogSink>,
}

impl CallOutputs {
    pub(crate) fn new(plugin: Arc<str>, limits: &Limits) -> Self {
        CallOutputs {
            plugin,
            stdout: CappedPipe::new(limits.output_bytes),
            stderr: CappedPipe::new(limits.output_bytes),
            logs: Vec::new(),
            log_bytes: 0,
            log_cap: limits.log_bytes,
            log_dropped: 0,
            sink: None,
        }
    }

    pub(crate) fn log(&mut self, level: Level, message: String) {
        // Each message costs its length plus a fixed overhead, so a flood of
        // empty messages runs out of budget too.
        let cost = message.len() + LOG_MESSAGE_OVERHEAD;
        if self.log_bytes + cost > self.log_cap {
            self.log_dropped += message.len() as u64;
            return;
        }
        self.log_bytes += cost;
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "deepwasm::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "deepwasm::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "deepwasm::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "deepwasm::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "deepwasm::plugin", plugin, "{message}"),
        }
        let line = LogLine { level, message };
        if let Some(sink) = &self.sink {
            sink(&line);
        }
        self.logs.push(line);
    }

    /// Send every `log` message kept from now on to `sink` as well, as it
    /// is written.
    pub(crate) fn set_sink(&mut self, sink: Option<crate::agent::LogSink>) {
        self.sink = sink;
    }

    /// Take what was written since the last call and reset the budgets.
    pub(crate) fn take(&mut self) -> CallOutput {
        let (stdout, out_dropped) = self.stdout.take();
        let (stderr, err_dropped) = self.stderr.take();
        let out = CallOutput {
            stdout,
            stderr,
            logs: std::mem::take(&mut self.logs),
            dropped_bytes: out_dropped + err_dropped + self.log_dropped,
        };
        self.log_bytes = 0;
        self.log_dropped = 0;
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            if !bytes.is_empty() {
                tracing::debug!(
                    target: "deepwasm::plugin",
                    plugin = &*self.plugin,
                    stream,
                    "{}",
                    String::from_utf8_lossy(bytes).trim_end()
                );
            }
        }
        out
    }
}

/// A guest output stream that keeps its first `cap` bytes per call and counts
/// the rest.
///
/// Unlike a pipe that fails when full, it always accepts writes: a chatty
/// plugin is not killed for talking (its Rust `println!` would panic on a
/// write error), it is only not heard past the cap. A plugin that writes
/// forever still meets its deadline.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    inner: Arc<Mutex<Capped>>,
}

struct Capped {
    buf: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl CappedPipe {
    fn new(cap: usize) -> Self {
        CappedPipe {
            inner: Arc::new(Mutex::new(Capped {
                buf: Vec::new(),
                cap,
                dropped: 0,
            })),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = c.cap.saturating_sub(c.buf.len());
        let kept = bytes.len().min(room);
        c.buf.extend_from_slice(&bytes[..kept]);
        c.dropped += (bytes.len() - kept) as u64;
    }

    fn take(&self) -> (Vec<u8>, u64) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = std::mem::take(&mut c.dropped);
        (std::mem::take(&mut c.buf), dropped)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Writes are accepted in full, at most this many bytes at a time.
const WRITE_PERMIT: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        CappedPipe::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        CappedPipe::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A clock stopped at the Unix epoch, for deterministic plugins.
pub(crate) struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}
