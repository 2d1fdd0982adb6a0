use std::io::ErrorKind;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deepwasm_plugins::{
    Capabilities, GuestError, KvAccess, LimitHit, MemoryKv, PluginError, ToolPlugin, World,
    types::ToolOutput,
};
use serde_json::Value;

use crate::util::{artifacts, plugin, sandbox};

/// The hostile tool with a short deadline (so loops end quickly) and the
/// given kv store.
fn hostile(kv: Option<Arc<MemoryKv>>) -> ToolPlugin {
    let sandbox = sandbox(World::Tool, |l| {
        l.call_deadline = Duration::from_millis(200);
        l.memory_bytes = 64 << 20;
    })
    .with_caps(Capabilities {
        kv: kv.map(|k| k as Arc<dyn KvAccess>),
        ..Capabilities::default()
    });
    ToolPlugin::new(plugin(artifacts::HOSTILE_TOOL), sandbox).unwrap()
}

fn text(output: ToolOutput) -> String {
    match output {
        ToolOutput::Text(t) | ToolOutput::Json(t) => t,
    }
}

/// Every attack leaves the plugin able to answer the next call.
fn still_serves(tool: &ToolPlugin) {
    let ok = tool
        .call("ok", "{}")
        .expect("the plugin should still serve calls");
    assert_eq!(text(ok.output), "ok");
}

#[test]
fn it_offers_one_tool_per_attack() {
    let names: Vec<String> = hostile(None)
        .describe()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    for attack in [
        "spin",
        "alloc",
        "recurse",
        "panic",
        "trap",
        "flood",
        "read-file",
        "env",
        "connect",
        "spin-log",
    ] {
        assert!(
            names.iter().any(|n| n == attack),
            "{attack} missing from {names:?}"
        );
    }
}

#[test]
fn an_infinite_loop_meets_its_deadline() {
    let tool = hostile(None);
    let start = Instant::now();
    let err = tool.call("spin", "{}").unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, PluginError::Limit { limit: LimitHit::Deadline(d), .. } if d == Duration::from_millis(200)),
        "{err}"
    );
    assert!(
        err.to_string().contains("hostile-tool"),
        "the error names the plugin: {err}"
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    still_serves(&tool);
}

#[test]
fn a_memory_bomb_meets_its_memory_cap() {
    let tool = hostile(None);
    let err = tool.call("alloc", "{}").unwrap_err();
    match err {
        PluginError::Limit {
            limit: LimitHit::Memory { limit, requested },
            ..
        } => {
            assert_eq!(limit, 64 << 20);
            assert!(requested > limit);
        }
        other => panic!("expected the memory limit, got {other}"),
    }
    still_serves(&tool);
}

#[test]
fn unbounded_recursion_meets_the_stack_limit() {
    let tool = hostile(None);
    let err = tool.call("recurse", "{}").unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Limit {
                limit: LimitHit::Stack,
                ..
            }
        ),
        "{err}"
    );
    // A Rust guest's big frames live in linear memory: running off its end
    // is an out-of-bounds access, which is a trap like any other.
    let err = tool.call("recurse-frames", "{}").unwrap_err();
    assert!(
        matches!(&err, PluginError::Trap { message, .. } if message.contains("out of bounds")),
        "{err}"
    );
    still_serves(&tool);
}

#[test]
fn a_panic_is_a_trap_carrying_the_panic_message() {
    let tool = hostile(None);
    let err = tool.call("panic", "{}").unwrap_err();
    match &err {
        PluginError::Trap { message, plugin } => {
            assert_eq!(plugin, "hostile-tool");
            assert!(message.contains("panicked"), "{message}");
        }
        other => panic!("expected a trap, got {other}"),
    }
    let err = tool.call("trap", "{}").unwrap_err();
    assert!(
        matches!(&err, PluginError::Trap { message, .. } if message.contains("unreachable")),
        "{err}"
    );
    still_serves(&tool);
}

#[test]
fn an_output_flood_is_capped_and_stopped() {
    let tool = hostile(None);
    let err = tool.call("flood", "{}").unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Limit {
                limit: LimitHit::Deadline(_),
                ..
            }
        ),
        "{err}"
    );
    // Nothing the flood wrote reached the test's own stdout; what was kept is
    // bounded by the cap (checked through a call that writes and returns).
    still_serves(&tool);
}

#[test]
fn the_filesystem_is_not_there() {
    let tool = hostile(None);
    for (name, path) in [
        ("read-file", "/etc/passwd"),
        ("read-file", "Cargo.toml"),
        ("list-dir", "/"),
    ] {
        let args = serde_json::json!({ "path": path }).to_string();
        let out = text(tool.call(name, &args).unwrap().output);
        assert!(out.starts_with("error:"), "{name} {path}: {out}");
        assert!(!out.contains("root:"), "{out}");
    }
}

#[test]
fn the_environment_and_arguments_are_empty() {
    // SAFETY: no other thread of this test binary reads this variable.
    unsafe { std::env::set_var("DEEPWASM_TEST_SECRET", "hunter2") };
    let tool = hostile(None);
    let out = text(tool.call("env", "{}").unwrap().output);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(!out.contains("hunter2"), "{out}");
    assert_eq!(v["vars"], serde_json::json!({}), "{out}");
    assert_eq!(v["args"], serde_json::json!([]), "{out}");
}

#[test]
fn the_network_is_not_there() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let tool = hostile(None);
    let args = serde_json::json!({ "addr": addr.to_string() }).to_string();
    let out = text(tool.call("connect", &args).unwrap().output);
    assert!(out.starts_with("error:"), "{out}");
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the plugin reached the listener: {other:?}"),
    }
}

#[test]
fn spinning_on_a_host_call_meets_the_deadline_and_the_log_cap() {
    let tool = hostile(None);
    let err = tool.call("spin-log", "{}").unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Limit {
                limit: LimitHit::Deadline(_),
                ..
            }
        ),
        "{err}"
    );
    still_serves(&tool);
}

#[test]
fn a_kv_flood_meets_the_store_quota() {
    let kv = Arc::new(MemoryKv::new(1 << 20));
    let tool = hostile(Some(kv.clone()));
    let out = text(tool.call("kv-fill", "{}").unwrap().output);
    assert!(
        out.contains("limit exceeded")
            || out.contains("LimitExceeded")
            || out.contains("would use"),
        "{out}"
    );
    assert!(kv.used_bytes() <= 1 << 20);

    // Without the capability the plugin is told it was not granted.
    let out = text(hostile(None).call("kv-fill", "{}").unwrap().output);
    assert!(out.to_lowercase().contains("not granted"), "{out}");
}

#[test]
fn guest_errors_are_values_not_failures() {
    let tool = hostile(None);
    match tool.call("no-such-attack", "{}") {
        Err(PluginError::Guest {
            error: GuestError::NotFound(_),
            ..
        }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

#[test]
fn sleeping_in_wasi_meets_the_deadline() {
    // Epoch interrupts stop Wasm code; a guest blocked in a host call (a
    // clock pollable) must be stopped at its deadline too.
    let tool = hostile(None);
    let start = Instant::now();
    let err = tool.call("sleep", "{}").unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, PluginError::Limit { limit: LimitHit::Deadline(d), .. } if d == Duration::from_millis(200)),
        "{err}"
    );
    assert!(
        elapsed < Duration::from_millis(200 + 300),
        "took {elapsed:?}"
    );
    still_serves(&tool);
}

/// Run the looping agent with `config`, no capabilities, under `deadline`.
fn run_looping_agent(
    config: &str,
    deadline: Duration,
) -> Result<deepwasm_plugins::AgentAnswer, PluginError> {
    let agent = deepwasm_plugins::AgentPlugin::new(
        plugin(artifacts::LOOPING_AGENT),
        sandbox(World::Agent, |_| {}),
    )
    .unwrap();
    let control = deepwasm_plugins::AgentControl {
        deadline,
        stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        on_log: None,
    };
    agent.run(Capabilities::default(), "task", config, &control)
}

#[test]
fn an_agent_sleeping_in_wasi_meets_its_run_deadline() {
    let start = Instant::now();
    let err = run_looping_agent(r#"{"mode": "sleep"}"#, Duration::from_millis(300)).unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, PluginError::Limit { limit: LimitHit::Deadline(d), .. } if d == Duration::from_millis(300)),
        "{err}"
    );
    assert!(
        elapsed < Duration::from_millis(300 + 300),
        "took {elapsed:?}"
    );
}

#[test]
fn an_agents_answer_is_capped_not_its_memory() {
    let err = run_looping_agent(r#"{"mode": "big-answer"}"#, Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(&err, PluginError::Protocol { message, .. } if message.contains("1048576")),
        "{err}"
    );
}
