//! Builds every guest plugin under `plugins/` from source for `wasm32-wasip2`,
//! copies the components to `<target>/plugins/<name>.wasm`, and writes
//! constants with their paths for the tests and benchmarks.
//!
//! The plugins are a workspace of their own (another target, another
//! Cargo.lock), built by a nested cargo in a target directory of its own so
//! it never waits on the lock of the build that runs this script.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(e) = run() {
        // A build script reports failure by exiting non-zero; the message is
        // what the developer sees.
        eprintln!("error: building the guest plugins failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .ok_or("cannot find the workspace root")?
        .to_owned();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target_dir = cargo_target_dir(&out_dir)?;

    for path in ["Cargo.toml", "Cargo.lock", ".cargo", "sdk", "rust"] {
        println!("cargo:rerun-if-changed={}", plugins.join(path).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let names = rust_plugins(&plugins)?;
    let wasm_target_dir = target_dir.join("wasm-plugins");
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&wasm_target_dir);
    for name in &names {
        cmd.args(["-p", name]);
    }
    // The outer build's settings are for the host target, not for Wasm.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_ENCODED_RUSTFLAGS")
            || key == "RUSTFLAGS"
            || key == "CARGO_TARGET_DIR"
            || key == "CARGO_BUILD_TARGET"
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_FEATURE_")
            || key == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release --target wasm32-wasip2` in {} failed ({status}); \
             is the target installed? (`rustup target add wasm32-wasip2`)",
            plugins.display()
        ));
    }

    let dest = target_dir.join("plugins");
    fs::create_dir_all(&dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut consts = String::new();
    let mut all = String::from(
        "/// Every plugin built from source, as (name, path).\npub const ALL: &[(&str, &str)] = &[\n",
    );
    for name in &names {
        let built = wasm_target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let copy = dest.join(format!("{name}.wasm"));
        fs::copy(&built, &copy)
            .map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), copy.display()))?;
        let ident = name.replace('-', "_").to_uppercase();
        let path = copy.display().to_string();
        writeln!(consts, "/// `plugins/rust/{name}`, built for wasm32-wasip2.\npub const {ident}: &str = {path:?};").unwrap();
        writeln!(all, "    ({name:?}, {ident}),").unwrap();
    }
    all.push_str("];\n");
    fs::write(out_dir.join("plugins.rs"), consts + &all).map_err(|e| e.to_string())?;
    Ok(())
}

/// The crates under `plugins/rust/`, by directory name.
fn rust_plugins(plugins: &Path) -> Result<Vec<String>, String> {
    let dir = plugins.join("rust");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.path().join("Cargo.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The outer build's target directory: `OUT_DIR` is
/// `<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`.
fn cargo_target_dir(out_dir: &Path) -> Result<PathBuf, String> {
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .ok_or("unexpected OUT_DIR layout")?;
    let mut dir = profile_dir.parent().ok_or("unexpected OUT_DIR layout")?;
    if let Ok(target) = env::var("TARGET")
        && dir.file_name().is_some_and(|n| n == target.as_str())
    {
        dir = dir.parent().ok_or("unexpected OUT_DIR layout")?;
    }
    Ok(dir.to_owned())
}
