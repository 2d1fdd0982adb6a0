//! Agent runs: an agent plugin working on a task over the model and the
//! tools it was granted, inside a step, token and time budget, with every
//! model turn and tool call recorded and streamed as an [`AgentEvent`].
//!
//! This is the host side of the `agent` world. `inference` renders the
//! agent's conversation through the model's chat template with its tools,
//! generates, and parses the reply into content, reasoning and tool calls in
//! the model's own format; a call is written under the tool-call grammar
//! (the JSON-schema sampler) when the agent asks for one (`tool-choice`
//! `required` or `named`) or when the model begins one by itself, so that
//! even a 135M model produces well-formed calls. `tools` runs granted tools
//! only, checks the arguments against the tool's schema first, caps what
//! comes back, and turns a tool that traps into an error result the agent
//! can read. `kv` is the tenant's bounded store, shared with the tools.
//!
//! [`run_agent`] is the one entry point, for the CLI's `agent run` and the
//! server's agent endpoint alike: it blocks until the run ends and returns
//! the transcript, while `on_event` sees each event as it happens.

mod constrain;
pub use constrain::CallSampler;
mod inference;
mod tools;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deepwasm_model::ToolCall;
use deepwasm_plugins::{
    AgentControl, AgentPlugin, Capabilities, GuestError, KvAccess, LimitHit, LogLine, LogSink,
    Plugin, PluginError, SamplerPlugin, ToolPlugin, log::Level, types,
};
use serde::{Deserialize, Serialize};

use crate::generate::{Engine, Generator};
use crate::plugin_sampler::{MissPolicy, SamplerHosting};

/// The bounds of one run. Each is enforced by the host: the agent learns of
/// a spent budget as a `limit-exceeded` error, and if it carries on anyway
/// the run is stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentBudgets {
    /// Model turns (`inference.chat` or `complete` calls). Default 16: a
    /// ReAct loop that has not answered after 16 turns is going in circles.
    pub max_steps: u32,
    /// Tool calls. Default 64: several calls per turn, 16 turns.
    pub max_tool_calls: u32,
    /// Tokens generated over the whole run. Default 8,192.
    pub max_tokens: u64,
    /// New tokens of one turn when the agent does not say. Default 256.
    pub turn_tokens: u32,
    /// Wall time of the whole run, in milliseconds; never more than the
    /// agent sandbox's `call_deadline`. Default 300,000 (the agent world's
    /// call deadline).
    #[serde(rename = "deadline_ms", with = "millis")]
    pub deadline: Duration,
    /// Largest tool result the agent is given, in bytes; a larger one is a
    /// `limit-exceeded` error, not a truncated answer the model would
    /// misread. Default 64 KiB.
    pub max_tool_output_bytes: usize,
}

impl Default for AgentBudgets {
    fn default() -> Self {
        AgentBudgets {
            max_steps: 16,
            max_tool_calls: 64,
            max_tokens: 8192,
            turn_tokens: 256,
            deadline: Duration::from_secs(300),
            max_tool_output_bytes: 64 << 10,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Finds a sampler plugin of the run's tenant by id or name, for an agent's
/// `generate-options.sampler`.
pub type SamplerResolver = Arc<dyn Fn(&str) -> Result<SamplerPlugin, GuestError> + Send + Sync>;

/// Receives every event of a run as it happens.
pub type EventSink = Arc<dyn Fn(&AgentEvent) + Send + Sync>;

/// What runs share: the model, and the samplers behind constrained calls.
#[derive(Clone)]
pub struct AgentHost {
    /// Where model turns run: the engine itself, or a server's batch.
    pub generator: Arc<dyn Generator>,
    /// The JSON-schema sampler that writes constrained tool calls (see
    /// [`call_sampler`]); without it, `tool-choice: required` is
    /// `unavailable` and calls the model begins are left unconstrained.
    pub call_sampler: Option<SamplerPlugin>,
    /// Looks up the sampler plugins agents name; without it, naming one is
    /// `unavailable`.
    pub samplers: Option<SamplerResolver>,
    /// The step budget of those sampler plugins. Default
    /// [`DEFAULT_STEP_BUDGET`](crate::DEFAULT_STEP_BUDGET).
    pub sampler_step_budget: Duration,
}

impl std::fmt::Debug for AgentHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHost")
            .field("model", &self.generator.engine().name)
            .field("call_sampler", &self.call_sampler.is_some())
            .field("samplers", &self.samplers.is_some())
            .finish()
    }
}

impl AgentHost {
    /// A host generating on `generator`, with no samplers.
    pub fn new(generator: Arc<dyn Generator>) -> Self {
        AgentHost {
            generator,
            call_sampler: None,
            samplers: None,
            sampler_step_budget: crate::DEFAULT_STEP_BUDGET,
        }
    }

    pub fn with_call_sampler(mut self, sampler: SamplerPlugin) -> Self {
        self.call_sampler = Some(sampler);
        self
    }

    pub fn with_samplers(mut self, samplers: SamplerResolver) -> Self {
        self.samplers = Some(samplers);
        self
    }
}

/// How long one step of a constrained call may take the JSON-schema
/// sampler before the turn fails. Computing a mask over SmolLM2's 49k
/// tokens takes a few milliseconds; the margin is for a loaded machine, and
/// the constraint cannot fall back to unconstrained sampling.
pub const CALL_STEP_BUDGET: Duration = Duration::from_secs(1);

/// The `json-schema` sampler plugin (`deepwasm_builtins::JSON_SCHEMA`, or
/// one built from `plugins/rust/json-schema`) set up to constrain tool calls
/// on `engine`'s model: it sees the model's tokenizer, and a step that
/// misses [`CALL_STEP_BUDGET`] fails the turn.
pub fn call_sampler(
    json_schema: Plugin,
    engine: &Engine,
) -> Result<SamplerPlugin, deepwasm_plugins::LoadError> {
    SamplerHosting::for_engine(engine, CALL_STEP_BUDGET, MissPolicy::Fail).load(json_schema)
}

/// One run's task and what it may use.
#[derive(Clone)]
pub struct AgentRequest {
    pub task: String,
    /// The agent's JSON config (`{}` when none).
    pub config: String,
    /// The tool plugins granted to this run: the agent can call the tools
    /// they describe and nothing else.
    pub tools: Vec<ToolPlugin>,
    /// The tenant's key-value store, for the agent and its tools; `None`
    /// grants no store.
    pub kv: Option<Arc<dyn KvAccess>>,
    pub budgets: AgentBudgets,
    /// Set it to end the run early ([`AgentFailure::Stopped`]).
    pub stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for AgentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRequest")
            .field("task", &self.task)
            .field("config", &self.config)
            .field("tools", &self.tools.len())
            .field("kv", &self.kv.is_some())
            .field("budgets", &self.budgets)
            .finish_non_exhaustive()
    }
}

impl AgentRequest {
    /// `task` with the default budgets, no tools and no store.
    pub fn new(task: impl Into<String>) -> Self {
        AgentRequest {
            task: task.into(),
            config: "{}".into(),
            tools: Vec::new(),
            kv: None,
            budgets: AgentBudgets::default(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Something that happened in a run, in the order it happened. Serialised
/// with a `type` tag (`{"type": "tool_call", "call": 1, ...}`), one per
/// line in the CLI's `--json` output and one per SSE message in the server.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The run began.
    Started {
        agent: String,
        model: String,
        /// The tools the agent may call.
        tools: Vec<String>,
        task: String,
        budgets: AgentBudgets,
    },
    /// A model turn finished.
    ModelTurn(ModelTurn),
    /// A model turn was refused or failed; the agent got `error`.
    ModelError { step: u32, error: GuestError },
    /// The agent called a tool (`call` counts from 1).
    ToolCall {
        call: u32,
        name: String,
        arguments: String,
    },
    /// The result the agent got for call `call`.
    ToolResult {
        call: u32,
        name: String,
        #[serde(flatten)]
        result: ToolCallResult,
        elapsed_ms: u64,
    },
    /// The agent logged a message.
    Log { level: String, message: String },
    /// The agent answered.
    Finished { answer: String, stats: RunStats },
    /// The run ended without an answer.
    Failed {
        error: AgentFailure,
        stats: RunStats,
    },
}

/// One model turn as the agent saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelTurn {
    /// Counts from 1.
    pub step: u32,
    /// `chat` or `complete`.
    pub kind: &'static str,
    /// Messages the agent sent (for `chat`).
    pub messages: usize,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// `stop`, `length`, `tool_calls` or `sampler`.
    pub finish_reason: &'static str,
    /// Whether a tool call was written under the tool-call grammar.
    pub constrained: bool,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub elapsed_ms: u64,
}

/// A tool call's outcome: `{"output": {"text": "..."}}` or `{"error":
/// {"kind": "not-granted", "message": "..."}}` inside its event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallResult {
    Output(ToolOutput),
    Error(GuestError),
}

/// What a tool returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolOutput {
    Text(String),
    Json(String),
}

impl From<&types::ToolOutput> for ToolOutput {
    fn from(o: &types::ToolOutput) -> Self {
        match o {
            types::ToolOutput::Text(t) => ToolOutput::Text(t.clone()),
            types::ToolOutput::Json(t) => ToolOutput::Json(t.clone()),
        }
    }
}

/// Counts of a run so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Model turns.
    pub steps: u32,
    pub tool_calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub elapsed_ms: u64,
}

/// Why a run ended without an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentFailure {
    #[error("the run used its budget of {max_steps} model turns")]
    StepBudget { max_steps: u32 },
    #[error("the run used its budget of {max_tool_calls} tool calls")]
    ToolCallBudget { max_tool_calls: u32 },
    #[error("the run used its budget of {max_tokens} generated tokens")]
    TokenBudget { max_tokens: u64 },
    #[error("the run passed its deadline of {deadline_ms} ms")]
    Deadline { deadline_ms: u64 },
    #[error("the run was stopped")]
    Stopped,
    /// The agent returned an error.
    #[error("the agent returned an error: {error}")]
    Agent { error: GuestError },
    /// The agent trapped or hit a limit of its sandbox.
    #[error("{message}")]
    Plugin { message: String },
    /// The run could not begin (a tool that cannot describe itself, two
    /// tools of one name).
    #[error("cannot start the run: {message}")]
    Setup { message: String },
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct AgentRun {
    /// The answer, or why there is none.
    pub outcome: Result<String, AgentFailure>,
    /// Every event, the last one `Finished` or `Failed`.
    pub transcript: Vec<AgentEvent>,
    pub stats: RunStats,
}

/// Run `agent` on `request.task` (see the module docs). Never panics on
/// what the plugins do; every way a run can end is in the outcome.
pub fn run_agent(
    host: &AgentHost,
    agent: &AgentPlugin,
    request: AgentRequest,
    on_event: EventSink,
) -> AgentRun {
    let deadline = request
        .budgets
        .deadline
        .min(agent.sandbox().limits.call_deadline);
    let run = Arc::new(RunState {
        host: host.clone(),
        budgets: request.budgets.clone(),
        deadline,
        started: Instant::now(),
        stop: request.stop.clone(),
        spent: Mutex::new(None),
        steps: AtomicU32::new(0),
        tool_calls: AtomicU32::new(0),
        prompt_tokens: AtomicU64::new(0),
        completion_tokens: AtomicU64::new(0),
        transcript: Mutex::new(Vec::new()),
        sink: on_event,
    });
    let granted = match tools::GrantedTools::new(run.clone(), &request.tools, request.kv.clone()) {
        Ok(granted) => granted,
        Err(message) => return run.finish(Err(AgentFailure::Setup { message })),
    };
    run.emit(AgentEvent::Started {
        agent: agent.plugin().name().to_owned(),
        model: host.generator.engine().name.clone(),
        tools: granted.names(),
        task: request.task.clone(),
        budgets: request.budgets.clone(),
    });
    let caps = Capabilities {
        tokenizer: None,
        inference: Some(Arc::new(inference::Inference::new(run.clone()))),
        tools: Some(Arc::new(granted)),
        kv: request.kv.clone(),
    };
    let logs = run.clone();
    let on_log: LogSink = Arc::new(move |line: &LogLine| {
        logs.emit(AgentEvent::Log {
            level: level_name(line.level).to_owned(),
            message: line.message.clone(),
        })
    });
    let control = AgentControl {
        deadline,
        stop: run.stop.clone(),
        on_log: Some(on_log),
    };
    let result = agent.run(caps, &request.task, &request.config, &control);
    let outcome = match result {
        Ok(answer) => Ok(answer.answer),
        Err(e) => Err(run.spent().unwrap_or_else(|| run.classify(e))),
    };
    run.finish(outcome)
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// The state of one run, shared by its `inference` and `tools`.
struct RunState {
    host: AgentHost,
    budgets: AgentBudgets,
    deadline: Duration,
    started: Instant,
    /// Set by the caller, or by the host once a budget is spent: the agent
    /// is interrupted the next time it runs guest code.
    stop: Arc<AtomicBool>,
    /// The first budget that ran out.
    spent: Mutex<Option<AgentFailure>>,
    steps: AtomicU32,
    tool_calls: AtomicU32,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    transcript: Mutex<Vec<AgentEvent>>,
    sink: EventSink,
}

impl RunState {
    fn emit(&self, event: AgentEvent) {
        // Held while the sink runs, so that every caller sees the events in
        // transcript order.
        let mut transcript = self.transcript.lock().unwrap_or_else(|e| e.into_inner());
        (self.sink)(&event);
        transcript.push(event);
    }

    fn stats(&self) -> RunStats {
        RunStats {
            steps: self.steps.load(Ordering::Relaxed),
            tool_calls: self.tool_calls.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            elapsed_ms: millis_of(self.started.elapsed()),
        }
    }

    fn spent(&self) -> Option<AgentFailure> {
        self.spent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Record that `failure`'s budget ran out and stop the run; the error
    /// the agent is given.
    fn exhaust(&self, failure: AgentFailure) -> types::Error {
        let message = failure.to_string();
        self.spent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(failure);
        self.stop.store(true, Ordering::Relaxed);
        types::Error::LimitExceeded(message)
    }

    fn past_deadline(&self) -> bool {
        self.started.elapsed() >= self.deadline
    }

    /// What is left of the run's deadline.
    fn time_left(&self) -> Duration {
        self.deadline.saturating_sub(self.started.elapsed())
    }

    fn deadline_failure(&self) -> AgentFailure {
        AgentFailure::Deadline {
            deadline_ms: millis_of(self.deadline),
        }
    }

    /// Whether the run may go on. `Err(None)`: it was already stopped, and
    /// the refusal is not worth an event (an agent that ignores errors
    /// would otherwise fill the transcript until it is interrupted).
    fn check_live(&self) -> Result<(), Option<types::Error>> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(None);
        }
        if self.past_deadline() {
            return Err(Some(self.exhaust(self.deadline_failure())));
        }
        Ok(())
    }

    /// Why a run whose agent failed ended, when no budget explains it.
    fn classify(&self, e: PluginError) -> AgentFailure {
        match e {
            PluginError::Limit {
                limit: LimitHit::Deadline(_),
                ..
            } => self.deadline_failure(),
            PluginError::Guest { error, .. } => AgentFailure::Agent { error },
            _ if self.stop.load(Ordering::Relaxed) => AgentFailure::Stopped,
            other => AgentFailure::Plugin {
                message: other.to_string(),
            },
        }
    }

    fn finish(&self, outcome: Result<String, AgentFailure>) -> AgentRun {
        let stats = self.stats();
        self.emit(match &outcome {
            Ok(answer) => AgentEvent::Finished {
                answer: answer.clone(),
                stats,
            },
            Err(error) => AgentEvent::Failed {
                error: error.clone(),
                stats,
            },
        });
        AgentRun {
            outcome,
            transcript: std::mem::take(
                &mut *self.transcript.lock().unwrap_or_else(|e| e.into_inner()),
            ),
            stats,
        }
    }
}

fn millis_of(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
