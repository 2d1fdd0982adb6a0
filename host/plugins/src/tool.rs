//! Tool plugins: describing their tools and running calls, each call in a
//! fresh instance.

use std::time::{Duration, Instant};

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
        self.run(None, |guest, store| guest.call_describe(store))
            .map(|(specs, _)| specs)
    }

    /// Run tool `name` with a JSON `arguments` object.
    pub fn call(&self, name: &str, arguments: &str) -> Result<ToolResult, PluginError> {
        self.call_by(None, name, arguments)
    }

    /// `call`, with instantiation and the call together bounded by
    /// `deadline` as well as by the sandbox's limits: what an agent's tool
    /// call gets when its run has less time left than a tool call's
    /// deadline.
    pub fn call_within(
        &self,
        deadline: Duration,
        name: &str,
        arguments: &str,
    ) -> Result<ToolResult, PluginError> {
        self.call_by(Some(Instant::now() + deadline), name, arguments)
    }

    fn call_by(
        &self,
        by: Option<Instant>,
        name: &str,
        arguments: &str,
    ) -> Result<ToolResult, PluginError> {
        let (result, log) = self.run(by, |guest, store| guest.call_call(store, name, arguments))?;
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

    /// Run `f` in a fresh instance, within the sandbox's limits and, when
    /// given, by the instant `by` (instantiation included).
    fn run<R>(
        &self,
        by: Option<Instant>,
        f: impl FnOnce(
            &tool_provider::Guest,
            &mut wasmtime::Store<crate::host::HostState>,
        ) -> wasmtime::Result<R>,
    ) -> Result<(R, CallOutput), PluginError> {
        let left = || {
            by.map(|t| {
                t.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            })
        };
        let mut sandbox = self.sandbox.clone();
        if let Some(left) = left() {
            sandbox.limits.setup_deadline = sandbox.limits.setup_deadline.min(left);
        }
        let mut session = self.plugin.instantiate(&sandbox, Wasi::Live)?;
        let guest = self
            .indices
            .load(&mut session.store, &session.instance)
            .map_err(|e| PluginError::protocol(self.plugin.name(), format!("{e:#}")))?;
        let deadline = match left() {
            Some(left) => sandbox.limits.call_deadline.min(left),
            None => sandbox.limits.call_deadline,
        };
        let r = session.call(deadline, 1, |store, _| f(&guest, store))?;
        Ok((r, std::mem::take(&mut session.last_output)))
    }
}
