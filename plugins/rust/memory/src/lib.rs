//! `memory`: a tool plugin that remembers text under keys, in the host's
//! key-value store (the `kv` import, private to the plugin's tenant).
//!
//! Every key is stored as `memory/<key>`, so the memory never collides with
//! what other plugins of the same tenant keep in the store; `list` shows the
//! keys without that prefix. Keys are used exactly as given (case and
//! whitespace matter) and must be 1 to 256 bytes long; a `list` prefix at
//! most 256 bytes. Values are any text, stored as UTF-8; their size is
//! bounded only by the tenant's kv quota.
//!
//! | tool       | arguments                            | output |
//! |------------|--------------------------------------|--------|
//! | `remember` | `{"key": string, "value": string}`   | `text` `remembered "<key>"`; a value already under the key is replaced |
//! | `recall`   | `{"key": string}`                    | `text`: the value, as stored; `not-found` when nothing is remembered under the key |
//! | `forget`   | `{"key": string}`                    | `text` `forgot "<key>"`, or `nothing was remembered under "<key>"` (not an error) |
//! | `list`     | `{"prefix"?: string}`                | `json` `{"keys": [...], "truncated": bool}`: the remembered keys that start with `prefix` (all when absent), sorted, at most 200 (`truncated` says whether more exist) |
//!
//! Keys (`<key>` above) are written with JSON string escaping. A value that
//! is not valid UTF-8 (written under `memory/` by another plugin of the
//! tenant) is recalled with U+FFFD replacing its invalid bytes.
//!
//! Errors: a missing, mistyped or unknown argument, an empty key or a key or
//! prefix over 256 bytes is `invalid-input`; an unknown tool is `not-found`;
//! errors of the `kv` import (`limit-exceeded` when the quota would be
//! passed, `not-granted` when the tenant has no store, …) are returned
//! unchanged, same kind and message.

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::tool::{self, Guest, kv};
use deepwasm_sdk::types::{Error, ToolOutput, ToolSpec};

/// The prefix of every key this plugin stores.
pub const PREFIX: &str = "memory/";
/// Longest key or list prefix, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Most keys one `list` returns.
pub const MAX_LIST: usize = 200;

const KEY_VALUE: &str = r#"{"type":"object","properties":{"key":{"type":"string","description":"a short name for the fact"},"value":{"type":"string","description":"the text to remember"}},"required":["key","value"],"additionalProperties":false}"#;
const KEY: &str = r#"{"type":"object","properties":{"key":{"type":"string"}},"required":["key"],"additionalProperties":false}"#;
const PREFIX_ARG: &str = r#"{"type":"object","properties":{"prefix":{"type":"string","description":"only keys that start with this"}},"additionalProperties":false}"#;

/// The key-value store the memory lives in: the `kv` import in the plugin,
/// a map in tests.
pub trait Store {
    /// The value under `key`, if any.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Store `value` under `key`.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), Error>;
    /// Remove `key`; true when it existed.
    fn delete(&mut self, key: &str) -> Result<bool, Error>;
    /// The keys that start with `prefix`, sorted.
    fn keys(&mut self, prefix: &str) -> Result<Vec<String>, Error>;
}

/// The host's `kv` import.
pub struct Kv;

impl Store for Kv {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        kv::get(key)
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
        kv::set(key, value)
    }
    fn delete(&mut self, key: &str) -> Result<bool, Error> {
        kv::delete(key)
    }
    fn keys(&mut self, prefix: &str) -> Result<Vec<String>, Error> {
        kv::keys(prefix)
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid_input("arguments.key: empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid_input(format!(
            "arguments.key: {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

fn quoted(key: &str) -> String {
    serde_json::Value::from(key).to_string()
}

/// Run the tool `name` with these arguments against `store`.
pub fn run(store: &mut impl Store, name: &str, arguments: &str) -> Result<ToolOutput, Error> {
    let args = Fields::parse("arguments", arguments)?;
    match name {
        "remember" => {
            args.only(&["key", "value"])?;
            let key: String = args.require("key")?;
            let value: String = args.require("value")?;
            check_key(&key)?;
            store.set(&format!("{PREFIX}{key}"), value.as_bytes())?;
            Ok(ToolOutput::Text(format!("remembered {}", quoted(&key))))
        }
        "recall" => {
            args.only(&["key"])?;
            let key: String = args.require("key")?;
            check_key(&key)?;
            match store.get(&format!("{PREFIX}{key}"))? {
                Some(bytes) => Ok(ToolOutput::Text(
                    String::from_utf8_lossy(&bytes).into_owned(),
                )),
                None => Err(Error::not_found(format!(
                    "nothing is remembered under {}",
                    quoted(&key)
                ))),
            }
        }
        "forget" => {
            args.only(&["key"])?;
            let key: String = args.require("key")?;
            check_key(&key)?;
            Ok(ToolOutput::Text(
                if store.delete(&format!("{PREFIX}{key}"))? {
                    format!("forgot {}", quoted(&key))
                } else {
                    format!("nothing was remembered under {}", quoted(&key))
                },
            ))
        }
        "list" => {
            args.only(&["prefix"])?;
            let prefix: String = args.get_or("prefix", String::new())?;
            if prefix.len() > MAX_KEY_BYTES {
                return Err(Error::invalid_input(format!(
                    "arguments.prefix: {} bytes; the limit is {MAX_KEY_BYTES}",
                    prefix.len()
                )));
            }
            let all = store.keys(&format!("{PREFIX}{prefix}"))?;
            let truncated = all.len() > MAX_LIST;
            let keys: Vec<&str> = all
                .iter()
                .filter_map(|k| k.strip_prefix(PREFIX))
                .take(MAX_LIST)
                .collect();
            Ok(ToolOutput::Json(
                serde_json::json!({ "keys": keys, "truncated": truncated }).to_string(),
            ))
        }
        _ => Err(Error::not_found(format!(
            "no tool named {name:?}; this plugin has remember, recall, forget and list"
        ))),
    }
}

struct Memory;

impl Guest for Memory {
    fn describe() -> Vec<ToolSpec> {
        vec![
            tool::spec(
                "remember",
                "Remember a text under a key, replacing what the key held.",
                KEY_VALUE,
            ),
            tool::spec("recall", "Recall the text remembered under a key.", KEY),
            tool::spec("forget", "Forget the text remembered under a key.", KEY),
            tool::spec(
                "list",
                "List the remembered keys, optionally only those starting with a prefix.",
                PREFIX_ARG,
            ),
        ]
    }

    fn call(name: String, arguments: String) -> Result<ToolOutput, Error> {
        run(&mut Kv, &name, &arguments)
    }
}

deepwasm_sdk::export_tool!(Memory);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A map with an optional byte quota, like the host's store.
    #[derive(Default)]
    struct Map {
        entries: BTreeMap<String, Vec<u8>>,
        quota: Option<usize>,
        denied: bool,
    }

    impl Map {
        fn granted(&self) -> Result<(), Error> {
            if self.denied {
                Err(Error::NotGranted("kv is not granted to this tenant".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Store for Map {
        fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
            self.granted()?;
            Ok(self.entries.get(key).cloned())
        }
        fn set(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
            self.granted()?;
            let used: usize = self
                .entries
                .iter()
                .filter(|(k, _)| *k != key)
                .map(|(k, v)| k.len() + v.len())
                .sum();
            if self
                .quota
                .is_some_and(|q| used + key.len() + value.len() > q)
            {
                return Err(Error::LimitExceeded("kv quota of 64 bytes".into()));
            }
            self.entries.insert(key.to_string(), value.to_vec());
            Ok(())
        }
        fn delete(&mut self, key: &str) -> Result<bool, Error> {
            self.granted()?;
            Ok(self.entries.remove(key).is_some())
        }
        fn keys(&mut self, prefix: &str) -> Result<Vec<String>, Error> {
            self.granted()?;
            Ok(self
                .entries
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
    }

    fn out(store: &mut Map, name: &str, args: &str) -> String {
        match run(store, name, args).unwrap() {
            ToolOutput::Text(t) | ToolOutput::Json(t) => t,
        }
    }

    #[test]
    fn remember_recall_forget() {
        let mut m = Map::default();
        assert_eq!(
            out(&mut m, "remember", r#"{"key":"city","value":"Paris"}"#),
            r#"remembered "city""#
        );
        assert_eq!(m.entries.get("memory/city").unwrap(), b"Paris");
        assert_eq!(out(&mut m, "recall", r#"{"key":"city"}"#), "Paris");
        out(&mut m, "remember", r#"{"key":"city","value":"Tokyo"}"#);
        assert_eq!(out(&mut m, "recall", r#"{"key":"city"}"#), "Tokyo");
        assert!(matches!(
            run(&mut m, "recall", r#"{"key":"City"}"#),
            Err(Error::NotFound(msg)) if msg == r#"nothing is remembered under "City""#
        ));
        assert_eq!(
            out(&mut m, "forget", r#"{"key":"city"}"#),
            r#"forgot "city""#
        );
        assert_eq!(
            out(&mut m, "forget", r#"{"key":"city"}"#),
            r#"nothing was remembered under "city""#
        );
        assert!(matches!(
            run(&mut m, "recall", r#"{"key":"city"}"#),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn list_strips_the_prefix_and_ignores_other_keys() {
        let mut m = Map::default();
        m.entries.insert("other/x".into(), b"1".to_vec());
        m.entries.insert("memoryless".into(), b"1".to_vec());
        for key in ["b", "a/1", "a/2"] {
            out(
                &mut m,
                "remember",
                &format!(r#"{{"key":"{key}","value":"v"}}"#),
            );
        }
        assert_eq!(
            out(&mut m, "list", "{}"),
            r#"{"keys":["a/1","a/2","b"],"truncated":false}"#
        );
        assert_eq!(
            out(&mut m, "list", r#"{"prefix":"a/"}"#),
            r#"{"keys":["a/1","a/2"],"truncated":false}"#
        );
        assert_eq!(
            out(&mut m, "list", r#"{"prefix":"zz"}"#),
            r#"{"keys":[],"truncated":false}"#
        );
        for i in 0..MAX_LIST {
            out(
                &mut m,
                "remember",
                &format!(r#"{{"key":"n{i:03}","value":""}}"#),
            );
        }
        let listed: serde_json::Value = serde_json::from_str(&out(&mut m, "list", "{}")).unwrap();
        assert_eq!(listed["keys"].as_array().unwrap().len(), MAX_LIST);
        assert_eq!(listed["truncated"], true);
    }

    #[test]
    fn store_errors_pass_through() {
        let mut m = Map {
            quota: Some(64),
            ..Map::default()
        };
        let big = "x".repeat(100);
        assert!(matches!(
            run(&mut m, "remember", &format!(r#"{{"key":"k","value":"{big}"}}"#)),
            Err(Error::LimitExceeded(msg)) if msg == "kv quota of 64 bytes"
        ));
        let mut m = Map {
            denied: true,
            ..Map::default()
        };
        for (tool, args) in [
            ("remember", r#"{"key":"k","value":"v"}"#),
            ("recall", r#"{"key":"k"}"#),
            ("forget", r#"{"key":"k"}"#),
            ("list", "{}"),
        ] {
            assert!(
                matches!(run(&mut m, tool, args), Err(Error::NotGranted(_))),
                "{tool}"
            );
        }
    }

    #[test]
    fn bad_arguments() {
        let mut m = Map::default();
        let msg = |r: Result<ToolOutput, Error>| match r {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("expected invalid-input, got {other:?}"),
        };
        assert_eq!(
            msg(run(&mut m, "recall", r#"{"key":""}"#)),
            "arguments.key: empty"
        );
        assert_eq!(msg(run(&mut m, "recall", "{}")), "arguments.key: missing");
        assert!(msg(run(&mut m, "remember", r#"{"key":"k"}"#)).contains("arguments.value"));
        assert!(msg(run(&mut m, "recall", r#"{"key":"k","x":1}"#)).contains("arguments.x"));
        assert!(msg(run(&mut m, "recall", r#"{"key":1}"#)).contains("arguments.key"));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(
            msg(run(&mut m, "forget", &format!(r#"{{"key":"{long}"}}"#))).contains("257 bytes")
        );
        assert!(msg(run(&mut m, "list", &format!(r#"{{"prefix":"{long}"}}"#))).contains("prefix"));
        assert!(matches!(
            run(&mut m, "erase", "{}"),
            Err(Error::NotFound(_))
        ));
        assert!(m.entries.is_empty());
    }

    #[test]
    fn keys_are_exact_and_values_may_be_anything() {
        let mut m = Map::default();
        out(
            &mut m,
            "remember",
            r#"{"key":" a b ","value":"line 1\nline \"2\" é"}"#,
        );
        assert_eq!(
            out(&mut m, "recall", r#"{"key":" a b "}"#),
            "line 1\nline \"2\" é"
        );
        assert!(run(&mut m, "recall", r#"{"key":"a b"}"#).is_err());
        m.entries
            .insert("memory/bin".into(), vec![b'o', 0xff, b'k']);
        assert_eq!(out(&mut m, "recall", r#"{"key":"bin"}"#), "o\u{fffd}k");
        assert_eq!(
            out(&mut m, "remember", r#"{"key":"q\"k","value":""}"#),
            r#"remembered "q\"k""#
        );
    }
}
