//! Replicas of `deepwasm serve --state postgres://...` on one throwaway
//! PostgreSQL cluster: what one replica does, the others see; a replica
//! killed mid-upload or mid-stream leaves the others serving and the
//! registry whole; a database restarted under load answers 503s, then
//! serves again with nothing lost. And the tenants file re-read on SIGHUP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::Postgres;
use crate::server::{
    Server, TENANTS, fresh_copy, script_dir, send_upload, turn, venv_bin, write_tenants,
};
use crate::util::{artifacts, deepwasm_bin, default_model_path};

/// A replica on `pg`'s database with its own compile cache in `cache`.
fn replica(pg: &Postgres, tenants: &Path, cache: &Path, extra: &[&str]) -> Server {
    let url = pg.url();
    let mut args = vec!["--state", url.as_str()];
    args.extend_from_slice(extra);
    Server::start_with_args(tenants, Path::new("unused"), cache, &args)
}

/// What every test here starts from: its turn among the server tests, a
/// fresh database, a directory with the tenants file, and the compile
/// cache the test servers share.
struct Setting {
    _turn: std::sync::MutexGuard<'static, ()>,
    pg: Postgres,
    dir: tempfile::TempDir,
    tenants: PathBuf,
    cache: PathBuf,
}

fn setting() -> Setting {
    let turn = turn();
    let dir = tempfile::tempdir().unwrap();
    Setting {
        _turn: turn,
        pg: Postgres::start(),
        tenants: write_tenants(dir.path()),
        dir,
        cache: Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache"),
    }
}

/// Run `tests/server/replicas_faults.py` with A and B's addresses.
fn faults(a: &Server, b_url: &str, args: &[&str]) {
    let out = Command::new(venv_bin("python"))
        .arg("replicas_faults.py")
        .args(args)
        .current_dir(script_dir())
        .envs(a.env())
        .env("DEEPWASM_URL_B", b_url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    a.check(&format!("replicas_faults.py {}", args.join(" ")), &out);
}

/// The registry's invariants, read from the database: every plugin has
/// its bytes, every component matches its content id, and no bytes are
/// left that no plugin names.
fn check_registry(pg: &Postgres) {
    assert_eq!(
        pg.psql("SELECT count(*) FROM plugins p LEFT JOIN plugin_blobs b ON b.id = p.id WHERE b.id IS NULL"),
        "0"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM plugin_blobs WHERE encode(sha256(bytes), 'hex') <> id"),
        "0",
        "a component does not match its id"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM plugin_blobs b WHERE NOT EXISTS (SELECT 1 FROM plugins p WHERE p.id = b.id)"),
        "0",
        "bytes were left that no plugin names"
    );
}

#[test]
fn two_replicas_share_plugins_quotas_and_usage() {
    let Setting {
        pg,
        dir,
        tenants,
        cache,
        ..
    } = &setting();
    let a = replica(pg, tenants, cache, &[]);
    // B compiles for itself: it gets plugins only from the registry.
    let b = replica(pg, tenants, &dir.path().join("b-cache"), &[]);
    a.python_with_env("replicas.py", &[], &[("DEEPWASM_URL_B", &b.url)]);
    check_registry(pg);
}

/// When to kill replica A during an upload.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after the body was sent (receiving or compiling).
    Delay(Duration),
    /// As soon as the upload's transaction is seen writing the registry.
    InTransaction,
}

#[test]
fn a_replica_killed_mid_upload_or_mid_stream_leaves_the_others_serving() {
    let Setting {
        pg,
        dir,
        tenants,
        cache: shared_cache,
        ..
    } = &setting();
    let ttl = "3";
    let b = replica(pg, tenants, shared_cache, &["--lease-ttl-secs", ttl]);
    let (_, key, _) = TENANTS[0];
    let reward = std::fs::read(artifacts::R1_FORMAT).unwrap();
    let kills = [
        KillAt::Delay(Duration::from_millis(50)),
        KillAt::Delay(Duration::from_millis(500)),
        KillAt::InTransaction,
    ];
    for (i, at) in kills.into_iter().enumerate() {
        // A compiles every upload for real: its cache starts empty.
        let a_cache = dir.path().join(format!("a-cache-{i}"));
        let a = replica(pg, tenants, &a_cache, &["--lease-ttl-secs", ttl]);
        let name = format!("killed-{i}");
        let bytes = fresh_copy(&reward);
        let id = deepwasm_plugins::content_id(&bytes);
        let path: PathBuf = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, &bytes).unwrap();
        let mut request = send_upload(&a.url, key, &name, &bytes);
        let sent = Instant::now();
        let reached = match at {
            KillAt::Delay(d) => {
                std::thread::sleep(d);
                true
            }
            KillAt::InTransaction => {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let writing = pg.psql(
                        "SELECT count(*) FROM pg_stat_activity
                          WHERE application_name = 'deepwasm' AND state <> 'idle'
                            AND query LIKE 'INSERT INTO plugin%'",
                    );
                    if writing != "0" {
                        break true;
                    }
                    let stored = pg.psql(&format!(
                        "SELECT count(*) FROM plugins WHERE name = '{name}'"
                    ));
                    if stored != "0" || Instant::now() > deadline {
                        break false;
                    }
                }
            }
        };
        let after = sent.elapsed();
        a.kill();
        let _ = request.read_to_end(&mut Vec::new());
        println!(
            "kill {i} ({at:?}) {} after {:.2} s",
            if reached { "reached" } else { "missed" },
            after.as_secs_f64()
        );
        check_registry(pg);
        faults(
            &b,
            &b.url,
            &["after-upload-kill", &name, &id, path.to_str().unwrap()],
        );
        check_registry(pg);
    }

    // Killed mid-stream: `single` (one request at a time) streams on A.
    let a = replica(pg, tenants, shared_cache, &["--lease-ttl-secs", ttl]);
    let (_, single_key, _) = TENANTS[3];
    let addr = a.url.strip_prefix("http://").unwrap().to_owned();
    let body = format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"Tell me a long story."}}],"max_tokens":200,"stream":true}}"#,
        a.model()
    );
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {single_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before its first event");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    a.kill();
    faults(&b, &b.url, &["after-stream-kill", ttl]);
    check_registry(pg);
}

#[test]
fn the_database_restarted_under_load_answers_503_then_serves_with_nothing_lost() {
    let Setting {
        _turn,
        mut pg,
        dir: _dir,
        tenants,
        cache,
    } = setting();
    let (tenants, cache) = (&tenants, &cache);
    let a = replica(&pg, tenants, cache, &[]);
    let b = replica(&pg, tenants, cache, &[]);
    let load = Command::new(venv_bin("python"))
        .args(["replicas_faults.py", "load", "16"])
        .current_dir(script_dir())
        .envs(a.env())
        .env("DEEPWASM_URL_B", &b.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    pg.pause();
    std::thread::sleep(Duration::from_secs(4));
    pg.resume();
    let out = load.wait_with_output().unwrap();
    a.check("replicas_faults.py load (A's log)", &out);
    // The outage is logged when it starts, not once per refused request
    // (81 in a typical run), by the server or its connection pool.
    for (name, log) in [("A", a.log()), ("B", b.log())] {
        let outages = log.matches("cannot write usage, spends or leases").count();
        assert!(
            (1..=3).contains(&outages) && log.lines().count() < 30,
            "replica {name} logged the outage {outages} times:\n{}",
            &log[log.len().saturating_sub(4000)..]
        );
    }
}

#[test]
fn a_replica_stopped_cleanly_loses_no_usage() {
    let Setting {
        pg, tenants, cache, ..
    } = &setting();
    let a = replica(pg, tenants, cache, &[]);
    let b = replica(pg, tenants, cache, &[]);
    // Requests served by A, and A told to stop at once after them.
    faults(&a, &b.url, &["serve-then", "5"]);
    let status = Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let a = a.wait();
    assert!(a.success(), "A did not stop cleanly: {a}");
    faults(&b, &b.url, &["counted", "5"]);
}

#[test]
fn a_database_unreachable_at_start_stops_the_server_with_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://deepwasm:hunter2@127.0.0.1:{port}/deepwasm");
    let started = Instant::now();
    let out = Command::new(deepwasm_bin())
        .args(["serve", "--model"])
        .arg(default_model_path())
        .args(["--addr", "127.0.0.1:0", "--state", &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--state") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password was printed: {err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // It stopped before loading the model.
    assert!(!err.contains("loaded "), "{err}");

    let out = Command::new(deepwasm_bin())
        .args(["serve", "--state", "mysql://x@y/z", "--model"])
        .arg(default_model_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PostgreSQL URL"),
        "{err}"
    );
}

#[test]
fn sighup_reads_the_tenants_file_again_without_a_restart() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let tenants = write_tenants(dir.path());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
    let server = Server::start_with_args(&tenants, &dir.path().join("store"), &cache, &[]);
    let out = Command::new(venv_bin("python"))
        .arg("tenants_reload.py")
        .current_dir(script_dir())
        .envs(server.env())
        .env("DEEPWASM_TENANTS_FILE", &tenants)
        .env("DEEPWASM_PID", server.pid().to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    server.check("tenants_reload.py", &out);
    assert!(server.log().contains("SIGHUP"), "{}", server.log());
}

/// nginx in front of two replicas, configured by `docs/deployment/nginx.conf`
/// with the replicas' addresses and a free port filled in. Killed when
/// dropped.
struct Nginx {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(replicas: &[&str]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let site = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deployment/nginx.conf"),
        )
        .unwrap();
        let mut servers = replicas.iter();
        let site: String = site
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("server 10.0.0.") {
                    let addr = servers.next().expect("the file lists two replicas");
                    let rest = line.split_once(":8000").unwrap().1;
                    format!("    server {addr}{rest}\n")
                } else if line.trim() == "listen 8000;" {
                    format!("    listen 127.0.0.1:{port};\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert!(servers.next().is_none(), "every replica has a line");
        let prefix = dir.path();
        std::fs::write(prefix.join("site.conf"), site).unwrap();
        let user = if is_root() { "user root;\n" } else { "" };
        let p = prefix.display();
        std::fs::write(
            prefix.join("nginx.conf"),
            format!(
                "{user}daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
                 events {{}}\nhttp {{\n  access_log {p}/access.log;\n  client_body_temp_path {p}/body;\n\
                 proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n\
                 scgi_temp_path {p}/scgi;\n  include {p}/site.conf;\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nginx (scripts/setup installs Debian's nginx-light)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

#[test]
fn nginx_in_front_of_two_replicas_spreads_requests_and_skips_a_dead_one() {
    let Setting {
        pg, tenants, cache, ..
    } = &setting();
    let a = replica(pg, tenants, cache, &[]);
    let b = replica(pg, tenants, cache, &[]);
    let (a_addr, b_addr) = (
        a.url.strip_prefix("http://").unwrap().to_owned(),
        b.url.strip_prefix("http://").unwrap().to_owned(),
    );
    let nginx = Nginx::start(&[&a_addr, &b_addr]);
    let run = |server: &Server, phase: &str| {
        let out = Command::new(venv_bin("python"))
            .args(["through_nginx.py", phase])
            .current_dir(script_dir())
            .envs(server.env())
            .env("DEEPWASM_URL", &nginx.url)
            .env("DEEPWASM_URL_A", &a.url)
            .env("DEEPWASM_URL_B", &b.url)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        server.check(&format!("through_nginx.py {phase}"), &out);
    };
    run(&b, "both");
    let b_url = b.url.clone();
    a.kill();
    let out = Command::new(venv_bin("python"))
        .args(["through_nginx.py", "one"])
        .current_dir(script_dir())
        .envs(b.env())
        .env("DEEPWASM_URL", &nginx.url)
        .env("DEEPWASM_URL_B", &b_url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    b.check("through_nginx.py one", &out);
}
