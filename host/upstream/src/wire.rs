//! The OpenAI completions API as the engines speak it: the request body this
//! client sends, and what it reads from each streamed event.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::config::Secret;
use crate::error::{UpstreamError, excerpt};

/// One generation, as the upstream is asked for it.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    pub prompt: PromptBody,
    /// Generated tokens at most; `None`: the upstream's default (its
    /// context, for vLLM; 16 for OpenAI itself).
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    /// Sent only when set: fields beyond OpenAI's that vLLM, SGLang,
    /// llama-server and deepwasm accept.
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// `(token id, bias)`, sent as `{"<id>": bias}`.
    pub logit_bias: Vec<(u32, f32)>,
    /// Sent only when true.
    pub ignore_eos: bool,
    /// Ask for the generated tokens' ids (`logprobs: 1` and vLLM's
    /// `return_tokens_as_token_ids`); each [`Chunk`] then carries them
    /// where the upstream reports them.
    pub return_token_ids: bool,
    /// OpenAI's `response_format` object, for an upstream that enforces it
    /// on completions (vLLM, SGLang, deepwasm). Sent only when set.
    pub response_format: Option<serde_json::Value>,
    /// llama-server's own field for the same: a JSON schema the output
    /// follows. Sent only when set.
    pub json_schema: Option<serde_json::Value>,
}

impl Default for CompletionRequest {
    /// An empty text prompt with OpenAI's defaults: temperature and top-p
    /// 1, no penalties, no limits.
    fn default() -> Self {
        CompletionRequest {
            prompt: PromptBody::Text(String::new()),
            max_tokens: None,
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            stop: Vec::new(),
            logit_bias: Vec::new(),
            ignore_eos: false,
            return_token_ids: false,
            response_format: None,
            json_schema: None,
        }
    }
}

/// The prompt: token ids (a JSON array, which vLLM, SGLang, llama-server
/// and deepwasm all take, so the upstream continues exactly these tokens)
/// or text the upstream tokenizes itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PromptBody {
    Tokens(Vec<u32>),
    Text(String),
}

/// A piece of the stream: one event's text, and its tokens' ids and
/// log-probabilities when they were asked for and the upstream reported
/// them (one per id).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    pub text: String,
    pub token_ids: Option<Vec<u32>>,
    pub logprobs: Option<Vec<f32>>,
}

/// How a stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The last non-null `finish_reason` (`stop`, `length`, ...).
    pub finish_reason: Option<String>,
    /// The upstream's count, when it sent one.
    pub usage: Option<Usage>,
    /// Requests made, the successful one included.
    pub attempts: u32,
}

/// Tokens the upstream counted for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    prompt: &'a PromptBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<usize>,
    temperature: f32,
    top_p: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repetition_penalty: Option<f32>,
    presence_penalty: f32,
    frequency_penalty: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    logit_bias: BTreeMap<String, f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    return_tokens_as_token_ids: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<&'a serde_json::Value>,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The JSON body of `POST /v1/completions` for `req` on `model`.
pub(crate) fn request_body(req: &CompletionRequest, model: &str) -> Vec<u8> {
    let body = Body {
        model,
        prompt: &req.prompt,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        seed: req.seed,
        stop: &req.stop,
        logit_bias: req
            .logit_bias
            .iter()
            .map(|&(id, bias)| (id.to_string(), bias))
            .collect(),
        ignore_eos: req.ignore_eos,
        logprobs: req.return_token_ids.then_some(1),
        return_tokens_as_token_ids: req.return_token_ids,
        response_format: req.response_format.as_ref(),
        json_schema: req.json_schema.as_ref(),
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
    };
    serde_json::to_vec(&body).expect("a struct of plain fields serializes")
}

/// What one event (or a whole non-streamed response) says.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct EventParts {
    /// Its text and ids, `None` when it has neither.
    pub chunk: Option<Chunk>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

/// Reads an event's JSON: `choices[0]`'s text, finish reason and token ids,
/// and `usage` (which vLLM and deepwasm send in a last event with empty
/// `choices`). An event holding an `error` is that error.
pub(crate) fn read_event(event: &Value, key: Option<&Secret>) -> Result<EventParts, UpstreamError> {
    let Some(object) = event.as_object() else {
        return Err(UpstreamError::Malformed(format!(
            "an event is not a JSON object: `{}`",
            excerpt(&event.to_string(), key)
        )));
    };
    if object.get("error").is_some_and(|e| !e.is_null()) {
        return Err(error_payload(event, key));
    }
    let mut parts = EventParts {
        usage: object.get("usage").and_then(usage),
        ..EventParts::default()
    };
    let choices = object.get("choices").and_then(Value::as_array);
    if let Some(choice) = choices.and_then(|c| c.first()) {
        parts.finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let text = choice.get("text").and_then(Value::as_str).unwrap_or("");
        let token_ids = token_ids(event, choice);
        let logprobs = token_logprobs(event, choice)
            .filter(|l| token_ids.as_ref().is_some_and(|ids| ids.len() == l.len()));
        if !text.is_empty() || token_ids.is_some() {
            parts.chunk = Some(Chunk {
                text: text.to_owned(),
                token_ids,
                logprobs,
            });
        }
    }
    Ok(parts)
}

fn usage(v: &Value) -> Option<Usage> {
    let count = |name| {
        v.get(name)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
    };
    Some(Usage {
        prompt_tokens: count("prompt_tokens")?,
        completion_tokens: count("completion_tokens")?,
    })
}

/// The generated tokens' ids in an event, from whichever shape the upstream
/// reports them in: vLLM's and deepwasm's `logprobs.tokens` as
/// `"token_id:123"` (with `return_tokens_as_token_ids`), or llama-server's
/// entries with an integer `id` (`logprobs.content`, or
/// `completion_probabilities`). `None` when the event has none, or when any
/// entry lacks its id: a partial list would misalign the tokens.
fn token_ids(event: &Value, choice: &Value) -> Option<Vec<u32>> {
    let logprobs = choice.get("logprobs");
    let from_names = |names: &Vec<Value>| -> Option<Vec<u32>> {
        names
            .iter()
            .map(|n| n.as_str()?.strip_prefix("token_id:")?.parse().ok())
            .collect()
    };
    let from_entries = |entries: &Vec<Value>| -> Option<Vec<u32>> {
        entries
            .iter()
            .map(|e| u32::try_from(e.get("id")?.as_u64()?).ok())
            .collect()
    };
    let ids = if let Some(names) = logprobs
        .and_then(|l| l.get("tokens"))
        .and_then(Value::as_array)
    {
        from_names(names)
    } else if let Some(entries) = logprobs
        .and_then(|l| l.get("content"))
        .and_then(Value::as_array)
    {
        from_entries(entries)
    } else if let Some(entries) = choice
        .get("completion_probabilities")
        .or_else(|| event.get("completion_probabilities"))
        .and_then(Value::as_array)
    {
        from_entries(entries)
    } else {
        None
    };
    ids.filter(|ids| !ids.is_empty())
}

/// The generated tokens' log-probabilities in an event, in the order of
/// [`token_ids`]: OpenAI's `logprobs.token_logprobs` (vLLM, deepwasm), or
/// the `logprob` of llama-server's entries. `None` when any is missing.
fn token_logprobs(event: &Value, choice: &Value) -> Option<Vec<f32>> {
    let logprobs = choice.get("logprobs");
    let values = |v: &Vec<Value>| -> Option<Vec<f32>> {
        v.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
    };
    let entries = |v: &Vec<Value>| -> Option<Vec<f32>> {
        v.iter()
            .map(|e| e.get("logprob")?.as_f64().map(|f| f as f32))
            .collect()
    };
    let found = if let Some(v) = logprobs
        .and_then(|l| l.get("token_logprobs"))
        .and_then(Value::as_array)
    {
        values(v)
    } else if let Some(v) = logprobs
        .and_then(|l| l.get("content"))
        .and_then(Value::as_array)
    {
        entries(v)
    } else if let Some(v) = choice
        .get("completion_probabilities")
        .or_else(|| event.get("completion_probabilities"))
        .and_then(Value::as_array)
    {
        entries(v)
    } else {
        None
    };
    found.filter(|l| !l.is_empty())
}

/// An error the upstream sent as JSON (a whole body, a streamed event or
/// llama-server's `error:` line): its status from `error.code` when that is
/// an HTTP error status, else 502.
pub(crate) fn error_payload(payload: &Value, key: Option<&Secret>) -> UpstreamError {
    let error = payload
        .get("error")
        .filter(|e| !e.is_null())
        .unwrap_or(payload);
    let status = ["code", "status"]
        .iter()
        .filter_map(|f| error.get(*f))
        .find_map(|c| match c {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(502);
    UpstreamError::Status {
        status,
        message: error_message(payload)
            .map(|m| excerpt(m, key))
            .unwrap_or_else(|| excerpt(&payload.to_string(), key)),
        retry_after: None,
    }
}

/// The human sentence in an error body, in the shapes engines use:
/// OpenAI's `{"error": {"message"}}`, `{"error": "..."}`, vLLM's older
/// top-level `message`, FastAPI's `detail`.
pub(crate) fn error_message(body: &Value) -> Option<&str> {
    let error = body.get("error");
    error
        .and_then(|e| e.get("message"))
        .or(error)
        .or_else(|| body.get("message"))
        .or_else(|| body.get("detail"))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_body_sends_only_what_is_set() {
        let req = CompletionRequest {
            prompt: PromptBody::Tokens(vec![1, 2, 3]),
            max_tokens: Some(8),
            temperature: 0.5,
            seed: Some(7),
            stop: vec!["\n".into()],
            logit_bias: vec![(42, -100.0)],
            return_token_ids: true,
            ..CompletionRequest::default()
        };
        let body: Value = serde_json::from_slice(&request_body(&req, "m")).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m", "prompt": [1, 2, 3], "max_tokens": 8,
                "temperature": 0.5, "top_p": 1.0,
                "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "seed": 7, "stop": ["\n"], "logit_bias": {"42": -100.0},
                "logprobs": 1, "return_tokens_as_token_ids": true,
                "stream": true, "stream_options": {"include_usage": true},
            })
        );
        let req = CompletionRequest {
            prompt: PromptBody::Text("hi".into()),
            top_k: Some(40),
            min_p: Some(0.25),
            repetition_penalty: Some(1.5),
            ignore_eos: true,
            ..CompletionRequest::default()
        };
        let body: Value = serde_json::from_slice(&request_body(&req, "m")).unwrap();
        assert_eq!(body["prompt"], "hi");
        assert_eq!(
            (&body["top_k"], &body["min_p"], &body["repetition_penalty"]),
            (&json!(40), &json!(0.25), &json!(1.5))
        );
        assert_eq!(body["ignore_eos"], true);
        for absent in ["max_tokens", "seed", "stop", "logit_bias", "logprobs"] {
            assert!(body.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn events_give_text_ids_finish_and_usage() {
        let vllm = json!({"choices": [{"index": 0, "text": "Hi", "finish_reason": null,
            "logprobs": {"tokens": ["token_id:9", "token_id:10"], "token_logprobs": [-0.1, -0.2]}}]});
        assert_eq!(
            read_event(&vllm, None).unwrap().chunk,
            Some(Chunk {
                text: "Hi".into(),
                token_ids: Some(vec![9, 10]),
                logprobs: Some(vec![-0.1, -0.2]),
            })
        );
        let llama = json!({"choices": [{"text": " there", "finish_reason": "length",
            "logprobs": {"content": [{"id": 11, "token": " there", "logprob": -0.3}]}}]});
        let parts = read_event(&llama, None).unwrap();
        let chunk = parts.chunk.unwrap();
        assert_eq!(chunk.token_ids, Some(vec![11]));
        assert_eq!(chunk.logprobs, Some(vec![-0.3]));
        // Log-probabilities that do not line up with the ids are dropped.
        let odd = json!({"choices": [{"text": "x", "finish_reason": null,
            "logprobs": {"tokens": ["token_id:1"], "token_logprobs": [-0.1, -0.2]}}]});
        let chunk = read_event(&odd, None).unwrap().chunk.unwrap();
        assert_eq!((chunk.token_ids, chunk.logprobs), (Some(vec![1]), None));
        assert_eq!(parts.finish_reason.as_deref(), Some("length"));
        let native = json!({"choices": [{"text": "x"}],
            "completion_probabilities": [{"id": 5, "probs": []}]});
        assert_eq!(
            read_event(&native, None).unwrap().chunk.unwrap().token_ids,
            Some(vec![5])
        );
        let openai = json!({"choices": [{"text": "x", "logprobs": {"tokens": ["x"]}}]});
        assert_eq!(
            read_event(&openai, None).unwrap().chunk.unwrap().token_ids,
            None
        );
        let last = json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        assert_eq!(
            read_event(&last, None).unwrap(),
            EventParts {
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2
                }),
                ..EventParts::default()
            }
        );
        let empty = json!({"choices": [{"text": "", "finish_reason": null}], "usage": null});
        assert_eq!(read_event(&empty, None).unwrap(), EventParts::default());
        assert!(matches!(
            read_event(&json!([1]), None),
            Err(UpstreamError::Malformed(_))
        ));
    }

    #[test]
    fn error_payloads_keep_the_status_they_give() {
        let status = |v: Value| match error_payload(&v, None) {
            UpstreamError::Status {
                status, message, ..
            } => (status, message),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(
                json!({"error": {"message": "too long", "type": "BadRequestError", "code": 400}})
            ),
            (400, "too long".into())
        );
        assert_eq!(
            status(json!({"error": {"message": "boom"}})),
            (502, "boom".into())
        );
        assert_eq!(
            status(json!({"code": 503, "message": "loading model"})).0,
            503
        );
        assert_eq!(status(json!({"error": "overloaded", "code": "429"})).0, 502);
        assert_eq!(
            status(json!({"detail": "Not Found"})),
            (502, "Not Found".into())
        );
        assert_eq!(
            status(json!({"error": {"code": 99, "message": "odd"}})).0,
            502
        );
    }
}
