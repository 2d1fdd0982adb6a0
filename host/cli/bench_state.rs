//! `deepwasm bench state`: what sharing plugins, usage and quotas through
//! PostgreSQL (`serve --state`) costs beside the embedded default, through
//! real in-process servers on loopback: plugin upload, list, first use
//! (on the replica that took the upload, and on another that must fetch and
//! compile it), delete, and the admission of a request (one round trip to
//! the database with `--state`), timed by requests that do little else.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use deepwasm_engine::Engine;
use deepwasm_plugins::{EngineConfig, PluginEngine};
use deepwasm_server::tenants::Tenants;
use serde_json::json;

use crate::bench_langs::{ms, quantile};
use crate::bench_server::{Client, runtime};
use crate::model::ModelArgs;

#[derive(Args)]
pub struct StateBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The database to measure (`postgres://...`): `scripts/pg-cluster
    /// start DIR` makes a throwaway one. The benchmark's plugins are
    /// deleted at the end.
    #[arg(long, value_name = "URL", env = "DEEPWASM_STATE")]
    state: String,
    /// A reward plugin component to upload (fresh copies of it, so each
    /// upload compiles), e.g. `$CARGO_TARGET_DIR/plugins/r1-format.wasm`.
    #[arg(long, value_name = "WASM")]
    plugin: PathBuf,
    /// Uploads per backend.
    #[arg(long, default_value_t = 6)]
    uploads: usize,
    /// Requests timed for each of list and admission.
    #[arg(long, default_value_t = 300)]
    requests: usize,
}

const KEY: &str = "bench-state-key";

/// One backend's figures.
#[derive(Default)]
struct Figures {
    upload: Vec<Duration>,
    upload_again: Vec<Duration>,
    list: Vec<Duration>,
    first_use: Vec<Duration>,
    first_use_elsewhere: Vec<Duration>,
    next_use: Vec<Duration>,
    delete: Vec<Duration>,
    admission: Vec<Duration>,
}

/// `component` with a custom section of `nonce` appended: the same plugin
/// under another content id.
fn fresh_copy(component: &[u8], nonce: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"nonce";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(nonce.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // a custom section
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// An in-process server on loopback with the benchmark's tenant, its
/// plugins compiled into `cache`, on `state` (or the embedded store).
fn start(
    runtime: &tokio::runtime::Runtime,
    model: &ModelArgs,
    dir: &Path,
    cache: &Path,
    state: Option<deepwasm_state::PgState>,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let tenants_file = dir.join("tenants.toml");
    std::fs::write(
        &tenants_file,
        format!(
            "[[tenant]]\nname = \"bench\"\napi_keys = [\"{}\"]\n[tenant.limits]\n\
             max_concurrent_requests = 64\ntokens_per_minute = 1000000000000\nmax_plugins = 1000\n",
            deepwasm_server::tenants::hash_key(KEY)
        ),
    )?;
    let plugins = PluginEngine::new(EngineConfig {
        cache_dir: Some(cache.to_owned()),
        compile_on_one_thread: true,
        compile_worker: None,
    })?;
    let config = deepwasm_server::Config {
        store_dir: dir.join("store"),
        tenants_file: Some(tenants_file.clone()),
        state,
        ..Default::default()
    };
    let _entered = runtime.enter();
    let app = deepwasm_server::AppState::new(
        Engine::from(model.load()?),
        Tenants::load(&tenants_file)?,
        plugins,
        config,
    )?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(deepwasm_server::serve_on(app, listener));
    Ok(format!("http://{addr}"))
}

async fn timed<T>(
    into: &mut Vec<Duration>,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let t = Instant::now();
    let out = f.await?;
    into.push(t.elapsed());
    Ok(out)
}

async fn score(client: &Client, plugin: &str) -> anyhow::Result<()> {
    client
        .request(
            "POST",
            "/v1/rewards/score",
            Some(json!({"rewards": [{"plugin": plugin}], "samples": [{"completion": "<think>a</think> b"}]})),
        )
        .await
        .map(drop)
}

async fn measure(
    a: &Client,
    b: Option<&Client>,
    component: &[u8],
    args: &StateBenchArgs,
) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    // Names of this run only: the database may hold earlier runs'.
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let mut names = Vec::new();
    for i in 0..args.uploads {
        let name = format!("bench-{run}-{i}");
        let bytes = fresh_copy(component, &name);
        timed(&mut f.upload, a.upload(&name, bytes.clone())).await?;
        timed(&mut f.upload_again, a.upload(&name, bytes)).await?;
        names.push(name);
    }
    for _ in 0..args.requests {
        timed(&mut f.list, a.request("GET", "/v1/plugins", None)).await?;
    }
    for name in &names {
        timed(&mut f.first_use, score(a, name)).await?;
        if let Some(b) = b {
            timed(&mut f.first_use_elsewhere, score(b, name)).await?;
        }
        timed(&mut f.next_use, score(b.unwrap_or(a), name)).await?;
    }
    let body = Bytes::from(json!({"prompt": "hi"}).to_string());
    for _ in 0..args.requests {
        let t = Instant::now();
        let (status, answer) = a
            .exchange("POST", "/tokenize", "application/json", body.clone())
            .await?;
        if !status.is_success() {
            bail!("/tokenize: {status}: {}", String::from_utf8_lossy(&answer));
        }
        f.admission.push(t.elapsed());
    }
    for name in &names {
        timed(
            &mut f.delete,
            a.request("DELETE", &format!("/v1/plugins/{name}"), None),
        )
        .await?;
    }
    Ok(f)
}

fn cell(v: &[Duration]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let mut s = v.to_vec();
    s.sort();
    format!("{} (p90 {})", ms(quantile(&s, 0.5)), ms(quantile(&s, 0.9)))
}

pub fn run(args: &StateBenchArgs) -> anyhow::Result<()> {
    let component = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read {}", args.plugin.display()))?;
    let runtime = runtime()?;
    let dir = tempfile::tempdir()?;
    let pg = runtime
        .block_on(deepwasm_state::PgState::connect(&args.state))
        .context("--state")?;

    // Each server compiles into a cache of its own, empty at the start:
    // every upload compiles, and so does the first use on replica B.
    let embedded = start(
        &runtime,
        &args.model,
        &dir.path().join("embedded"),
        &dir.path().join("embedded-cache"),
        None,
    )?;
    let a = start(
        &runtime,
        &args.model,
        &dir.path().join("a"),
        &dir.path().join("a-cache"),
        Some(pg.clone()),
    )?;
    let b = start(
        &runtime,
        &args.model,
        &dir.path().join("b"),
        &dir.path().join("b-cache"),
        Some(pg),
    )?;
    let client = |url: &str| Client::new(url, Some(KEY));
    let (embedded, a, b) = (client(&embedded), client(&a), client(&b));
    eprintln!("embedded store ...");
    let e = runtime.block_on(measure(&embedded, None, &component, args))?;
    eprintln!("PostgreSQL, replicas A and B ...");
    let p = runtime.block_on(measure(&a, Some(&b), &component, args))?;
    let n = args.uploads;
    println!(
        "plugin {} ({} KiB), {n} uploads, {} lists and admissions per backend",
        args.plugin.display(),
        component.len() / 1024,
        args.requests
    );
    println!();
    println!("| operation | embedded | PostgreSQL |");
    println!("|---|--:|--:|");
    let list = format!("list ({n} plugins)");
    let rows: [(&str, &[Duration], &[Duration]); 8] = [
        ("upload (compile + store)", &e.upload, &p.upload),
        ("upload of stored bytes", &e.upload_again, &p.upload_again),
        (&list, &e.list, &p.list),
        (
            "first use, on the uploading replica",
            &e.first_use,
            &p.first_use,
        ),
        (
            "first use on another replica (fetch + compile)",
            &e.first_use_elsewhere,
            &p.first_use_elsewhere,
        ),
        ("next use", &e.next_use, &p.next_use),
        ("delete", &e.delete, &p.delete),
        (
            "POST /tokenize (admission + tokenize)",
            &e.admission,
            &p.admission,
        ),
    ];
    for (what, x, y) in rows {
        println!("| {what} | {} | {} |", cell(x), cell(y));
    }
    let mut x = e.admission.clone();
    let mut y = p.admission.clone();
    x.sort();
    y.sort();
    let cost = quantile(&y, 0.5).saturating_sub(quantile(&x, 0.5));
    println!();
    println!(
        "the quota check's cost per request with --state (median difference): {}",
        ms(cost)
    );
    Ok(())
}
