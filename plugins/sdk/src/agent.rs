//! The `agent` world: multi-step tasks over the model and granted tools.
//!
//! Implement [`Guest::run`] and export it with
//! [`export_agent!`](crate::export_agent). The host enforces the step, time and
//! token budgets and records every model turn and tool call.
//!
//! Imports available here: [`inference`], [`tools`], [`kv`], [`log`](crate::log).
//!
//! ```no_run
//! use deepwasm_sdk::agent::{Guest, inference, tools};
//! use deepwasm_sdk::types::Error;
//!
//! struct Echo;
//!
//! impl Guest for Echo {
//!     fn run(task: String, _config: String) -> Result<String, Error> {
//!         let granted = tools::available();
//!         Ok(format!("{task} (model {}, {} tools)", inference::model(), granted.len()))
//!     }
//! }
//!
//! deepwasm_sdk::export_agent!(Echo);
//! ```

#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "deepwasm:plugin/agent",
        pub_export_macro: true,
        export_macro_name: "export_agent",
        default_bindings_module: "::deepwasm_sdk::agent::bindings",
        runtime_path: "::deepwasm_sdk::__private::wit_bindgen::rt",
        with: {
            "deepwasm:plugin/types@0.1.0": crate::types,
            "deepwasm:plugin/log@0.1.0": crate::log,
            "deepwasm:plugin/kv@0.1.0": crate::tool::kv,
        },
    });
}

#[doc(inline)]
pub use crate::tool::kv;
#[doc(inline)]
pub use bindings::deepwasm::plugin::{inference, tools};
#[doc(inline)]
pub use bindings::exports::deepwasm::plugin::runner::Guest;
