//! Compiles the built-in plugins from `plugins/rust` and embeds them.
//!
//! The nested cargo builds in `<target>/wasm-plugins`, as the artifacts
//! crate's does, so the two share compiled dependencies; the components are
//! copied into `OUT_DIR` because another build may rewrite that directory
//! under this crate's feet.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use deepwasm_guest_build::script::{self, Layout};

/// The crates embedded, as (crate, constant).
const BUILTINS: &[(&str, &str)] = &[("json-schema", "JSON_SCHEMA")];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: building the built-in plugins failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let layout = Layout::from_env()?;
    script::rerun_if_changed(&layout.plugins, &["sdk", "rust"], &layout.wit);
    let names: Vec<String> = BUILTINS.iter().map(|(n, _)| n.to_string()).collect();
    let built = layout.build_rust(&names)?;
    let out_dir = &layout.out_dir;
    let mut consts = String::new();
    for (name, ident) in BUILTINS {
        let from = &built
            .iter()
            .find(|b| b.package_dir.ends_with(Path::new("rust").join(name)))
            .ok_or_else(|| format!("cargo built no component for plugins/rust/{name}"))?
            .wasm;
        let to = out_dir.join(format!("{name}.wasm"));
        fs::copy(from, &to).map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
        writeln!(
            consts,
            "/// `plugins/rust/{name}`, compiled for wasm32-wasip2.\npub const {ident}: &[u8] = include_bytes!({:?});",
            to.display().to_string()
        )
        .unwrap();
    }
    fs::write(out_dir.join("builtins.rs"), consts).map_err(|e| e.to_string())
}
