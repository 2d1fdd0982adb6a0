//! The HTTP server end to end: a real `deepwasm serve` on loopback, driven
//! by the official `openai` Python SDK and fuzzed by schemathesis over its
//! own OpenAPI description.
//!
//! Each test starts its own server (a fresh plugin store, fresh quotas) and
//! runs one script of `tests/server/` with the Python of
//! `$DEEPWASM_CACHE/venv-server`, which `scripts/setup` makes. The tests
//! take turns: each server decodes on every core, and two would only slow
//! each other down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::util::{artifacts, deepwasm_bin, default_model_path, models_dir};

/// The tenants every test server has: name, API key, and `[tenant.limits]`.
const TENANTS: &[(&str, &str, &str)] = &[
    ("alpha", "sk-deepwasm-test-alpha", ""),
    ("beta", "sk-deepwasm-test-beta", ""),
    // Its counters are read exactly by `rewards.py`: no other script uses it.
    ("gamma", "sk-deepwasm-test-gamma", ""),
    (
        "single",
        "sk-deepwasm-test-single",
        "max_concurrent_requests = 1",
    ),
    // Its agents may call the calculator (the grants follow its limits).
    (
        "delta",
        "sk-deepwasm-test-delta",
        "\n[tenant.grants]\ntools = [\"calculator\"]",
    ),
    // One short chat request spends it.
    (
        "metered",
        "sk-deepwasm-test-metered",
        "tokens_per_minute = 40",
    ),
];

/// The plugins the scripts upload, as `DEEPWASM_PLUGIN_<NAME>`.
const PLUGINS: &[(&str, &str)] = &[
    ("WORD_BAN", artifacts::WORD_BAN),
    ("R1_FORMAT", artifacts::R1_FORMAT),
    ("TOP_K", artifacts::TOP_K),
    ("CALCULATOR", artifacts::CALCULATOR),
    ("REACT_AGENT", artifacts::REACT_AGENT),
    ("JSON_SCHEMA", artifacts::JSON_SCHEMA),
];

/// The largest JSON body the test servers take: small, so the 413 test has
/// little to send. Plugin uploads have their own, larger, limit.
const MAX_BODY_BYTES: usize = 64 << 10;

/// Loading the model and compiling the built-in JSON sampler (cached after
/// the first run).
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// How many cases schemathesis's fuzzing phase sends per operation; its
/// coverage phase adds the schema's boundary cases (about 1,500 in all).
const FUZZ_EXAMPLES: &str = "16";

/// One server at a time.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server")
}

/// The venv `scripts/setup` makes; fails the test (not skips it) when it is
/// missing.
fn venv_bin(tool: &str) -> PathBuf {
    let cache = models_dir()
        .parent()
        .expect("the model cache has a parent")
        .to_owned();
    let path = cache.join("venv-server/bin").join(tool);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (it makes the venv with the openai SDK and schemathesis)",
        path.display()
    );
    path
}

/// A tenants file for [`TENANTS`], keys stored as `deepwasm hash-key` would.
fn write_tenants(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for (name, key, limits) in TENANTS {
        let hash = deepwasm_server::tenants::hash_key(key);
        text.push_str(&format!(
            "[[tenant]]\nname = \"{name}\"\napi_keys = [\"{hash}\"]\n[tenant.limits]\n{limits}\n\n"
        ));
    }
    let path = dir.join("tenants.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `deepwasm serve`, killed when dropped.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
    model: String,
    /// Everything it wrote to stderr so far.
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(tenants: &Path, store: &Path) -> Server {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
        let mut child = Command::new(deepwasm_bin())
            .arg("serve")
            .arg("--model")
            .arg(default_model_path())
            .args(["--addr", "127.0.0.1:0"])
            .arg("--tenants")
            .arg(tenants)
            .arg("--store")
            .arg(store)
            .args(["--max-body-bytes", &MAX_BODY_BYTES.to_string()])
            .env("DEEPWASM_COMPONENT_CACHE", cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting deepwasm serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("serving ") {
                    let _ = tx.send(line.clone());
                }
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
            model: String::new(),
            log,
        };
        // `serving MODEL on http://ADDR for N tenant(s)`
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "deepwasm serve did not start within {START_TIMEOUT:?} (exit: {:?}):\n{}",
                server.child.try_wait(),
                server.log()
            ),
        };
        let rest = line.strip_prefix("serving ").unwrap();
        let (model, rest) = rest
            .split_once(" on http://")
            .unwrap_or_else(|| panic!("{line}"));
        let addr = rest.split_whitespace().next().unwrap();
        server.url = format!("http://{addr}");
        server.model = model.to_owned();
        server.wait_healthy(addr);
        server
    }

    fn wait_healthy(&mut self, addr: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("deepwasm serve exited ({status}):\n{}", self.log());
            }
            if http_status(addr, "/health") == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/health never answered 200:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The environment the scripts read (see `tests/server/common.py`).
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("DEEPWASM_URL".into(), self.url.clone()),
            ("DEEPWASM_SERVED_MODEL".into(), self.model.clone()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            // Loopback never goes through a proxy.
            ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
            ("no_proxy".into(), "127.0.0.1,localhost".into()),
        ];
        for (name, key, _) in TENANTS {
            env.push((
                format!("DEEPWASM_KEY_{}", name.to_uppercase()),
                (*key).into(),
            ));
        }
        for (name, path) in PLUGINS {
            env.push((format!("DEEPWASM_PLUGIN_{name}"), (*path).into()));
        }
        env
    }

    /// Run a script of `tests/server/` and fail with its output (and the
    /// server's log) unless it passes.
    fn python(&self, script: &str, args: &[&str]) {
        let out = Command::new(venv_bin("python"))
            .arg(script)
            .args(args)
            .current_dir(script_dir())
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("running python");
        self.check(&format!("tests/server/{script} {}", args.join(" ")), &out);
    }

    fn check(&self, what: &str, out: &Output) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            print!("{stdout}");
        }
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{stdout}\n{stderr}\n--- server log (tail) ---\n{}",
            out.status,
            tail(&self.log(), 4000)
        );
    }

    /// Stop the server the hard way: whatever it stored must already be
    /// safe on disk.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a GET, or `None` when nothing answers.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A fresh server: its own tenants file and plugin store.
fn fresh() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let server = Server::start(&tenants, &dir.path().join("store"));
    (server, dir)
}

#[test]
fn openai_sdk_chat_completions() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("openai_chat.py", &[]);
}

#[test]
fn openai_sdk_completions() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("openai_completions.py", &[]);
}

#[test]
fn openai_sdk_errors() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("openai_errors.py", &[]);
}

#[test]
fn plugins_are_uploaded_used_and_kept_from_other_tenants() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("plugins.py", &[]);
}

#[test]
fn rewards_rollouts_usage_and_metrics() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("rewards.py", &[]);
}

#[test]
fn agent_runs_stream_their_events_under_the_tenants_grants() {
    let _turn = turn();
    let (server, _store) = fresh();
    server.python("agents.py", &[]);
}

#[test]
fn quotas_answer_429_with_retry_after() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("quotas.py", &[]);
}

#[test]
fn plugins_survive_a_restart() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let store = dir.path().join("store");
    let server = Server::start(&tenants, &store);
    server.python("restart.py", &["before"]);
    server.kill();
    let server = Server::start(&tenants, &store);
    server.python("restart.py", &["after"]);
}

#[test]
fn schemathesis_finds_no_server_error() {
    let _turn = turn();
    let (server, dir) = fresh();
    let (_, key, _) = TENANTS[0];
    let out = Command::new(venv_bin("schemathesis"))
        .arg("run")
        .arg(format!("{}/openapi.json", server.url))
        .args(["--checks", "not_a_server_error"])
        .args(["--max-examples", FUZZ_EXAMPLES])
        .args(["--seed", "1"])
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "120"])
        .args(["--suppress-health-check", "all"])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .arg("--no-color")
        .current_dir(dir.path())
        .envs(server.env())
        .env("SCHEMATHESIS_HOOKS", script_dir().join("fuzz_hooks.py"))
        .env("DEEPWASM_FUZZ_KEY", key)
        .stdin(Stdio::null())
        .output()
        .expect("running schemathesis");
    server.check("schemathesis", &out);
}
