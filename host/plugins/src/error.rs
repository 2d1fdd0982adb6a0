//! How plugin failures reach callers: a guest's own error result, or the
//! limit or trap that stopped it, always naming the plugin.

use std::time::Duration;

use wasmtime::Trap;

use crate::bindings::types;
use crate::host::CallOutput;
use crate::limits::LimitHit;

/// An error a plugin returned as a value (the WIT `error` variant).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum GuestError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("not granted: {0}")]
    NotGranted(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl From<types::Error> for GuestError {
    fn from(e: types::Error) -> Self {
        match e {
            types::Error::InvalidInput(m) => GuestError::InvalidInput(m),
            types::Error::NotGranted(m) => GuestError::NotGranted(m),
            types::Error::NotFound(m) => GuestError::NotFound(m),
            types::Error::LimitExceeded(m) => GuestError::LimitExceeded(m),
            types::Error::Unavailable(m) => GuestError::Unavailable(m),
            types::Error::Failed(m) => GuestError::Failed(m),
        }
    }
}

impl From<GuestError> for types::Error {
    fn from(e: GuestError) -> Self {
        match e {
            GuestError::InvalidInput(m) => types::Error::InvalidInput(m),
            GuestError::NotGranted(m) => types::Error::NotGranted(m),
            GuestError::NotFound(m) => types::Error::NotFound(m),
            GuestError::LimitExceeded(m) => types::Error::LimitExceeded(m),
            GuestError::Unavailable(m) => types::Error::Unavailable(m),
            GuestError::Failed(m) => types::Error::Failed(m),
        }
    }
}

/// Why a call into a plugin did not give a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The guest ran into one of its limits and was stopped.
    #[error("plugin `{plugin}` hit its {limit}")]
    Limit { plugin: String, limit: LimitHit },
    /// The guest trapped (a Rust panic, `unreachable`, an out-of-bounds access).
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap { plugin: String, message: String },
    /// The guest answered with an error value.
    #[error("plugin `{plugin}` returned an error: {error}")]
    Guest { plugin: String, error: GuestError },
    /// The guest answered something the protocol does not allow.
    #[error("plugin `{plugin}` broke the protocol: {message}")]
    Protocol { plugin: String, message: String },
    /// An earlier failure left this instance unusable.
    #[error(
        "plugin `{plugin}` cannot be called: an earlier call failed and its instance was discarded"
    )]
    Poisoned { plugin: String },
}

impl PluginError {
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Limit { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::Guest { plugin, .. }
            | PluginError::Protocol { plugin, .. }
            | PluginError::Poisoned { plugin } => plugin,
        }
    }

    /// A short, stable name of the failure, for metrics and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Limit { limit, .. } => match limit {
                LimitHit::Deadline(_) => "deadline",
                LimitHit::Fuel(_) => "fuel",
                LimitHit::Memory { .. } => "memory",
                LimitHit::TableElements(_) => "tables",
                LimitHit::Stack => "stack",
                LimitHit::Instances(_) => "instances",
                LimitHit::Throttled(_) => "throttled",
            },
            PluginError::Trap { .. } => "trap",
            PluginError::Guest { .. } => "guest-error",
            PluginError::Protocol { .. } => "protocol",
            PluginError::Poisoned { .. } => "poisoned",
        }
    }

    /// Whether a limit stopped the guest.
    pub fn is_limit(&self) -> bool {
        matches!(self, PluginError::Limit { .. })
    }

    pub(crate) fn guest(plugin: &str, error: types::Error) -> Self {
        PluginError::Guest {
            plugin: plugin.to_owned(),
            error: error.into(),
        }
    }

    /// A plugin that broke its interface's contract: an answer of the
    /// wrong shape or size.
    pub fn protocol(plugin: &str, message: impl Into<String>) -> Self {
        PluginError::Protocol {
            plugin: plugin.to_owned(),
            message: message.into(),
        }
    }
}

/// Turn the error of a failed call into what stopped the guest.
pub(crate) fn classify(
    plugin: &str,
    err: wasmtime::Error,
    hit: Option<LimitHit>,
    deadline: Duration,
    fuel: u64,
    output: &CallOutput,
) -> PluginError {
    let plugin = plugin.to_owned();
    if let Some(limit) = hit {
        return PluginError::Limit { plugin, limit };
    }
    let limit = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Some(LimitHit::Deadline(deadline)),
        Some(Trap::OutOfFuel) => Some(LimitHit::Fuel(fuel)),
        Some(Trap::StackOverflow) => Some(LimitHit::Stack),
        _ => None,
    };
    if let Some(limit) = limit {
        return PluginError::Limit { plugin, limit };
    }
    let mut message = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        // A host function refused (for example a capability the plugin does
        // not have): its message is the whole story.
        None => err
            .chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": "),
    };
    if let Some(words) = output.last_words() {
        message.push_str(&format!(" after it wrote: {words}"));
    }
    PluginError::Trap { plugin, message }
}
