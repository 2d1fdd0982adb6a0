//! The one place WIT bindings are generated for the host.
//!
//! Everything comes from the `host` world in `wit/worlds.wit`: it imports every
//! interface the host can provide and exports every plugin interface, so the
//! generated code covers all four plugin worlds. A plugin implements one of
//! those worlds; we load its exports interface by interface
//! (`GuestIndices::new` / `load`) rather than through the `Host` world struct.

mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "host",
        imports: {
            // Host functions may trap: a broken invariant in the host, or a
            // capability missing from the store, must never be papered over
            // with a guest-visible value.
            default: trappable,
        },
        with: {
            "deepwasm:plugin/logits.logits": crate::host::logits::LogitsHandle,
        },
    });
}

pub use generated::Host_;
pub use generated::deepwasm::plugin::{inference, kv, log, logits, tokenizer, tools, types};
pub use generated::exports::deepwasm::plugin::{controller, runner, scorer, tool_provider};
