//! State that several deepwasm replicas share through PostgreSQL: tenants'
//! plugin registry (component bytes, content-addressed, with names and
//! owners), the usage ledger, the token windows of `tokens_per_minute`,
//! and a lease per running request for `max_concurrent_requests`.
//!
//! [`PgState::connect`] opens a pool and brings the schema up to date
//! ([`migrate`]); every operation is bounded by [`OP_TIMEOUT`], and a
//! database that cannot be reached is [`StateError::Unavailable`], which
//! the server answers with 503 and `Retry-After`. The [`Ledger`] writes
//! usage and spends behind the requests that make them.

mod ledger;
pub mod migrate;
mod registry;
mod responses;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use ledger::{
    Admit, LEASE_TTL, Lease, Ledger, LedgerStats, USAGE_EVERY, UsageSnapshot, UsageTotals,
};
pub use registry::{PluginRow, Put};
pub use responses::NewResponse;

/// The longest any one operation on the database may take, connecting
/// included; past it the database counts as unavailable.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections a replica keeps to the database, at most.
pub const POOL_SIZE: usize = 16;

/// Why a state operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StateError {
    /// The database cannot be reached, or did not answer in time: retry.
    #[error("the state database is unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error of ours (a bug or a schema
    /// mismatch), not a connection problem.
    #[error("the state database refused an operation: {0}")]
    Database(String),
    #[error("the state database's schema: {0}")]
    Schema(String),
    #[error("bad --state URL: {0}")]
    Config(String),
}

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Errors with a SQLSTATE are the server's answer; of the rest, those
        // of the connection (refused, reset, closed, timed out) mean the
        // database is away, and any other (a parameter that does not fit
        // its column, say) is ours.
        let unavailable = match e.code() {
            Some(code) => is_unavailable_code(code.code()),
            None => {
                e.is_closed()
                    || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
                    || e.to_string().contains("connect")
            }
        };
        if unavailable {
            StateError::Unavailable(display_error(&e))
        } else {
            StateError::Database(display_error(&e))
        }
    }
}

impl From<deadpool_postgres::PoolError> for StateError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StateError::Unavailable(other.to_string()),
        }
    }
}

/// SQLSTATEs that mean "the server is going away or not taking work":
/// admin shutdown, crash shutdown, cannot connect now, too many
/// connections.
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// An error with its cause: tokio-postgres's own text is often only "db
/// error" or "error connecting to server".
fn display_error(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{}: {}", db.code().code(), db.message()),
        (None, Some(src)) => format!("{e}: {src}"),
        (None, None) => e.to_string(),
    }
}

/// A connection string with its password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // `key=value` form.
        return url
            .split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Run `op` within [`OP_TIMEOUT`].
pub(crate) async fn bounded<T>(
    what: &str,
    op: impl Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(r) => r,
        Err(_) => Err(StateError::Unavailable(format!(
            "{what} took longer than {OP_TIMEOUT:?}"
        ))),
    }
}

/// A replica's handle on the shared state.
#[derive(Clone)]
pub struct PgState {
    pool: Pool,
    /// This server process: usage rows and leases are its own.
    process: String,
    url: String,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgState")
            .field("url", &self.url)
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

impl PgState {
    /// Connect to `url` (`postgres://user[:password]@host[:port]/db`, or
    /// `?host=/socket/dir`) and migrate the schema. Fails, naming the
    /// database, when it cannot be reached within [`CONNECT_TIMEOUT`].
    pub async fn connect(url: &str) -> Result<PgState, StateError> {
        let shown = redact(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StateError::Config(format!("{shown}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("deepwasm");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StateError::Config(e.to_string()))?;
        let process = format!(
            "{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 8]>())
        );
        let state = PgState {
            pool,
            process,
            url: shown.clone(),
        };
        let mut conn = state.conn().await.map_err(|e| match e {
            StateError::Unavailable(why) => {
                StateError::Unavailable(format!("cannot connect to {shown}: {why}"))
            }
            other => other,
        })?;
        bounded("migrating the schema", migrate::migrate(&mut conn)).await?;
        Ok(state)
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This process's name in the usage ledger and the leases.
    pub fn process(&self) -> &str {
        &self.process
    }

    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, StateError> {
        Ok(self.pool.get().await?)
    }

    /// Run one statement (prepared once per pooled connection) and answer
    /// its rows.
    pub(crate) async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StateError> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(sql).await?;
        Ok(conn.query(&stmt, params).await?)
    }

    /// Run one statement (prepared once per pooled connection) and answer
    /// how many rows it changed.
    pub(crate) async fn run(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StateError> {
        let conn = self.conn().await?;
        let stmt = conn.prepare_cached(sql).await?;
        Ok(conn.execute(&stmt, params).await?)
    }

    /// Whether the database answers now.
    pub async fn ping(&self) -> Result<(), StateError> {
        bounded("a ping", async {
            self.conn().await?.batch_execute("").await?;
            Ok(())
        })
        .await
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/deepwasm"),
            "postgres://app:***@db:5432/deepwasm"
        );
        assert_eq!(
            redact("postgres://app@db/deepwasm"),
            "postgres://app@db/deepwasm"
        );
        assert_eq!(
            redact("host=/tmp password=pw dbname=x"),
            "host=/tmp password=*** dbname=x"
        );
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in migrate::MIGRATIONS.iter().enumerate() {
            assert_eq!(m.0 as usize, i + 1, "{}", m.1);
        }
    }
}
