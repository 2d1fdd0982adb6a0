//! Generation on an upstream engine: another server (vLLM, SGLang,
//! llama.cpp's llama-server, another deepwasm) that speaks the OpenAI
//! completions API and holds the weights, while this one keeps the
//! tokenizer, the chat template and everything around generation.
//!
//! The prompt is rendered and tokenized here, exactly as for the local
//! model, and sent as token ids, so the upstream continues the very tokens
//! this server would have fed its own model (no second chat template in
//! between). The sampling parameters, stop strings and limits go with it;
//! the text comes back streamed, with the generated token ids where the
//! upstream reports them (vLLM's `return_tokens_as_token_ids`, deepwasm,
//! llama-server) and tokenized here where it does not.
//!
//! What needs the model's numbers refuses with [`GenerateError::Unsupported`]
//! before anything is sent: sampler plugins (they choose each token from the
//! logits), prompt log-probabilities, embeddings and top log-probabilities.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use deepwasm_upstream::{Chunk, CompletionRequest, PromptBody, Upstream, UpstreamError};

use crate::engine::Engine;
use crate::request::{
    Completion, Delta, FinishReason, GenerateError, GenerateRequest, Timings, Usage,
};
use crate::sampling::TokenLogprobs;

/// Why a request cannot run on an upstream engine, checked before anything
/// is sent; `None` when it can.
pub fn refusal(req: &GenerateRequest, sampler: &dyn crate::sampler::Sampler) -> Option<String> {
    if !sampler.is_builtin() {
        let sampler = sampler.name();
        return Some(format!(
            "the sampler `{sampler}` chooses each token from the model's logits, which the \
             upstream engine this server generates on does not expose; use `response_format`, \
             `stop` or `logit_bias` instead, or a deepwasm server with a local model"
        ));
    }
    if req.prompt_logprobs.is_some() {
        return Some(
            "prompt log-probabilities (`echo` with `logprobs`, or `max_tokens: 0`) need the \
             model's weights, which are on the upstream engine, not on this server"
                .into(),
        );
    }
    if req.embedding.is_some() {
        return Some(
            "embeddings come from the model's hidden states, which the upstream engine this \
             server generates on does not expose"
                .into(),
        );
    }
    if req.logprobs.is_some_and(|n| n > 0) {
        return Some(
            "top log-probabilities (`top_logprobs` above 0) are not taken from the upstream \
             engine this server generates on; ask for the chosen tokens' only"
                .into(),
        );
    }
    None
}

/// `req` generated on `upstream`, streaming each piece to `on_delta`.
pub async fn generate(
    engine: &Engine,
    upstream: &Upstream,
    req: GenerateRequest,
    on_delta: &mut (dyn FnMut(Delta) + Send),
    cancelled: &AtomicBool,
) -> Result<Completion, GenerateError> {
    let started = Instant::now();
    let (_, prompt_tokens) = engine.render_prompt(&req.prompt)?;
    let context = engine.model.info().max_context;
    if prompt_tokens.len() >= context {
        return Err(GenerateError::PromptTooLong {
            prompt: prompt_tokens.len(),
            context,
        });
    }
    let p = &req.params;
    let body = CompletionRequest {
        prompt: PromptBody::Tokens(prompt_tokens.clone()),
        max_tokens: Some(req.max_tokens.min(context - prompt_tokens.len())),
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: (p.top_k > 0).then_some(p.top_k),
        min_p: (p.min_p > 0.0).then_some(p.min_p),
        repetition_penalty: (p.repetition_penalty != 1.0).then_some(p.repetition_penalty),
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        // Engines read `seed` into 32- or 64-bit signed integers: 31 bits
        // of ours fit all of them, and the same seed still maps to the same.
        seed: p.seed.map(|s| s & 0x7fff_ffff),
        stop: req.stop.clone(),
        logit_bias: p.logit_bias.clone(),
        ignore_eos: req.ignore_eos,
        return_token_ids: true,
        response_format: None,
        json_schema: None,
    };
    let mut body = body;
    if let Some(format) = &req.structured {
        // llama-server takes a schema of its own on completions; vLLM,
        // SGLang and deepwasm OpenAI's `response_format`.
        let llama = upstream
            .served()
            .is_some_and(|s| s.owned_by.as_deref() == Some("llamacpp"));
        match llama {
            true => body.json_schema = Some(schema_of(format)),
            false => body.response_format = Some(format.clone()),
        }
    }
    let mut text = String::new();
    let mut ids: Option<Vec<u32>> = Some(Vec::new());
    // The chosen tokens' log-probabilities, while every piece has them.
    let mut lps: Option<Vec<f32>> = req.logprobs.map(|_| Vec::new());
    let mut first_at = None;
    // What `max_tokens` allows, with room for long tokens and pieces that
    // carry none: an upstream sending more is stopped, not buffered.
    let most_bytes = body.max_tokens.unwrap_or(context).saturating_mul(64) + 1024;
    let most_pieces = body.max_tokens.unwrap_or(context).saturating_mul(2) + 16;
    let (mut pieces, mut overflowed) = (0usize, false);
    let mut forward = |chunk: Chunk| {
        first_at.get_or_insert_with(Instant::now);
        pieces += 1;
        if overflowed || pieces > most_pieces || text.len() + chunk.text.len() > most_bytes {
            // Ending the request ends the stream at the client's next check.
            overflowed = true;
            cancelled.store(true, Ordering::Relaxed);
            return;
        }
        text.push_str(&chunk.text);
        match (&mut ids, &chunk.token_ids) {
            (Some(all), Some(new)) => all.extend_from_slice(new),
            // One piece without ids: the whole text is tokenized at the end.
            (all, _) => *all = None,
        }
        match (&mut lps, &chunk.logprobs) {
            (Some(all), Some(new)) => all.extend_from_slice(new),
            (all, _) => *all = None,
        }
        let tokens = chunk.token_ids.unwrap_or_default();
        let logprobs = match (req.logprobs, &chunk.logprobs) {
            (Some(_), Some(l)) => tokens
                .iter()
                .zip(l)
                .map(|(&token, &logprob)| Some(chosen(token, logprob)))
                .collect(),
            _ => Vec::new(),
        };
        on_delta(Delta {
            text: chunk.text,
            tokens,
            logprobs,
        });
    };
    let finished = upstream.complete(&body, &mut forward, cancelled).await;
    if overflowed {
        return Err(GenerateError::Upstream {
            status: 502,
            message: format!(
                "it sent more than the request's {} tokens allow; the stream was cut",
                body.max_tokens.unwrap_or(context)
            ),
            retry_after: None,
        });
    }
    let finished = finished.map_err(|e| failure(e, cancelled))?;
    let tokens = match ids {
        Some(ids) if !ids.is_empty() || text.is_empty() => ids,
        _ => engine
            .tokenizer
            .encode(&text, false)
            .map_err(|e| GenerateError::Tokenize(e.to_string()))?,
    };
    let usage = match finished.usage {
        Some(u) => Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        },
        None => Usage {
            prompt_tokens: prompt_tokens.len(),
            completion_tokens: tokens.len(),
        },
    };
    let first = first_at.unwrap_or_else(Instant::now);
    if let Some(format) = &req.structured
        && finished.finish_reason.as_deref() != Some("length")
        && let Err(why) = follows(&text, format)
    {
        // An upstream that ignored the format, or enforced another:
        // nothing unchecked reaches the client as structured output.
        return Err(GenerateError::Upstream {
            status: 502,
            message: format!("its output does not follow the request's response_format: {why}"),
            retry_after: None,
        });
    }
    let logprobs = req.logprobs.map(|_| match lps {
        Some(lps) if lps.len() == tokens.len() => tokens
            .iter()
            .zip(lps)
            .map(|(&token, logprob)| Some(chosen(token, logprob)))
            .collect(),
        // Where the upstream gave none (or its ids were not kept), the
        // entries stay empty rather than made up.
        _ => vec![None::<TokenLogprobs>; tokens.len()],
    });
    Ok(Completion {
        text,
        finish_reason: match finished.finish_reason.as_deref() {
            Some("length") => FinishReason::Length,
            _ => FinishReason::Stop,
        },
        usage,
        tokens,
        prompt_tokens,
        logprobs,
        prompt_logprobs: None,
        embedding: None,
        timings: Timings {
            prefill: first - started,
            decode: first.elapsed(),
            forward_passes: 0,
        },
    })
}

/// The JSON schema of an OpenAI `response_format` (`{"type": "object"}` for
/// `json_object`).
fn schema_of(format: &serde_json::Value) -> serde_json::Value {
    format["json_schema"]["schema"]
        .as_object()
        .map(|s| serde_json::Value::Object(s.clone()))
        .unwrap_or_else(|| serde_json::json!({"type": "object"}))
}

/// Whether `text` is JSON that `format` allows: an object for
/// `json_object`, an instance of the schema for `json_schema`.
fn follows(text: &str, format: &serde_json::Value) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let schema = schema_of(format);
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| format!("the schema cannot be compiled ({e})"))?;
    match validator.iter_errors(&value).next() {
        None => Ok(()),
        Some(e) => Err(format!("at `{}`: {e}", e.instance_path())),
    }
}

/// A chosen token's log-probability, with no alternatives.
fn chosen(token: u32, logprob: f32) -> TokenLogprobs {
    TokenLogprobs {
        token,
        logprob,
        top: Vec::new(),
    }
}

/// An upstream failure as a generation error, with the status a client
/// should see.
fn failure(e: UpstreamError, cancelled: &AtomicBool) -> GenerateError {
    if cancelled.load(Ordering::Relaxed) {
        return GenerateError::Cancelled;
    }
    let (status, retry_after) = match &e {
        UpstreamError::Cancelled => return GenerateError::Cancelled,
        UpstreamError::Timeout(_) => (504, None),
        UpstreamError::Status {
            status: 429 | 503,
            retry_after,
            ..
        } => (503, Some(retry_after.unwrap_or(1))),
        // The upstream judged the request itself bad: the client's to fix.
        UpstreamError::Status {
            status: 400 | 422, ..
        } => (400, None),
        _ => (502, None),
    };
    GenerateError::Upstream {
        status,
        message: e.to_string(),
        retry_after,
    }
}
