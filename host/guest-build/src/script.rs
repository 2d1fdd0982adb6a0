//! For build scripts that build plugins: where the outer build's target
//! directory is, and what should make cargo run them again.

use std::env;
use std::path::{Path, PathBuf};

use crate::ENV_VARS;
use crate::rust::{Built, CargoBuild};

/// Where a build script of a crate under `host/` finds the workspace and
/// puts what it builds.
#[derive(Debug)]
pub struct Layout {
    /// The workspace root.
    pub root: PathBuf,
    /// `plugins/`, the guest plugins.
    pub plugins: PathBuf,
    /// `wit/`, the WIT package.
    pub wit: PathBuf,
    /// The build script's `OUT_DIR`.
    pub out_dir: PathBuf,
    /// The target directory of the build running the script.
    pub target_dir: PathBuf,
}

impl Layout {
    /// From the environment cargo gives a build script.
    pub fn from_env() -> Result<Self, String> {
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
        let root = manifest
            .ancestors()
            .nth(2)
            .ok_or("cannot find the workspace root")?
            .to_owned();
        let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
        let target_dir = target_dir(&out_dir).ok_or("unexpected OUT_DIR layout")?;
        Ok(Layout {
            plugins: root.join("plugins"),
            wit: root.join("wit"),
            root,
            out_dir,
            target_dir,
        })
    }

    /// Build the guest workspace's Rust packages `names` with a nested
    /// cargo in `<target>/wasm-plugins`: its own target directory, so it
    /// never waits on the outer build's lock, and one for every build
    /// script, so they share compiled dependencies.
    pub fn build_rust(&self, names: &[String]) -> Result<Vec<Built>, String> {
        let cargo = PathBuf::from(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        CargoBuild {
            cargo: &cargo,
            dir: &self.plugins,
            target_dir: Some(&self.target_dir.join("wasm-plugins")),
            packages: names,
        }
        .run()
        .map_err(|e| e.to_string())
    }
}

/// The target directory of the build running this build script, from its
/// `OUT_DIR` (`<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`).
pub fn target_dir(out_dir: &Path) -> Option<PathBuf> {
    let profile_dir = out_dir.ancestors().nth(3)?;
    let mut dir = profile_dir.parent()?;
    if let Ok(triple) = env::var("TARGET")
        && dir.file_name().is_some_and(|n| n == triple.as_str())
    {
        dir = dir.parent()?;
    }
    Some(dir.to_owned())
}

/// Tell cargo to run the build script again when the plugin sources under
/// `plugins/` (the subdirectories named in `dirs`, and the guest
/// workspace's manifests), the WIT in `wit`, or where a toolchain is looked
/// for changes.
pub fn rerun_if_changed(plugins: &Path, dirs: &[&str], wit: &Path) {
    for path in ["Cargo.toml", "Cargo.lock", ".cargo"].iter().chain(dirs) {
        println!("cargo:rerun-if-changed={}", plugins.join(path).display());
    }
    println!("cargo:rerun-if-changed={}", wit.display());
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_target_directory_above_out_dir() {
        let out = Path::new("/w/target/debug/build/deepwasm-plugin-artifacts-0123/out");
        assert_eq!(target_dir(out).unwrap(), Path::new("/w/target"));
    }
}
