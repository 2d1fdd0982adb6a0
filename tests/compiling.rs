//! Compiling out of process: a plugin compiled by the compile worker
//! (`deepwasm compile-worker`) loads, runs and is cached like one compiled
//! in-process; a compile bomb meets the worker's time or memory cap, in the
//! library and through a real `deepwasm serve`, and the server serves on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deepwasm_plugins::{
    CompileSource, CompileWorker, EngineConfig, Grants, LoadError, MIB, PluginEngine, ToolPlugin,
    World, content_id,
};

use crate::server::{Server, TENANTS, cached, fresh_copy, turn, write_tenants};
use crate::util::{artifacts, compile_bomb, deepwasm_bin, sandbox};

/// Functions in the compile bomb: uncapped, ~6 s of one core and ~590 MiB
/// (both five times or more what the caps below allow).
const BOMB_FUNCTIONS: u32 = 100_000;

/// This test binary's `deepwasm compile-worker`, under `max_time` and
/// `max_memory_bytes`.
fn worker(max_time: Duration, max_memory_bytes: u64) -> CompileWorker {
    CompileWorker {
        max_time,
        max_memory_bytes,
        ..CompileWorker::new(deepwasm_bin(), ["compile-worker".into()])
    }
}

/// An engine that compiles in `worker`, caching in `cache` (if any).
fn engine(worker: CompileWorker, cache: Option<&Path>) -> PluginEngine {
    PluginEngine::new(EngineConfig {
        cache_dir: cache.map(Path::to_owned),
        compile_on_one_thread: true,
        compile_worker: Some(worker),
    })
    .unwrap()
}

fn cache_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .count()
    })
}

#[test]
fn a_plugin_compiled_in_the_worker_runs_and_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let caps = worker(Duration::from_secs(60), 512 * MIB);
    let calculator = engine(caps, Some(dir.path()))
        .load_file(Path::new(artifacts::CALCULATOR), &Grants::default())
        .unwrap();
    assert_eq!(calculator.info().compiled, CompileSource::Compiled);
    // Its compiled form (hundreds of KiB, more than a pipe holds) came
    // through the pipe whole, and runs in the pooling engine.
    let tool = ToolPlugin::new(calculator, sandbox(World::Tool, |_| {})).unwrap();
    let answer = tool
        .call("calculate", r#"{"expression": "17 * 23"}"#)
        .unwrap();
    assert!(format!("{:?}", answer.output).contains("391"), "{answer:?}");
    // An in-process engine finds it in the cache: same key, same code.
    assert_eq!(cache_entries(dir.path()), 1);
    let again = PluginEngine::new(EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..EngineConfig::default()
    })
    .unwrap()
    .load_file(Path::new(artifacts::CALCULATOR), &Grants::default())
    .unwrap();
    assert_eq!(again.info().compiled, CompileSource::DiskCache);
}

#[test]
fn a_component_that_does_not_validate_gives_the_compilers_message() {
    // Its world and imports are fine, so only compiling finds the fault:
    // the worker's message reaches the caller as `Invalid`, not as a
    // failure of the worker.
    let mistyped_body = wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (param i32) (result i32) i64.const 1))
            (core instance $i (instantiate $m))
            (func $score (param "x" u32) (result u32) (canon lift (core func $i "f")))
            (instance $scorer (export "score" (func $score)))
            (export "deepwasm:plugin/scorer@0.1.0" (instance $scorer))
        )"#,
    )
    .unwrap();
    let err = engine(worker(Duration::from_secs(60), 512 * MIB), None)
        .load("mistyped-body", &mistyped_body, &Grants::default())
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::Invalid { reason, .. } if reason.contains("type mismatch")),
        "{err}"
    );
}

#[test]
fn a_missing_worker_is_the_hosts_error() {
    let missing = CompileWorker::new("/nonexistent/deepwasm", []);
    let err = engine(missing, None)
        .load_file(Path::new(artifacts::CALCULATOR), &Grants::default())
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::CompileWorker { reason, .. } if reason.contains("/nonexistent/deepwasm")),
        "{err}"
    );
}

#[test]
fn a_compile_bomb_meets_the_workers_time_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = Duration::from_millis(500);
    let start = Instant::now();
    let err = engine(worker(cap, 4096 * MIB), Some(dir.path()))
        .load("bomb", &compile_bomb(BOMB_FUNCTIONS), &Grants::default())
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, LoadError::CompileTime { limit, .. } if limit == cap),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("compiling it took longer than the 0.5 s allowed"),
        "{err}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "refused after {elapsed:?}"
    );
    assert_eq!(cache_entries(dir.path()), 0);
}

#[test]
fn a_compile_bomb_meets_the_workers_memory_cap() {
    let err = engine(worker(Duration::from_secs(60), 64 * MIB), None)
        .load("bomb", &compile_bomb(BOMB_FUNCTIONS), &Grants::default())
        .unwrap_err();
    assert!(
        matches!(err, LoadError::CompileMemory { limit_bytes, .. } if limit_bytes == 64 * MIB),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("needed more than the 64 MiB of memory allowed"),
        "{err}"
    );
}

/// The compile cache the test servers share, with the built-in JSON-schema
/// sampler compiled into it: a server loads that at start, and under the
/// small caps below it could not compile it.
fn warm_server_cache() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
    PluginEngine::new(EngineConfig {
        cache_dir: Some(cache.clone()),
        ..EngineConfig::default()
    })
    .unwrap()
    .load(
        "json-schema",
        deepwasm_builtins::JSON_SCHEMA,
        &Grants::default(),
    )
    .unwrap();
    cache
}

/// The processes `pid` started that are still there (zombies included).
fn children(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// Start a server with `args`, upload a compile bomb as the first tenant
/// (`tests/server/compile_caps.py`: refused within `max_secs` with a 422
/// whose message holds `expect`, then a real plugin uploads and steers a
/// chat), and check that the bomb left nothing: no stored plugin, no cache
/// entry, no worker process.
fn bomb_refused_by_server(args: &[&str], expect: &str, max_secs: f64) {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let store = dir.path().join("store");
    let cache = warm_server_cache();
    let server = Server::start_with_args(&tenants, &store, &cache, args);
    // A content id no cache or store has seen.
    let bomb = fresh_copy(&compile_bomb(BOMB_FUNCTIONS));
    let path = dir.path().join("bomb.wasm");
    std::fs::write(&path, &bomb).unwrap();
    server.python_with_env(
        "compile_caps.py",
        &[],
        &[
            ("DEEPWASM_BOMB", path.to_str().unwrap()),
            ("DEEPWASM_BOMB_CAP", expect),
            ("DEEPWASM_BOMB_MAX_SECS", &max_secs.to_string()),
        ],
    );
    let id = content_id(&bomb);
    assert!(!cached(&cache, &id), "the bomb's compiled form was cached");
    let tenant_dir = store.join(TENANTS[0].0);
    for ext in ["wasm", "json"] {
        let file = tenant_dir.join(format!("{id}.{ext}"));
        assert!(!file.exists(), "{} was stored", file.display());
    }
    assert_eq!(
        children(server.pid()),
        Vec::<String>::new(),
        "the server has child processes left:\n{}",
        server.log()
    );
}

#[test]
fn the_server_refuses_a_compile_bomb_at_its_time_cap_and_serves_on() {
    bomb_refused_by_server(
        &["--max-compile-secs", "1"],
        "compiling it took longer than the 1 s allowed",
        3.5,
    );
}

#[test]
fn the_server_refuses_a_compile_bomb_at_its_memory_cap_and_serves_on() {
    // Enough for the built-in sampler's compile (~62 MiB), should the
    // cache lose it, and for word-ban's.
    bomb_refused_by_server(
        &["--max-compile-mib", "128"],
        "needed more than the 128 MiB of memory allowed",
        4.0,
    );
}
