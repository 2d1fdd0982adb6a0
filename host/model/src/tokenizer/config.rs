//! The parts of Hugging Face's `tokenizer_config.json` (and
//! `generation_config.json`) that change how text is tokenized or when
//! generation ends. `tokenizer.json` alone does not say which token is BOS
//! or EOS, nor whether BOS is added: transformers takes those from here.

use std::path::Path;

use serde_json::Value;

use super::TokenizerError;

/// What `tokenizer_config.json` says, with every field optional.
#[derive(Debug, Default)]
pub(crate) struct TokenizerConfig {
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub chat_template: Option<String>,
}

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| TokenizerError::Json {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, message: String) -> TokenizerError {
    TokenizerError::Config {
        path: path.to_owned(),
        message,
    }
}

/// A special token field: `"<s>"`, `{"content": "<s>", ...}` (an
/// AddedToken, as older transformers wrote it), or `null`.
fn token_field(path: &Path, config: &Value, key: &str) -> Result<Option<String>, TokenizerError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(bad(
                path,
                format!("`{key}` is an object without a string `content`"),
            )),
        },
        Some(other) => Err(bad(
            path,
            format!("`{key}` should be a string or an object, not {other}"),
        )),
    }
}

fn bool_field(path: &Path, config: &Value, key: &str) -> Result<Option<bool>, TokenizerError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(bad(
            path,
            format!("`{key}` should be true or false, not {other}"),
        )),
    }
}

/// `chat_template` is either the Jinja source or, in newer files, a list of
/// named templates (`[{"name": "default", "template": "..."}, ...]`); the
/// one named "default" is the chat template, else the first.
fn template_field(path: &Path, config: &Value) -> Result<Option<String>, TokenizerError> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            };
            let chosen = named("default").or_else(|| list.first());
            match chosen.map(|t| t.get("template")) {
                None => Ok(None),
                Some(Some(Value::String(s))) => Ok(Some(s.clone())),
                Some(_) => Err(bad(
                    path,
                    "a `chat_template` entry has no string `template`".into(),
                )),
            }
        }
        Some(other) => Err(bad(
            path,
            format!("`chat_template` should be a string or a list, not {other}"),
        )),
    }
}

impl TokenizerConfig {
    pub(crate) fn read(path: &Path) -> Result<Self, TokenizerError> {
        let config = read_json(path)?;
        if !config.is_object() {
            return Err(bad(path, "not a JSON object".into()));
        }
        Ok(TokenizerConfig {
            add_bos_token: bool_field(path, &config, "add_bos_token")?,
            add_eos_token: bool_field(path, &config, "add_eos_token")?,
            bos_token: token_field(path, &config, "bos_token")?,
            eos_token: token_field(path, &config, "eos_token")?,
            pad_token: token_field(path, &config, "pad_token")?,
            chat_template: template_field(path, &config)?,
        })
    }
}

/// `eos_token_id` from `generation_config.json`: the ids that end
/// generation for this model (a number or a list of numbers).
pub(crate) fn generation_eos_ids(path: &Path) -> Result<Vec<u32>, TokenizerError> {
    let config = read_json(path)?;
    let as_id = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(path, format!("`eos_token_id` holds {v}, not a token id")))
    };
    match config.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TokenizerConfig, TokenizerError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(&path, json).unwrap();
        TokenizerConfig::read(&path)
    }

    #[test]
    fn tokens_as_strings_or_objects() {
        let c = parse(
            r#"{"add_bos_token": true, "bos_token": "<s>",
                "eos_token": {"__type": "AddedToken", "content": "</s>"}, "pad_token": null,
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(c.add_bos_token, Some(true));
        assert_eq!(c.add_eos_token, None);
        assert_eq!(c.bos_token.as_deref(), Some("<s>"));
        assert_eq!(c.eos_token.as_deref(), Some("</s>"));
        assert_eq!(c.pad_token, None);
        assert_eq!(c.chat_template.as_deref(), Some("D"));
    }

    #[test]
    fn bad_fields_name_the_file_and_key() {
        let err = parse(r#"{"add_bos_token": "yes"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("add_bos_token"),
            "{err}"
        );
        let err = parse(r#"{"eos_token": {"id": 2}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eos_token") && err.contains("content"),
            "{err}"
        );
        let err = parse("[1]").unwrap_err().to_string();
        assert!(err.contains("not a JSON object"), "{err}");
    }
}
