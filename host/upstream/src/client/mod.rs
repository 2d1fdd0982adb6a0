//! [`Upstream`]: pooled HTTP/1.1 connections to one engine, on a runtime of
//! the client's own, and the loop of tries around each request.

mod http;
mod stream;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Method, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioTimer;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use self::http::JSON_BODY_MAX;
use crate::config::{Secret, UpstreamConfig, base_url};
use crate::error::UpstreamError;
use crate::models::{self, Served};
use crate::timing::{Watch, XorShift, pause_after};
use crate::wire::{self, Chunk, CompletionRequest, Finished};

/// Worker threads of the client's runtime: they only move bytes and parse
/// JSON for requests whose cost is at the upstream.
const WORKER_THREADS: usize = 2;
/// How long an idle pooled connection is kept. uvicorn (vLLM, SGLang) and
/// llama-server close idle keep-alive connections after 5 s; letting go
/// first keeps requests off connections the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);
/// TCP keep-alive probes on every connection, so that a pooled connection
/// to a host that vanished is found dead.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// A client for one upstream engine. Cheap to clone: clones share the
/// connection pool, the in-flight limit and the runtime.
///
/// It owns a Tokio runtime ([`Upstream::handle`]) on which its connections
/// live; await [`Upstream::complete`] and [`Upstream::probe`] on a Tokio
/// runtime with timers, normally by spawning them on that handle, or call
/// the `_blocking` forms from a thread outside any runtime.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    models_uri: Uri,
    completions_uri: Uri,
    /// `Bearer <key>`, marked sensitive.
    auth: Option<HeaderValue>,
    key: Option<Secret>,
    model: Option<String>,
    /// The first model the upstream lists, when none is configured.
    resolved: OnceCell<String>,
    /// What the first successful probe found.
    served: std::sync::OnceLock<Served>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    retries: u32,
    max_in_flight: usize,
    slots: Semaphore,
    client: Client<HttpConnector, Full<Bytes>>,
    /// `Some` until dropped.
    runtime: Option<Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last clone may be dropped inside a task on this very runtime,
        // where a blocking shutdown would panic: stop it without waiting.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.inner.base)
            .field("model", &self.inner.model)
            .field("api_key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

/// Runs hyper's connection tasks on the client's runtime, whichever runtime
/// a request was awaited on.
#[derive(Clone)]
struct OnRuntime(Handle);

impl<F> hyper::rt::Executor<F> for OnRuntime
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}
impl Upstream {
    /// A client for `config.url`, checked but not contacted (see
    /// [`Upstream::probe`]). Refuses `https://` URLs, credentials in the
    /// URL, zero timeouts, a zero in-flight limit and a key that cannot be
    /// sent in a header.
    pub fn new(config: UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let base = base_url(&config.url)?;
        for (name, value) in [
            ("connect_timeout", config.connect_timeout),
            ("first_byte_timeout", config.first_byte_timeout),
            ("idle_timeout", config.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(UpstreamError::Unsupported(format!(
                    "the upstream's {name} must be above zero"
                )));
            }
        }
        if config.max_in_flight == 0 {
            return Err(UpstreamError::Unsupported(
                "the upstream's max_in_flight must be at least 1".into(),
            ));
        }
        let auth = match &config.api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .ok()
                    .filter(|_| !key.expose().is_empty())
                    .ok_or_else(|| {
                        UpstreamError::Unsupported(
                            "the upstream key is empty or has characters an HTTP header \
                             cannot carry"
                                .into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let uri = |path: &str| {
            format!("{base}{path}")
                .parse::<Uri>()
                .expect("base_url checked the base")
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("deepwasm-upstream")
            .enable_all()
            .build()
            .map_err(|e| {
                UpstreamError::Unsupported(format!(
                    "cannot start the upstream client's threads: {e}"
                ))
            })?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(TCP_KEEPALIVE));
        let client = Client::builder(OnRuntime(runtime.handle().clone()))
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(config.max_in_flight)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            inner: Arc::new(Inner {
                models_uri: uri("/v1/models"),
                completions_uri: uri("/v1/completions"),
                base,
                auth,
                key: config.api_key,
                model: config.model,
                resolved: OnceCell::new(),
                served: std::sync::OnceLock::new(),
                connect_timeout: config.connect_timeout,
                first_byte_timeout: config.first_byte_timeout,
                idle_timeout: config.idle_timeout,
                retries: config.retries,
                max_in_flight: config.max_in_flight,
                slots: Semaphore::new(config.max_in_flight.min(Semaphore::MAX_PERMITS)),
                client,
                runtime: Some(runtime),
            }),
        })
    }

    /// The client's runtime, for spawning request tasks on.
    pub fn handle(&self) -> Handle {
        self.runtime().handle().clone()
    }

    /// The normalised base URL (never a key), for logs.
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    fn runtime(&self) -> &Runtime {
        self.inner.runtime.as_ref().expect("present until dropped")
    }

    /// What the upstream serves (`GET /v1/models`): the configured model's
    /// entry, or the first one listed; an error naming the served models
    /// when the configured one is not among them. Retried like a
    /// completion.
    pub async fn probe(&self) -> Result<Served, UpstreamError> {
        let never = AtomicBool::new(false);
        let mut watch = Watch::new(&never);
        let served = self.probe_with(&mut watch).await?;
        if self.inner.model.is_none() {
            // Already set by an earlier probe or completion: the same list.
            let _ = self.inner.resolved.set(served.model.clone());
        }
        let _ = self.inner.served.set(served.clone());
        Ok(served)
    }

    /// What the first successful [`Upstream::probe`] found, if one ran:
    /// its `owned_by` tells which engine this is (llama-server says
    /// `llamacpp`).
    pub fn served(&self) -> Option<&Served> {
        self.inner.served.get()
    }

    /// [`Upstream::probe`] on the client's runtime, for callers outside any
    /// runtime.
    ///
    /// # Panics
    /// When called from inside a Tokio runtime (this client's or another).
    pub fn probe_blocking(&self) -> Result<Served, UpstreamError> {
        self.runtime().block_on(self.probe())
    }

    /// Streams one completion: `on_chunk` gets each event's text (and ids)
    /// in order, events with neither skipped.
    ///
    /// A failure before the first chunk is tried again (up to `retries`
    /// more times) when it may pass: no connection, a timeout, a stream
    /// broken before its first piece, 408/429/5xx (waiting the upstream's
    /// `Retry-After`, at most 10 s, or 200 ms doubling to 2 s with jitter).
    /// After a chunk, the failure is returned: the caller already has part
    /// of the text. Setting `cancelled` ends the request within 250 ms with
    /// [`UpstreamError::Cancelled`], closing its connection.
    pub async fn complete(
        &self,
        req: &CompletionRequest,
        on_chunk: &mut (dyn FnMut(Chunk) + Send),
        cancelled: &AtomicBool,
    ) -> Result<Finished, UpstreamError> {
        let key = self.inner.key.as_ref();
        let mut watch = Watch::new(cancelled);
        let model = self.model(&mut watch).await?;
        let body = Bytes::from(wire::request_body(req, &model));
        let mut rng = XorShift::from_clock();
        let mut tries = 0;
        loop {
            tries += 1;
            let mut delivered = false;
            match self
                .stream_once(&body, &mut *on_chunk, &mut delivered, &mut watch)
                .await
            {
                Ok(finished) => {
                    return Ok(Finished {
                        attempts: tries,
                        ..finished
                    });
                }
                Err(e) if delivered => return Err(e.redacted(key)),
                Err(e) => self.before_retry(e, tries, &mut rng, &mut watch).await?,
            }
        }
    }

    /// [`Upstream::complete`] on the client's runtime, for a thread outside
    /// any runtime (an engine's worker thread).
    ///
    /// # Panics
    /// When called from inside a Tokio runtime (this client's or another):
    /// await [`Upstream::complete`] there instead.
    pub fn complete_blocking(
        &self,
        req: &CompletionRequest,
        on_chunk: &mut (dyn FnMut(Chunk) + Send),
        cancelled: &AtomicBool,
    ) -> Result<Finished, UpstreamError> {
        self.runtime()
            .block_on(self.complete(req, on_chunk, cancelled))
    }

    /// The model name to send: the configured one, else the first the
    /// upstream lists (asked once).
    async fn model(&self, watch: &mut Watch<'_>) -> Result<String, UpstreamError> {
        if let Some(model) = &self.inner.model {
            return Ok(model.clone());
        }
        let model = self
            .inner
            .resolved
            .get_or_try_init(|| async { Ok(self.probe_with(watch).await?.model) })
            .await?;
        Ok(model.clone())
    }

    async fn probe_with(&self, watch: &mut Watch<'_>) -> Result<Served, UpstreamError> {
        let mut rng = XorShift::from_clock();
        let mut tries = 0;
        loop {
            tries += 1;
            let served = match self.models_once(watch).await {
                Ok(body) => {
                    models::served(&body, self.inner.model.as_deref(), self.inner.key.as_ref())
                }
                Err(e) => Err(e),
            };
            match served {
                Ok(served) => return Ok(served),
                Err(e) => self.before_retry(e, tries, &mut rng, watch).await?,
            }
        }
    }

    /// After try number `tries` failed with `e` and nothing was passed on:
    /// `Err(e)` when it is not to be tried again, else the pause before the
    /// next try.
    async fn before_retry(
        &self,
        e: UpstreamError,
        tries: u32,
        rng: &mut XorShift,
        watch: &mut Watch<'_>,
    ) -> Result<(), UpstreamError> {
        let e = e.redacted(self.inner.key.as_ref());
        if tries > self.inner.retries || !e.retryable() {
            return Err(e);
        }
        let pause = pause_after(&e, tries, rng);
        tracing::warn!(
            upstream = %self.inner.base,
            tries,
            ?pause,
            error = %e,
            "upstream request failed; trying again"
        );
        watch.pause(pause).await
    }

    async fn models_once(&self, watch: &mut Watch<'_>) -> Result<Vec<u8>, UpstreamError> {
        let deadline = Instant::now() + self.inner.first_byte_timeout;
        let request = self.request(
            Method::GET,
            &self.inner.models_uri,
            Bytes::new(),
            "application/json",
        );
        let (response, _slot) = self.send(request, deadline, watch).await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, watch).await);
        }
        let mut body = response.into_body();
        self.read_all(&mut body, JSON_BODY_MAX, false, watch, "the model list")
            .await
    }
}
