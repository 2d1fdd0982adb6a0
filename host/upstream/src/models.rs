//! `GET /v1/models`: which model the upstream serves, and its context.

use serde_json::Value;

use crate::config::Secret;
use crate::error::{UpstreamError, excerpt};

/// What the upstream serves, as its model list says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The name to send as `"model"`.
    pub model: String,
    /// Prompt and completion tokens together at most, when the list says:
    /// `max_model_len` (vLLM, SGLang, deepwasm) or llama-server's
    /// `meta.n_ctx`, else its `meta.n_ctx_train`.
    pub max_model_len: Option<usize>,
    pub owned_by: Option<String>,
}

/// The entry for `wanted` in a model list (the first entry without one).
pub(crate) fn served(
    body: &[u8],
    wanted: Option<&str>,
    key: Option<&Secret>,
) -> Result<Served, UpstreamError> {
    let malformed = |what: &str| {
        UpstreamError::Malformed(format!(
            "/v1/models {what}: `{}`",
            excerpt(&String::from_utf8_lossy(body), key)
        ))
    };
    let list: Value = serde_json::from_slice(body).map_err(|_| malformed("is not JSON"))?;
    let entries = list
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("has no `data` list"))?;
    let ids = entries
        .iter()
        .map(|e| e.get("id").and_then(Value::as_str))
        .collect::<Option<Vec<&str>>>()
        .ok_or_else(|| malformed("has an entry without a string `id`"))?;
    let index = match wanted {
        _ if ids.is_empty() => return Err(malformed("lists no models")),
        None => 0,
        Some(name) => ids.iter().position(|id| *id == name).ok_or_else(|| {
            UpstreamError::Unsupported(format!(
                "the upstream does not serve the model `{name}`; it serves: {}",
                excerpt(&ids.join(", "), key)
            ))
        })?,
    };
    let entry = &entries[index];
    let count = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
    };
    let meta = entry.get("meta");
    Ok(Served {
        model: ids[index].to_owned(),
        max_model_len: count(entry.get("max_model_len"))
            .or_else(|| count(meta.and_then(|m| m.get("n_ctx"))))
            .or_else(|| count(meta.and_then(|m| m.get("n_ctx_train")))),
        owned_by: entry
            .get("owned_by")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_without_a_context_give_none() {
        let s = served(br#"{"data": [{"id": "m", "owned_by": null}]}"#, None, None).unwrap();
        assert_eq!(
            s,
            Served {
                model: "m".into(),
                max_model_len: None,
                owned_by: None
            }
        );
    }

    #[test]
    fn broken_lists_are_malformed() {
        for body in [
            &b"<html>"[..],
            b"{}",
            br#"{"data": [{"name": "m"}]}"#,
            br#"{"data": []}"#,
        ] {
            assert!(
                matches!(served(body, None, None), Err(UpstreamError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
