//! What replicas count together: each request's lease (for
//! `max_concurrent_requests`), the tokens it spent (for
//! `tokens_per_minute`) and every tenant's usage totals.
//!
//! Admission is one round trip to the database ([`Ledger::admit`]). What
//! follows a request is written behind it by one writer task per replica:
//! - spends as soon as they are made (a few milliseconds behind the
//!   request), so a quota spent through one replica refuses on the others;
//! - lease releases likewise, and a renewal of the leases the process
//!   holds six times per time to live ([`LEASE_TTL`] by default);
//! - usage totals with them (whole, so a repeated write counts once), every
//!   [`USAGE_EVERY`] while idle, and at once when a replica answers
//!   `/v1/usage` or shuts down.
//!
//! While the database is away, what is not yet written stays pending in
//! memory (spends summed per tenant, totals as a snapshot) and is written
//! when it answers again. A replica killed outright loses at most what was
//! pending: the usage of the last [`USAGE_EVERY`] (longer if the database
//! was away); its leases expire after [`LEASE_TTL`].
//!
//! Releases that could not be written go with the replica's next
//! admission, in the same round trip, so a tenant's requests that ended
//! while the database was away never count against it once it answers
//! again. A lease whose admission reply was lost (the connection broke
//! after the commit) is held by no request and never renewed: it counts
//! until its time to live runs out, as a killed replica's do.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::{PgState, StateError, bounded};

/// How long a lease outlives its last renewal by default: a killed
/// replica's requests stop counting against their tenants' concurrency
/// this long after.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How many times a replica renews its leases within their time to live:
/// a lease survives a few failed renewals (a database restart).
const RENEWALS_PER_TTL: u32 = 6;

/// How often a replica writes its usage totals.
pub const USAGE_EVERY: Duration = Duration::from_secs(1);

/// How long spends are kept after their minute is over.
const SPEND_RETENTION_SECS: i64 = 120;

/// A tenant's usage, as `/v1/usage` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub plugin_calls: u64,
    pub plugin_fuel: u64,
    pub plugin_wall_us: u64,
    pub plugin_limit_hits: u64,
}

impl UsageTotals {
    fn columns(&self) -> [i64; 7] {
        [
            self.requests,
            self.prompt_tokens,
            self.completion_tokens,
            self.plugin_calls,
            self.plugin_fuel,
            self.plugin_wall_us,
            self.plugin_limit_hits,
        ]
        .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
    }
}

/// Every tenant's usage in this process, by tenant name.
pub type UsageSnapshot = Arc<dyn Fn() -> Vec<(String, UsageTotals)> + Send + Sync>;

/// How an admission ended.
#[derive(Debug)]
pub enum Admit {
    /// Admitted: the lease counts the request until it is dropped.
    Admitted(Lease),
    /// The tenant spent `spent` tokens in the rolling minute.
    TokensSpent { spent: u64, retry_after_s: u64 },
    /// The tenant has `running` requests running on all replicas.
    Busy { running: u64, retry_after_s: u64 },
}

/// A running request's place among its tenant's, on every replica.
/// Dropping it releases the place (behind the request, by the writer).
#[derive(Debug)]
pub struct Lease {
    id: i64,
    book: Arc<LeaseBook>,
    events: mpsc::UnboundedSender<Event>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.book.release(self.id);
        let _ = self.events.send(Event::Released);
    }
}

/// The leases a replica holds, and those it let go of that the database
/// still counts.
#[derive(Debug, Default)]
struct LeaseBook {
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    held: HashSet<i64>,
    released: Vec<i64>,
}

impl LeaseBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, id: i64) {
        self.lock().held.insert(id);
    }

    fn release(&self, id: i64) {
        let mut book = self.lock();
        book.held.remove(&id);
        book.released.push(id);
    }

    /// The releases not yet written, taken to write.
    fn take_released(&self) -> Vec<i64> {
        std::mem::take(&mut self.lock().released)
    }

    /// Releases whose write failed, to go again.
    fn unwritten(&self, ids: Vec<i64>) {
        self.lock().released.extend(ids);
    }

    fn held(&self) -> Vec<i64> {
        self.lock().held.iter().copied().collect()
    }
}

#[derive(Debug)]
enum Event {
    Spend(String, u64),
    Released,
    Flush(oneshot::Sender<Result<(), StateError>>),
    Close(oneshot::Sender<Result<(), StateError>>),
}

/// A replica's writer of spends, releases and usage, and its admissions.
#[derive(Clone)]
pub struct Ledger {
    state: PgState,
    events: mpsc::UnboundedSender<Event>,
    lease_ttl: Duration,
    book: Arc<LeaseBook>,
    stats: Arc<LedgerStats>,
}

/// How the shared state has been answering, for `/metrics`.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Writes of usage, spends or leases that failed (each retried).
    pub failed_writes: AtomicU64,
    /// Admissions answered 503 because the database did not answer.
    pub failed_admissions: AtomicU64,
    /// Whether usage, spends or releases are pending after a failed write.
    pub behind: AtomicBool,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("process", &self.state.process)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Start the writer on the current Tokio runtime; `usage` reads this
    /// process's totals. Leases live [`LEASE_TTL`] past their last renewal.
    pub fn start(state: PgState, usage: UsageSnapshot) -> Ledger {
        Ledger::with_lease_ttl(state, usage, LEASE_TTL)
    }

    /// [`Ledger::start`] with leases that live `ttl` (at least a second)
    /// past their last renewal.
    pub fn with_lease_ttl(state: PgState, usage: UsageSnapshot, ttl: Duration) -> Ledger {
        let lease_ttl = ttl.max(Duration::from_secs(1));
        let (events, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(LedgerStats::default());
        let book = Arc::new(LeaseBook::default());
        let writer = Writer::new(state.clone(), usage, lease_ttl, book.clone(), stats.clone());
        tokio::spawn(writer.run(rx));
        Ledger {
            state,
            events,
            lease_ttl,
            book,
            stats,
        }
    }

    /// How the database has been answering this replica.
    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    pub fn state(&self) -> &PgState {
        &self.state
    }

    /// Admit a request of `tenant` across replicas: refused while the
    /// tenant holds `max_running` leases or spent `tokens_per_minute`.
    /// Releases the writer could not write yet go first, on the same
    /// connection.
    pub async fn admit(
        &self,
        tenant: &str,
        max_running: usize,
        tokens_per_minute: Option<u64>,
    ) -> Result<Admit, StateError> {
        let released = self.book.take_released();
        let row = bounded("an admission", async {
            let conn = self.state.conn().await?;
            if !released.is_empty() {
                conn.execute("DELETE FROM leases WHERE id = ANY($1)", &[&released])
                    .await?;
            }
            let stmt = conn
                .prepare_cached("SELECT lease, running, spent, retry_after_s FROM deepwasm_admit($1, $2, $3, $4, $5)")
                .await?;
            let max = i32::try_from(max_running).unwrap_or(i32::MAX);
            let tpm = tokens_per_minute.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
            let ttl = i32::try_from(self.lease_ttl.as_millis()).unwrap_or(i32::MAX);
            Ok(conn
                .query_one(&stmt, &[&tenant, &self.state.process, &max, &tpm, &ttl])
                .await?)
        })
        .await
        .inspect_err(|_| {
            self.book.unwritten(released.clone());
            self.stats.failed_admissions.fetch_add(1, Ordering::Relaxed);
        })?;
        let lease: Option<i64> = row.get(0);
        let running: Option<i32> = row.get(1);
        let spent: i64 = row.get(2);
        let retry_after_s = row.get::<_, i32>(3).max(1) as u64;
        Ok(match (lease, running) {
            (Some(id), _) => {
                self.book.hold(id);
                Admit::Admitted(Lease {
                    id,
                    book: self.book.clone(),
                    events: self.events.clone(),
                })
            }
            (None, None) => Admit::TokensSpent {
                spent: spent.max(0) as u64,
                retry_after_s,
            },
            (None, Some(running)) => Admit::Busy {
                running: running.max(0) as u64,
                retry_after_s,
            },
        })
    }

    /// Count tokens `tenant` spent now.
    pub fn spend(&self, tenant: &str, tokens: u64) {
        if tokens > 0 {
            let _ = self.events.send(Event::Spend(tenant.to_owned(), tokens));
        }
    }

    /// Write everything pending now.
    pub async fn flush(&self) -> Result<(), StateError> {
        self.ask(Event::Flush).await
    }

    /// Write everything pending and stop the writer (a clean shutdown).
    pub async fn close(&self) -> Result<(), StateError> {
        self.ask(Event::Close).await
    }

    async fn ask(
        &self,
        event: impl FnOnce(oneshot::Sender<Result<(), StateError>>) -> Event,
    ) -> Result<(), StateError> {
        let stopped = || StateError::Unavailable("the state writer has stopped".into());
        let (tx, rx) = oneshot::channel();
        self.events.send(event(tx)).map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// `tenant`'s usage summed over every process that served it, this
    /// one's written first.
    pub async fn usage(&self, tenant: &str) -> Result<UsageTotals, StateError> {
        self.flush().await?;
        bounded("reading usage", async {
            let rows = self
                .state
                .rows(
                    "SELECT coalesce(sum(requests), 0)::bigint, coalesce(sum(prompt_tokens), 0)::bigint,
                            coalesce(sum(completion_tokens), 0)::bigint, coalesce(sum(plugin_calls), 0)::bigint,
                            coalesce(sum(plugin_fuel), 0)::bigint, coalesce(sum(plugin_wall_us), 0)::bigint,
                            coalesce(sum(plugin_limit_hits), 0)::bigint
                       FROM usage_totals WHERE tenant = $1",
                    &[&tenant],
                )
                .await?;
            let row = rows
                .first()
                .ok_or_else(|| StateError::Database("a sum without a row".into()))?;
            let v = |i: usize| row.get::<_, i64>(i).max(0) as u64;
            Ok(UsageTotals {
                requests: v(0),
                prompt_tokens: v(1),
                completion_tokens: v(2),
                plugin_calls: v(3),
                plugin_fuel: v(4),
                plugin_wall_us: v(5),
                plugin_limit_hits: v(6),
            })
        })
        .await
    }
}

/// The writer task's pending work.
struct Writer {
    state: PgState,
    usage: UsageSnapshot,
    lease_ttl: Duration,
    stats: Arc<LedgerStats>,
    spends: HashMap<String, u64>,
    book: Arc<LeaseBook>,
    released: bool,
    written: HashMap<String, UsageTotals>,
    last_usage: Instant,
    last_renew: Instant,
    last_prune: Instant,
    failing: bool,
}

impl Writer {
    fn new(
        state: PgState,
        usage: UsageSnapshot,
        lease_ttl: Duration,
        book: Arc<LeaseBook>,
        stats: Arc<LedgerStats>,
    ) -> Writer {
        let now = Instant::now();
        Writer {
            state,
            usage,
            lease_ttl,
            stats,
            spends: HashMap::new(),
            book,
            released: false,
            written: HashMap::new(),
            last_usage: now,
            last_renew: now,
            last_prune: now - Duration::from_secs(3600),
            failing: false,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut tick = tokio::time::interval(USAGE_EVERY.min(self.lease_ttl / RENEWALS_PER_TTL));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut waiting = Vec::new();
            let mut closing = None;
            let mut all = false;
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.take(ev, &mut waiting, &mut closing),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            while let Ok(ev) = rx.try_recv() {
                self.take(ev, &mut waiting, &mut closing);
            }
            // Usage goes with every spend or release (a request's end), so
            // every replica sees it within milliseconds; idle, once per
            // `USAGE_EVERY` (plugin work between requests).
            if !waiting.is_empty()
                || closing.is_some()
                || !self.spends.is_empty()
                || self.released
                || self.last_usage.elapsed() >= USAGE_EVERY
            {
                all = true;
            }
            let result = self.write(all).await;
            let answer = result.clone();
            for w in waiting {
                let _ = w.send(answer.clone());
            }
            if let Some(c) = closing {
                let _ = c.send(answer);
                return;
            }
            if result.is_err() {
                // Retry after a pause rather than on every new event.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    fn take(
        &mut self,
        ev: Event,
        waiting: &mut Vec<oneshot::Sender<Result<(), StateError>>>,
        closing: &mut Option<oneshot::Sender<Result<(), StateError>>>,
    ) {
        match ev {
            Event::Spend(tenant, n) => *self.spends.entry(tenant).or_default() += n,
            Event::Released => self.released = true,
            Event::Flush(w) => waiting.push(w),
            Event::Close(c) => *closing = Some(c),
        }
    }

    /// Write what is pending: spends and releases always, usage totals
    /// when `all`. What fails stays pending.
    async fn write(&mut self, all: bool) -> Result<(), StateError> {
        let result = self.write_inner(all).await;
        if result.is_err() {
            self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.behind.store(result.is_err(), Ordering::Relaxed);
        match (&result, self.failing) {
            (Err(e @ StateError::Unavailable(_)), false) => {
                tracing::warn!("state: cannot write usage, spends or leases (kept to retry): {e}");
                self.failing = true;
            }
            (Err(e), false) => {
                tracing::error!(
                    "state: writing usage, spends or leases failed (kept to retry): {e}"
                );
                self.failing = true;
            }
            (Ok(()), true) => {
                tracing::info!("state: the database answers again; pending usage written");
                self.failing = false;
            }
            _ => {}
        }
        result
    }

    async fn write_inner(&mut self, all: bool) -> Result<(), StateError> {
        let process = self.state.process.clone();
        if !self.spends.is_empty() {
            let (tenants, tokens): (Vec<String>, Vec<i64>) = self
                .spends
                .iter()
                .map(|(t, n)| (t.clone(), i64::try_from(*n).unwrap_or(i64::MAX)))
                .unzip();
            bounded("writing spends", async {
                self.state.run(
                    "INSERT INTO token_spend (tenant, second, tokens)
                     SELECT t, floor(extract(epoch FROM clock_timestamp()))::bigint, n
                       FROM unnest($1::text[], $2::bigint[]) AS s(t, n)
                     ON CONFLICT (tenant, second) DO UPDATE SET tokens = token_spend.tokens + excluded.tokens",
                    &[&tenants, &tokens],
                )
                .await?;
                Ok(())
            })
            .await?;
            self.spends.clear();
        }
        let released = self.book.take_released();
        if !released.is_empty() {
            bounded("releasing leases", async {
                self.state
                    .run("DELETE FROM leases WHERE id = ANY($1)", &[&released])
                    .await?;
                Ok(())
            })
            .await
            .inspect_err(|_| self.book.unwritten(released))?;
        }
        self.released = false;
        if self.last_renew.elapsed() >= self.lease_ttl / RENEWALS_PER_TTL {
            let ttl = i32::try_from(self.lease_ttl.as_millis()).unwrap_or(i32::MAX);
            let held = self.book.held();
            bounded("renewing leases", async {
                self.state.run(
                    "UPDATE leases SET expires_at = clock_timestamp() + $2::integer * interval '1 millisecond'
                      WHERE process = $1 AND id = ANY($3)",
                    &[&process, &ttl, &held],
                )
                .await?;
                Ok(())
            })
            .await?;
            self.last_renew = Instant::now();
        }
        if all {
            let changed: Vec<(String, UsageTotals)> = (self.usage)()
                .into_iter()
                .filter(|(t, u)| self.written.get(t) != Some(u))
                .collect();
            if !changed.is_empty() {
                let mut cols: [Vec<i64>; 7] = Default::default();
                for (_, u) in &changed {
                    for (col, v) in cols.iter_mut().zip(u.columns()) {
                        col.push(v);
                    }
                }
                let tenants: Vec<&str> = changed.iter().map(|(t, _)| t.as_str()).collect();
                bounded("writing usage", async {
                    self.state.run(
                        "INSERT INTO usage_totals (tenant, process, requests, prompt_tokens, completion_tokens,
                                                   plugin_calls, plugin_fuel, plugin_wall_us, plugin_limit_hits)
                         SELECT t, $1, a, b, c, d, e, f, g
                           FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                                       $7::bigint[], $8::bigint[], $9::bigint[]) AS u(t, a, b, c, d, e, f, g)
                         ON CONFLICT (tenant, process) DO UPDATE SET
                             requests = greatest(usage_totals.requests, excluded.requests),
                             prompt_tokens = greatest(usage_totals.prompt_tokens, excluded.prompt_tokens),
                             completion_tokens = greatest(usage_totals.completion_tokens, excluded.completion_tokens),
                             plugin_calls = greatest(usage_totals.plugin_calls, excluded.plugin_calls),
                             plugin_fuel = greatest(usage_totals.plugin_fuel, excluded.plugin_fuel),
                             plugin_wall_us = greatest(usage_totals.plugin_wall_us, excluded.plugin_wall_us),
                             plugin_limit_hits = greatest(usage_totals.plugin_limit_hits, excluded.plugin_limit_hits),
                             updated_at = now()",
                        &[
                            &process, &tenants, &cols[0], &cols[1], &cols[2], &cols[3], &cols[4],
                            &cols[5], &cols[6],
                        ],
                    )
                    .await?;
                    Ok(())
                })
                .await?;
                self.written.extend(changed);
            }
            self.last_usage = Instant::now();
        }
        if self.last_prune.elapsed() >= Duration::from_secs(60) {
            bounded("pruning spends", async {
                self.state
                    .run(
                        "DELETE FROM token_spend
                      WHERE second < floor(extract(epoch FROM clock_timestamp()))::bigint - $1",
                        &[&SPEND_RETENTION_SECS],
                    )
                    .await?;
                Ok(())
            })
            .await?;
            self.last_prune = Instant::now();
        }
        Ok(())
    }
}
