//! What a plugin may consume, and the `ResourceLimiter` that enforces memory.

use std::time::Duration;

use crate::World;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// Bounds on one plugin instance (memory, tables, instances, output) and on
/// each call into it (deadline, fuel).
///
/// `Limits::for_world` gives the defaults; tenants and callers narrow them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Linear memory across all of the instance's memories, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock time for one call (one sampler step, one reward batch of one
    /// sample, one tool call).
    #[serde(with = "duration_ms")]
    pub call_deadline: Duration,
    /// Wall-clock time for one-off setup: a sampler's `setup` and `open`.
    #[serde(with = "duration_ms")]
    pub setup_deadline: Duration,
    /// Fuel (roughly one unit per Wasm instruction) for one call; `None`
    /// meters without a bound.
    pub fuel: Option<u64>,
    /// Core and component instances the plugin may create (a component made by
    /// componentize-py holds a dozen).
    pub instances: usize,
    /// Tables across all instances.
    pub tables: usize,
    /// Elements in any one table.
    pub table_elements: usize,
    /// Bytes kept from each of stdout and stderr per call; the rest is counted
    /// and dropped.
    pub output_bytes: usize,
    /// Bytes of `log` messages kept per call; the rest is counted and dropped.
    pub log_bytes: usize,
}

impl Limits {
    /// The defaults for plugins of `world`.
    ///
    /// * memory: 256 MiB for samplers, which fits an llguidance grammar sampler
    ///   with its token index on the 129k DeepSeek vocabulary (~100 MiB);
    ///   128 MiB for the other worlds.
    /// * call deadline: 25 ms per sampler step (the budget of one decode step,
    ///   as AICI had), 1 s per reward sample, 5 s per tool call, 300 s for a
    ///   whole agent run.
    /// * setup deadline: 10 s, enough for an interpreted guest to build a
    ///   token index once.
    /// * fuel: rewards 200 million units per sample (about 0.1 s of compiled
    ///   Wasm, thousands of times what a rule-based reward needs), so a reward
    ///   stops at the same point on every machine and its scores are
    ///   deterministic; the deadline stays only as a backstop. The other
    ///   worlds are metered but unbounded: their deadline bounds them.
    pub fn for_world(world: World) -> Limits {
        let base = Limits::default();
        match world {
            World::Sampler => Limits {
                memory_bytes: 256 * MIB,
                call_deadline: Duration::from_millis(25),
                ..base
            },
            World::Reward => Limits {
                call_deadline: Duration::from_secs(1),
                fuel: Some(200_000_000),
                ..base
            },
            World::Tool => Limits {
                call_deadline: Duration::from_secs(5),
                ..base
            },
            World::Agent => Limits {
                call_deadline: Duration::from_secs(300),
                ..base
            },
        }
    }

    /// The smaller of each bound in `self` and `cap`: what a caller may ask
    /// for inside what its tenant allows.
    pub fn within(&self, cap: &Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.min(cap.memory_bytes),
            call_deadline: self.call_deadline.min(cap.call_deadline),
            setup_deadline: self.setup_deadline.min(cap.setup_deadline),
            fuel: match (self.fuel, cap.fuel) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            instances: self.instances.min(cap.instances),
            tables: self.tables.min(cap.tables),
            table_elements: self.table_elements.min(cap.table_elements),
            output_bytes: self.output_bytes.min(cap.output_bytes),
            log_bytes: self.log_bytes.min(cap.log_bytes),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 128 * MIB,
            call_deadline: Duration::from_secs(1),
            setup_deadline: Duration::from_secs(10),
            fuel: None,
            instances: 64,
            tables: 64,
            // componentize-py's interpreter has tables of ~20k functions.
            table_elements: 100_000,
            output_bytes: 64 * 1024,
            log_bytes: 64 * 1024,
        }
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Enforces `Limits` on one store and remembers which bound stopped the guest,
/// so that the resulting trap can be reported as that limit.
#[derive(Debug)]
pub(crate) struct StoreLimiter {
    memory_bytes: u64,
    instances: usize,
    tables: usize,
    table_elements: usize,
    /// Current linear memory of every memory in the store, summed.
    memory_in_use: u64,
    pub(crate) hit: Option<LimitHit>,
}

/// The bound a guest ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// The wall-clock deadline of a call.
    Deadline(Duration),
    /// The fuel of a call.
    Fuel(u64),
    /// The memory cap, with the size the guest asked for.
    Memory { limit: u64, requested: u64 },
    /// The cap on table elements.
    TableElements(usize),
    /// Wasm stack exhaustion (unbounded recursion).
    Stack,
    /// The tenant's share of live instances was all in use.
    Instances(usize),
    /// The plugin hit its limits call after call, and is refused new work
    /// for this long.
    Throttled(Duration),
}

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitHit::Deadline(d) => write!(f, "deadline of {} ms per call", d.as_millis()),
            LimitHit::Fuel(n) => write!(f, "fuel budget of {n} units per call"),
            LimitHit::Memory { limit, requested } => write!(
                f,
                "memory limit of {} MiB (it asked for {} MiB)",
                limit / MIB,
                requested.div_ceil(MIB)
            ),
            LimitHit::TableElements(n) => write!(f, "table limit of {n} elements"),
            LimitHit::Stack => write!(f, "stack limit (unbounded recursion?)"),
            LimitHit::Instances(n) => write!(f, "share of {n} live plugin instances"),
            LimitHit::Throttled(left) => write!(
                f,
                "throttle: it hit its limits call after call, and takes no new sequence for {} ms",
                left.as_millis()
            ),
        }
    }
}

impl StoreLimiter {
    /// Linear memory the store's instance holds now, in bytes.
    pub(crate) fn memory_in_use(&self) -> u64 {
        self.memory_in_use
    }

    pub(crate) fn new(limits: &Limits) -> StoreLimiter {
        StoreLimiter {
            memory_bytes: limits.memory_bytes,
            instances: limits.instances,
            tables: limits.tables,
            table_elements: limits.table_elements,
            memory_in_use: 0,
            hit: None,
        }
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = (desired - current) as u64;
        let total = self.memory_in_use.saturating_add(growth);
        if total > self.memory_bytes {
            self.hit = Some(LimitHit::Memory {
                limit: self.memory_bytes,
                requested: total,
            });
            // Trap rather than let `memory.grow` return -1: guests rarely
            // handle an allocation failure (Rust aborts, C often carries on
            // with NULL), and a trap names the limit.
            wasmtime::bail!("memory limit of {} bytes reached", self.memory_bytes);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = Some(LimitHit::TableElements(self.table_elements));
            wasmtime::bail!("table limit of {} elements reached", self.table_elements);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.instances
    }
}
