//! The credential vault in the database: organizations and their wrapped data keys.
//!
//! One body of SQL serves both engines (`$1, $2, …` placeholders and nothing engine-specific);
//! `vault_store!` instantiates [`VaultStore`] for each store with its own write transaction,
//! as [`super::people`] does. Every change is audited in the same transaction as the change.
//! The store only moves ciphertexts: wrapping and unwrapping keys is [`crate::vault`]'s work.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row as _;

use super::rows::{Columns, from_millis, millis};
use super::{PgStore, SqliteStore, StoreError};
use crate::audit::AuditEvent;

/// An organization as stored: its data key only in wrapped form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationRecord {
    /// `org_…`.
    pub id: String,
    /// Unique name (the first one is `default`).
    pub name: String,
    /// The data key's id (`dk_…`), the key id of every ciphertext sealed under it.
    pub data_key_id: String,
    /// The data key, sealed under the master key with the organization's id as associated data
    /// (`v1:<master key id>:<base64>`).
    pub wrapped_data_key: String,
    /// A known text sealed under the data key (bound to the organization), opened at start.
    pub canary: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Why an organization change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrganizationRefusal {
    /// The name (or id) is taken.
    NameTaken,
}

/// Persistence of organizations and their wrapped data keys.
#[async_trait]
pub trait VaultStore: Send + Sync {
    /// Adds an organization; refused when its name or id is taken.
    async fn insert_organization(
        &self,
        organization: &OrganizationRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), OrganizationRefusal>, StoreError>;
    /// Every organization, by name.
    async fn organizations(&self) -> Result<Vec<OrganizationRecord>, StoreError>;
    /// Replaces the wrapped data key of each `(organization id, wrapped data key)` in one
    /// transaction, with `event`. Fails, changing nothing, if an organization is missing or
    /// if an organization exists that `rewrapped` does not name (a key would be left under
    /// the old master key). Returns how many were re-wrapped.
    async fn rewrap_data_keys(
        &self,
        rewrapped: &[(String, String)],
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
}

fn organization_from_row(row: &impl Columns) -> Result<OrganizationRecord, StoreError> {
    Ok(OrganizationRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        data_key_id: row.text("data_key_id")?,
        wrapped_data_key: row.text("wrapped_data_key")?,
        canary: row.text("canary")?,
        created_at: from_millis(row.int("created_at")?),
    })
}

const ORGANIZATION_COLUMNS: &str =
    "SELECT id, name, data_key_id, wrapped_data_key, canary, created_at FROM organizations";

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

macro_rules! vault_store {
    ($store:ty, $tx:ident) => {
        #[async_trait]
        impl VaultStore for $store {
            async fn insert_organization(
                &self,
                o: &OrganizationRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), OrganizationRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let inserted = sqlx::query(
                    "INSERT INTO organizations (id, name, data_key_id, wrapped_data_key, canary, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&o.id)
                .bind(&o.name)
                .bind(&o.data_key_id)
                .bind(&o.wrapped_data_key)
                .bind(&o.canary)
                .bind(millis(o.created_at))
                .execute(tx.conn())
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => {
                        return Ok(Err(OrganizationRefusal::NameTaken));
                    }
                    other => other?,
                };
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn organizations(&self) -> Result<Vec<OrganizationRecord>, StoreError> {
                let sql = format!("{ORGANIZATION_COLUMNS} ORDER BY name");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(organization_from_row).collect()
            }

            async fn rewrap_data_keys(
                &self,
                rewrapped: &[(String, String)],
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let total: i64 = sqlx::query("SELECT count(*) AS n FROM organizations")
                    .fetch_one(tx.conn())
                    .await?
                    .try_get("n")?;
                if usize::try_from(total).ok() != Some(rewrapped.len()) {
                    return Err(StoreError::Corrupt {
                        what: "organizations",
                        detail: format!(
                            "{total} organizations exist but {} data keys were re-wrapped (one was added or removed meanwhile); nothing was changed: run the rotation again with the server stopped",
                            rewrapped.len()
                        ),
                    });
                }
                let mut changed = 0;
                for (id, wrapped) in rewrapped {
                    let n = sqlx::query(
                        "UPDATE organizations SET wrapped_data_key = $1 WHERE id = $2",
                    )
                    .bind(wrapped)
                    .bind(id)
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                    if n != 1 {
                        return Err(StoreError::Corrupt {
                            what: "organizations",
                            detail: format!(
                                "organization {id} disappeared during the re-wrap; nothing was changed: run the rotation again with the server stopped"
                            ),
                        });
                    }
                    changed += n;
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(changed)
            }
        }
    };
}

use super::postgres::Tx as PgTx;
use super::sqlite::SqliteTx;

vault_store!(SqliteStore, SqliteTx);
vault_store!(PgStore, PgTx);
