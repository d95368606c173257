//! Just-in-time access in the database: access policies (issue 12).
//!
//! One body of SQL for both engines (`$n` placeholders), instantiated per store by
//! `access_store!` with its write transaction; every change is audited in it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latch_common::access::{AccessKind, TimeWindow};

use super::rows::{Columns, corrupt, from_millis, millis};
use super::{PgStore, SqliteStore, StoreError};
use crate::audit::AuditEvent;

/// An access policy as stored (groups by id; names filled in on reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// `pol_…`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The requesters' group.
    pub group_id: String,
    /// Its name (filled in on reads).
    pub group: String,
    /// What may be requested.
    pub access: Vec<AccessKind>,
    /// The hosts' label selector.
    pub hosts: String,
    /// The longest window.
    pub max_minutes: u32,
    /// Whether requests need approval.
    pub approval_required: bool,
    /// The approvers' group.
    pub approver_group_id: Option<String>,
    /// Its name (filled in on reads).
    pub approver_group: Option<String>,
    /// How many approvals.
    pub approvals: u32,
    /// Service users' requests up to this long are approved at once.
    pub auto_approve_service_minutes: Option<u32>,
    /// When requests are allowed.
    pub windows: Vec<TimeWindow>,
    /// One holder at a time per host and access.
    pub exclusive: bool,
    /// A second factor at request time.
    pub mfa_at_request: bool,
    /// A second factor at approval time.
    pub mfa_at_approval: bool,
    /// Re-confirmation interval.
    pub reauth_minutes: Option<u32>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Why a policy change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRefusal {
    /// The name is taken.
    NameTaken,
    /// No such policy.
    Missing,
}

/// Persistence of access policies.
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Adds a policy (audited); refused when the name is taken.
    async fn insert_policy(
        &self,
        policy: &PolicyRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), PolicyRefusal>, StoreError>;
    /// Every policy, by name.
    async fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError>;
    /// Replaces every field of policy `policy.id` but its creation time (audited).
    async fn replace_policy(
        &self,
        policy: &PolicyRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), PolicyRefusal>, StoreError>;
    /// Deletes a policy (audited).
    async fn delete_policy(
        &self,
        id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), PolicyRefusal>, StoreError>;
}

fn flag(value: i64) -> bool {
    value != 0
}

fn minutes(value: Option<i64>) -> Option<u32> {
    value.and_then(|m| u32::try_from(m).ok())
}

fn policy_from_row(row: &impl Columns) -> Result<PolicyRecord, StoreError> {
    Ok(PolicyRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        description: row.text("description")?,
        group_id: row.text("group_id")?,
        group: row.text("group_name")?,
        access: serde_json::from_str(&row.text("access")?)
            .map_err(|e| corrupt("policy access", e))?,
        hosts: row.text("hosts")?,
        max_minutes: minutes(Some(row.int("max_minutes")?)).unwrap_or(0),
        approval_required: flag(row.int("approval_required")?),
        approver_group_id: row.opt_text("approver_group_id")?,
        approver_group: row.opt_text("approver_group_name")?,
        approvals: minutes(Some(row.int("approvals")?)).unwrap_or(1),
        auto_approve_service_minutes: minutes(row.opt_int("auto_approve_service_minutes")?),
        windows: serde_json::from_str(&row.text("windows")?)
            .map_err(|e| corrupt("policy windows", e))?,
        exclusive: flag(row.int("exclusive")?),
        mfa_at_request: flag(row.int("mfa_at_request")?),
        mfa_at_approval: flag(row.int("mfa_at_approval")?),
        reauth_minutes: minutes(row.opt_int("reauth_minutes")?),
        created_at: from_millis(row.int("created_at")?),
        updated_at: from_millis(row.int("updated_at")?),
    })
}

const POLICY_SELECT: &str = "SELECT p.id, p.name, p.description, p.group_id, g.name AS group_name, \
     p.access, p.hosts, p.max_minutes, p.approval_required, p.approver_group_id, \
     a.name AS approver_group_name, p.approvals, p.auto_approve_service_minutes, p.windows, \
     p.exclusive, p.mfa_at_request, p.mfa_at_approval, p.reauth_minutes, p.created_at, \
     p.updated_at FROM access_policies p JOIN groups g ON g.id = p.group_id \
     LEFT JOIN groups a ON a.id = p.approver_group_id";

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| corrupt("policy", e))
}

macro_rules! access_store {
    ($store:ty, $tx:ident) => {
        #[async_trait]
        impl AccessStore for $store {
            async fn insert_policy(
                &self,
                p: &PolicyRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), PolicyRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let inserted = sqlx::query(
                    "INSERT INTO access_policies (id, name, description, group_id, access, hosts, \
                     max_minutes, approval_required, approver_group_id, approvals, \
                     auto_approve_service_minutes, windows, exclusive, mfa_at_request, \
                     mfa_at_approval, reauth_minutes, created_at, updated_at) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
                )
                .bind(&p.id)
                .bind(&p.name)
                .bind(&p.description)
                .bind(&p.group_id)
                .bind(json(&p.access)?)
                .bind(&p.hosts)
                .bind(i64::from(p.max_minutes))
                .bind(i64::from(p.approval_required))
                .bind(&p.approver_group_id)
                .bind(i64::from(p.approvals))
                .bind(p.auto_approve_service_minutes.map(i64::from))
                .bind(json(&p.windows)?)
                .bind(i64::from(p.exclusive))
                .bind(i64::from(p.mfa_at_request))
                .bind(i64::from(p.mfa_at_approval))
                .bind(p.reauth_minutes.map(i64::from))
                .bind(millis(p.created_at))
                .bind(millis(p.updated_at))
                .execute(tx.conn())
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => return Ok(Err(PolicyRefusal::NameTaken)),
                    other => other?,
                };
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
                let sql = format!("{POLICY_SELECT} ORDER BY p.name");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(policy_from_row).collect()
            }

            async fn replace_policy(
                &self,
                p: &PolicyRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), PolicyRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let updated = sqlx::query(
                    "UPDATE access_policies SET name = $1, description = $2, group_id = $3, \
                     access = $4, hosts = $5, max_minutes = $6, approval_required = $7, \
                     approver_group_id = $8, approvals = $9, auto_approve_service_minutes = $10, \
                     windows = $11, exclusive = $12, mfa_at_request = $13, mfa_at_approval = $14, \
                     reauth_minutes = $15, updated_at = $16 WHERE id = $17",
                )
                .bind(&p.name)
                .bind(&p.description)
                .bind(&p.group_id)
                .bind(json(&p.access)?)
                .bind(&p.hosts)
                .bind(i64::from(p.max_minutes))
                .bind(i64::from(p.approval_required))
                .bind(&p.approver_group_id)
                .bind(i64::from(p.approvals))
                .bind(p.auto_approve_service_minutes.map(i64::from))
                .bind(json(&p.windows)?)
                .bind(i64::from(p.exclusive))
                .bind(i64::from(p.mfa_at_request))
                .bind(i64::from(p.mfa_at_approval))
                .bind(p.reauth_minutes.map(i64::from))
                .bind(millis(p.updated_at))
                .bind(&p.id)
                .execute(tx.conn())
                .await;
                match updated {
                    Err(e) if is_unique_violation(&e) => return Ok(Err(PolicyRefusal::NameTaken)),
                    Ok(done) if done.rows_affected() == 0 => return Ok(Err(PolicyRefusal::Missing)),
                    other => other?,
                };
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn delete_policy(
                &self,
                id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), PolicyRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let gone = sqlx::query("DELETE FROM access_policies WHERE id = $1")
                    .bind(id)
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Ok(Err(PolicyRefusal::Missing));
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }
        }
    };
}

use super::postgres::Tx as PgTx;
use super::sqlite::SqliteTx;

access_store!(SqliteStore, SqliteTx);
access_store!(PgStore, PgTx);
