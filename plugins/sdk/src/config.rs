//! Reading JSON configs and arguments with errors that name the bad field.
//!
//! Plugins get their configuration (and tools their arguments) as JSON
//! strings. [`Fields`] reads a JSON object field by field, so that every error
//! is an [`Error::InvalidInput`] saying which field was wrong and why:
//!
//! ```
//! use deepwasm_sdk::config::Fields;
//! use deepwasm_sdk::types::Error;
//!
//! fn settings(config: &str) -> Result<(u32, Option<u64>), Error> {
//!     let cfg = Fields::parse("config", config)?;
//!     cfg.only(&["k", "seed"])?;
//!     let k: u32 = cfg.get_or("k", 40)?;
//!     let seed: Option<u64> = cfg.get("seed")?;
//!     Ok((k, seed))
//! }
//!
//! assert_eq!(settings("{}").unwrap(), (40, None));
//! let err = settings(r#"{"k": "x"}"#).unwrap_err();
//! assert_eq!(err.message(), "config.k: invalid type: string \"x\", expected u32");
//! assert!(settings(r#"{"kk": 1}"#).is_err());
//! ```
//!
//! [`parse`] deserialises a whole document into a `serde` type in one go; its
//! messages are serde's (which name missing and unknown fields, but give only
//! a line and column for a value of the wrong type).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::types::Error;

/// Deserialise `json` into `T`. `what` names the document in the error
/// (`"config"`, `"arguments"`, ...). Blank input reads as `{}`.
pub fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, Error> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(json).map_err(|e| Error::invalid_input(format!("{what}: {e}")))
}

/// A JSON object read field by field.
#[derive(Clone, Debug)]
pub struct Fields {
    what: String,
    map: Map<String, Value>,
}

impl Fields {
    /// Parse `json`, which must be an object; blank input reads as `{}`.
    /// `what` prefixes the field names in errors (`config.k`).
    pub fn parse(what: &str, json: &str) -> Result<Self, Error> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        match serde_json::from_str(json) {
            Ok(Value::Object(map)) => Ok(Fields {
                what: what.to_string(),
                map,
            }),
            Ok(other) => Err(Error::invalid_input(format!(
                "{what}: expected a JSON object, got {}",
                kind(&other)
            ))),
            Err(e) => Err(Error::invalid_input(format!("{what}: {e}"))),
        }
    }

    /// Fail on any field not named in `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), Error> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(Error::invalid_input(format!(
                "{}.{k}: unknown field; expected one of: {}",
                self.what,
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// The field `name` as a `T`; `None` when it is absent or `null`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => T::deserialize(v).map(Some).map_err(|e| self.error(name, e)),
        }
    }

    /// The field `name` as a `T`, or `default` when it is absent or `null`.
    pub fn get_or<T: DeserializeOwned>(&self, name: &str, default: T) -> Result<T, Error> {
        Ok(self.get(name)?.unwrap_or(default))
    }

    /// The field `name` as a `T`; an error when it is absent or `null`.
    pub fn require<T: DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        self.get(name)?
            .ok_or_else(|| Error::invalid_input(format!("{}.{name}: missing", self.what)))
    }

    /// The raw JSON value of the field `name`, if present.
    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    /// An [`Error::InvalidInput`] about the field `name`.
    pub fn error(&self, name: &str, why: impl std::fmt::Display) -> Error {
        Error::invalid_input(format!("{}.{name}: {why}", self.what))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_the_bad_field() {
        let f = Fields::parse("config", r#"{"k": "x", "t": 0.5, "n": null}"#).unwrap();
        let e = f.get::<u32>("k").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput(m) if m.starts_with("config.k: ")),
            "{e}"
        );
        assert_eq!(f.get_or("t", 1.0f32).unwrap(), 0.5);
        assert_eq!(f.get::<u32>("n").unwrap(), None);
        assert_eq!(f.get_or("absent", 7u32).unwrap(), 7);
        assert!(
            f.require::<u32>("absent")
                .unwrap_err()
                .message()
                .contains("config.absent")
        );
        assert!(
            f.only(&["k", "t"])
                .unwrap_err()
                .message()
                .contains("config.n")
        );
        assert!(f.only(&["k", "t", "n"]).is_ok());
    }

    #[test]
    fn blank_and_non_objects() {
        assert!(Fields::parse("config", "  ").is_ok());
        assert!(
            Fields::parse("config", "[1]")
                .unwrap_err()
                .message()
                .contains("an array")
        );
        assert!(Fields::parse("config", "{").is_err());
        #[derive(Debug, serde::Deserialize)]
        struct C {
            #[allow(dead_code)]
            a: u8,
        }
        assert!(
            parse::<C>("config", "{}")
                .unwrap_err()
                .message()
                .contains("`a`")
        );
    }
}
