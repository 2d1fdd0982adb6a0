//! `deepwasm agent run`: an agent plugin working on a task over the model,
//! with the tool plugins it is granted.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use deepwasm_engine::agent::{
    AgentBudgets, AgentEvent, AgentHost, AgentRequest, EventSink, ToolCallResult, ToolOutput,
    call_sampler, run_agent,
};
use deepwasm_engine::{Engine, Generator};
use deepwasm_plugins::{
    AgentPlugin, Grants, KvAccess, Limits, MemoryKv, Sandbox, ToolPlugin, World,
};

use crate::model::ModelArgs;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Run an agent plugin on a task: each model turn, tool call and result
    /// is printed (to stderr) as it happens, then the answer (to stdout).
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    upstream: crate::upstream::UpstreamArgs,
    /// The agent plugin.
    #[arg(long, value_name = "FILE.wasm")]
    agent: PathBuf,
    /// A tool plugin the agent may call (repeatable); it can call nothing else.
    #[arg(long = "tool", value_name = "FILE.wasm")]
    tools: Vec<PathBuf>,
    /// The agent's JSON config.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    config: String,
    /// Model turns at most.
    #[arg(long, default_value_t = AgentBudgets::default().max_steps)]
    max_steps: u32,
    /// Tool calls at most.
    #[arg(long, default_value_t = AgentBudgets::default().max_tool_calls)]
    max_tool_calls: u32,
    /// Tokens generated at most, over the whole run.
    #[arg(long, default_value_t = AgentBudgets::default().max_tokens)]
    max_tokens: u64,
    /// Seconds the whole run may take.
    #[arg(long, default_value_t = AgentBudgets::default().deadline.as_secs())]
    deadline_secs: u64,
    /// Bytes of the key-value store the agent and its tools share for the
    /// run (0: no store).
    #[arg(long, default_value_t = 1 << 20)]
    kv_bytes: usize,
    /// Print every event as one JSON object per line on stdout, the answer
    /// in the last (`finished`).
    #[arg(long)]
    json: bool,
    /// The task.
    task: String,
}

pub fn run(cli: &crate::Cli, cmd: &AgentCommand) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Run(args) => run_one(cli, args),
    }
}

fn run_one(cli: &crate::Cli, args: &RunArgs) -> anyhow::Result<()> {
    serde_json::from_str::<serde_json::Value>(&args.config)
        .context("--config is not valid JSON")?;
    let plugins = cli.engine()?;
    let load = |path: &PathBuf, what: &str| {
        plugins
            .load_file(path, &Grants::default())
            .with_context(|| format!("cannot load the {what} {}", path.display()))
    };
    let agent = AgentPlugin::new(
        load(&args.agent, "agent")?,
        Sandbox::new(Limits::for_world(World::Agent)),
    )?;
    let tools = args
        .tools
        .iter()
        .map(|path| {
            let sandbox = Sandbox::new(Limits::for_world(World::Tool));
            Ok(ToolPlugin::new(load(path, "tool")?, sandbox)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let upstream = args.upstream.connect()?;
    let engine = Engine::from(match &upstream {
        Some((_, served)) => args.model.load_remote(served)?,
        None => args.model.load()?,
    });
    let json_schema = plugins
        .load(
            "json-schema",
            deepwasm_builtins::JSON_SCHEMA,
            &Grants::default(),
        )
        .context("cannot load the built-in JSON-schema sampler")?;
    let calls = call_sampler(json_schema, &engine)?;
    let generator: Arc<dyn Generator> = match upstream {
        // Its turns go to the upstream one at a time.
        Some((up, _)) => Arc::new(deepwasm_engine::Scheduler::upstream(
            Arc::new(engine),
            up,
            deepwasm_engine::SchedulerConfig::new(1),
        )),
        None => Arc::new(engine),
    };
    let host = AgentHost::new(generator).with_call_sampler(calls);

    let kv =
        (args.kv_bytes > 0).then(|| Arc::new(MemoryKv::new(args.kv_bytes)) as Arc<dyn KvAccess>);
    let request = AgentRequest {
        config: args.config.clone(),
        tools,
        kv,
        budgets: AgentBudgets {
            max_steps: args.max_steps,
            max_tool_calls: args.max_tool_calls,
            max_tokens: args.max_tokens,
            deadline: Duration::from_secs(args.deadline_secs),
            ..AgentBudgets::default()
        },
        ..AgentRequest::new(&args.task)
    };
    let json = args.json;
    let sink: EventSink = Arc::new(move |event: &AgentEvent| {
        if json {
            if let Ok(line) = serde_json::to_string(event) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        } else {
            eprintln!("{}", describe(event));
        }
    });
    let run = run_agent(&host, &agent, request, sink);
    match run.outcome {
        Ok(answer) => {
            if !json {
                println!("{answer}");
            }
            Ok(())
        }
        Err(failure) => bail!("the agent run failed: {failure}"),
    }
}

/// One event as text.
fn describe(event: &AgentEvent) -> String {
    match event {
        AgentEvent::Started {
            agent,
            model,
            tools,
            ..
        } => format!(
            "[{agent} on {model}; tools: {}]",
            if tools.is_empty() {
                "none".to_owned()
            } else {
                tools.join(", ")
            }
        ),
        AgentEvent::ModelTurn(turn) => {
            let mut line = format!(
                "step {}: model, {} tokens in {:.2} s{}",
                turn.step,
                turn.completion_tokens,
                turn.elapsed_ms as f64 / 1000.0,
                if turn.constrained {
                    ", call constrained"
                } else {
                    ""
                }
            );
            if let Some(reasoning) = &turn.reasoning {
                line.push_str(&format!("\n  thinks: {}", one_line(reasoning)));
            }
            if !turn.content.is_empty() {
                line.push_str(&format!("\n  says: {}", one_line(&turn.content)));
            }
            for call in &turn.tool_calls {
                line.push_str(&format!("\n  calls: {} {}", call.name, call.arguments));
            }
            line
        }
        AgentEvent::ModelError { step, error } => format!("step {step}: refused: {error}"),
        AgentEvent::ToolCall {
            call,
            name,
            arguments,
        } => format!("tool call {call}: {name} {arguments}"),
        AgentEvent::ToolResult {
            call,
            result,
            elapsed_ms,
            ..
        } => match result {
            ToolCallResult::Output(ToolOutput::Text(t) | ToolOutput::Json(t)) => {
                format!("tool result {call} ({elapsed_ms} ms): {}", one_line(t))
            }
            ToolCallResult::Error(e) => format!("tool result {call} ({elapsed_ms} ms): error: {e}"),
        },
        AgentEvent::Log { level, message } => format!("log {level}: {message}"),
        AgentEvent::Finished { stats, .. } | AgentEvent::Failed { stats, .. } => format!(
            "[{} model turn{}, {} tool call{}, {} tokens generated, {:.2} s]",
            stats.steps,
            plural(stats.steps),
            stats.tool_calls,
            plural(stats.tool_calls),
            stats.completion_tokens,
            stats.elapsed_ms as f64 / 1000.0
        ),
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `text` on one line, cut to 300 characters.
fn one_line(text: &str) -> String {
    const MAX: usize = 300;
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}
