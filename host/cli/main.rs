//! `deepwasm`: the command line.

mod agent;
mod bench;
mod bench_attack;
mod bench_gpu;
mod bench_kernels;
mod bench_langs;
mod bench_model;
mod bench_prefill;
mod bench_sampler;
mod bench_server;
mod bench_soak;
mod bench_state;
mod bench_step;
mod bench_train;
mod generate;
mod model;
mod plugin;
mod rollout;
mod score;
mod serve;
mod train;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deepwasm_plugins::{EngineConfig, PluginEngine};

#[derive(Parser)]
#[command(
    name = "deepwasm",
    version,
    about = "A DeepSeek-family inference runtime with sandboxed Wasm plugins"
)]
struct Cli {
    /// Directory for compiled plugins [default: $DEEPWASM_CACHE/components or ~/.cache/deepwasm/components]
    #[arg(long, global = true, env = "DEEPWASM_COMPONENT_CACHE")]
    cache_dir: Option<PathBuf>,

    /// Compile plugins in memory only; write nothing to disk.
    #[arg(long, global = true)]
    no_cache: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Generate a completion on a model.
    Generate(generate::GenerateArgs),
    /// GRPO rollouts: groups of completions per prompt, scored by reward
    /// plugins, with group advantages, as JSONL.
    Rollout(rollout::RolloutArgs),
    /// Train adapters of the model.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Score samples with reward plugins (no model needed).
    Score(score::ScoreArgs),
    /// Serve the OpenAI-compatible HTTP API and plugin management.
    Serve(serve::ServeArgs),
    /// Print the hash of an API key, as a tenants file stores it.
    HashKey(serve::HashKeyArgs),
    /// Run agent plugins on tasks, with the tool plugins they are granted.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Run benchmarks against their peers.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Compile the component on stdin to wasmtime's serialized form on
    /// stdout: the worker `serve` runs each upload's compile in, under caps.
    #[command(hide = true)]
    CompileWorker,
}

impl Cli {
    fn cache_dir(&self) -> Option<std::path::PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(EngineConfig::default_cache_dir)
        }
    }

    fn engine(&self) -> anyhow::Result<PluginEngine> {
        PluginEngine::new(EngineConfig {
            cache_dir: self.cache_dir(),
            ..EngineConfig::default()
        })
    }

    /// The plugin engine for a server: it compiles on one thread (see
    /// `EngineConfig::compile_on_one_thread`), in a worker process held to
    /// `caps`.
    fn server_engine(&self, caps: &serve::CompileCaps) -> anyhow::Result<PluginEngine> {
        PluginEngine::new(EngineConfig {
            cache_dir: self.cache_dir(),
            compile_on_one_thread: true,
            compile_worker: Some(caps.worker()?),
        })
    }
}

fn main() -> ExitCode {
    // candle hands large element-wise ops to a pool of its own whose
    // threads spin 25,000 times after each job before they sleep; beside
    // the model's kernels, which keep every core busy, that spinning takes
    // a core from them (a 12% share of a chunked-prefill profile). A short
    // spin keeps the pool's quick hand-off and gives the core back.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: nothing has started another thread yet, so no one reads
        // the environment while it changes.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200") };
    }
    // candle asks for its thread count at every matrix product (each
    // sequence's attention, twice a layer) and, without this variable,
    // counts physical cores by reading /proc/cpuinfo each time: ~10% of a
    // 16-sequence decode step went to the kernel formatting that file.
    // rayon's default is the same number.
    if std::env::var_os("RAYON_NUM_THREADS").is_none()
        && let Ok(n) = std::thread::available_parallelism()
    {
        // SAFETY: as above.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            // The connection pool of `--state` warns of every failed
            // connection; the server logs an outage of the database once.
            tracing_subscriber::EnvFilter::try_from_env("DEEPWASM_LOG")
                .unwrap_or_else(|_| "warn,deadpool=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::CompileWorker => return deepwasm_plugins::compile_worker_main(),
        Command::Plugin(cmd) => plugin::run(&cli, cmd),
        Command::Generate(args) => generate::run(&cli, args),
        Command::Score(args) => score::run(&cli, args),
        Command::Rollout(args) => rollout::run(&cli, args),
        Command::Train(cmd) => train::run(&cli, cmd),
        Command::Serve(args) => serve::run(&cli, args),
        Command::HashKey(args) => serve::hash_key(args),
        Command::Agent(cmd) => agent::run(&cli, cmd),
        Command::Bench(cmd) => bench::run(&cli, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
