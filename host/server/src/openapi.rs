//! The OpenAPI 3.1 description of the API, served at `GET /openapi.json`.
//!
//! Request bodies are the types the handlers parse ([`crate::api`],
//! [`crate::agents`]) and the chat and completion answers the types they
//! serialize, each deriving `ToSchema`: a field added there is in the
//! document at the next build. What serde does not say (the ranges and the
//! fixed sets of strings the handlers check) is written on the fields as
//! `#[schema(...)]`. The answers the handlers build with `json!` are
//! mirrored by the types in [`shapes`], and each operation is described on
//! a documentation-only function in `paths`, since a handler's signature
//! says nothing of its status codes. The unit test checks the document
//! against the router's routes.

use std::sync::LazyLock;

use utoipa::openapi::schema::{AdditionalProperties, Object, Schema};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr};
use utoipa::{Modify, OpenApi};

/// The document as JSON, built on first use.
pub fn json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        let json = ApiDoc::openapi()
            .to_json()
            .expect("an OpenAPI document has only string keys");
        unlink(&json)
    });
    &JSON
}

/// Doc comments link items for rustdoc (``[`ignore_unknown`]``); in the
/// document nothing resolves them, so they become plain code spans. A
/// Markdown link (``[`x`](url)``) is kept.
fn unlink(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("[`") {
        out.push_str(&rest[..at]);
        // `after` starts at the opening backtick; `end` is just past the
        // closing one.
        let after = &rest[at + 1..];
        match after[1..].find('`').map(|i| i + 2) {
            Some(end)
                if after[end..].starts_with(']') && !after[end + 1..].starts_with(['(', '[']) =>
            {
                out.push_str(&after[..end]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "deepwasm",
        description = "OpenAI-compatible inference with sandboxed Wasm plugins: samplers, rewards, tools, agents."
    ),
    servers((url = "/")),
    paths(
        paths::health,
        paths::metrics,
        paths::openapi,
        paths::models,
        paths::model,
        paths::usage,
        paths::chat_completions,
        paths::completions,
        paths::embeddings,
        paths::tokenizer_info,
        paths::tokenize,
        paths::detokenize,
        paths::responses,
        paths::get_response,
        paths::delete_response,
        paths::score,
        paths::rollouts,
        paths::train_grpo,
        paths::agent_run,
        paths::upload_plugin,
        paths::list_plugins,
        paths::get_plugin,
        paths::delete_plugin,
        paths::upload_adapter,
        paths::list_adapters,
        paths::get_adapter,
        paths::delete_adapter,
        paths::download_adapter_file,
    ),
    // What no operation names in a schema: the streamed chunks and lines.
    components(schemas(
        crate::chat::response::ChunkObject<'static, crate::chat::response::ChatChunkChoice>,
        crate::chat::response::ChunkObject<'static, crate::chat::response::TextChoice>,
        shapes::RolloutGroup,
        shapes::RolloutSummary,
    )),
    security(("bearer" = [])),
    modifiers(&Finish),
)]
struct ApiDoc;

/// What the derive cannot say: the bearer scheme, and request bodies with
/// flattened fields as the one object they are on the wire.
struct Finish;

impl Modify for Finish {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        for schema in components.schemas.values_mut() {
            if let RefOr::T(s) = schema
                && let Some(merged) = merge_all_of(s)
            {
                *s = Schema::Object(merged);
            }
        }
    }
}

/// A struct with a `#[serde(flatten)]`ed struct comes out of the derive as
/// `allOf` the flattened struct and its own fields. When every part is an
/// inline object that allows fields beyond its own (so that each accepts
/// the others' fields), that is exactly one object with all their
/// properties: simpler for clients and fuzzers to read. Other `allOf`s are
/// left as they are.
fn merge_all_of(schema: &Schema) -> Option<Object> {
    let Schema::AllOf(all) = schema else {
        return None;
    };
    let parts: Vec<&Object> = all
        .items
        .iter()
        .map(|item| match item {
            RefOr::T(Schema::Object(o)) => Some(o),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let closed = |o: &Object| {
        matches!(
            o.additional_properties.as_deref(),
            Some(AdditionalProperties::FreeForm(false))
        )
    };
    if parts.iter().any(|o| closed(o)) {
        return None;
    }
    // The struct's own fields (the last part) first, then the flattened.
    let mut merged = (*parts.last()?).clone();
    for part in &parts[..parts.len() - 1] {
        for (name, property) in &part.properties {
            merged
                .properties
                .entry(name.clone())
                .or_insert_with(|| property.clone());
        }
        for name in &part.required {
            if !merged.required.contains(name) {
                merged.required.push(name.clone());
            }
        }
    }
    merged.description = all.description.clone().or(merged.description);
    Some(merged)
}

/// One function per operation, for `#[utoipa::path]` to describe.
#[expect(
    dead_code,
    reason = "documentation only: the handlers serve these routes"
)]
mod paths {
    use super::shapes::*;
    use crate::agents::AgentRunRequest;
    use crate::api::{ChatRequest, CompletionRequest, RolloutRequest, ScoreRequest, TrainRequest};
    use crate::chat::response::{ChatChoice, CompletionObject, TextChoice};

    /// Liveness and the batch's state.
    #[utoipa::path(
        get,
        path = "/health",
        tag = "operations",
        security(),
        responses((status = 200, description = "The server is up", body = Health))
    )]
    pub(super) fn health() {}

    /// Prometheus metrics.
    ///
    /// Requests, tokens, plugin calls and limit hits by tenant, the batch and
    /// the attention cache, in the OpenMetrics text format.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "operations",
        security(),
        responses((status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text"))
    )]
    pub(super) fn metrics() {}

    /// This document.
    #[utoipa::path(
        get,
        path = "/openapi.json",
        tag = "operations",
        security(),
        responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = Object))
    )]
    pub(super) fn openapi() {}

    /// The model served.
    #[utoipa::path(
        get,
        path = "/v1/models",
        tag = "models",
        responses(
            (status = 200, description = "The one model this server serves", body = ModelList),
            (status = 401, description = "No or unknown API key", body = Error),
        )
    )]
    pub(super) fn models() {}

    /// One model.
    #[utoipa::path(
        get,
        path = "/v1/models/{model}",
        tag = "models",
        params(("model" = String, Path, description = "The model's id")),
        responses(
            (status = 200, description = "The model", body = Model),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such model", body = Error),
        )
    )]
    pub(super) fn model() {}

    /// The tenant's usage: tokens, plugin calls, fuel, wall time.
    ///
    /// With `--state`, the totals of every replica that served the tenant
    /// (this one's written first), so every replica answers the same.
    #[utoipa::path(
        get,
        path = "/v1/usage",
        tag = "operations",
        responses(
            (status = 200, description = "Totals since the server started (with `--state`: since the database was created)", body = TenantUsage),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 429, description = "With `--state`: the tenant already runs as many reads of the shared state (usage, plugins, stored responses) as it may at once (see Retry-After)", body = Error),
            (status = 503, description = "With `--state`: the state database cannot be reached (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn usage() {}

    /// Chat completion (OpenAI-compatible).
    ///
    /// Unknown top-level fields are accepted and ignored, and named in the
    /// answer's `deepwasm-ignored-fields` header. With `stream: true` the
    /// answer is Server-Sent Events: one `chat.completion.chunk` per event
    /// (the `ChunkObject_ChatChunkChoice` schema), then `[DONE]`; a failure
    /// midway sends an `Error` in place of a chunk and ends the stream.
    #[utoipa::path(
        post,
        path = "/v1/chat/completions",
        tag = "inference",
        request_body = ChatRequest,
        responses(
            (status = 200, description = "The completion, or its chunks when streamed",
                headers(("deepwasm-ignored-fields" = String, description = "The request's top-level fields this server ignored")),
                content(
                    (CompletionObject<'static, ChatChoice> = "application/json"),
                    (String = "text/event-stream"),
                )),
            (status = 400, description = "Invalid request", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such model or plugin", body = Error),
            (status = 413, description = "Body too large", body = Error),
            (status = 422, description = "A plugin failed", body = Error),
            (status = 429, description = "Quota exceeded (see Retry-After)", body = Error),
            (status = 503, description = "The server is at capacity: too many requests wait for a place in the batch, or with `--state` cannot reach its database (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn chat_completions() {}

    /// Text completion (OpenAI-compatible).
    ///
    /// Unknown top-level fields are accepted and ignored, and named in the
    /// answer's `deepwasm-ignored-fields` header. With `stream: true` the
    /// answer is Server-Sent Events: one `text_completion` chunk per event
    /// (the `ChunkObject_TextChoice` schema), then `[DONE]`.
    #[utoipa::path(
        post,
        path = "/v1/completions",
        tag = "inference",
        request_body = CompletionRequest,
        responses(
            (status = 200, description = "The completion, or its chunks when streamed",
                headers(("deepwasm-ignored-fields" = String, description = "The request's top-level fields this server ignored")),
                content(
                    (CompletionObject<'static, TextChoice> = "application/json"),
                    (String = "text/event-stream"),
                )),
            (status = 400, description = "Invalid request", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such model or plugin", body = Error),
            (status = 413, description = "Body too large", body = Error),
            (status = 422, description = "A plugin failed", body = Error),
            (status = 429, description = "Quota exceeded (see Retry-After)", body = Error),
            (status = 503, description = "The server is at capacity: too many requests wait for a place in the batch, or with `--state` cannot reach its database (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn completions() {}

    /// Embeddings: the served model's final hidden states, pooled.
    ///
    /// The mean over the input's tokens (or the last token's, with
    /// `pooling: "last"`), scaled to unit length unless `normalize: false`.
    /// A chat model's hidden states are not a retrieval model's embeddings.
    #[utoipa::path(
        post,
        path = "/v1/embeddings",
        tag = "inference",
        request_body = crate::embeddings::EmbeddingRequest,
        responses(
            (status = 200, description = "One embedding per input, in order", body = crate::embeddings::EmbeddingList),
            (status = 400, description = "Invalid request (`code: context_length_exceeded` for an input longer than the context)", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such model", body = Error),
            (status = 413, description = "Body too large", body = Error),
            (status = 429, description = "Quota exceeded (see Retry-After)", body = Error),
            (status = 503, description = "The server is at capacity, or with `--state` cannot reach its database (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn embeddings() {}

    /// The served tokenizer's special tokens, chat template and limit (as
    /// vLLM's server answers it).
    #[utoipa::path(
        get,
        path = "/tokenizer_info",
        tag = "tokenizer",
        responses(
            (status = 200, description = "The tokenizer", body = crate::tokenize::TokenizerInfo),
            (status = 401, description = "No or unknown API key", body = Error),
        )
    )]
    pub(super) fn tokenizer_info() {}

    /// Token ids of a text, or of a conversation rendered with the chat
    /// template.
    #[utoipa::path(
        post,
        path = "/tokenize",
        tag = "tokenizer",
        request_body = crate::tokenize::TokenizeRequest,
        responses(
            (status = 200, description = "The tokens", body = crate::tokenize::Tokenized),
            (status = 400, description = "Invalid request", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such model", body = Error),
            (status = 413, description = "Body too large", body = Error),
        )
    )]
    pub(super) fn tokenize() {}

    /// The text of token ids.
    #[utoipa::path(
        post,
        path = "/detokenize",
        tag = "tokenizer",
        request_body = crate::tokenize::DetokenizeRequest,
        responses(
            (status = 200, description = "The text", body = crate::tokenize::Detokenized),
            (status = 400, description = "A token outside the vocabulary", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such model", body = Error),
            (status = 413, description = "Body too large", body = Error),
        )
    )]
    pub(super) fn detokenize() {}

    /// Create a response (OpenAI's Responses API).
    ///
    /// `input` is a string or a list of `message`, `function_call`,
    /// `function_call_output` and `reasoning` items; the reply's output
    /// items are `reasoning` (an R1-style model's thinking, as its
    /// summary), a `message` and `function_call`s. With `stream: true` the
    /// answer is Server-Sent Events named by their `type`
    /// (`response.created`, `response.output_text.delta`, ...,
    /// `response.completed` or `response.incomplete`). Stored responses
    /// (`store`, the default) continue with `previous_response_id`, within
    /// the tenant, while the server runs.
    #[utoipa::path(
        post,
        path = "/v1/responses",
        tag = "inference",
        request_body = crate::chat::responses::ResponsesRequest,
        responses(
            (status = 200, description = "The response object, or its events when streamed",
                headers(("deepwasm-ignored-fields" = String, description = "The request's top-level fields this server ignored")),
                content(
                    (Object = "application/json"),
                    (String = "text/event-stream"),
                )),
            (status = 400, description = "Invalid request (an unknown `previous_response_id` included)", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such model or plugin", body = Error),
            (status = 413, description = "Body too large", body = Error),
            (status = 422, description = "A plugin failed", body = Error),
            (status = 429, description = "Quota exceeded (see Retry-After)", body = Error),
            (status = 503, description = "The server is at capacity, or with `--state` cannot reach its database (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn responses() {}

    /// One of the tenant's stored responses.
    #[utoipa::path(
        get,
        path = "/v1/responses/{id}",
        tag = "inference",
        params(("id" = String, Path, description = "The response's id")),
        responses(
            (status = 200, description = "The response object", body = Object),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such response of this tenant", body = Error),
            (status = 429, description = "With `--state`: the tenant already runs as many reads of the shared state (usage, plugins, stored responses) as it may at once (see Retry-After)", body = Error),
            (status = 503, description = "With `--state`: the state database cannot be reached (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn get_response() {}

    /// Delete one of the tenant's stored responses.
    #[utoipa::path(
        delete,
        path = "/v1/responses/{id}",
        tag = "inference",
        params(("id" = String, Path, description = "The response's id")),
        responses(
            (status = 200, description = "Deleted", body = Object),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such response of this tenant", body = Error),
            (status = 429, description = "With `--state`: the tenant already runs as many reads of the shared state (usage, plugins, stored responses) as it may at once (see Retry-After)", body = Error),
            (status = 503, description = "With `--state`: the state database cannot be reached (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn delete_response() {}

    /// Score samples with the tenant's reward plugins.
    #[utoipa::path(
        post,
        path = "/v1/rewards/score",
        tag = "training",
        request_body = ScoreRequest,
        responses(
            (status = 200, description = "Each sample's scores, in order", body = ScoreList),
            (status = 400, description = "Invalid request", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such reward plugin", body = Error),
            (status = 413, description = "Body too large", body = Error),
            (status = 429, description = "Quota exceeded (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn score() {}

    /// GRPO rollouts: groups of scored completions per prompt, streamed.
    ///
    /// Each prompt's group of completions is generated in the shared batch,
    /// scored by the rewards as soon as its last completion ends, and sent as
    /// one line (NDJSON) or event (SSE): a `RolloutGroup`, in the order groups
    /// end (`index` names the prompt). The last line is `{"summary":
    /// RolloutSummary}`; a failure midway sends an `Error` object and ends
    /// the stream. `deepwasm rollout` writes the same lines, in prompt order.
    /// See docs/rollouts.md.
    #[utoipa::path(
        post,
        path = "/v1/rollouts",
        tag = "training",
        request_body = RolloutRequest,
        responses(
            (status = 200, description = "One RolloutGroup per prompt as its group is scored, then {\"summary\": RolloutSummary}",
                content(
                    (String = "application/x-ndjson"),
                    (String = "text/event-stream"),
                )),
            (status = 400, description = "Invalid request", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such model or reward plugin", body = Error),
            (status = 413, description = "Body too large", body = Error),
            (status = 429, description = "Quota exceeded (see Retry-After)", body = Error),
            (status = 503, description = "The server is at capacity: too many requests wait for a place in the batch, or with `--state` cannot reach its database (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn rollouts() {}

    /// Train a LoRA adapter of the model with GRPO against the tenant's
    /// reward plugins.
    ///
    /// Each step samples groups of completions with the adapter as it
    /// stands (in the shared batch), scores them with the rewards, and
    /// updates the adapter. The job streams one NDJSON line per step
    /// (`{"object": "train.step", "step", "rewards", "loss", "kl", ...}`),
    /// then `{"object": "train.done", "model": "BASE:NAME"}`; from then on
    /// the tenant, and only it, generates with `model: "BASE:NAME"`. A
    /// failure midway sends an `Error` object and ends the stream; a client
    /// that goes away stops the job. One job runs at a time on a server,
    /// holding one of the tenant's concurrent-request places. See
    /// docs/training.md.
    #[utoipa::path(
        post,
        path = "/v1/train/grpo",
        tag = "training",
        request_body = TrainRequest,
        responses(
            (status = 200, description = "One line per step, then the adapter's line",
                content((String = "application/x-ndjson"))),
            (status = 400, description = "Invalid request, or a server that cannot train", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such reward plugin", body = Error),
            (status = 413, description = "Body too large", body = Error),
            (status = 429, description = "Quota exceeded, or a job is running (see Retry-After)", body = Error),
            (status = 503, description = "With `--state`, the database cannot be reached (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn train_grpo() {}

    /// Run a task with one of the tenant's agent plugins over the model and
    /// its granted tools.
    ///
    /// With `stream` (the default) the run's events are Server-Sent Events,
    /// one JSON object each with a `type`: `started`, `model_turn`,
    /// `model_error`, `tool_call`, `tool_result`, `log`, then `finished` or
    /// `failed`.
    #[utoipa::path(
        post,
        path = "/v1/agents/{plugin}/runs",
        tag = "agents",
        params(("plugin" = String, Path, description = "The agent plugin's id or name")),
        request_body = AgentRunRequest,
        responses(
            (status = 200, description = "The run's events, or with `stream: false` one JSON object with the answer, the transcript and the stats",
                content(
                    (String = "text/event-stream"),
                    (AgentRunAnswer = "application/json"),
                )),
            (status = 400, description = "Invalid request", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 403, description = "A tool not granted to the tenant's agents", body = Error),
            (status = 404, description = "No such plugin for this tenant", body = Error),
            (status = 413, description = "Body too large", body = Error),
            (status = 429, description = "Quota exceeded (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn agent_run() {}

    /// Upload a plugin component.
    ///
    /// The component is validated (one deepwasm world, importing only what
    /// the tenant was granted), compiled and stored content-addressed. The
    /// same bytes uploaded again under the same name answer 200.
    #[utoipa::path(
        post,
        path = "/v1/plugins",
        tag = "plugins",
        params(crate::plugins::UploadQuery),
        request_body(content = WasmComponent, content_type = "application/wasm", description = "The component's bytes"),
        responses(
            (status = 201, description = "Stored", body = Plugin),
            (status = 200, description = "Already stored", body = Plugin),
            (status = 400, description = "Invalid name, or not a loadable component", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 403, description = "The tenant stores as many plugins as it may", body = Error),
            (status = 409, description = "Another plugin has this name", body = Error),
            (status = 413, description = "The component is larger than the tenant may upload", body = Error),
            (status = 422, description = "Compiling the component passed the server's cap on compile time or memory (`compile_limit_exceeded`)", body = Error),
            (status = 429, description = "The tenant, or the server, is compiling as many plugins as it may at once (see Retry-After)", body = Error),
            (status = 503, description = "With `--state`: the state database cannot be reached (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn upload_plugin() {}

    /// The tenant's plugins.
    #[utoipa::path(
        get,
        path = "/v1/plugins",
        tag = "plugins",
        responses(
            (status = 200, description = "The tenant's plugins, oldest first", body = PluginList),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 429, description = "With `--state`: the tenant already runs as many reads of the shared state (usage, plugins, stored responses) as it may at once (see Retry-After)", body = Error),
            (status = 503, description = "With `--state`: the state database cannot be reached (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn list_plugins() {}

    /// One of the tenant's plugins.
    #[utoipa::path(
        get,
        path = "/v1/plugins/{id}",
        tag = "plugins",
        params(("id" = String, Path, description = "The plugin's id (SHA-256) or name")),
        responses(
            (status = 200, description = "The plugin", body = Plugin),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such plugin (or another tenant's)", body = Error),
            (status = 429, description = "With `--state`: the tenant already runs as many reads of the shared state (usage, plugins, stored responses) as it may at once (see Retry-After)", body = Error),
            (status = 503, description = "With `--state`: the state database cannot be reached (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn get_plugin() {}

    /// Delete one of the tenant's plugins.
    #[utoipa::path(
        delete,
        path = "/v1/plugins/{id}",
        tag = "plugins",
        params(("id" = String, Path, description = "The plugin's id (SHA-256) or name")),
        responses(
            (status = 200, description = "Deleted", body = PluginDeleted),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such plugin (or another tenant's)", body = Error),
            (status = 429, description = "With `--state`: the tenant already runs as many reads of the shared state (usage, plugins, stored responses) as it may at once (see Retry-After)", body = Error),
            (status = 503, description = "With `--state`: the state database cannot be reached (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn delete_plugin() {}

    /// Upload a LoRA adapter in PEFT's layout.
    ///
    /// The body is `multipart/form-data` with the parts `config`
    /// (adapter_config.json) and `weights` (adapter_model.safetensors). The
    /// adapter is checked against the model (names, ranks, shapes, what
    /// deepwasm applies as PEFT would) and kept; the tenant, and only it,
    /// then generates with `model: "BASE:NAME"`. An adapter of the same
    /// name is replaced (200). See docs/training.md.
    #[utoipa::path(
        post,
        path = "/v1/adapters",
        tag = "adapters",
        params(crate::adapters::AdapterUploadQuery),
        request_body(content = crate::adapters::AdapterUpload, content_type = "multipart/form-data"),
        responses(
            (status = 201, description = "Stored", body = crate::adapters::Adapter),
            (status = 200, description = "Replaced the adapter of this name", body = crate::adapters::Adapter),
            (status = 400, description = "Invalid name, a part missing, or not an adapter of this model (the message says which file and why)", body = Error),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 403, description = "The tenant keeps as many adapters, or as many bytes of them, as it may", body = Error),
            (status = 413, description = "A part is larger than the tenant's `adapter_bytes`", body = Error),
            (status = 429, description = "The tenant is already uploading a plugin or an adapter (see Retry-After)", body = Error),
        )
    )]
    pub(super) fn upload_adapter() {}

    /// The tenant's adapters, uploaded or trained.
    #[utoipa::path(
        get,
        path = "/v1/adapters",
        tag = "adapters",
        responses(
            (status = 200, description = "The tenant's adapters, by name", body = crate::adapters::AdapterList),
            (status = 401, description = "No or unknown API key", body = Error),
        )
    )]
    pub(super) fn list_adapters() {}

    /// One of the tenant's adapters.
    #[utoipa::path(
        get,
        path = "/v1/adapters/{name}",
        tag = "adapters",
        params(("name" = String, Path, description = "The adapter's name")),
        responses(
            (status = 200, description = "The adapter", body = crate::adapters::Adapter),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such adapter (or another tenant's)", body = Error),
        )
    )]
    pub(super) fn get_adapter() {}

    /// Delete one of the tenant's adapters. Requests already using it
    /// finish with it.
    #[utoipa::path(
        delete,
        path = "/v1/adapters/{name}",
        tag = "adapters",
        params(("name" = String, Path, description = "The adapter's name")),
        responses(
            (status = 200, description = "Deleted", body = crate::adapters::AdapterDeleted),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such adapter (or another tenant's)", body = Error),
        )
    )]
    pub(super) fn delete_adapter() {}

    /// One of an adapter's two PEFT files, as kept: a trained adapter
    /// loads in PEFT from these.
    #[utoipa::path(
        get,
        path = "/v1/adapters/{name}/files/{file}",
        tag = "adapters",
        params(
            ("name" = String, Path, description = "The adapter's name"),
            ("file" = String, Path, description = "`adapter_config.json` or `adapter_model.safetensors`"),
        ),
        responses(
            (status = 200, description = "The file's bytes",
                content((String = "application/json"), (String = "application/octet-stream"))),
            (status = 401, description = "No or unknown API key", body = Error),
            (status = 404, description = "No such adapter (or another tenant's), or no such file", body = Error),
        )
    )]
    pub(super) fn download_adapter_file() {}
}

/// The shapes of JSON that no type of the server's describes: answers the
/// handlers build with `json!` or take from other crates, and strings that
/// are one of a few values (the request types keep them as `String`, and
/// the handlers say which are allowed). Nothing constructs these.
#[expect(dead_code, reason = "documentation only: nothing builds these values")]
pub(crate) mod shapes {
    use std::collections::BTreeMap;

    use serde_json::Value;
    use utoipa::ToSchema;

    /// Every error, as OpenAI shapes it.
    #[derive(ToSchema)]
    pub struct Error {
        #[schema(inline)]
        pub error: ErrorDetail,
    }

    #[derive(ToSchema)]
    pub struct ErrorDetail {
        /// What went wrong, naming the parameter at fault.
        pub message: String,
        /// OpenAI's error type: `invalid_request_error` (bad keys,
        /// unknown models and routes included, told apart by `code`),
        /// `tokens` or `requests` (a rate limit), `server_error`; and this
        /// server's `permission_error` (403) and `plugin_error` (422).
        #[schema(rename = "type")]
        pub kind: String,
        /// The request's field at fault.
        #[schema(required)]
        pub param: Option<String>,
        /// What clients may key on: `context_length_exceeded`,
        /// `model_not_found`, `plugin_not_found`, `rate_limit_exceeded`, ...
        #[schema(required)]
        pub code: Option<String>,
    }

    // ------------------------------------------------------------ requests

    /// Who wrote a message; `function` is legacy function calling's answer.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum Role {
        System,
        Developer,
        User,
        Assistant,
        Tool,
        Function,
    }

    /// A content part's type: this model reads text only.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum PartType {
        Text,
    }

    /// A tool's or tool call's type: only functions are supported.
    #[derive(ToSchema, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum ToolType {
        Function,
    }

    /// `response_format.type`.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum ResponseFormatType {
        Text,
        JsonObject,
        JsonSchema,
    }

    /// What a sampler that misses its step budget does: `wait` (default;
    /// the sequence sits steps out, at most 8 budgets), `fail` the request,
    /// or `fallback` to the built-in sampler for that step.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum OnMiss {
        Wait,
        Fail,
        Fallback,
    }

    /// How a rollout streams its lines.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum RolloutFormat {
        Ndjson,
        Sse,
    }

    // The untagged enums need serde's attributes, hence `Deserialize`
    // here and on what they hold.

    /// `tool_choice`: a mode, or the one function the model must call.
    #[derive(ToSchema, serde::Deserialize)]
    #[serde(untagged)]
    pub enum ToolChoice {
        Mode(ToolChoiceMode),
        Function(NamedTool),
    }

    #[derive(ToSchema, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum ToolChoiceMode {
        None,
        Auto,
        Required,
    }

    #[derive(ToSchema, serde::Deserialize)]
    pub struct NamedTool {
        #[serde(rename = "type")]
        pub kind: ToolType,
        #[schema(inline)]
        pub function: FunctionName,
    }

    #[derive(ToSchema, serde::Deserialize)]
    pub struct FunctionName {
        pub name: String,
    }

    /// Legacy `function_call`: `none`, `auto`, or the function to call.
    #[derive(ToSchema, serde::Deserialize)]
    #[serde(untagged)]
    pub enum FunctionChoice {
        Mode(FunctionChoiceMode),
        Function(FunctionName),
    }

    #[derive(ToSchema, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum FunctionChoiceMode {
        None,
        Auto,
    }

    /// An agent run's budgets; each unset one has its default.
    #[derive(ToSchema, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AgentBudgets {
        /// Model turns. Default 16.
        #[schema(minimum = 1)]
        pub max_steps: Option<u32>,
        /// Tool calls. Default 64.
        pub max_tool_calls: Option<u32>,
        /// Tokens generated over the whole run. Default 8192.
        #[schema(minimum = 1)]
        pub max_tokens: Option<u64>,
        /// New tokens of one turn when the agent does not say. Default 256.
        #[schema(minimum = 1)]
        pub turn_tokens: Option<u32>,
        /// Wall time of the whole run, in milliseconds; never more than the
        /// agent sandbox's call deadline. Default 300000.
        #[schema(minimum = 1)]
        pub deadline_ms: Option<u64>,
        /// Largest tool result the agent is given, in bytes. Default 65536.
        #[schema(minimum = 1)]
        pub max_tool_output_bytes: Option<u64>,
    }

    /// A plugin component: a WebAssembly component's bytes.
    #[derive(ToSchema)]
    #[schema(value_type = String, format = Binary)]
    pub struct WasmComponent(Vec<u8>);

    // ------------------------------------------------------------ answers

    #[derive(ToSchema)]
    pub struct Health {
        /// Always `ok`.
        pub status: String,
        /// The served model's id.
        pub model: String,
        #[schema(inline)]
        pub batch: BatchState,
    }

    #[derive(ToSchema)]
    pub struct BatchState {
        /// Sequences in the batch now.
        pub running: usize,
        /// Sequences waiting for a place.
        pub waiting: usize,
    }

    #[derive(ToSchema)]
    pub struct ModelList {
        /// Always `list`.
        pub object: String,
        pub data: Vec<Model>,
    }

    /// The served model.
    #[derive(ToSchema)]
    pub struct Model {
        pub id: String,
        /// Always `model`.
        pub object: String,
        /// Unix seconds the server started.
        pub created: u64,
        /// Always `deepwasm`.
        pub owned_by: String,
        /// The checkpoint's architecture (`model_type` of config.json, or
        /// `general.architecture` of a GGUF file).
        pub architecture: String,
        /// The model's context, tokens.
        pub context_length: usize,
        /// The longest request this server holds, tokens: the context, or
        /// less when the attention-cache budget is smaller.
        pub max_model_len: usize,
        pub vocab_size: usize,
        /// The length of this model's embeddings.
        pub hidden_size: usize,
        #[schema(inline)]
        pub capabilities: Capabilities,
    }

    /// What the served model and this server support.
    #[derive(ToSchema)]
    pub struct Capabilities {
        /// The model has a chat template.
        pub chat_completions: bool,
        pub completions: bool,
        pub streaming: bool,
        pub logprobs: bool,
        pub tools: bool,
        /// The `tool_choice` values accepted (none without a chat template).
        pub tool_choice: Vec<String>,
        pub response_format: Vec<String>,
        pub sampler_plugins: bool,
        pub reward_plugins: bool,
        pub embeddings: bool,
        pub responses: bool,
    }

    /// A tenant's totals since the server started.
    #[derive(ToSchema)]
    pub struct TenantUsage {
        /// Always `usage`.
        pub object: String,
        pub tenant: String,
        pub requests: u64,
        pub prompt_tokens: u64,
        pub completion_tokens: u64,
        pub plugin_calls: u64,
        pub plugin_fuel: u64,
        pub plugin_wall_ms: f64,
        /// Plugin calls stopped by a limit (memory, deadline, fuel).
        pub plugin_limit_hits: u64,
    }

    #[derive(ToSchema)]
    pub struct ScoreList {
        /// Always `list`.
        pub object: String,
        pub data: Vec<SampleScores>,
        /// Wall time of the scoring.
        pub seconds: f64,
    }

    /// One sample's scores.
    #[derive(ToSchema)]
    pub struct SampleScores {
        /// The sample's place in the request's `samples`.
        pub index: usize,
        /// Each reward's score by name; `null` when it does not apply or
        /// failed.
        pub rewards: BTreeMap<String, Option<f64>>,
        /// The weighted sum of the scores present.
        #[schema(required)]
        pub total: Option<f64>,
        /// Present when a reward failed on this sample.
        #[schema(required = false)]
        pub errors: BTreeMap<String, RewardError>,
    }

    #[derive(ToSchema)]
    pub struct RewardError {
        pub kind: String,
        pub message: String,
    }

    /// One rollout line: a prompt's group of completions, scored.
    #[derive(ToSchema)]
    pub struct RolloutGroup {
        /// The prompt's place in the request's `prompts`.
        pub index: usize,
        /// The prompt as the model saw it (a chat through its template), as
        /// the rewards got it.
        pub prompt: String,
        pub prompt_tokens: Vec<u32>,
        /// The prompt's `extra`, as given (`{}` when none).
        pub extra: BTreeMap<String, Value>,
        /// The mean of the group's totals; `null` when none has one.
        #[schema(required)]
        pub mean_reward: Option<f64>,
        pub completions: Vec<RolloutCompletion>,
    }

    #[derive(ToSchema)]
    pub struct RolloutCompletion {
        pub seed: u64,
        pub text: String,
        pub tokens: Vec<u32>,
        /// Each token's log-probability; `null` for one a sampler forced.
        pub logprobs: Vec<Option<f64>>,
        /// `stop`, `length` or `sampler_stop`.
        pub finish_reason: String,
        /// Each reward's score by name; `null` when it does not apply or
        /// failed.
        pub rewards: BTreeMap<String, Option<f64>>,
        /// The weighted sum of the scores present.
        #[schema(required)]
        pub total: Option<f64>,
        /// Present when a reward failed on this completion.
        #[schema(required = false)]
        pub errors: BTreeMap<String, RewardError>,
        /// `(total - group mean) / (group std + 1e-4)`; `null` without a
        /// total.
        #[schema(required)]
        pub advantage: Option<f64>,
    }

    /// The last rollout line's `summary`: totals over the whole rollout.
    #[derive(ToSchema)]
    pub struct RolloutSummary {
        pub prompts: usize,
        pub completions: usize,
        pub completion_tokens: usize,
        /// The mean total over completions with one.
        #[schema(required)]
        pub mean_reward: Option<f64>,
        /// The share of completions whose total reached `pass_threshold`.
        #[schema(required)]
        pub pass_rate: Option<f64>,
        pub pass_threshold: f64,
        /// Reward scores that failed, over all completions.
        pub reward_failures: usize,
        /// Wall time of the rollout.
        pub seconds: f64,
        /// From the start until the last completion ended.
        pub generation_seconds: f64,
        /// Scoring time summed over groups (it overlaps generation).
        pub reward_seconds: f64,
        pub completions_per_second: f64,
        pub tokens_per_second: f64,
    }

    /// An agent run's answer, with `stream: false`.
    #[derive(ToSchema)]
    pub struct AgentRunAnswer {
        /// Always `agent.run`.
        pub object: String,
        /// The agent plugin's name.
        pub agent: String,
        /// The answer; `null` when the run failed.
        #[schema(required)]
        pub answer: Option<String>,
        /// Why the run ended without an answer; `null` when it answered.
        #[schema(required)]
        pub error: Option<AgentRunError>,
        #[schema(inline)]
        pub stats: RunStats,
        /// Every event of the run, as streamed.
        pub transcript: Vec<BTreeMap<String, Value>>,
    }

    #[derive(ToSchema)]
    pub struct AgentRunError {
        pub message: String,
        /// The failure, with its `kind`: `step_budget`, `tool_call_budget`,
        /// `token_budget`, `deadline`, `stopped`, `agent`, `plugin` or
        /// `setup`.
        pub detail: BTreeMap<String, Value>,
    }

    #[derive(ToSchema)]
    pub struct RunStats {
        /// Model turns.
        pub steps: u32,
        pub tool_calls: u32,
        pub prompt_tokens: u64,
        pub completion_tokens: u64,
        pub elapsed_ms: u64,
    }

    #[derive(ToSchema)]
    pub struct PluginList {
        /// Always `list`.
        pub object: String,
        pub data: Vec<Plugin>,
    }

    /// A stored plugin.
    #[derive(ToSchema)]
    pub struct Plugin {
        /// SHA-256 of the component's bytes, hex.
        pub id: String,
        /// Always `plugin`.
        pub object: String,
        pub name: String,
        pub world: World,
        pub size_bytes: usize,
        /// Unix seconds of the upload.
        pub created_at: u64,
        pub imports: Vec<PluginImport>,
        pub exports: Vec<PluginExport>,
    }

    /// The deepwasm world a plugin implements.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum World {
        Sampler,
        Reward,
        Tool,
        Agent,
    }

    #[derive(ToSchema)]
    pub struct PluginImport {
        pub name: String,
        /// `deepwasm`, `wasi` or `other`.
        pub provider: String,
    }

    #[derive(ToSchema)]
    pub struct PluginExport {
        pub name: String,
        pub functions: Vec<String>,
    }

    #[derive(ToSchema)]
    pub struct PluginDeleted {
        pub id: String,
        /// Always `plugin.deleted`.
        pub object: String,
        pub deleted: bool,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    /// Every route [`crate::router`] serves, with its methods.
    const ROUTES: &[(&str, &[&str])] = &[
        ("/health", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/v1/models", &["get"]),
        ("/v1/models/{model}", &["get"]),
        ("/v1/usage", &["get"]),
        ("/v1/chat/completions", &["post"]),
        ("/v1/completions", &["post"]),
        ("/v1/embeddings", &["post"]),
        ("/tokenizer_info", &["get"]),
        ("/tokenize", &["post"]),
        ("/detokenize", &["post"]),
        ("/v1/responses", &["post"]),
        ("/v1/responses/{id}", &["get", "delete"]),
        ("/v1/rewards/score", &["post"]),
        ("/v1/rollouts", &["post"]),
        ("/v1/train/grpo", &["post"]),
        ("/v1/agents/{plugin}/runs", &["post"]),
        ("/v1/plugins", &["get", "post"]),
        ("/v1/plugins/{id}", &["get", "delete"]),
        ("/v1/adapters", &["get", "post"]),
        ("/v1/adapters/{name}", &["get", "delete"]),
        ("/v1/adapters/{name}/files/{file}", &["get"]),
    ];

    const METHODS: &[&str] = &["get", "post", "put", "delete", "patch", "head", "options"];

    fn document() -> Value {
        serde_json::from_str(super::json()).expect("the document is JSON")
    }

    fn listed() -> BTreeSet<(String, String)> {
        ROUTES
            .iter()
            .flat_map(|(path, methods)| methods.iter().map(|m| (path.to_string(), m.to_string())))
            .collect()
    }

    /// The `(path, method)`s `router` in lib.rs declares, read from its
    /// source: each `.route("path", ...)` and the method routers in it.
    fn declared() -> BTreeSet<(String, String)> {
        let source = include_str!("lib.rs");
        let start = source.find("pub fn router(").expect("lib.rs has `router`");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("`router` ends")];
        let mut routes = BTreeSet::new();
        for route in body.split(".route(").skip(1) {
            let path = route
                .split('"')
                .nth(1)
                .expect("a route's path is a literal");
            let bytes = route.as_bytes();
            for method in METHODS {
                let call = format!("{method}(");
                for (at, _) in route.match_indices(&call) {
                    // `get(...)` or `.get(...)`, not `plugins::get` or `forget(`.
                    let before = at.checked_sub(1).map(|i| bytes[i]);
                    let word_start = before
                        .is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'));
                    if word_start {
                        routes.insert((path.to_owned(), (*method).to_owned()));
                    }
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_of_the_router_is_described_with_its_methods() {
        assert_eq!(
            declared(),
            listed(),
            "`router` in lib.rs and ROUTES here disagree: describe the route in openapi.rs and list it"
        );
        let doc = document();
        let described: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("the document has paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .into_iter()
                    .flat_map(|ops| ops.keys())
                    .filter(|k| METHODS.contains(&k.as_str()))
                    .map(move |m| (path.clone(), m.clone()))
            })
            .collect();
        let missing: Vec<_> = listed().difference(&described).cloned().collect();
        assert!(missing.is_empty(), "not in the document: {missing:?}");
        let extra: Vec<_> = described.difference(&listed()).cloned().collect();
        assert!(
            extra.is_empty(),
            "in the document but not served: {extra:?}"
        );
    }

    #[test]
    fn only_the_operational_routes_are_public() {
        let doc = document();
        assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"],
            serde_json::json!({"type": "http", "scheme": "bearer"})
        );
        for (path, methods) in ROUTES {
            for method in *methods {
                let security = &doc["paths"][path][method]["security"];
                let public = ["/health", "/metrics", "/openapi.json"].contains(path);
                assert_eq!(
                    security.as_array().is_some_and(Vec::is_empty),
                    public,
                    "{method} {path}: security {security}"
                );
            }
        }
    }

    #[test]
    fn chat_request_has_its_flattened_fields_and_accepts_unknown_ones() {
        let doc = document();
        for (name, fields) in [
            (
                "ChatRequest",
                &["messages", "model", "tools", "max_tokens", "sampler"][..],
            ),
            (
                "CompletionRequest",
                &["prompt", "model", "max_tokens", "stream"][..],
            ),
        ] {
            let schema = &doc["components"]["schemas"][name];
            let properties = schema["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{name} is one object: {schema}"));
            for field in fields {
                assert!(properties.contains_key(*field), "{name} lacks `{field}`");
            }
            assert!(!properties.contains_key("unknown"), "{name}: {schema}");
            assert!(!properties.contains_key("sampling"), "{name}: {schema}");
            assert_ne!(
                schema["additionalProperties"],
                Value::Bool(false),
                "{name} accepts and ignores unknown fields"
            );
        }
    }

    #[test]
    fn strict_request_types_forbid_unknown_fields() {
        let doc = document();
        for name in [
            "RewardRef",
            "SamplerRef",
            "InMessage",
            "ToolDef",
            "ScoreRequest",
            "RolloutRequest",
            "TrainRequest",
            "AgentRunRequest",
            "AgentBudgets",
        ] {
            assert_eq!(
                doc["components"]["schemas"][name]["additionalProperties"],
                Value::Bool(false),
                "{name}"
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        out.push(r);
                    }
                    o.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a local schema: {r}"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} resolves"
            );
        }
    }

    #[test]
    fn rustdoc_links_read_as_code() {
        assert_eq!(
            super::unlink("see [`ignore_unknown`]. [`a`](u) [x] `[b]` [`c"),
            "see `ignore_unknown`. [`a`](u) [x] `[b]` [`c"
        );
        assert!(!super::json().contains("[`ignore_unknown`]"));
    }
}
