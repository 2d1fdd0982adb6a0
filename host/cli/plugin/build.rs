//! `deepwasm plugin build`: one command that builds a plugin in any
//! supported language into `<dir>/<dir name>.wasm`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_guest_build::{Lang, Source, Toolchains, detect_world};

use super::new::{LangArg, WorldArg};

#[derive(Args)]
pub struct BuildArgs {
    /// The plugin's directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Its language [default: read from its files: `Cargo.toml`, `app.py`,
    /// `app.js` or `*.c`].
    #[arg(long, value_enum)]
    lang: Option<LangArg>,
    /// Its world [default: read from the export its sources define].
    #[arg(long, value_enum)]
    world: Option<WorldArg>,
    /// The `deepwasm:plugin` WIT package [default: DIR/wit].
    #[arg(long, value_name = "DIR")]
    wit: Option<PathBuf>,
    /// Where to write the component [default: DIR/<DIR's name>.wasm].
    #[arg(long, short)]
    out: Option<PathBuf>,
}

pub fn run(args: &BuildArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", args.dir.display()))?;
    let lang = match args.lang {
        Some(l) => Lang::from(l),
        None => Lang::detect(&dir).with_context(|| {
            format!(
                "cannot tell the language of {}: no Cargo.toml, app.py, app.js or .c file (or pass --lang)",
                dir.display()
            )
        })?,
    };
    let world = match args.world {
        Some(w) => w.name(),
        None => detect_world(lang, &dir)?,
    };
    let wit = args.wit.clone().unwrap_or_else(|| dir.join("wit"));
    if lang != Lang::Rust && !wit.is_dir() {
        bail!(
            "no WIT package at {}: `deepwasm plugin new` puts one in wit/, or pass --wit",
            wit.display()
        );
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| dir.join(format!("{name}.wasm")));
    let work_dir = dir.join("target/deepwasm-build");
    let start = Instant::now();
    let bytes = deepwasm_guest_build::build(
        &Source {
            lang,
            dir: &dir,
            world,
            wit: &wit,
            shared: None,
            work_dir: &work_dir,
            strict: false,
        },
        &Toolchains::find(),
    )
    .with_context(|| format!("cannot build the {lang} plugin in {}", dir.display()))?;
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "built {} ({world} world, {lang}, {} KiB) in {:.1} s",
        shown(&out),
        bytes.len().div_ceil(1024),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `path` relative to the working directory when it is under it.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
