//! Errors as the OpenAI API shapes them:
//! `{"error": {"message", "type", "param", "code"}}` with a fitting status.
//!
//! The `type`s are OpenAI's: `invalid_request_error` for every client
//! error it has (a bad key, an unknown model or route included, told apart
//! by `code`), `tokens` or `requests` for a rate limit (which limit was
//! hit), `server_error` for ours. Two are this server's own: 403
//! `permission_error` (a grant the tenant lacks) and 422 `plugin_error` (a
//! tenant's plugin failed).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error `type`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying (429s).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed or a parameter is out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the parameter.
    /// The message names the parameter (prefixed when it does not already),
    /// for clients that show only the message.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let last = param
            .rsplit(['.', '['])
            .next()
            .unwrap_or(param)
            .trim_end_matches(']');
        let message = if message.contains(last) {
            message
        } else {
            format!("`{param}`: {message}")
        };
        let mut e = Self::invalid(message);
        e.param = Some(param.to_owned());
        e
    }

    /// 400 with OpenAI's code for a prompt longer than the context, which
    /// clients key their context-window handling on.
    pub fn context_length_exceeded(message: impl Into<String>) -> Self {
        let mut e = Self::invalid(message);
        e.param = Some("messages".into());
        e.code = Some("context_length_exceeded");
        e
    }

    /// 401: no or an unknown API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message);
        e.code = Some("invalid_api_key");
        e
    }

    /// 403: the tenant may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// 404 for a plugin the tenant does not have (another tenant's plugin
    /// answers the same: its existence is not revealed).
    pub fn plugin_not_found(param: &str, plugin: &str) -> Self {
        let mut e = Self::not_found(format!(
            "`{param}`: no plugin `{plugin}` (upload it to /v1/plugins)"
        ));
        e.param = Some(param.to_owned());
        e.code = Some("plugin_not_found");
        e
    }

    /// 404 for a model this server does not serve.
    pub fn model_not_found(model: &str, served: &str) -> Self {
        let mut e = Self::not_found(format!(
            "The model `{model}` does not exist; this server serves `{served}`"
        ));
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
    }

    /// 422: the component is well-formed but compiling it passed the
    /// server's cap on compile time or memory; the same bytes always will.
    pub fn compile_limit(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            message,
        );
        e.code = Some("compile_limit_exceeded");
        e
    }

    /// 429 with a Retry-After: too many requests (or plugin instances,
    /// or compiles) at once.
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "requests", message);
        e.code = Some("rate_limit_exceeded");
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// 429 with a Retry-After: the tenant's tokens per minute are spent.
    pub fn tokens_rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::rate_limited(message, retry_after);
        e.kind = "tokens";
        e
    }

    /// 503 with a Retry-After: the server is at capacity.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// 502 or 504: the upstream engine this server generates on failed,
    /// or did not answer in time; the message says which and how.
    pub fn upstream(status: u16, message: impl Into<String>) -> Self {
        let (status, code) = match status {
            504 => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
        };
        let mut e = Self::new(status, "server_error", message);
        e.code = Some(code);
        e
    }

    /// 500: a failure on our side; the message still says what failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 422: a plugin refused or failed (its error names it).
    pub fn plugin(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "plugin_error", message);
        e.code = Some("plugin_failed");
        e
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// A generation failure as the client sees it: bad input is theirs (400),
/// a sampler plugin's failure names the plugin (422), the rest is ours.
impl From<deepwasm_engine::GenerateError> for ApiError {
    fn from(e: deepwasm_engine::GenerateError) -> Self {
        use deepwasm_engine::GenerateError as G;
        let message = error_chain(&e);
        match e {
            G::PromptTooLong { .. } | G::CacheBudget { .. } => {
                ApiError::context_length_exceeded(message)
            }
            G::Invalid(_) | G::Template(_) | G::Tokenize(_) => ApiError::invalid(message),
            // The tenant's instance share is in use: its own load, so
            // come back shortly.
            G::Sampler(deepwasm_engine::SamplerError {
                source:
                    Some(deepwasm_plugins::PluginError::Limit {
                        limit:
                            deepwasm_plugins::LimitHit::Instances(_)
                            | deepwasm_plugins::LimitHit::Throttled(_),
                        ..
                    }),
                ..
            }) => ApiError::rate_limited(message, 1),
            G::Sampler(_) => ApiError::plugin(message),
            G::Overloaded { .. } | G::DeviceMemory(_) => ApiError::unavailable(message, 1),
            G::Unsupported(_) => {
                let mut e = ApiError::invalid(message);
                e.code = Some("unsupported_over_upstream");
                e
            }
            G::Upstream {
                status,
                retry_after,
                ..
            } => match status {
                400 => ApiError::invalid(message),
                503 => ApiError::unavailable(message, retry_after.unwrap_or(1)),
                other => ApiError::upstream(other, message),
            },
            G::Model(_) | G::Cancelled => ApiError::internal(message),
        }
    }
}

/// An error and its causes, joined.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_text = c.to_string();
        if !s.contains(&c_text) {
            s.push_str(": ");
            s.push_str(&c_text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use deepwasm_engine::GenerateError;

    #[test]
    fn a_pass_out_of_device_memory_is_a_503_to_retry() {
        // The text cudarc gives a failed allocation.
        let text = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        assert!(deepwasm_engine::request::is_out_of_memory(text));
        assert!(!deepwasm_engine::request::is_out_of_memory(
            "shape mismatch in matmul"
        ));
        let e = ApiError::from(GenerateError::DeviceMemory(text.into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(1));
        assert!(e.message.contains("ran out of memory"), "{}", e.message);
        let e = ApiError::from(GenerateError::Cancelled);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
