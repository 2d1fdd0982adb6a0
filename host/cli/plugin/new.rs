//! `deepwasm plugin new`: a working plugin skeleton in any supported
//! language, for any world, that `deepwasm plugin build` builds as it is.
//!
//! The skeletons are the files under `host/cli/templates/`, compiled into
//! the binary, with `{{name}}`-style placeholders. Python, JavaScript and C
//! skeletons get a copy of the `deepwasm:plugin` WIT package and of their
//! language's helper module from `plugins/<lang>/`, so they build outside
//! this repository; Rust skeletons depend on the SDK crate by path.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use deepwasm_guest_build::Lang;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LangArg {
    Rust,
    Python,
    Js,
    C,
}

impl From<LangArg> for Lang {
    fn from(l: LangArg) -> Lang {
        match l {
            LangArg::Rust => Lang::Rust,
            LangArg::Python => Lang::Python,
            LangArg::Js => Lang::Js,
            LangArg::C => Lang::C,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorldArg {
    Sampler,
    Reward,
    Tool,
    Agent,
}

impl WorldArg {
    pub fn name(self) -> &'static str {
        match self {
            WorldArg::Sampler => "sampler",
            WorldArg::Reward => "reward",
            WorldArg::Tool => "tool",
            WorldArg::Agent => "agent",
        }
    }
}

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's language.
    #[arg(long, value_enum)]
    lang: LangArg,
    /// The world it implements: what the host calls it for.
    #[arg(long, value_enum)]
    world: WorldArg,
    /// The plugin's name: a letter, then letters, digits, `-` or `_` (at most 64).
    name: String,
    /// The directory to create [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `deepwasm-sdk` crate a Rust skeleton depends on [default: the
    /// `plugins/sdk` of the source tree this binary was built from].
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

/// The `deepwasm:plugin` WIT package, as in `wit/`.
const WIT: [(&str, &str); 3] = [
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
    ("host.wit", include_str!("../../../wit/host.wit")),
];

/// Every template, by its path under `host/cli/templates/`.
macro_rules! templates {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../templates/", $path)))),*]
    };
}

const TEMPLATES: &[(&str, &str)] = templates![
    "about/agent.md",
    "about/reward.md",
    "about/sampler.md",
    "about/tool.md",
    "try/agent.md",
    "try/reward.md",
    "try/sampler.md",
    "try/tool.md",
    "gitignore",
    "rust/README.md",
    "rust/Cargo.toml",
    "rust/agent.rs",
    "rust/reward.rs",
    "rust/sampler.rs",
    "rust/tool.rs",
    "python/README.md",
    "python/agent.py",
    "python/reward.py",
    "python/sampler.py",
    "python/sampler_controller.py",
    "python/tool.py",
    "js/README.md",
    "js/agent.js",
    "js/reward.js",
    "js/sampler.js",
    "js/tool.js",
    "c/README.md",
    "c/agent.c",
    "c/reward.c",
    "c/sampler.c",
    "c/tool.c",
];

fn template(path: &str) -> &'static str {
    TEMPLATES
        .iter()
        .find(|(p, _)| *p == path)
        .unwrap_or_else(|| panic!("no template {path}"))
        .1
}

/// The files of a skeleton, as (path in the skeleton, contents).
pub fn skeleton(lang: Lang, world: &str, name: &str, sdk: &Path) -> Vec<(String, String)> {
    let crate_name = name.replace('-', "_");
    let sdk = sdk.display().to_string();
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{world}}", world)
            // A TOML basic string.
            .replace("{{sdk}}", &sdk.replace('\\', "\\\\").replace('"', "\\\""))
    };
    let t = |path: &str| fill(template(path));
    let mut files = vec![(".gitignore".to_owned(), t("gitignore"))];
    let mut sources = match lang {
        Lang::Rust => vec![
            ("Cargo.toml".to_owned(), t("rust/Cargo.toml")),
            ("src/lib.rs".to_owned(), t(&format!("rust/{world}.rs"))),
        ],
        Lang::Python => {
            let mut v = vec![("app.py".to_owned(), t(&format!("python/{world}.py")))];
            if world == "sampler" {
                v.push((
                    "controller.py".to_owned(),
                    t("python/sampler_controller.py"),
                ));
            }
            v.push((
                "deepwasm_plugin.py".to_owned(),
                include_str!("../../../plugins/python/deepwasm_plugin.py").to_owned(),
            ));
            v
        }
        Lang::Js => vec![
            ("app.js".to_owned(), t(&format!("js/{world}.js"))),
            (
                "deepwasm_plugin.js".to_owned(),
                include_str!("../../../plugins/js/deepwasm_plugin.js").to_owned(),
            ),
        ],
        Lang::C => vec![
            ("plugin.c".to_owned(), t(&format!("c/{world}.c"))),
            (
                "deepwasm_plugin.h".to_owned(),
                include_str!("../../../plugins/c/deepwasm_plugin.h").to_owned(),
            ),
        ],
    };
    files.append(&mut sources);
    if lang != Lang::Rust {
        for (file, text) in WIT {
            files.push((format!("wit/{file}"), text.to_owned()));
        }
    }
    let python_files = match world {
        "sampler" => {
            "- `app.py`: the plugin: `class Controller` holds the instance-wide `setup`.\n\
             - `controller.py`: `class Sequence`, one per generated sequence\n  \
             (componentize-py finds the resources of an exported interface in the\n  \
             module named after the interface).\n"
                .to_owned()
        }
        _ => {
            let class = match world {
                "reward" => "Scorer",
                "tool" => "ToolProvider",
                _ => "Runner",
            };
            format!("- `app.py`: the plugin: `class {class}` implements the world's export.\n")
        }
    };
    let readme = t(&format!("{}/README.md", lang.name()))
        .replace("{{about}}", &fill(template(&format!("about/{world}.md"))))
        .replace("{{try}}", &fill(template(&format!("try/{world}.md"))))
        .replace("{{files}}", &python_files);
    files.push(("README.md".to_owned(), readme));
    files
}

/// A plugin name: it becomes a file name, a crate name and a tool name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if !ok {
        bail!(
            "`{name}` is not a plugin name: use a letter, then letters, digits, `-` or `_` (at most 64)"
        );
    }
    Ok(())
}

/// The SDK in the source tree this binary was built from.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/sdk")
}

pub fn run(args: &NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let lang = Lang::from(args.lang);
    let world = args.world.name();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty; choose another --dir",
            dir.display()
        );
    }
    let sdk = args.sdk.clone().unwrap_or_else(default_sdk);
    if lang == Lang::Rust && !sdk.join("Cargo.toml").is_file() {
        bail!(
            "no deepwasm-sdk crate at {}: pass --sdk with the path of the repository's plugins/sdk",
            sdk.display()
        );
    }
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let files = skeleton(lang, world, &args.name, &sdk);
    for (path, text) in &files {
        let path = dir.join(path);
        let parent = path.parent().unwrap();
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created a {world} plugin in {} ({}):",
        lang_title(lang),
        dir.display()
    );
    for (path, _) in &files {
        println!("  {}", dir.join(path).display());
    }
    println!(
        "build it with:\n  cd {} && deepwasm plugin build",
        dir.display()
    );
    Ok(())
}

fn lang_title(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
        Lang::C => "C",
    }
}
