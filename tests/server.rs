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
pub(crate) const TENANTS: &[(&str, &str, &str)] = &[
    ("alpha", "sk-deepwasm-test-alpha", ""),
    ("beta", "sk-deepwasm-test-beta", ""),
    // Its counters are read exactly by `rewards.py`: no other script uses it.
    ("gamma", "sk-deepwasm-test-gamma", ""),
    // Room for one rank-4 adapter of the default model (4.9 MB in f32),
    // not beside another of 1 MB.
    (
        "single",
        "sk-deepwasm-test-single",
        "max_concurrent_requests = 1\nadapter_bytes = 5500000",
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
    ("HOSTILE_REWARD", artifacts::HOSTILE_REWARD),
    ("LENGTH_PENALTY", artifacts::LENGTH_PENALTY),
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
pub(crate) fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server")
}

/// The venv `scripts/setup` makes; fails the test (not skips it) when it is
/// missing.
pub(crate) fn venv_bin(tool: &str) -> PathBuf {
    setup_made(&format!("venv-server/bin/{tool}"))
}

/// A path under the cache `scripts/setup` fills; fails the test (not skips
/// it) when it is missing.
fn setup_made(relative: &str) -> PathBuf {
    let path = models_dir()
        .parent()
        .expect("the model cache has a parent")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

/// A tenants file for [`TENANTS`], keys stored as `deepwasm hash-key` would.
pub(crate) fn write_tenants(dir: &Path) -> PathBuf {
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
pub(crate) struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    model: String,
    /// Everything it wrote to stderr so far.
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Start with the compiled components every test server shares.
    fn start(tenants: &Path, store: &Path) -> Server {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
        Server::start_with_cache(tenants, store, &cache)
    }

    /// Start with compiled components cached in `cache`.
    fn start_with_cache(tenants: &Path, store: &Path, cache: &Path) -> Server {
        Server::start_with_args(tenants, store, cache, &[])
    }

    /// Start with compiled components cached in `cache` and `args` added to
    /// `deepwasm serve`'s.
    pub(crate) fn start_with_args(
        tenants: &Path,
        store: &Path,
        cache: &Path,
        args: &[&str],
    ) -> Server {
        Server::start_with_env(tenants, store, cache, args, &[])
    }

    /// [`Server::start_with_args`] with `env` added to the server's
    /// environment.
    pub(crate) fn start_with_env(
        tenants: &Path,
        store: &Path,
        cache: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        // A server on a shared state keeps no plugin store of its own.
        let store_args = if args.contains(&"--state") {
            Vec::new()
        } else {
            vec![std::ffi::OsStr::new("--store"), store.as_os_str()]
        };
        let mut child = Command::new(deepwasm_bin())
            .arg("serve")
            .arg("--model")
            .arg(default_model_path())
            .args(["--addr", "127.0.0.1:0"])
            .arg("--tenants")
            .arg(tenants)
            .args(store_args)
            .args(["--max-body-bytes", &MAX_BODY_BYTES.to_string()])
            .args(args)
            .env("DEEPWASM_COMPONENT_CACHE", cache)
            .envs(env.iter().copied())
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

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The environment the scripts read (see `tests/server/common.py`).
    pub(crate) fn env(&self) -> Vec<(String, String)> {
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
    pub(crate) fn python(&self, script: &str, args: &[&str]) {
        self.python_with_env(script, args, &[]);
    }

    /// [`Server::python`] with `env` added to the script's environment.
    pub(crate) fn python_with_env(&self, script: &str, args: &[&str], env: &[(&str, &str)]) {
        self.run_script(Command::new(venv_bin("python")), script, args, env);
    }

    /// Run a script of `tests/server/` with lm-evaluation-harness's venv
    /// (made by `scripts/setup`).
    fn lm_eval(&self, script: &str) {
        let python = setup_made("venv-lmeval/bin/python");
        self.run_script(Command::new(python), script, &[], &[]);
    }

    /// Run a JavaScript test of `tests/server/` on node, with the OpenAI
    /// JavaScript SDK `scripts/setup` installs.
    fn node(&self, script: &str) {
        let modules = setup_made("node-clients/node_modules");
        let modules = modules.to_str().expect("a UTF-8 cache path");
        self.run_script(Command::new("node"), script, &[], &[("NODE_PATH", modules)]);
    }

    /// Run `program` on `script` in `tests/server/` with the server's
    /// environment and `env`, and fail with its output (and the server's
    /// log) unless it passes.
    fn run_script(&self, mut program: Command, script: &str, args: &[&str], env: &[(&str, &str)]) {
        let out = program
            .arg(script)
            .args(args)
            .current_dir(script_dir())
            .envs(self.env())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {:?}: {e}", program.get_program()));
        self.check(&format!("tests/server/{script} {}", args.join(" ")), &out);
    }

    pub(crate) fn check(&self, what: &str, out: &Output) {
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

    /// The model id it serves.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop the server the hard way: whatever it stored must already be
    /// safe on disk.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Wait for the server to exit (after a signal), up to a minute.
    pub(crate) fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// [`fresh`], with `args` added to `deepwasm serve`'s.
fn fresh_with(args: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
    let server = Server::start_with_args(&tenants, &dir.path().join("store"), &cache, args);
    (server, dir)
}

/// LoRA adapters served beside the base (`--lora NAME=PATH`): each request
/// gets what its model gives in-process, alone or batched with the other
/// model's, and a bad adapter stops the server at start with the reason.
#[test]
fn lora_adapters_are_served_beside_the_base_in_one_batch() {
    use deepwasm_engine::sampling::SamplingParams;
    use deepwasm_engine::{BuiltinSampler, GenerateRequest, Prompt};
    let _turn = turn();
    let engine = crate::util::default_model();
    let base = engine.model.as_llama().unwrap();
    let adapter = crate::lora::random_adapter(base, 4, &[], 31);
    let dir = tempfile::tempdir().unwrap();
    adapter.save(dir.path()).unwrap();
    let prompt = engine
        .tokenizer
        // Longer than the least prompt a cache is shared for.
        .encode(
            "A painter mixes colors every morning before work. She keeps a notebook \
             of every mix she tries. The three primary colors are",
            true,
        )
        .unwrap();
    let max_tokens = 16;
    let greedy = |e: &deepwasm_engine::Engine| {
        let req = GenerateRequest {
            max_tokens,
            params: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            ..GenerateRequest::new(Prompt::Tokens(prompt.clone()))
        };
        e.generate(&req, &mut BuiltinSampler, &mut |_| {})
            .unwrap()
            .text
    };
    let base_text = greedy(engine);
    let applied = engine.with_model(Arc::new(base.with_adapter(&adapter).unwrap()));
    let adapter_text = greedy(&applied);
    let spec = format!("fmt={}", dir.path().display());
    let (server, _store) = fresh_with(&["--lora", &spec]);
    let prompt_json = serde_json::to_string(&prompt).unwrap();
    let max = max_tokens.to_string();
    server.python_with_env(
        "lora.py",
        &[],
        &[
            ("LORA_PROMPT", &prompt_json),
            ("LORA_BASE_TEXT", &base_text),
            ("LORA_ADAPTER_TEXT", &adapter_text),
            ("LORA_MAX_TOKENS", &max),
        ],
    );
    drop(server);
    // An adapter of another model's shape is refused at start, named.
    let tiny = crate::lora::random_adapter(
        crate::lora::tiny().model.as_llama().unwrap(),
        2,
        &["q_proj"],
        1,
    );
    let other = tempfile::tempdir().unwrap();
    tiny.save(other.path()).unwrap();
    let out = Command::new(deepwasm_bin())
        .arg("serve")
        .arg("--model")
        .arg(default_model_path())
        .args(["--addr", "127.0.0.1:0", "--lora"])
        .arg(format!("tiny={}", other.path().display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--lora tiny=") && err.contains("q_proj"),
        "{err}"
    );
}

/// Tenants' own adapters (`/v1/adapters`): uploaded in PEFT's layout, each
/// request through one gets what the adapter gives in-process; only its
/// tenant lists, uses, downloads or deletes it; bad uploads are refused
/// with the file and the reason and leave nothing behind; the tenant's
/// limits hold; downloads held open at once do not each hold the file;
/// adapters survive a restart, and one cut short between its two renames
/// is put back.
#[test]
fn tenants_upload_adapters_and_only_they_use_them() {
    use deepwasm_engine::sampling::SamplingParams;
    use deepwasm_engine::{BuiltinSampler, GenerateRequest, Prompt};
    let _turn = turn();
    let engine = crate::util::default_model();
    let base = engine.model.as_llama().unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let save = |name: &str, adapter: &deepwasm_model::lora::LoraAdapter| {
        let d = dirs.path().join(name);
        adapter.save(&d).unwrap();
        d.to_str().unwrap().to_owned()
    };
    let train = base.trainable(candle_core::DType::F32).unwrap();
    let four = crate::lora::random_adapter_of(&train, 4, &[], 41);
    // 78 MB of weights: downloads of it must not each hold a copy.
    let big = crate::lora::random_adapter_of(&train, 64, &[], 3);
    let two = crate::lora::random_adapter_of(&train, 2, &["q_proj", "v_proj", "down_proj"], 7);
    drop(train);
    let tiny = crate::lora::random_adapter(
        crate::lora::tiny().model.as_llama().unwrap(),
        2,
        &["q_proj"],
        1,
    );
    let prompt = engine
        .tokenizer
        .encode("The three primary colors are", true)
        .unwrap();
    let greedy = |e: &deepwasm_engine::Engine| {
        let req = GenerateRequest {
            max_tokens: 12,
            params: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            ..GenerateRequest::new(Prompt::Tokens(prompt.clone()))
        };
        e.generate(&req, &mut BuiltinSampler, &mut |_| {})
            .unwrap()
            .text
    };
    let with = |a: &deepwasm_model::lora::LoraAdapter| {
        greedy(&engine.with_model(Arc::new(base.with_adapter(a).unwrap())))
    };
    let texts = serde_json::json!({
        "base": greedy(engine),
        "four": with(&four),
        "two": with(&two),
    });
    let params = serde_json::json!({
        "four": base.lora_parameters(&four.config),
        "two": base.lora_parameters(&two.config),
    });
    let env = [
        ("ADAPTER_FOUR", save("four", &four)),
        ("ADAPTER_TWO", save("two", &two)),
        ("ADAPTER_TINY", save("tiny", &tiny)),
        ("ADAPTER_BIG", save("big", &big)),
        ("ADAPTER_PROMPT", serde_json::to_string(&prompt).unwrap()),
        ("ADAPTER_TEXTS", texts.to_string()),
        ("ADAPTER_PARAMS", params.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let store = dir.path().join("store");
    let shared = format!("shared={}", env[1].1);
    let args = ["--lora", shared.as_str()];
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
    let server = Server::start_with_args(&tenants, &store, &cache, &args);
    server.python_with_env("adapters.py", &["upload"], &env);
    let pid = server.pid().to_string();
    let with_pid: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("DEEPWASM_PID", pid.as_str())])
        .collect();
    server.python_with_env("adapters.py", &["downloads"], &with_pid);
    server.kill();
    // A kill between moving an adapter aside and its replacement in
    // leaves only the aside copy; a staged upload leaves its directory.
    let alpha = store.join(".adapters/alpha");
    std::fs::rename(alpha.join("kept"), alpha.join(".kept.old")).unwrap();
    std::fs::create_dir_all(alpha.join(".junk.staged-1-0")).unwrap();
    let server = Server::start_with_args(&tenants, &store, &cache, &args);
    server.python_with_env("adapters.py", &["after-restart"], &env);
    let left: Vec<String> = std::fs::read_dir(&alpha)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["kept"], "{left:?}");
    server.assert_clean_log();
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
fn openai_sdk_clients_round_trip_and_newer_fields() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("openai_clients.py", &[]);
}

#[test]
fn openai_sdk_responses_api() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("openai_responses.py", &[]);
}

#[test]
fn litellm_chats_embeds_and_raises_context_window_errors() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("litellm_client.py", &[]);
}

#[test]
fn openai_js_sdk_streams_chat_and_responses() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.node("openai_js.cjs");
}

#[test]
fn lm_eval_harness_scores_and_generates_through_local_completions() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.lm_eval("lm_eval_harness.py");
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
fn long_prompts_share_the_batch_and_leave_with_their_client() {
    let _turn = turn();
    let (server, _dir) = fresh();
    server.python("prefill.py", &[]);
}

#[test]
fn a_tiny_cache_budget_answers_a_burst_with_503s_and_frees_its_cache() {
    let _turn = turn();
    let (server, _dir) = fresh_with(&["--kv-cache-mib", "24", "--max-waiting", "2"]);
    server.python("kv_budget.py", &[]);
    server.assert_clean_log();
}

#[test]
fn logits_kept_on_the_device_move_only_answers() {
    let _turn = turn();
    let (server, _dir) = fresh_with(&["--logits", "device"]);
    server.python("device_logits.py", &[]);
    server.assert_clean_log();
}

/// A server generating on `upstream` (a deepwasm started by the test) with
/// tenant `alpha`'s key to it from its environment; the key, and the
/// directory holding the front's tenants and store.
fn front_of(upstream: &Server) -> (Server, &'static str, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
    // The upstream's key for tenant `alpha` is the front's key to it.
    let key = TENANTS[0].1;
    let front = Server::start_with_env(
        &tenants,
        &dir.path().join("store"),
        &cache,
        &[
            "--upstream",
            &upstream.url,
            "--upstream-key-env",
            "UPSTREAM_TEST_KEY",
        ],
        &[("UPSTREAM_TEST_KEY", key)],
    );
    (front, key, dir)
}

/// A second deepwasm serves the model; the one under test has only its
/// tokenizer and generates there (`--upstream`), with a key from its
/// environment.
#[test]
fn a_server_generates_through_an_upstream_deepwasm() {
    let _turn = turn();
    let (upstream, _up_dir) = fresh();
    let (front, key, _dir) = front_of(&upstream);
    front.python_with_env(
        "upstream.py",
        &[],
        &[
            ("DEEPWASM_UPSTREAM_URL", &upstream.url),
            ("DEEPWASM_UPSTREAM_KEY", key),
        ],
    );
    assert!(
        !front.log().contains(key),
        "the key is in the log:\n{}",
        front.log()
    );
    front.assert_clean_log();
}

/// `deepwasm generate`, `rollout` and `agent run` generate on an upstream
/// too: the same greedy text as the upstream's own, rollouts with their
/// groups scored here, an agent's turns.
#[test]
fn the_cli_generates_and_rolls_out_through_an_upstream() {
    let _turn = turn();
    let (upstream, _dir) = fresh();
    let key = TENANTS[0].1;
    let cli = |args: &[&str]| {
        let o = Command::new(deepwasm_bin())
            .args(args)
            .args([
                "--upstream",
                &upstream.url,
                "--upstream-key-env",
                "UPSTREAM_TEST_KEY",
            ])
            .env("UPSTREAM_TEST_KEY", key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(!err.contains(key));
        String::from_utf8(o.stdout).unwrap()
    };
    let greedy = [
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
    ];
    let through: serde_json::Value =
        serde_json::from_str(&cli(&[&["generate", "--json"][..], &greedy[..]].concat())).unwrap();
    let local = Command::new(deepwasm_bin())
        .args(["generate", "--json"])
        .args(greedy)
        .output()
        .unwrap();
    let local: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(through["text"], local["text"], "{through} vs {local}");
    assert_eq!(through["tokens"], local["tokens"]);

    let mut prompts = tempfile::NamedTempFile::new().unwrap();
    writeln!(prompts, r#"{{"prompt": "What is 2+3?", "answer": "5"}}"#).unwrap();
    let lines: Vec<serde_json::Value> = cli(&[
        "rollout",
        "--prompts",
        prompts.path().to_str().unwrap(),
        "--group-size",
        "3",
        "--max-tokens",
        "8",
        "--chat",
        "--seed",
        "4",
        "--reward",
        artifacts::MATH_ACCURACY,
    ])
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert_eq!(lines.len(), 2, "a group and a summary: {lines:?}");
    let completions = lines[0]["completions"].as_array().unwrap();
    assert_eq!(completions.len(), 3);
    for c in completions {
        let tokens = c["tokens"].as_array().unwrap();
        assert!(!tokens.is_empty() && tokens.len() <= 8, "{c}");
        let lps = c["logprobs"].as_array().unwrap();
        assert_eq!(lps.len(), tokens.len(), "{c}");
        assert!(
            lps.iter().all(|l| l.as_f64().is_some_and(|l| l <= 0.0)),
            "{c}"
        );
        // A number, or null where the completion holds no answer to judge.
        assert!(
            c["rewards"]
                .as_object()
                .unwrap()
                .contains_key("math-accuracy"),
            "{c}"
        );
    }
    assert_eq!(lines[1]["summary"]["completions"], 3);

    let events: Vec<serde_json::Value> = cli(&[
        "agent",
        "run",
        "--agent",
        artifacts::REACT_AGENT,
        "--tool",
        artifacts::CALCULATOR,
        "--config",
        r#"{"first_tool_choice": "auto", "max_steps": 3, "max_tokens": 48}"#,
        "--json",
        "What is 17 times 23?",
    ])
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert!(
        events.iter().any(|e| e["type"] == "model_turn"),
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert!(
        last["type"] == "finished" || last["type"] == "failed",
        "{last}"
    );
}

/// A real upstream killed while a client streams through the front: the
/// stream ends with an error event after what had come, and the front
/// answers the next request at once (a 502) with nothing left running.
#[test]
fn an_upstream_killed_mid_stream_ends_the_stream_with_an_error() {
    let _turn = turn();
    let (upstream, _up_dir) = fresh();
    let (front, _key, _dir) = front_of(&upstream);
    let pid = upstream.child.id().to_string();
    front.python_with_env(
        "upstream_killed.py",
        &[],
        &[("DEEPWASM_UPSTREAM_PID", &pid)],
    );
    front.assert_clean_log();
}

/// An upstream that stalls, answers junk, is busy or cuts its stream:
/// each is a clear error in bounded time, and nothing is left running.
#[test]
fn upstream_faults_are_clear_errors_in_bounded_time() {
    let _turn = turn();
    /// Killed when dropped, also when the test fails.
    struct Fake(std::process::Child);
    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut fake = Fake(
        Command::new(venv_bin("python"))
            .arg("fake_upstream.py")
            .current_dir(script_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the fake upstream"),
    );
    let mut first = String::new();
    BufReader::new(fake.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first
        .trim()
        .strip_prefix("listening on ")
        .expect("the fake's port");
    let url = format!("http://127.0.0.1:{port}");
    let (front, _dir) = fresh_with(&[
        "--upstream",
        &url,
        "--upstream-timeout-secs",
        "1",
        "--upstream-retries",
        "1",
    ]);
    front.python_with_env(
        "upstream_faults.py",
        &[],
        &[("DEEPWASM_UPSTREAM_URL", &url)],
    );
    drop(front);
    // One place upstream and one waiting: a flood cannot queue tasks.
    let (front, _dir) = fresh_with(&[
        "--upstream",
        &url,
        "--upstream-timeout-secs",
        "1",
        "--upstream-retries",
        "0",
        "--max-batch",
        "1",
        "--max-waiting",
        "1",
    ]);
    front.python("upstream_flood.py", &[]);
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

/// `POST /v1/train/grpo`: a tenant trains an adapter against its reward
/// plugin, sees the steps stream, and generates with it; other tenants
/// cannot; one job runs at a time and stops when its client goes; the
/// adapter survives a restart.
#[test]
fn tenants_train_adapters_through_the_api_and_only_they_use_them() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let store = dir.path().join("store");
    let server = Server::start(&tenants, &store);
    server.python("train.py", &["train"]);
    server.kill();
    let server = Server::start(&tenants, &store);
    server.python("train.py", &["after-restart"]);
}

/// Where an upload is when its server is killed.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after the request is sent: the component is compiling.
    Delay(Duration),
    /// As a new file appears in the compile cache: the compiled form is
    /// being written.
    CacheWrite,
    /// As the nth new file appears in the tenant's store: the component
    /// (1) or its record (2) is being written.
    StoreWrite(usize),
    /// As soon as the component is in the store, its record not yet.
    BeforeRecord,
}

/// One upload of the JSON-schema sampler (seconds of compiling on the
/// server's one compile thread) killed at each point, in turn.
const KILLS: &[KillAt] = &[
    KillAt::Delay(Duration::from_millis(500)),
    KillAt::CacheWrite,
    KillAt::StoreWrite(1),
    KillAt::BeforeRecord,
    KillAt::StoreWrite(2),
    KillAt::Delay(Duration::from_millis(1500)),
];

/// Longer than any upload here takes; a kill point not reached by then
/// never will be.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The messages of a server that found something partial on disk, or
/// fell over.
const UNCLEAN_LOG: &[&str] = &[
    "panicked",
    "plugin store: skipping",
    "dropping unusable cache entry",
    "could not cache",
];

/// `component` with a custom section of random bytes appended: the same
/// plugin under a content id no cache holds.
pub(crate) fn fresh_copy(component: &[u8]) -> Vec<u8> {
    use wasm_encoder::ComponentSection;
    let mut nonce = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .unwrap();
    let mut out = component.to_vec();
    wasm_encoder::CustomSection {
        name: "nonce".into(),
        data: nonce[..].into(),
    }
    .append_to_component(&mut out);
    out
}

/// The files of `dir` that `real` does not name (temporary files, left
/// behind by a kill), with their sizes.
fn strays(dir: &Path, real: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok()?.len();
            (!real(&name)).then_some((name, len))
        })
        .collect()
}

fn file_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

fn is_cache_entry(name: &str) -> bool {
    name.ends_with(".cwasm")
}

fn is_store_file(name: &str) -> bool {
    name.ends_with(".wasm") || name.ends_with(".json")
}

/// Whether the compile cache holds an entry for the component `id`.
pub(crate) fn cached(cache: &Path, id: &str) -> bool {
    std::fs::read_dir(cache).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("{id}-")) && is_cache_entry(&name)
        })
    })
}

/// Every record in the tenant's store has its component beside it, and
/// the component is the one its id names.
fn check_store(tenant_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(tenant_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let wasm = path.with_extension("wasm");
        let bytes = std::fs::read(&wasm)
            .unwrap_or_else(|e| panic!("{} has no component: {e}", path.display()));
        let id = path.file_stem().unwrap().to_string_lossy();
        assert_eq!(
            deepwasm_plugins::content_id(&bytes),
            id,
            "{} is not the component its record names",
            wasm.display()
        );
    }
}

impl Server {
    /// Send `bytes` as `tenant`'s plugin `name`, kill the server at `at`,
    /// and say what the kill left on disk.
    fn kill_mid_upload(
        self,
        (tenant, key): (&str, &str),
        name: &str,
        bytes: &[u8],
        at: KillAt,
        store: &Path,
        cache: &Path,
    ) -> String {
        let id = deepwasm_plugins::content_id(bytes);
        let tenant_dir = store.join(tenant);
        let component = tenant_dir.join(format!("{id}.wasm"));
        let record = tenant_dir.join(format!("{id}.json"));
        let cache_files = file_count(cache);
        let store_files = file_count(&tenant_dir);
        let mut request = send_upload(&self.url, key, name, bytes);
        let sent = Instant::now();
        let reached = match at {
            KillAt::Delay(d) => {
                std::thread::sleep(d);
                !record.exists()
            }
            KillAt::CacheWrite => wait_until(&record, || file_count(cache) > cache_files),
            KillAt::StoreWrite(n) => {
                wait_until(&record, || file_count(&tenant_dir) >= store_files + n)
            }
            KillAt::BeforeRecord => wait_until(&record, || component.exists()),
        };
        let after = sent.elapsed();
        self.kill();
        // The upload's answer, if it came before the kill; a connection
        // error otherwise.
        let _ = request.read_to_end(&mut Vec::new());
        let mut left = vec![format!(
            "component {}, record {}, cache entry {}",
            yes_no(component.exists()),
            yes_no(record.exists()),
            yes_no(cached(cache, &id))
        )];
        for (stray, len) in strays(cache, is_cache_entry) {
            left.push(format!("cache/{stray} ({len} bytes)"));
        }
        for (stray, len) in strays(&tenant_dir, is_store_file) {
            left.push(format!("store/{tenant}/{stray} ({len} bytes)"));
        }
        format!(
            "{at:?} {} after {:.2} s: {}",
            if reached {
                "reached"
            } else {
                "missed, the upload was done"
            },
            after.as_secs_f64(),
            left.join("; ")
        )
    }

    /// Fail with the log if the server found something partial on disk.
    fn assert_clean_log(&self) {
        let log = self.log();
        for message in UNCLEAN_LOG {
            assert!(
                !log.contains(message),
                "the server logged `{message}`:\n{}",
                tail(&log, 4000)
            );
        }
    }
}

/// Send `bytes` to the server at `url` as plugin `name` with API key `key`,
/// without waiting for the answer.
pub(crate) fn send_upload(url: &str, key: &str, name: &str, bytes: &[u8]) -> TcpStream {
    let addr = url.strip_prefix("http://").unwrap();
    let mut request = TcpStream::connect(addr).unwrap();
    write!(
        request,
        "POST /v1/plugins?name={name} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {key}\r\nContent-Type: application/wasm\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    request.write_all(bytes).unwrap();
    request
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Poll for `hit` until the upload has written `record`: whether `hit`
/// came first.
fn wait_until(record: &Path, hit: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + UPLOAD_TIMEOUT;
    loop {
        if hit() {
            return true;
        }
        if record.exists() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// A SIGKILL anywhere in an upload (compiling, writing the compile cache,
/// writing the store) leaves nothing partial: the restarted server lists
/// only whole plugins, loads every cache entry it meets, and takes the
/// upload again.
#[test]
fn uploads_killed_midway_leave_nothing_partial() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let store = dir.path().join("store");
    // Its own compile cache: every upload here really compiles, and the
    // kills' leftovers stay out of other tests' way.
    let cache = dir.path().join("components");
    let uploads = dir.path().join("uploads");
    std::fs::create_dir(&uploads).unwrap();
    let (tenant, key, _) = TENANTS[0];
    let json_schema = std::fs::read(artifacts::JSON_SCHEMA).unwrap();
    let arg = |p: &Path| p.to_str().unwrap().to_owned();

    let mut server = Server::start_with_cache(&tenants, &store, &cache);
    let mut last = PathBuf::new();
    for (i, &at) in KILLS.iter().enumerate() {
        let name = format!("killed-{i}");
        let bytes = fresh_copy(&json_schema);
        last = uploads.join(format!("{name}.wasm"));
        std::fs::write(&last, &bytes).unwrap();
        let left = server.kill_mid_upload((tenant, key), &name, &bytes, at, &store, &cache);
        println!("kill {i}: {left}");
        check_store(&store.join(tenant));
        server = Server::start_with_cache(&tenants, &store, &cache);
        server.python("killed.py", &["check", &arg(&uploads), &arg(&cache)]);
        server.assert_clean_log();
    }
    server.python("killed.py", &["upload", &arg(&last)]);
    server.kill();
    let server = Server::start_with_cache(&tenants, &store, &cache);
    server.python("killed.py", &["listed", &arg(&last)]);
    server.python("killed.py", &["check", &arg(&uploads), &arg(&cache)]);
    server.assert_clean_log();
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

/// llama.cpp's llama-server from `scripts/reference/build-llama-cpp`, if
/// built.
fn llama_server_bin() -> Option<PathBuf> {
    let cache = models_dir().parent()?.join("reference/src");
    std::fs::read_dir(cache).ok()?.find_map(|e| {
        let bin = e
            .ok()?
            .path()
            .join("vendor/llama.cpp/build/bin/llama-server");
        bin.is_file().then_some(bin)
    })
}

/// The peer tier (`scripts/test --full`, which builds llama.cpp first):
/// deepwasm and llama-server on the same file give the same greedy tokens
/// wherever llama.cpp is decisive.
#[test]
#[ignore = "needs llama.cpp's llama-server: scripts/test --full builds it"]
fn greedy_completions_agree_with_llama_server() {
    let _turn = turn();
    let peer = LlamaServer::start();
    let (server, _dir) = fresh();
    server.python_with_env("peer_llama.py", &[], &[("DEEPWASM_PEER_URL", &peer.url)]);
}

/// llama.cpp's llama-server on the default model, killed when dropped.
struct LlamaServer {
    child: Child,
    url: String,
}

impl LlamaServer {
    /// Start it on a free port and wait until it answers `/health`.
    fn start() -> LlamaServer {
        let bin =
            llama_server_bin().expect("no llama-server: run scripts/reference/build-llama-cpp");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .arg("-m")
            .arg(default_model_path())
            .args([
                "-t",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting llama-server");
        let peer = LlamaServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = [0u8; 12];
                s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
                    && s.read_exact(&mut head).is_ok()
                    && head.ends_with(b" 200")
            });
            if ready {
                return peer;
            }
            assert!(
                Instant::now() < deadline,
                "llama-server was not ready within a minute"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deepwasm server generating on llama-server (`--upstream`): greedy
/// text is llama-server's own for the same tokens, and `n`, rewards,
/// streams and rollouts work through it.
#[test]
#[ignore = "needs llama.cpp's llama-server: scripts/test --full builds it"]
fn a_server_generates_through_llama_server() {
    let _turn = turn();
    let peer = LlamaServer::start();
    let (front, _dir) = fresh_with(&["--upstream", &peer.url]);
    front.python_with_env(
        "upstream_llama.py",
        &[],
        &[("DEEPWASM_PEER_URL", &peer.url)],
    );
    front.assert_clean_log();
}
