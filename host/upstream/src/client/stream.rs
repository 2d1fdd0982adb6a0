//! Reading one completion: its server-sent events as they arrive, each
//! chunk passed on at once, until `[DONE]`, a cut, a stall or a cancel.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use serde_json::Value;
use tokio::time::Instant;

use super::Upstream;
use super::http::{JSON_BODY_MAX, stopped};
use crate::error::{UpstreamError, chain, excerpt};
use crate::sse::{MAX_EVENT_BYTES, SseEvent, SseFault, SseParser};
use crate::timing::Watch;
use crate::wire::{self, Chunk, Finished, Usage};

/// After `[DONE]`, how long the end of the body is waited for: it normally
/// comes in the same packet, and reading it returns the connection to the
/// pool; an upstream that keeps the stream open is not waited on.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(100);

/// What a stream has said so far.
#[derive(Default)]
struct StreamState {
    events: usize,
    done: bool,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Upstream {
    /// One try of a completion: its events read as they come, chunks
    /// passed on (and `delivered` set) as they are read.
    pub(super) async fn stream_once(
        &self,
        request_body: &Bytes,
        on_chunk: &mut (dyn FnMut(Chunk) + Send),
        delivered: &mut bool,
        watch: &mut Watch<'_>,
    ) -> Result<Finished, UpstreamError> {
        let inner = &*self.inner;
        let first_deadline = Instant::now() + inner.first_byte_timeout;
        let request = self.request(
            Method::POST,
            &inner.completions_uri,
            request_body.clone(),
            "text/event-stream",
        );
        let (response, _slot) = self.send(request, first_deadline, watch).await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, watch).await);
        }
        // An upstream (or a proxy) that ignored `"stream": true` answers
        // with the whole completion as one JSON object.
        let whole = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let mut body = response.into_body();
        let mut stream = StreamState::default();
        if whole {
            let bytes = self
                .read_all(&mut body, JSON_BODY_MAX, false, watch, "the completion")
                .await?;
            let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
                UpstreamError::Malformed(format!(
                    "the completion is not JSON: `{}`",
                    excerpt(&String::from_utf8_lossy(&bytes), inner.key.as_ref())
                ))
            })?;
            self.take_json(&value, &mut stream, on_chunk, delivered)?;
            stream.done = true;
        } else {
            self.read_stream(
                &mut body,
                first_deadline,
                &mut stream,
                on_chunk,
                delivered,
                watch,
            )
            .await?;
        }
        if !stream.done && stream.finish_reason.is_none() {
            return Err(UpstreamError::Cut(format!(
                "the stream from {} ended after {} without a finish_reason or [DONE]",
                inner.base,
                count_events(stream.events)
            )));
        }
        Ok(Finished {
            finish_reason: stream.finish_reason,
            usage: stream.usage,
            attempts: 0,
        })
    }

    async fn read_stream(
        &self,
        body: &mut Incoming,
        first_deadline: Instant,
        stream: &mut StreamState,
        on_chunk: &mut (dyn FnMut(Chunk) + Send),
        delivered: &mut bool,
        watch: &mut Watch<'_>,
    ) -> Result<(), UpstreamError> {
        let inner = &*self.inner;
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let mut deadline = first_deadline;
        while !stream.done {
            let started = stream.events > 0;
            let frame = watch.until(body.frame(), deadline).await.map_err(|stop| {
                stopped(stop, || match started {
                    false => format!(
                        "no event from {} within {:?} of the request",
                        inner.base, inner.first_byte_timeout
                    ),
                    true => format!(
                        "the stream from {} stalled for {:?}",
                        inner.base, inner.idle_timeout
                    ),
                })
            })?;
            match frame {
                None => {
                    parser.finish(&mut events).map_err(|f| self.fault(f))?;
                    for event in events.drain(..) {
                        self.take(event, stream, on_chunk, delivered)?;
                    }
                    return Ok(());
                }
                Some(Err(e)) => {
                    return Err(UpstreamError::Cut(format!(
                        "the connection to {} broke after {}: {}",
                        inner.base,
                        count_events(stream.events),
                        chain(&e)
                    )));
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    parser.push(&data, &mut events).map_err(|f| self.fault(f))?;
                }
            }
            for event in events.drain(..) {
                self.take(event, stream, on_chunk, delivered)?;
                if stream.done {
                    break;
                }
            }
            if watch.is_cancelled() {
                return Err(UpstreamError::Cancelled);
            }
            if stream.events > 0 {
                deadline = Instant::now() + inner.idle_timeout;
            }
        }
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(DRAIN_AFTER_DONE, drain).await;
        Ok(())
    }

    /// One event: `[DONE]`, a JSON event, or an error the upstream sent.
    fn take(
        &self,
        event: SseEvent,
        stream: &mut StreamState,
        on_chunk: &mut (dyn FnMut(Chunk) + Send),
        delivered: &mut bool,
    ) -> Result<(), UpstreamError> {
        let key = self.inner.key.as_ref();
        match event {
            SseEvent::Data(data) if data.trim() == "[DONE]" => {
                stream.done = true;
                Ok(())
            }
            SseEvent::Data(data) => {
                let value: Value = serde_json::from_str(&data).map_err(|_| {
                    UpstreamError::Malformed(format!(
                        "an event's data is not JSON: `{}`",
                        excerpt(&data, key)
                    ))
                })?;
                self.take_json(&value, stream, on_chunk, delivered)
            }
            SseEvent::Error(error) => Err(match serde_json::from_str::<Value>(&error) {
                Ok(value) => wire::error_payload(&value, key),
                Err(_) => UpstreamError::Status {
                    status: 502,
                    message: excerpt(&error, key),
                    retry_after: None,
                },
            }),
        }
    }

    fn take_json(
        &self,
        value: &Value,
        stream: &mut StreamState,
        on_chunk: &mut (dyn FnMut(Chunk) + Send),
        delivered: &mut bool,
    ) -> Result<(), UpstreamError> {
        let parts = wire::read_event(value, self.inner.key.as_ref())?;
        stream.events += 1;
        if parts.finish_reason.is_some() {
            stream.finish_reason = parts.finish_reason;
        }
        if parts.usage.is_some() {
            stream.usage = parts.usage;
        }
        if let Some(chunk) = parts.chunk {
            *delivered = true;
            on_chunk(chunk);
        }
        Ok(())
    }

    fn fault(&self, fault: SseFault) -> UpstreamError {
        UpstreamError::Malformed(match fault {
            SseFault::TooLarge => format!(
                "an event from {} is over {} MiB",
                self.inner.base,
                MAX_EVENT_BYTES >> 20
            ),
            SseFault::NotUtf8 => format!("the stream from {} is not UTF-8", self.inner.base),
            SseFault::NotSse(line) => format!(
                "not a server-sent event: `{}`",
                excerpt(&line, self.inner.key.as_ref())
            ),
        })
    }
}

fn count_events(n: usize) -> String {
    match n {
        1 => "1 event".into(),
        n => format!("{n} events"),
    }
}
