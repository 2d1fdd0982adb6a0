//! `deepwasm serve`: the HTTP API on a model.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use deepwasm_engine::{Engine, LogitsPlacement};
use deepwasm_plugins::{CompileWorker, DEFAULT_MAX_COMPILE_MEMORY, DEFAULT_MAX_COMPILE_TIME, MIB};
use deepwasm_server::tenants::Tenants;

use crate::model::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8000", env = "DEEPWASM_ADDR")]
    addr: SocketAddr,
    /// A LoRA adapter (a PEFT directory) served beside the base model as
    /// `BASE:NAME`; repeatable. Requests with different adapters share
    /// the batch.
    #[arg(long = "lora", value_name = "NAME=PATH")]
    lora: Vec<String>,
    /// The tenants file (TOML: tenants, API key hashes, limits, grants).
    /// Without one, the server has one tenant, needs no key, and listens on
    /// loopback only.
    #[arg(long, value_name = "FILE")]
    tenants: Option<PathBuf>,
    /// Where tenants' plugins are stored [default: $DEEPWASM_CACHE/store or
    /// ~/.cache/deepwasm/store]. Not used with `--state`.
    #[arg(long, value_name = "DIR", conflicts_with = "state")]
    store: Option<PathBuf>,
    /// Share tenants' plugins, usage and quotas with other replicas through
    /// PostgreSQL (`postgres://user[:password]@host[:port]/db`, or
    /// `?host=/socket/dir`); the schema is migrated at start. Without it,
    /// plugins are stored in `--store` and usage is counted in memory.
    #[arg(long, value_name = "URL", env = "DEEPWASM_STATE")]
    state: Option<String>,
    /// With `--state`: seconds a running request's lease outlives its last
    /// renewal, so a replica that dies stops counting against its tenants'
    /// concurrent requests this long after.
    #[arg(long, value_name = "SECS", default_value_t = 30, requires = "state")]
    lease_ttl_secs: u64,
    /// Most sequences decoded together in one forward pass.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Most prompt tokens one forward pass takes while any sequence decodes
    /// (or one per decoding sequence, if more): a long
    /// prompt goes in by chunks of what is left, so streams keep flowing.
    /// Larger prefills faster; smaller keeps streams steadier.
    #[arg(long, default_value_t = deepwasm_engine::batcher::DEFAULT_STEP_TOKENS)]
    step_tokens: usize,
    /// Attention cache all running sequences may hold, in MiB [default: a
    /// quarter of the machine's memory]. A request starts when its prompt's
    /// cache fits; when decoding runs out, the newest sequence is preempted
    /// and recomputed later.
    #[arg(long, value_name = "MIB")]
    kv_cache_mib: Option<u64>,
    /// Requests that may wait for a place in the batch; more are answered
    /// 503 with Retry-After.
    #[arg(long, default_value_t = deepwasm_server::DEFAULT_MAX_WAITING)]
    max_waiting: usize,
    /// Largest JSON request body, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Where each step's logits stay: `auto` keeps them on the GPU (queries
    /// and sampling move only their answers) and in host memory on the CPU;
    /// `device` keeps them where the model computed them on the CPU too;
    /// `host` copies every row.
    #[arg(long, default_value = "auto", value_parser = ["auto", "host", "device"])]
    logits: String,
    #[command(flatten)]
    compile: CompileCaps,
    #[command(flatten)]
    upstream: crate::upstream::UpstreamArgs,
}

/// Caps on compiling a plugin, which the server does in a worker process
/// (`deepwasm compile-worker`) it kills when the time is up.
#[derive(Args, Clone, Debug)]
pub struct CompileCaps {
    /// Longest a plugin may take to compile, in seconds; an upload that
    /// takes longer is refused (422).
    #[arg(long, default_value_t = DEFAULT_MAX_COMPILE_TIME.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    max_compile_secs: u64,
    /// Most memory compiling a plugin may take, in MiB; an upload that
    /// needs more is refused (422).
    #[arg(long, default_value_t = DEFAULT_MAX_COMPILE_MEMORY / MIB,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_compile_mib: u64,
}

impl Default for CompileCaps {
    fn default() -> Self {
        CompileCaps {
            max_compile_secs: DEFAULT_MAX_COMPILE_TIME.as_secs(),
            max_compile_mib: DEFAULT_MAX_COMPILE_MEMORY / MIB,
        }
    }
}

impl CompileCaps {
    /// This very program, as the compile worker.
    pub fn worker(&self) -> anyhow::Result<CompileWorker> {
        // On Linux, the running binary itself, even if the file it was
        // started from has since been replaced (an upgrade in place): a
        // worker from another build would compile for another engine.
        let own = std::path::Path::new("/proc/self/exe");
        let exe = if own.exists() {
            own.to_owned()
        } else {
            std::env::current_exe()
                .context("cannot find this program's path to run its compile worker")?
        };
        Ok(CompileWorker {
            max_time: Duration::from_secs(self.max_compile_secs),
            max_memory_bytes: self.max_compile_mib.saturating_mul(MIB),
            ..CompileWorker::new(exe, ["compile-worker".into()])
        })
    }
}

#[derive(Args)]
pub struct HashKeyArgs {
    /// The API key to hash (read from stdin when absent).
    key: Option<String>,
}

pub fn run(cli: &crate::Cli, args: &ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("deepwasm-http")
        .build()
        .context("cannot start the async runtime")?;
    // The database first: a replica that cannot reach it stops before
    // spending a minute loading the model.
    let shared = match &args.state {
        Some(url) if !url.starts_with("postgres://") && !url.starts_with("postgresql://") => {
            anyhow::bail!(
                "--state takes a PostgreSQL URL (postgres://...), got `{}`",
                deepwasm_state::redact(url)
            )
        }
        Some(url) => {
            let pg = runtime
                .block_on(deepwasm_state::PgState::connect(url))
                .context("--state: the shared state database")?;
            eprintln!("sharing plugins, usage and quotas through {}", pg.url());
            Some(pg)
        }
        None => None,
    };
    let tenants = match &args.tenants {
        Some(path) => Tenants::load(path)?,
        None => {
            if !args.addr.ip().is_loopback() {
                anyhow::bail!(
                    "without --tenants the server has no API keys, so it listens on loopback only; \
                     {} is not a loopback address (write a tenants file to serve others)",
                    args.addr
                );
            }
            Tenants::single()
        }
    };
    let store_dir = args.store.clone().unwrap_or_else(|| {
        crate::model::model_cache()
            .parent()
            .map_or_else(|| PathBuf::from("store"), |p| p.join("store"))
    });
    let upstream = args.upstream.connect()?;
    let loaded = match &upstream {
        Some((up, served)) => {
            let loaded = args.model.load_remote(served)?;
            eprintln!(
                "generating on the upstream {} (model {}), with {}'s tokenizer and template",
                up.url(),
                served.model,
                loaded.name
            );
            loaded
        }
        None => {
            let loaded = args.model.load()?;
            eprintln!(
                "loaded {} in {:.2} s",
                loaded.name,
                loaded.load_time.as_secs_f64()
            );
            loaded
        }
    };
    let device = args.model.device()?;
    let engine = Engine::from(loaded).with_logits_placement(match args.logits.as_str() {
        "host" => LogitsPlacement::Host,
        "device" => LogitsPlacement::Device,
        _ => LogitsPlacement::Auto,
    });
    // On a GPU the cache takes what the weights left free, less room for
    // a step's activations: a sequence that would need more waits or is
    // refused (503) rather than failing an allocation mid-step.
    let kv_cache_bytes = args
        .kv_cache_mib
        .map(|m| m.saturating_mul(1 << 20))
        .or_else(|| {
            crate::model::device_kv_cache_bytes(
                &device,
                engine.model.info(),
                args.step_tokens,
                args.max_batch,
            )
        });
    let config = deepwasm_server::Config {
        store_dir,
        max_body_bytes: args.max_body_bytes,
        max_batch: args.max_batch,
        step_tokens: args.step_tokens,
        kv_cache_bytes,
        max_waiting: args.max_waiting,
        upstream: upstream.map(|(up, _)| up),
        state: shared,
        tenants_file: args.tenants.clone(),
        lease_ttl: Duration::from_secs(args.lease_ttl_secs.max(1)),
        adapters: args
            .lora
            .iter()
            .map(|spec| {
                spec.split_once('=')
                    .map(|(name, path)| (name.to_owned(), PathBuf::from(path)))
                    .with_context(|| format!("`--lora {spec}` must be NAME=PATH"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let plugins = cli.server_engine(&args.compile)?;
    let state = {
        // The shared state's writer starts on the runtime.
        let _entered = runtime.enter();
        deepwasm_server::AppState::new(engine, tenants, plugins, config)?
    };
    // What the server settled on, not worked out again here.
    let budget = state.kv_budget_tokens();
    let per_token = state.engine.model.info().kv_bytes_per_token;
    if !state.scheduler.is_upstream() {
        eprintln!(
            "attention cache budget: {} MiB, {budget} tokens",
            (budget as u64).saturating_mul(per_token as u64) >> 20
        );
    }
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let addr = listener.local_addr()?;
        let tenants = state.tenants.current();
        if tenants.is_open() {
            eprintln!(
                "serving {} on http://{addr} for one tenant without API keys (loopback only; pass --tenants FILE for keys and limits)",
                state.model_id()
            );
        } else {
            eprintln!(
                "serving {} on http://{addr} for {} tenant(s)",
                state.model_id(),
                tenants.all().len()
            );
        }
        deepwasm_server::serve_on(state, listener).await
    })
}

pub fn hash_key(args: &HashKeyArgs) -> anyhow::Result<()> {
    let key = match &args.key {
        Some(k) => k.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_line(&mut s)
                .context("cannot read the key from stdin")?;
            s.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if key.is_empty() {
        anyhow::bail!("the key is empty");
    }
    println!("{}", deepwasm_server::tenants::hash_key(&key));
    Ok(())
}
