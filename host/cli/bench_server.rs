//! `deepwasm bench server`: concurrent streaming clients against the HTTP
//! API: aggregate decode throughput and time to first token at each level
//! of concurrency, with and without a sampler plugin on every request.
//!
//! By default the server runs in this process on 127.0.0.1 with the model
//! given (the default model otherwise); `--url` measures any other
//! OpenAI-compatible server (llama.cpp's `llama-server`, say) with the same
//! clients, so the two can be compared on one machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use deepwasm_engine::Engine;
use deepwasm_server::tenants::Tenants;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::Cli;
use crate::model::ModelArgs;

#[derive(Args, Clone)]
pub struct ServerBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Measure this running OpenAI-compatible server (`http://HOST:PORT`)
    /// instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Requests each client sends, one after another.
    #[arg(long, default_value_t = 3)]
    requests: usize,
    /// Tokens generated per request (EOS ignored, so every request decodes
    /// this many).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// A sampler component to upload and name on every request, in a second
    /// pass after the pass without one (deepwasm servers only).
    #[arg(long, value_name = "FILE.wasm")]
    sampler: Option<PathBuf>,
    /// The sampler's config (JSON).
    #[arg(long, default_value = "{}")]
    sampler_config: String,
    /// Most sequences decoded together (the in-process server's --max-batch).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Most prompt tokens a forward pass takes while any sequence decodes (the
    /// in-process server's --step-tokens); 0 prefills each prompt whole.
    #[arg(long, default_value_t = deepwasm_engine::batcher::DEFAULT_STEP_TOKENS)]
    step_tokens: usize,
    /// Then measure llama.cpp's llama-server on the same file with the same
    /// clients, started here (continuous batching, `--peer-slots` slots).
    #[arg(long)]
    peer: bool,
    /// The llama-server to run with `--peer` [default: the reference build
    /// of scripts/reference/build-llama-cpp]
    #[arg(long)]
    llama_server: Option<PathBuf>,
    /// Sequences llama-server decodes at once (its `-np`).
    #[arg(long, default_value_t = 16)]
    peer_slots: usize,
    /// Context per llama-server slot (its `-c` is this times the slots).
    #[arg(long, default_value_t = 512)]
    peer_slot_context: usize,
}

/// llama.cpp's server on `model`, listening on a free local port; killed
/// when dropped.
struct Peer {
    child: std::process::Child,
    base: String,
}

impl Peer {
    fn start(
        bin: &std::path::Path,
        model: &std::path::Path,
        args: &ServerBenchArgs,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .to_string()
        });
        let child = std::process::Command::new(bin)
            .arg("-m")
            .arg(model)
            .args(["-t", &threads, "-np", &args.peer_slots.to_string()])
            .args([
                "-c",
                &(args.peer_slots * args.peer_slot_context).to_string(),
            ])
            .args([
                "--cont-batching",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut peer = Peer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = peer.child.try_wait()? {
                bail!("llama-server exited before it was ready ({status})");
            }
            if healthy(port) {
                return Ok(peer);
            }
            if Instant::now() > deadline {
                bail!("llama-server was not ready within a minute");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Whether the server on `port` answers `GET /health` with 200 (it answers
/// 503 while it loads the model).
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The prompts the clients cycle through.
const PROMPTS: [&str; 8] = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a rainbow forms.",
    "List some good habits for learning a new language.",
    "Describe the water cycle to a child.",
    "What makes a good cup of tea?",
    "Tell me about the history of bicycles.",
    "How do plants make their food?",
    "Give advice for a first job interview.",
];

/// One request's measurements.
pub(crate) struct Timing {
    pub(crate) ttft: Duration,
    pub(crate) total: Duration,
    pub(crate) tokens: usize,
    /// When each chunk with text arrived, from the request's start.
    pub(crate) arrivals: Vec<Duration>,
    /// When the request was sent.
    pub(crate) started: Instant,
}

pub fn run(cli: &Cli, args: &ServerBenchArgs) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let (base, label) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), url.clone()),
        None => (
            start_in_process(
                &runtime,
                cli,
                &args.model,
                Tenants::single(),
                deepwasm_server::Config {
                    max_batch: args.max_batch,
                    step_tokens: match args.step_tokens {
                        0 => usize::MAX,
                        n => n,
                    },
                    ..Default::default()
                },
            )?,
            format!(
                "deepwasm (max batch {}, step tokens {})",
                args.max_batch, args.step_tokens
            ),
        ),
    };
    runtime.block_on(bench(&Client::new(&base, None), &label, args))?;
    if args.peer {
        let bin = args
            .llama_server
            .clone()
            .or_else(|| crate::bench_model::reference_bin("llama-server"))
            .context("no llama-server: build it with scripts/reference/build-llama-cpp, or pass --llama-server")?;
        let peer = Peer::start(&bin, &args.model.path()?, args)?;
        println!();
        let label = format!(
            "llama.cpp llama-server ({} slots, continuous batching)",
            args.peer_slots
        );
        let peer_args = ServerBenchArgs {
            sampler: None,
            ..args.clone()
        };
        runtime.block_on(bench(&Client::new(&peer.base, None), &label, &peer_args))?;
    }
    Ok(())
}

/// The async runtime the benchmark's clients (and an in-process server) run on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Start the server on `runtime`, listening on 127.0.0.1 (a free port),
/// with `model`, `tenants` and `config`; its plugin store is a temporary
/// directory that lives as long as the process (`config.store_dir` is
/// ignored). Its base URL.
pub(crate) fn start_in_process(
    runtime: &tokio::runtime::Runtime,
    cli: &Cli,
    model: &ModelArgs,
    tenants: Tenants,
    config: deepwasm_server::Config,
) -> anyhow::Result<String> {
    let loaded = model.load()?;
    let store = tempfile::tempdir().context("cannot make a plugin store")?;
    let config = deepwasm_server::Config {
        store_dir: store.path().to_owned(),
        ..config
    };
    let state = deepwasm_server::AppState::new(
        Engine::from(loaded),
        tenants,
        cli.server_engine(&crate::serve::CompileCaps::default())?,
        config,
    )?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(deepwasm_server::serve_on(state, listener));
    std::mem::forget(store);
    Ok(format!("http://{addr}"))
}

async fn bench(client: &Client, label: &str, args: &ServerBenchArgs) -> anyhow::Result<()> {
    let model = client.model().await?;
    let mut passes: Vec<(String, Option<Value>)> = vec![("no sampler plugin".into(), None)];
    if let Some(path) = &args.sampler {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let uploaded = client.upload("bench-sampler", bytes).await?;
        let config: Value =
            serde_json::from_str(&args.sampler_config).context("--sampler-config is not JSON")?;
        let file = path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        passes.push((
            format!("sampler plugin {file} on every request"),
            Some(json!({"plugin": uploaded, "config": config})),
        ));
    }
    println!(
        "server: {label}; model {model}; {} requests per client, {} tokens each (EOS ignored)",
        args.requests, args.max_tokens
    );
    for (pass, sampler) in &passes {
        println!("\n{pass}");
        println!(
            "{:>7}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  {:>10}  {:>8}",
            "clients", "requests", "tokens", "tok/s", "TTFT p50", "TTFT p99", "ITL p99", "× one"
        );
        let mut one = None;
        for &clients in &args.clients {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let client = client.clone();
                let model = model.clone();
                let sampler = sampler.clone();
                let (requests, max_tokens) = (args.requests, args.max_tokens);
                tasks.push(tokio::spawn(async move {
                    let mut timings = Vec::new();
                    for r in 0..requests {
                        let mut body = json!({
                            "model": model,
                            "messages": [{"role": "user", "content": PROMPTS[(c + r) % PROMPTS.len()]}],
                            "max_tokens": max_tokens,
                            "temperature": 0.8,
                            "seed": c * requests + r,
                            "ignore_eos": true,
                        });
                        if let Some(s) = &sampler {
                            body["sampler"] = s.clone();
                        }
                        timings.push(client.stream_chat(body).await?);
                    }
                    anyhow::Ok(timings)
                }));
            }
            let mut timings = Vec::new();
            for t in tasks {
                timings.extend(t.await.context("a client panicked")??);
            }
            let wall = started.elapsed();
            let tokens: usize = timings.iter().map(|t| t.tokens).sum();
            let rate = tokens as f64 / wall.as_secs_f64();
            let (p50, p99) = crate::bench::stats(timings.iter().map(|t| t.ttft).collect());
            // Gaps between a stream's chunks after its first.
            let gaps: Vec<Duration> = timings
                .iter()
                .flat_map(|t| t.arrivals.windows(2).map(|w| w[1] - w[0]))
                .collect();
            let itl = match gaps.is_empty() {
                true => Duration::ZERO,
                false => crate::bench::stats(gaps).1,
            };
            let base_rate = *one.get_or_insert(rate);
            println!(
                "{clients:>7}  {:>9}  {tokens:>9}  {rate:>9.1}  {:>8.0}ms  {:>8.0}ms  {:>8.0}ms  {:>7.2}×",
                timings.len(),
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                itl.as_secs_f64() * 1e3,
                rate / base_rate
            );
            let slowest = timings.iter().map(|t| t.total).max().unwrap_or_default();
            tracing::debug!("slowest request {slowest:?}");
        }
    }
    Ok(())
}

/// A small HTTP/1 client for one server, sending as one tenant: a fresh
/// connection per request, so no request waits behind another's.
#[derive(Clone)]
pub(crate) struct Client {
    /// `http://HOST:PORT`.
    base: String,
    /// The tenant's API key (none for a server without a tenants file).
    key: Option<String>,
}

impl Client {
    pub(crate) fn new(base: &str, key: Option<&str>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            key: key.map(str::to_owned),
        }
    }

    /// Send one request; the response with its body still to read.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let authority = self
            .base
            .strip_prefix("http://")
            .context("the URL must start with http://")?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority)
            .header("content-type", content_type);
        if let Some(key) = &self.key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = req.body(Full::new(body))?;
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender.send_request(req).await?)
    }

    /// Send one request and read the whole answer, whatever its status.
    pub(crate) async fn exchange(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let resp = self.send(method, path, content_type, body).await?;
        let status = resp.status();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }

    /// A JSON request whose answer must be a success.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let (status, bytes) = self
            .exchange(method, path, "application/json", body)
            .await?;
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The id of the model the server serves.
    pub(crate) async fn model(&self) -> anyhow::Result<String> {
        let models = self.request("GET", "/v1/models", None).await?;
        Ok(models["data"][0]["id"]
            .as_str()
            .context("the server lists no model")?
            .to_owned())
    }

    /// Upload a plugin as `name`; its id.
    pub(crate) async fn upload(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
        let path = format!("/v1/plugins?name={name}");
        let (status, body) = self
            .exchange("POST", &path, "application/wasm", Bytes::from(bytes))
            .await?;
        if !status.is_success() {
            bail!(
                "uploading {name}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: Value = serde_json::from_slice(&body)?;
        Ok(v["id"]
            .as_str()
            .context("the upload answer has no id")?
            .to_owned())
    }

    /// One streaming chat request (`body` without `stream` and
    /// `stream_options`, which are set here): time to the first content,
    /// total time, and the completion tokens the final usage chunk reports.
    pub(crate) async fn stream_chat(&self, body: Value) -> anyhow::Result<Timing> {
        self.stream_chat_until(body, std::future::pending()).await
    }

    /// [`Client::stream_chat`], cut off when `stop` completes: the
    /// connection is dropped (the server cancels the request) and the
    /// timing covers what arrived before (`tokens` counts the chunks with
    /// text then).
    pub(crate) async fn stream_chat_until(
        &self,
        mut body: Value,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<Timing> {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let started = Instant::now();
        let resp = self
            .send(
                "POST",
                "/v1/chat/completions",
                "application/json",
                Bytes::from(body.to_string()),
            )
            .await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            bail!(
                "chat request: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let mut buf = Vec::new();
        let mut ttft = None;
        let mut tokens = None;
        let mut arrivals = Vec::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = &mut stop => {
                    tokens = Some(arrivals.len());
                    break;
                }
            };
            let Some(frame) = frame else {
                break;
            };
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                for line in text.lines() {
                    let Some(data) = line.strip_prefix("data: ") else {
                        continue;
                    };
                    if data == "[DONE]" {
                        continue;
                    }
                    let chunk: Value =
                        serde_json::from_str(data).context("a stream chunk is not JSON")?;
                    if let Some(e) = chunk.get("error") {
                        bail!("the stream failed: {e}");
                    }
                    let has_text = chunk["choices"][0]["delta"]["content"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty())
                        || chunk["choices"][0]["delta"]["reasoning_content"]
                            .as_str()
                            .is_some_and(|t| !t.is_empty());
                    if has_text {
                        arrivals.push(started.elapsed());
                        ttft.get_or_insert(started.elapsed());
                    }
                    if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                        tokens = Some(n as usize);
                    }
                }
            }
        }
        Ok(Timing {
            ttft: ttft.context("the stream had no text")?,
            total: started.elapsed(),
            tokens: tokens.context("the stream had no usage chunk")?,
            arrivals,
            started,
        })
    }
}
