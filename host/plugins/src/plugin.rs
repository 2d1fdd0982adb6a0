//! Loading a component: what it is, which world it implements, whether its
//! imports are allowed, and a pre-linked form that instantiates in
//! microseconds.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Instance, InstancePre};

use crate::engine::{CompileSource, PluginEngine, deadline_ticks};
use crate::error::{PluginError, classify};
use crate::host::wait::CallDeadline;
use crate::host::{CallOutput, HostState, Wasi};
use crate::sandbox::{InstanceSlot, Sandbox};
use crate::worker::CompileError;

/// The package every deepwasm interface belongs to.
pub const PACKAGE: &str = "deepwasm:plugin";
/// The versions of that package this host implements (semver-compatible with 0.1.0).
pub const PACKAGE_VERSION: &str = "0.1.0";

/// The four kinds of plugin, one per WIT world.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// Steers generation token by token (`controller`).
    Sampler,
    /// Scores completions (`scorer`).
    Reward,
    /// Offers tools (`tool-provider`).
    Tool,
    /// Runs tasks over the model and tools (`runner`).
    Agent,
}

impl World {
    pub const ALL: [World; 4] = [World::Sampler, World::Reward, World::Tool, World::Agent];

    /// The WIT name of the world.
    pub fn name(self) -> &'static str {
        match self {
            World::Sampler => "sampler",
            World::Reward => "reward",
            World::Tool => "tool",
            World::Agent => "agent",
        }
    }

    /// The interface a plugin of this world exports.
    pub fn export(self) -> &'static str {
        match self {
            World::Sampler => "controller",
            World::Reward => "scorer",
            World::Tool => "tool-provider",
            World::Agent => "runner",
        }
    }

    /// The fully qualified name of the export, as components spell it.
    pub fn export_name(self) -> String {
        format!("{PACKAGE}/{}@{PACKAGE_VERSION}", self.export())
    }

    /// The host interfaces this world may import.
    pub fn imports(self) -> &'static [HostInterface] {
        use HostInterface::*;
        match self {
            World::Sampler => &[Tokenizer, Logits, Log],
            World::Reward => &[Log],
            World::Tool => &[Log, Kv],
            World::Agent => &[Inference, Tools, Log, Kv],
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for World {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        World::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!("unknown world `{s}`; the worlds are sampler, reward, tool and agent")
            })
    }
}

/// An interface the host provides to plugins.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HostInterface {
    Tokenizer,
    Logits,
    Inference,
    Tools,
    Log,
    Kv,
}

impl HostInterface {
    pub const ALL: [HostInterface; 6] = [
        HostInterface::Tokenizer,
        HostInterface::Logits,
        HostInterface::Inference,
        HostInterface::Tools,
        HostInterface::Log,
        HostInterface::Kv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HostInterface::Tokenizer => "tokenizer",
            HostInterface::Logits => "logits",
            HostInterface::Inference => "inference",
            HostInterface::Tools => "tools",
            HostInterface::Log => "log",
            HostInterface::Kv => "kv",
        }
    }

    fn from_name(name: &str) -> Option<HostInterface> {
        HostInterface::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl fmt::Display for HostInterface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PACKAGE}/{}", self.name())
    }
}

/// The host interfaces a tenant lets its plugins import.
///
/// A plugin may import an interface only when its world offers it and its
/// tenant grants it. The default grants everything (a single-user host).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grants {
    pub interfaces: BTreeSet<HostInterface>,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            interfaces: HostInterface::ALL.into_iter().collect(),
        }
    }
}

impl Grants {
    pub fn none() -> Self {
        Grants {
            interfaces: BTreeSet::new(),
        }
    }

    pub fn allows(&self, i: HostInterface) -> bool {
        self.interfaces.contains(&i)
    }
}

/// Why a component could not be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{name}` is not a WebAssembly binary (it starts with {magic})")]
    NotWasm { name: String, magic: String },
    #[error(
        "`{name}` is a core WebAssembly module, not a component: build it for \
         wasm32-wasip2, or wrap it with `wasm-tools component new`"
    )]
    CoreModule { name: String },
    #[error("`{name}` is not a valid component: {reason}")]
    Invalid { name: String, reason: String },
    #[error(
        "`{name}` implements no deepwasm world: a plugin exports one of \
         {PACKAGE}/{{controller, scorer, tool-provider, runner}}@{PACKAGE_VERSION}, \
         and this one exports {exports}"
    )]
    NoWorld { name: String, exports: String },
    #[error(
        "`{name}` exports the interfaces of several worlds ({worlds}); a plugin implements exactly one"
    )]
    SeveralWorlds { name: String, worlds: String },
    #[error(
        "`{name}` imports `{import}`, which the {world} world does not offer \
         (it offers {offered})"
    )]
    OutsideWorld {
        name: String,
        world: World,
        import: String,
        offered: String,
    },
    #[error("`{name}` imports `{import}`, which its tenant was not granted")]
    NotGranted { name: String, import: String },
    #[error(
        "`{name}` imports `{import}`, a version of {PACKAGE} this host does not \
         implement (it implements {PACKAGE_VERSION})"
    )]
    WrongVersion { name: String, import: String },
    #[error("`{name}` imports `{import}`, which deepwasm does not provide")]
    Unknown { name: String, import: String },
    #[error(
        "`{name}` was refused: compiling it took longer than the {} s allowed; \
         make the component smaller (fewer, smaller functions)",
        limit.as_secs_f64()
    )]
    CompileTime { name: String, limit: Duration },
    #[error(
        "`{name}` was refused: compiling it needed more than the {} MiB of memory allowed; \
         make the component smaller (fewer, smaller functions)",
        limit_bytes / crate::MIB
    )]
    CompileMemory { name: String, limit_bytes: u64 },
    #[error("`{name}` could not be compiled: {reason}")]
    CompileWorker { name: String, reason: String },
    #[error("`{name}` cannot be linked: {reason}")]
    Link { name: String, reason: String },
    #[error(
        "`{name}` exports `{export}` with types other than the {world} world's ({reason}); \
         build it against deepwasm's wit/ package"
    )]
    ExportType {
        name: String,
        world: World,
        export: String,
        reason: String,
    },
    #[error("`{name}` could not start: {reason}")]
    Start { name: String, reason: String },
    #[error("`{name}` is a {actual} plugin, not a {expected} plugin")]
    WrongWorld {
        name: String,
        expected: World,
        actual: World,
    },
}

/// One import of a component, as `plugin inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportInfo {
    pub name: String,
    /// `deepwasm`, `wasi` or `other`.
    pub provider: &'static str,
}

/// One export of a component and the functions in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExportInfo {
    pub name: String,
    pub functions: Vec<String>,
}

/// What a plugin is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    /// SHA-256 of the component's bytes, hex.
    pub id: String,
    pub world: World,
    pub size_bytes: usize,
    pub imports: Vec<ImportInfo>,
    pub exports: Vec<ExportInfo>,
    pub compiled: CompileSource,
    /// Time to compile (or load from cache) and link.
    pub load_ms: f64,
}

/// A loaded plugin: compiled, checked and linked. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    info: PluginInfo,
    name: Arc<str>,
    engine: PluginEngine,
    pre: InstancePre<HostState>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.info.name)
            .field("id", &self.inner.info.id)
            .field("world", &self.inner.info.world)
            .finish()
    }
}

/// The SHA-256 of a component's bytes, hex: a plugin's content address.
pub fn content_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Splits `deepwasm:plugin/log@0.1.0` into (`deepwasm:plugin`, `log`, `0.1.0`).
fn split_interface_name(name: &str) -> Option<(&str, &str, &str)> {
    let (package, rest) = name.split_once('/')?;
    let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
    Some((package, interface, version))
}

/// Whether `version` is semver-compatible with the version this host implements.
fn compatible_version(version: &str) -> bool {
    // 0.x versions are compatible within the same minor version.
    version
        .strip_prefix("0.1.")
        .is_some_and(|patch| patch.parse::<u32>().is_ok())
}

impl Plugin {
    pub(crate) fn load(
        engine: &PluginEngine,
        name: &str,
        bytes: &[u8],
        grants: &Grants,
    ) -> Result<Plugin, LoadError> {
        let start = Instant::now();
        check_header(name, bytes)?;
        // What the component is and what it imports are read from its
        // bytes and checked before anything is compiled: a refused upload
        // costs a parse, not a compile (seconds and hundreds of MiB for a
        // large component) nor a compile-cache entry.
        let names = top_level_names(name, bytes)?;
        let world = world_of(name, &names.exports)?;
        for import in &names.imports {
            check_import(name, world, grants, import)?;
        }
        let id = content_id(bytes);
        let compiled = engine.compile(&id, bytes).map_err(|e| {
            let name = name.to_owned();
            match e {
                CompileError::Invalid(reason) => LoadError::Invalid { name, reason },
                CompileError::TimeLimit(limit) => LoadError::CompileTime { name, limit },
                CompileError::MemoryLimit(limit_bytes) => {
                    LoadError::CompileMemory { name, limit_bytes }
                }
                CompileError::Worker(reason) => LoadError::CompileWorker { name, reason },
            }
        })?;
        let component = compiled.component;
        let ty = component.component_type();
        let wt = engine.engine();

        let exports = ty
            .exports(wt)
            .map(|(export, item)| ExportInfo {
                name: export.to_owned(),
                functions: match &item.ty {
                    ComponentItem::ComponentInstance(i) => i
                        .exports(wt)
                        .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                        .map(|(f, _)| f.to_owned())
                        .collect(),
                    _ => Vec::new(),
                },
            })
            .collect();
        let mut imports = Vec::new();
        for (import, _) in ty.imports(wt) {
            let provider = check_import(name, world, grants, import)?;
            imports.push(ImportInfo {
                name: import.to_owned(),
                provider,
            });
        }

        let pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            engine.discard(&id);
            LoadError::Link {
                name: name.to_owned(),
                reason: format!("{e:#}"),
            }
        })?;

        let info = PluginInfo {
            name: name.to_owned(),
            id,
            world,
            size_bytes: bytes.len(),
            imports,
            exports,
            compiled: compiled.source,
            load_ms: start.elapsed().as_secs_f64() * 1e3,
        };
        let plugin = Plugin {
            inner: Arc::new(Inner {
                name: Arc::from(name),
                info,
                engine: engine.clone(),
                pre,
            }),
        };
        if let Err(e) = plugin.check_export_types() {
            engine.discard(plugin.id());
            return Err(e);
        }
        Ok(plugin)
    }

    /// Prove that the world's export has the world's types, not only its
    /// name, so that a mistyped plugin is refused when it is loaded rather
    /// than when it is first used: instantiate it once (under its world's
    /// default limits, deterministic WASI) and look its functions up typed.
    fn check_export_types(&self) -> Result<(), LoadError> {
        use crate::bindings::{controller, runner, scorer, tool_provider};
        let world = self.world();
        let sandbox = Sandbox::new(crate::Limits::for_world(world));
        let mut session = self
            .instantiate(&sandbox, Wasi::Deterministic([0; 32]))
            .map_err(|e| LoadError::Start {
                name: self.name().to_owned(),
                reason: e.to_string(),
            })?;
        let (store, instance) = (&mut session.store, &session.instance);
        let pre = self.pre();
        let typed = match world {
            World::Sampler => {
                controller::GuestIndices::new(pre).and_then(|i| i.load(store, instance).map(drop))
            }
            World::Reward => {
                scorer::GuestIndices::new(pre).and_then(|i| i.load(store, instance).map(drop))
            }
            World::Tool => tool_provider::GuestIndices::new(pre)
                .and_then(|i| i.load(store, instance).map(drop)),
            World::Agent => {
                runner::GuestIndices::new(pre).and_then(|i| i.load(store, instance).map(drop))
            }
        };
        typed.map_err(|e| LoadError::ExportType {
            name: self.name().to_owned(),
            world,
            export: world.export_name(),
            reason: format!("{e:#}"),
        })
    }

    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }

    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    pub fn id(&self) -> &str {
        &self.inner.info.id
    }

    pub fn world(&self) -> World {
        self.inner.info.world
    }

    pub fn engine(&self) -> &PluginEngine {
        &self.inner.engine
    }

    pub(crate) fn pre(&self) -> &InstancePre<HostState> {
        &self.inner.pre
    }

    /// Refuse this plugin for a use that needs another world.
    pub fn expect_world(&self, expected: World) -> Result<(), LoadError> {
        if self.world() == expected {
            Ok(())
        } else {
            Err(LoadError::WrongWorld {
                name: self.name().to_owned(),
                expected,
                actual: self.world(),
            })
        }
    }

    /// The export indices of this plugin's world, found by `find` (a
    /// bindgen `GuestIndices::new`); a failure is a link error naming it.
    pub(crate) fn indices<T>(
        &self,
        find: impl FnOnce(&InstancePre<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, LoadError> {
        find(self.pre()).map_err(|e| LoadError::Link {
            name: self.name().to_owned(),
            reason: format!("{e:#}"),
        })
    }

    /// Instantiate once in `sandbox` and throw the instance away: proves the
    /// plugin starts (its initialisers run within the limits).
    pub fn try_instantiate(&self, sandbox: &Sandbox) -> Result<(), PluginError> {
        self.instantiate(sandbox, Wasi::Live).map(drop)
    }

    /// A fresh instance in its own store, bounded by `sandbox`.
    pub(crate) fn instantiate(
        &self,
        sandbox: &Sandbox,
        wasi: Wasi,
    ) -> Result<Session, PluginError> {
        let slot = sandbox
            .meter
            .take_slot()
            .map_err(|limit| PluginError::Limit {
                plugin: self.name().to_owned(),
                limit,
            })?;
        let state = HostState::new(
            self.inner.name.clone(),
            &sandbox.limits,
            sandbox.caps.clone(),
            wasi,
        );
        let mut store = Store::new(self.engine().engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        // Instantiation runs the guest's initialisers: bound it like setup.
        store.set_epoch_deadline(deadline_ticks(sandbox.limits.setup_deadline));
        let fuel = sandbox.limits.fuel.unwrap_or(u64::MAX);
        let start = Instant::now();
        let instance = store
            .set_fuel(fuel)
            .and_then(|()| self.pre().instantiate(&mut store));
        sandbox.meter.record_call(
            start.elapsed(),
            fuel.saturating_sub(store.get_fuel().unwrap_or(fuel)),
        );
        let last_output = store.data_mut().output.take();
        let instance = instance.map_err(|e| {
            let hit = store.data().limiter.hit;
            classify(
                &self.inner.name,
                e,
                hit,
                sandbox.limits.setup_deadline,
                fuel,
                &last_output,
            )
        })?;
        Ok(Session {
            plugin: self.clone(),
            store,
            instance,
            sandbox: sandbox.clone(),
            poisoned: false,
            last_output,
            _slot: slot,
        })
    }
}

/// The names a component imports and exports at its top level.
struct TopLevelNames {
    imports: Vec<String>,
    exports: Vec<String>,
}

/// Read the top-level import and export names of a component without
/// compiling it (nested modules and components are skipped).
fn top_level_names(name: &str, bytes: &[u8]) -> Result<TopLevelNames, LoadError> {
    use wasmparser::{Parser, Payload};
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Invalid {
        name: name.to_owned(),
        reason: e.to_string(),
    };
    let mut names = TopLevelNames {
        imports: Vec::new(),
        exports: Vec::new(),
    };
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    names
                        .imports
                        .push(import.map_err(invalid)?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    names
                        .exports
                        .push(export.map_err(invalid)?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

/// The one deepwasm world whose interface a component exports.
fn world_of(name: &str, exports: &[String]) -> Result<World, LoadError> {
    let worlds: Vec<World> = exports
        .iter()
        .filter_map(|export| match split_interface_name(export) {
            Some((PACKAGE, interface, version)) if version == PACKAGE_VERSION => {
                World::ALL.into_iter().find(|w| w.export() == interface)
            }
            _ => None,
        })
        .collect();
    match worlds[..] {
        [world] => Ok(world),
        [] => Err(LoadError::NoWorld {
            name: name.to_owned(),
            exports: if exports.is_empty() {
                "nothing".to_owned()
            } else {
                exports
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
        _ => Err(LoadError::SeveralWorlds {
            name: name.to_owned(),
            worlds: worlds
                .iter()
                .map(|w| w.name())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Reject what is not a component before handing it to the compiler, with
/// an error that says what it is instead.
fn check_header(name: &str, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let magic = bytes
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(LoadError::NotWasm {
            name: name.to_owned(),
            magic: if magic.is_empty() {
                "nothing".to_owned()
            } else {
                magic
            },
        });
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Check one import against the world and the grants; says who provides it.
fn check_import(
    name: &str,
    world: World,
    grants: &Grants,
    import: &str,
) -> Result<&'static str, LoadError> {
    let Some((package, interface, version)) = split_interface_name(import) else {
        return Err(LoadError::Unknown {
            name: name.to_owned(),
            import: import.to_owned(),
        });
    };
    if package != PACKAGE {
        // WASI is linked whole (see `PluginEngine::new`); anything else fails
        // at link time with the linker's own explanation.
        return Ok(if package.starts_with("wasi:") {
            "wasi"
        } else {
            "other"
        });
    }
    if !compatible_version(version) {
        return Err(LoadError::WrongVersion {
            name: name.to_owned(),
            import: import.to_owned(),
        });
    }
    if interface == "types" {
        return Ok("deepwasm");
    }
    let Some(iface) = HostInterface::from_name(interface) else {
        return Err(LoadError::Unknown {
            name: name.to_owned(),
            import: import.to_owned(),
        });
    };
    if !world.imports().contains(&iface) {
        return Err(LoadError::OutsideWorld {
            name: name.to_owned(),
            world,
            import: import.to_owned(),
            offered: world
                .imports()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if !grants.allows(iface) {
        return Err(LoadError::NotGranted {
            name: name.to_owned(),
            import: import.to_owned(),
        });
    }
    Ok("deepwasm")
}

/// A live instance and its store: the unit every call runs in.
pub(crate) struct Session {
    pub(crate) plugin: Plugin,
    pub(crate) store: Store<HostState>,
    pub(crate) instance: Instance,
    pub(crate) sandbox: Sandbox,
    /// Set once a call trapped or hit a limit: the instance's state may be
    /// inconsistent and it must not be called again.
    pub(crate) poisoned: bool,
    /// What the guest wrote during the last call.
    pub(crate) last_output: CallOutput,
    /// Its place in the tenant's instance share, given back with it.
    _slot: InstanceSlot,
}

impl Session {
    /// Run `f` as one call under `deadline` and the sandbox's fuel budget
    /// (times `fuel_units`, for batched calls), metering what it used.
    pub(crate) fn call<R>(
        &mut self,
        deadline: Duration,
        fuel_units: u64,
        f: impl FnOnce(&mut Store<HostState>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if self.poisoned {
            return Err(PluginError::Poisoned {
                plugin: self.plugin.name().to_owned(),
            });
        }
        let fuel = match self.sandbox.limits.fuel {
            Some(f) => f.saturating_mul(fuel_units.max(1)),
            None => u64::MAX,
        };
        let store = &mut self.store;
        store.data_mut().limiter.hit = None;
        store.set_epoch_deadline(deadline_ticks(deadline));
        store.data_mut().deadline = CallDeadline::after(deadline);
        let start = Instant::now();
        let result = store.set_fuel(fuel).and_then(|()| f(store, &self.instance));
        let used = fuel.saturating_sub(store.get_fuel().unwrap_or(fuel));
        self.sandbox.meter.record_call(start.elapsed(), used);
        self.last_output = store.data_mut().output.take();
        result.map_err(|e| {
            self.poisoned = true;
            let hit = store.data().limiter.hit;
            let err = classify(
                self.plugin.name(),
                e,
                hit,
                deadline,
                fuel,
                &self.last_output,
            );
            if err.is_limit() {
                self.sandbox.meter.record_limit_hit();
            }
            err
        })
    }
}
