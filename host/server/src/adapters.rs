//! `/v1/adapters`: a tenant's own LoRA adapters, uploaded in PEFT's layout
//! or trained with `POST /v1/train/grpo`. A request uses one with
//! `model: "BASE:NAME"`; only its tenant lists, uses, downloads or deletes
//! it, and another tenant's answers 404 as if it did not exist.
//!
//! Adapters are served from memory, so a tenant keeps at most
//! [`MAX_TENANT_ADAPTERS`] and `adapter_bytes` of them (their parameters in
//! f32). They are kept under `<store>/.adapters/<tenant>/<name>/`, each
//! written whole beside its place and renamed into it, and read again at
//! start: they are local to a replica.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use axum::Extension;
use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use deepwasm_engine::Engine;
use deepwasm_model::lora::{CONFIG_FILE, LoraAdapter, LoraConfig, ServedAdapter, WEIGHTS_FILE};

use crate::AppState;
use crate::error::ApiError;
use crate::tenants::Tenant;

/// Adapters one tenant may keep.
pub const MAX_TENANT_ADAPTERS: usize = 16;

/// The most an adapter's config may take.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// An adapter a tenant keeps.
pub(crate) struct TenantAdapter {
    pub(crate) served: Arc<ServedAdapter>,
    config: LoraConfig,
    parameters: usize,
    created_at: u64,
}

impl TenantAdapter {
    fn new(served: Arc<ServedAdapter>, adapter: &LoraAdapter, dir: &Path) -> TenantAdapter {
        let parameters = adapter
            .pairs
            .values()
            .map(|p| p.a.elem_count() + p.b.elem_count())
            .sum();
        let created_at = std::fs::metadata(dir.join(WEIGHTS_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        TenantAdapter {
            served,
            config: adapter.config.clone(),
            parameters,
            created_at,
        }
    }

    /// What it counts in its tenant's `adapter_bytes`.
    fn bytes(&self) -> u64 {
        self.parameters as u64 * 4
    }

    fn json(&self, name: &str, base: &str) -> Adapter {
        Adapter {
            id: name.to_owned(),
            object: "adapter".into(),
            model: format!("{base}:{name}"),
            r: self.config.r,
            lora_alpha: self.config.lora_alpha,
            target_modules: self.config.target_modules.clone(),
            parameters: self.parameters,
            bytes: self.bytes(),
            created_at: self.created_at,
        }
    }
}

/// One of the tenant's adapters, as the API describes it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Adapter {
    /// Its name.
    pub id: String,
    /// Always `adapter`.
    pub object: String,
    /// What a request names to use it: `BASE:NAME`.
    pub model: String,
    /// Its rank.
    pub r: usize,
    pub lora_alpha: f64,
    /// The projections it changes.
    pub target_modules: Vec<String>,
    pub parameters: usize,
    /// What it counts in the tenant's `adapter_bytes`: its parameters in
    /// f32.
    pub bytes: u64,
    /// Unix seconds of its upload, or of the end of its training.
    pub created_at: u64,
}

/// The tenant's adapters.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AdapterList {
    /// Always `list`.
    pub object: String,
    /// By name.
    pub data: Vec<Adapter>,
}

/// What `DELETE /v1/adapters/{name}` answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AdapterDeleted {
    pub id: String,
    /// Always `adapter.deleted`.
    pub object: String,
    pub deleted: bool,
}

/// Tenants' adapters, in memory and on disk.
pub(crate) struct AdapterStore {
    dir: PathBuf,
    adapters: Mutex<HashMap<(String, String), TenantAdapter>>,
    /// Held while an adapter is put in place or removed, so that the limits
    /// checked are the ones in force when it lands.
    writes: Mutex<()>,
    staged: AtomicU64,
}

impl AdapterStore {
    /// Read the adapters kept in `dir` (`<tenant>/<name>/`); one that no
    /// longer fits the model is skipped with a warning. A replacement or
    /// a deletion that a kill cut short is finished or undone first.
    pub(crate) fn open(engine: &Engine, dir: &Path) -> AdapterStore {
        let mut adapters = HashMap::new();
        for tenant in read_dirs(dir, false) {
            let tdir = dir.join(&tenant);
            for entry in read_dirs(&tdir, true) {
                let path = tdir.join(&entry);
                if let Some(name) = entry.strip_prefix('.').and_then(|e| e.strip_suffix(".old"))
                    && valid_name(name)
                    && !tdir.join(name).exists()
                {
                    // Killed between moving the old adapter aside and the new
                    // one in: the old one stands.
                    let _ = std::fs::rename(&path, tdir.join(name));
                } else if entry.starts_with('.') {
                    // Staged uploads, aside-copies and deletions.
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
            for name in read_dirs(&tdir, false) {
                let path = tdir.join(&name);
                let loaded = LoraAdapter::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|a| {
                        let s = engine
                            .model
                            .prepare_adapter(&name, &a)
                            .map_err(|e| e.to_string())?;
                        Ok(TenantAdapter::new(s, &a, &path))
                    });
                match loaded {
                    Ok(a) => {
                        adapters.insert((tenant.clone(), name), a);
                    }
                    Err(e) => tracing::warn!("skipping the adapter {}: {e}", path.display()),
                }
            }
        }
        AdapterStore {
            dir: dir.to_owned(),
            adapters: Mutex::new(adapters),
            writes: Mutex::new(()),
            staged: AtomicU64::new(0),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<(String, String), TenantAdapter>> {
        self.adapters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `tenant`'s adapter `name`.
    pub(crate) fn get(&self, tenant: &str, name: &str) -> Option<Arc<ServedAdapter>> {
        self.map()
            .get(&(tenant.to_owned(), name.to_owned()))
            .map(|a| a.served.clone())
    }

    /// The names of `tenant`'s adapters, sorted.
    pub(crate) fn names(&self, tenant: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .map()
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, n)| n.clone())
            .collect();
        names.sort();
        names
    }

    fn describe(&self, tenant: &str, base: &str) -> Vec<Adapter> {
        let map = self.map();
        let mut mine: BTreeMap<&str, &TenantAdapter> = BTreeMap::new();
        for ((t, n), a) in map.iter() {
            if t == tenant {
                mine.insert(n, a);
            }
        }
        mine.into_iter().map(|(n, a)| a.json(n, base)).collect()
    }

    /// Whether `tenant` may keep one more adapter of `bytes` under `name`
    /// (replacing the one it has under that name, if any).
    pub(crate) fn check_room(
        &self,
        tenant: &Tenant,
        name: &str,
        bytes: u64,
    ) -> Result<(), ApiError> {
        let map = self.map();
        let others = map
            .iter()
            .filter(|((t, n), _)| *t == tenant.name && n != name);
        let (count, used) = others.fold((0usize, 0u64), |(c, b), (_, a)| (c + 1, b + a.bytes()));
        if count >= MAX_TENANT_ADAPTERS {
            return Err(ApiError::forbidden(format!(
                "the tenant keeps {count} adapters, the most it may; delete one, or replace one under its name"
            )));
        }
        let limit = tenant.limits.adapter_bytes;
        if used + bytes > limit {
            return Err(ApiError::forbidden(format!(
                "the adapter takes {bytes} bytes and the tenant's other adapters {used}: more than its `adapter_bytes` of {limit}"
            )));
        }
        Ok(())
    }

    /// A new directory to write an adapter of `tenant` into before
    /// [`AdapterStore::install`] puts it in place.
    pub(crate) fn stage(&self, tenant: &str, name: &str) -> std::io::Result<PathBuf> {
        let n = self.staged.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .dir
            .join(tenant)
            .join(format!(".{name}.staged-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Put the adapter written in `staged` in place as `tenant`'s `name`,
    /// within the tenant's limits, replacing the one of that name. Returns
    /// whether it is new, and how the API describes it (as a model of
    /// `base`). `staged` is removed whatever happens.
    pub(crate) fn install(
        &self,
        tenant: &Tenant,
        name: &str,
        staged: &Path,
        adapter: &LoraAdapter,
        served: Arc<ServedAdapter>,
        base: &str,
    ) -> Result<(bool, Adapter), ApiError> {
        let entry = TenantAdapter::new(served, adapter, staged);
        let described = entry.json(name, base);
        let result = self.install_inner(tenant, name, staged, entry);
        let _ = std::fs::remove_dir_all(staged);
        Ok((result?, described))
    }

    fn install_inner(
        &self,
        tenant: &Tenant,
        name: &str,
        staged: &Path,
        entry: TenantAdapter,
    ) -> Result<bool, ApiError> {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        self.check_room(tenant, name, entry.bytes())?;
        let tdir = self.dir.join(&tenant.name);
        let dir = tdir.join(name);
        let old = tdir.join(format!(".{name}.old"));
        let fail = |e: std::io::Error| {
            tracing::error!("cannot store the adapter {}: {e}", dir.display());
            ApiError::internal("cannot store the adapter")
        };
        let _ = std::fs::remove_dir_all(&old);
        let replacing = dir.exists();
        if replacing {
            std::fs::rename(&dir, &old).map_err(fail)?;
        }
        if let Err(e) = std::fs::rename(staged, &dir) {
            if replacing {
                let _ = std::fs::rename(&old, &dir);
            }
            return Err(fail(e));
        }
        let _ = std::fs::remove_dir_all(&old);
        let created = self
            .map()
            .insert((tenant.name.clone(), name.to_owned()), entry)
            .is_none();
        Ok(created)
    }

    /// Remove `tenant`'s adapter `name`; `false` when it has none. Requests
    /// already using it finish with it.
    fn delete(&self, tenant: &str, name: &str) -> Result<bool, ApiError> {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_owned(), name.to_owned());
        if !self.map().contains_key(&key) {
            return Ok(false);
        }
        let tdir = self.dir.join(tenant);
        let gone = tdir.join(format!(".{name}.deleted"));
        let _ = std::fs::remove_dir_all(&gone);
        std::fs::rename(tdir.join(name), &gone).map_err(|e| {
            tracing::error!("cannot delete the adapter {tenant}/{name}: {e}");
            ApiError::internal("cannot delete the adapter")
        })?;
        self.map().remove(&key);
        let _ = std::fs::remove_dir_all(&gone);
        Ok(true)
    }

    fn path(&self, tenant: &str, name: &str) -> PathBuf {
        self.dir.join(tenant).join(name)
    }
}

/// Names of the directories in `dir` (none when it cannot be read); with
/// `hidden`, those whose names start with `.`, otherwise the valid names.
fn read_dirs(dir: &Path, hidden: bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            if hidden {
                n.starts_with('.')
            } else {
                valid_name(n)
            }
        })
        .collect()
}

/// An adapter's name: 1 to 64 letters, digits, `-`, `_` or `.`, not
/// starting with `.`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Check a name a tenant gives a new adapter.
pub(crate) fn check_new_name(st: &AppState, name: &str) -> Result<(), ApiError> {
    if !valid_name(name) {
        return Err(ApiError::invalid_param(
            "name",
            format!(
                "an adapter name is 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`; got `{name}`"
            ),
        ));
    }
    if st.adapters.contains_key(name) {
        return Err(ApiError::invalid_param(
            "name",
            format!("`{name}` is an adapter the server serves to everyone; choose another name"),
        ));
    }
    Ok(())
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdapterUploadQuery {
    /// The adapter's name: requests use it as `model: "BASE:NAME"`.
    #[param(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")]
    name: String,
}

/// The multipart body of an upload: PEFT's two files.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "documentation only: the handler reads the parts")]
pub struct AdapterUpload {
    /// `adapter_config.json`.
    #[schema(value_type = String, format = Binary)]
    config: Vec<u8>,
    /// `adapter_model.safetensors`.
    #[schema(value_type = String, format = Binary)]
    weights: Vec<u8>,
}

fn multipart_error(e: MultipartError) -> ApiError {
    let mut err = ApiError::invalid(format!(
        "the multipart body cannot be read: {}",
        e.body_text()
    ));
    err.status = e.status();
    err
}

/// `POST /v1/adapters?name=NAME`, multipart: `config` (adapter_config.json)
/// and `weights` (adapter_model.safetensors).
pub async fn upload(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    query: Result<Query<AdapterUploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid_param(
            "name",
            format!("upload with `?name=NAME`: {}", e.body_text()),
        )
    })?;
    check_new_name(&st, &q.name)?;
    if st.engine.model.as_llama().is_none() || st.scheduler.is_upstream() {
        return Err(ApiError::invalid(
            "this server serves no adapters: they apply to a Llama-family model served here (not on an upstream)",
        ));
    }
    let mut body = body.map_err(|e| {
        ApiError::invalid(format!(
            "send the adapter as multipart/form-data with parts `config` ({CONFIG_FILE}) and `weights` ({WEIGHTS_FILE}): {}",
            e.body_text()
        ))
    })?;
    // One upload at a time per tenant, and a few in all (the server's
    // compile places): each holds its files and their parsed weights.
    let _permits = st.admit_upload(&tenant)?;
    let limit = tenant.limits.adapter_bytes;
    let (mut config, mut weights) = (None, None);
    while let Some(mut field) = body.next_field().await.map_err(multipart_error)? {
        let part = field.name().unwrap_or_default().to_owned();
        let (slot, most) = match part.as_str() {
            "config" | CONFIG_FILE => (&mut config, MAX_CONFIG_BYTES.min(limit)),
            "weights" | WEIGHTS_FILE => (&mut weights, limit),
            other => {
                return Err(ApiError::invalid_param(
                    "body",
                    format!(
                        "unknown part `{other}`: an adapter is the parts `config` ({CONFIG_FILE}) and `weights` ({WEIGHTS_FILE})"
                    ),
                ));
            }
        };
        if slot.is_some() {
            return Err(ApiError::invalid_param(
                "body",
                format!("the part `{part}` comes twice"),
            ));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > most {
                return Err(ApiError::too_large(if most < limit {
                    format!("the part `{part}` is larger than {most} bytes")
                } else {
                    format!(
                        "the part `{part}` is larger than this tenant's `adapter_bytes` of {limit}"
                    )
                }));
            }
        }
        *slot = Some(bytes);
    }
    let missing = |what: &str, file: &str| {
        ApiError::invalid_param("body", format!("the part `{what}` ({file}) is missing"))
    };
    let config = config.ok_or_else(|| missing("config", CONFIG_FILE))?;
    let weights = weights.ok_or_else(|| missing("weights", WEIGHTS_FILE))?;
    let name = q.name;
    let (created, described) = {
        let (st, tenant, name) = (st.clone(), tenant.clone(), name.clone());
        crate::chat::blocking(move || {
            let internal = |e: std::io::Error| {
                tracing::error!("cannot stage an adapter of `{}`: {e}", tenant.name);
                ApiError::internal("cannot store the adapter")
            };
            let staged = st
                .tenant_adapters
                .stage(&tenant.name, &name)
                .map_err(internal)?;
            let checked = (|| {
                std::fs::write(staged.join(CONFIG_FILE), &config).map_err(internal)?;
                std::fs::write(staged.join(WEIGHTS_FILE), &weights).map_err(internal)?;
                drop((config, weights));
                let adapter = LoraAdapter::read(&staged).map_err(|e| {
                    // The staging path means nothing to the client: name the
                    // file it sent.
                    let text = e.to_string();
                    let text = text
                        .strip_prefix(&format!("{}/", staged.display()))
                        .unwrap_or(&text);
                    ApiError::invalid_param("body", format!("not a usable adapter: {text}"))
                })?;
                let served = st
                    .engine
                    .model
                    .prepare_adapter(&name, &adapter)
                    .map_err(|e| ApiError::invalid_param("body", e.to_string()))?;
                Ok((adapter, served))
            })();
            let (adapter, served) = match checked {
                Ok(v) => v,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staged);
                    return Err(e);
                }
            };
            st.tenant_adapters
                .install(&tenant, &name, &staged, &adapter, served, st.model_id())
        })
        .await?
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(described)).into_response())
}

fn not_found(name: &str) -> ApiError {
    let mut e = ApiError::not_found(format!("no adapter `{name}`"));
    e.param = Some("name".into());
    e
}

/// `GET /v1/adapters`.
pub async fn list(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
) -> axum::Json<AdapterList> {
    axum::Json(AdapterList {
        object: "list".into(),
        data: st.tenant_adapters.describe(&tenant.name, st.model_id()),
    })
}

/// `GET /v1/adapters/{name}`.
pub async fn get(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    UrlPath(name): UrlPath<String>,
) -> Result<axum::Json<Adapter>, ApiError> {
    st.tenant_adapters
        .describe(&tenant.name, st.model_id())
        .into_iter()
        .find(|a| a.id == name)
        .map(axum::Json)
        .ok_or_else(|| not_found(&name))
}

/// `GET /v1/adapters/{name}/files/{file}`: one of its two PEFT files.
pub async fn download(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    UrlPath((name, file)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    if st.tenant_adapters.get(&tenant.name, &name).is_none() {
        return Err(not_found(&name));
    }
    let content_type = match file.as_str() {
        CONFIG_FILE => "application/json",
        WEIGHTS_FILE => "application/octet-stream",
        _ => {
            let mut e = ApiError::not_found(format!(
                "an adapter has the files {CONFIG_FILE} and {WEIGHTS_FILE}, not `{file}`"
            ));
            e.param = Some("file".into());
            return Err(e);
        }
    };
    let path = st.tenant_adapters.path(&tenant.name, &name).join(&file);
    // Replaced or deleted since it was looked up: as if it never was. The
    // file is streamed, so a download holds a chunk, not the adapter.
    let opened = tokio::fs::File::open(&path).await;
    let (file_handle, len) = match opened {
        Ok(f) => {
            let len = f.metadata().await.map(|m| m.len()).ok();
            (f, len)
        }
        Err(_) => return Err(not_found(&name)),
    };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file}\""),
        );
    if let Some(len) = len {
        response = response.header(header::CONTENT_LENGTH, len);
    }
    response
        .body(Body::from_stream(tokio_util::io::ReaderStream::new(
            file_handle,
        )))
        .map_err(|e| ApiError::internal(format!("cannot build the response: {e}")))
}

/// `DELETE /v1/adapters/{name}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    UrlPath(name): UrlPath<String>,
) -> Result<axum::Json<AdapterDeleted>, ApiError> {
    let deleted = {
        let (st, tenant, name) = (st.clone(), tenant.clone(), name.clone());
        crate::chat::blocking(move || st.tenant_adapters.delete(&tenant.name, &name)).await?
    };
    if !deleted {
        return Err(not_found(&name));
    }
    Ok(axum::Json(AdapterDeleted {
        id: name,
        object: "adapter.deleted".into(),
        deleted: true,
    }))
}
