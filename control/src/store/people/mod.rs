//! People and permissions in the database: principals (users and service users), groups, role
//! bindings, API keys, bearer sessions and host labels.
//!
//! One body of SQL serves both engines: the queries use `$1, $2, …` placeholders (sqlx binds
//! them by number on both) and nothing engine-specific, and `people_store!` instantiates the trait for each store with its
//! own write transaction (`SqliteTx` behind the single write mutex, `Tx` with its serialized
//! audit append). Every change is audited in the same transaction as the change itself.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latch_common::labels::Labels;
use sqlx::Row as _;

use super::rows::{Columns, corrupt, from_millis, millis};
use super::{PgStore, SqliteStore, StoreError};
use crate::audit::AuditEvent;

mod records;
#[macro_use]
mod rows;

pub use records::*;
use rows::*;

/// Ends every live session of principal `$2` at `$1` (disabling it, a new password).
const END_SESSIONS: &str =
    "UPDATE sessions SET revoked_at = $1 WHERE principal_id = $2 AND revoked_at IS NULL";

/// Persistence of principals, groups, roles, credentials and host labels.
#[async_trait]
pub trait PeopleStore: Send + Sync {
    /// Adds a principal; refused when the name (or identity-provider subject) is taken.
    async fn insert_principal(
        &self,
        principal: &PrincipalRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), PeopleRefusal>, StoreError>;
    /// A principal by id or by name.
    async fn principal(&self, id_or_name: &str) -> Result<Option<PrincipalRecord>, StoreError>;
    /// A user by identity-provider issuer and subject.
    async fn principal_by_idp(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<PrincipalRecord>, StoreError>;
    /// Every principal of `kind` (or all), by name.
    async fn principals(
        &self,
        kind: Option<PrincipalKind>,
    ) -> Result<Vec<PrincipalRecord>, StoreError>;
    /// Disables (ending every session at once) or enables a principal; false if it does not exist.
    async fn set_principal_disabled(
        &self,
        id: &str,
        disabled: bool,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Replaces a user's local password hash (`None` removes local sign-in) and ends every
    /// session of theirs; false if no such user.
    async fn set_password_hash(
        &self,
        id: &str,
        hash: Option<&str>,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Adds a group; refused when the name or identity-provider group is taken.
    async fn insert_group(
        &self,
        group: &GroupRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), PeopleRefusal>, StoreError>;
    /// A group by id or by name.
    async fn group(&self, id_or_name: &str) -> Result<Option<GroupRecord>, StoreError>;
    /// Every group, by name.
    async fn groups(&self) -> Result<Vec<GroupRecord>, StoreError>;
    /// Deletes a group with its memberships and bindings; false if it does not exist.
    async fn delete_group(
        &self,
        id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Adds (`member`) or removes a principal to or from a group by hand.
    async fn set_member(
        &self,
        group_id: &str,
        principal_id: &str,
        member: bool,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), PeopleRefusal>, StoreError>;
    /// The groups a principal is in.
    async fn groups_of(&self, principal_id: &str) -> Result<Vec<GroupRecord>, StoreError>;
    /// The principals in a group.
    async fn members(&self, group_id: &str) -> Result<Vec<PrincipalRecord>, StoreError>;
    /// Makes the principal's identity-provider memberships exactly `group_ids` (hand-made
    /// memberships stay).
    async fn sync_idp_memberships(
        &self,
        principal_id: &str,
        group_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Binds a role; refused when the subject does not exist.
    async fn insert_role_binding(
        &self,
        binding: &RoleBinding,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), PeopleRefusal>, StoreError>;
    /// Removes a binding; false if it does not exist.
    async fn delete_role_binding(
        &self,
        id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Every binding.
    async fn role_bindings(&self) -> Result<Vec<RoleBinding>, StoreError>;
    /// The bindings that apply to a principal: its own and its groups'.
    async fn effective_bindings(&self, principal_id: &str) -> Result<Vec<RoleBinding>, StoreError>;
    /// Stores a new API key under its keyed `hash`.
    async fn insert_api_key(
        &self,
        key: &ApiKeyRecord,
        hash: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Revokes an API key and ends every session made with it; false if there is no such
    /// unrevoked key of `principal_id`.
    async fn revoke_api_key(
        &self,
        principal_id: &str,
        key_id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// A principal's API keys, newest first.
    async fn api_keys(&self, principal_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// The unrevoked key with this hash and its principal; records its use.
    async fn use_api_key(
        &self,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(ApiKeyRecord, PrincipalRecord)>, StoreError>;
    /// Stores a new session under its token's keyed `hash`.
    async fn insert_session(
        &self,
        session: &SessionRecord,
        hash: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The session with this hash and its principal, whatever their state (the caller checks
    /// expiry, revocation and whether the principal is disabled).
    async fn session(
        &self,
        hash: &str,
    ) -> Result<Option<(SessionRecord, PrincipalRecord)>, StoreError>;
    /// A principal's live sessions (not ended, not expired, their API key not revoked),
    /// newest first, at most `limit`.
    async fn live_sessions(
        &self,
        principal_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError>;
    /// Ends `principal_id`'s sessions as `which` says, one end of a principal's sessions at a
    /// time (so two devices ending each other's at once leave one live), and returns the ids
    /// ended. `event`
    /// is audited once, its detail gaining `"ended": [ids]`, when any ended.
    async fn end_sessions(
        &self,
        principal_id: &str,
        which: EndSessions<'_>,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;
    /// Ends a session early; false if it was not live.
    async fn revoke_session(
        &self,
        id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Deletes the sessions that ended (expired, or revoked) before `before`; how many went.
    async fn purge_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Starts a TOTP enrollment: with no confirmed factor the secret is replaced (unconfirmed);
    /// with one, the new secret waits as `pending` and the confirmed one stays in force.
    async fn set_totp(
        &self,
        principal_id: &str,
        sealed_secret: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// A principal's TOTP factor.
    async fn totp(&self, principal_id: &str) -> Result<Option<TotpRecord>, StoreError>;
    /// Accepts the code of time step `step` once: true only if `step` is later than every step
    /// accepted before, the factor is not locked, and the secret that matched (`matched`, the
    /// sealed value read; `pending` if it was the replacement) is still the one stored. Then the
    /// failures are cleared, the factor confirmed (a pending one promoted), and the session's
    /// `mfa_at` set — in one transaction.
    async fn use_totp_step(
        &self,
        code: &TotpUse<'_>,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Counts a wrong code; at `lock_after` failures the factor refuses codes until
    /// `lock_until`. Returns the failures counted so far.
    async fn record_totp_failure(
        &self,
        principal_id: &str,
        lock_after: i64,
        lock_until: DateTime<Utc>,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    /// Records a local sign-in attempt: a good one clears the failures; a wrong one counts, and
    /// at `lock_after` failures sign-in is refused until `lock_until`.
    async fn record_sign_in(
        &self,
        principal_id: &str,
        good: bool,
        lock_after: i64,
        lock_until: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// When local sign-in of the principal is refused until, if it is locked.
    async fn sign_in_locked_until(
        &self,
        principal_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Whether any user or service user exists (the database has been initialised).
    async fn has_principals(&self) -> Result<bool, StoreError>;
    /// The SHA-256 hashes of the admin tokens of a database made before people and roles.
    async fn legacy_admin_tokens(&self) -> Result<Vec<String>, StoreError>;
    /// In one transaction: creates the bootstrap admin (`principal`, bound to `binding`) unless
    /// it exists, adds `keys` (record and keyed hash) to it, and deletes every legacy admin token.
    async fn bootstrap_admin(
        &self,
        principal: &PrincipalRecord,
        binding: &RoleBinding,
        keys: &[(ApiKeyRecord, String)],
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Stores a sign-in that has begun (and forgets those expired more than a day ago).
    async fn insert_sso_login(&self, login: &SsoLoginRecord) -> Result<(), StoreError>;
    /// A pending sign-in that is neither finished nor expired at `now`.
    async fn sso_login(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SsoLoginRecord>, StoreError>;
    /// Marks a pending, unexpired sign-in finished and returns it; `None` if it does not
    /// exist, has expired or was finished already (so each one finishes once, on any replica).
    async fn take_sso_login(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SsoLoginRecord>, StoreError>;
    /// Replaces a host's labels; false if the host does not exist or was removed.
    async fn set_host_labels(
        &self,
        host_id: &str,
        labels: &Labels,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// One host's labels (`None` if there is no such host).
    async fn labels_of_host(&self, host_id: &str) -> Result<Option<Labels>, StoreError>;
    /// Every host's labels, by host id (removed hosts included).
    async fn host_labels(&self) -> Result<HashMap<String, Labels>, StoreError>;
}

macro_rules! people_store {
    ($store:ty, $tx:ident) => {
        #[async_trait]
        impl PeopleStore for $store {
            async fn insert_principal(
                &self,
                p: &PrincipalRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), PeopleRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let (issuer, subject) = p.idp.clone().unzip();
                let inserted = sqlx::query(
                    "INSERT INTO principals (id, kind, name, display_name, email, idp_issuer, \
                     idp_subject, password_hash, disabled_at, created_at, last_seen_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&p.id)
                .bind(p.kind.as_str())
                .bind(&p.name)
                .bind(&p.display_name)
                .bind(&p.email)
                .bind(issuer)
                .bind(subject)
                .bind(&p.password_hash)
                .bind(p.disabled_at.map(millis))
                .bind(millis(p.created_at))
                .bind(p.last_seen_at.map(millis))
                .execute(tx.conn())
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => {
                        return Ok(Err(PeopleRefusal::AlreadyExists("principal")));
                    }
                    other => other?,
                };
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn principal(
                &self,
                id_or_name: &str,
            ) -> Result<Option<PrincipalRecord>, StoreError> {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    principal_columns!("p"),
                    " FROM principals p WHERE p.id = $1 OR p.name = $1"
                ))
                .bind(id_or_name)
                .fetch_optional(self.pool())
                .await?;
                row.as_ref().map(principal_from_row).transpose()
            }

            async fn principal_by_idp(
                &self,
                issuer: &str,
                subject: &str,
            ) -> Result<Option<PrincipalRecord>, StoreError> {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    principal_columns!("p"),
                    " FROM principals p WHERE p.idp_issuer = $1 AND p.idp_subject = $2"
                ))
                .bind(issuer)
                .bind(subject)
                .fetch_optional(self.pool())
                .await?;
                row.as_ref().map(principal_from_row).transpose()
            }

            async fn principals(
                &self,
                kind: Option<PrincipalKind>,
            ) -> Result<Vec<PrincipalRecord>, StoreError> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    principal_columns!("p"),
                    " FROM principals p WHERE $1 IS NULL OR p.kind = $1 ORDER BY p.name"
                ))
                .bind(kind.map(PrincipalKind::as_str))
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(principal_from_row).collect()
            }

            async fn set_principal_disabled(
                &self,
                id: &str,
                disabled: bool,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let changed = sqlx::query("UPDATE principals SET disabled_at = $1 WHERE id = $2")
                    .bind(disabled.then(|| millis(now)))
                    .bind(id)
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                if changed == 0 {
                    return Ok(false);
                }
                if disabled {
                    sqlx::query(END_SESSIONS)
                    .bind(millis(now))
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn set_password_hash(
                &self,
                id: &str,
                hash: Option<&str>,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let changed = sqlx::query(
                    "UPDATE principals SET password_hash = $1 WHERE id = $2 AND kind = 'user'",
                )
                .bind(hash)
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if changed == 0 {
                    return Ok(false);
                }
                sqlx::query(END_SESSIONS)
                .bind(millis(now))
                .bind(id)
                .execute(tx.conn())
                .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn insert_group(
                &self,
                g: &GroupRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), PeopleRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let inserted = sqlx::query(
                    "INSERT INTO groups (id, name, description, idp_group, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&g.id)
                .bind(&g.name)
                .bind(&g.description)
                .bind(&g.idp_group)
                .bind(millis(g.created_at))
                .execute(tx.conn())
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => {
                        return Ok(Err(PeopleRefusal::AlreadyExists("group")));
                    }
                    other => other?,
                };
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn group(&self, id_or_name: &str) -> Result<Option<GroupRecord>, StoreError> {
                let row = sqlx::query(
                    "SELECT id, name, description, idp_group, created_at FROM groups \
                     WHERE id = $1 OR name = $1",
                )
                .bind(id_or_name)
                .fetch_optional(self.pool())
                .await?;
                row.as_ref().map(group_from_row).transpose()
            }

            async fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, name, description, idp_group, created_at FROM groups ORDER BY name",
                )
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(group_from_row).collect()
            }

            async fn delete_group(
                &self,
                id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let deleted = sqlx::query("DELETE FROM groups WHERE id = $1")
                    .bind(id)
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Ok(false);
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn set_member(
                &self,
                group_id: &str,
                principal_id: &str,
                member: bool,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), PeopleRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                for (query, what, id) in [
                    (GROUP_EXISTS, "group", group_id),
                    (PRINCIPAL_EXISTS, "principal", principal_id),
                ] {
                    if sqlx::query(query)
                        .bind(id)
                        .fetch_optional(tx.conn())
                        .await?
                        .is_none()
                    {
                        return Ok(Err(PeopleRefusal::NotFound(what)));
                    }
                }
                let sql = if member {
                    "INSERT INTO group_members (group_id, principal_id, source) \
                     VALUES ($1, $2, 'local') ON CONFLICT (group_id, principal_id) \
                     DO UPDATE SET source = 'local'"
                } else {
                    "DELETE FROM group_members WHERE group_id = $1 AND principal_id = $2"
                };
                sqlx::query(sql)
                    .bind(group_id)
                    .bind(principal_id)
                    .execute(tx.conn())
                    .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn groups_of(&self, principal_id: &str) -> Result<Vec<GroupRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT g.id, g.name, g.description, g.idp_group, g.created_at \
                     FROM groups g JOIN group_members m ON m.group_id = g.id \
                     WHERE m.principal_id = $1 ORDER BY g.name",
                )
                .bind(principal_id)
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(group_from_row).collect()
            }

            async fn members(&self, group_id: &str) -> Result<Vec<PrincipalRecord>, StoreError> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    principal_columns!("p"),
                    " FROM principals p JOIN group_members m ON m.principal_id = p.id \
                     WHERE m.group_id = $1 ORDER BY p.name"
                ))
                .bind(group_id)
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(principal_from_row).collect()
            }

            async fn sync_idp_memberships(
                &self,
                principal_id: &str,
                group_ids: &[String],
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                let rows = sqlx::query(
                    "SELECT group_id FROM group_members WHERE principal_id = $1 AND source = 'idp'",
                )
                .bind(principal_id)
                .fetch_all(tx.conn())
                .await?;
                let mut before = Vec::with_capacity(rows.len());
                for row in &rows {
                    before.push(row.try_get::<String, _>("group_id")?);
                }
                let removed: Vec<&String> =
                    before.iter().filter(|g| !group_ids.contains(g)).collect();
                let added: Vec<&String> =
                    group_ids.iter().filter(|g| !before.contains(g)).collect();
                for group in &removed {
                    sqlx::query(
                        "DELETE FROM group_members \
                         WHERE group_id = $1 AND principal_id = $2 AND source = 'idp'",
                    )
                    .bind(group.as_str())
                    .bind(principal_id)
                    .execute(tx.conn())
                    .await?;
                }
                for group in &added {
                    sqlx::query(
                        "INSERT INTO group_members (group_id, principal_id, source) \
                         VALUES ($1, $2, 'idp') ON CONFLICT (group_id, principal_id) DO NOTHING",
                    )
                    .bind(group.as_str())
                    .bind(principal_id)
                    .execute(tx.conn())
                    .await?;
                }
                if !removed.is_empty() || !added.is_empty() {
                    let event = AuditEvent::new("identity_provider", "user.groups_synced").detail(
                        serde_json::json!({
                            "principal_id": principal_id,
                            "added": added,
                            "removed": removed,
                        }),
                    );
                    tx.audit(event, now);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn insert_role_binding(
                &self,
                b: &RoleBinding,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), PeopleRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let (principal, group) = match &b.subject {
                    BindingSubject::Principal(id) => (Some(id.as_str()), None),
                    BindingSubject::Group(id) => (None, Some(id.as_str())),
                };
                let (query, what, id) = match (principal, group) {
                    (Some(id), _) => (PRINCIPAL_EXISTS, "principal", id),
                    (_, Some(id)) => (GROUP_EXISTS, "group", id),
                    (None, None) => return Ok(Err(PeopleRefusal::NotFound("principal"))),
                };
                if sqlx::query(query)
                    .bind(id)
                    .fetch_optional(tx.conn())
                    .await?
                    .is_none()
                {
                    return Ok(Err(PeopleRefusal::NotFound(what)));
                }
                sqlx::query(
                    "INSERT INTO role_bindings (id, role, principal_id, group_id, selector, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&b.id)
                .bind(b.role.as_str())
                .bind(principal)
                .bind(group)
                .bind(&b.selector)
                .bind(millis(b.created_at))
                .execute(tx.conn())
                .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn delete_role_binding(
                &self,
                id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let deleted = sqlx::query("DELETE FROM role_bindings WHERE id = $1")
                    .bind(id)
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Ok(false);
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn role_bindings(&self) -> Result<Vec<RoleBinding>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, role, principal_id, group_id, selector, created_at \
                     FROM role_bindings ORDER BY created_at, id",
                )
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(binding_from_row).collect()
            }

            async fn effective_bindings(
                &self,
                principal_id: &str,
            ) -> Result<Vec<RoleBinding>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, role, principal_id, group_id, selector, created_at \
                     FROM role_bindings WHERE principal_id = $1 OR group_id IN \
                     (SELECT group_id FROM group_members WHERE principal_id = $1) \
                     ORDER BY created_at, id",
                )
                .bind(principal_id)
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(binding_from_row).collect()
            }

            async fn insert_api_key(
                &self,
                key: &ApiKeyRecord,
                hash: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                sqlx::query(
                    "INSERT INTO api_keys (id, principal_id, hash, created_at, last_used_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, NULL, NULL)",
                )
                .bind(&key.id)
                .bind(&key.principal_id)
                .bind(hash)
                .bind(millis(key.created_at))
                .execute(tx.conn())
                .await?;
                tx.audit(event, now);
                tx.commit().await
            }

            async fn revoke_api_key(
                &self,
                principal_id: &str,
                key_id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let revoked = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 \
                     WHERE id = $2 AND principal_id = $3 AND revoked_at IS NULL",
                )
                .bind(millis(now))
                .bind(key_id)
                .bind(principal_id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if revoked == 0 {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE sessions SET revoked_at = $1 WHERE api_key_id = $2 AND revoked_at IS NULL",
                )
                .bind(millis(now))
                .bind(key_id)
                .execute(tx.conn())
                .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn api_keys(&self, principal_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, principal_id, created_at, last_used_at, revoked_at FROM api_keys \
                     WHERE principal_id = $1 ORDER BY created_at DESC, id",
                )
                .bind(principal_id)
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(api_key_from_row).collect()
            }

            async fn use_api_key(
                &self,
                hash: &str,
                now: DateTime<Utc>,
            ) -> Result<Option<(ApiKeyRecord, PrincipalRecord)>, StoreError> {
                let row = sqlx::query(concat!(
                    "SELECT k.id, k.principal_id, k.created_at, k.last_used_at, k.revoked_at, ",
                    principal_as!(),
                    " FROM api_keys k JOIN principals p ON p.id = k.principal_id \
                     WHERE k.hash = $1 AND k.revoked_at IS NULL"
                ))
                .bind(hash)
                .fetch_optional(self.pool())
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let key = api_key_from_row(&row)?;
                let principal = principal_from_row(&Prefixed(&row))?;
                sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                    .bind(millis(now))
                    .bind(&key.id)
                    .execute(self.pool())
                    .await?;
                Ok(Some((key, principal)))
            }

            async fn insert_session(
                &self,
                s: &SessionRecord,
                hash: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                sqlx::query(
                    "INSERT INTO sessions (id, principal_id, hash, kind, api_key_id, created_at, \
                     expires_at, revoked_at, mfa_at, address) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $9)",
                )
                .bind(&s.id)
                .bind(&s.principal_id)
                .bind(hash)
                .bind(s.kind.as_str())
                .bind(&s.api_key_id)
                .bind(millis(s.created_at))
                .bind(millis(s.expires_at))
                .bind(s.mfa_at.map(millis))
                .bind(&s.address)
                .execute(tx.conn())
                .await?;
                sqlx::query("UPDATE principals SET last_seen_at = $1 WHERE id = $2")
                    .bind(millis(now))
                    .bind(&s.principal_id)
                    .execute(tx.conn())
                    .await?;
                tx.audit(event, now);
                tx.commit().await
            }

            async fn session(
                &self,
                hash: &str,
            ) -> Result<Option<(SessionRecord, PrincipalRecord)>, StoreError> {
                let row = sqlx::query(concat!(
                    "SELECT s.id, s.principal_id, s.kind, s.api_key_id, s.created_at, s.expires_at, \
                     COALESCE(s.revoked_at, k.revoked_at) AS revoked_at, s.mfa_at, s.address, ",
                    principal_as!(),
                    " FROM sessions s JOIN principals p ON p.id = s.principal_id \
                     LEFT JOIN api_keys k ON k.id = s.api_key_id WHERE s.hash = $1"
                ))
                .bind(hash)
                .fetch_optional(self.pool())
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                Ok(Some((
                    session_from_row(&row)?,
                    principal_from_row(&Prefixed(&row))?,
                )))
            }

            async fn live_sessions(
                &self,
                principal_id: &str,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<SessionRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT s.id, s.principal_id, s.kind, s.api_key_id, s.created_at, \
                     s.expires_at, s.revoked_at, s.mfa_at, s.address \
                     FROM sessions s LEFT JOIN api_keys k ON k.id = s.api_key_id \
                     WHERE s.principal_id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 \
                     AND k.revoked_at IS NULL \
                     ORDER BY s.created_at DESC, s.id LIMIT $3",
                )
                .bind(principal_id)
                .bind(millis(now))
                .bind(i64::from(limit))
                .fetch_all(self.pool())
                .await?;
                rows.iter().map(session_from_row).collect()
            }

            async fn end_sessions(
                &self,
                principal_id: &str,
                which: EndSessions<'_>,
                mut event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Vec<String>, StoreError> {
                let (sql, id) = match which {
                    EndSessions::One(id) => (
                        "UPDATE sessions SET revoked_at = $1 \
                         WHERE principal_id = $2 AND id = $3 \
                         AND revoked_at IS NULL AND expires_at > $1 RETURNING id",
                        id,
                    ),
                    EndSessions::AllBut(id) => (
                        "UPDATE sessions SET revoked_at = $1 \
                         WHERE principal_id = $2 AND id <> $3 \
                         AND revoked_at IS NULL AND expires_at > $1 \
                         AND EXISTS (SELECT 1 FROM sessions c WHERE c.id = $3 \
                         AND c.principal_id = $2 AND c.revoked_at IS NULL AND c.expires_at > $1) \
                         RETURNING id",
                        id,
                    ),
                };
                let mut tx = $tx::begin(self).await?;
                // Ends of one principal's sessions take turns (on PostgreSQL the principal's row
                // lock; SQLite has one writer): the next one's statement then sees what the one
                // before ended, so two devices ending each other's sessions leave one live.
                sqlx::query("UPDATE principals SET last_seen_at = last_seen_at WHERE id = $1")
                    .bind(principal_id)
                    .execute(tx.conn())
                    .await?;
                let rows = sqlx::query(sql)
                    .bind(millis(now))
                    .bind(principal_id)
                    .bind(id)
                    .fetch_all(tx.conn())
                    .await?;
                let mut ended = rows
                    .iter()
                    .map(|row| row.text("id"))
                    .collect::<Result<Vec<_>, _>>()?;
                if ended.is_empty() {
                    return Ok(ended);
                }
                ended.sort();
                match &mut event.detail {
                    serde_json::Value::Object(detail) => {
                        detail.insert("ended".into(), serde_json::json!(ended));
                    }
                    other => {
                        let before = other.take();
                        *other = serde_json::json!({"detail": before, "ended": ended});
                    }
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(ended)
            }

            async fn revoke_session(
                &self,
                id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let revoked = sqlx::query(
                    "UPDATE sessions SET revoked_at = $1 \
                     WHERE id = $2 AND revoked_at IS NULL AND expires_at > $1",
                )
                .bind(millis(now))
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if revoked == 0 {
                    return Ok(false);
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn purge_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let purged = sqlx::query(
                    "DELETE FROM sessions WHERE expires_at < $1 \
                     OR (revoked_at IS NOT NULL AND revoked_at < $1)",
                )
                .bind(millis(before))
                .execute(tx.conn())
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(purged)
            }

            async fn set_totp(
                &self,
                principal_id: &str,
                sealed_secret: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                let confirmed = sqlx::query(
                    "SELECT confirmed_at FROM totp WHERE principal_id = $1",
                )
                .bind(principal_id)
                .fetch_optional(tx.conn())
                .await?
                .map(|row| row.opt_int("confirmed_at"))
                .transpose()?
                .flatten()
                .is_some();
                let sql = if confirmed {
                    "UPDATE totp SET pending = $2 WHERE principal_id = $1"
                } else {
                    "INSERT INTO totp (principal_id, secret, confirmed_at, pending, last_step, failures) \
                     VALUES ($1, $2, NULL, NULL, 0, 0) ON CONFLICT (principal_id) \
                     DO UPDATE SET secret = $2, confirmed_at = NULL, pending = NULL, last_step = 0"
                };
                sqlx::query(sql)
                    .bind(principal_id)
                    .bind(sealed_secret)
                    .execute(tx.conn())
                    .await?;
                tx.audit(event, now);
                tx.commit().await
            }

            async fn totp(&self, principal_id: &str) -> Result<Option<TotpRecord>, StoreError> {
                let row = sqlx::query(
                    "SELECT secret, confirmed_at, pending, last_step, failures, locked_until \
                     FROM totp WHERE principal_id = $1",
                )
                .bind(principal_id)
                .fetch_optional(self.pool())
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                Ok(Some(TotpRecord {
                    sealed_secret: row.text("secret")?,
                    confirmed_at: row.opt_int("confirmed_at")?.map(from_millis),
                    pending: row.opt_text("pending")?,
                    last_step: row.int("last_step")?,
                    failures: row.int("failures")?,
                    locked_until: row.opt_int("locked_until")?.map(from_millis),
                }))
            }

            async fn use_totp_step(
                &self,
                code: &TotpUse<'_>,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let TotpUse {
                    principal_id,
                    session_id,
                    step,
                    matched,
                    pending,
                } = *code;
                let mut tx = $tx::begin(self).await?;
                let sql = if pending {
                    "UPDATE totp SET last_step = $1, confirmed_at = $2, failures = 0, \
                     locked_until = NULL, secret = pending, pending = NULL \
                     WHERE principal_id = $3 AND last_step < $1 AND pending = $4 \
                     AND (locked_until IS NULL OR locked_until <= $2)"
                } else {
                    "UPDATE totp SET last_step = $1, confirmed_at = COALESCE(confirmed_at, $2), \
                     failures = 0, locked_until = NULL \
                     WHERE principal_id = $3 AND last_step < $1 AND secret = $4 \
                     AND (locked_until IS NULL OR locked_until <= $2)"
                };
                let used = sqlx::query(sql)
                    .bind(step)
                    .bind(millis(now))
                    .bind(principal_id)
                    .bind(matched)
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                if used == 0 {
                    return Ok(false);
                }
                sqlx::query("UPDATE sessions SET mfa_at = $1 WHERE id = $2 AND principal_id = $3")
                    .bind(millis(now))
                    .bind(session_id)
                    .bind(principal_id)
                    .execute(tx.conn())
                    .await?;
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn record_totp_failure(
                &self,
                principal_id: &str,
                lock_after: i64,
                lock_until: DateTime<Utc>,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<i64, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let row = sqlx::query(
                    "UPDATE totp SET failures = failures + 1, \
                     locked_until = CASE WHEN failures + 1 >= $1 THEN $2 ELSE locked_until END \
                     WHERE principal_id = $3 RETURNING failures",
                )
                .bind(lock_after)
                .bind(millis(lock_until))
                .bind(principal_id)
                .fetch_optional(tx.conn())
                .await?;
                let failures = row.map(|row| row.int("failures")).transpose()?.unwrap_or(0);
                tx.audit(event, now);
                tx.commit().await?;
                Ok(failures)
            }

            async fn record_sign_in(
                &self,
                principal_id: &str,
                good: bool,
                lock_after: i64,
                lock_until: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                if good {
                    sqlx::query(
                        "UPDATE principals SET failed_logins = 0, locked_until = NULL WHERE id = $1",
                    )
                    .bind(principal_id)
                    .execute(tx.conn())
                    .await?;
                } else {
                    sqlx::query(
                        "UPDATE principals SET failed_logins = failed_logins + 1, \
                         locked_until = CASE WHEN failed_logins + 1 >= $1 THEN $2 ELSE locked_until END \
                         WHERE id = $3",
                    )
                    .bind(lock_after)
                    .bind(millis(lock_until))
                    .bind(principal_id)
                    .execute(tx.conn())
                    .await?;
                }
                tx.commit().await
            }

            async fn sign_in_locked_until(
                &self,
                principal_id: &str,
            ) -> Result<Option<DateTime<Utc>>, StoreError> {
                let row = sqlx::query("SELECT locked_until FROM principals WHERE id = $1")
                    .bind(principal_id)
                    .fetch_optional(self.pool())
                    .await?;
                Ok(row
                    .map(|row| row.opt_int("locked_until"))
                    .transpose()?
                    .flatten()
                    .map(from_millis))
            }

            async fn has_principals(&self) -> Result<bool, StoreError> {
                Ok(sqlx::query("SELECT 1 AS one FROM principals LIMIT 1")
                    .fetch_optional(self.pool())
                    .await?
                    .is_some())
            }

            async fn legacy_admin_tokens(&self) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query("SELECT hash FROM admin_tokens ORDER BY created_at, hash")
                    .fetch_all(self.pool())
                    .await?;
                rows.iter()
                    .map(|row| Ok(row.try_get::<String, _>("hash")?))
                    .collect()
            }

            async fn bootstrap_admin(
                &self,
                p: &PrincipalRecord,
                binding: &RoleBinding,
                keys: &[(ApiKeyRecord, String)],
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                let exists = sqlx::query(PRINCIPAL_EXISTS)
                    .bind(&p.id)
                    .fetch_optional(tx.conn())
                    .await?
                    .is_some();
                if !exists {
                    sqlx::query(
                        "INSERT INTO principals (id, kind, name, display_name, created_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&p.id)
                    .bind(p.kind.as_str())
                    .bind(&p.name)
                    .bind(&p.display_name)
                    .bind(millis(p.created_at))
                    .execute(tx.conn())
                    .await?;
                    let principal = match &binding.subject {
                        BindingSubject::Principal(id) => id.as_str(),
                        BindingSubject::Group(_) => p.id.as_str(),
                    };
                    sqlx::query(
                        "INSERT INTO role_bindings (id, role, principal_id, group_id, selector, created_at) \
                         VALUES ($1, $2, $3, NULL, NULL, $4)",
                    )
                    .bind(&binding.id)
                    .bind(binding.role.as_str())
                    .bind(principal)
                    .bind(millis(binding.created_at))
                    .execute(tx.conn())
                    .await?;
                }
                for (key, hash) in keys {
                    sqlx::query(
                        "INSERT INTO api_keys (id, principal_id, hash, created_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&key.id)
                    .bind(&p.id)
                    .bind(hash)
                    .bind(millis(key.created_at))
                    .execute(tx.conn())
                    .await?;
                }
                sqlx::query("DELETE FROM admin_tokens").execute(tx.conn()).await?;
                tx.audit(event, now);
                tx.commit().await
            }

            async fn insert_sso_login(&self, l: &SsoLoginRecord) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM sso_logins WHERE expires_at < $1")
                    .bind(millis(l.created_at - chrono::Duration::days(1)))
                    .execute(self.pool())
                    .await?;
                sqlx::query(
                    "INSERT INTO sso_logins (id, kind, nonce, pkce_verifier, redirect_uri, \
                     device_code, created_at, expires_at, used_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
                )
                .bind(&l.id)
                .bind(l.flow.as_str())
                .bind(&l.nonce)
                .bind(&l.sealed_pkce_verifier)
                .bind(&l.redirect_uri)
                .bind(&l.sealed_device_code)
                .bind(millis(l.created_at))
                .bind(millis(l.expires_at))
                .execute(self.pool())
                .await?;
                Ok(())
            }

            async fn sso_login(
                &self,
                id: &str,
                now: DateTime<Utc>,
            ) -> Result<Option<SsoLoginRecord>, StoreError> {
                let row = sqlx::query(SSO_LOGIN_COLUMNS)
                    .bind(id)
                    .bind(millis(now))
                    .fetch_optional(self.pool())
                    .await?;
                row.as_ref().map(sso_login_from_row).transpose()
            }

            async fn take_sso_login(
                &self,
                id: &str,
                now: DateTime<Utc>,
            ) -> Result<Option<SsoLoginRecord>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let row = sqlx::query(SSO_LOGIN_COLUMNS)
                    .bind(id)
                    .bind(millis(now))
                    .fetch_optional(tx.conn())
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let login = sso_login_from_row(&row)?;
                let taken = sqlx::query(
                    "UPDATE sso_logins SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
                )
                .bind(millis(now))
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if taken == 0 {
                    return Ok(None);
                }
                tx.commit().await?;
                Ok(Some(SsoLoginRecord {
                    used_at: Some(now),
                    ..login
                }))
            }

            async fn set_host_labels(
                &self,
                host_id: &str,
                labels: &Labels,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let text = serde_json::to_string(labels).map_err(|e| corrupt("host labels", e))?;
                let mut tx = $tx::begin(self).await?;
                let changed = sqlx::query(
                    "UPDATE hosts SET labels = $1 WHERE id = $2 AND removed_at IS NULL",
                )
                .bind(&text)
                .bind(host_id)
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

            async fn labels_of_host(&self, host_id: &str) -> Result<Option<Labels>, StoreError> {
                let row = sqlx::query("SELECT labels FROM hosts WHERE id = $1")
                    .bind(host_id)
                    .fetch_optional(self.pool())
                    .await?;
                row.map(|row| labels_from_text(&row.text("labels")?))
                    .transpose()
            }

            async fn host_labels(&self) -> Result<HashMap<String, Labels>, StoreError> {
                let rows = sqlx::query("SELECT id, labels FROM hosts")
                    .fetch_all(self.pool())
                    .await?;
                let mut out = HashMap::with_capacity(rows.len());
                for row in &rows {
                    let labels: String = row.try_get("labels")?;
                    out.insert(row.try_get("id")?, labels_from_text(&labels)?);
                }
                Ok(out)
            }
        }
    };
}

use super::postgres::Tx as PgTx;
use super::sqlite::SqliteTx;

people_store!(SqliteStore, SqliteTx);
people_store!(PgStore, PgTx);
