//! The plugin store: each tenant's uploaded components, content-addressed,
//! and loaded (compiled, checked against the tenant's grants) in memory.
//!
//! Two backends ([`Store`]): the embedded default keeps them on disk
//! ([`DirStore`]); with `--state postgres://...` they are in the shared
//! registry of [`deepwasm_state`] ([`PgStore`]), where every replica sees an
//! upload once it is committed, and each replica compiles (or finds in its
//! local artifact cache) what it is asked to run.
//!
//! On disk, each component is `<dir>/<tenant>/<id>.wasm` with a `<id>.json`
//! record beside it.
//!
//! Writes go to a temporary file, are synced, then renamed into place, the
//! record last: a crash mid-upload leaves at most a stray temporary file or
//! a component without its record, and neither is ever listed or loaded.
//! On start every record is read back and its component checked against its
//! id (the SHA-256 of its bytes) before it is loaded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deepwasm_state::{PgState, PluginRow, Put, StateError};

use deepwasm_plugins::{
    Grants, LoadError, Plugin, PluginEngine, PluginInfo, World, content_id, write_atomically,
};
use serde::{Deserialize, Serialize};

/// What the store keeps about a plugin besides its bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub world: World,
    pub size_bytes: usize,
    /// Unix seconds.
    pub created_at: u64,
}

/// A stored, loaded plugin.
#[derive(Clone, Debug)]
pub struct Stored {
    pub record: Record,
    pub plugin: Plugin,
}

impl Stored {
    pub fn info(&self) -> &PluginInfo {
        self.plugin.info()
    }

    /// The plugin as the API shows it.
    pub fn json(&self) -> serde_json::Value {
        listing(&self.record, &interface_json(&self.plugin))
    }
}

/// A plugin's imports and exports, as the API lists them.
fn interface_json(plugin: &Plugin) -> serde_json::Value {
    let info = plugin.info();
    serde_json::json!({"imports": info.imports, "exports": info.exports})
}

/// A plugin as the API lists it: its record and `interfaces`' imports and
/// exports.
fn listing(record: &Record, interfaces: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "object": "plugin",
        "name": record.name,
        "world": record.world,
        "size_bytes": record.size_bytes,
        "created_at": record.created_at,
        "imports": interfaces["imports"],
        "exports": interfaces["exports"],
    })
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "a plugin named `{name}` is already stored (id {id}); delete it first or upload under another name"
    )]
    NameTaken { name: String, id: String },
    #[error("the tenant already stores {0} plugins, its limit")]
    TooMany(usize),
    #[error("cannot store the plugin: {0}")]
    Io(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Every tenant's plugins, on disk.
pub struct DirStore {
    dir: PathBuf,
    engine: PluginEngine,
    tenants: Mutex<BTreeMap<String, BTreeMap<String, Stored>>>,
}

impl std::fmt::Debug for DirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl DirStore {
    /// Open the store at `dir` (created if missing) and load the plugins of
    /// the tenants named, with each tenant's grants. Plugins that fail to
    /// load now (a grant withdrawn, a corrupt file) are skipped with a
    /// warning, never deleted.
    pub fn open(
        dir: &Path,
        engine: PluginEngine,
        tenants: &[(String, Grants)],
    ) -> anyhow::Result<DirStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the plugin store {}: {e}", dir.display())
        })?;
        let store = DirStore {
            dir: dir.to_owned(),
            engine,
            tenants: Mutex::new(BTreeMap::new()),
        };
        for (tenant, grants) in tenants {
            store.load_tenant(tenant, grants);
        }
        Ok(store)
    }

    /// (Re)load `tenant`'s plugins from disk under `grants`: at start, and
    /// when a reload of the tenants file changed the tenant.
    pub fn load_tenant(&self, tenant: &str, grants: &Grants) {
        let mut plugins = BTreeMap::new();
        let tdir = self.dir.join(tenant);
        // What a crash left half-written is never read (it has no `.json`
        // name), and goes once it is old enough.
        deepwasm_plugins::sweep_partial(&tdir);
        if let Ok(entries) = std::fs::read_dir(&tdir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                match load_stored(&self.engine, &path, grants) {
                    Ok(s) => {
                        plugins.insert(s.record.id.clone(), s);
                    }
                    Err(e) => tracing::warn!("plugin store: skipping {}: {e}", path.display()),
                }
            }
        }
        tracing::info!(
            "plugin store: tenant `{tenant}` has {} plugin(s)",
            plugins.len()
        );
        self.lock().insert(tenant.to_owned(), plugins);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Stored>>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Validate, compile and store a component for `tenant`. The same bytes
    /// uploaded again answer the stored plugin (`false`: nothing new).
    /// Blocking: compiling takes milliseconds (Rust) to seconds (Python).
    pub fn upload(
        &self,
        tenant: &str,
        grants: &Grants,
        name: &str,
        bytes: &[u8],
        max_plugins: usize,
    ) -> Result<(Stored, bool), UploadError> {
        let id = content_id(bytes);
        {
            let all = self.lock();
            let mine = all.get(tenant);
            if let Some(s) = mine.and_then(|m| m.get(&id)) {
                return Ok((s.clone(), false));
            }
            if let Some(other) = mine.and_then(|m| m.values().find(|s| s.record.name == name)) {
                return Err(UploadError::NameTaken {
                    name: name.to_owned(),
                    id: other.record.id.clone(),
                });
            }
            if mine.map_or(0, BTreeMap::len) >= max_plugins {
                return Err(UploadError::TooMany(max_plugins));
            }
        }
        let plugin = self.engine.load(name, bytes, grants)?;
        let record = Record {
            id: id.clone(),
            name: name.to_owned(),
            world: plugin.world(),
            size_bytes: bytes.len(),
            created_at: now_secs(),
        };
        let tdir = self.dir.join(tenant);
        std::fs::create_dir_all(&tdir)
            .map_err(|e| UploadError::Io(format!("{}: {e}", tdir.display())))?;
        let wasm = tdir.join(format!("{id}.wasm"));
        write_atomically(&wasm, bytes)
            .map_err(|e| UploadError::Io(format!("{}: {e}", wasm.display())))?;
        let json = tdir.join(format!("{id}.json"));
        let text =
            serde_json::to_vec_pretty(&record).map_err(|e| UploadError::Io(e.to_string()))?;
        write_atomically(&json, &text)
            .map_err(|e| UploadError::Io(format!("{}: {e}", json.display())))?;
        let stored = Stored { record, plugin };
        let mut all = self.lock();
        let mine = all.entry(tenant.to_owned()).or_default();
        // A concurrent upload of the same name may have won the race.
        if let Some(other) = mine
            .values()
            .find(|s| s.record.name == name && s.record.id != id)
        {
            let err = UploadError::NameTaken {
                name: name.to_owned(),
                id: other.record.id.clone(),
            };
            drop(all);
            self.remove_files(tenant, &id);
            return Err(err);
        }
        mine.insert(id, stored.clone());
        Ok((stored, true))
    }

    /// `tenant`'s plugin by id or by name.
    pub fn get(&self, tenant: &str, id_or_name: &str) -> Option<Stored> {
        let all = self.lock();
        let mine = all.get(tenant)?;
        if is_id(id_or_name)
            && let Some(s) = mine.get(id_or_name)
        {
            return Some(s.clone());
        }
        mine.values().find(|s| s.record.name == id_or_name).cloned()
    }

    /// `tenant`'s plugins, oldest first.
    pub fn list(&self, tenant: &str) -> Vec<Stored> {
        let mut v: Vec<Stored> = self
            .lock()
            .get(tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| {
            (a.record.created_at, &a.record.name).cmp(&(b.record.created_at, &b.record.name))
        });
        v
    }

    /// Delete `tenant`'s plugin; `None` if it has none by that id or name.
    pub fn delete(&self, tenant: &str, id_or_name: &str) -> Option<Stored> {
        let stored = self.get(tenant, id_or_name)?;
        let removed = self.lock().get_mut(tenant)?.remove(&stored.record.id)?;
        self.remove_files(tenant, &removed.record.id);
        // Other tenants may store the same bytes: the compiled form stays
        // while anyone holds it.
        let still_used = self
            .lock()
            .values()
            .any(|m| m.contains_key(&removed.record.id));
        if !still_used {
            self.engine.evict(&removed.record.id);
        }
        Some(removed)
    }

    fn remove_files(&self, tenant: &str, id: &str) {
        let tdir = self.dir.join(tenant);
        // The record first: without it the component is never loaded.
        for ext in ["json", "wasm"] {
            let p = tdir.join(format!("{id}.{ext}"));
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("plugin store: cannot remove {}: {e}", p.display());
            }
        }
    }
}

/// Load one stored plugin from its record, checking the bytes against the id.
fn load_stored(
    engine: &PluginEngine,
    record_path: &Path,
    grants: &Grants,
) -> anyhow::Result<Stored> {
    let text = std::fs::read(record_path)?;
    let record: Record = serde_json::from_slice(&text)?;
    if !is_id(&record.id) {
        anyhow::bail!("bad id `{}`", record.id);
    }
    let wasm = record_path.with_file_name(format!("{}.wasm", record.id));
    let bytes = std::fs::read(&wasm).map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    if content_id(&bytes) != record.id {
        anyhow::bail!("{} does not match its id (a corrupt file?)", wasm.display());
    }
    let plugin = engine.load(&record.name, &bytes, grants)?;
    Ok(Stored { record, plugin })
}

/// Every tenant's plugins in the shared registry, and this replica's
/// loaded copies of those it was asked to run.
pub struct PgStore {
    state: PgState,
    engine: PluginEngine,
    /// Loaded plugins by (tenant, id): each was loaded under its tenant's
    /// grants, and a reload that changes them drops the tenant's.
    loaded: Mutex<HashMap<(String, String), Plugin>>,
}

impl PgStore {
    pub fn new(state: PgState, engine: PluginEngine) -> PgStore {
        PgStore {
            state,
            engine,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Plugin>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(row: &PluginRow) -> Result<Record, UploadError> {
        Ok(Record {
            id: row.id.clone(),
            name: row.name.clone(),
            world: row.world.parse().map_err(|e: String| {
                UploadError::Io(format!("plugin `{}` in the registry: {e}", row.name))
            })?,
            size_bytes: row.size_bytes as usize,
            created_at: row.created_at,
        })
    }

    async fn upload(
        &self,
        tenant: &str,
        grants: &Grants,
        name: &str,
        bytes: Vec<u8>,
        max_plugins: usize,
    ) -> Result<(Stored, bool), UploadError> {
        let id = content_id(&bytes);
        // Compile first: what is refused never reaches the registry, and
        // the compiled form is then in this replica's cache.
        let (engine, owned_name, owned_grants) =
            (self.engine.clone(), name.to_owned(), grants.clone());
        let (plugin, bytes) = tokio::task::spawn_blocking(move || {
            engine
                .load(&owned_name, &bytes, &owned_grants)
                .map(|p| (p, bytes))
        })
        .await
        .map_err(|e| UploadError::Io(format!("the compile stopped: {e}")))??;
        let row = PluginRow {
            id: id.clone(),
            name: name.to_owned(),
            world: plugin.world().name().to_owned(),
            size_bytes: bytes.len() as u64,
            created_at: now_secs(),
            info: interface_json(&plugin).to_string(),
        };
        let (row, created) = match self
            .state
            .put_plugin(tenant, &row, &bytes, max_plugins)
            .await?
        {
            Put::Created(row) => (row, true),
            Put::Existing(row) => (row, false),
            Put::NameTaken { id } => {
                return Err(UploadError::NameTaken {
                    name: name.to_owned(),
                    id,
                });
            }
            Put::TooMany => return Err(UploadError::TooMany(max_plugins)),
        };
        let record = Self::record(&row)?;
        // The same bytes stored under another name are loaded under that
        // name when next asked for.
        if row.name == name {
            self.loaded()
                .insert((tenant.to_owned(), id), plugin.clone());
        }
        Ok((Stored { record, plugin }, created))
    }

    async fn get(
        &self,
        tenant: &str,
        grants: &Grants,
        id_or_name: &str,
        max_plugins: usize,
    ) -> Result<Option<Stored>, UploadError> {
        let Some(row) = self.state.plugin(tenant, id_or_name).await? else {
            // Deleted through another replica: this one's copy goes too.
            self.forget_stale(tenant, |id, name| id == id_or_name || name == id_or_name);
            return Ok(None);
        };
        // A name now given to other bytes: the copy of the old ones goes.
        self.forget_stale(tenant, |id, name| name == row.name && id != row.id);
        let record = Self::record(&row)?;
        let key = (tenant.to_owned(), row.id.clone());
        if let Some(plugin) = self.loaded().get(&key) {
            return Ok(Some(Stored {
                record,
                plugin: plugin.clone(),
            }));
        }
        // Uploaded through another replica (or before this one started):
        // load it here, checking the bytes against their id.
        let bytes = self
            .state
            .plugin_bytes(&row.id)
            .await?
            .ok_or_else(|| UploadError::Io(format!("plugin `{}` has no bytes", row.name)))?;
        if content_id(&bytes) != row.id {
            return Err(UploadError::Io(format!(
                "plugin `{}`'s bytes do not match its id",
                row.name
            )));
        }
        let (engine, name, grants) = (self.engine.clone(), row.name.clone(), grants.clone());
        let plugin = tokio::task::spawn_blocking(move || engine.load(&name, &bytes, &grants))
            .await
            .map_err(|e| UploadError::Io(format!("the load stopped: {e}")))??;
        let crowded = {
            let mut loaded = self.loaded();
            loaded.insert(key, plugin.clone());
            loaded.keys().filter(|(t, _)| t == tenant).count() > max_plugins
        };
        if crowded {
            self.prune(tenant).await?;
        }
        Ok(Some(Stored { record, plugin }))
    }

    /// Drop this replica's loaded copies of `tenant`'s plugins that the
    /// registry no longer holds (deleted through another replica). Run when
    /// the tenant has more loaded here than it may store, so a tenant that
    /// uploads, uses and deletes through different replicas cannot grow
    /// this replica's memory.
    async fn prune(&self, tenant: &str) -> Result<(), UploadError> {
        let live: std::collections::HashSet<String> = self
            .state
            .plugins(tenant)
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect();
        self.forget_stale(tenant, |id, _| !live.contains(id));
        Ok(())
    }

    /// `tenant`'s plugins loaded on this replica.
    fn loaded_count(&self, tenant: &str) -> usize {
        self.loaded().keys().filter(|(t, _)| t == tenant).count()
    }

    async fn list(&self, tenant: &str) -> Result<Vec<serde_json::Value>, UploadError> {
        let rows = self.state.plugins(tenant).await?;
        rows.iter()
            .map(|row| {
                let info = serde_json::from_str(&row.info).unwrap_or_default();
                Ok(listing(&Self::record(row)?, &info))
            })
            .collect()
    }

    async fn delete(&self, tenant: &str, id_or_name: &str) -> Result<Option<Record>, UploadError> {
        let Some(row) = self.state.delete_plugin(tenant, id_or_name).await? else {
            return Ok(None);
        };
        self.forget(tenant, &row.id);
        Ok(Some(Self::record(&row)?))
    }

    /// Drop this replica's loaded copy of `tenant`'s plugin `id`, and its
    /// compiled form if no other tenant here runs it.
    fn forget(&self, tenant: &str, id: &str) {
        let mut loaded = self.loaded();
        if loaded.remove(&(tenant.to_owned(), id.to_owned())).is_some()
            && !loaded.keys().any(|(_, other)| other == id)
        {
            self.engine.evict(id);
        }
    }

    /// Drop this replica's loaded copies of `tenant`'s plugins for which
    /// `stale(id, name)` holds.
    fn forget_stale(&self, tenant: &str, stale: impl Fn(&str, &str) -> bool) {
        let gone: Vec<String> = self
            .loaded()
            .iter()
            .filter(|((t, id), plugin)| t == tenant && stale(id, plugin.name()))
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in gone {
            self.forget(tenant, &id);
        }
    }

    /// Drop `tenant`'s loaded plugins (its grants changed): they are loaded
    /// again, under the new grants, when next used.
    fn forget_tenant(&self, tenant: &str) {
        self.loaded().retain(|(t, _), _| t != tenant);
    }
}

/// The plugin store the server runs on.
pub enum Store {
    Dir(DirStore),
    Pg(PgStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Dir(d) => d.fmt(f),
            Store::Pg(p) => f
                .debug_struct("PgStore")
                .field("state", &p.state)
                .finish_non_exhaustive(),
        }
    }
}

impl Store {
    /// Validate, compile and store a component for `tenant`. The same bytes
    /// uploaded again answer the stored plugin (`false`: nothing new).
    pub async fn upload(
        self: &Arc<Self>,
        tenant: &str,
        grants: &Grants,
        name: &str,
        bytes: Vec<u8>,
        max_plugins: usize,
    ) -> Result<(Stored, bool), UploadError> {
        match &**self {
            Store::Dir(_) => {
                let (store, tenant, grants, name) = (
                    self.clone(),
                    tenant.to_owned(),
                    grants.clone(),
                    name.to_owned(),
                );
                tokio::task::spawn_blocking(move || {
                    let Store::Dir(dir) = &*store else {
                        unreachable!("matched above")
                    };
                    dir.upload(&tenant, &grants, &name, &bytes, max_plugins)
                })
                .await
                .map_err(|e| UploadError::Io(format!("the upload stopped: {e}")))?
            }
            Store::Pg(pg) => pg.upload(tenant, grants, name, bytes, max_plugins).await,
        }
    }

    /// `tenant`'s plugin by id or by name, loaded under `grants`.
    /// `max_plugins` bounds what this replica keeps loaded of the tenant's.
    pub async fn get(
        &self,
        tenant: &str,
        grants: &Grants,
        id_or_name: &str,
        max_plugins: usize,
    ) -> Result<Option<Stored>, UploadError> {
        match self {
            Store::Dir(d) => Ok(d.get(tenant, id_or_name)),
            Store::Pg(p) => p.get(tenant, grants, id_or_name, max_plugins).await,
        }
    }

    /// `tenant`'s plugins loaded (compiled and linked) in this process.
    pub fn loaded_count(&self, tenant: &str) -> usize {
        match self {
            Store::Dir(d) => d.lock().get(tenant).map_or(0, BTreeMap::len),
            Store::Pg(p) => p.loaded_count(tenant),
        }
    }

    /// `tenant`'s plugins as the API lists them, oldest first.
    pub async fn list(&self, tenant: &str) -> Result<Vec<serde_json::Value>, UploadError> {
        match self {
            Store::Dir(d) => Ok(d.list(tenant).iter().map(Stored::json).collect()),
            Store::Pg(p) => p.list(tenant).await,
        }
    }

    /// Delete `tenant`'s plugin; `None` if it has none by that id or name.
    pub async fn delete(
        &self,
        tenant: &str,
        id_or_name: &str,
    ) -> Result<Option<Record>, UploadError> {
        match self {
            Store::Dir(d) => Ok(d.delete(tenant, id_or_name).map(|s| s.record)),
            Store::Pg(p) => p.delete(tenant, id_or_name).await,
        }
    }

    /// `tenant` changed in a reload of the tenants file: its plugins are
    /// loaded again under its new grants (at once on disk, when next used
    /// in the registry).
    pub fn tenant_changed(&self, tenant: &str, grants: Option<&Grants>) {
        match (self, grants) {
            (Store::Dir(d), Some(g)) => d.load_tenant(tenant, g),
            (Store::Dir(d), None) => {
                d.lock().remove(tenant);
            }
            (Store::Pg(p), _) => p.forget_tenant(tenant),
        }
    }
}
