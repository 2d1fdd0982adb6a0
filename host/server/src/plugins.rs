//! `/v1/plugins`: a tenant's own plugins. Uploads are validated (a
//! component of one deepwasm world, importing only what the tenant was
//! granted), compiled (in a worker process under the server's caps on
//! compile time and memory, when it has one), and stored content-addressed;
//! another tenant's plugin answers 404 as if it did not exist.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use deepwasm_plugins::LoadError;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::store::UploadError;
use crate::tenants::Tenant;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The plugin's name (how requests may name it).
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    name: String,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_param(
            "name",
            format!("a plugin name is 1 to 64 letters, digits, `-`, `_` or `.`; got `{name}`"),
        ))
    }
}

/// `POST /v1/plugins?name=NAME` with the component's bytes as the body.
pub async fn upload(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid_param(
            "name",
            format!("upload with `?name=NAME`: {}", e.body_text()),
        )
    })?;
    check_name(&q.name)?;
    let bytes = body.map_err(crate::api::body_error)?;
    let max = tenant.limits.max_plugin_bytes;
    if bytes.len() > max {
        return Err(ApiError::too_large(format!(
            "the component is {} bytes; this tenant's plugins may be at most {max}",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Err(ApiError::invalid(
            "the body is empty: send the component's bytes",
        ));
    }
    let permits = st.admit_upload(&tenant)?;
    let result = {
        let _permits = permits;
        st.store
            .upload(
                &tenant.name,
                &tenant.grants,
                &q.name,
                bytes.to_vec(),
                tenant.limits.max_plugins,
            )
            .await
    };
    match result {
        Ok((stored, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, axum::Json(stored.json())).into_response())
        }
        Err(UploadError::Load(
            e @ (LoadError::CompileTime { .. } | LoadError::CompileMemory { .. }),
        )) => {
            tracing::warn!("tenant `{}`: {e}", tenant.name);
            Err(ApiError::compile_limit(e.to_string()))
        }
        Err(UploadError::Load(e @ LoadError::CompileWorker { .. })) => {
            Err(ApiError::internal(e.to_string()))
        }
        Err(UploadError::Load(e)) => Err(ApiError::invalid(e.to_string())),
        Err(e @ UploadError::NameTaken { .. }) => {
            let mut err = ApiError::invalid_param("name", e.to_string());
            err.status = StatusCode::CONFLICT;
            Err(err)
        }
        Err(e @ UploadError::TooMany(_)) => Err(ApiError::forbidden(e.to_string())),
        Err(e @ UploadError::Io(_)) => Err(ApiError::internal(e.to_string())),
        Err(UploadError::State(e)) => Err(crate::tenants::state_error(e)),
    }
}

pub async fn list(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
) -> Result<Response, ApiError> {
    let _read = tenant.admit_state_read()?;
    let data: Vec<Value> = st
        .store
        .list(&tenant.name)
        .await
        .map_err(|e| crate::plugin_store_error("plugins", e))?;
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

fn not_found(id: &str) -> ApiError {
    let mut e = ApiError::not_found(format!("no plugin `{id}`"));
    e.param = Some("id".into());
    e
}

pub async fn get(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let _read = tenant.admit_state_read()?;
    let stored = st
        .stored_async(&tenant, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(stored.json()).into_response())
}

pub async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let _read = tenant.admit_state_read()?;
    let removed = st
        .store
        .delete(&tenant.name, &id)
        .await
        .map_err(|e| crate::plugin_store_error(&id, e))?
        .ok_or_else(|| not_found(&id))?;
    st.forget(&tenant.name, &removed.id);
    Ok(
        axum::Json(json!({"id": removed.id, "object": "plugin.deleted", "deleted": true}))
            .into_response(),
    )
}
