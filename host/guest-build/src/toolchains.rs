//! Where the guest toolchains are.
//!
//! Each tool is looked for in order: its `DEEPWASM_*` variable, where
//! `scripts/setup` installs it (under `$DEEPWASM_CACHE`, default
//! `~/.cache/deepwasm`), then `PATH`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BuildError, Lang};

/// Environment variables that say where the toolchains are.
pub const ENV_VARS: [&str; 6] = [
    "DEEPWASM_COMPONENTIZE_PY",
    "DEEPWASM_COMPONENTIZE_JS",
    "DEEPWASM_NODE",
    "DEEPWASM_CLANG",
    "DEEPWASM_WASI_SYSROOT",
    "DEEPWASM_CACHE",
];

/// The guest toolchains found on this machine.
#[derive(Clone, Debug)]
pub struct Toolchains {
    pub(crate) cargo: PathBuf,
    pub(crate) componentize_py: Option<PathBuf>,
    pub(crate) node: Option<PathBuf>,
    /// componentize-js's `cli.js` (run with node) or its `componentize-js` launcher.
    pub(crate) componentize_js: Option<PathBuf>,
    pub(crate) clang: Option<PathBuf>,
    /// The sysroot holding `lib/wasm32-wasi/libc.a` (Debian's wasi-libc: `/usr`).
    pub(crate) sysroot: PathBuf,
    /// Places searched, for the error messages.
    looked: Vec<(Lang, String)>,
}

fn cache_dir() -> PathBuf {
    env::var_os("DEEPWASM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&env::var_os("HOME").unwrap_or_default()).join(".cache/deepwasm")
        })
}

/// `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Toolchains {
    /// Look for every toolchain; what is missing is reported by [`check`](Self::check).
    pub fn find() -> Toolchains {
        let cache = cache_dir();
        let mut looked = Vec::new();
        let mut pick = |lang: Lang, var: &str, default: PathBuf, path_names: &[&str]| {
            if let Some(v) = env::var_os(var) {
                let p = PathBuf::from(v);
                looked.push((lang, format!("${var} = {}", p.display())));
                return p.exists().then_some(p);
            }
            looked.push((lang, default.display().to_string()));
            if default.exists() {
                return Some(default);
            }
            path_names.iter().find_map(|name| {
                looked.push((lang, format!("`{name}` on PATH")));
                on_path(name)
            })
        };
        let componentize_py = pick(
            Lang::Python,
            "DEEPWASM_COMPONENTIZE_PY",
            cache.join("venv-plugins/bin/componentize-py"),
            &["componentize-py"],
        );
        let componentize_js = pick(
            Lang::Js,
            "DEEPWASM_COMPONENTIZE_JS",
            cache.join("node-plugins/node_modules/@bytecodealliance/componentize-js/src/cli.js"),
            &["componentize-js"],
        );
        let node = match env::var_os("DEEPWASM_NODE") {
            Some(v) => Some(PathBuf::from(v)).filter(|p| p.exists()),
            None => on_path("node"),
        };
        looked.push((Lang::Js, "`node` on PATH (or $DEEPWASM_NODE)".into()));
        let clang = match env::var_os("DEEPWASM_CLANG") {
            Some(v) => Some(PathBuf::from(v)).filter(|p| p.exists()),
            None => on_path("clang-19"),
        };
        looked.push((Lang::C, "`clang-19` on PATH (or $DEEPWASM_CLANG)".into()));
        let sysroot = env::var_os("DEEPWASM_WASI_SYSROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr"));
        looked.push((
            Lang::C,
            format!(
                "{} (or $DEEPWASM_WASI_SYSROOT)",
                sysroot.join("lib/wasm32-wasi/libc.a").display()
            ),
        ));
        Toolchains {
            cargo: env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from),
            componentize_py,
            node,
            componentize_js,
            clang,
            sysroot,
            looked,
        }
    }

    /// Fail unless everything `lang` needs is there. Rust's toolchain is
    /// checked by cargo itself (`rustup target add wasm32-wasip2`).
    pub fn check(&self, lang: Lang) -> Result<(), BuildError> {
        let missing = match lang {
            Lang::Rust => None,
            Lang::Python => self.componentize_py.is_none().then_some("componentize-py"),
            Lang::Js => {
                if self.componentize_js.is_none() {
                    Some("componentize-js")
                } else if self.node.is_none() {
                    Some("node")
                } else {
                    None
                }
            }
            Lang::C => {
                if self.clang.is_none() {
                    Some("clang-19")
                } else if !self.sysroot.join("lib/wasm32-wasi/libc.a").is_file() {
                    Some("wasi-libc")
                } else {
                    None
                }
            }
        };
        let Some(tool) = missing else { return Ok(()) };
        let looked: Vec<&str> = self
            .looked
            .iter()
            .filter(|(l, _)| *l == lang)
            .map(|(_, s)| s.as_str())
            .collect();
        Err(BuildError::MissingTool {
            lang,
            tool,
            looked: looked.join("; "),
            install: install_command(tool),
        })
    }

    /// The command that runs componentize-js (call after [`check`](Self::check)).
    pub(crate) fn componentize_js_command(&self) -> Command {
        let cli = self.componentize_js.as_ref().expect("checked");
        if cli.extension().is_some_and(|e| e == "js") {
            let mut cmd = Command::new(self.node.as_ref().expect("checked"));
            cmd.arg(cli);
            cmd
        } else {
            Command::new(cli)
        }
    }

    /// A string that changes when the toolchain of `lang` changes (for
    /// rebuild stamps).
    pub fn identity(&self, lang: Lang) -> String {
        let version = |cmd: Option<&PathBuf>, arg: &str| {
            cmd.and_then(|c| Command::new(c).arg(arg).output().ok())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        match lang {
            Lang::Rust => version(Some(&self.cargo), "--version"),
            Lang::Python => version(self.componentize_py.as_ref(), "--version"),
            Lang::Js => {
                // The package.json next to `src/cli.js` names the version.
                let package = self
                    .componentize_js
                    .as_ref()
                    .and_then(|cli| cli.parent()?.parent().map(|p| p.join("package.json")));
                let pkg = package
                    .and_then(|p| fs::read_to_string(p).ok())
                    .unwrap_or_default();
                format!("{}{pkg}", version(self.node.as_ref(), "--version"))
            }
            Lang::C => format!(
                "{}{}",
                version(self.clang.as_ref(), "--version"),
                self.sysroot.display()
            ),
        }
    }
}

/// How to install each tool [`Toolchains::check`] can find missing: the
/// versions `scripts/setup` installs.
fn install_command(tool: &str) -> &'static str {
    match tool {
        "componentize-py" => "pip install componentize-py==0.25.1",
        "componentize-js" => "npm install --global @bytecodealliance/componentize-js@0.23.0",
        "node" => "apt-get install nodejs",
        "clang-19" => "apt-get install clang-19 lld-19",
        _ => "apt-get install wasi-libc libclang-rt-19-dev-wasm32",
    }
}
