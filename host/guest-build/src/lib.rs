//! Builds deepwasm plugins from source into Wasm components, whatever their
//! language. `deepwasm plugin build` builds one plugin through [`build`];
//! the build scripts of `deepwasm-plugin-artifacts` (every plugin under
//! `plugins/`, see [`batch`]) and `deepwasm-builtins` (the embedded Rust
//! plugins, see [`rust::CargoBuild`]) build through here too.
//!
//! | language | toolchain | what runs |
//! |---|---|---|
//! | Rust | cargo + the `wasm32-wasip2` target | `cargo build --release --target wasm32-wasip2` (a crate over `deepwasm-sdk`) |
//! | Python | componentize-py 0.25 | `componentize-py -d WIT -w WORLD componentize app -p DIR -o OUT` |
//! | JavaScript | node + componentize-js 0.23 | `componentize-js app.js -w WIT -n WORLD -d http fetch-event -o OUT` |
//! | C | clang 19 + wasi-libc | bindings from `wit-bindgen-c`, `clang --target=wasm32-wasi`, then `wit-component` with the WASI preview1 reactor adapter |
//!
//! A plugin directory's language is read from its files (`Cargo.toml`,
//! `app.py`, `app.js`, `*.c`) and its world from the export its sources
//! define ([`detect_world`]). A missing toolchain is a
//! [`BuildError::MissingTool`] that says where it was looked for and how
//! to install it.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod batch;
mod c;
pub mod rust;
pub mod script;
mod toolchains;

pub use toolchains::{ENV_VARS, Toolchains};

/// A language plugins can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

impl Lang {
    /// Every language, in the order the docs list them.
    pub const ALL: [Lang; 4] = [Lang::Rust, Lang::Python, Lang::Js, Lang::C];

    /// The short name: `rust`, `python`, `js`, `c`.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }

    /// The language of a short name (`javascript` also reads as `js`).
    pub fn from_name(name: &str) -> Option<Lang> {
        match name {
            "rust" => Some(Lang::Rust),
            "python" => Some(Lang::Python),
            "js" | "javascript" => Some(Lang::Js),
            "c" => Some(Lang::C),
            _ => None,
        }
    }

    /// The language of the plugin in `dir`, from its files: `Cargo.toml`,
    /// `app.py`, `app.js`, or C sources.
    pub fn detect(dir: &Path) -> Option<Lang> {
        if dir.join("Cargo.toml").is_file() {
            Some(Lang::Rust)
        } else if dir.join("app.py").is_file() {
            Some(Lang::Python)
        } else if dir.join("app.js").is_file() {
            Some(Lang::Js)
        } else if !files_with_ext(dir, "c").is_empty() {
            Some(Lang::C)
        } else {
            None
        }
    }

    /// The extension of the sources in which [`detect_world`] looks.
    fn source_ext(self) -> &'static str {
        match self {
            Lang::Rust => "rs",
            Lang::Python => "py",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The plugin worlds of `wit/worlds.wit`.
pub const WORLDS: [&str; 4] = ["sampler", "reward", "tool", "agent"];

/// What marks each world's export in each language's sources:
/// (world, Rust SDK macro, Python class, JS export, C function prefix).
const EXPORTS: [(&str, &str, &str, &str, &str); 4] = [
    (
        "sampler",
        "export_sampler!",
        "Controller",
        "controller",
        "exports_deepwasm_plugin_controller_",
    ),
    (
        "reward",
        "export_reward!",
        "Scorer",
        "scorer",
        "exports_deepwasm_plugin_scorer_",
    ),
    (
        "tool",
        "export_tool!",
        "ToolProvider",
        "toolProvider",
        "exports_deepwasm_plugin_tool_provider_",
    ),
    (
        "agent",
        "export_agent!",
        "Runner",
        "runner",
        "exports_deepwasm_plugin_runner_",
    ),
];

/// Why a plugin did not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The sources do not say what to build (no language, no world, or several).
    #[error("{}: {why}", dir.display())]
    Source { dir: PathBuf, why: String },
    /// A toolchain is not installed.
    #[error(
        "the {lang} plugins need {tool}, which is not installed (looked at: {looked}); \
         install it with `{install}`, or run scripts/setup, which installs every guest \
         toolchain (docs/plugins.md lists them)"
    )]
    MissingTool {
        lang: Lang,
        tool: &'static str,
        looked: String,
        /// A command that installs it.
        install: &'static str,
    },
    /// A compiler or packager failed; its output says why.
    #[error("`{command}` failed ({status}):\n{output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    /// Reading the WIT, making bindings, or making the component failed.
    #[error("{0}")]
    Component(String),
    /// Some plugins of a batch did not build; each failure in turn.
    #[error("{0}")]
    Batch(String),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl BuildError {
    fn io(what: impl fmt::Display, path: &Path) -> impl FnOnce(io::Error) -> BuildError {
        let what = format!("{what} {}", path.display());
        move |source| BuildError::Io { what, source }
    }
}

/// The world that the plugin in `dir`, written in `lang`, implements: the
/// one whose export its sources define (`export_reward!` in Rust, `class
/// Scorer` in Python, `export const scorer` in JS, functions named
/// `exports_deepwasm_plugin_scorer_*` in C).
pub fn detect_world(lang: Lang, dir: &Path) -> Result<&'static str, BuildError> {
    let mut found = Vec::new();
    for file in source_files(dir)? {
        if file.extension().and_then(|e| e.to_str()) != Some(lang.source_ext()) {
            continue;
        }
        let text = fs::read_to_string(&file).map_err(BuildError::io("cannot read", &file))?;
        for (world, rust, py, js, c) in EXPORTS {
            let defines = match lang {
                Lang::Rust => text.contains(rust),
                Lang::Python => text.lines().any(|l| {
                    l.strip_prefix("class ")
                        .and_then(|l| l.strip_prefix(py))
                        .is_some_and(|rest| rest.starts_with([':', '(']))
                }),
                Lang::Js => text.lines().any(|l| {
                    let l = l.trim_start();
                    l.starts_with("export")
                        && l.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .any(|w| w == js)
                }),
                Lang::C => text.contains(c),
            };
            if defines && !found.contains(&world) {
                found.push(world);
            }
        }
    }
    match found[..] {
        [world] => Ok(world),
        [] => Err(BuildError::Source {
            dir: dir.to_owned(),
            why: format!(
                "the {lang} sources define no world's export (Rust: `deepwasm_sdk::export_reward!` \
                 and friends; Python: `class Scorer`, `Controller`, `ToolProvider` or `Runner`; JS: \
                 `export const scorer`, `controller`, `toolProvider` or `runner`; C: functions \
                 `exports_deepwasm_plugin_<interface>_...`)"
            ),
        }),
        _ => Err(BuildError::Source {
            dir: dir.to_owned(),
            why: format!(
                "the sources define the exports of several worlds ({}); a plugin implements one",
                found.join(", ")
            ),
        }),
    }
}

/// A plugin to build.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    pub lang: Lang,
    /// The plugin's directory.
    pub dir: &'a Path,
    /// The world it implements (see [`detect_world`]).
    pub world: &'a str,
    /// The `deepwasm:plugin` WIT package (not used for Rust: the SDK has it).
    pub wit: &'a Path,
    /// A directory of helper files that several plugins share (its `.py` or
    /// `.js` files are copied beside the plugin's own in a staged copy; for
    /// C it is an include directory); `None` when the helpers are in `dir`
    /// itself, as in a skeleton.
    pub shared: Option<&'a Path>,
    /// Scratch space for bindings, staged sources and core modules.
    pub work_dir: &'a Path,
    /// Treat C compiler warnings as errors.
    pub strict: bool,
}

/// Build `src` with `tools`; the component's bytes.
pub fn build(src: &Source<'_>, tools: &Toolchains) -> Result<Vec<u8>, BuildError> {
    tools.check(src.lang)?;
    fs::create_dir_all(src.work_dir).map_err(BuildError::io("cannot create", src.work_dir))?;
    match src.lang {
        Lang::Rust => {
            let wasm = rust::build_crate(&tools.cargo, src.dir)?;
            fs::read(&wasm).map_err(BuildError::io("cannot read", &wasm))
        }
        Lang::Python => {
            // componentize-py's interpreter writes `__pycache__` beside the
            // modules it imports, whatever PYTHONDONTWRITEBYTECODE says:
            // plugins that share helpers (the repository's) build from a
            // staged copy, so their sources stay clean.
            let app_dir = staged(src, "py")?;
            let out = src.work_dir.join("component.wasm");
            let mut cmd = Command::new(tools.componentize_py.as_ref().unwrap());
            cmd.arg("-d")
                .arg(src.wit)
                .args(["-w", src.world, "componentize", "app", "-p"])
                .arg(&app_dir)
                .arg("-o")
                .arg(&out)
                // Only the paths given: no site-packages of whatever venv
                // the build runs in.
                .env_remove("VIRTUAL_ENV");
            run(cmd)?;
            fs::read(&out).map_err(BuildError::io("cannot read", &out))
        }
        Lang::Js => {
            // componentize-js resolves imports only inside the app's own
            // directory: shared helpers must sit beside app.js.
            let app_dir = staged(src, "js")?;
            let out = src.work_dir.join("component.wasm");
            let mut cmd = tools.componentize_js_command();
            cmd.arg(app_dir.join("app.js"))
                .arg("-w")
                .arg(src.wit)
                // Without `-d http fetch-event` the component imports
                // wasi:http, which no deepwasm world provides.
                .args(["-n", src.world, "-d", "http", "fetch-event", "-o"])
                .arg(&out);
            run(cmd)?;
            fs::read(&out).map_err(BuildError::io("cannot read", &out))
        }
        Lang::C => c::build(src, tools),
    }
}

/// The directory to build `src` from: its own when it shares no helpers,
/// else a copy in the work directory with the shared `.ext` files beside
/// its own.
fn staged(src: &Source<'_>, ext: &str) -> Result<PathBuf, BuildError> {
    let Some(shared) = src.shared else {
        return Ok(src.dir.to_owned());
    };
    let stage = src.work_dir.join(format!("{ext}-sources"));
    if stage.exists() {
        fs::remove_dir_all(&stage).map_err(BuildError::io("cannot remove", &stage))?;
    }
    copy_dir(src.dir, &stage)?;
    for helper in files_with_ext(shared, ext) {
        let to = stage.join(helper.file_name().unwrap());
        fs::copy(&helper, &to).map_err(BuildError::io("cannot copy", &helper))?;
    }
    Ok(stage)
}

/// Run a build command; its stdout, or its output as the error.
pub(crate) fn run(mut cmd: Command) -> Result<String, BuildError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| BuildError::Io {
        what: format!("cannot run {command}"),
        source,
    })?;
    if !out.status.success() {
        return Err(BuildError::Failed {
            command,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every file under `dir`, sorted, skipping hidden files, caches, build
/// outputs and components.
pub fn source_files(dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(BuildError::io("cannot list", &d))? {
            let path = entry.map_err(BuildError::io("cannot list", &d))?.path();
            let name = path.file_name().unwrap().to_string_lossy();
            if name.starts_with('.')
                || name == "__pycache__"
                || name == "node_modules"
                || name == "target"
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if !name.ends_with(".wasm") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files of `dir` (not recursive) ending in `.ext`, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Copy the source files of `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) -> Result<(), BuildError> {
    for file in source_files(from)? {
        let dest = to.join(file.strip_prefix(from).unwrap());
        let parent = dest.parent().unwrap();
        fs::create_dir_all(parent).map_err(BuildError::io("cannot create", parent))?;
        fs::copy(&file, &dest).map_err(BuildError::io("cannot copy", &file))?;
    }
    Ok(())
}
