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
use std::time::Duration;

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
        sweep_partial(&dir);
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
///
/// The temporary file's name starts with [`PARTIAL_PREFIX`]: one left by a
/// crash is never mistaken for the real thing, and [`sweep_partial`]
/// removes it later.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(PARTIAL_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// How the temporary files of [`write_atomically`] are named.
pub const PARTIAL_PREFIX: &str = ".deepwasm-partial-";

/// How old a partial file must be before [`sweep_partial`] removes it: a
/// directory may be shared by processes, and a younger file may be another
/// one's write in progress.
pub const PARTIAL_MAX_AGE: Duration = Duration::from_secs(600);

/// Remove the partial files a crash left in `dir` (those of
/// [`write_atomically`] older than [`PARTIAL_MAX_AGE`]); returns how many.
pub fn sweep_partial(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PARTIAL_PREFIX))
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= PARTIAL_MAX_AGE);
        if stale && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}
