//! The schema's migrations: SQL files in `host/state/migrations/`, applied
//! in order, each in its own transaction, and recorded in
//! `deepwasm_migrations`. Replicas starting together take a session
//! advisory lock first, so one applies them and the others find them done.

use deadpool_postgres::Object;

use crate::StateError;

/// Every migration, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "shared_state",
        include_str!("../migrations/0001_shared_state.sql"),
    ),
    (
        2,
        "responses",
        include_str!("../migrations/0002_responses.sql"),
    ),
];

/// The lock key replicas hold while migrating.
const MIGRATION_LOCK: i64 = 0x6465_6570_7761_736d; // "deepwasm"

/// Bring the database's schema up to this binary's. A database migrated by
/// a newer binary is refused rather than used with a schema it does not
/// know.
pub async fn migrate(conn: &mut Object) -> Result<Vec<i32>, StateError> {
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let applied = apply(conn).await;
    // The lock goes with the session too, but the pooled connection lives on.
    let unlocked = conn
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

async fn apply(conn: &mut Object) -> Result<Vec<i32>, StateError> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS deepwasm_migrations (
             version     integer PRIMARY KEY,
             name        text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let row = conn
        .query_one(
            "SELECT coalesce(max(version), 0) FROM deepwasm_migrations",
            &[],
        )
        .await?;
    let current: i32 = row.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StateError::Schema(format!(
            "the database's schema is at version {current}, newer than this binary's {known}: \
             run a binary at least as new as the one that migrated it"
        )));
    }
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| StateError::Schema(format!("migration {version} ({name}) failed: {e}")))?;
        tx.execute(
            "INSERT INTO deepwasm_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!("state: applied migration {version} ({name})");
        applied.push(version);
    }
    Ok(applied)
}
