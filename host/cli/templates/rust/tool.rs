//! `{{name}}`: a deepwasm tool plugin (world `tool`).
//!
//! One tool, `echo`: answers `{"text": ..., "chars": N}` with the text it
//! was given and its length in Unicode characters.

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::tool::{self, Guest};
use deepwasm_sdk::types::{Error, ToolOutput, ToolSpec};

/// The JSON Schema of the arguments; the host checks calls against it.
const SCHEMA: &str = r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}"#;

struct Plugin;

impl Guest for Plugin {
    fn describe() -> Vec<ToolSpec> {
        vec![tool::spec(
            "echo",
            "Echoes a text and counts its characters.",
            SCHEMA,
        )]
    }

    fn call(name: String, arguments: String) -> Result<ToolOutput, Error> {
        if name != "echo" {
            return Err(Error::not_found(format!(
                "no tool named \"{name}\"; this plugin has only \"echo\""
            )));
        }
        let args = Fields::parse("arguments", &arguments)?;
        args.only(&["text"])?;
        let text: String = args.require("text")?;
        let chars = text.chars().count();
        let answer = serde_json::json!({ "text": text, "chars": chars });
        Ok(ToolOutput::Json(answer.to_string()))
    }
}

deepwasm_sdk::export_tool!(Plugin);
