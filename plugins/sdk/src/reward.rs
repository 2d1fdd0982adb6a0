//! The `reward` world: score completions like a rule-based RL reward.
//!
//! Implement [`Guest::score`] and export it with
//! [`export_reward!`](crate::export_reward). Rewards run with fuel metering and
//! no real clock or randomness, so the same inputs must give the same scores.
//!
//! Imports available here: [`log`](crate::log).
//!
//! ```no_run
//! use deepwasm_sdk::reward::{Guest, Sample};
//! use deepwasm_sdk::types::Error;
//!
//! /// 1.0 for completions that end with a period.
//! struct EndsWithPeriod;
//!
//! impl Guest for EndsWithPeriod {
//!     fn score(samples: Vec<Sample>, _config: String) -> Result<Vec<Option<f64>>, Error> {
//!         Ok(samples
//!             .iter()
//!             .map(|s| Some(if s.completion.trim_end().ends_with('.') { 1.0 } else { 0.0 }))
//!             .collect())
//!     }
//! }
//!
//! deepwasm_sdk::export_reward!(EndsWithPeriod);
//! ```

#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "deepwasm:plugin/reward",
        pub_export_macro: true,
        export_macro_name: "export_reward",
        default_bindings_module: "::deepwasm_sdk::reward::bindings",
        runtime_path: "::deepwasm_sdk::__private::wit_bindgen::rt",
        with: {
            "deepwasm:plugin/types@0.1.0": crate::types,
            "deepwasm:plugin/log@0.1.0": crate::log,
        },
    });
}

#[doc(inline)]
pub use bindings::exports::deepwasm::plugin::scorer::{Guest, Sample};
