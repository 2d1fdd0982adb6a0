//! Tenants: who may call the server, what their plugins may use, and how
//! much of the server they may take.
//!
//! The tenants file (TOML) names each tenant, the SHA-256 hashes of its API
//! keys (never the keys), its limits and its grants:
//!
//! ```toml
//! [[tenant]]
//! name = "acme"
//! api_keys = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//!
//! [tenant.limits]
//! plugin_memory_mib = 256       # per plugin instance
//! call_deadline_ms = 1000       # per plugin call (sampler steps keep their budget)
//! fuel = 200000000              # per reward sample
//! max_plugins = 16
//! max_plugin_bytes = 67108864
//! max_concurrent_requests = 8
//! tokens_per_minute = 100000    # prompt + completion tokens
//! kv_bytes = 1048576            # the kv store tools may be granted
//! adapter_bytes = 268435456     # its LoRA adapters, all together (f32)
//!
//! [tenant.grants]
//! interfaces = ["tokenizer", "logits", "log", "kv", "inference", "tools"]
//! tools = ["calculator"]        # tool plugins (by name) agents may call
//! ```
//!
//! `deepwasm hash-key KEY` prints the hash to put in `api_keys`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use deepwasm_state::{Admit, Lease, Ledger, StateError, UsageTotals};

use deepwasm_plugins::{
    Grants, HostInterface, Limits, MIB, MemoryKv, Meter, TOTAL_INSTANCES, World,
};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The hash of an API key as the tenants file stores it.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default, rename = "tenant")]
    tenants: Vec<TenantConfig>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    name: String,
    api_keys: Vec<String>,
    #[serde(default)]
    limits: TenantLimits,
    #[serde(default)]
    grants: GrantsConfig,
}

/// What a tenant may take. Unset fields keep the defaults documented here.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Linear memory per plugin instance, MiB (default: each world's).
    pub plugin_memory_mib: Option<u64>,
    /// Wall time per plugin call, ms (default: each world's; a sampler's
    /// step budget is separate).
    pub call_deadline_ms: Option<u64>,
    /// Fuel per reward sample (default 200 M).
    pub fuel: Option<u64>,
    /// Plugins stored at once (default 32).
    pub max_plugins: usize,
    /// Bytes of one plugin component (default 64 MiB).
    pub max_plugin_bytes: usize,
    /// Requests served at once (default 8).
    pub max_concurrent_requests: usize,
    /// Prompt and completion tokens per rolling minute (default: no limit).
    pub tokens_per_minute: Option<u64>,
    /// Bytes of the key-value store tools may use (default 1 MiB).
    pub kv_bytes: usize,
    /// The longest sampler step budget a request may ask for, ms (default
    /// 250). A sampler call is cut at 8 budgets; its sequence alone waits.
    pub max_step_budget_ms: u64,
    /// Plugin instances alive at once, idle pooled ones included (default:
    /// an equal share of the host's 1,000 instance slots, at least 16).
    pub max_plugin_instances: Option<usize>,
    /// Bytes of its LoRA adapters, all together, as the server holds them
    /// (their parameters in f32; default 256 MiB).
    pub adapter_bytes: u64,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            plugin_memory_mib: None,
            call_deadline_ms: None,
            fuel: None,
            max_plugins: 32,
            max_plugin_bytes: 64 << 20,
            max_concurrent_requests: 8,
            tokens_per_minute: None,
            kv_bytes: 1 << 20,
            max_step_budget_ms: 250,
            max_plugin_instances: None,
            adapter_bytes: 256 << 20,
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GrantsConfig {
    interfaces: Option<Vec<HostInterface>>,
    #[serde(default)]
    tools: Vec<String>,
}

/// Tokens spent in the last minute.
#[derive(Default)]
struct Window {
    spent: VecDeque<(Instant, u64)>,
    total: u64,
}

/// A tenant, with its counters.
pub struct Tenant {
    pub name: String,
    key_hashes: Vec<String>,
    pub limits: TenantLimits,
    pub grants: Grants,
    /// Tool plugins (by name) this tenant's agents may call.
    pub tools: Vec<String>,
    /// Plugin work, shared by every plugin of the tenant.
    pub meter: Arc<Meter>,
    pub kv: Arc<MemoryKv>,
    pub prompt_tokens: Arc<AtomicU64>,
    pub completion_tokens: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    concurrency: Arc<Semaphore>,
    /// One plugin compile at a time per tenant.
    compiles: Arc<Semaphore>,
    /// Reads of the shared state outside requests (usage, plugin
    /// management) at once, per replica.
    state_reads: Arc<Semaphore>,
    window: Arc<Mutex<Window>>,
    /// The shared state's ledger, when replicas share one: admissions and
    /// spends then count on every replica.
    ledger: OnceLock<Ledger>,
    /// What the tenants file said of this tenant: a reload keeps the
    /// tenant as it is when this is unchanged.
    fingerprint: String,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Holds a tenant's place among its concurrent requests.
///
/// Clones share the place: work a request hands to other threads (scoring,
/// say) holds a clone, so the place is freed only when all of it is done,
/// even if the client went away first.
#[derive(Clone)]
pub struct Admission {
    _permit: Arc<(OwnedSemaphorePermit, Option<Lease>)>,
}

/// Reads of the shared state (usage, plugin management) one tenant may run
/// at once on one replica.
pub const STATE_READS: usize = 4;

/// How long a client should wait before retrying while the state database
/// is away.
pub const STATE_RETRY_AFTER_SECS: u64 = 2;

/// A state error as the API answers it: 503 to retry while the database is
/// away, 500 for anything else.
pub fn state_error(e: StateError) -> ApiError {
    match e {
        StateError::Unavailable(_) => {
            // The writer logs the outage once; each request's 503 only here.
            tracing::debug!("{e}");
            ApiError::unavailable(
                "the server cannot reach its state database; retry shortly",
                STATE_RETRY_AFTER_SECS,
            )
        }
        // The database's own words (SQL, constraints) stay in the log.
        other => {
            tracing::error!("{other}");
            ApiError::internal("the server's state database refused an operation; see its log")
        }
    }
}

impl Tenant {
    /// A tenant whose plugins may hold `instances` live instances at once
    /// (its `max_plugin_instances` when set).
    fn new(
        name: String,
        key_hashes: Vec<String>,
        limits: TenantLimits,
        grants: Grants,
        tools: Vec<String>,
        instances: usize,
    ) -> Self {
        let share = limits.max_plugin_instances.unwrap_or(instances);
        let fingerprint = format!("{key_hashes:?} {limits:?} {grants:?} {tools:?}");
        Tenant {
            concurrency: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            compiles: Arc::new(Semaphore::new(1)),
            state_reads: Arc::new(Semaphore::new(STATE_READS)),
            kv: Arc::new(MemoryKv::new(limits.kv_bytes)),
            name,
            key_hashes,
            limits,
            grants,
            tools,
            meter: Arc::new(Meter::with_instance_share(share)),
            prompt_tokens: Arc::default(),
            completion_tokens: Arc::default(),
            requests: Arc::default(),
            window: Arc::default(),
            ledger: OnceLock::new(),
            fingerprint,
        }
    }

    /// This tenant with `old`'s counters: what it used so far, its plugin
    /// meter, its kv store and its token window carry over a reload that
    /// changed its limits or grants.
    fn carrying(mut self, old: &Tenant) -> Tenant {
        self.meter = old.meter.clone();
        self.kv = old.kv.clone();
        self.prompt_tokens = old.prompt_tokens.clone();
        self.completion_tokens = old.completion_tokens.clone();
        self.requests = old.requests.clone();
        self.window = old.window.clone();
        self.compiles = old.compiles.clone();
        self.state_reads = old.state_reads.clone();
        self
    }

    /// What this process counted of the tenant's usage.
    pub fn usage_totals(&self) -> UsageTotals {
        let u = self.meter.usage();
        UsageTotals {
            requests: self.requests.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            plugin_calls: u.calls,
            plugin_fuel: u.fuel,
            plugin_wall_us: u.wall_us,
            plugin_limit_hits: u.limit_hits,
        }
    }

    /// The ledger shared with other replicas, if any.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.get()
    }

    /// Admit a request: a free place among the concurrent ones and tokens
    /// left in the minute, or a 429 saying when to come back. With a
    /// shared state, both count on every replica (one round trip to the
    /// database), and a database that cannot be reached is a 503.
    pub async fn admit(&self) -> Result<Admission, ApiError> {
        let permit = self.admit_here()?;
        let lease = match self.ledger.get() {
            None => None,
            Some(ledger) => {
                match ledger
                    .admit(
                        &self.name,
                        self.limits.max_concurrent_requests.max(1),
                        self.limits.tokens_per_minute,
                    )
                    .await
                    .map_err(state_error)?
                {
                    Admit::Admitted(lease) => Some(lease),
                    Admit::TokensSpent {
                        spent,
                        retry_after_s,
                    } => {
                        return Err(ApiError::tokens_rate_limited(
                            format!(
                                "tenant `{}` used {spent} of its {} tokens per minute (on all replicas)",
                                self.name,
                                self.limits.tokens_per_minute.unwrap_or(0)
                            ),
                            retry_after_s,
                        ));
                    }
                    Admit::Busy {
                        running,
                        retry_after_s,
                    } => {
                        return Err(ApiError::rate_limited(
                            format!(
                                "tenant `{}` already has {running} requests running on all replicas, its limit is {}",
                                self.name, self.limits.max_concurrent_requests
                            ),
                            retry_after_s,
                        ));
                    }
                }
            }
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Admission {
            _permit: Arc::new((permit, lease)),
        })
    }

    /// This replica's part of an admission: its own place among the
    /// tenant's concurrent requests, and (without a shared state) the
    /// tokens of the minute.
    fn admit_here(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Some(limit) = self.limits.tokens_per_minute
            && self.ledger.get().is_none()
        {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            expire(&mut w);
            if w.total >= limit {
                let oldest = w.spent.front().map_or(Instant::now(), |(t, _)| *t);
                let wait = (oldest + MINUTE).saturating_duration_since(Instant::now());
                return Err(ApiError::tokens_rate_limited(
                    format!(
                        "tenant `{}` used {} of its {limit} tokens per minute",
                        self.name, w.total
                    ),
                    wait.as_secs() + 1,
                ));
            }
        }
        self.concurrency.clone().try_acquire_owned().map_err(|_| {
            ApiError::rate_limited(
                format!(
                    "tenant `{}` already has {} requests running, its limit",
                    self.name, self.limits.max_concurrent_requests
                ),
                1,
            )
        })
    }

    /// Admit a read of the shared state that no request admission covers
    /// (`/v1/usage`, listing, reading and deleting plugins, reading and
    /// deleting stored responses, a continuation's history): with a shared
    /// state, [`STATE_READS`] at once per tenant and replica, or a 429, so
    /// that no tenant can keep the database busy for the others. Without
    /// one they are reads of memory, and always admitted.
    pub fn admit_state_read(&self) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if self.ledger.get().is_none() {
            return Ok(None);
        }
        self.state_reads
            .clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| {
                ApiError::rate_limited(
                    format!(
                        "tenant `{}` already has {STATE_READS} reads of usage, plugins or stored responses running",
                        self.name
                    ),
                    1,
                )
            })
    }

    /// Admit a plugin upload: one compile at a time per tenant (compiling
    /// takes a core for up to seconds and hundreds of MiB), or a 429.
    pub fn admit_compile(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.compiles.clone().try_acquire_owned().map_err(|_| {
            ApiError::rate_limited(
                format!(
                    "tenant `{}` is already uploading a plugin or an adapter; send the next when it is done",
                    self.name
                ),
                1,
            )
        })
    }

    /// Count tokens a request used.
    pub fn record_tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
        if let Some(ledger) = self.ledger.get() {
            ledger.spend(&self.name, prompt + completion);
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        expire(&mut w);
        w.spent.push_back((Instant::now(), prompt + completion));
        w.total += prompt + completion;
    }

    /// The limits of this tenant's plugins of `world`: the world's defaults,
    /// narrowed (or, for memory and deadline, set) by the tenant's.
    /// The longest step budget this tenant's requests may give a sampler.
    pub fn max_step_budget(&self) -> Duration {
        Duration::from_millis(self.limits.max_step_budget_ms.max(1))
    }

    pub fn plugin_limits(&self, world: World) -> Limits {
        let mut limits = Limits::for_world(world);
        if let Some(m) = self.limits.plugin_memory_mib {
            limits.memory_bytes = m * MIB;
        }
        if let Some(ms) = self.limits.call_deadline_ms
            && world != World::Sampler
        {
            limits.call_deadline = Duration::from_millis(ms);
        }
        if let Some(f) = self.limits.fuel
            && world == World::Reward
        {
            limits.fuel = Some(f);
        }
        limits
    }
}

const MINUTE: Duration = Duration::from_secs(60);

fn expire(w: &mut Window) {
    let now = Instant::now();
    while let Some(&(t, n)) = w.spent.front() {
        if now.duration_since(t) < MINUTE {
            break;
        }
        w.spent.pop_front();
        w.total -= n;
    }
}

/// Every tenant, found by API key.
pub struct Tenants {
    list: Vec<Arc<Tenant>>,
    by_hash: HashMap<String, Arc<Tenant>>,
    /// No tenants file: one tenant, no keys (served on loopback only).
    open: bool,
}

impl Tenants {
    /// One tenant, `default`, who needs no key.
    pub fn single() -> Self {
        let t = Arc::new(Tenant::new(
            "default".into(),
            Vec::new(),
            TenantLimits {
                max_concurrent_requests: 64,
                ..TenantLimits::default()
            },
            Grants::default(),
            vec!["*".into()],
            TOTAL_INSTANCES,
        ));
        Tenants {
            list: vec![t],
            by_hash: HashMap::new(),
            open: true,
        }
    }

    /// Read a tenants file; errors name the file and what was wrong.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let file: TenantsFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if file.tenants.is_empty() {
            anyhow::bail!("{}: no [[tenant]] entries", path.display());
        }
        let mut by_hash = HashMap::new();
        let mut list = Vec::new();
        let mut names = std::collections::HashSet::new();
        // An equal share of the instance slots, so that no tenant can take
        // them all.
        let share = (TOTAL_INSTANCES / file.tenants.len()).max(16);
        for t in file.tenants {
            if !names.insert(t.name.clone()) {
                anyhow::bail!("{}: tenant `{}` is listed twice", path.display(), t.name);
            }
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                anyhow::bail!(
                    "{}: tenant name `{}` must be letters, digits, `-` and `_`",
                    path.display(),
                    t.name
                );
            }
            for h in &t.api_keys {
                let ok = h
                    .strip_prefix("sha256:")
                    .is_some_and(|x| x.len() == 64 && x.chars().all(|c| c.is_ascii_hexdigit()));
                if !ok {
                    anyhow::bail!(
                        "{}: tenant `{}`: api key `{h}` is not `sha256:<64 hex digits>` (make one with `deepwasm hash-key`)",
                        path.display(),
                        t.name
                    );
                }
            }
            let grants = match t.grants.interfaces {
                Some(list) => Grants {
                    interfaces: list.into_iter().collect(),
                },
                None => Grants::default(),
            };
            let tenant = Arc::new(Tenant::new(
                t.name,
                t.api_keys.clone(),
                t.limits,
                grants,
                t.grants.tools,
                share,
            ));
            for h in &t.api_keys {
                if by_hash
                    .insert(h.to_ascii_lowercase(), tenant.clone())
                    .is_some()
                {
                    anyhow::bail!("{}: an api key is given to two tenants", path.display());
                }
            }
            list.push(tenant);
        }
        Ok(Tenants {
            list,
            by_hash,
            open: false,
        })
    }

    /// Count admissions and spends of every tenant in `ledger`.
    pub fn attach(&self, ledger: &Ledger) {
        for t in &self.list {
            let _ = t.ledger.set(ledger.clone());
        }
    }

    /// Every tenant's usage as this process counted it.
    pub fn usage_snapshot(&self) -> Vec<(String, UsageTotals)> {
        self.list
            .iter()
            .map(|t| (t.name.clone(), t.usage_totals()))
            .collect()
    }

    /// Take over what `old` knew of the same tenants: an unchanged tenant
    /// stays the same (its places among concurrent requests included), a
    /// changed one keeps its counters. Answers the names of the tenants
    /// that changed, came or went.
    fn carry_over(&mut self, old: &Tenants) -> Vec<String> {
        let by_name: HashMap<&str, &Arc<Tenant>> =
            old.list.iter().map(|t| (t.name.as_str(), t)).collect();
        // Freshly loaded: once the key map lets go, the list holds the only
        // reference to each tenant.
        self.by_hash.clear();
        let mut changed = Vec::new();
        let list = std::mem::take(&mut self.list);
        for t in list {
            let t = match by_name.get(t.name.as_str()) {
                Some(o) if o.fingerprint == t.fingerprint => Arc::clone(o),
                Some(o) => {
                    changed.push(t.name.clone());
                    match Arc::try_unwrap(t) {
                        Ok(fresh) => Arc::new(fresh.carrying(o)),
                        Err(shared) => shared,
                    }
                }
                None => {
                    changed.push(t.name.clone());
                    t
                }
            };
            self.list.push(t);
        }
        let names: std::collections::HashSet<&str> =
            self.list.iter().map(|t| t.name.as_str()).collect();
        changed.extend(
            old.list
                .iter()
                .filter(|t| !names.contains(t.name.as_str()))
                .map(|t| t.name.clone()),
        );
        self.by_hash = self
            .list
            .iter()
            .flat_map(|t| {
                t.key_hashes
                    .iter()
                    .map(|h| (h.to_ascii_lowercase(), t.clone()))
            })
            .collect();
        changed
    }

    /// Whether the server runs without keys (no tenants file).
    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn all(&self) -> &[Arc<Tenant>] {
        &self.list
    }

    /// The tenant of an `Authorization: Bearer KEY` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Tenant>, ApiError> {
        if self.open {
            return Ok(self.list[0].clone());
        }
        let key = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("no API key: send `Authorization: Bearer <key>`")
            })?;
        self.by_hash
            .get(&hash_key(key))
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("the API key is not known to this server"))
    }

    /// Whether `hash` is one of a tenant's key hashes (for tests).
    pub fn knows(&self, tenant: &str, hash: &str) -> bool {
        self.list
            .iter()
            .any(|t| t.name == tenant && t.key_hashes.iter().any(|h| h == hash))
    }
}

/// The tenants now in force: read from the tenants file at start, and
/// again on `SIGHUP` without a restart.
pub struct TenantsCell {
    current: RwLock<Arc<Tenants>>,
    path: Option<PathBuf>,
    ledger: OnceLock<Ledger>,
}

impl std::fmt::Debug for TenantsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantsCell")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TenantsCell {
    /// `tenants`, read from `path` (which a reload reads again).
    pub fn new(tenants: Tenants, path: Option<PathBuf>) -> TenantsCell {
        TenantsCell {
            current: RwLock::new(Arc::new(tenants)),
            path,
            ledger: OnceLock::new(),
        }
    }

    /// The tenants in force.
    pub fn current(&self) -> Arc<Tenants> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Count every tenant, now and after reloads, in `ledger`.
    pub fn attach(&self, ledger: Ledger) {
        self.current().attach(&ledger);
        let _ = self.ledger.set(ledger);
    }

    /// Read the tenants file again. Keys, limits and grants take effect for
    /// the requests that come after; requests running keep what admitted
    /// them. A bad file changes nothing. Answers the names of the tenants
    /// that changed, came or went.
    pub fn reload(&self) -> anyhow::Result<Vec<String>> {
        let Some(path) = &self.path else {
            anyhow::bail!(
                "the server was started without a tenants file; there is nothing to reload"
            );
        };
        let mut fresh = Tenants::load(path)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = fresh.carry_over(&current);
        if let Some(ledger) = self.ledger.get() {
            fresh.attach(ledger);
        }
        *current = Arc::new(fresh);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_tenants_file_loads_and_its_keys_authenticate() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tenants.toml");
        let tenants = Tenants::load(&path).unwrap();
        assert_eq!(tenants.all().len(), 2);
        let acme = tenants.authenticate(Some("Bearer acme-key")).unwrap();
        assert_eq!(acme.name, "acme");
        assert_eq!(acme.limits.max_concurrent_requests, 8);
        let globex = tenants.authenticate(Some("Bearer globex-key")).unwrap();
        assert_eq!(globex.name, "globex");
        assert!(tenants.authenticate(Some("Bearer nobody")).is_err());
        assert!(tenants.authenticate(None).is_err());
    }

    #[test]
    fn a_bad_tenants_file_names_the_file_and_the_field() {
        let dir = std::env::temp_dir().join(format!("deepwasm-tenants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tenants.toml");
        std::fs::write(
            &path,
            "[[tenant]]\nname = \"a\"\napi_keys = []\nlimitz = 3\n",
        )
        .unwrap();
        let err = Tenants::load(&path).err().unwrap().to_string();
        assert!(
            err.contains("tenants.toml") && err.contains("limitz"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
