//! What a plugin instance runs inside: its limits, its capabilities, and the
//! meter that counts what it used.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::host::Capabilities;
use crate::limits::{LimitHit, Limits};

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

/// Counts plugin work, and holds the instance share; shared by everything
/// one tenant runs.
#[derive(Default)]
pub struct Meter {
    calls: AtomicU64,
    fuel: AtomicU64,
    wall_ns: AtomicU64,
    limit_hits: AtomicU64,
    /// Plugin instances alive now (idle pooled ones included).
    live: AtomicUsize,
    /// The most that may be alive at once; 0 means no bound.
    max_live: AtomicUsize,
    /// Instances idle in pools now.
    idle: AtomicUsize,
    /// Pools of idle instances made under this meter, asked to give some
    /// back when the share is used up.
    pools: Mutex<Vec<Weak<dyn IdlePool>>>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("usage", &self.usage())
            .field("max_live", &self.max_live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A pool of idle instances that can give them back.
pub(crate) trait IdlePool: Send + Sync {
    /// Drop every idle instance; returns how many.
    fn evict_idle(&self) -> usize;
}

/// One live instance's place in its meter's share; given back on drop.
#[derive(Debug)]
pub(crate) struct InstanceSlot(Arc<Meter>);

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
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
    /// Calls stopped by a limit (deadline, fuel, memory, stack, tables,
    /// instances).
    pub limit_hits: u64,
    /// Plugin instances alive now, idle pooled ones included.
    pub live_instances: u64,
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
            live_instances: self.live.load(Ordering::Relaxed) as u64,
        }
    }

    /// A meter whose plugins may hold at most `max` instances at once: a
    /// tenant's share of the engine's instance slots.
    pub fn with_instance_share(max: usize) -> Self {
        let m = Meter::default();
        m.max_live.store(max, Ordering::Relaxed);
        m
    }

    /// The instance share (0: none).
    pub fn instance_share(&self) -> usize {
        self.max_live.load(Ordering::Relaxed)
    }

    /// The most instances this meter's pools keep idle: its part of the
    /// engine's bound, in proportion to its share of the slots (at least
    /// 4), so that one tenant cannot fill every pool of the host and leave
    /// its neighbours paying setup on every request.
    pub fn idle_share(&self) -> usize {
        match self.max_live.load(Ordering::Relaxed) {
            0 => crate::MAX_IDLE_INSTANCES,
            share => (share * crate::MAX_IDLE_INSTANCES / crate::TOTAL_INSTANCES).max(4),
        }
    }

    pub(crate) fn try_add_idle(&self) -> bool {
        let cap = self.idle_share();
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn remove_idle(&self) {
        self.idle.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn register_pool(&self, pool: Weak<dyn IdlePool>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// A slot for one more instance, within the share. When the share is
    /// used up, this meter's idle pooled instances are given back first;
    /// when that is not enough, the answer is the limit.
    pub(crate) fn take_slot(self: &Arc<Self>) -> Result<InstanceSlot, LimitHit> {
        let max = self.max_live.load(Ordering::Relaxed);
        if max == 0 {
            self.live.fetch_add(1, Ordering::Relaxed);
            return Ok(InstanceSlot(self.clone()));
        }
        for attempt in 0..2 {
            let taken = self
                .live
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                });
            if taken.is_ok() {
                return Ok(InstanceSlot(self.clone()));
            }
            if attempt == 0 {
                let pools: Vec<_> = self
                    .pools
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter_map(Weak::upgrade)
                    .collect();
                for pool in pools {
                    pool.evict_idle();
                }
            }
        }
        self.record_limit_hit();
        Err(LimitHit::Instances(max))
    }
}
