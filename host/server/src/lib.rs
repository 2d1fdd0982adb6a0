//! deepwasm's HTTP server: the OpenAI-compatible API over the model, with
//! tenants' plugins steering and scoring generation, and plugin management.
//!
//! Every request's sequences join one continuous batch on the model's thread
//! (the engine's [`Scheduler`]); handlers only parse, queue and stream. Each tenant has its
//! own plugins, plugin instances, meters and quotas ([`tenants`]); a plugin
//! instance never serves two tenants.

pub mod adapters;
pub mod agents;
pub mod api;
mod chat;
pub mod embeddings;
pub mod error;
mod handlers;
pub mod metrics;
pub mod openapi;
mod output;
mod plugins;
pub mod store;
pub mod tenants;
pub mod tokenize;
pub mod train;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use deepwasm_engine::agent::CALL_STEP_BUDGET;
use deepwasm_engine::{Engine, MissPolicy, ModelTokenizer, SamplerHosting, Scheduler};
use deepwasm_model::lora::ServedAdapter;
use deepwasm_plugins::{Plugin, PluginEngine, RewardPlugin, SamplerPlugin, Sandbox, World};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::{DirStore, PgStore, Store, Stored};
use crate::tenants::{Tenant, Tenants, TenantsCell};

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where tenants' plugins are stored.
    pub store_dir: PathBuf,
    /// Largest JSON request body, bytes.
    pub max_body_bytes: usize,
    /// Largest sequences decoded together.
    pub max_batch: usize,
    /// Prompt tokens one forward pass takes, at most, while any sequence decodes:
    /// long prompts go in by chunks between decode steps (see
    /// `deepwasm_engine::batcher::DEFAULT_STEP_TOKENS`).
    pub step_tokens: usize,
    /// Bytes of attention cache all running sequences may hold; `None`:
    /// a quarter of the machine's memory (see [`default_kv_cache_bytes`]).
    pub kv_cache_bytes: Option<u64>,
    /// Requests waiting for a place in the batch, at most; more are
    /// answered 503 with `Retry-After`.
    pub max_waiting: usize,
    /// Generate on this upstream engine instead of a local model (the
    /// engine's model then only renders and tokenizes; see
    /// `deepwasm_model::load_remote`).
    pub upstream: Option<deepwasm_upstream::Upstream>,
    /// Share the plugin registry, usage and quotas with other replicas
    /// through this database instead of keeping them here.
    pub state: Option<deepwasm_state::PgState>,
    /// The tenants file, read again on `SIGHUP`.
    pub tenants_file: Option<PathBuf>,
    /// With a shared state: how long a request's lease outlives its last
    /// renewal (how long a killed replica's requests still count).
    pub lease_ttl: Duration,
    /// LoRA adapters served beside the base model, by name: a request
    /// picks one with `model: "BASE:NAME"` (PEFT adapter directories).
    pub adapters: Vec<(String, PathBuf)>,
}

/// Requests that may wait for a place in the batch by default.
pub const DEFAULT_MAX_WAITING: usize = 256;

/// The attention cache's default budget: a quarter of the machine's memory
/// (`MemTotal` in /proc/meminfo), or 4 GiB where that cannot be read.
pub fn default_kv_cache_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib * 1024 / 4)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store_dir: PathBuf::from("deepwasm-plugins"),
            max_body_bytes: 8 << 20,
            max_batch: 32,
            step_tokens: deepwasm_engine::batcher::DEFAULT_STEP_TOKENS,
            kv_cache_bytes: None,
            max_waiting: DEFAULT_MAX_WAITING,
            upstream: None,
            state: None,
            tenants_file: None,
            lease_ttl: deepwasm_state::LEASE_TTL,
            adapters: Vec::new(),
        }
    }
}

/// Read and check every `--lora NAME=PATH` against the model.
fn load_adapters(
    engine: &Engine,
    config: &Config,
) -> anyhow::Result<std::collections::BTreeMap<String, Arc<ServedAdapter>>> {
    let mut out = std::collections::BTreeMap::new();
    if !config.adapters.is_empty() && config.upstream.is_some() {
        anyhow::bail!("--lora: adapters run on the local model, not on an upstream");
    }
    for (name, path) in &config.adapters {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            anyhow::bail!(
                "--lora {name}={}: a name is letters, digits, `-`, `_` and `.`",
                path.display()
            );
        }
        // Read on the host; the model moves it to its device.
        let lora = deepwasm_model::lora::LoraAdapter::read(path)
            .map_err(|e| anyhow::anyhow!("--lora {name}={}: {e}", path.display()))?;
        let served = engine
            .model
            .prepare_adapter(name, &lora)
            .map_err(|e| anyhow::anyhow!("--lora {name}={}: {e}", path.display()))?;
        if out.insert(name.clone(), served).is_some() {
            anyhow::bail!("--lora {name}: the name is given twice");
        }
    }
    Ok(out)
}

/// Plugin compiles the server runs at once, across all tenants: each takes
/// a core (see `EngineConfig::compile_on_one_thread`) and, in the compile
/// worker `deepwasm serve` sets up, at most its caps on time and memory
/// (`--max-compile-secs`, `--max-compile-mib`), so this bounds what uploads
/// can take from the model.
pub const MAX_COMPILES: usize = 2;

/// A pool of sampler instances: one per tenant and plugin, whatever the
/// budgets and policies of the requests it serves.
type SamplerKey = (String, String);

/// Everything the handlers share.
pub struct AppState {
    pub scheduler: Scheduler,
    pub engine: Arc<Engine>,
    pub tenants: Arc<TenantsCell>,
    pub store: Arc<Store>,
    /// Usage, spends and leases shared with other replicas, when the
    /// server runs on a shared state.
    pub ledger: Option<deepwasm_state::Ledger>,
    pub plugins: PluginEngine,
    pub metrics: Metrics,
    pub config: Config,
    /// Unix seconds the server started (the model's `created`).
    pub started: u64,
    tokenizer: Arc<ModelTokenizer>,
    /// The built-in JSON-schema sampler behind `response_format`.
    json_schema: Plugin,
    /// Pooled sampler instances, per tenant and plugin.
    samplers: Mutex<HashMap<SamplerKey, SamplerPlugin>>,
    /// Plugin compiles and adapter uploads running at once, across tenants.
    pub(crate) compiles: Arc<tokio::sync::Semaphore>,
    rewards: Mutex<HashMap<(String, String), RewardPlugin>>,
    /// Tenants' stored Responses-API responses.
    pub(crate) responses: chat::responses::ResponseStore,
    /// The LoRA adapters served, by name.
    pub(crate) adapters: std::collections::BTreeMap<String, Arc<ServedAdapter>>,
    /// Tenants' own adapters, uploaded or trained.
    pub(crate) tenant_adapters: adapters::AdapterStore,
    /// Training jobs.
    pub(crate) training: train::Training,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.engine.name)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Start the model's thread, open the plugin store and load the
    /// built-in plugins. With a shared state (`config.state`), this starts
    /// its writer, and must be called within a Tokio runtime.
    pub fn new(
        engine: Engine,
        tenants: Tenants,
        plugins: PluginEngine,
        config: Config,
    ) -> anyhow::Result<Arc<Self>> {
        let adapters = load_adapters(&engine, &config)?;
        let tenants = Arc::new(TenantsCell::new(tenants, config.tenants_file.clone()));
        let engine = Arc::new(engine);
        let (store, ledger) = match &config.state {
            None => {
                let grants: Vec<_> = tenants
                    .current()
                    .all()
                    .iter()
                    .map(|t| (t.name.clone(), t.grants.clone()))
                    .collect();
                let dir = DirStore::open(&config.store_dir, plugins.clone(), &grants)?;
                (Store::Dir(dir), None)
            }
            Some(pg) => {
                let cell = Arc::downgrade(&tenants);
                let ledger = deepwasm_state::Ledger::with_lease_ttl(
                    pg.clone(),
                    Arc::new(move || {
                        cell.upgrade()
                            .map(|c| c.current().usage_snapshot())
                            .unwrap_or_default()
                    }),
                    config.lease_ttl,
                );
                tenants.attach(ledger.clone());
                (
                    Store::Pg(PgStore::new(pg.clone(), plugins.clone())),
                    Some(ledger),
                )
            }
        };
        let store = Arc::new(store);
        let json_schema = plugins
            .load(
                "json-schema",
                deepwasm_builtins::JSON_SCHEMA,
                &deepwasm_plugins::Grants::default(),
            )
            .map_err(|e| anyhow::anyhow!("cannot load the built-in JSON-schema sampler: {e}"))?;
        let kv_bytes = config.kv_cache_bytes.unwrap_or_else(default_kv_cache_bytes);
        let per_token = engine.model.info().kv_bytes_per_token.max(1) as u64;
        let kv_budget_tokens = usize::try_from(kv_bytes / per_token).unwrap_or(usize::MAX);
        let scheduling = deepwasm_engine::SchedulerConfig {
            max_batch: config.max_batch,
            step_tokens: config.step_tokens,
            kv_budget_tokens,
            max_waiting: config.max_waiting,
            share_prompts: true,
        };
        let scheduler = match &config.upstream {
            Some(upstream) => Scheduler::upstream(engine.clone(), upstream.clone(), scheduling),
            None => Scheduler::start(engine.clone(), scheduling)?,
        };
        let metrics = Metrics::new(
            tenants.clone(),
            store.clone(),
            ledger.clone(),
            scheduler.stats.clone(),
            engine.logits_traffic.clone(),
        );
        let tokenizer = Arc::new(ModelTokenizer::for_engine(&engine));
        let training = train::Training::new();
        let tenant_adapters =
            adapters::AdapterStore::open(&engine, &config.store_dir.join(".adapters"));
        let responses = match &config.state {
            Some(pg) => chat::responses::ResponseStore::shared(pg.clone()),
            None => Default::default(),
        };
        Ok(Arc::new(AppState {
            scheduler,
            engine,
            tenants,
            store,
            ledger,
            plugins,
            metrics,
            config,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            tokenizer,
            json_schema,
            samplers: Mutex::new(HashMap::new()),
            rewards: Mutex::new(HashMap::new()),
            responses,
            compiles: Arc::new(tokio::sync::Semaphore::new(MAX_COMPILES)),
            training,
            tenant_adapters,
            adapters,
        }))
    }

    /// The model's name as the API shows it.
    /// Tokens of attention cache the running sequences may hold, as the
    /// server settled on at start.
    pub fn kv_budget_tokens(&self) -> usize {
        self.scheduler
            .stats
            .kv
            .budget_tokens
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Admit an upload (a plugin to compile, or an adapter to check): one
    /// at a time per tenant, [`MAX_COMPILES`] in all. The permits go with
    /// the work, so they are held until it ends even if the client goes
    /// away.
    pub(crate) fn admit_upload(
        &self,
        tenant: &Tenant,
    ) -> Result<
        (
            tokio::sync::OwnedSemaphorePermit,
            tokio::sync::OwnedSemaphorePermit,
        ),
        ApiError,
    > {
        let mine = tenant.admit_compile()?;
        let any = self.compiles.clone().try_acquire_owned().map_err(|_| {
            ApiError::rate_limited(
                "the server is taking in as many plugin and adapter uploads as it does at once; retry shortly",
                1,
            )
        })?;
        Ok((mine, any))
    }

    pub fn model_id(&self) -> &str {
        &self.engine.name
    }

    /// Check a request's `model`: the base model, or `BASE:NAME` for an
    /// adapter `tenant` may use (the server's `--lora` ones and its own).
    pub fn check_model(
        &self,
        tenant: &Tenant,
        model: &str,
    ) -> Result<Option<Arc<ServedAdapter>>, ApiError> {
        if model == self.model_id() {
            return Ok(None);
        }
        let named = model
            .strip_prefix(self.model_id())
            .and_then(|rest| rest.strip_prefix(':'));
        let found = named.and_then(|name| {
            self.adapters
                .get(name)
                .cloned()
                .or_else(|| self.tenant_adapters.get(&tenant.name, name))
        });
        match found {
            Some(a) => Ok(Some(a)),
            None => {
                let mut e = ApiError::model_not_found(model, self.model_id());
                let adapters = self.adapter_models(tenant);
                if !adapters.is_empty() {
                    e.message = format!("{}, and its adapters {}", e.message, adapters.join(", "));
                }
                Err(e)
            }
        }
    }

    /// `BASE:NAME` for every adapter `tenant` may use.
    pub fn adapter_models(&self, tenant: &Tenant) -> Vec<String> {
        let own = self.tenant_adapters.names(&tenant.name);
        self.adapters
            .keys()
            .chain(&own)
            .map(|n| format!("{}:{n}", self.model_id()))
            .collect()
    }

    /// A tenant's sampler, pooled per tenant and plugin: built-in
    /// (`json-schema`) when `stored` is `None`. Its calls may run up to the
    /// hard deadline of the tenant's longest step budget (of the built-in
    /// budgets, for a built-in); each request's calls carry their own.
    pub(crate) fn sampler(
        &self,
        tenant: &Tenant,
        stored: Option<&Stored>,
    ) -> Result<SamplerPlugin, ApiError> {
        let (plugin, max_budget) = match stored {
            Some(s) => (s.plugin.clone(), tenant.max_step_budget()),
            None => (
                self.json_schema.clone(),
                tenant.max_step_budget().max(CALL_STEP_BUDGET),
            ),
        };
        let key = (tenant.name.clone(), plugin.id().to_owned());
        let mut cache = self.samplers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(&key) {
            return Ok(s.clone());
        }
        let sampler = SamplerHosting::new(self.tokenizer.clone(), max_budget, MissPolicy::Wait)
            .with_limits(|limits| {
                if let Some(m) = tenant.limits.plugin_memory_mib {
                    limits.memory_bytes = m * deepwasm_plugins::MIB;
                }
            })
            .with_meter(tenant.meter.clone())
            .load(plugin)
            .map_err(|e| ApiError::invalid_param("sampler.plugin", e.to_string()))?;
        cache.insert(key, sampler.clone());
        Ok(sampler)
    }

    /// A tenant's reward plugin, under the tenant's reward limits.
    pub(crate) fn reward(
        &self,
        tenant: &Tenant,
        stored: &Stored,
    ) -> Result<RewardPlugin, ApiError> {
        let key = (tenant.name.clone(), stored.record.id.clone());
        let mut cache = self.rewards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = cache.get(&key) {
            return Ok(r.clone());
        }
        let sandbox =
            Sandbox::new(tenant.plugin_limits(World::Reward)).with_meter(tenant.meter.clone());
        let reward = RewardPlugin::new(stored.plugin.clone(), sandbox)
            .map_err(|e| ApiError::invalid_param("rewards", e.to_string()))?;
        cache.insert(key, reward.clone());
        Ok(reward)
    }

    /// Read the tenants file again (on `SIGHUP`): changed tenants' plugins
    /// are checked again under their new grants, and their pooled
    /// instances go.
    pub fn reload_tenants(&self) -> anyhow::Result<Vec<String>> {
        let changed = self.tenants.reload()?;
        let current = self.tenants.current();
        for name in &changed {
            let grants = current
                .all()
                .iter()
                .find(|t| &t.name == name)
                .map(|t| t.grants.clone());
            self.store.tenant_changed(name, grants.as_ref());
            self.drop_pooled(|(tenant, _)| tenant == name);
        }
        Ok(changed)
    }

    /// `tenant`'s stored plugin by id or name, from synchronous code (the
    /// request planning that runs on a blocking thread). With a shared
    /// state this asks the database, blocking this thread (never the
    /// async workers: `block_in_place` hands theirs over first).
    pub(crate) fn stored(
        &self,
        tenant: &Tenant,
        id_or_name: &str,
    ) -> Result<Option<Stored>, ApiError> {
        let got = match &*self.store {
            Store::Dir(d) => Ok(d.get(&tenant.name, id_or_name)),
            Store::Pg(_) => {
                let handle = tokio::runtime::Handle::current();
                tokio::task::block_in_place(|| {
                    handle.block_on(self.store.get(
                        &tenant.name,
                        &tenant.grants,
                        id_or_name,
                        tenant.limits.max_plugins,
                    ))
                })
            }
        };
        got.map_err(|e| plugin_store_error(id_or_name, e))
    }

    /// `tenant`'s stored plugin by id or name.
    pub(crate) async fn stored_async(
        &self,
        tenant: &Tenant,
        id_or_name: &str,
    ) -> Result<Option<Stored>, ApiError> {
        self.store
            .get(
                &tenant.name,
                &tenant.grants,
                id_or_name,
                tenant.limits.max_plugins,
            )
            .await
            .map_err(|e| plugin_store_error(id_or_name, e))
    }

    /// Forget the pooled instances of a deleted plugin.
    pub(crate) fn forget(&self, tenant: &str, id: &str) {
        self.drop_pooled(|(t, i)| t == tenant && i == id);
    }

    /// Drop the pooled sampler and reward instances whose (tenant, plugin
    /// id) `gone` names. Requests still running keep theirs until they
    /// end; the idle ones go now.
    fn drop_pooled(&self, gone: impl Fn(&(String, String)) -> bool) {
        self.samplers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, s| {
                if gone(k) {
                    s.evict_idle();
                    false
                } else {
                    true
                }
            });
        self.rewards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !gone(k));
    }
}

/// A plugin store's error as the API answers it.
pub(crate) fn plugin_store_error(name: &str, e: store::UploadError) -> ApiError {
    match e {
        store::UploadError::State(e) => tenants::state_error(e),
        store::UploadError::Load(e) => {
            tracing::warn!("plugin `{name}` cannot be loaded: {e}");
            ApiError::invalid(format!("plugin `{name}` cannot be loaded: {e}"))
        }
        other => ApiError::internal(format!("plugin `{name}`: {other}")),
    }
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.config.max_body_bytes;
    // Components may be larger than JSON bodies: their own cap is the
    // tenant's `max_plugin_bytes`.
    let max_plugin = state
        .tenants
        .current()
        .all()
        .iter()
        .map(|t| t.limits.max_plugin_bytes)
        .max()
        .unwrap_or(max_body);
    // An adapter's two files, each at most the tenant's `adapter_bytes`.
    let max_adapter = state
        .tenants
        .current()
        .all()
        .iter()
        .map(|t| usize::try_from(t.limits.adapter_bytes).unwrap_or(usize::MAX))
        .max()
        .unwrap_or(max_body)
        .saturating_add(1 << 20);
    let api = Router::new()
        .route("/v1/models", get(handlers::models))
        .route("/v1/models/{model}", get(handlers::model))
        .route("/v1/usage", get(handlers::usage))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/tokenizer_info", get(tokenize::tokenizer_info))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/v1/responses", post(chat::responses::create))
        .route(
            "/v1/responses/{id}",
            get(chat::responses::get).delete(chat::responses::delete),
        )
        .route("/v1/rewards/score", post(handlers::score))
        .route("/v1/rollouts", post(handlers::rollouts))
        .route("/v1/train/grpo", post(train::grpo))
        .route("/v1/agents/{plugin}/runs", post(agents::run))
        .route(
            "/v1/plugins",
            post(plugins::upload)
                .get(plugins::list)
                .layer(DefaultBodyLimit::max(max_plugin.max(max_body))),
        )
        .route(
            "/v1/plugins/{id}",
            get(plugins::get).delete(plugins::delete),
        )
        .route(
            "/v1/adapters",
            post(adapters::upload)
                .get(adapters::list)
                .layer(DefaultBodyLimit::max(max_adapter.max(max_body))),
        )
        .route(
            "/v1/adapters/{name}",
            get(adapters::get).delete(adapters::delete),
        )
        .route("/v1/adapters/{name}/files/{file}", get(adapters::download))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            handlers::authenticate,
        ));
    Router::new()
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .merge(api)
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serve on `addr` until Ctrl-C or SIGTERM; in-flight streams finish first.
pub async fn serve(state: Arc<AppState>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    serve_on(state, listener).await
}

/// Serve on a bound listener.
pub async fn serve_on(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let app = router(state.clone());
    #[cfg(unix)]
    let reloads = tokio::spawn(reload_on_sighup(state.clone()));
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    };
    // Streamed events are small writes: without TCP_NODELAY each waits for
    // the client's delayed ACK of the one before (~40 ms per event).
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    // Requests still running this long after the signal are cut off: a
    // generation without `max_tokens` may run for minutes.
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let served = tokio::select! {
        served = async { server.await } => served.map_err(|e| anyhow::anyhow!("the server failed: {e}")),
        () = deadline => {
            tracing::warn!("requests were still running {SHUTDOWN_GRACE:?} after the signal; stopped them");
            Ok(())
        }
    };
    #[cfg(unix)]
    reloads.abort();
    // A clean shutdown writes the last usage: nothing counted is lost.
    if let Some(ledger) = &state.ledger {
        match ledger.close().await {
            Ok(()) => tracing::info!("usage written to the state database"),
            Err(e) => tracing::warn!("the last usage could not be written: {e}"),
        }
    }
    served
}

/// Read the tenants file again on each `SIGHUP`.
#[cfg(unix)]
async fn reload_on_sighup(state: Arc<AppState>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        // Reading the file, and loading changed tenants' plugins again
        // from disk, block: off the async workers.
        let reloading = state.clone();
        let reloaded = tokio::task::spawn_blocking(move || reloading.reload_tenants())
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the reload stopped: {e}")));
        match reloaded {
            Ok(changed) if changed.is_empty() => {
                tracing::info!("SIGHUP: the tenants file is unchanged")
            }
            Ok(changed) => tracing::info!(
                "SIGHUP: tenants file read again; changed: {}",
                changed.join(", ")
            ),
            Err(e) => {
                tracing::warn!("SIGHUP: the tenants file was not reloaded (nothing changed): {e}")
            }
        }
    }
}

/// How long requests may finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
