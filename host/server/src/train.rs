//! `POST /v1/train/grpo`: a tenant trains a LoRA adapter of the model with
//! GRPO against its own reward plugins, and then generates with it as
//! `model: "BASE:NAME"`.
//!
//! A job's rollouts run in the shared batch like any request's (its
//! sequences take their places beside other tenants'), scored by the
//! tenant's pooled, metered reward instances. Its updates (the backward
//! passes) run on one thread of its own at the lowest scheduling priority,
//! so serving keeps the machine's other cores and wins the one the job is
//! on whenever it wants it. One job runs at a time on a server. Each step
//! is admitted like a request of its tenant (one of its concurrent places
//! while it runs) and its tokens count against the tenant's quota: a
//! tenant past its tokens per minute has its job wait, not its
//! neighbours. A client that goes away stops the job at the end of its
//! step.
//!
//! The dense copy of the weights a job trains against is made on the
//! first job and kept (the model's parameters in f32). The adapter lands
//! in the tenant's adapters ([`crate::adapters`]), within its limits.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use deepwasm_engine::Engine;
use deepwasm_engine::rollout::{self, Rollout, RolloutOptions, RolloutPrompt};
use deepwasm_engine::sampling::SamplingParams;
use deepwasm_engine::train::{step_prompts, step_report, step_seed};
use deepwasm_model::lora::{LoraConfig, MODULES};
use deepwasm_model::train::{AdamW, GrpoParams, LoraVars, TrainLlama};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::AppState;
use crate::api::{ApiJson, TrainRequest};
use crate::error::ApiError;
use crate::tenants::Tenant;

/// Completions one step may sample.
const MAX_STEP_COMPLETIONS: usize = 256;

/// Jobs, and the dense weights they train against.
pub(crate) struct Training {
    jobs: Arc<tokio::sync::Semaphore>,
    model: Mutex<Option<Arc<TrainLlama>>>,
}

impl Training {
    pub(crate) fn new() -> Training {
        Training {
            jobs: Arc::new(tokio::sync::Semaphore::new(1)),
            model: Mutex::new(None),
        }
    }

    /// The dense weights, made on first use.
    fn model(&self, engine: &Engine) -> Result<Arc<TrainLlama>, String> {
        let mut slot = self.model.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = &*slot {
            return Ok(m.clone());
        }
        let llama = engine
            .model
            .as_llama()
            .ok_or("training needs a Llama-family model")?;
        let m = Arc::new(
            llama
                .trainable(candle_core::DType::F32)
                .map_err(|e| format!("cannot expand the weights: {e}"))?,
        );
        *slot = Some(m.clone());
        Ok(m)
    }
}

/// A job's settings, checked.
struct Job {
    name: String,
    prompts: Vec<RolloutPrompt>,
    steps: u64,
    group_size: usize,
    prompts_per_step: usize,
    lora: LoraConfig,
    lr: f64,
    params: GrpoParams,
    max_grad_norm: f64,
    max_tokens: usize,
    sampling: SamplingParams,
    seed: u64,
}

fn check(st: &AppState, tenant: &Tenant, req: TrainRequest) -> Result<Job, ApiError> {
    if st.engine.model.as_llama().is_none() || st.scheduler.is_upstream() {
        return Err(ApiError::invalid(
            "this server cannot train: training needs a Llama-family model served here (not on an upstream)",
        ));
    }
    crate::adapters::check_new_name(st, &req.name)?;
    if !(1..=1000).contains(&req.steps) {
        return Err(ApiError::invalid_param("steps", "must be in 1..=1000"));
    }
    if req.prompts.is_empty() || req.prompts.len() > 1024 {
        return Err(ApiError::invalid_param("prompts", "1 to 1024 prompts"));
    }
    if req.rewards.is_empty() {
        return Err(ApiError::invalid_param(
            "rewards",
            "name at least one reward plugin",
        ));
    }
    let group_size = req.group_size.unwrap_or(8);
    if !(2..=64).contains(&group_size) {
        return Err(ApiError::invalid_param("group_size", "must be in 2..=64"));
    }
    let prompts_per_step = req.prompts_per_step.unwrap_or(2);
    if prompts_per_step == 0 || prompts_per_step * group_size > MAX_STEP_COMPLETIONS {
        return Err(ApiError::invalid_param(
            "prompts_per_step",
            format!(
                "at least 1, and at most {MAX_STEP_COMPLETIONS} completions a step (prompts_per_step × group_size)"
            ),
        ));
    }
    let rank = req.lora_rank.unwrap_or(8);
    if !(1..=64).contains(&rank) {
        return Err(ApiError::invalid_param("lora_rank", "must be in 1..=64"));
    }
    let alpha = req.lora_alpha.unwrap_or(2.0 * rank as f64);
    if !alpha.is_finite() || alpha <= 0.0 {
        return Err(ApiError::invalid_param(
            "lora_alpha",
            "must be a positive number",
        ));
    }
    let targets: Vec<&str> = match &req.target_modules {
        Some(t) => t.iter().map(String::as_str).collect(),
        None => MODULES.to_vec(),
    };
    if targets.is_empty() {
        return Err(ApiError::invalid_param(
            "target_modules",
            "name at least one",
        ));
    }
    if let Some(bad) = targets.iter().find(|t| !MODULES.contains(t)) {
        return Err(ApiError::invalid_param(
            "target_modules",
            format!("`{bad}` is not one of {}", MODULES.join(", ")),
        ));
    }
    let number = |v: Option<f64>, default: f64, field: &str, ok: fn(f64) -> bool| {
        let v = v.unwrap_or(default);
        if v.is_finite() && ok(v) {
            Ok(v)
        } else {
            Err(ApiError::invalid_param(
                field,
                format!("{v} is out of range"),
            ))
        }
    };
    let lr = number(req.learning_rate, 5e-5, "learning_rate", |v| {
        v > 0.0 && v < 1.0
    })?;
    let kl_beta = number(req.kl_beta, 0.04, "kl_beta", |v| v >= 0.0)?;
    let clip_eps = number(req.clip_eps, 0.2, "clip_eps", |v| v > 0.0 && v < 1.0)?;
    let max_grad_norm = number(req.max_grad_norm, 1.0, "max_grad_norm", |v| v > 0.0)?;
    let max_tokens = req.max_tokens.unwrap_or(128);
    if max_tokens == 0 || max_tokens > st.engine.model.info().max_context {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "must be at least 1 and within the model's context",
        ));
    }
    let sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        ..SamplingParams::default()
    };
    sampling
        .validate()
        .map_err(|e| ApiError::invalid_param(&e.field.clone(), e.to_string()))?;
    let prompts = crate::handlers::rollout_prompts(req.prompts)?;
    // Every prompt renders and leaves room to generate.
    Rollout::new(
        &st.engine,
        prompts.clone(),
        RolloutOptions {
            group_size: 1,
            max_tokens,
            ..RolloutOptions::default()
        },
    )
    .map_err(crate::handlers::rollout_error)?;
    let lora = LoraConfig::new(rank, alpha, &targets, Some(st.model_id().to_owned()));
    // Refused now rather than after the job: the adapter must fit beside
    // the tenant's others (checked again when it is stored).
    let llama = st.engine.model.as_llama().expect("checked above");
    let bytes = llama.lora_parameters(&lora) as u64 * 4;
    st.tenant_adapters.check_room(tenant, &req.name, bytes)?;
    Ok(Job {
        lora,
        name: req.name,
        prompts,
        steps: req.steps,
        group_size,
        prompts_per_step,
        lr,
        params: GrpoParams { kl_beta, clip_eps },
        max_grad_norm,
        max_tokens,
        sampling,
        seed: req.seed.unwrap_or(0),
    })
}

/// `POST /v1/train/grpo`: one NDJSON line per step, then the adapter's line.
pub async fn grpo(
    State(st): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    ApiJson(req): ApiJson<TrainRequest>,
) -> Result<Response, ApiError> {
    let reward_refs = req.rewards.clone();
    // Rendering and tokenizing up to a body's worth of prompts: off the
    // executor that serves every tenant.
    let job = {
        let (st, tenant) = (st.clone(), tenant.clone());
        crate::chat::blocking(move || check(&st, &tenant, req)).await?
    };
    let permit = st.training.jobs.clone().try_acquire_owned().map_err(|_| {
        ApiError::rate_limited(
            "the server trains one adapter at a time and a job is running; try again later",
            30,
        )
    })?;
    // Admitted first: with a shared state, looking the rewards up reads
    // the database, which only admitted requests may do. Each step is
    // admitted again.
    let rewards = {
        let _admission = tenant.admit().await?;
        crate::chat::weighted_rewards(&st, &tenant, &reward_refs)?
    };
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = mpsc::channel::<Value>(16);
    let thread = {
        let st = st.clone();
        std::thread::Builder::new()
            .name("deepwasm-train".into())
            .spawn(move || {
                let _held = permit;
                let tenant_name = tenant.name.clone();
                if let Err(e) = run(&st, &tenant, &runtime, job, &rewards, &tx) {
                    tracing::info!("training job of `{tenant_name}` ended: {}", e.message);
                    let _ = tx.blocking_send(e.body());
                }
            })
    };
    thread.map_err(|e| ApiError::internal(format!("cannot start the job: {e}")))?;
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|v| Ok::<_, Infallible>(bytes::Bytes::from(format!("{v}\n"))));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| ApiError::internal("cannot build the response").into_response()))
}

/// Lower the calling thread's scheduling priority as far as it goes.
fn lowest_priority() {
    // SAFETY: `gettid` has no preconditions; `setpriority` on this thread's
    // id changes only this thread's nice value.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// Admit the next step as a request of `tenant`, waiting while its quota
/// refuses (reporting each wait); `None` when the client went away.
fn admit_step(
    tenant: &Tenant,
    runtime: &tokio::runtime::Handle,
    tx: &mpsc::Sender<Value>,
    step: u64,
) -> Result<Option<crate::tenants::Admission>, ApiError> {
    loop {
        if tx.is_closed() {
            return Ok(None);
        }
        match runtime.block_on(tenant.admit()) {
            Ok(a) => return Ok(Some(a)),
            Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
                let wait = e.retry_after.unwrap_or(1).clamp(1, 60);
                let line = json!({
                    "object": "train.waiting",
                    "step": step,
                    "reason": e.message,
                    "retry_after_s": wait,
                });
                if tx.blocking_send(line).is_err() {
                    return Ok(None);
                }
                std::thread::sleep(std::time::Duration::from_secs(wait));
            }
            Err(e) => return Err(e),
        }
    }
}

fn run(
    st: &AppState,
    tenant: &Tenant,
    runtime: &tokio::runtime::Handle,
    job: Job,
    rewards: &[deepwasm_engine::rewards::WeightedReward],
    tx: &mpsc::Sender<Value>,
) -> Result<(), ApiError> {
    lowest_priority();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "deepwasm-train-compute".into())
        .build()
        .map_err(|e| ApiError::internal(format!("cannot start the job's thread: {e}")))?;
    let internal = |e: &dyn std::fmt::Display| ApiError::internal(e.to_string());
    let model = pool
        .install(|| st.training.model(&st.engine))
        .map_err(|e| internal(&e))?;
    let llama = st.engine.model.as_llama().expect("checked");
    let vars = pool
        .install(|| LoraVars::init(&model, job.lora.clone(), job.seed))
        .map_err(|e| internal(&e))?;
    let mut opt = AdamW::new(&vars.vars(), job.lr).map_err(|e| internal(&e))?;
    let names: Vec<String> = rewards.iter().map(|r| r.name.clone()).collect();
    let gone = || ApiError::invalid("the client went away; the job stopped");
    for step in 1..=job.steps {
        let Some(_admission) = admit_step(tenant, runtime, tx, step)? else {
            return Err(gone());
        };
        let started = Instant::now();
        let policy = pool
            .install(|| -> Result<_, String> {
                let adapter = vars.to_adapter().map_err(|e| e.to_string())?;
                llama
                    .serve_adapter(&job.name, &adapter)
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| internal(&e))?;
        let chosen = step_prompts(&job.prompts, step, job.prompts_per_step);
        let options = RolloutOptions {
            group_size: job.group_size,
            max_tokens: job.max_tokens,
            params: job.sampling.clone(),
            seed: step_seed(job.seed, step),
            adapter: Some(policy),
            ..RolloutOptions::default()
        };
        let rollout =
            Rollout::new(&st.engine, chosen, options).map_err(crate::handlers::rollout_error)?;
        let prompt_tokens = rollout.prompt_tokens() * job.group_size;
        let mut groups = Vec::new();
        let summary = rollout::run(&st.scheduler, rollout, rewards, 1, |g| {
            groups.push(g.clone());
            Ok::<_, Box<rollout::RolloutError>>(())
        })
        .map_err(|e| match *e {
            rollout::RolloutError::Generate(e) => ApiError::from(e),
            e => ApiError::internal(e.to_string()),
        })?;
        tenant.record_tokens(prompt_tokens as u64, summary.completion_tokens as u64);
        let rollout_s = started.elapsed().as_secs_f64();
        let stats = pool
            .install(|| {
                deepwasm_engine::train::learn(
                    &model,
                    &vars,
                    &mut opt,
                    &groups,
                    job.params,
                    job.max_grad_norm,
                )
            })
            .map_err(|e| internal(&e))?;
        let mut line = step_report(
            step,
            &groups,
            &names,
            &stats,
            &summary,
            rollout_s,
            started.elapsed().as_secs_f64(),
        );
        line.insert("object".into(), "train.step".into());
        line.insert("steps".into(), job.steps.into());
        let line = Value::Object(line);
        if tx.blocking_send(line).is_err() {
            return Err(gone());
        }
    }
    let adapter = vars.to_adapter().map_err(|e| internal(&e))?;
    let staged = st
        .tenant_adapters
        .stage(&tenant.name, &job.name)
        .map_err(|e| internal(&e))?;
    if let Err(e) = adapter.save(&staged) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(internal(&e));
    }
    let served = match llama.serve_adapter(&job.name, &adapter) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(internal(&e));
        }
    };
    st.tenant_adapters
        .install(tenant, &job.name, &staged, &adapter, served, st.model_id())?;
    let model_id = format!("{}:{}", st.model_id(), job.name);
    let _ = tx.blocking_send(json!({
        "object": "train.done",
        "model": model_id,
        "steps": job.steps,
        "parameters": vars.parameters(),
    }));
    Ok(())
}
