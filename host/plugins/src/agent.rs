//! Agent plugins: one call of `runner.run` per task, in a fresh instance
//! whose capabilities (inference, tools, kv) are the run's own.
//!
//! An agent spends most of its wall time waiting on the host (the model
//! generating, tools running), so its deadline is the whole run's, not a
//! per-step one. The caller can also stop a run early through
//! [`AgentControl::stop`]: the instance is interrupted within one epoch
//! tick of the next moment it runs guest code, and the call ends with
//! [`PluginError::Limit`] (for the deadline) or a trap naming the stop.
//! The agent's `log` messages reach [`AgentControl::on_log`] as they are
//! written, in order with whatever its host calls do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

use crate::bindings::runner;
use crate::error::PluginError;
use crate::host::{CallOutput, Capabilities, LogLine, Wasi};
use crate::plugin::{LoadError, Plugin, World};
use crate::sandbox::Sandbox;

/// Receives an agent's `log` messages while it runs.
pub type LogSink = Arc<dyn Fn(&LogLine) + Send + Sync>;

/// How one run is bounded and observed.
#[derive(Clone)]
pub struct AgentControl {
    /// Wall time for the whole run; capped by the sandbox's `call_deadline`.
    pub deadline: Duration,
    /// Set it to interrupt the run.
    pub stop: Arc<AtomicBool>,
    /// Gets every `log` message the agent keeps (within its log budget) as
    /// it is written.
    pub on_log: Option<LogSink>,
}

impl std::fmt::Debug for AgentControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentControl")
            .field("deadline", &self.deadline)
            .field("stop", &self.stop)
            .field("on_log", &self.on_log.is_some())
            .finish()
    }
}

/// What a finished run returned.
#[derive(Clone, Debug)]
pub struct AgentAnswer {
    pub answer: String,
    /// What the agent wrote (its `log` messages included).
    pub log: CallOutput,
}

/// An agent plugin ready to run tasks.
#[derive(Clone)]
pub struct AgentPlugin {
    plugin: Plugin,
    sandbox: Sandbox,
    indices: runner::GuestIndices,
}

impl std::fmt::Debug for AgentPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPlugin")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

/// The largest answer an agent may give, in bytes: the host keeps it and
/// sends it on, so it is bounded like a tool's output, not by the agent's
/// memory.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// What a stopped run's trap says; the caller knows why it stopped.
const STOPPED: &str = "the host stopped the run";

impl AgentPlugin {
    /// `sandbox` gives the limits and the meter; the capabilities are given
    /// per run.
    pub fn new(plugin: Plugin, sandbox: Sandbox) -> Result<Self, LoadError> {
        plugin.expect_world(World::Agent)?;
        let indices = plugin.indices(runner::GuestIndices::new)?;
        Ok(AgentPlugin {
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

    /// Run `task` with the JSON `config` in a fresh instance holding `caps`.
    ///
    /// The call may last `control.deadline` (at most the sandbox's
    /// `call_deadline`); instantiation is bounded by `setup_deadline` as
    /// usual. An error the agent returns is [`PluginError::Guest`].
    pub fn run(
        &self,
        caps: Capabilities,
        task: &str,
        config: &str,
        control: &AgentControl,
    ) -> Result<AgentAnswer, PluginError> {
        let name = self.plugin.name();
        let sandbox = self.sandbox.clone().with_caps(caps);
        let mut session = self.plugin.instantiate(&sandbox, Wasi::Live)?;
        let guest = self
            .indices
            .load(&mut session.store, &session.instance)
            .map_err(|e| PluginError::protocol(name, format!("{e:#}")))?;
        let deadline = control.deadline.min(sandbox.limits.call_deadline);
        session
            .store
            .data_mut()
            .output
            .set_sink(control.on_log.clone());
        let result = session.call(deadline, 1, |store, _| {
            // Wake every tick instead of once at the deadline: the stop flag
            // is looked at while the guest runs.
            let start = Instant::now();
            let stop = control.stop.clone();
            store.epoch_deadline_callback(move |_| {
                if start.elapsed() >= deadline {
                    return Err(wasmtime::Trap::Interrupt.into());
                }
                if stop.load(Ordering::Relaxed) {
                    return Err(wasmtime::Error::msg(STOPPED));
                }
                Ok(UpdateDeadline::Continue(1))
            });
            store.set_epoch_deadline(1);
            guest.call_run(store, task, config)
        });
        session.store.data_mut().output.set_sink(None);
        let answer = result?.map_err(|e| PluginError::guest(name, e))?;
        if answer.len() > MAX_ANSWER_BYTES {
            return Err(PluginError::protocol(
                name,
                format!(
                    "answered with {} bytes, more than the {MAX_ANSWER_BYTES} an answer may hold",
                    answer.len()
                ),
            ));
        }
        Ok(AgentAnswer {
            answer,
            log: std::mem::take(&mut session.last_output),
        })
    }
}
