//! Sampler plugins: long-lived instances that serve one sequence at a time.
//!
//! Setup (a token index, grammar caches) is expensive, so an instance is
//! kept after its sequence ends and reused for the next one: `setup` runs
//! once per instance, not per request. An instance serves one sequence at a
//! time, so concurrent sequences of one plugin never wait for each other, and
//! a sequence that traps or overruns takes down only its own instance. Pools
//! belong to a `SamplerPlugin`, which belongs to one sandbox (one tenant):
//! an instance never carries state from one tenant to another.
//!
//! Idle instances are bounded three ways: per pool (`max_idle`), across the
//! engine ([`MAX_IDLE_INSTANCES`](crate::MAX_IDLE_INSTANCES) and
//! [`MAX_IDLE_BYTES`](crate::MAX_IDLE_BYTES)), and in time (`IDLE_TTL`).
//! They count against their tenant's instance share, which takes them
//! back when the tenant needs the slots for work.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::component::{Resource, ResourceAny};

pub use crate::bindings::controller::{Decision, Prepared, SampleSpec};
pub use crate::bindings::types::{SamplingParams, TokenBias, TokenRange, TokenSet};

use crate::bindings::controller;
use crate::error::PluginError;
use crate::host::logits::LogitsHandle;
use crate::host::{CallOutput, Wasi};
use crate::limits::LimitHit;
use crate::plugin::{LoadError, Plugin, Session, World};
use crate::sandbox::{IdlePool, Sandbox};

/// Idle instances kept per sampler plugin by default.
pub const DEFAULT_MAX_IDLE: usize = 4;

/// How long an idle instance is kept unused before it is dropped.
pub const IDLE_TTL: Duration = Duration::from_secs(120);

/// A sampler plugin with its pool of instances. Cheap to clone.
#[derive(Clone)]
pub struct SamplerPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    plugin: Plugin,
    sandbox: Sandbox,
    indices: controller::GuestIndices,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    health: Health,
}

/// A pooled instance, since when it waits, and the memory it holds.
struct Idle {
    instance: Instance,
    since: Instant,
    bytes: u64,
}

impl IdlePool for Inner {
    fn evict_idle(&self) -> usize {
        let evicted = std::mem::take(&mut *self.lock_idle());
        for i in &evicted {
            self.release(i.bytes);
        }
        evicted.len()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.evict_idle();
    }
}

impl std::fmt::Debug for SamplerPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerPlugin")
            .field("plugin", &self.inner.plugin)
            .field("idle", &self.idle_instances())
            .finish()
    }
}

/// An instance that has run `setup`.
struct Instance {
    session: Session,
    guest: controller::Guest,
}

impl SamplerPlugin {
    pub fn new(plugin: Plugin, sandbox: Sandbox) -> Result<Self, LoadError> {
        Self::with_max_idle(plugin, sandbox, DEFAULT_MAX_IDLE)
    }

    pub fn with_max_idle(
        plugin: Plugin,
        sandbox: Sandbox,
        max_idle: usize,
    ) -> Result<Self, LoadError> {
        plugin.expect_world(World::Sampler)?;
        let indices = plugin.indices(controller::GuestIndices::new)?;
        let inner = Arc::new(Inner {
            plugin,
            sandbox,
            indices,
            idle: Mutex::new(Vec::new()),
            max_idle,
            health: Health::default(),
        });
        let pool: Weak<dyn IdlePool> = Arc::downgrade(&inner) as Weak<dyn IdlePool>;
        inner.sandbox.meter.register_pool(pool);
        Ok(SamplerPlugin { inner })
    }

    pub fn plugin(&self) -> &Plugin {
        &self.inner.plugin
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.inner.sandbox
    }

    /// Instances waiting for a sequence.
    pub fn idle_instances(&self) -> usize {
        self.inner.lock_idle().len()
    }

    /// Drop every idle instance now (a deleted plugin's, say); returns how
    /// many.
    pub fn evict_idle(&self) -> usize {
        self.inner.evict_idle()
    }

    /// Create an instance and run its `setup` now, so the first request does
    /// not pay for it.
    pub fn warm_up(&self) -> Result<(), PluginError> {
        let instance = self.inner.new_instance()?;
        self.inner.put_back(instance);
        Ok(())
    }

    /// Open a sequence for a request: `config` is the request's sampler
    /// config (JSON), `prompt` its tokens, `params` its sampling parameters.
    pub fn open(
        &self,
        config: &str,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<SamplerSequence, PluginError> {
        if let Some(left) = self.throttled() {
            return Err(PluginError::Limit {
                plugin: self.inner.plugin.name().to_owned(),
                limit: LimitHit::Throttled(left),
            });
        }
        let opened = self.open_sequence(config, prompt, params);
        if let Err(e) = &opened {
            // A sequence that opens has not proven anything yet: only an
            // answered step clears the strikes.
            self.inner.health.strike(e);
        }
        opened
    }

    /// How long new sequences are still refused after repeated failures
    /// (`None`: they are not). See [`STRIKES`].
    pub fn throttled(&self) -> Option<Duration> {
        self.inner.health.throttled()
    }

    fn open_sequence(
        &self,
        config: &str,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<SamplerSequence, PluginError> {
        let inner = &self.inner;
        let mut instance = match inner.take_idle() {
            Some(i) => i,
            None => inner.new_instance()?,
        };
        let deadline = inner.sandbox.limits.setup_deadline;
        let guest = instance.guest.clone();
        let opened = instance.session.call(deadline, 1, |store, _| {
            guest.sequence().call_open(store, config, prompt, *params)
        });
        let handle = match opened {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => {
                // A refused config leaves the instance healthy.
                inner.put_back(instance);
                return Err(PluginError::guest(inner.plugin.name(), e));
            }
            Err(e) => return Err(e),
        };
        Ok(SamplerSequence {
            sampler: self.inner.clone(),
            instance: Some(instance),
            handle: Some(handle),
            failed: false,
        })
    }
}

/// Consecutive calls of a pool's instances that failed (a limit hit, a
/// trap, a broken protocol) this many times make the pool refuse new
/// sequences for a while: a plugin that keeps sleeping to its deadline or
/// sending what the host refuses would otherwise cost the batch a prefill
/// per request, as fast as its tenant can send them.
pub const STRIKES: u32 = 3;
/// How long new sequences are refused at the first throttling; it doubles
/// with each further limit hit, up to `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a pool refuses new sequences at once.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Limit hits in a row, and until when new sequences are refused.
#[derive(Default)]
struct Health {
    strikes: AtomicU32,
    closed_until: Mutex<Option<Instant>>,
}

impl Health {
    /// A sequence closed without a failure: the strikes are cleared.
    fn clear(&self) {
        self.strikes.store(0, Ordering::Relaxed);
    }

    /// A limit hit, a trap or a broken protocol is a strike; an error value
    /// of the guest's own (a refused config) is an answer, and the host's
    /// own refusals (the instance share, the throttle) are not the plugin's.
    fn strike(&self, e: &PluginError) {
        let counts = match e {
            PluginError::Limit { limit, .. } => {
                !matches!(limit, LimitHit::Instances(_) | LimitHit::Throttled(_))
            }
            PluginError::Trap { .. } | PluginError::Protocol { .. } => true,
            PluginError::Guest { .. } | PluginError::Poisoned { .. } => false,
        };
        if !counts {
            return;
        }
        let n = self.strikes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= STRIKES {
            let doublings = (n - STRIKES).min(16);
            let backoff = (FIRST_BACKOFF * (1 << doublings)).min(MAX_BACKOFF);
            *self.closed_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Instant::now() + backoff);
        }
    }

    fn throttled(&self) -> Option<Duration> {
        let until = (*self.closed_until.lock().unwrap_or_else(|e| e.into_inner()))?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_instance(&self) -> Result<Instance, PluginError> {
        let mut session = self.plugin.instantiate(&self.sandbox, Wasi::Live)?;
        let guest = self
            .indices
            .load(&mut session.store, &session.instance)
            .map_err(|e| PluginError::protocol(self.plugin.name(), format!("{e:#}")))?;
        let deadline = self.sandbox.limits.setup_deadline;
        session
            .call(deadline, 1, |store, _| guest.call_setup(store))?
            .map_err(|e| PluginError::guest(self.plugin.name(), e))?;
        Ok(Instance { session, guest })
    }

    /// The most recently pooled instance, after dropping those idle past
    /// `IDLE_TTL`.
    fn take_idle(&self) -> Option<Instance> {
        let mut idle = self.lock_idle();
        idle.retain(|i| {
            let fresh = i.since.elapsed() < IDLE_TTL;
            if !fresh {
                self.release(i.bytes);
            }
            fresh
        });
        let i = idle.pop()?;
        self.release(i.bytes);
        Some(i.instance)
    }

    /// Room for one more idle instance of `bytes`: in the tenant's part of
    /// the idle bound and in the engine's.
    fn reserve(&self, bytes: u64) -> bool {
        if !self.sandbox.meter.try_add_idle() {
            return false;
        }
        if self.plugin.engine().idle_budget().try_add(bytes) {
            return true;
        }
        self.sandbox.meter.remove_idle();
        false
    }

    /// An idle instance of `bytes` left the pool.
    fn release(&self, bytes: u64) {
        self.sandbox.meter.remove_idle();
        self.plugin.engine().idle_budget().remove(bytes);
    }

    /// Pool `instance` for the next sequence, if it is healthy and every
    /// bound has room; otherwise it is dropped, freeing its slot.
    fn put_back(&self, instance: Instance) {
        if instance.session.poisoned {
            return;
        }
        let bytes = instance.session.store.data().limiter.memory_in_use();
        let mut idle = self.lock_idle();
        if idle.len() < self.max_idle && self.reserve(bytes) {
            idle.push(Idle {
                instance,
                since: Instant::now(),
                bytes,
            });
        }
    }
}

/// One request's sampler state, on an instance of its own.
///
/// Dropping it closes the sequence and gives the instance back to the pool,
/// unless a call failed, in which case the instance is discarded.
pub struct SamplerSequence {
    sampler: Arc<Inner>,
    instance: Option<Instance>,
    handle: Option<ResourceAny>,
    /// A call failed: closing does not clear the pool's strikes.
    failed: bool,
}

impl std::fmt::Debug for SamplerSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerSequence")
            .field("plugin", &self.sampler.plugin)
            .finish_non_exhaustive()
    }
}

impl SamplerSequence {
    pub fn plugin(&self) -> &Plugin {
        &self.sampler.plugin
    }

    /// Phase one of a step: what the plugin decides before the logits exist.
    /// Safe to run on another thread while the model computes them. The
    /// call may run the sandbox's `call_deadline`.
    pub fn prepare(&mut self, step: u32, new_tokens: &[u32]) -> Result<Prepared, PluginError> {
        let deadline = self.sampler.sandbox.limits.call_deadline;
        self.prepare_within(deadline, step, new_tokens)
    }

    /// `prepare` under `deadline`, or the sandbox's `call_deadline` when
    /// that is shorter.
    pub fn prepare_within(
        &mut self,
        deadline: Duration,
        step: u32,
        new_tokens: &[u32],
    ) -> Result<Prepared, PluginError> {
        let sampler = self.sampler.clone();
        let deadline = deadline.min(sampler.sandbox.limits.call_deadline);
        let (instance, handle) = self.parts()?;
        let guest = instance.guest.clone();
        let called = instance.session.call(deadline, 1, |store, _| {
            guest
                .sequence()
                .call_prepare(store, handle, step, new_tokens)
        });
        self.outcome(called)
    }

    /// Phase two: the decision given this step's logits.
    pub fn decide(
        &mut self,
        step: u32,
        logits: impl Into<LogitsHandle>,
    ) -> Result<Decision, PluginError> {
        let deadline = self.sampler.sandbox.limits.call_deadline;
        self.decide_within(deadline, step, logits.into())
    }

    /// `decide` under `deadline`, or the sandbox's `call_deadline` when that
    /// is shorter.
    pub fn decide_within(
        &mut self,
        deadline: Duration,
        step: u32,
        logits: LogitsHandle,
    ) -> Result<Decision, PluginError> {
        let sampler = self.sampler.clone();
        let deadline = deadline.min(sampler.sandbox.limits.call_deadline);
        let (instance, handle) = self.parts()?;
        let guest = instance.guest.clone();
        let called = instance.session.call(deadline, 1, |store, _| {
            let own = store.data_mut().table.push(logits)?;
            // Lend the logits as a plain borrow: nothing to track once the
            // call returns, when the entry is removed.
            let borrow = Resource::<LogitsHandle>::new_borrow(own.rep());
            let result = guest
                .sequence()
                .call_decide(&mut *store, handle, step, borrow);
            store.data_mut().table.delete(own)?;
            result
        });
        self.outcome(called)
    }

    /// A call's result as the caller sees it, its failure counted against
    /// the pool (see [`STRIKES`]).
    fn outcome<T>(
        &mut self,
        called: Result<Result<T, crate::bindings::types::Error>, PluginError>,
    ) -> Result<T, PluginError> {
        let name = self.sampler.plugin.name();
        let result = called.and_then(|r| r.map_err(|e| PluginError::guest(name, e)));
        if let Err(e) = &result {
            self.record_failure(e);
        }
        result
    }

    /// Count a failure found in an answer by the caller (a token set past
    /// its bounds, say) as a trap or a limit hit is counted: a strike
    /// against the pool, and no clearing of strikes when this sequence
    /// closes.
    pub fn record_failure(&mut self, e: &PluginError) {
        self.failed = true;
        self.sampler.health.strike(e);
    }

    /// What the plugin wrote during its last call.
    pub fn last_output(&self) -> Option<&CallOutput> {
        self.instance.as_ref().map(|i| &i.session.last_output)
    }

    fn parts(&mut self) -> Result<(&mut Instance, ResourceAny), PluginError> {
        match (self.instance.as_mut(), self.handle) {
            (Some(instance), Some(handle)) => Ok((instance, handle)),
            _ => Err(PluginError::Poisoned {
                plugin: self.sampler.plugin.name().to_owned(),
            }),
        }
    }
}

impl Drop for SamplerSequence {
    fn drop(&mut self) {
        let (Some(mut instance), Some(handle)) = (self.instance.take(), self.handle.take()) else {
            return;
        };
        if instance.session.poisoned {
            return;
        }
        let deadline = self.sampler.sandbox.limits.call_deadline;
        // The guest's destructor runs under the same limits as a step; if it
        // fails the instance is not reused.
        if instance
            .session
            .call(deadline, 1, |store, _| handle.resource_drop(store))
            .is_ok()
        {
            if !self.failed {
                // A whole sequence served: the plugin is healthy again.
                self.sampler.health.clear();
            }
            self.sampler.put_back(instance);
        }
    }
}
