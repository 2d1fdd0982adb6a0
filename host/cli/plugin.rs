//! `deepwasm plugin ...`: make, build and inspect plugins.

mod build;
mod new;

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use deepwasm_plugins::{Grants, PluginInfo};

use crate::Cli;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a working plugin skeleton with a README, for any language and world.
    New(new::NewArgs),
    /// Build a plugin written in Rust, Python, JavaScript or C into a component.
    Build(build::BuildArgs),
    /// Show which world a component implements, and its imports and exports.
    Inspect {
        /// The component (`.wasm`).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cli: &Cli, cmd: &PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::New(args) => new::run(args),
        PluginCommand::Build(args) => build::run(args),
        PluginCommand::Inspect { file, json } => {
            let engine = cli.engine()?;
            let plugin = engine
                .load_file(file, &Grants::default())
                .with_context(|| format!("cannot load {} as a deepwasm plugin", file.display()))?;
            let info = plugin.info();
            if *json {
                println!("{}", serde_json::to_string_pretty(info)?);
            } else {
                print!("{}", render(info));
            }
            Ok(())
        }
    }
}

fn render(info: &PluginInfo) -> String {
    let mut out = String::new();
    out += &format!("plugin   {}\n", info.name);
    out += &format!("world    {}\n", info.world);
    out += &format!("id       {}\n", info.id);
    out += &format!("size     {} bytes\n", info.size_bytes);
    out += &format!("loaded   {:?} in {:.1} ms\n", info.compiled, info.load_ms);
    out += "exports\n";
    for e in &info.exports {
        out += &format!("  {}", e.name);
        if !e.functions.is_empty() {
            out += &format!(" {{ {} }}", e.functions.join(", "));
        }
        out += "\n";
    }
    out += "imports\n";
    for i in &info.imports {
        out += &format!("  {:<48} ({})\n", i.name, i.provider);
    }
    out
}
