//! `POST /v1/agents/{plugin}/runs`: a tenant's agent plugin runs a task over
//! the served model and the tenant's granted tool plugins, its events
//! streamed as SSE while it runs (or one JSON answer with `stream: false`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deepwasm_engine::Generator;
use deepwasm_engine::agent::{
    AgentBudgets, AgentEvent, AgentHost, AgentRequest, EventSink, run_agent,
};
use deepwasm_plugins::{AgentPlugin, HostInterface, KvAccess, Sandbox, ToolPlugin, World};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::api::ApiJson;
use crate::error::ApiError;
use crate::tenants::Tenant;

/// The body of a run request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRunRequest {
    /// What the agent is to do.
    #[schema(min_length = 1)]
    pub task: String,
    /// The agent's config (any JSON; the agent reads it).
    #[serde(default)]
    pub config: Option<Value>,
    /// The tool plugins (by name) the run may use; all the tenant's granted
    /// tool plugins when absent.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Step, tool-call, token and time budgets (defaults for those unset).
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::shapes::AgentBudgets>)]
    pub budgets: Option<AgentBudgets>,
    /// SSE events while it runs (default), or one JSON answer at the end.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub stream: bool,
}

fn yes() -> bool {
    true
}

/// Whether `tenant` may give its agents the tool plugin `name`.
fn granted(tenant: &Tenant, name: &str) -> bool {
    tenant.tools.iter().any(|t| t == "*" || t == name)
}

pub async fn run(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(plugin): Path<String>,
    ApiJson(req): ApiJson<AgentRunRequest>,
) -> Result<Response, ApiError> {
    let stored = st
        .stored_async(&tenant, &plugin)
        .await?
        .ok_or_else(|| ApiError::plugin_not_found("plugin", &plugin))?;
    if stored.plugin.world() != World::Agent {
        return Err(ApiError::invalid_param(
            "plugin",
            format!(
                "`{plugin}` is a {} plugin, not an agent",
                stored.plugin.world()
            ),
        ));
    }
    if req.task.trim().is_empty() {
        return Err(ApiError::invalid_param("task", "the task is empty"));
    }
    let sandbox =
        |world: World| Sandbox::new(tenant.plugin_limits(world)).with_meter(tenant.meter.clone());
    let agent = AgentPlugin::new(stored.plugin.clone(), sandbox(World::Agent))
        .map_err(|e| ApiError::invalid_param("plugin", e.to_string()))?;
    let names: Vec<String> = match &req.tools {
        Some(names) => names.clone(),
        None => st
            .store
            .list(&tenant.name)
            .await
            .map_err(|e| crate::plugin_store_error("tools", e))?
            .into_iter()
            .filter(|s| s["world"] == "tool")
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .filter(|name| granted(&tenant, name))
            .collect(),
    };
    let mut tools = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let param = format!("tools[{i}]");
        let stored = st
            .stored_async(&tenant, name)
            .await?
            .ok_or_else(|| ApiError::plugin_not_found(&param, name))?;
        if stored.plugin.world() != World::Tool {
            return Err(ApiError::invalid_param(
                &param,
                format!("`{name}` is not a tool plugin"),
            ));
        }
        if !granted(&tenant, &stored.record.name) {
            return Err(ApiError::forbidden(format!(
                "`{param}`: the tool `{name}` is not granted to this tenant's agents"
            )));
        }
        tools.push(
            ToolPlugin::new(stored.plugin.clone(), sandbox(World::Tool))
                .map_err(|e| ApiError::invalid_param(&param, e.to_string()))?,
        );
    }
    let kv: Option<Arc<dyn KvAccess>> = tenant
        .grants
        .allows(HostInterface::Kv)
        .then(|| tenant.kv.clone() as Arc<dyn KvAccess>);
    let call_sampler = st.sampler(&tenant, None)?;
    let generator: Arc<dyn Generator> = Arc::new(st.scheduler.clone());
    let host = AgentHost::new(generator).with_call_sampler(call_sampler);
    let stop = Arc::new(AtomicBool::new(false));
    let request = AgentRequest {
        task: req.task,
        config: req
            .config
            .map_or_else(|| "{}".to_owned(), |c| c.to_string()),
        tools,
        kv,
        budgets: req.budgets.unwrap_or_default(),
        stop: stop.clone(),
    };
    let admission = tenant.admit().await?;
    let (tx, rx) = mpsc::unbounded_channel::<AgentEvent>();
    let sink_stop = stop.clone();
    let on_event: EventSink = Arc::new(move |e: &AgentEvent| {
        if tx.send(e.clone()).is_err() {
            // The client went away: end the run.
            sink_stop.store(true, Ordering::Relaxed);
        }
    });
    let run_tenant = tenant.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _admission = admission;
        let run = run_agent(&host, &agent, request, on_event);
        run_tenant.record_tokens(run.stats.prompt_tokens, run.stats.completion_tokens);
        run
    });
    if req.stream {
        let stream =
            futures_util::stream::unfold((rx, StopOnDrop(stop)), |(mut rx, guard)| async move {
                let event = rx.recv().await?;
                let data = serde_json::to_string(&event).unwrap_or_else(|e| {
                    json!({"type": "error", "message": e.to_string()}).to_string()
                });
                Some((
                    Ok::<_, Infallible>(SseEvent::default().data(data)),
                    (rx, guard),
                ))
            });
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let _guard = StopOnDrop(stop);
    let run = job
        .await
        .map_err(|e| ApiError::internal(format!("the agent run stopped: {e}")))?;
    let (answer, error) = match &run.outcome {
        Ok(a) => (json!(a), Value::Null),
        Err(f) => (Value::Null, json!({"message": f.to_string(), "detail": f})),
    };
    Ok(axum::Json(json!({
        "object": "agent.run",
        "agent": stored.record.name,
        "answer": answer,
        "error": error,
        "stats": run.stats,
        "transcript": run.transcript,
    }))
    .into_response())
}

/// Stops the run when the response (or its stream) is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
