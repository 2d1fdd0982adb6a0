//! The Responses API's stored responses, shared by replicas: a response
//! created through one continues (`previous_response_id`), reads and
//! deletes through any other. The server's caps hold per tenant: past
//! them, the tenant's oldest responses go, in the same transaction as the
//! new one.

use crate::{PgState, StateError, bounded};

/// A response to store.
#[derive(Clone, Copy, Debug)]
pub struct NewResponse<'a> {
    pub id: &'a str,
    /// The conversation it ends, as JSON.
    pub messages: &'a str,
    /// The response object, as JSON.
    pub object: &'a str,
    /// What it counts against its tenant's byte budget.
    pub bytes: usize,
}

impl PgState {
    /// Store `tenant`'s `response`, then drop its oldest responses past
    /// `max_count` or `max_bytes`.
    pub async fn put_response(
        &self,
        tenant: &str,
        response: &NewResponse<'_>,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<(), StateError> {
        let NewResponse {
            id,
            messages,
            object,
            bytes,
        } = *response;
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let max_count = i64::try_from(max_count).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        bounded("storing a response", async {
            let mut conn = self.conn().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('deepwasm.responses:' || $1, 0))",
                &[&tenant],
            )
            .await?;
            tx.execute(
                "INSERT INTO responses (tenant, id, messages, object, bytes) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant, id) DO UPDATE
                 SET messages = excluded.messages, object = excluded.object, bytes = excluded.bytes",
                &[&tenant, &id, &messages, &object, &bytes],
            )
            .await?;
            // Newest first; keep while both running totals are within the
            // caps.
            tx.execute(
                "DELETE FROM responses r USING (
                     SELECT id,
                            row_number() OVER w AS n,
                            (sum(bytes) OVER w)::bigint AS total
                       FROM responses WHERE tenant = $1
                     WINDOW w AS (ORDER BY created_at DESC, id DESC)
                 ) o
                 WHERE r.tenant = $1 AND r.id = o.id AND (o.n > $2 OR o.total > $3)",
                &[&tenant, &max_count, &max_bytes],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// `tenant`'s stored response `id`: its conversation and its object.
    pub async fn response(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(String, String)>, StateError> {
        bounded("reading a response", async {
            let rows = self
                .rows(
                    "SELECT messages, object FROM responses WHERE tenant = $1 AND id = $2",
                    &[&tenant, &id],
                )
                .await?;
            Ok(rows.first().map(|r| (r.get(0), r.get(1))))
        })
        .await
    }

    /// Delete `tenant`'s stored response `id`; whether there was one.
    pub async fn delete_response(&self, tenant: &str, id: &str) -> Result<bool, StateError> {
        bounded("deleting a response", async {
            Ok(self
                .run(
                    "DELETE FROM responses WHERE tenant = $1 AND id = $2",
                    &[&tenant, &id],
                )
                .await?
                == 1)
        })
        .await
    }
}
