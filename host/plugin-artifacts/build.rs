//! Builds every guest plugin under `plugins/` from source, copies the
//! components to `<target>/plugins/<name>.wasm`, and writes constants with
//! their paths for the tests and benchmarks.
//!
//! The Rust plugins (`plugins/rust/*`) are a workspace of their own (another
//! target, another Cargo.lock), built for `wasm32-wasip2` by a nested cargo
//! in a target directory of its own so it never waits on the lock of the
//! build that runs this script. The Python, JavaScript and C plugins
//! (`plugins/{python,js,c}/*`) are built by their own toolchains, which
//! `scripts/setup` installs, through `deepwasm-guest-build` (as `deepwasm
//! plugin build` builds them); their components are named
//! `<lang>-<name>.wasm`. A missing toolchain fails the build, naming it.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use deepwasm_guest_build::batch::{self, Batch};
use deepwasm_guest_build::script::{self, Layout};
use deepwasm_guest_build::{Lang, Toolchains};

fn main() {
    if let Err(e) = run() {
        // A build script reports failure by exiting non-zero; the message is
        // what the developer sees.
        eprintln!("error: building the guest plugins failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let layout = Layout::from_env()?;
    let (root, plugins, wit) = (&layout.root, &layout.plugins, &layout.wit);
    let (out_dir, target_dir) = (&layout.out_dir, &layout.target_dir);
    script::rerun_if_changed(plugins, &["sdk", "rust", "python", "js", "c"], wit);

    let dest = target_dir.join("plugins");
    fs::create_dir_all(&dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut consts = String::new();
    let mut all = String::from(
        "/// Every plugin built from source, as (name, path).\npub const ALL: &[(&str, &str)] = &[\n",
    );
    let mut add = |name: &str, doc: String, path: &Path| {
        let ident = name.replace('-', "_").to_uppercase();
        let path = path.display().to_string();
        writeln!(consts, "/// {doc}\npub const {ident}: &str = {path:?};").unwrap();
        writeln!(all, "    ({name:?}, {ident}),").unwrap();
    };

    // Rust: one nested cargo for the whole guest workspace.
    let names = rust_plugins(plugins)?;
    let built = layout.build_rust(&names)?;
    for name in &names {
        let component = built
            .iter()
            .find(|b| b.package_dir.ends_with(Path::new("rust").join(name)))
            .ok_or_else(|| format!("cargo built no component for plugins/rust/{name}"))?;
        let copy = dest.join(format!("{name}.wasm"));
        fs::copy(&component.wasm, &copy).map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                component.wasm.display(),
                copy.display()
            )
        })?;
        add(
            name,
            format!("`plugins/rust/{name}`, built for wasm32-wasip2."),
            &copy,
        );
    }

    // The other languages, `NUM_JOBS` components at a time (componentize-py
    // and componentize-js take seconds each, mostly on one core).
    let mut jobs = Vec::new();
    let mut shared = Vec::new();
    for lang in [Lang::Python, Lang::Js, Lang::C] {
        let dir = plugins.join(lang.name());
        jobs.extend(batch::discover(lang, &dir, &format!("{lang}-")).map_err(|e| e.to_string())?);
        // The helpers beside the plugin directories (`deepwasm_plugin.*`).
        shared.push((lang, dir));
    }
    let parallel = env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    batch::build_all(
        &jobs,
        &Toolchains::find(),
        &Batch {
            wit,
            shared: &shared,
            work_dir: out_dir,
            dest: &dest,
            strict: true,
            parallel,
        },
    )
    .map_err(|e| e.to_string())?;
    for job in &jobs {
        let source = job.dir.strip_prefix(root).unwrap_or(&job.dir);
        add(
            &job.name,
            format!(
                "`{}` ({} world), built with the {} toolchain.",
                source.display(),
                job.world,
                job.lang
            ),
            &dest.join(format!("{}.wasm", job.name)),
        );
    }
    all.push_str("];\n");
    fs::write(out_dir.join("plugins.rs"), consts + &all).map_err(|e| e.to_string())
}

/// The crates under `plugins/rust/`, by directory name (which is also the
/// package name).
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
