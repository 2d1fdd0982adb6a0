//! One HTTP exchange with the upstream: the request with its headers, the
//! response head within the first-byte deadline while holding an in-flight
//! slot, bodies read within the idle timeout, and non-2xx answers as errors.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Response, Uri};
use serde_json::Value;
use tokio::sync::SemaphorePermit;
use tokio::time::Instant;

use super::Upstream;
use crate::error::{UpstreamError, chain, excerpt};
use crate::timing::{Stop, Watch};
use crate::wire;

/// The part of an error body read for its message.
const ERROR_BODY_MAX: usize = 64 << 10;
/// The largest model list or non-streamed completion accepted.
pub(super) const JSON_BODY_MAX: usize = 4 << 20;

impl Upstream {
    pub(super) fn request(
        &self,
        method: Method,
        uri: &Uri,
        body: Bytes,
        accept: &'static str,
    ) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(method)
            .uri(uri.clone())
            .header(ACCEPT, accept)
            .header(USER_AGENT, concat!("deepwasm/", env!("CARGO_PKG_VERSION")));
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = &self.inner.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        request
            .body(Full::new(body))
            .expect("method, URI and headers are valid by construction")
    }

    /// `request`'s response head, holding one of the in-flight slots, by
    /// `deadline`.
    pub(super) async fn send(
        &self,
        request: Request<Full<Bytes>>,
        deadline: Instant,
        watch: &mut Watch<'_>,
    ) -> Result<(Response<Incoming>, SemaphorePermit<'_>), UpstreamError> {
        let inner = &*self.inner;
        let slot = watch
            .until(inner.slots.acquire(), deadline)
            .await
            .map_err(|stop| {
                stopped(stop, || {
                    format!(
                        "no request slot free within {:?} ({} requests to {} in flight)",
                        inner.first_byte_timeout, inner.max_in_flight, inner.base
                    )
                })
            })?;
        let slot = slot.expect("the semaphore is never closed");
        let response = watch
            .until(inner.client.request(request), deadline)
            .await
            .map_err(|stop| {
                stopped(stop, || {
                    format!(
                        "no response from {} within {:?}",
                        inner.base, inner.first_byte_timeout
                    )
                })
            })?
            .map_err(|e| UpstreamError::from_client(&e, &inner.base, inner.connect_timeout))?;
        Ok((response, slot))
    }

    /// A non-2xx answer as an error: the message from its body, the
    /// `Retry-After` header in seconds.
    pub(super) async fn status_error(
        &self,
        response: Response<Incoming>,
        watch: &mut Watch<'_>,
    ) -> UpstreamError {
        let key = self.inner.key.as_ref();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut body = response.into_body();
        let bytes = match self
            .read_all(&mut body, ERROR_BODY_MAX, true, watch, "an error body")
            .await
        {
            Ok(bytes) => bytes,
            Err(UpstreamError::Cancelled) => return UpstreamError::Cancelled,
            // The status says enough; a body that did not come is no news.
            Err(_) => Vec::new(),
        };
        let text = String::from_utf8_lossy(&bytes);
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| wire::error_message(&v).map(|m| excerpt(m, key)))
            .or_else(|| (!text.trim().is_empty()).then(|| excerpt(&text, key)))
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("no reason given")
                    .into()
            });
        UpstreamError::Status {
            status: status.as_u16(),
            message,
            retry_after,
        }
    }

    /// A whole body, each piece within the idle timeout; past `limit`, cut
    /// there (`truncate`) or refused.
    pub(super) async fn read_all(
        &self,
        body: &mut Incoming,
        limit: usize,
        truncate: bool,
        watch: &mut Watch<'_>,
        what: &str,
    ) -> Result<Vec<u8>, UpstreamError> {
        let inner = &*self.inner;
        let mut out = Vec::new();
        loop {
            let deadline = Instant::now() + inner.idle_timeout;
            let frame = watch.until(body.frame(), deadline).await.map_err(|stop| {
                stopped(stop, || {
                    format!(
                        "{what} from {} stalled for {:?}",
                        inner.base, inner.idle_timeout
                    )
                })
            })?;
            let data = match frame {
                None => return Ok(out),
                Some(Err(e)) => {
                    return Err(UpstreamError::Cut(format!(
                        "the connection to {} broke while reading {what}: {}",
                        inner.base,
                        chain(&e)
                    )));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            if out.len() + data.len() > limit {
                if truncate {
                    out.extend_from_slice(&data[..limit - out.len()]);
                    return Ok(out);
                }
                return Err(UpstreamError::Malformed(format!(
                    "{what} from {} is over {} MiB",
                    inner.base,
                    limit >> 20
                )));
            }
            out.extend_from_slice(&data);
        }
    }
}

/// A wait that ended early, as the error it is; `timeout` says what timed
/// out.
pub(super) fn stopped(stop: Stop, timeout: impl FnOnce() -> String) -> UpstreamError {
    match stop {
        Stop::Cancelled => UpstreamError::Cancelled,
        Stop::Deadline => UpstreamError::Timeout(timeout()),
    }
}
