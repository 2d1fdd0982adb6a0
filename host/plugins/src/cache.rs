//! A content-addressed, on-disk cache of compiled components.
//!
//! Compiling an interpreted guest (a Python or JavaScript component) takes
//! 8–19 s; loading its compiled form takes ~30 ms. Entries are keyed by the
//! SHA-256 of the component's bytes and a hash of everything in the engine's
//! configuration that affects compiled code (wasmtime's own compatibility
//! hash, which includes its version), so a changed engine never loads a stale
//! artifact. Writes go to a temporary file that is synced and renamed into
//! place: a crash never leaves a partial entry under a real name.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct CompileCache {
    dir: PathBuf,
    /// Hex hash of the engine configuration.
    engine_hash: String,
}

/// Feeds `Hash` output into SHA-256, giving a hash that is stable across runs
/// and processes (std's `DefaultHasher` promises neither).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(
            digest[..8]
                .try_into()
                .expect("a SHA-256 digest has 32 bytes"),
        )
    }
}

impl CompileCache {
    pub(crate) fn open(dir: PathBuf, engine: &Engine) -> anyhow::Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| {
            anyhow::anyhow!("cannot create the component cache {}: {e}", dir.display())
        })?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hex::encode(&hasher.0.finalize()[..8]);
        Ok(CompileCache { dir, engine_hash })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of a component whose bytes hash to `id`.
    pub(crate) fn key(&self, id: &str) -> String {
        format!("{id}-{}", self.engine_hash)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// The cached component under `key`, if there is a usable one. An entry
    /// that fails to load (truncated, from another wasmtime) is removed.
    pub(crate) fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let path = self.path(key);
        if !path.exists() {
            return None;
        }
        // SAFETY: `deserialize_file` runs the file's machine code. The files in
        // this directory are written only by `store` below from components
        // this process compiled, and the directory is documented as private
        // to the host; wasmtime additionally checks the header and engine
        // compatibility of what it loads.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("dropping unusable cache entry {}: {e}", path.display());
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Drop the entry under `key`, if any.
    pub(crate) fn remove(&self, key: &str) {
        let _ = fs::remove_file(self.path(key));
    }

    /// Write `component` under `key`, atomically.
    pub(crate) fn store(&self, key: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize().map_err(anyhow::Error::from)?;
        let path = self.path(key);
        write_atomically(&path, &bytes)
    }
}

/// Write `bytes` to `path` so that readers see either the old file or the
/// whole new one: write a temporary file beside it, sync, rename, sync the
/// directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
