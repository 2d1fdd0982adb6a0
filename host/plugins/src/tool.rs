//! Tool plugins: describing their tools and running calls, each call in a
//! fresh instance.

use crate::bindings::{tool_provider, types};
use crate::error::PluginError;
use crate::host::{CallOutput, Capabilities, Wasi};
use crate::plugin::{LoadError, Plugin, World};
use crate::sandbox::Sandbox;

/// Largest tool result accepted, in bytes; a larger one is an error, not a
/// truncated answer the model would misread.
pub const MAX_TOOL_OUTPUT_BYTES: usize = 1 << 20;

/// A tool's answer, with what the plugin wrote while computing it.
#[derive(Clone, Debug)]
pub struct ToolResult {
    pub output: types::ToolOutput,
    pub log: CallOutput,
}

/// A tool plugin ready to be called.
#[derive(Clone)]
pub struct ToolPlugin {
    plugin: Plugin,
    sandbox: Sandbox,
    indices: tool_provider::GuestIndices,
}

impl std::fmt::Debug for ToolPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolPlugin")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl ToolPlugin {
    pub fn new(plugin: Plugin, sandbox: Sandbox) -> Result<Self, LoadError> {
        plugin.expect_world(World::Tool)?;
        let indices = plugin.indices(tool_provider::GuestIndices::new)?;
        Ok(ToolPlugin {
            plugin,
            sandbox,
            indices,
        })
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The same plugin, its calls made with `caps` (a tenant's kv store for
    /// one agent run, say) instead of its sandbox's.
    pub fn with_caps(&self, caps: Capabilities) -> ToolPlugin {
        ToolPlugin {
            sandbox: self.sandbox.clone().with_caps(caps),
            ..self.clone()
        }
    }

    /// The tools this plugin offers.
    pub fn describe(&self) -> Result<Vec<types::ToolSpec>, PluginError> {
        self.run(|guest, store| guest.call_describe(store))
            .map(|(specs, _)| specs)
    }

    /// Run tool `name` with a JSON `arguments` object.
    pub fn call(&self, name: &str, arguments: &str) -> Result<ToolResult, PluginError> {
        let (result, log) = self.run(|guest, store| guest.call_call(store, name, arguments))?;
        let output = result.map_err(|e| PluginError::guest(self.plugin.name(), e))?;
        let len = match &output {
            types::ToolOutput::Text(t) | types::ToolOutput::Json(t) => t.len(),
        };
        if len > MAX_TOOL_OUTPUT_BYTES {
            return Err(PluginError::protocol(
                self.plugin.name(),
                format!(
                    "returned {len} bytes from `{name}`, more than the {MAX_TOOL_OUTPUT_BYTES} allowed"
                ),
            ));
        }
        Ok(ToolResult { output, log })
    }

    fn run<R>(
        &self,
        f: impl FnOnce(
            &tool_provider::Guest,
            &mut wasmtime::Store<crate::host::HostState>,
        ) -> wasmtime::Result<R>,
    ) -> Result<(R, CallOutput), PluginError> {
        let mut session = self.plugin.instantiate(&self.sandbox, Wasi::Live)?;
        let guest = self
            .indices
            .load(&mut session.store, &session.instance)
            .map_err(|e| PluginError::protocol(self.plugin.name(), format!("{e:#}")))?;
        let r = session.call(self.sandbox.limits.call_deadline, 1, |store, _| {
            f(&guest, store)
        })?;
        Ok((r, std::mem::take(&mut session.last_output)))
    }
}
