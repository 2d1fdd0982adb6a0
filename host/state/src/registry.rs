//! Tenants' plugins: a component's bytes once per content id
//! (`plugin_blobs`), and a row per tenant naming it (`plugins`). An upload
//! writes both in one transaction, so a plugin is visible on every replica
//! whole or not at all, whatever happens to the replica that uploads it.

use tokio_postgres::Row;

use crate::{PgState, StateError, bounded};

/// What the registry keeps about a tenant's plugin besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginRow {
    pub id: String,
    pub name: String,
    /// The component's world, as the API names it.
    pub world: String,
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// What else the API lists (imports and exports), as JSON.
    pub info: String,
}

/// How an upload ended.
#[derive(Debug)]
pub enum Put {
    /// Stored now.
    Created(PluginRow),
    /// The tenant already stores these bytes.
    Existing(PluginRow),
    /// The tenant's plugin of that name is another component.
    NameTaken { id: String },
    /// The tenant stores its limit of plugins.
    TooMany,
}

const COLUMNS: &str = "id, name, world, size_bytes, created_at, info";

fn row(r: &Row) -> PluginRow {
    PluginRow {
        id: r.get(0),
        name: r.get(1),
        world: r.get(2),
        size_bytes: r.get::<_, i64>(3).max(0) as u64,
        created_at: r.get::<_, i64>(4).max(0) as u64,
        info: r.get(5),
    }
}

/// Order the transactions that store or drop a component's bytes: an
/// upload of the same bytes by another tenant either commits first (and
/// the delete sees its row and keeps the bytes) or waits and inserts them
/// again.
async fn lock_blob(tx: &deadpool_postgres::Transaction<'_>, id: &str) -> Result<(), StateError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('deepwasm.blob:' || $1, 0))",
        &[&id],
    )
    .await?;
    Ok(())
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl PgState {
    /// Store `bytes` (whose content id is `plugin.id`) as `tenant`'s plugin,
    /// unless the tenant stores it already, has another plugin of that name,
    /// or stores `max_plugins`. The tenant's uploads are ordered by a
    /// transaction-scoped advisory lock, so the name and count checks hold
    /// across replicas.
    pub async fn put_plugin(
        &self,
        tenant: &str,
        plugin: &PluginRow,
        bytes: &[u8],
        max_plugins: usize,
    ) -> Result<Put, StateError> {
        bounded("storing a plugin", async {
            let mut conn = self.conn().await?;
            let tx = conn.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('deepwasm.plugins:' || $1, 0))",
                &[&tenant],
            )
            .await?;
            let mine = tx
                .query(
                    &format!("SELECT {COLUMNS} FROM plugins WHERE tenant = $1"),
                    &[&tenant],
                )
                .await?;
            let mine: Vec<PluginRow> = mine.iter().map(row).collect();
            if let Some(same) = mine.iter().find(|p| p.id == plugin.id) {
                return Ok(Put::Existing(same.clone()));
            }
            if let Some(other) = mine.iter().find(|p| p.name == plugin.name) {
                return Ok(Put::NameTaken {
                    id: other.id.clone(),
                });
            }
            if mine.len() >= max_plugins {
                return Ok(Put::TooMany);
            }
            lock_blob(&tx, &plugin.id).await?;
            tx.execute(
                "INSERT INTO plugin_blobs (id, bytes) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                &[&plugin.id, &bytes],
            )
            .await?;
            tx.execute(
                "INSERT INTO plugins (tenant, id, name, world, size_bytes, created_at, info)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &tenant,
                    &plugin.id,
                    &plugin.name,
                    &plugin.world,
                    &(plugin.size_bytes as i64),
                    &(plugin.created_at as i64),
                    &plugin.info,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(Put::Created(plugin.clone()))
        })
        .await
    }

    /// `tenant`'s plugin by id or by name.
    pub async fn plugin(
        &self,
        tenant: &str,
        id_or_name: &str,
    ) -> Result<Option<PluginRow>, StateError> {
        bounded("reading a plugin", async {
            // An id-shaped name is looked up as an id first, as the
            // embedded store does.
            let rows = self
                .rows(
                    &format!(
                        "SELECT {COLUMNS} FROM plugins WHERE tenant = $1 AND (id = $2 OR name = $2)
                         ORDER BY (id = $2) DESC LIMIT 1"
                    ),
                    &[&tenant, &id_or_name],
                )
                .await?;
            Ok(rows
                .first()
                .map(row)
                .filter(|p| p.name == id_or_name || is_id(id_or_name)))
        })
        .await
    }

    /// `tenant`'s plugins, oldest first.
    pub async fn plugins(&self, tenant: &str) -> Result<Vec<PluginRow>, StateError> {
        bounded("listing plugins", async {
            let rows = self
                .rows(
                    &format!(
                        "SELECT {COLUMNS} FROM plugins WHERE tenant = $1 ORDER BY created_at, name"
                    ),
                    &[&tenant],
                )
                .await?;
            Ok(rows.iter().map(row).collect())
        })
        .await
    }

    /// A component's bytes.
    pub async fn plugin_bytes(&self, id: &str) -> Result<Option<Vec<u8>>, StateError> {
        bounded("reading a component", async {
            let rows = self
                .rows("SELECT bytes FROM plugin_blobs WHERE id = $1", &[&id])
                .await?;
            Ok(rows.first().map(|r| r.get(0)))
        })
        .await
    }

    /// Delete `tenant`'s plugin, and its bytes if no tenant stores them any
    /// more; `None` if the tenant has no such plugin.
    pub async fn delete_plugin(
        &self,
        tenant: &str,
        id_or_name: &str,
    ) -> Result<Option<PluginRow>, StateError> {
        let Some(found) = self.plugin(tenant, id_or_name).await? else {
            return Ok(None);
        };
        bounded("deleting a plugin", async {
            let mut conn = self.conn().await?;
            let tx = conn.transaction().await?;
            let deleted = tx
                .execute(
                    "DELETE FROM plugins WHERE tenant = $1 AND id = $2",
                    &[&tenant, &found.id],
                )
                .await?;
            lock_blob(&tx, &found.id).await?;
            tx.execute(
                "DELETE FROM plugin_blobs b WHERE b.id = $1
                   AND NOT EXISTS (SELECT 1 FROM plugins p WHERE p.id = b.id)",
                &[&found.id],
            )
            .await?;
            tx.commit().await?;
            Ok((deleted == 1).then_some(found))
        })
        .await
    }
}
