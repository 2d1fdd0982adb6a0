//! What the client is told: where the upstream is, its key, and the limits
//! every request to it runs under.

use std::fmt;
use std::time::Duration;

use crate::error::UpstreamError;

/// Where the upstream engine is and how long to wait for it.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The engine's base URL, `http://host:port`, optionally with a path
    /// prefix; a trailing `/v1` or `/` is accepted and dropped.
    pub url: String,
    /// Sent as `Authorization: Bearer <key>`, and nowhere else.
    pub api_key: Option<Secret>,
    /// The upstream's name for the model (its `"model"` field); `None`: the
    /// first id `GET /v1/models` lists, asked once and kept.
    pub model: Option<String>,
    /// Until the TCP connection is up.
    pub connect_timeout: Duration,
    /// From the request until the first event of its stream (or the whole
    /// response head of a non-streamed answer), waiting for a free request
    /// slot included.
    pub first_byte_timeout: Duration,
    /// Between two pieces of a stream once it has started.
    pub idle_timeout: Duration,
    /// Tries after the first, made only while nothing has been streamed
    /// to the caller.
    pub retries: u32,
    /// Requests this client has at the upstream at once; more wait, and the
    /// wait counts toward `first_byte_timeout`.
    pub max_in_flight: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: String::new(),
            api_key: None,
            model: None,
            // An engine on the same network accepts in milliseconds; 5 s
            // rides out a full accept queue without hiding a dead host.
            connect_timeout: Duration::from_secs(5),
            // The first event waits for the prompt's prefill and for a free
            // slot in the engine's batch: a long prompt on a loaded
            // DeepSeek-V3 deployment takes tens of seconds.
            first_byte_timeout: Duration::from_secs(120),
            // Between two events the engine decodes one step; a minute
            // without one is a stuck engine, not a slow one.
            idle_timeout: Duration::from_secs(60),
            // Two more tries cover a rolling restart or a one-off 503
            // without tripling the wait on an upstream that is down.
            retries: 2,
            // vLLM's and SGLang's default batches hold 256 sequences and
            // more; requests beyond the engine's batch only queue there.
            max_in_flight: 256,
        }
    }
}

/// A credential: its `Debug` and `Display` print `[redacted]`, so it can sit
/// in configs and errors that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `url` as the base every endpoint is appended to: `http://authority` plus
/// the path prefix, without `/v1` or a trailing `/`.
///
/// Refuses what this client cannot or must not use: `https` (there is no
/// TLS here), credentials in the URL (they would end up in logs), a query
/// or fragment. The messages never repeat the URL, which may hold a secret.
pub(crate) fn base_url(url: &str) -> Result<String, UpstreamError> {
    let url = url.trim();
    let shape = "expected http://host:port, optionally with a path prefix";
    if url.is_empty() {
        return Err(UpstreamError::Unsupported(format!(
            "no upstream URL given: {shape}"
        )));
    }
    let scheme_end = url.find("://");
    let scheme = scheme_end.map(|i| url[..i].to_ascii_lowercase());
    let rest = match (scheme.as_deref(), scheme_end) {
        (Some("http"), Some(i)) => &url[i + 3..],
        (Some("https"), _) => {
            return Err(UpstreamError::Unsupported(
                "https upstreams are not supported: this client speaks plain HTTP only; reach \
                 a TLS endpoint through a TLS-terminating proxy on this host or a private \
                 network, and give its http:// URL"
                    .into(),
            ));
        }
        _ => {
            return Err(UpstreamError::Unsupported(format!(
                "the upstream URL must use http://: {shape}"
            )));
        }
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(UpstreamError::Unsupported(
            "the upstream URL carries credentials (user:password@); leave them out and pass \
             the key through the environment variable --upstream-key-env names"
                .into(),
        ));
    }
    if authority.is_empty() {
        return Err(UpstreamError::Unsupported(format!(
            "the upstream URL has no host: {shape}"
        )));
    }
    if rest.contains(['?', '#']) {
        return Err(UpstreamError::Unsupported(format!(
            "the upstream URL has a query or fragment: {shape}"
        )));
    }
    let mut path = path.trim_end_matches('/');
    if path == "v1" {
        path = "";
    } else if let Some(prefix) = path.strip_suffix("/v1") {
        path = prefix.trim_end_matches('/');
    }
    let base = if path.is_empty() {
        format!("http://{authority}")
    } else {
        format!("http://{authority}/{path}")
    };
    // After an IPv6 literal's `]`, a `:` starts the port, which must be a
    // number (the URI parser alone lets `host:abc` through).
    let has_port = authority
        .rsplit(']')
        .next()
        .is_some_and(|a| a.contains(':'));
    let valid = format!("{base}/v1/models")
        .parse::<hyper::Uri>()
        .is_ok_and(|u| {
            u.host().is_some_and(|h| !h.is_empty()) && (!has_port || u.port_u16().is_some())
        });
    if !valid {
        return Err(UpstreamError::Unsupported(format!(
            "the upstream URL is not a valid URL: {shape}"
        )));
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_drop_v1_and_trailing_slashes() {
        for (url, base) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
            ("  HTTP://gpu-0:8000/v1/ ", "http://gpu-0:8000"),
            ("http://[::1]:9000/proxy/v1", "http://[::1]:9000/proxy"),
            ("http://lb/team/", "http://lb/team"),
            ("http://lb/v1x", "http://lb/v1x"),
        ] {
            assert_eq!(base_url(url).unwrap(), base, "{url}");
        }
    }

    #[test]
    fn refused_urls_do_not_echo_themselves() {
        for url in [
            "",
            "https://api.example.com",
            "HTTPS://api.example.com/v1",
            "ftp://host",
            "host:8080",
            "http://alice:hunter2@host:8080",
            "http://token@host",
            "http:///v1",
            "http://host/v1?key=hunter2",
            "http://host:notaport",
        ] {
            let err = base_url(url).unwrap_err();
            assert!(
                matches!(err, UpstreamError::Unsupported(_)),
                "{url}: {err:?}"
            );
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn secrets_print_redacted() {
        let s = Secret::new("sk-live-1".into());
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        let config = UpstreamConfig {
            api_key: Some(s.clone()),
            ..UpstreamConfig::default()
        };
        assert!(!format!("{config:?}").contains("sk-live-1"));
        assert_eq!(s.expose(), "sk-live-1");
    }
}
