//! `deepwasm:plugin/tools` for agents: the granted tools, their arguments
//! checked against their schemas, their failures turned into results.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use deepwasm_plugins::{Capabilities, KvAccess, PluginError, ToolPlugin, ToolsAccess, types};

use super::{AgentEvent, AgentFailure, RunState, ToolCallResult, millis_of};

/// Schema errors shown to the agent for one call; the rest are counted.
const SHOWN_SCHEMA_ERRORS: usize = 3;

struct Granted {
    spec: types::ToolSpec,
    plugin: ToolPlugin,
    schema: jsonschema::Validator,
}

/// The tools one run was granted, by name.
pub(super) struct GrantedTools {
    run: Arc<RunState>,
    tools: Vec<Granted>,
}

impl GrantedTools {
    /// Ask each plugin for its tools. Its calls get the tenant's store
    /// (`kv`) and nothing else. A plugin that cannot describe its tools,
    /// a schema that does not compile, or two tools of one name stop the
    /// run before it starts.
    pub(super) fn new(
        run: Arc<RunState>,
        plugins: &[ToolPlugin],
        kv: Option<Arc<dyn KvAccess>>,
    ) -> Result<Self, String> {
        let mut tools: Vec<Granted> = Vec::new();
        for plugin in plugins {
            let plugin = plugin.with_caps(Capabilities {
                kv: kv.clone(),
                ..Capabilities::default()
            });
            let specs = plugin.describe().map_err(|e| e.to_string())?;
            for spec in specs {
                let name = plugin.plugin().name();
                if tools.iter().any(|t| t.spec.name == spec.name) {
                    return Err(format!(
                        "two granted tools are named `{}` (the second from `{name}`)",
                        spec.name
                    ));
                }
                let parameters = super::inference::tool_spec(&spec).map_err(|e| {
                    format!(
                        "`{name}` describes its tool `{}` badly: {}",
                        spec.name,
                        deepwasm_plugins::GuestError::from(e)
                    )
                })?;
                let schema = jsonschema::validator_for(&parameters.parameters).map_err(|e| {
                    format!(
                        "the parameters schema of the tool `{}` from `{name}` does not compile: {e}",
                        spec.name
                    )
                })?;
                tools.push(Granted {
                    spec,
                    plugin: plugin.clone(),
                    schema,
                });
            }
        }
        Ok(GrantedTools { run, tools })
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.spec.name.clone()).collect()
    }

    fn run_call(&self, name: &str, arguments: &str) -> Result<types::ToolOutput, types::Error> {
        let Some(tool) = self.tools.iter().find(|t| t.spec.name == name) else {
            let granted = self.names();
            return Err(types::Error::NotGranted(if granted.is_empty() {
                format!("the tool `{name}` is not granted to this agent, which has no tools")
            } else {
                format!(
                    "the tool `{name}` is not granted to this agent; its tools are {}",
                    granted.join(", ")
                )
            }));
        };
        let value: serde_json::Value = serde_json::from_str(arguments).map_err(|e| {
            types::Error::InvalidInput(format!("the arguments of `{name}` are not JSON: {e}"))
        })?;
        if !value.is_object() {
            return Err(types::Error::InvalidInput(format!(
                "the arguments of `{name}` must be a JSON object"
            )));
        }
        let errors: Vec<String> = tool
            .schema
            .iter_errors(&value)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if !errors.is_empty() {
            let mut message = format!(
                "the arguments of `{name}` do not match its parameters schema: {}",
                errors[..errors.len().min(SHOWN_SCHEMA_ERRORS)].join("; ")
            );
            if errors.len() > SHOWN_SCHEMA_ERRORS {
                message.push_str(&format!(
                    " (and {} more)",
                    errors.len() - SHOWN_SCHEMA_ERRORS
                ));
            }
            return Err(types::Error::InvalidInput(message));
        }
        // The tool may take its own deadline, but never past the run's.
        let left = self.run.time_left();
        if left.is_zero() {
            return Err(self.run.exhaust(self.run.deadline_failure()));
        }
        let output = match tool.plugin.call_within(left, name, arguments) {
            Ok(result) => result.output,
            // The tool's own error passes through as it is.
            Err(PluginError::Guest { error, .. }) => return Err(error.into()),
            // A tool that trapped, overran or broke the protocol is a
            // failed call; the agent goes on.
            Err(e) => {
                return Err(types::Error::Failed(format!(
                    "the tool `{name}` failed: {e}"
                )));
            }
        };
        let len = match &output {
            types::ToolOutput::Text(t) | types::ToolOutput::Json(t) => t.len(),
        };
        let cap = self.run.budgets.max_tool_output_bytes;
        if len > cap {
            return Err(types::Error::LimitExceeded(format!(
                "the tool `{name}` returned {len} bytes, more than the {cap} an agent is given"
            )));
        }
        Ok(output)
    }
}

impl ToolsAccess for GrantedTools {
    fn list(&self) -> Vec<types::ToolSpec> {
        self.tools.iter().map(|t| t.spec.clone()).collect()
    }

    fn call(&self, name: &str, arguments: &str) -> Result<types::ToolOutput, types::Error> {
        let run = &self.run;
        if let Err(refusal) = run.check_live() {
            return Err(
                refusal.unwrap_or_else(|| types::Error::Unavailable("the run was stopped".into()))
            );
        }
        let call = run.tool_calls.load(Ordering::Relaxed) + 1;
        run.emit(AgentEvent::ToolCall {
            call,
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        });
        let started = Instant::now();
        let result = if call > run.budgets.max_tool_calls {
            Err(run.exhaust(AgentFailure::ToolCallBudget {
                max_tool_calls: run.budgets.max_tool_calls,
            }))
        } else {
            run.tool_calls.store(call, Ordering::Relaxed);
            self.run_call(name, arguments)
        };
        run.emit(AgentEvent::ToolResult {
            call,
            name: name.to_owned(),
            result: match &result {
                Ok(output) => ToolCallResult::Output(output.into()),
                Err(e) => ToolCallResult::Error(e.clone().into()),
            },
            elapsed_ms: millis_of(started.elapsed()),
        });
        result
    }
}
