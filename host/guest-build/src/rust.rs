//! Rust plugins: a `cdylib` crate built by cargo for `wasm32-wasip2`, which
//! writes the component itself.
//!
//! When this runs inside a build script, the outer cargo holds the lock of
//! its own target directory for the whole build: a nested cargo must use
//! another one ([`CargoBuild::target_dir`]) or it waits for ever.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BuildError, run};

/// The target every Rust plugin is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// One `cargo build --release --target wasm32-wasip2`.
#[derive(Clone, Debug)]
pub struct CargoBuild<'a> {
    /// The cargo to run (in a build script, `$CARGO`).
    pub cargo: &'a Path,
    /// The crate or workspace directory cargo runs in.
    pub dir: &'a Path,
    /// `--target-dir`; `None` leaves it to cargo (`$CARGO_TARGET_DIR` or the
    /// workspace's `target/`).
    pub target_dir: Option<&'a Path>,
    /// The packages to build (`-p`); empty builds the default members.
    pub packages: &'a [String],
}

/// A component cargo wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// The directory of the package's `Cargo.toml`.
    pub package_dir: PathBuf,
    /// The component, under the target directory.
    pub wasm: PathBuf,
}

impl CargoBuild<'_> {
    /// Run the build; one entry per `cdylib` built, in cargo's order.
    pub fn run(&self) -> Result<Vec<Built>, BuildError> {
        let mut cmd = Command::new(self.cargo);
        cmd.current_dir(self.dir).args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ]);
        if let Some(dir) = self.target_dir {
            cmd.arg("--target-dir").arg(dir);
        }
        for p in self.packages {
            cmd.args(["-p", p]);
        }
        // Settings an outer cargo passes to a build script are for the host
        // target (and clippy's wrapper is for the outer workspace only).
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_ENCODED_RUSTFLAGS")
                || key == "RUSTFLAGS"
                || key == "CARGO_BUILD_TARGET"
                || key.starts_with("CARGO_PROFILE_")
                || key.starts_with("CARGO_FEATURE_")
                || key == "RUSTC_WORKSPACE_WRAPPER"
                || (self.target_dir.is_some() && key == "CARGO_TARGET_DIR")
            {
                cmd.env_remove(&*key);
            }
        }
        let stdout = run(cmd).map_err(|e| match e {
            BuildError::Failed {
                command,
                status,
                output,
            } => BuildError::Failed {
                command,
                status,
                output: format!(
                    "{output}\n(a missing target is installed with `rustup target add {TARGET}`)"
                ),
            },
            e => e,
        })?;
        Ok(cdylibs(&stdout))
    }
}

/// The `.wasm` files of the `cdylib` targets in cargo's JSON messages.
fn cdylibs(messages: &str) -> Vec<Built> {
    let mut built = Vec::new();
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if msg["reason"] != "compiler-artifact" || !is_cdylib {
            continue;
        }
        let Some(package_dir) = msg["manifest_path"]
            .as_str()
            .and_then(|m| Path::new(m).parent())
        else {
            continue;
        };
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                built.push(Built {
                    package_dir: package_dir.to_owned(),
                    wasm: PathBuf::from(f),
                });
            }
        }
    }
    built
}

/// Build the plugin crate in `dir`; the component's path.
pub(crate) fn build_crate(cargo: &Path, dir: &Path) -> Result<PathBuf, BuildError> {
    let built = CargoBuild {
        cargo,
        dir,
        target_dir: None,
        packages: &[],
    }
    .run()?;
    let mut wasm = built.into_iter().map(|b| b.wasm);
    match (wasm.next(), wasm.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(BuildError::Source {
            dir: dir.to_owned(),
            why: "cargo built no `.wasm` library: a plugin crate needs `crate-type = [\"cdylib\"]`"
                .into(),
        }),
        (Some(_), Some(_)) => Err(BuildError::Source {
            dir: dir.to_owned(),
            why: "cargo built several `.wasm` libraries; build one plugin crate at a time".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_components_in_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","manifest_path":"/p/rust/a/Cargo.toml","target":{"kind":["cdylib"]},"filenames":["/t/wasm32-wasip2/release/a.wasm"]}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/p/sdk/Cargo.toml","target":{"kind":["lib"]},"filenames":["/t/libsdk.rlib"]}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        assert_eq!(
            cdylibs(&messages),
            [Built {
                package_dir: "/p/rust/a".into(),
                wasm: "/t/wasm32-wasip2/release/a.wasm".into(),
            }]
        );
    }
}
