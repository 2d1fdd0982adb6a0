//! The plugin store: each tenant's uploaded components, content-addressed,
//! on disk under `<dir>/<tenant>/<id>.wasm` with a `<id>.json` record beside
//! it, and loaded (compiled, checked against the tenant's grants) in memory.
//!
//! Writes go to a temporary file, are synced, then renamed into place, the
//! record last: a crash mid-upload leaves at most a stray temporary file or
//! a component without its record, and neither is ever listed or loaded.
//! On start every record is read back and its component checked against its
//! id (the SHA-256 of its bytes) before it is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
        let info = self.plugin.info();
        serde_json::json!({
            "id": self.record.id,
            "object": "plugin",
            "name": self.record.name,
            "world": self.record.world,
            "size_bytes": self.record.size_bytes,
            "created_at": self.record.created_at,
            "imports": info.imports,
            "exports": info.exports,
        })
    }
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
}

/// Every tenant's plugins.
pub struct Store {
    dir: PathBuf,
    engine: PluginEngine,
    tenants: Mutex<BTreeMap<String, BTreeMap<String, Stored>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
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

impl Store {
    /// Open the store at `dir` (created if missing) and load the plugins of
    /// the tenants named, with each tenant's grants. Plugins that fail to
    /// load now (a grant withdrawn, a corrupt file) are skipped with a
    /// warning, never deleted.
    pub fn open(
        dir: &Path,
        engine: PluginEngine,
        tenants: &[(String, Grants)],
    ) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the plugin store {}: {e}", dir.display())
        })?;
        let mut all = BTreeMap::new();
        for (tenant, grants) in tenants {
            let mut plugins = BTreeMap::new();
            let tdir = dir.join(tenant);
            // What a crash left half-written is never read (it has no
            // `.json` name), and goes once it is old enough.
            deepwasm_plugins::sweep_partial(&tdir);
            let Ok(entries) = std::fs::read_dir(&tdir) else {
                all.insert(tenant.clone(), plugins);
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                match load_stored(&engine, &path, grants) {
                    Ok(s) => {
                        plugins.insert(s.record.id.clone(), s);
                    }
                    Err(e) => tracing::warn!("plugin store: skipping {}: {e}", path.display()),
                }
            }
            tracing::info!(
                "plugin store: tenant `{tenant}` has {} plugin(s)",
                plugins.len()
            );
            all.insert(tenant.clone(), plugins);
        }
        Ok(Store {
            dir: dir.to_owned(),
            engine,
            tenants: Mutex::new(all),
        })
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
