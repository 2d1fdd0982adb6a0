//! The `tool` world: tools that models and agents can call.
//!
//! Implement [`Guest::describe`] and [`Guest::call`] and export them with
//! [`export_tool!`](crate::export_tool).
//!
//! Imports available here: [`kv`], [`log`](crate::log).
//!
//! ```no_run
//! use deepwasm_sdk::config::Fields;
//! use deepwasm_sdk::tool::{self, Guest};
//! use deepwasm_sdk::types::{Error, ToolOutput, ToolSpec};
//!
//! struct Upper;
//!
//! impl Guest for Upper {
//!     fn describe() -> Vec<ToolSpec> {
//!         vec![tool::spec(
//!             "upper",
//!             "Upper-cases a text.",
//!             r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#,
//!         )]
//!     }
//!
//!     fn call(name: String, arguments: String) -> Result<ToolOutput, Error> {
//!         if name != "upper" {
//!             return Err(Error::not_found(format!("no tool {name:?}")));
//!         }
//!         let text: String = Fields::parse("arguments", &arguments)?.require("text")?;
//!         Ok(ToolOutput::Text(text.to_uppercase()))
//!     }
//! }
//!
//! deepwasm_sdk::export_tool!(Upper);
//! ```

#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "deepwasm:plugin/tool",
        pub_export_macro: true,
        export_macro_name: "export_tool",
        default_bindings_module: "::deepwasm_sdk::tool::bindings",
        runtime_path: "::deepwasm_sdk::__private::wit_bindgen::rt",
        with: {
            "deepwasm:plugin/types@0.1.0": crate::types,
            "deepwasm:plugin/log@0.1.0": crate::log,
        },
    });
}

#[doc(inline)]
pub use bindings::deepwasm::plugin::kv;
#[doc(inline)]
pub use bindings::exports::deepwasm::plugin::tool_provider::Guest;

use crate::types::ToolSpec;

/// A [`ToolSpec`] from its parts; `parameters` is the JSON Schema of the
/// arguments object.
pub fn spec(name: &str, description: &str, parameters: &str) -> ToolSpec {
    ToolSpec {
        name: name.to_string(),
        description: description.to_string(),
        parameters: parameters.to_string(),
    }
}
