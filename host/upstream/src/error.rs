//! How a request to the upstream fails, in the terms a caller acts on:
//! could not reach it, it said no, it said something unreadable, it stopped
//! half-way, it took too long, or the caller gave up.

use std::error::Error as StdError;
use std::time::Duration;

use crate::config::Secret;

/// Upstream-provided text kept in an error, in characters: enough for the
/// engine's sentence, short enough for a log line.
pub(crate) const EXCERPT_CHARS: usize = 200;

/// Why a request to the upstream did not give a result.
///
/// Messages never contain the API key: text the upstream sent is searched
/// for it and redacted before it is kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, reset or closed before a response, or the
    /// name did not resolve.
    #[error("the upstream is unreachable: {0}")]
    Unreachable(String),
    /// A non-2xx answer, or an error the upstream sent inside its stream
    /// (with its status when it gave one, else 502). `message` is the
    /// OpenAI error body's `error.message`, or the start of the body.
    #[error("the upstream answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// The `Retry-After` header, in seconds, when it gave one.
        retry_after: Option<u64>,
    },
    /// The answer is not HTTP, not server-sent events or not the JSON
    /// expected, with a short excerpt.
    #[error("the upstream sent a malformed response: {0}")]
    Malformed(String),
    /// The stream ended before a `finish_reason` or `[DONE]`.
    #[error("the upstream's stream was cut: {0}")]
    Cut(String),
    /// Connecting, the first byte or the next piece took too long (which,
    /// and the limit, in the message).
    #[error("the upstream timed out: {0}")]
    Timeout(String),
    /// The caller's cancel flag was set.
    #[error("the upstream request was cancelled")]
    Cancelled,
    /// A configuration this client refuses: an https URL, credentials in
    /// the URL, a model the upstream does not serve.
    #[error("unsupported upstream: {0}")]
    Unsupported(String),
}

impl UpstreamError {
    /// Whether another try may succeed, for a failure before anything was
    /// passed to the caller: the connection, a timeout, a stream that broke
    /// before its first piece, or a status that means "later" (408, 429,
    /// 500, 502, 503, 504). A request the upstream refused as such (400,
    /// 401, 403, 404, 422) fails the same way every time.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            UpstreamError::Unreachable(_) | UpstreamError::Timeout(_) | UpstreamError::Cut(_) => {
                true
            }
            UpstreamError::Status { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            UpstreamError::Malformed(_)
            | UpstreamError::Cancelled
            | UpstreamError::Unsupported(_) => false,
        }
    }

    /// `self` with every occurrence of `key` in its text replaced.
    pub(crate) fn redacted(self, key: Option<&Secret>) -> UpstreamError {
        let Some(key) = key else { return self };
        let r = |s: String| redact(&s, Some(key));
        match self {
            UpstreamError::Unreachable(m) => UpstreamError::Unreachable(r(m)),
            UpstreamError::Status {
                status,
                message,
                retry_after,
            } => UpstreamError::Status {
                status,
                message: r(message),
                retry_after,
            },
            UpstreamError::Malformed(m) => UpstreamError::Malformed(r(m)),
            UpstreamError::Cut(m) => UpstreamError::Cut(r(m)),
            UpstreamError::Timeout(m) => UpstreamError::Timeout(r(m)),
            UpstreamError::Cancelled => UpstreamError::Cancelled,
            UpstreamError::Unsupported(m) => UpstreamError::Unsupported(r(m)),
        }
    }

    /// A failure of the pooled client before the response head: connecting,
    /// writing the request or reading the head.
    pub(crate) fn from_client(
        e: &hyper_util::client::legacy::Error,
        base: &str,
        connect_timeout: Duration,
    ) -> UpstreamError {
        // The legacy client's own layer only names its stage ("client error
        // (Connect)"); the causes under it say what happened.
        let chain = chain(e.source().unwrap_or(e));
        let io_kind = sources(e)
            .find_map(|s| s.downcast_ref::<std::io::Error>())
            .map(|io| io.kind());
        if e.is_connect() {
            if io_kind == Some(std::io::ErrorKind::TimedOut) {
                return UpstreamError::Timeout(format!(
                    "connecting to {base} took longer than {connect_timeout:?}"
                ));
            }
            return UpstreamError::Unreachable(format!("cannot connect to {base}: {chain}"));
        }
        match sources(e).find_map(|s| s.downcast_ref::<hyper::Error>()) {
            Some(h) if h.is_parse() || h.is_parse_status() => {
                UpstreamError::Malformed(format!("{base} did not answer in HTTP/1.1 ({h})"))
            }
            _ => UpstreamError::Unreachable(format!(
                "the connection to {base} failed before a response: {chain}"
            )),
        }
    }
}

/// `text` with every occurrence of the key replaced by `[redacted]`.
pub(crate) fn redact(text: &str, key: Option<&Secret>) -> String {
    match key.map(Secret::expose) {
        Some(k) if !k.is_empty() && text.contains(k) => text.replace(k, "[redacted]"),
        _ => text.to_string(),
    }
}

/// Upstream-provided `text` fit for an error: the key redacted first (so a
/// cut cannot leave part of it), control characters as spaces, at most
/// [`EXCERPT_CHARS`] characters.
pub(crate) fn excerpt(text: &str, key: Option<&Secret>) -> String {
    let text = redact(text.trim(), key);
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn sources<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&e| e.source())
}

/// `e` and its causes, `: `-separated.
pub(crate) fn chain(e: &(dyn StdError + 'static)) -> String {
    sources(e)
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_redact_before_cutting() {
        let key = Secret::new("sk-abcdef".into());
        let text = format!("{}sk-abcdef tail", "x".repeat(EXCERPT_CHARS - 3));
        let e = excerpt(&text, Some(&key));
        assert!(!e.contains("sk-"), "{e}");
        assert!(e.ends_with('…'));
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(excerpt("a\nb\tc", None), "a b c");
    }

    #[test]
    fn redacted_covers_every_message() {
        let key = Secret::new("k3y".into());
        let e = UpstreamError::Status {
            status: 401,
            message: "bad key k3y".into(),
            retry_after: None,
        }
        .redacted(Some(&key));
        assert_eq!(
            e.to_string(),
            "the upstream answered 401: bad key [redacted]"
        );
        let e = UpstreamError::Malformed("k3y".into()).redacted(Some(&key));
        assert!(!format!("{e:?}").contains("k3y"));
    }

    #[test]
    fn only_transient_failures_retry() {
        let status = |status| UpstreamError::Status {
            status,
            message: String::new(),
            retry_after: None,
        };
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status(s).retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422, 501] {
            assert!(!status(s).retryable(), "{s}");
        }
        assert!(UpstreamError::Cut(String::new()).retryable());
        assert!(!UpstreamError::Malformed(String::new()).retryable());
        assert!(!UpstreamError::Cancelled.retryable());
    }
}
