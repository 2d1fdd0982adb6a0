//! The wire format of both endpoints' answers, whole and streamed, as
//! serde types: OpenAI's `chat.completion`, `chat.completion.chunk` and
//! `text_completion` objects, field for field and in their order.
//!
//! A field the API sends as `null` is an `Option` without a skip; one it
//! leaves out when empty says so with `skip_serializing_if`.
//! Log-probabilities are `f64` widened from the engine's `f32`: the
//! digits this API has always sent (a widened `f32`), not the `f32`'s
//! shortest form.

use deepwasm_engine::rewards::Scored;
use deepwasm_engine::sampling::TokenLogprobs;
use deepwasm_engine::{Completion, FinishReason};
use deepwasm_model::ToolCall;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::AppState;
use crate::output::{ChoiceOutput, Split};

/// A whole answer: `chat.completion` or `text_completion`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CompletionObject<'a, C> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    /// Always `null`.
    #[schema(required)]
    pub system_fingerprint: Option<&'static str>,
    pub choices: Vec<C>,
    pub usage: Usage,
}

/// One streamed chunk: `chat.completion.chunk` or `text_completion`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ChunkObject<'a, C> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    /// Always `null`.
    #[schema(required)]
    pub system_fingerprint: Option<&'static str>,
    /// One choice per chunk; none in the closing usage chunk.
    pub choices: &'a [C],
    /// Only when the client asked for usage (`stream_options`): `null` on
    /// every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Clone, Copy, Serialize, utoipa::ToSchema)]
pub(crate) struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

// ---------------------------------------------------------------- chat

/// A choice of a whole chat completion.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    #[schema(required)]
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
    /// The reward plugins' scores, when the request named any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<Map<String, Value>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the reply is only tool calls.
    #[schema(required)]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reasoning_content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallObject>,
    /// The call, for a request that used legacy `functions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionObject>,
}

/// A choice of one chat chunk.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    #[schema(required)]
    pub logprobs: Option<ChatLogprobs>,
    #[schema(required)]
    pub finish_reason: Option<&'static str>,
}

/// What a chat chunk adds to its choice's message; `{}` for nothing.
#[derive(Default, Serialize, utoipa::ToSchema)]
pub(crate) struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallObject>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionObject>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ToolCallObject {
    pub index: usize,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionObject,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FunctionObject {
    pub name: String,
    /// A JSON object, as text.
    pub arguments: String,
}

impl FunctionObject {
    /// A call as legacy function calling shows it.
    pub fn of(c: &ToolCall) -> Self {
        FunctionObject {
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        }
    }
}

/// `calls` as the API shows them, indexed from 0.
pub(super) fn tool_calls(calls: &[ToolCall]) -> Vec<ToolCallObject> {
    calls
        .iter()
        .enumerate()
        .map(|(index, c)| ToolCallObject {
            index,
            id: c.id.clone(),
            kind: "function",
            function: FunctionObject::of(c),
        })
        .collect()
}

/// A chat choice's log-probabilities.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    /// Always `null`.
    #[schema(required)]
    pub refusal: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ChatTokenLogprob {
    pub token: String,
    /// `null` for a token a sampler forced: the model scored no
    /// alternatives.
    #[schema(required)]
    pub logprob: Option<f64>,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// The chat log-probabilities of `tokens`, `lps` their scores (missing
/// ones count as forced). An end-of-text token is left out: it ends the
/// reply without being part of its content, which these must spell.
pub(super) fn chat_logprobs(
    st: &AppState,
    lps: &[Option<TokenLogprobs>],
    tokens: &[u32],
) -> ChatLogprobs {
    let eos = st.engine.tokenizer.eos();
    let content = tokens
        .iter()
        .zip(lps.iter().chain(std::iter::repeat(&None)))
        .filter(|(t, _)| !eos.contains(t))
        .map(|(&t, lp)| {
            let (token, bytes) = token_string(st, t);
            match lp {
                Some(lp) => ChatTokenLogprob {
                    token,
                    logprob: Some(f64::from(lp.logprob)),
                    bytes,
                    top_logprobs: lp
                        .top
                        .iter()
                        .map(|&(id, l)| {
                            let (token, bytes) = token_string(st, id);
                            TopLogprob {
                                token,
                                logprob: f64::from(l),
                                bytes,
                            }
                        })
                        .collect(),
                },
                None => ChatTokenLogprob {
                    token,
                    logprob: None,
                    bytes,
                    top_logprobs: Vec::new(),
                },
            }
        })
        .collect();
    ChatLogprobs {
        content,
        refusal: None,
    }
}

/// Choice `index` of a whole chat completion `id`: completion `c` split
/// into content, reasoning and tool calls.
pub(super) fn chat_choice(
    st: &AppState,
    split: Split,
    id: &str,
    index: usize,
    c: &Completion,
    logprobs: bool,
    scored: Option<&Scored>,
) -> ChatChoice {
    let cut = c.finish_reason == deepwasm_engine::FinishReason::Length;
    let out = ChoiceOutput::whole(split, id, index, &c.text, cut);
    let calls = !out.tool_calls.is_empty();
    let finish_reason = finish_reason(c, calls, split.legacy_functions);
    let (tool_calls, function_call) = match split.legacy_functions {
        true => (Vec::new(), out.tool_calls.first().map(FunctionObject::of)),
        false => (tool_calls(&out.tool_calls), None),
    };
    ChatChoice {
        index,
        message: AssistantMessage {
            role: "assistant",
            content: (!(out.content.is_empty() && calls)).then_some(out.content),
            reasoning_content: out.reasoning,
            tool_calls,
            function_call,
        },
        logprobs: match (logprobs, &c.logprobs) {
            (true, Some(lps)) => Some(chat_logprobs(st, lps, &c.tokens)),
            _ => None,
        },
        finish_reason,
        reward: scored.map(|s| s.to_json().0),
    }
}

// ---------------------------------------------------------------- completions

/// A choice of a legacy completion, whole or streamed.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TextChoice {
    pub index: usize,
    pub text: String,
    #[schema(required)]
    pub logprobs: Option<TextLogprobs>,
    /// `null` until the choice's last chunk.
    #[schema(required)]
    pub finish_reason: Option<&'static str>,
    /// The reward plugins' scores, when the request named any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<Map<String, Value>>,
}

/// A legacy completion's log-probabilities, one entry per token.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TextLogprobs {
    pub tokens: Vec<String>,
    /// `null` for a token a sampler forced.
    pub token_logprobs: Vec<Option<f64>>,
    /// Token text to log-probability; `null` for a forced token.
    pub top_logprobs: Vec<Option<Map<String, Value>>>,
    /// Where each token starts in the choice's text, in bytes.
    pub text_offset: Vec<usize>,
}

impl TextLogprobs {
    /// These, with each token written `token_id:<id>` for the ids `ids`
    /// (one per entry, in order).
    pub fn with_token_ids(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        for (token, id) in self.tokens.iter_mut().zip(ids) {
            *token = format!("token_id:{id}");
        }
        self
    }

    /// Those of `more` after these.
    pub fn extend(&mut self, more: TextLogprobs) {
        self.tokens.extend(more.tokens);
        self.token_logprobs.extend(more.token_logprobs);
        self.top_logprobs.extend(more.top_logprobs);
        self.text_offset.extend(more.text_offset);
    }
}

/// The legacy log-probabilities of an echoed prompt's `tokens` (`lps`
/// their scores, the first `None`), in a text whose first `len` bytes
/// are the prompt: a token the text does not spell (a BOS the tokenizer
/// added) takes no room, so offsets stay within the prompt.
pub(super) fn prompt_logprobs(
    st: &AppState,
    tokens: &[u32],
    lps: &[Option<TokenLogprobs>],
    len: usize,
) -> TextLogprobs {
    let mut out = text_logprobs(st, tokens, lps, 0);
    let shift = match (tokens.first(), st.engine.tokenizer.bos()) {
        (Some(&first), Some(bos)) if first == bos => out.tokens[0].len(),
        _ => 0,
    };
    for o in &mut out.text_offset {
        *o = o.saturating_sub(shift).min(len);
    }
    out
}

/// The legacy log-probabilities of `tokens` (`lps` their scores), the
/// first starting at byte `offset` of the choice's text.
pub(super) fn text_logprobs(
    st: &AppState,
    tokens: &[u32],
    lps: &[Option<TokenLogprobs>],
    offset: usize,
) -> TextLogprobs {
    let mut out = TextLogprobs {
        tokens: Vec::with_capacity(tokens.len()),
        token_logprobs: Vec::with_capacity(tokens.len()),
        top_logprobs: Vec::with_capacity(tokens.len()),
        text_offset: Vec::with_capacity(tokens.len()),
    };
    let mut at = offset;
    for (k, &t) in tokens.iter().enumerate() {
        let (text, _) = token_string(st, t);
        out.text_offset.push(at);
        at += text.len();
        out.tokens.push(text);
        match lps.get(k).and_then(Option::as_ref) {
            Some(lp) => {
                out.token_logprobs.push(Some(f64::from(lp.logprob)));
                let mut top = Map::new();
                for &(id, l) in &lp.top {
                    top.insert(token_string(st, id).0, Value::from(f64::from(l)));
                }
                out.top_logprobs.push(Some(top));
            }
            None => {
                out.token_logprobs.push(None);
                out.top_logprobs.push(None);
            }
        }
    }
    out
}

// ---------------------------------------------------------------- shared

/// The API's `finish_reason` of `c`; `tool_calls` when its text held any
/// (`function_call` under legacy function calling).
pub(super) fn finish_reason(c: &Completion, tool_calls: bool, legacy: bool) -> &'static str {
    if tool_calls {
        return if legacy {
            "function_call"
        } else {
            "tool_calls"
        };
    }
    match c.finish_reason {
        FinishReason::Stop | FinishReason::SamplerStop => "stop",
        FinishReason::Length => "length",
    }
}

/// A token's text (lossy UTF-8) and its bytes.
fn token_string(st: &AppState, id: u32) -> (String, Vec<u8>) {
    let bytes = st
        .engine
        .tokenizer
        .token_bytes(id)
        .unwrap_or_default()
        .to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// A fresh response id, `{prefix}-` and 16 hex digits.
pub(super) fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}",
        deepwasm_engine::rewards::completion_seeds(deepwasm_engine::batcher::random_seed(), 1)[0]
    )
}

/// Seconds since the Unix epoch: the `created` of a response.
pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn optional_fields_are_null_or_absent_as_the_api_sends_them() {
        let message = AssistantMessage {
            role: "assistant",
            content: None,
            reasoning_content: String::new(),
            tool_calls: tool_calls(&[ToolCall::new("call_1", "f", "{}")]),
            function_call: None,
        };
        assert_eq!(
            json(&message),
            r#"{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]}"#
        );
        let delta = ChatChunkChoice {
            index: 1,
            delta: ChatDelta::default(),
            logprobs: None,
            finish_reason: Some("stop"),
        };
        assert_eq!(
            json(&delta),
            r#"{"index":1,"delta":{},"logprobs":null,"finish_reason":"stop"}"#
        );
        let chunk = |usage| ChunkObject::<TextChoice> {
            id: "cmpl-1",
            object: "text_completion",
            created: 7,
            model: "m",
            system_fingerprint: None,
            choices: &[],
            usage,
        };
        assert_eq!(
            json(&chunk(None)),
            r#"{"id":"cmpl-1","object":"text_completion","created":7,"model":"m","system_fingerprint":null,"choices":[]}"#
        );
        assert!(json(&chunk(Some(None))).ends_with(r#""choices":[],"usage":null}"#));
        assert!(
            json(&chunk(Some(Some(Usage::new(2, 3))))).ends_with(
                r#""usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#
            )
        );
    }

    #[test]
    fn logprobs_keep_the_digits_of_a_widened_f32() {
        // What `json!(f32)` wrote before these types: the f32 widened to
        // f64, and a non-finite value as null.
        let l = -0.1f32;
        let top = TopLogprob {
            token: "a".into(),
            logprob: f64::from(l),
            bytes: vec![97],
        };
        assert_eq!(
            json(&top),
            format!(
                r#"{{"token":"a","logprob":{},"bytes":[97]}}"#,
                serde_json::json!(l)
            )
        );
        assert_eq!(json(&Some(f64::from(f32::NEG_INFINITY))), "null");
    }
}
