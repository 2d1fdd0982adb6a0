//! What a plugin instance runs inside: its limits, its capabilities, and the
//! meter that counts what it used.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::host::Capabilities;
use crate::limits::Limits;

/// The bounds, capabilities and meter of the instances a caller creates.
///
/// An instance never outlives the sandbox it was made in and never serves
/// another one: pools are kept per sandbox, so a tenant's data cannot reach
/// another tenant through a plugin's memory.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub limits: Limits,
    pub caps: Capabilities,
    pub meter: Arc<Meter>,
}

impl Sandbox {
    pub fn new(limits: Limits) -> Self {
        Sandbox {
            limits,
            caps: Capabilities::default(),
            meter: Arc::new(Meter::default()),
        }
    }

    pub fn with_caps(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    pub fn with_meter(mut self, meter: Arc<Meter>) -> Self {
        self.meter = meter;
        self
    }
}

/// Counts plugin work; shared by everything one tenant runs.
#[derive(Debug, Default)]
pub struct Meter {
    calls: AtomicU64,
    fuel: AtomicU64,
    wall_ns: AtomicU64,
    limit_hits: AtomicU64,
}

/// A reading of a `Meter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Calls into plugins, instantiations included.
    pub calls: u64,
    /// Fuel burned (about one unit per Wasm instruction).
    pub fuel: u64,
    /// Wall time spent inside plugins, in microseconds.
    pub wall_us: u64,
    /// Calls stopped by a limit (deadline, fuel, memory, stack, tables).
    pub limit_hits: u64,
}

impl Meter {
    pub(crate) fn record_call(&self, wall: Duration, fuel: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
        self.wall_ns.fetch_add(
            wall.as_nanos().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn record_limit_hit(&self) {
        self.limit_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn usage(&self) -> Usage {
        Usage {
            calls: self.calls.load(Ordering::Relaxed),
            fuel: self.fuel.load(Ordering::Relaxed),
            wall_us: self.wall_ns.load(Ordering::Relaxed) / 1000,
            limit_hits: self.limit_hits.load(Ordering::Relaxed),
        }
    }
}
