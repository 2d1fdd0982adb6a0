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
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::Cli;
use crate::model::ModelArgs;

#[derive(Args)]
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
struct Timing {
    ttft: Duration,
    total: Duration,
    tokens: usize,
}

pub fn run(cli: &Cli, args: &ServerBenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (base, label) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), url.clone()),
        None => {
            let loaded = args.model.load()?;
            let store = tempfile::tempdir().context("cannot make a plugin store")?;
            let config = deepwasm_server::Config {
                store_dir: store.path().to_owned(),
                max_batch: args.max_batch,
                ..Default::default()
            };
            let state = deepwasm_server::AppState::new(
                Engine::from(loaded),
                Tenants::single(),
                cli.engine()?,
                config,
            )?;
            let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
            let addr = listener.local_addr()?;
            runtime.spawn(deepwasm_server::serve_on(state, listener));
            // The store lives as long as the process.
            std::mem::forget(store);
            (
                format!("http://{addr}"),
                format!("deepwasm (max batch {})", args.max_batch),
            )
        }
    };
    runtime.block_on(bench(&base, &label, args))
}

async fn bench(base: &str, label: &str, args: &ServerBenchArgs) -> anyhow::Result<()> {
    let models = request(base, "GET", "/v1/models", None).await?;
    let model = models["data"][0]["id"]
        .as_str()
        .context("the server lists no model")?
        .to_owned();
    let mut passes: Vec<(String, Option<Value>)> = vec![("no sampler plugin".into(), None)];
    if let Some(path) = &args.sampler {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = "bench-sampler";
        let uploaded = upload(base, name, bytes).await?;
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
            "{:>7}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  {:>8}",
            "clients", "requests", "tokens", "tok/s", "TTFT p50", "TTFT p99", "× one"
        );
        let mut one = None;
        for &clients in &args.clients {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let base = base.to_owned();
                let model = model.clone();
                let sampler = sampler.clone();
                let (requests, max_tokens) = (args.requests, args.max_tokens);
                tasks.push(tokio::spawn(async move {
                    let mut timings = Vec::new();
                    for r in 0..requests {
                        let prompt = PROMPTS[(c + r) % PROMPTS.len()];
                        let seed = (c * requests + r) as u64;
                        timings.push(
                            stream_chat(&base, &model, prompt, max_tokens, seed, sampler.as_ref())
                                .await?,
                        );
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
            let mut ttft: Vec<Duration> = timings.iter().map(|t| t.ttft).collect();
            ttft.sort();
            let pct = |p: f64| ttft[((ttft.len() - 1) as f64 * p).round() as usize];
            let base_rate = *one.get_or_insert(rate);
            println!(
                "{clients:>7}  {:>9}  {tokens:>9}  {rate:>9.1}  {:>8.0}ms  {:>8.0}ms  {:>7.2}×",
                timings.len(),
                pct(0.5).as_secs_f64() * 1e3,
                pct(0.99).as_secs_f64() * 1e3,
                rate / base_rate
            );
            let slowest = timings.iter().map(|t| t.total).max().unwrap_or_default();
            tracing::debug!("slowest request {slowest:?}");
        }
    }
    Ok(())
}

/// Open a connection to `base` and send one request.
async fn send(
    base: &str,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let authority = base
        .strip_prefix("http://")
        .context("the URL must start with http://")?
        .trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

fn build(
    base: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", content_type)
        .body(Full::new(body))?)
}

async fn request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let resp = send(base, build(base, method, path, "application/json", body)?).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Upload a plugin; its id.
async fn upload(base: &str, name: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
    let path = format!("/v1/plugins?name={name}");
    let resp = send(
        base,
        build(base, "POST", &path, "application/wasm", Bytes::from(bytes))?,
    )
    .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "uploading the sampler: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v["id"]
        .as_str()
        .context("the upload answer has no id")?
        .to_owned())
}

/// One streaming chat request: time to the first content, total time, and
/// the completion tokens the final usage chunk reports.
async fn stream_chat(
    base: &str,
    model: &str,
    prompt: &str,
    max_tokens: usize,
    seed: u64,
    sampler: Option<&Value>,
) -> anyhow::Result<Timing> {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(s) = sampler {
        body["sampler"] = s.clone();
    }
    let started = Instant::now();
    let req = build(
        base,
        "POST",
        "/v1/chat/completions",
        "application/json",
        Bytes::from(body.to_string()),
    )?;
    let resp = send(base, req).await?;
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
    while let Some(frame) = body.frame().await {
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
                if has_text && ttft.is_none() {
                    ttft = Some(started.elapsed());
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
    })
}
