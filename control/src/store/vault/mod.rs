//! The credential vault in the database: organizations and their wrapped data keys, vaults and
//! their grants, identities and their linked hosts, checkouts, rotations and password history.
//!
//! One body of SQL serves both engines (`$1, $2, …` placeholders and nothing engine-specific);
//! `vault_store!` instantiates [`VaultStore`] for each store with its own write transaction,
//! as [`super::people`] does. Every change is audited in the same transaction as the change.
//! The store only moves ciphertexts: wrapping and unwrapping keys is [`crate::vault`]'s work.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row as _;

use latch_common::vault::AccessLevel;

use super::rows::{Columns, from_millis, millis};
use super::{PgStore, SqliteStore, StoreError};
use crate::audit::AuditEvent;

mod records;

pub use records::*;
use records::{
    checkout_from_row, grant_from_row, identity_from_row, level_of, linked_host_from_row,
    rotation_from_row, rotation_host_from_row, support_access_from_row, vault_from_row,
};

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
    /// How long its break-glass checkouts last, in minutes (`None`: the server's default).
    pub break_glass_minutes: Option<u32>,
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

    /// Sets (or, with `None`, clears) an organization's break-glass duration (audited); false if
    /// there is no such organization.
    async fn set_organization_break_glass(
        &self,
        id: &str,
        minutes: Option<u32>,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Adds a vault (audited); refused when its name is taken in its organization.
    async fn insert_vault(
        &self,
        vault: &VaultRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), VaultRefusal>, StoreError>;
    /// Every vault, by organization and name.
    async fn vaults(&self) -> Result<Vec<VaultRecord>, StoreError>;
    /// The vault with this id, or every vault with this name.
    async fn find_vaults(&self, id_or_name: &str) -> Result<Vec<VaultRecord>, StoreError>;
    /// Renames or describes a vault (audited).
    async fn update_vault(
        &self,
        id: &str,
        name: &str,
        description: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), VaultRefusal>, StoreError>;
    /// Deletes an empty vault and its grants (audited); refused while it holds identities.
    async fn delete_vault(
        &self,
        id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), VaultRefusal>, StoreError>;
    /// The grants of a vault (expired ones too), oldest first.
    async fn vault_grants(&self, vault_id: &str) -> Result<Vec<VaultGrantRecord>, StoreError>;
    /// Adds a grant (audited).
    async fn insert_vault_grant(
        &self,
        grant: &VaultGrantRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Removes a grant of `vault_id` (audited); false if there is none.
    async fn delete_vault_grant(
        &self,
        vault_id: &str,
        grant_id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// `(vault id, level)` of every grant in force at `now` for the principal, directly or
    /// through its groups.
    async fn vault_access(
        &self,
        principal_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, AccessLevel)>, StoreError>;
    /// Adds an identity with its linked hosts `(host id, adoption job id)` and the keyed hash
    /// of its first password (audited); refused when the name is taken in the vault.
    async fn insert_identity(
        &self,
        identity: &IdentityRecord,
        hosts: &[HostLink],
        history: Option<&str>,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), VaultRefusal>, StoreError>;
    /// The identities of a vault, by name.
    async fn identities(&self, vault_id: &str) -> Result<Vec<IdentityRecord>, StoreError>;
    /// One identity.
    async fn identity(&self, id: &str) -> Result<Option<IdentityRecord>, StoreError>;
    /// Changes an identity's settings, and replaces its linked hosts when `hosts` is given
    /// (audited).
    async fn update_identity(
        &self,
        identity: &IdentityRecord,
        hosts: Option<&[HostLink]>,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), VaultRefusal>, StoreError>;
    /// Deletes an identity with its history, checkouts and rotations (audited); refused while
    /// it is checked out.
    async fn delete_identity(
        &self,
        id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), VaultRefusal>, StoreError>;
    /// The keyed hashes of the identity's last 10 passwords.
    async fn password_history(&self, identity_id: &str) -> Result<Vec<String>, StoreError>;
    /// Opens a checkout (audited) unless `max` checkouts of the identity are open already
    /// (`exclusive`: one is enough to refuse).
    async fn open_checkout(
        &self,
        checkout: &CheckoutRecord,
        exclusive: bool,
        max: u32,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), VaultRefusal>, StoreError>;
    /// One checkout.
    async fn checkout(&self, id: &str) -> Result<Option<CheckoutRecord>, StoreError>;
    /// The checkouts of an identity, newest first.
    async fn checkouts(&self, identity_id: &str) -> Result<Vec<CheckoutRecord>, StoreError>;
    /// Checks a checkout in (audited) and, in the same transaction, queues `rotation`;
    /// false if it was checked in already.
    async fn close_checkout(
        &self,
        id: &str,
        how: CheckinHow,
        by: &str,
        rotation: Option<&RotationRecord>,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Open checkouts whose end has passed (of one identity, or all).
    async fn expired_checkouts(
        &self,
        identity_id: Option<&str>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<CheckoutRecord>, StoreError>;
    /// Records a rotation with its hosts and their job ids (audited); a pending rotation of
    /// the same identity is superseded (failed, its jobs run first on each host). With
    /// `refuse_while_checked_out`, refused while a checkout is open.
    async fn insert_rotation(
        &self,
        rotation: &RotationRecord,
        refuse_while_checked_out: bool,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), VaultRefusal>, StoreError>;
    /// One rotation with its hosts.
    async fn rotation(&self, id: &str) -> Result<Option<RotationRecord>, StoreError>;
    /// The rotations of an identity with their hosts, newest first.
    async fn rotations(&self, identity_id: &str) -> Result<Vec<RotationRecord>, StoreError>;
    /// Every pending rotation with its hosts.
    async fn pending_rotations(&self) -> Result<Vec<RotationRecord>, StoreError>;
    /// Settles a pending rotation (audited): confirmed makes the given secret current, records its
    /// hash in the history (keeping 10) and schedules the next; failed keeps the previous
    /// secret. False if it was not pending any more.
    async fn settle_rotation(
        &self,
        id: &str,
        settlement: &Settlement,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Identities whose scheduled rotation is due, with no pending rotation and no open
    /// checkout.
    async fn due_rotations(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Counts a break-glass use of the principal unless `per_minute` happened in the last
    /// minute; false when over the limit.
    async fn note_break_glass(
        &self,
        principal_id: &str,
        per_minute: u32,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Records a period of support access (audited).
    async fn insert_support_access(
        &self,
        access: &SupportAccessRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Every period of support access, newest first.
    async fn support_accesses(&self) -> Result<Vec<SupportAccessRecord>, StoreError>;
    /// Ends support access `id` (or, with `None`, every one in force) as `how`, by `by`,
    /// audited; returns how many ended.
    async fn disable_support_access(
        &self,
        id: Option<&str>,
        how: &str,
        by: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    /// Links whose adoption or password job was recorded but never queued (a crash between
    /// the two), of identities created before `before`.
    async fn undispatched_links(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(String, HostLink)>, StoreError>;
    /// Forgets the jobs of a link that can never be queued (its host was removed).
    async fn forget_link_jobs(&self, identity_id: &str, host_id: &str) -> Result<(), StoreError>;
}

fn organization_from_row(row: &impl Columns) -> Result<OrganizationRecord, StoreError> {
    Ok(OrganizationRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        data_key_id: row.text("data_key_id")?,
        wrapped_data_key: row.text("wrapped_data_key")?,
        canary: row.text("canary")?,
        created_at: from_millis(row.int("created_at")?),
        break_glass_minutes: row
            .opt_int("break_glass_minutes")?
            .and_then(|m| u32::try_from(m).ok()),
    })
}

const ORGANIZATION_COLUMNS: &str = "SELECT id, name, data_key_id, wrapped_data_key, canary, \
     created_at, break_glass_minutes FROM organizations";

const VAULT_SELECT: &str = "SELECT v.id, v.organization_id, o.name AS organization, v.name, \
     v.description, v.owner_id, p.name AS owner, \
     (SELECT count(*) FROM identities i WHERE i.vault_id = v.id) AS identities, v.created_at \
     FROM vaults v JOIN organizations o ON o.id = v.organization_id \
     LEFT JOIN principals p ON p.id = v.owner_id";

const GRANT_SELECT: &str = "SELECT g.id, g.vault_id, g.principal_id, p.name AS principal, \
     g.group_id, gr.name AS group_name, g.level, g.expires_at, g.created_at FROM vault_grants g \
     LEFT JOIN principals p ON p.id = g.principal_id LEFT JOIN groups gr ON gr.id = g.group_id";

const IDENTITY_SELECT: &str = "SELECT i.id, i.vault_id, v.name AS vault, v.organization_id, \
     i.name, i.username, i.credential_type, i.secret, i.rotation_interval_days, \
     i.rotate_after_use, i.concurrent_checkout, i.max_concurrent, i.last_rotated_at, \
     i.next_rotation_at, i.created_at, \
     (SELECT r.state FROM rotations r WHERE r.identity_id = i.id \
      ORDER BY r.created_at DESC, r.id DESC LIMIT 1) AS rotation_state, \
     (SELECT count(*) FROM checkouts c WHERE c.identity_id = i.id AND c.checked_in_at IS NULL) \
      AS active_checkouts \
     FROM identities i JOIN vaults v ON v.id = i.vault_id";

const LINKED_HOST_SELECT: &str = "SELECT ih.identity_id, ih.host_id, h.hostname, \
     ih.adopt_job_id, j.status AS adopt_status, ih.password_job_id, \
     pj.status AS password_status FROM identity_hosts ih \
     JOIN hosts h ON h.id = ih.host_id AND h.removed_at IS NULL \
     LEFT JOIN jobs j ON j.id = ih.adopt_job_id LEFT JOIN jobs pj ON pj.id = ih.password_job_id";

const CHECKOUT_SELECT: &str = "SELECT c.id, c.identity_id, c.principal_id, p.name AS holder, \
     c.reason, c.host_id, c.break_glass, c.started_at, c.expires_at, c.checked_in_at, \
     c.checked_in_how, c.checked_in_by, c.rotation_id FROM checkouts c \
     JOIN principals p ON p.id = c.principal_id";

const ROTATION_SELECT: &str = "SELECT r.id, r.identity_id, r.cause, r.state, r.secret, \
     r.secret_hash, r.started_by, r.created_at, r.finished_at, r.note FROM rotations r";

const ROTATION_HOST_SELECT: &str = "SELECT rh.rotation_id, rh.host_id, h.hostname, rh.job_id, \
     j.status, j.error_code, j.error_message FROM rotation_hosts rh \
     JOIN hosts h ON h.id = rh.host_id LEFT JOIN jobs j ON j.id = rh.job_id";

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

macro_rules! vault_store {
    ($store:ty, $tx:ident, $conn:ty, $lock:literal) => {
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
                     created_at, break_glass_minutes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&o.id)
                .bind(&o.name)
                .bind(&o.data_key_id)
                .bind(&o.wrapped_data_key)
                .bind(&o.canary)
                .bind(millis(o.created_at))
                .bind(o.break_glass_minutes.map(i64::from))
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

            async fn set_organization_break_glass(
                &self,
                id: &str,
                minutes: Option<u32>,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let changed = sqlx::query(
                    "UPDATE organizations SET break_glass_minutes = $1 WHERE id = $2",
                )
                .bind(minutes.map(i64::from))
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if changed == 0 {
                    return Ok(false);
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn insert_vault(
                &self,
                v: &VaultRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), VaultRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let inserted = sqlx::query(
                    "INSERT INTO vaults (id, organization_id, name, description, owner_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&v.id)
                .bind(&v.organization_id)
                .bind(&v.name)
                .bind(&v.description)
                .bind(&v.owner_id)
                .bind(millis(v.created_at))
                .execute(tx.conn())
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => return Ok(Err(VaultRefusal::NameTaken)),
                    other => other?,
                };
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn vaults(&self) -> Result<Vec<VaultRecord>, StoreError> {
                let sql = format!("{VAULT_SELECT} ORDER BY o.name, v.name");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(vault_from_row).collect()
            }

            async fn find_vaults(&self, key: &str) -> Result<Vec<VaultRecord>, StoreError> {
                let sql = format!(
                    "{VAULT_SELECT} WHERE v.id = $1 OR (v.name = $1 AND NOT EXISTS \
                     (SELECT 1 FROM vaults WHERE id = $1)) ORDER BY o.name, v.name"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(key)
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(vault_from_row).collect()
            }

            async fn update_vault(
                &self,
                id: &str,
                name: &str,
                description: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), VaultRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let updated = sqlx::query("UPDATE vaults SET name = $1, description = $2 WHERE id = $3")
                    .bind(name)
                    .bind(description)
                    .bind(id)
                    .execute(tx.conn())
                    .await;
                match updated {
                    Err(e) if is_unique_violation(&e) => return Ok(Err(VaultRefusal::NameTaken)),
                    Ok(done) if done.rows_affected() == 0 => return Ok(Err(VaultRefusal::Missing)),
                    other => other?,
                };
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn delete_vault(
                &self,
                id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), VaultRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                if !Self::lock_row(tx.conn(), "vaults", id).await? {
                    return Ok(Err(VaultRefusal::Missing));
                }
                let held: i64 = sqlx::query("SELECT count(*) AS n FROM identities WHERE vault_id = $1")
                    .bind(id)
                    .fetch_one(tx.conn())
                    .await?
                    .try_get("n")?;
                if held > 0 {
                    return Ok(Err(VaultRefusal::NotEmpty(u64::try_from(held).unwrap_or(0))));
                }
                sqlx::query("DELETE FROM vault_grants WHERE vault_id = $1")
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                sqlx::query("DELETE FROM vaults WHERE id = $1")
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn vault_grants(&self, vault_id: &str) -> Result<Vec<VaultGrantRecord>, StoreError> {
                let sql = format!("{GRANT_SELECT} WHERE g.vault_id = $1 ORDER BY g.created_at, g.id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(vault_id)
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(grant_from_row).collect()
            }

            async fn insert_vault_grant(
                &self,
                g: &VaultGrantRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                sqlx::query(
                    "INSERT INTO vault_grants (id, vault_id, principal_id, group_id, level, expires_at, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&g.id)
                .bind(&g.vault_id)
                .bind(&g.principal_id)
                .bind(&g.group_id)
                .bind(g.level.as_str())
                .bind(g.expires_at.map(millis))
                .bind(millis(g.created_at))
                .execute(tx.conn())
                .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(())
            }

            async fn delete_vault_grant(
                &self,
                vault_id: &str,
                grant_id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let gone = sqlx::query("DELETE FROM vault_grants WHERE id = $1 AND vault_id = $2")
                    .bind(grant_id)
                    .bind(vault_id)
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Ok(false);
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn vault_access(
                &self,
                principal_id: &str,
                now: DateTime<Utc>,
            ) -> Result<Vec<(String, AccessLevel)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT vault_id, level FROM vault_grants WHERE (expires_at IS NULL OR expires_at > $2) \
                     AND (principal_id = $1 OR group_id IN \
                     (SELECT group_id FROM group_members WHERE principal_id = $1))",
                )
                .bind(principal_id)
                .bind(millis(now))
                .fetch_all(self.pool())
                .await?;
                rows.iter()
                    .map(|row| Ok((row.text("vault_id")?, level_of(&row.text("level")?)?)))
                    .collect()
            }

            async fn insert_identity(
                &self,
                i: &IdentityRecord,
                hosts: &[HostLink],
                history: Option<&str>,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), VaultRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let inserted = sqlx::query(
                    "INSERT INTO identities (id, vault_id, name, username, credential_type, secret, \
                     rotation_interval_days, rotate_after_use, concurrent_checkout, max_concurrent, \
                     last_rotated_at, next_rotation_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&i.id)
                .bind(&i.vault_id)
                .bind(&i.name)
                .bind(&i.username)
                .bind(i.credential_type.as_str())
                .bind(&i.secret)
                .bind(i.rotation_interval_days.map(i64::from))
                .bind(i64::from(i.rotate_after_use))
                .bind(i64::from(i.concurrent_checkout))
                .bind(i64::from(i.max_concurrent))
                .bind(i.last_rotated_at.map(millis))
                .bind(i.next_rotation_at.map(millis))
                .bind(millis(i.created_at))
                .execute(tx.conn())
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => return Ok(Err(VaultRefusal::NameTaken)),
                    other => other?,
                };
                for link in hosts {
                    sqlx::query(
                        "INSERT INTO identity_hosts (identity_id, host_id, adopt_job_id, password_job_id) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&i.id)
                    .bind(&link.host_id)
                    .bind(&link.adopt_job_id)
                    .bind(&link.password_job_id)
                    .execute(tx.conn())
                    .await?;
                }
                if let Some(hash) = history {
                    sqlx::query(
                        "INSERT INTO password_history (identity_id, hash, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (identity_id, hash) DO UPDATE SET created_at = excluded.created_at",
                    )
                    .bind(&i.id)
                    .bind(hash)
                    .bind(millis(now))
                    .execute(tx.conn())
                    .await?;
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn identities(&self, vault_id: &str) -> Result<Vec<IdentityRecord>, StoreError> {
                let sql = format!("{IDENTITY_SELECT} WHERE i.vault_id = $1 ORDER BY i.name");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(vault_id)
                    .fetch_all(self.pool())
                    .await?;
                let mut identities = rows
                    .iter()
                    .map(identity_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let sql = format!(
                    "{LINKED_HOST_SELECT} WHERE ih.identity_id IN \
                     (SELECT id FROM identities WHERE vault_id = $1) ORDER BY h.hostname, h.id"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(vault_id)
                    .fetch_all(self.pool())
                    .await?;
                for row in &rows {
                    let (identity_id, host) = linked_host_from_row(row)?;
                    if let Some(identity) = identities.iter_mut().find(|i| i.id == identity_id) {
                        identity.hosts.push(host);
                    }
                }
                Ok(identities)
            }

            async fn identity(&self, id: &str) -> Result<Option<IdentityRecord>, StoreError> {
                let sql = format!("{IDENTITY_SELECT} WHERE i.id = $1");
                let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?
                else {
                    return Ok(None);
                };
                let mut identity = identity_from_row(&row)?;
                let sql = format!("{LINKED_HOST_SELECT} WHERE ih.identity_id = $1 ORDER BY h.hostname, h.id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_all(self.pool())
                    .await?;
                for row in &rows {
                    identity.hosts.push(linked_host_from_row(row)?.1);
                }
                Ok(Some(identity))
            }

            async fn update_identity(
                &self,
                i: &IdentityRecord,
                hosts: Option<&[HostLink]>,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), VaultRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let updated = sqlx::query(
                    "UPDATE identities SET name = $1, rotation_interval_days = $2, rotate_after_use = $3, \
                     concurrent_checkout = $4, max_concurrent = $5, next_rotation_at = $6 WHERE id = $7",
                )
                .bind(&i.name)
                .bind(i.rotation_interval_days.map(i64::from))
                .bind(i64::from(i.rotate_after_use))
                .bind(i64::from(i.concurrent_checkout))
                .bind(i64::from(i.max_concurrent))
                .bind(i.next_rotation_at.map(millis))
                .bind(&i.id)
                .execute(tx.conn())
                .await;
                match updated {
                    Err(e) if is_unique_violation(&e) => return Ok(Err(VaultRefusal::NameTaken)),
                    Ok(done) if done.rows_affected() == 0 => return Ok(Err(VaultRefusal::Missing)),
                    other => other?,
                };
                if let Some(hosts) = hosts {
                    sqlx::query("DELETE FROM identity_hosts WHERE identity_id = $1")
                        .bind(&i.id)
                        .execute(tx.conn())
                        .await?;
                    for link in hosts {
                        sqlx::query(
                            "INSERT INTO identity_hosts (identity_id, host_id, adopt_job_id, password_job_id) \
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(&i.id)
                        .bind(&link.host_id)
                        .bind(&link.adopt_job_id)
                        .bind(&link.password_job_id)
                        .execute(tx.conn())
                        .await?;
                    }
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn delete_identity(
                &self,
                id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), VaultRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                if !Self::lock_row(tx.conn(), "identities", id).await? {
                    return Ok(Err(VaultRefusal::Missing));
                }
                if Self::open_checkouts(tx.conn(), id).await? > 0 {
                    return Ok(Err(VaultRefusal::CheckedOut));
                }
                for sql in [
                    "DELETE FROM rotation_hosts WHERE rotation_id IN (SELECT id FROM rotations WHERE identity_id = $1)",
                    "DELETE FROM rotations WHERE identity_id = $1",
                    "DELETE FROM checkouts WHERE identity_id = $1",
                    "DELETE FROM password_history WHERE identity_id = $1",
                    "DELETE FROM identity_hosts WHERE identity_id = $1",
                    "DELETE FROM identities WHERE id = $1",
                ] {
                    sqlx::query(sql).bind(id).execute(tx.conn()).await?;
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn password_history(&self, identity_id: &str) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "SELECT hash FROM password_history WHERE identity_id = $1 \
                     ORDER BY created_at DESC LIMIT 10",
                )
                .bind(identity_id)
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(|row| Ok(row.text("hash")?)).collect()
            }

            async fn open_checkout(
                &self,
                c: &CheckoutRecord,
                exclusive: bool,
                max: u32,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), VaultRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                if !Self::lock_row(tx.conn(), "identities", &c.identity_id).await? {
                    return Ok(Err(VaultRefusal::Missing));
                }
                let open = Self::open_checkouts(tx.conn(), &c.identity_id).await?;
                if exclusive && open > 0 {
                    return Ok(Err(VaultRefusal::AlreadyCheckedOut));
                }
                if open >= i64::from(max) {
                    return Ok(Err(VaultRefusal::MaxConcurrent(max)));
                }
                sqlx::query(
                    "INSERT INTO checkouts (id, identity_id, principal_id, reason, host_id, break_glass, \
                     started_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&c.id)
                .bind(&c.identity_id)
                .bind(&c.principal_id)
                .bind(&c.reason)
                .bind(&c.host_id)
                .bind(i64::from(c.break_glass))
                .bind(millis(c.started_at))
                .bind(millis(c.expires_at))
                .execute(tx.conn())
                .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn checkout(&self, id: &str) -> Result<Option<CheckoutRecord>, StoreError> {
                let sql = format!("{CHECKOUT_SELECT} WHERE c.id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?;
                row.as_ref().map(checkout_from_row).transpose()
            }

            async fn checkouts(&self, identity_id: &str) -> Result<Vec<CheckoutRecord>, StoreError> {
                let sql = format!(
                    "{CHECKOUT_SELECT} WHERE c.identity_id = $1 ORDER BY c.started_at DESC, c.id DESC"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(identity_id)
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(checkout_from_row).collect()
            }

            async fn close_checkout(
                &self,
                id: &str,
                how: CheckinHow,
                by: &str,
                rotation: Option<&RotationRecord>,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                // The identity's row first: its rotations are written one transaction at a time.
                if let Some(rotation) = rotation {
                    Self::lock_row(tx.conn(), "identities", &rotation.identity_id).await?;
                }
                let closed = sqlx::query(
                    "UPDATE checkouts SET checked_in_at = $1, checked_in_how = $2, checked_in_by = $3, \
                     rotation_id = $4 WHERE id = $5 AND checked_in_at IS NULL",
                )
                .bind(millis(now))
                .bind(how.as_str())
                .bind(by)
                .bind(rotation.map(|r| r.id.as_str()))
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if closed == 0 {
                    return Ok(false);
                }
                if let Some(rotation) = rotation {
                    Self::insert_rotation_rows(tx.conn(), rotation, now).await?;
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn expired_checkouts(
                &self,
                identity_id: Option<&str>,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<CheckoutRecord>, StoreError> {
                let sql = format!(
                    "{CHECKOUT_SELECT} WHERE c.checked_in_at IS NULL AND c.expires_at <= $1 \
                     AND ($2 IS NULL OR c.identity_id = $2) ORDER BY c.expires_at LIMIT $3"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(millis(now))
                    .bind(identity_id)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(checkout_from_row).collect()
            }

            async fn insert_rotation(
                &self,
                rotation: &RotationRecord,
                refuse_while_checked_out: bool,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), VaultRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                if !Self::lock_row(tx.conn(), "identities", &rotation.identity_id).await? {
                    return Ok(Err(VaultRefusal::Missing));
                }
                if refuse_while_checked_out && Self::open_checkouts(tx.conn(), &rotation.identity_id).await? > 0 {
                    return Ok(Err(VaultRefusal::CheckedOut));
                }
                Self::insert_rotation_rows(tx.conn(), rotation, now).await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn rotation(&self, id: &str) -> Result<Option<RotationRecord>, StoreError> {
                let sql = format!("{ROTATION_SELECT} WHERE r.id = $1");
                let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?
                else {
                    return Ok(None);
                };
                let mut rotations = vec![rotation_from_row(&row)?];
                self.fill_rotation_hosts(&mut rotations, "rh.rotation_id = $1", id).await?;
                Ok(rotations.pop())
            }

            async fn rotations(&self, identity_id: &str) -> Result<Vec<RotationRecord>, StoreError> {
                let sql = format!(
                    "{ROTATION_SELECT} WHERE r.identity_id = $1 ORDER BY r.created_at DESC, r.id DESC"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(identity_id)
                    .fetch_all(self.pool())
                    .await?;
                let mut rotations = rows.iter().map(rotation_from_row).collect::<Result<Vec<_>, _>>()?;
                self.fill_rotation_hosts(
                    &mut rotations,
                    "rh.rotation_id IN (SELECT id FROM rotations WHERE identity_id = $1)",
                    identity_id,
                )
                .await?;
                Ok(rotations)
            }

            async fn pending_rotations(&self) -> Result<Vec<RotationRecord>, StoreError> {
                let sql = format!("{ROTATION_SELECT} WHERE r.state = $1 ORDER BY r.created_at, r.id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind("pending")
                    .fetch_all(self.pool())
                    .await?;
                let mut rotations = rows.iter().map(rotation_from_row).collect::<Result<Vec<_>, _>>()?;
                self.fill_rotation_hosts(
                    &mut rotations,
                    "rh.rotation_id IN (SELECT id FROM rotations WHERE state = $1)",
                    "pending",
                )
                .await?;
                Ok(rotations)
            }

            async fn settle_rotation(
                &self,
                id: &str,
                settlement: &Settlement,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let (state, note) = match settlement {
                    Settlement::Confirmed(_) => ("confirmed", None),
                    Settlement::Failed(note) => ("failed", Some(note.as_str())),
                };
                let settled = sqlx::query(
                    "UPDATE rotations SET state = $1, finished_at = $2, note = $3 \
                     WHERE id = $4 AND state = 'pending' RETURNING identity_id, secret, secret_hash",
                )
                .bind(state)
                .bind(millis(now))
                .bind(note)
                .bind(id)
                .fetch_optional(tx.conn())
                .await?;
                let Some(row) = settled else {
                    return Ok(false);
                };
                if let Settlement::Confirmed(current) = settlement {
                    let identity_id = row.text("identity_id")?;
                    sqlx::query(
                        "UPDATE identities SET secret = $1, last_rotated_at = $2, next_rotation_at = \
                         CASE WHEN rotation_interval_days IS NULL THEN NULL \
                         ELSE $2 + rotation_interval_days * 86400000 END WHERE id = $3",
                    )
                    .bind(current)
                    .bind(millis(now))
                    .bind(&identity_id)
                    .execute(tx.conn())
                    .await?;
                    sqlx::query(
                        "INSERT INTO password_history (identity_id, hash, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (identity_id, hash) DO UPDATE SET created_at = excluded.created_at",
                    )
                    .bind(&identity_id)
                    .bind(row.text("secret_hash")?)
                    .bind(millis(now))
                    .execute(tx.conn())
                    .await?;
                    sqlx::query(
                        "DELETE FROM password_history WHERE identity_id = $1 AND created_at < \
                         (SELECT created_at FROM password_history WHERE identity_id = $1 \
                         ORDER BY created_at DESC LIMIT 1 OFFSET 9)",
                    )
                    .bind(&identity_id)
                    .execute(tx.conn())
                    .await?;
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn due_rotations(
                &self,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "SELECT i.id FROM identities i WHERE i.next_rotation_at IS NOT NULL \
                     AND i.next_rotation_at <= $1 \
                     AND NOT EXISTS (SELECT 1 FROM rotations r WHERE r.identity_id = i.id AND r.state = 'pending') \
                     AND NOT EXISTS (SELECT 1 FROM checkouts c WHERE c.identity_id = i.id AND c.checked_in_at IS NULL) \
                     ORDER BY i.next_rotation_at LIMIT $2",
                )
                .bind(millis(now))
                .bind(i64::from(limit))
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(|row| Ok(row.text("id")?)).collect()
            }

            async fn note_break_glass(
                &self,
                principal_id: &str,
                per_minute: u32,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                Self::lock_row(tx.conn(), "principals", principal_id).await?;
                let minute_ago = millis(now - chrono::Duration::minutes(1));
                sqlx::query("DELETE FROM break_glass_uses WHERE principal_id = $1 AND at <= $2")
                    .bind(principal_id)
                    .bind(minute_ago)
                    .execute(tx.conn())
                    .await?;
                let recent: i64 = sqlx::query(
                    "SELECT count(*) AS n FROM break_glass_uses WHERE principal_id = $1",
                )
                .bind(principal_id)
                .fetch_one(tx.conn())
                .await?
                .try_get("n")?;
                if recent >= i64::from(per_minute) {
                    tx.commit().await?;
                    return Ok(false);
                }
                sqlx::query("INSERT INTO break_glass_uses (id, principal_id, at) VALUES ($1, $2, $3)")
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(principal_id)
                    .bind(millis(now))
                    .execute(tx.conn())
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn insert_support_access(
                &self,
                a: &SupportAccessRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                sqlx::query(
                    "INSERT INTO support_access (id, organization_id, reason, enabled_by, enabled_at, \
                     expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&a.id)
                .bind(&a.organization_id)
                .bind(&a.reason)
                .bind(&a.enabled_by)
                .bind(millis(a.enabled_at))
                .bind(a.expires_at.map(millis))
                .execute(tx.conn())
                .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(())
            }

            async fn support_accesses(&self) -> Result<Vec<SupportAccessRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, organization_id, reason, enabled_by, enabled_at, expires_at, \
                     disabled_at, disabled_by, disabled_how FROM support_access \
                     ORDER BY enabled_at DESC, id DESC",
                )
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(support_access_from_row).collect()
            }

            async fn disable_support_access(
                &self,
                id: Option<&str>,
                how: &str,
                by: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let ended = sqlx::query(
                    "UPDATE support_access SET disabled_at = $1, disabled_by = $2, disabled_how = $3 \
                     WHERE disabled_at IS NULL AND ($4 IS NULL OR id = $4) \
                     AND (expires_at IS NULL OR expires_at > $1)",
                )
                .bind(millis(now))
                .bind(by)
                .bind(how)
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if id.is_some() && ended == 0 {
                    return Ok(0);
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(ended)
            }

            async fn undispatched_links(
                &self,
                before: DateTime<Utc>,
            ) -> Result<Vec<(String, HostLink)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT ih.identity_id, ih.host_id, \
                     CASE WHEN ih.adopt_job_id IS NOT NULL AND NOT EXISTS \
                       (SELECT 1 FROM jobs j WHERE j.id = ih.adopt_job_id) \
                       THEN ih.adopt_job_id END AS adopt_job_id, \
                     CASE WHEN ih.password_job_id IS NOT NULL AND NOT EXISTS \
                       (SELECT 1 FROM jobs j WHERE j.id = ih.password_job_id) \
                       THEN ih.password_job_id END AS password_job_id \
                     FROM identity_hosts ih JOIN identities i ON i.id = ih.identity_id \
                     WHERE i.created_at < $1 AND ( \
                       (ih.adopt_job_id IS NOT NULL AND NOT EXISTS \
                         (SELECT 1 FROM jobs j WHERE j.id = ih.adopt_job_id)) \
                       OR (ih.password_job_id IS NOT NULL AND NOT EXISTS \
                         (SELECT 1 FROM jobs j WHERE j.id = ih.password_job_id))) \
                     ORDER BY ih.identity_id, ih.host_id LIMIT 100",
                )
                .bind(millis(before))
                .fetch_all(self.pool())
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.text("identity_id")?,
                            HostLink {
                                host_id: row.text("host_id")?,
                                adopt_job_id: row.opt_text("adopt_job_id")?,
                                password_job_id: row.opt_text("password_job_id")?,
                            },
                        ))
                    })
                    .collect()
            }

            async fn forget_link_jobs(
                &self,
                identity_id: &str,
                host_id: &str,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                sqlx::query(
                    "UPDATE identity_hosts SET adopt_job_id = NULL, password_job_id = NULL \
                     WHERE identity_id = $1 AND host_id = $2",
                )
                .bind(identity_id)
                .bind(host_id)
                .execute(tx.conn())
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }

        impl $store {
            /// Locks row `id` of `table` for this transaction (PostgreSQL; SQLite's writer is
            /// one at a time anyway); false if there is no such row.
            async fn lock_row(conn: &mut $conn, table: &'static str, id: &str) -> Result<bool, StoreError> {
                let sql = format!("SELECT id FROM {table} WHERE id = $1{}", $lock);
                Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(conn)
                    .await?
                    .is_some())
            }

            /// Open checkouts of an identity.
            async fn open_checkouts(conn: &mut $conn, identity_id: &str) -> Result<i64, StoreError> {
                Ok(sqlx::query(
                    "SELECT count(*) AS n FROM checkouts WHERE identity_id = $1 AND checked_in_at IS NULL",
                )
                .bind(identity_id)
                .fetch_one(conn)
                .await?
                .try_get("n")?)
            }

            /// Writes a rotation and its hosts, superseding a pending rotation of the identity.
            async fn insert_rotation_rows(
                conn: &mut $conn,
                r: &RotationRecord,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE rotations SET state = 'failed', finished_at = $1, note = $2 \
                     WHERE identity_id = $3 AND state = 'pending'",
                )
                .bind(millis(now))
                .bind(format!("superseded by rotation {}", r.id))
                .bind(&r.identity_id)
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "INSERT INTO rotations (id, identity_id, cause, state, secret, secret_hash, \
                     started_by, created_at) VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7)",
                )
                .bind(&r.id)
                .bind(&r.identity_id)
                .bind(&r.cause)
                .bind(&r.secret)
                .bind(&r.secret_hash)
                .bind(&r.started_by)
                .bind(millis(r.created_at))
                .execute(&mut *conn)
                .await?;
                for host in &r.hosts {
                    sqlx::query(
                        "INSERT INTO rotation_hosts (rotation_id, host_id, job_id) VALUES ($1, $2, $3)",
                    )
                    .bind(&r.id)
                    .bind(&host.host_id)
                    .bind(&host.job_id)
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            }

            /// Fills in the hosts of `rotations` from the rows matching `filter` (bound to `key`).
            async fn fill_rotation_hosts(
                &self,
                rotations: &mut [RotationRecord],
                filter: &str,
                key: &str,
            ) -> Result<(), StoreError> {
                let sql = format!("{ROTATION_HOST_SELECT} WHERE {filter} ORDER BY h.hostname, h.id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(key)
                    .fetch_all(self.pool())
                    .await?;
                for row in &rows {
                    let (rotation_id, host) = rotation_host_from_row(row)?;
                    if let Some(rotation) = rotations.iter_mut().find(|r| r.id == rotation_id) {
                        rotation.hosts.push(host);
                    }
                }
                Ok(())
            }
        }
    };
}

use super::postgres::Tx as PgTx;
use super::sqlite::SqliteTx;

vault_store!(SqliteStore, SqliteTx, sqlx::SqliteConnection, "");
vault_store!(PgStore, PgTx, sqlx::PgConnection, " FOR UPDATE");
