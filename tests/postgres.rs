//! A throwaway PostgreSQL cluster for the tests of the shared state: Debian's
//! `postgresql` package (which `scripts/setup` installs), a new cluster in a
//! temporary directory, run as the unprivileged `postgres` user when the
//! tests run as root (PostgreSQL refuses to run as root), and stopped when
//! dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory of PostgreSQL's server binaries.
fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not installed ({}: {e}); scripts/setup installs Debian's `postgresql`",
                root.display()
            )
        })
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server under /usr/lib/postgresql")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A command run as the cluster's owner.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running cluster, stopped (and its directory removed) when dropped.
pub(crate) struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Create a cluster and start it.
    pub(crate) fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the cluster's directory failed");
        }
        let out = as_owner(&bin_dir().join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "deepwasm", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            port: free_port(),
            child: None,
        };
        pg.resume();
        pg
    }

    /// `postgres://deepwasm@127.0.0.1:PORT/postgres`.
    pub(crate) fn url(&self) -> String {
        format!("postgres://deepwasm@127.0.0.1:{}/postgres", self.port)
    }

    /// Start the stopped cluster again, on the same port and data.
    pub(crate) fn resume(&mut self) {
        assert!(self.child.is_none(), "the cluster is running");
        let log = std::fs::File::create(self.dir.path().join(format!("log-{}", self.port)))
            .or_else(|_| std::fs::File::create("/dev/null"))
            .unwrap();
        let child = as_owner(&bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin_dir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the cluster as an operator would (a fast shutdown: sessions
    /// are cut, committed work kept).
    pub(crate) fn pause(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }

    /// What the server logged.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("log-{}", self.port)))
            .unwrap_or_default()
    }

    /// Run SQL through `psql`, answering its unaligned output.
    pub(crate) fn psql(&self, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .args(["-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql -c {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pause();
    }
}

/// The shared state against a real database, below the server: what two
/// replicas' concurrent operations leave.
mod state {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use deepwasm_state::{
        Admit, Ledger, NewResponse, PgState, PluginRow, Put, StateError, UsageTotals,
    };

    use super::Postgres;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    type Totals = Arc<Mutex<Vec<(String, UsageTotals)>>>;

    fn ledger(state: PgState) -> (Ledger, Totals) {
        let totals: Totals = Arc::default();
        let read = totals.clone();
        let ledger = Ledger::start(state, Arc::new(move || read.lock().unwrap().clone()));
        (ledger, totals)
    }

    fn row(id_byte: char, name: &str) -> PluginRow {
        PluginRow {
            id: std::iter::repeat_n(id_byte, 64).collect(),
            name: name.into(),
            world: "reward".into(),
            size_bytes: 3,
            created_at: 1,
            info: "{}".into(),
        }
    }

    #[test]
    fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
        let pg = Postgres::start();
        let rt = runtime();
        rt.block_on(async {
            let url = pg.url();
            let starts: Vec<_> = (0..4)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move { PgState::connect(&url).await })
                })
                .collect();
            for s in starts {
                s.await.unwrap().unwrap();
            }
        });
        assert_eq!(
            pg.psql("SELECT count(*) FROM deepwasm_migrations"),
            deepwasm_state::migrate::MIGRATIONS.len().to_string()
        );
        // A database an older binary migrated (without the last migration)
        // gets what it lacks.
        pg.psql("DROP TABLE responses; DELETE FROM deepwasm_migrations WHERE version = 2");
        rt.block_on(PgState::connect(&pg.url())).unwrap();
        assert_eq!(pg.psql("SELECT count(*) FROM responses"), "0");
        assert_eq!(pg.psql("SELECT max(version) FROM deepwasm_migrations"), "2");
        pg.psql("INSERT INTO deepwasm_migrations (version, name) VALUES (99, 'future')");
        let err = rt.block_on(PgState::connect(&pg.url())).unwrap_err();
        assert!(
            matches!(err, StateError::Schema(_)) && err.to_string().contains("newer"),
            "{err}"
        );
    }

    #[test]
    fn a_database_that_cannot_be_reached_is_a_clear_error_in_bounded_time() {
        let rt = runtime();
        let started = Instant::now();
        let port = super::free_port();
        let err = rt
            .block_on(PgState::connect(&format!(
                "postgres://deepwasm:pw@127.0.0.1:{port}/postgres"
            )))
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StateError::Unavailable(_)), "{text}");
        assert!(
            text.contains(&format!("127.0.0.1:{port}")) && !text.contains("pw@"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn admissions_hold_a_tenants_limits_across_replicas() {
        let pg = Postgres::start();
        let rt = runtime();
        rt.block_on(async {
            let (a, _) = ledger(PgState::connect(&pg.url()).await.unwrap());
            let (b, _) = ledger(PgState::connect(&pg.url()).await.unwrap());
            // 40 admissions at once, half through each replica, for a
            // tenant allowed 3 at a time: exactly 3 get in.
            let tries: Vec<_> = (0..40)
                .map(|i| {
                    let l = if i % 2 == 0 { a.clone() } else { b.clone() };
                    tokio::spawn(async move { l.admit("t", 3, None).await.unwrap() })
                })
                .collect();
            let mut leases = Vec::new();
            let mut busy = 0;
            for t in tries {
                match t.await.unwrap() {
                    Admit::Admitted(lease) => leases.push(lease),
                    Admit::Busy { running, .. } => {
                        assert_eq!(running, 3);
                        busy += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!((leases.len(), busy), (3, 37));
            // Another tenant is not counted against this one.
            assert!(matches!(
                a.admit("u", 1, None).await.unwrap(),
                Admit::Admitted(_)
            ));
            // A place freed on one replica is free on the other.
            leases.pop();
            a.flush().await.unwrap();
            b.flush().await.unwrap();
            assert!(matches!(
                b.admit("t", 3, None).await.unwrap(),
                Admit::Admitted(_)
            ));

            // Tokens spent through A refuse on B once the minute is spent.
            a.spend("m", 30);
            a.flush().await.unwrap();
            assert!(matches!(
                b.admit("m", 8, Some(40)).await.unwrap(),
                Admit::Admitted(_)
            ));
            a.spend("m", 15);
            a.flush().await.unwrap();
            match b.admit("m", 8, Some(40)).await.unwrap() {
                Admit::TokensSpent {
                    spent,
                    retry_after_s,
                } => {
                    assert_eq!(spent, 45);
                    assert!((1..=60).contains(&retry_after_s), "{retry_after_s}");
                }
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn leases_are_renewed_while_held_and_expire_when_their_replica_is_gone() {
        let pg = Postgres::start();
        let rt = runtime();
        rt.block_on(async {
            // Long enough that a loaded machine still renews in time.
            let ttl = Duration::from_secs(2);
            let usage: deepwasm_state::UsageSnapshot = Arc::new(Vec::new);
            let live = Ledger::with_lease_ttl(
                PgState::connect(&pg.url()).await.unwrap(),
                usage.clone(),
                ttl,
            );
            let dying =
                Ledger::with_lease_ttl(PgState::connect(&pg.url()).await.unwrap(), usage, ttl);
            let Admit::Admitted(held) = live.admit("t", 2, None).await.unwrap() else {
                panic!("refused")
            };
            let Admit::Admitted(lost) = dying.admit("t", 2, None).await.unwrap() else {
                panic!("refused")
            };
            // The dying replica stops (no more renewals, no release).
            std::mem::forget(lost);
            dying.close().await.unwrap();
            // Past the time to live, the live replica's lease still counts
            // (renewed meanwhile) and the dead one's does not.
            tokio::time::sleep(ttl + Duration::from_millis(1500)).await;
            let Admit::Admitted(second) = live.admit("t", 2, None).await.unwrap() else {
                panic!("the dead replica's lease never expired")
            };
            match live.admit("t", 2, None).await.unwrap() {
                Admit::Busy { running, .. } => assert_eq!(running, 2),
                other => panic!("the held lease was not renewed: {other:?}"),
            }
            drop((held, second));
            live.flush().await.unwrap();
            assert!(matches!(
                live.admit("t", 2, None).await.unwrap(),
                Admit::Admitted(_)
            ));
        });
    }

    #[test]
    fn requests_that_ended_while_the_database_was_away_do_not_count_once_it_is_back() {
        let mut pg = Postgres::start();
        let rt = runtime();
        let usage: deepwasm_state::UsageSnapshot = Arc::new(Vec::new);
        let ledger =
            rt.block_on(async { Ledger::start(PgState::connect(&pg.url()).await.unwrap(), usage) });
        let Admit::Admitted(lease) = rt.block_on(ledger.admit("t", 1, None)).unwrap() else {
            panic!("refused")
        };
        // The request ends while the database is away: its release cannot
        // be written.
        pg.pause();
        drop(lease);
        assert!(rt.block_on(ledger.flush()).is_err());
        pg.resume();
        // The next admission, at once, finds the place free: the release
        // goes with it rather than behind the writer's retry.
        match rt.block_on(ledger.admit("t", 1, None)).unwrap() {
            Admit::Admitted(_) => {}
            other => panic!("a request that ended while away still counted: {other:?}"),
        }
        assert_eq!(pg.psql("SELECT count(*) FROM leases").trim(), "1");
    }

    #[test]
    fn stored_responses_are_shared_and_held_to_their_tenants_caps() {
        let pg = Postgres::start();
        let rt = runtime();
        rt.block_on(async {
            let a = PgState::connect(&pg.url()).await.unwrap();
            let b = PgState::connect(&pg.url()).await.unwrap();
            for i in 0..5 {
                let id = format!("r{i}");
                let object = format!("{{\"n\":{i}}}");
                let r = NewResponse {
                    id: &id,
                    messages: "[]",
                    object: &object,
                    bytes: 10,
                };
                a.put_response("t", &r, 3, 1000).await.unwrap();
            }
            // The newest three, seen through the other replica.
            for i in 0..5 {
                let got = b.response("t", &format!("r{i}")).await.unwrap();
                assert_eq!(got.is_some(), i >= 2, "r{i}");
            }
            assert_eq!(
                b.response("t", "r4").await.unwrap(),
                Some(("[]".into(), "{\"n\":4}".into()))
            );
            // Bytes: two of 400 fit in 1000, a third pushes the oldest out.
            for i in 0..3 {
                let id = format!("big{i}");
                let r = NewResponse {
                    id: &id,
                    messages: "[]",
                    object: "{}",
                    bytes: 400,
                };
                a.put_response("u", &r, 100, 1000).await.unwrap();
            }
            assert!(b.response("u", "big0").await.unwrap().is_none());
            assert!(b.response("u", "big2").await.unwrap().is_some());
            // Tenants are apart.
            assert!(b.response("u", "r4").await.unwrap().is_none());
            assert!(!b.delete_response("u", "r4").await.unwrap());
            assert!(b.delete_response("t", "r4").await.unwrap());
            assert!(a.response("t", "r4").await.unwrap().is_none());
        });
    }

    #[test]
    fn uploads_through_two_replicas_keep_names_unique_and_counts_within_the_limit() {
        let pg = Postgres::start();
        let rt = runtime();
        rt.block_on(async {
            let a = PgState::connect(&pg.url()).await.unwrap();
            let b = PgState::connect(&pg.url()).await.unwrap();
            // The same name, different bytes, through both at once: one wins.
            let (ra, rb) = (row('a', "same"), row('b', "same"));
            let (x, y) = tokio::join!(
                a.put_plugin("t", &ra, b"abc", 10),
                b.put_plugin("t", &rb, b"abd", 10)
            );
            let outcomes = [x.unwrap(), y.unwrap()];
            let created = outcomes
                .iter()
                .filter(|p| matches!(p, Put::Created(_)))
                .count();
            let taken = outcomes
                .iter()
                .filter(|p| matches!(p, Put::NameTaken { .. }))
                .count();
            assert_eq!((created, taken), (1, 1), "{outcomes:?}");
            // Eight more at once with room for three.
            let puts: Vec<_> = (0..8u8)
                .map(|i| {
                    let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                    let r = row(char::from(b'0' + i), &format!("p{i}"));
                    tokio::spawn(async move { s.put_plugin("t", &r, &[i], 4).await.unwrap() })
                })
                .collect();
            let mut stored = 0;
            for p in puts {
                if matches!(p.await.unwrap(), Put::Created(_)) {
                    stored += 1;
                }
            }
            assert_eq!(stored, 3);
            assert_eq!(b.plugins("t").await.unwrap().len(), 4);
            // Bytes two tenants share stay until the last lets go.
            let shared = row('e', "shared");
            a.put_plugin("u", &shared, b"zz", 4).await.unwrap();
            a.put_plugin("v", &shared, b"zz", 4).await.unwrap();
            assert!(b.delete_plugin("u", "shared").await.unwrap().is_some());
            assert_eq!(
                b.plugin_bytes(&shared.id).await.unwrap().as_deref(),
                Some(&b"zz"[..])
            );
            assert!(a.delete_plugin("v", &shared.id).await.unwrap().is_some());
            assert_eq!(b.plugin_bytes(&shared.id).await.unwrap(), None);
            assert!(a.delete_plugin("v", &shared.id).await.unwrap().is_none());
        });
    }

    #[test]
    fn usage_is_written_whole_summed_over_processes_and_kept_while_the_database_is_away() {
        let mut pg = Postgres::start();
        let rt = runtime();
        let (a, a_totals, b, b_totals) = rt.block_on(async {
            let (a, at) = ledger(PgState::connect(&pg.url()).await.unwrap());
            let (b, bt) = ledger(PgState::connect(&pg.url()).await.unwrap());
            (a, at, b, bt)
        });
        let set = |t: &Totals, requests: u64, tokens: u64| {
            *t.lock().unwrap() = vec![(
                "t".to_owned(),
                UsageTotals {
                    requests,
                    prompt_tokens: tokens,
                    ..UsageTotals::default()
                },
            )];
        };
        set(&a_totals, 2, 20);
        set(&b_totals, 3, 30);
        rt.block_on(async {
            // Written twice, counted once.
            a.flush().await.unwrap();
            a.flush().await.unwrap();
            let u = b.usage("t").await.unwrap();
            assert_eq!((u.requests, u.prompt_tokens), (5, 50));
            assert_eq!(a.usage("t").await.unwrap(), u);
        });
        // The database goes away: what happens meanwhile is kept, and
        // written when it is back.
        pg.pause();
        set(&a_totals, 7, 70);
        a.spend("t", 5);
        let started = Instant::now();
        let err = rt.block_on(a.usage("t")).unwrap_err();
        assert!(matches!(err, StateError::Unavailable(_)), "{err}");
        let err = rt.block_on(b.admit("t", 4, None)).unwrap_err();
        assert!(matches!(err, StateError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(15));
        pg.resume();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            let u = loop {
                match b.usage("t").await {
                    Ok(u) if u.requests == 10 => break u,
                    _ if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    other => panic!("usage never caught up: {other:?}"),
                }
            };
            assert_eq!(u.prompt_tokens, 100);
            match b.admit("t", 4, Some(5)).await.unwrap() {
                Admit::TokensSpent { spent, .. } => assert_eq!(spent, 5),
                other => panic!("the spend made while away was lost: {other:?}"),
            }
            a.close().await.unwrap();
        });
    }
}
