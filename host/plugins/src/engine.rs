//! The wasmtime engine every plugin runs on, its linker, and the epoch ticker
//! that turns wall-clock deadlines into interrupts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::CompileCache;
use crate::host::HostState;
use crate::plugin::{Grants, LoadError, Plugin};
use crate::worker::{CompileError, CompileWorker};

/// How often the engine's epoch advances: the resolution of every deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How the engine is set up.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// Where compiled components are kept between runs; `None` keeps them in
    /// memory only. The directory must be private to this host: its files
    /// are loaded as machine code.
    pub cache_dir: Option<PathBuf>,
    /// Compile each component on the calling thread alone. A server sets
    /// this: parallel compilation runs on the process-wide rayon pool, which
    /// the model's kernels share, so one tenant's large upload would slow
    /// every stream; on one thread it costs one core for its duration.
    pub compile_on_one_thread: bool,
    /// Compile in a child process under caps on its time and memory, for
    /// components that are neither in memory nor in the disk cache. A server
    /// that takes uploads sets this: in-process, nothing can stop a
    /// component built to be slow or huge to compile.
    pub compile_worker: Option<CompileWorker>,
}

impl EngineConfig {
    /// The cache directory used when none is given: `$DEEPWASM_CACHE/components`,
    /// else `$XDG_CACHE_HOME/deepwasm/components`, else
    /// `~/.cache/deepwasm/components`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let base = std::env::var_os("DEEPWASM_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| Path::new(&d).join("deepwasm")))
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/deepwasm")))?;
        Some(base.join("components"))
    }
}

/// Compiles, caches and links plugins. Cheap to clone; clones share
/// everything.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<CompileCache>,
    /// Components compiled or loaded in this process, by content key.
    compiled: Mutex<HashMap<String, Component>>,
    idle: IdleBudget,
    worker: Option<CompileWorker>,
}

/// Idle pooled instances kept across every pool and tenant of an engine, at
/// most. Each holds a pooling-allocator slot and its touched memory.
pub const MAX_IDLE_INSTANCES: usize = 256;
/// Linear memory of idle pooled instances kept, at most, in bytes: an
/// llguidance sampler on the DeepSeek vocabulary holds ~100 MiB, so this
/// keeps about twenty of those warm.
pub const MAX_IDLE_BYTES: u64 = 2 << 30;

/// What idle pooled instances hold now, against the engine-wide bounds.
#[derive(Debug, Default)]
pub(crate) struct IdleBudget {
    count: AtomicUsize,
    bytes: AtomicU64,
}

impl IdleBudget {
    /// Count one more idle instance of `bytes`, unless that would pass a
    /// bound (then the instance should be dropped instead of pooled).
    pub(crate) fn try_add(&self, bytes: u64) -> bool {
        if self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < MAX_IDLE_INSTANCES).then_some(n + 1)
            })
            .is_err()
        {
            return false;
        }
        if self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |b| {
                b.checked_add(bytes).filter(|&t| t <= MAX_IDLE_BYTES)
            })
            .is_err()
        {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// An idle instance of `bytes` left the pool.
    pub(crate) fn remove(&self, bytes: u64) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Idle instances and their bytes, now.
    pub(crate) fn held(&self) -> (usize, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache", &self.inner.cache.as_ref().map(|c| c.dir()))
            .finish_non_exhaustive()
    }
}

impl PluginEngine {
    pub fn new(config: EngineConfig) -> anyhow::Result<Self> {
        let mut cfg = codegen_config(!config.compile_on_one_thread);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config()));
        let engine = Engine::new(&cfg).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        // WASI is linked whole because guest toolchains import it even for
        // pure code (componentize-py imports filesystem and sockets); the
        // context each store gets grants nothing through it.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        // ... except its waits, which must end at the call's deadline.
        crate::host::wait::shadow_wasi_waits(&mut linker).map_err(anyhow::Error::from)?;
        crate::bindings::Host_::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)?;

        start_epoch_ticker(&engine)
            .map_err(|e| anyhow::anyhow!("could not start the epoch ticker thread: {e}"))?;

        let cache = match config.cache_dir {
            Some(dir) => Some(CompileCache::open(dir, &engine)?),
            None => None,
        };
        Ok(PluginEngine {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                compiled: Mutex::new(HashMap::new()),
                idle: IdleBudget::default(),
                worker: config.compile_worker,
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    pub(crate) fn idle_budget(&self) -> &IdleBudget {
        &self.inner.idle
    }

    /// Idle pooled instances across all pools and their linear memory in
    /// bytes, now.
    pub fn idle_instances(&self) -> (usize, u64) {
        self.inner.idle.held()
    }

    /// Load a plugin from its component bytes. `name` is how errors and logs
    /// will call it.
    pub fn load(&self, name: &str, bytes: &[u8], grants: &Grants) -> Result<Plugin, LoadError> {
        Plugin::load(self, name, bytes, grants)
    }

    /// Load a plugin from a `.wasm` file; it is named after the file's stem.
    pub fn load_file(&self, path: &Path, grants: &Grants) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        self.load(&name, &bytes, grants)
    }

    /// The compiled form of `bytes`: from this process, from the disk cache,
    /// or compiled now (and cached). `id` is the bytes' content hash.
    pub(crate) fn compile(&self, id: &str, bytes: &[u8]) -> Result<Compiled, CompileError> {
        let key = match &self.inner.cache {
            Some(cache) => cache.key(id),
            None => id.to_owned(),
        };
        if let Some(c) = self.lock_compiled().get(&key) {
            return Ok(Compiled {
                component: c.clone(),
                source: CompileSource::Memory,
            });
        }
        let cached = self
            .inner
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.inner.engine, &key));
        let (component, source) = match cached {
            Some(c) => (c, CompileSource::DiskCache),
            None => {
                let c = self.compile_now(bytes)?;
                if let Some(cache) = &self.inner.cache
                    && let Err(e) = cache.store(&key, &c)
                {
                    tracing::warn!("could not cache the compiled component {id}: {e:#}");
                }
                (c, CompileSource::Compiled)
            }
        };
        self.lock_compiled().insert(key, component.clone());
        Ok(Compiled { component, source })
    }

    /// Compile `bytes` in the worker, when there is one, else here.
    fn compile_now(&self, bytes: &[u8]) -> Result<Component, CompileError> {
        let Some(worker) = &self.inner.worker else {
            return Component::new(&self.inner.engine, bytes)
                .map_err(|e| CompileError::Invalid(format!("{e:#}")));
        };
        let artifact = worker.compile(bytes)?;
        // SAFETY: `deserialize` runs the artifact's machine code. It came
        // over a pipe from the compile worker, the program this host
        // configured (not one a tenant chose), which compiled these bytes
        // with this engine's code generation settings; an input that could
        // subvert the compiler would do the same in-process. wasmtime
        // additionally checks the header and engine compatibility of what
        // it loads.
        unsafe { Component::deserialize(&self.inner.engine, &artifact) }.map_err(|e| {
            CompileError::Worker(format!("the compile worker's output did not load: {e:#}"))
        })
    }

    /// Forget the in-process copy of a compiled component (the disk cache
    /// keeps its copy).
    pub fn evict(&self, id: &str) {
        let key = match &self.inner.cache {
            Some(cache) => cache.key(id),
            None => id.to_owned(),
        };
        self.lock_compiled().remove(&key);
    }

    /// Forget a compiled component everywhere, the disk cache included: one
    /// that compiled but was refused (its exports mistyped, say) is not kept.
    pub(crate) fn discard(&self, id: &str) {
        self.evict(id);
        if let Some(cache) = &self.inner.cache {
            cache.remove(&cache.key(id));
        }
    }

    fn lock_compiled(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a compiled component came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompileSource {
    /// Compiled from the bytes just now.
    Compiled,
    /// Loaded from the on-disk cache.
    DiskCache,
    /// Already loaded in this process.
    Memory,
}

pub(crate) struct Compiled {
    pub(crate) component: Component,
    pub(crate) source: CompileSource,
}

/// The settings that decide what compiled code is: shared by the plugin
/// engine and the compile worker's (see [`crate::worker`]), so an artifact
/// compiled by one loads in the other. `parallel` compiles a component's
/// functions on the rayon pool.
pub(crate) fn codegen_config(parallel: bool) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        // Deadlines: the plugin engine's ticker advances the epoch every
        // EPOCH_TICK.
        .epoch_interruption(true)
        // Fuel meters every call and bounds the deterministic ones.
        .consume_fuel(true)
        // Relaxed SIMD gives the same answers on every machine, so a
        // reward scores the same everywhere.
        .relaxed_simd_deterministic(true)
        .parallel_compilation(parallel);
    cfg
}

/// Component instances alive at once across every plugin and tenant: the
/// pooling allocator's slots. Tenants get shares of these (see
/// [`Meter::with_instance_share`](crate::Meter::with_instance_share)).
pub const TOTAL_INSTANCES: usize = 1_000;

/// Slots whose memory is returned to the kernel together.
const DECOMMIT_BATCH: usize = 32;

/// The pooling allocator keeps instance, memory and table slots mapped and
/// resets them on reuse, so instantiating a pre-linked component costs a few
/// microseconds instead of fresh mappings per instance.
///
/// The pool bounds what can be live at once across all tenants; per-plugin
/// bounds are the `Limits` of each store. Slots are reserved address space
/// (each memory slot reserves 4 GiB plus guard pages), committed only when
/// touched.
fn pooling_config() -> PoolingAllocationConfig {
    let mut p = PoolingAllocationConfig::new();
    p.total_component_instances(TOTAL_INSTANCES as u32)
        // Interpreted guests (componentize-py, componentize-js) are made of
        // a dozen core modules each.
        .total_core_instances(10_000)
        .max_core_instances_per_component(64)
        .total_memories(2_000)
        .max_memories_per_component(16)
        .max_memories_per_module(2)
        .total_tables(10_000)
        .max_tables_per_component(64)
        .max_tables_per_module(4)
        // Python's interpreter has tens of thousands of functions in its table.
        .table_elements(100_000)
        .max_core_instance_size(4 << 20)
        .max_component_instance_size(4 << 20)
        // Returning a slot's pages to the kernel interrupts every core to
        // flush its TLB; batching the decommits of many slots into one
        // flush made that cost vanish from reward scoring, which gets a
        // fresh instance per sample.
        .decommit_batch_size(DECOMMIT_BATCH);
    p
}

/// Advance `engine`'s epoch every `EPOCH_TICK` until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("deepwasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(())
}

/// Epoch ticks that cover `deadline`, counting the tick in progress.
pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (deadline.as_nanos().div_ceil(tick) as u64).saturating_add(1)
}
