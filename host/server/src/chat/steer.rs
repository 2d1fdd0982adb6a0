//! Steering: the sampler every sequence of a request gets. A tenant's
//! sampler plugin (`sampler`), the built-in JSON sampler for a
//! `response_format`, or the tool-call grammar for a `tool_choice` that
//! requires a call; the built-in sampler otherwise. Each is checked when
//! the request is read, so a request that queues can always build its
//! samplers.

use std::sync::Arc;
use std::time::Duration;

use deepwasm_engine::agent::CallSampler;
use deepwasm_engine::{BuiltinSampler, DEFAULT_STEP_BUDGET, MissPolicy, PluginSampler, Sampler};
use deepwasm_model::{ToolCallFormat, ToolSpec};
use deepwasm_plugins::{SamplerPlugin, World};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ResponseFormat, SamplerRef};
use crate::error::ApiError;
use crate::tenants::Tenant;

/// Steps a sampler plugin under `on_miss: fallback` may miss before its
/// request fails.
const FALLBACK_MAX_MISSES: u32 = 3;

/// The step budget of the built-in JSON sampler: a grammar cannot skip a
/// step, so it fails rather than falls back, and gets room to answer.
const JSON_STEP_BUDGET: Duration = Duration::from_millis(1000);

/// Which sampler every sequence of a request gets.
#[derive(Clone)]
pub(super) enum Steering {
    Builtin,
    Plugin {
        plugin: SamplerPlugin,
        config: String,
        budget: Duration,
        policy: MissPolicy,
    },
    /// `tool_choice` `required` or named: exactly one well-formed call,
    /// its JSON written by the built-in JSON-schema sampler.
    ToolCall {
        plugin: SamplerPlugin,
        format: ToolCallFormat,
        tools: Vec<ToolSpec>,
        named: Option<String>,
        tokenizer: Arc<deepwasm_model::Tokenizer>,
    },
}

impl Steering {
    /// The steering of a request: its `sampler`, or else what its
    /// `response_format` or `tool_choice` asked for (`constraint`); a
    /// request takes one of them at most.
    pub(super) fn of_request(
        st: &AppState,
        tenant: &Tenant,
        sampler: Option<&SamplerRef>,
        constraint: Option<Steering>,
    ) -> Result<Steering, ApiError> {
        if st.scheduler.is_upstream() {
            let refused = |param: &str, what: &str| {
                let mut e = ApiError::invalid_param(
                    param,
                    format!(
                        "{what} chooses each token from the model's logits, which the upstream \
                         engine this server generates on does not expose; a deepwasm server \
                         with a local model takes it"
                    ),
                );
                e.code = Some("unsupported_over_upstream");
                Err(e)
            };
            match (sampler, &constraint) {
                (Some(_), _) => return refused("sampler", "a sampler plugin"),
                (None, Some(Steering::ToolCall { .. })) => {
                    return refused(
                        "tool_choice",
                        "a required or named `tool_choice` (its call is written under a grammar)",
                    );
                }
                (None, Some(_)) => {
                    return refused(
                        "response_format",
                        "a JSON `response_format` (its output is written under a grammar)",
                    );
                }
                (None, None) => {}
            }
        }
        match (sampler, constraint) {
            (Some(_), Some(_)) => Err(ApiError::invalid_param(
                "sampler",
                "a request takes one steering sampler: `sampler` or a JSON `response_format`, not both",
            )),
            (Some(r), None) => plugin_steering(st, tenant, r),
            (None, Some(c)) => Ok(c),
            (None, None) => Ok(Steering::Builtin),
        }
    }

    /// A new sampler for one sequence.
    pub(super) fn sampler(&self) -> Box<dyn Sampler> {
        match self {
            Steering::Builtin => Box::new(BuiltinSampler),
            Steering::Plugin {
                plugin,
                config,
                budget,
                policy,
            } => Box::new(PluginSampler::new(plugin.clone(), config, *budget, *policy)),
            Steering::ToolCall {
                plugin,
                format,
                tools,
                named,
                tokenizer,
            } => match CallSampler::new(
                tokenizer.clone(),
                *format,
                tools.clone(),
                named.as_deref(),
                plugin.clone(),
            ) {
                Ok(s) => Box::new(s),
                // Checked when the request was read (`tool_call_steering`).
                Err(_) => Box::new(BuiltinSampler),
            },
        }
    }

    /// Pay a plugin's setup (and find its failures) before the request
    /// queues, off the async executor and off the model's thread.
    pub(super) async fn warm_up(&self) -> Result<(), ApiError> {
        let (Steering::Plugin { plugin, .. } | Steering::ToolCall { plugin, .. }) = self else {
            return Ok(());
        };
        if plugin.idle_instances() > 0 {
            return Ok(());
        }
        let p = plugin.clone();
        tokio::task::spawn_blocking(move || p.warm_up())
            .await
            .map_err(|e| ApiError::internal(format!("sampler setup stopped: {e}")))?
            .map_err(|e| {
                ApiError::plugin(format!(
                    "sampler plugin `{}` failed its setup: {e}",
                    plugin.plugin().name()
                ))
            })
    }
}

/// The sampler a request names, checked against the tenant's plugins.
fn plugin_steering(st: &AppState, tenant: &Tenant, s: &SamplerRef) -> Result<Steering, ApiError> {
    let stored = st
        .stored(tenant, &s.plugin)?
        .ok_or_else(|| ApiError::plugin_not_found("sampler.plugin", &s.plugin))?;
    if stored.record.world != World::Sampler {
        return Err(ApiError::invalid_param(
            "sampler.plugin",
            format!(
                "`{}` is a {} plugin, not a sampler",
                s.plugin, stored.record.world
            ),
        ));
    }
    let budget_ms = s
        .step_budget_ms
        .unwrap_or(DEFAULT_STEP_BUDGET.as_millis() as u64);
    let max_ms = tenant.limits.max_step_budget_ms;
    if !(1..=max_ms).contains(&budget_ms) {
        return Err(ApiError::invalid_param(
            "sampler.step_budget_ms",
            format!("must be in 1..={max_ms} (this tenant's limit), got {budget_ms}"),
        ));
    }
    let policy = match s.on_miss.as_deref() {
        None | Some("wait") => MissPolicy::Wait,
        Some("fail") => MissPolicy::Fail,
        Some("fallback") => MissPolicy::Fallback {
            max_misses: FALLBACK_MAX_MISSES,
        },
        Some(other) => {
            return Err(ApiError::invalid_param(
                "sampler.on_miss",
                format!("must be `wait`, `fail` or `fallback`, got `{other}`"),
            ));
        }
    };
    let budget = Duration::from_millis(budget_ms);
    let plugin = st.sampler(tenant, Some(&stored))?;
    // A plugin that keeps running into its limits is refused before its
    // request costs the batch anything.
    if let Some(left) = plugin.throttled() {
        return Err(ApiError::rate_limited(
            format!(
                "sampler `{}` hit its limits call after call; it takes no new request for {} ms",
                s.plugin,
                left.as_millis()
            ),
            left.as_secs() + 1,
        ));
    }
    Ok(Steering::Plugin {
        plugin,
        config: config_text(s.config.as_ref()),
        budget,
        policy,
    })
}

/// A plugin's `config` as the text its guest reads: JSON, `{}` when none,
/// a string as it is.
pub(super) fn config_text(config: Option<&Value>) -> String {
    match config {
        None | Some(Value::Null) => "{}".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// A JSON `response_format` as OpenAI's object, checked and normalised
/// (a `json_schema` without a schema allows any JSON); `None` for text.
pub(super) fn structured(f: &ResponseFormat) -> Result<Option<Value>, ApiError> {
    match f.kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "json_object"}))),
        "json_schema" => {
            let js = f.json_schema.as_ref().ok_or_else(|| {
                ApiError::invalid_param(
                    "response_format.json_schema",
                    "`json_schema` is required with type `json_schema`",
                )
            })?;
            Ok(Some(json!({
                "type": "json_schema",
                "json_schema": {
                    "name": js.name,
                    "schema": js.schema.clone().unwrap_or(json!({})),
                    "strict": js.strict,
                },
            })))
        }
        other => Err(ApiError::invalid_param(
            "response_format.type",
            format!("must be `text`, `json_object` or `json_schema`, got `{other}`"),
        )),
    }
}

/// The built-in JSON sampler for a `response_format`; `None` for text.
pub(super) fn format_steering(
    st: &AppState,
    tenant: &Tenant,
    f: &ResponseFormat,
) -> Result<Option<Steering>, ApiError> {
    let Some(format) = structured(f)? else {
        return Ok(None);
    };
    let config = match format["type"].as_str() {
        Some("json_object") => json!({"json_object": true}),
        _ => json!({"schema": format["json_schema"]["schema"]}),
    };
    Ok(Some(Steering::Plugin {
        plugin: st.sampler(tenant, None)?,
        config: config.to_string(),
        budget: JSON_STEP_BUDGET,
        policy: MissPolicy::Fail,
    }))
}

/// The steering of `tool_choice: "required"` or a named function: one
/// constrained call. `None` for `auto`, `none` or no choice.
pub(super) fn tool_call_steering(
    st: &AppState,
    tenant: &Tenant,
    choice: Option<&Value>,
    tools: &[ToolSpec],
) -> Result<Option<Steering>, ApiError> {
    let named = match choice {
        Some(Value::String(s)) if s == "required" => None,
        Some(Value::Object(o)) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(name.to_owned()),
            None => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "a named tool choice needs `function.name`",
                ));
            }
        },
        _ => return Ok(None),
    };
    let format = st.engine.tool_format;
    format
        .call_constraint(tools, named.as_deref())
        .map_err(|e| ApiError::invalid_param("tool_choice", e.to_string()))?;
    let plugin = st.sampler(tenant, None)?;
    Ok(Some(Steering::ToolCall {
        plugin,
        format,
        tools: tools.to_vec(),
        named,
        tokenizer: st.engine.tokenizer.clone(),
    }))
}
