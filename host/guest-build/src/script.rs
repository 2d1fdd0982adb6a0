//! For build scripts that build plugins: where the outer build's target
//! directory is, and what should make cargo run them again.

use std::env;
use std::path::{Path, PathBuf};

use crate::ENV_VARS;

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
