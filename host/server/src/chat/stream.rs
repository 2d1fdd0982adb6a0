//! Streamed answers: one loop sends a plan's events as Server-Sent Events,
//! and a [`ChunkFormat`] per endpoint says what each event shows.
//!
//! Every chunk carries one choice (the closing usage chunk none), then
//! `[DONE]`. The first failure of any sequence ends the stream with the
//! error's body in place of a chunk. A client that goes away ends the
//! loop, which drops its sequences from the batch (`CancelOnDrop`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deepwasm_engine::{Completion, Delta, Event};
use serde::Serialize;
use tokio::sync::mpsc;

use super::CancelOnDrop;
use super::plan::Plan;
use super::response::{
    ChatChunkChoice, ChatDelta, ChatLogprobs, ChunkObject, FunctionObject, TextChoice, Usage,
    chat_logprobs, finish_reason, now_secs, text_logprobs, tool_calls,
};
use crate::AppState;
use crate::error::ApiError;
use crate::output::{ChoiceOutput, Part, Split};
use crate::tenants::{Admission, Tenant};

/// How often a stream with nothing to send writes an SSE comment. The
/// server learns that a client went away only when a write to it fails, so
/// this is what lets a request whose prompt is still being prefilled (no
/// tokens yet) leave the batch within about a second of its client.
const STREAM_KEEP_ALIVE: Duration = Duration::from_millis(500);

/// What one endpoint's stream shows of each choice's events.
pub(super) trait ChunkFormat: Send + 'static {
    type Choice: Serialize + Send;

    /// The `object` of every chunk.
    const OBJECT: &'static str;

    /// Sent for choice `index` before any event.
    fn open(&mut self, index: usize) -> Option<Self::Choice>;

    /// The choices that show new text `d` of choice `index`.
    fn delta(&mut self, st: &AppState, index: usize, d: &Delta) -> Vec<Self::Choice>;

    /// The choices that end choice `index`, finished as `c`.
    fn done(&mut self, index: usize, c: &Completion) -> Vec<Self::Choice>;
}

/// Chat chunks: each choice opens with the assistant's role, its text is
/// split into content, reasoning and tool calls as it arrives, and its
/// log-probabilities ride on the first chunk of each delta.
pub(super) struct ChatChunks {
    split: Split,
    id: String,
    logprobs: bool,
    outputs: HashMap<usize, ChoiceOutput>,
    /// Tool calls sent so far, per choice: the next one's `index`.
    calls_sent: HashMap<usize, usize>,
}

impl ChatChunks {
    /// The chunks of response `id`; `logprobs` when the client asked.
    pub(super) fn new(split: Split, id: &str, logprobs: bool) -> Self {
        ChatChunks {
            split,
            id: id.to_owned(),
            logprobs,
            outputs: HashMap::new(),
            calls_sent: HashMap::new(),
        }
    }

    fn output(&mut self, index: usize) -> &mut ChoiceOutput {
        let (split, id) = (self.split, &self.id);
        self.outputs
            .entry(index)
            .or_insert_with(|| ChoiceOutput::new(split, id, index))
    }
}

/// The chunk choices of some output parts of choice `index`; `logprobs`
/// go with the first. `calls_sent`: the choice's tool calls sent before
/// these (each call's `index` counts on from it, as clients that assemble
/// several calls from a stream key on it).
fn parts_chunks(
    split: Split,
    index: usize,
    parts: Vec<Part>,
    logprobs: Option<ChatLogprobs>,
    calls_sent: &mut usize,
) -> Vec<ChatChunkChoice> {
    let mut chunks = Vec::new();
    let mut logprobs = logprobs;
    for part in parts {
        let delta = match part {
            Part::Content(t) => ChatDelta {
                content: Some(t),
                ..ChatDelta::default()
            },
            Part::Reasoning(t) => ChatDelta {
                reasoning_content: Some(t),
                ..ChatDelta::default()
            },
            Part::ToolCall(c) if split.legacy_functions => ChatDelta {
                function_call: Some(FunctionObject::of(&c)),
                ..ChatDelta::default()
            },
            Part::ToolCall(c) => {
                let mut calls = tool_calls(std::slice::from_ref(&c));
                for call in &mut calls {
                    call.index = *calls_sent;
                    *calls_sent += 1;
                }
                ChatDelta {
                    tool_calls: Some(calls),
                    ..ChatDelta::default()
                }
            }
        };
        chunks.push(ChatChunkChoice {
            index,
            delta,
            logprobs: logprobs.take(),
            finish_reason: None,
        });
    }
    // Tokens that produced no visible text yet still carry their logprobs.
    if let Some(lp) = logprobs
        && !lp.content.is_empty()
    {
        chunks.push(ChatChunkChoice {
            index,
            delta: ChatDelta::default(),
            logprobs: Some(lp),
            finish_reason: None,
        });
    }
    chunks
}

impl ChunkFormat for ChatChunks {
    type Choice = ChatChunkChoice;
    const OBJECT: &'static str = "chat.completion.chunk";

    fn open(&mut self, index: usize) -> Option<ChatChunkChoice> {
        Some(ChatChunkChoice {
            index,
            delta: ChatDelta {
                role: Some("assistant"),
                content: Some(String::new()),
                ..ChatDelta::default()
            },
            logprobs: None,
            finish_reason: None,
        })
    }

    fn delta(&mut self, st: &AppState, index: usize, d: &Delta) -> Vec<ChatChunkChoice> {
        let parts = self.output(index).push(&d.text);
        let logprobs = self
            .logprobs
            .then(|| chat_logprobs(st, &d.logprobs, &d.tokens));
        parts_chunks(
            self.split,
            index,
            parts,
            logprobs,
            self.calls_sent.entry(index).or_default(),
        )
    }

    fn done(&mut self, index: usize, c: &Completion) -> Vec<ChatChunkChoice> {
        let out = self.output(index);
        let parts = out.finish(c.finish_reason == deepwasm_engine::FinishReason::Length);
        let reason = finish_reason(c, !out.tool_calls.is_empty(), self.split.legacy_functions);
        let mut chunks = parts_chunks(
            self.split,
            index,
            parts,
            None,
            self.calls_sent.entry(index).or_default(),
        );
        chunks.push(ChatChunkChoice {
            index,
            delta: ChatDelta::default(),
            logprobs: None,
            finish_reason: Some(reason),
        });
        chunks
    }
}

/// Legacy completion chunks: each delta's text as it comes, with its
/// tokens' log-probabilities offset by the choice's text so far.
pub(super) struct TextChunks {
    logprobs: bool,
    /// Tokens written `token_id:<id>` (`return_tokens_as_token_ids`).
    token_ids: bool,
    /// Per choice, the bytes of text sent so far (counted only when
    /// log-probabilities are).
    offsets: HashMap<usize, usize>,
}

impl TextChunks {
    pub(super) fn new(logprobs: bool, token_ids: bool) -> Self {
        TextChunks {
            logprobs,
            token_ids,
            offsets: HashMap::new(),
        }
    }
}

impl ChunkFormat for TextChunks {
    type Choice = TextChoice;
    const OBJECT: &'static str = "text_completion";

    fn open(&mut self, _index: usize) -> Option<TextChoice> {
        None
    }

    fn delta(&mut self, st: &AppState, index: usize, d: &Delta) -> Vec<TextChoice> {
        let logprobs = self.logprobs.then(|| {
            let offset = self.offsets.entry(index).or_default();
            let lps = text_logprobs(st, &d.tokens, &d.logprobs, *offset);
            *offset += d.text.len();
            match self.token_ids {
                true => lps.with_token_ids(d.tokens.iter().copied()),
                false => lps,
            }
        });
        vec![TextChoice {
            index,
            text: d.text.clone(),
            logprobs,
            finish_reason: None,
            reward: None,
        }]
    }

    fn done(&mut self, index: usize, c: &Completion) -> Vec<TextChoice> {
        vec![TextChoice {
            index,
            text: String::new(),
            logprobs: None,
            finish_reason: Some(finish_reason(c, false, false)),
            reward: None,
        }]
    }
}

/// One SSE event of `data` as compact JSON.
fn sse(data: &impl Serialize) -> SseEvent {
    // Every key of the response types is a string and no field can fail:
    // serializing them cannot fail.
    let json = serde_json::to_string(data).expect("response types always serialize");
    SseEvent::default().data(json)
}

/// Stream `plan`'s sequences (already warmed up) as response `id`, shown
/// by `format`. The request's `admission` is held until the stream ends.
pub(super) fn respond<F: ChunkFormat>(
    st: Arc<AppState>,
    tenant: Arc<Tenant>,
    admission: Admission,
    plan: Plan,
    id: String,
    mut format: F,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut rx = plan.submit(&st, &cancelled)?;
    let (tx, out_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let created = now_secs();
    let started = Instant::now();
    tokio::spawn(async move {
        let _admission = admission;
        let _guard = CancelOnDrop(cancelled);
        let model = st.model_id();
        let chunk = |choices: &[F::Choice], usage: Option<Usage>| {
            sse(&ChunkObject {
                id: &id,
                object: F::OBJECT,
                created,
                model,
                system_fingerprint: None,
                choices,
                usage: include_usage.then_some(usage),
            })
        };
        let total = plan.total();
        for i in 0..total {
            if let Some(open) = format.open(i)
                && tx.send(Ok(chunk(&[open], None))).await.is_err()
            {
                return;
            }
        }
        let mut completion_tokens = 0usize;
        let mut left = total;
        let mut first_token = true;
        while left > 0 {
            // A client that went away is noticed here even while nothing
            // is generated (a prompt being prefilled): its request leaves
            // the batch at once, not at its first token.
            let event = tokio::select! {
                event = rx.recv() => event,
                () = tx.closed() => return,
            };
            let Some(event) = event else {
                let e = ApiError::internal("generation stopped before the request was done");
                let _ = tx.send(Ok(sse(&e.body()))).await;
                return;
            };
            let choices = match event {
                Event::Delta(i, d) => {
                    if first_token && !d.tokens.is_empty() {
                        first_token = false;
                        st.metrics.first_token(&tenant.name, started.elapsed());
                    }
                    format.delta(&st, i, &d)
                }
                Event::Done(_, Err(e)) => {
                    let e = ApiError::from(e);
                    let _ = tx.send(Ok(sse(&e.body()))).await;
                    return;
                }
                Event::Done(i, Ok(c)) => {
                    left -= 1;
                    completion_tokens += c.usage.completion_tokens;
                    format.done(i, &c)
                }
            };
            for c in choices {
                if tx.send(Ok(chunk(&[c], None))).await.is_err() {
                    return;
                }
            }
        }
        // A streamed request has one prompt.
        let prompt_tokens = plan.prompts[0].ids.len();
        tenant.record_tokens(prompt_tokens as u64, completion_tokens as u64);
        if include_usage {
            let usage = Usage::new(prompt_tokens, completion_tokens);
            let _ = tx.send(Ok(chunk(&[], Some(usage)))).await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(STREAM_KEEP_ALIVE))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deepwasm_model::ToolCall;

    /// Several calls in one choice's stream count on from 0 across chunks,
    /// so a client assembling them by `index` keeps them apart.
    #[test]
    fn streamed_tool_calls_are_indexed_in_order() {
        let call = |i: u32| Part::ToolCall(ToolCall::new(format!("call_{i}"), "f", "{}"));
        let mut sent = 0;
        let first = parts_chunks(
            Split::default(),
            0,
            vec![Part::Content("x".into()), call(0), call(1)],
            None,
            &mut sent,
        );
        let later = parts_chunks(Split::default(), 0, vec![call(2)], None, &mut sent);
        let indices: Vec<usize> = first
            .iter()
            .chain(&later)
            .flat_map(|c| c.delta.tool_calls.iter().flatten().map(|t| t.index))
            .collect();
        assert_eq!(indices, [0, 1, 2]);
    }
}
