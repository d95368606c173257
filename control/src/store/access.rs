//! Just-in-time access in the database: access policies, requests and their decisions
//! (issue 12).
//!
//! One body of SQL for both engines (`$n` placeholders), instantiated per store by
//! `access_store!` with its write transaction; every change is audited in it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latch_common::access::{AccessKind, TimeWindow};

use sqlx::Row as _;

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

/// An access request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `ar_…`.
    pub id: String,
    /// Who asks.
    pub requester_id: String,
    /// What was asked for: a host (id or name as given), or a label selector.
    pub target: String,
    /// What.
    pub access: AccessKind,
    /// For how long, once active.
    pub minutes: u32,
    /// Why.
    pub reason: String,
    /// The requester's SSH public key (or the public half of the key pair Latch made).
    pub ssh_public_key: Option<String>,
    /// Latch generated the key pair (its private half was returned once, never stored).
    pub key_generated: bool,
    /// The policy that allowed it.
    pub policy_id: String,
    /// Its name then.
    pub policy_name: String,
    /// Who approves.
    pub approver_group_id: Option<String>,
    /// How many approvals (0: approved by the policy).
    pub approvals_needed: u32,
    /// One holder at a time per host and access.
    pub exclusive: bool,
    /// `pending_approval`, `approved`, `provisioning`, `active`, `revoking`, `expired`, …
    pub state: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// A pending request expires then.
    pub pending_until: Option<DateTime<Utc>>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// The deciding reason (a denial's, a cancellation's, a revocation's).
    pub decision_reason: Option<String>,
    /// The account on the hosts (set when provisioning starts).
    pub account: String,
    /// When every host confirmed: the window starts.
    pub activated_at: Option<DateTime<Utc>>,
    /// When the window ends.
    pub ends_at: Option<DateTime<Utc>>,
    /// Why it ends (`expired`, `revoked`, `failed`), set when revoking starts.
    pub end_reason: Option<String>,
    /// When every host confirmed the removal.
    pub ended_at: Option<DateTime<Utc>>,
    /// The holder re-confirms with a second factor before this, or the grant ends.
    pub confirm_by: Option<DateTime<Utc>>,
    /// The OpenSSH user certificate issued for the window.
    pub certificate: Option<String>,
    /// Bumped by every change; updates compare it.
    pub version: i64,
    /// Approvers' decisions (filled in on reads).
    pub decisions: Vec<DecisionRecord>,
    /// Its hosts (filled in on reads).
    pub hosts: Vec<RequestHostRecord>,
}

/// One host of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHostRecord {
    /// The host.
    pub host_id: String,
    /// `waiting`, `provisioning`, `active`, `failed`, `revoking`, `revoked`.
    pub state: String,
    /// The create-account job.
    pub provision_job_id: Option<String>,
    /// The delete-account job.
    pub revoke_job_id: Option<String>,
    /// What went wrong here.
    pub error: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only this requester's.
    pub requester_id: Option<String>,
    /// Only in this state.
    pub state: Option<String>,
    /// Only those this principal made, or may decide as a member of these approver groups
    /// (`None`: everyone's).
    pub visible_to: Option<(String, Vec<String>)>,
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// The approver.
    pub principal_id: String,
    /// `approve` or `deny`.
    pub decision: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Why a request change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestRefusal {
    /// No such request.
    Missing,
    /// It is no longer in a state that allows this (its state).
    NotInState(String),
    /// This approver decided already.
    AlreadyDecided,
    /// An exclusive access is held by this other request.
    Held(String),
    /// The requester has this other request, not over yet, on one of the hosts.
    Overlaps(String),
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
    /// Records a request (audited): refused while the requester has another request not over
    /// on one of its hosts, and, approved at once, while another request holds the access
    /// there exclusively (or at all, when this one is exclusive).
    async fn insert_request(
        &self,
        request: &RequestRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), RequestRefusal>, StoreError>;
    /// One request with its decisions.
    async fn access_request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// Records an approver's decision on a pending request (audited): a denial denies it, the
    /// last approval needed approves it (refused while an exclusive access is held). Returns
    /// the request's state afterwards.
    async fn decide_request(
        &self,
        id: &str,
        decision: &DecisionRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<String, RequestRefusal>, StoreError>;
    /// Cancels a pending or approved request (audited).
    async fn cancel_request(
        &self,
        id: &str,
        reason: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<Result<(), RequestRefusal>, StoreError>;
    /// Expires the pending requests nobody decided in time (each audited); their ids.
    async fn expire_pending_requests(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError>;
    /// A page of requests, newest first, with their decisions and hosts.
    async fn list_requests(
        &self,
        filter: &RequestFilter,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<RequestRecord>, StoreError>;
    /// The ids of requests the provisioning sweep has work on at `now`: approved,
    /// provisioning and revoking ones, and active ones whose window or re-confirmation
    /// deadline has passed.
    async fn requests_to_advance(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError>;
    /// Writes a request's changeable fields and its hosts' rows, if its version is still
    /// `request.version` (then bumped); `false` when someone else changed it first. The
    /// events are audited in the same transaction.
    async fn save_request(
        &self,
        request: &RequestRecord,
        events: Vec<AuditEvent>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// The requests not over yet (pending to revoking) that involve `host_id`: (request id,
    /// requester id, account).
    async fn live_requests_on_host(
        &self,
        host_id: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError>;
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

const REQUEST_SELECT: &str = "SELECT id, requester_id, target, access, minutes, reason, \
     ssh_public_key, key_generated, policy_id, policy_name, approver_group_id, approvals_needed, \
     exclusive, state, created_at, pending_until, decided_at, decision_reason, account, \
     activated_at, ends_at, end_reason, ended_at, confirm_by, certificate, version \
     FROM access_requests";

/// States in which a request holds its access (for exclusivity).
const HOLDING: &str = "('approved', 'provisioning', 'active', 'revoking')";

/// States of a request that is not over.
const LIVE: &str = "('pending_approval', 'approved', 'provisioning', 'active', 'revoking')";

fn request_from_row(row: &impl Columns) -> Result<RequestRecord, StoreError> {
    Ok(RequestRecord {
        id: row.text("id")?,
        requester_id: row.text("requester_id")?,
        target: row.text("target")?,
        access: row
            .text("access")?
            .parse()
            .map_err(|e| corrupt("request access", e))?,
        minutes: minutes(Some(row.int("minutes")?)).unwrap_or(0),
        reason: row.text("reason")?,
        ssh_public_key: row.opt_text("ssh_public_key")?,
        key_generated: flag(row.int("key_generated")?),
        policy_id: row.text("policy_id")?,
        policy_name: row.text("policy_name")?,
        approver_group_id: row.opt_text("approver_group_id")?,
        approvals_needed: minutes(Some(row.int("approvals_needed")?)).unwrap_or(0),
        exclusive: flag(row.int("exclusive")?),
        state: row.text("state")?,
        created_at: from_millis(row.int("created_at")?),
        pending_until: row.opt_int("pending_until")?.map(from_millis),
        decided_at: row.opt_int("decided_at")?.map(from_millis),
        decision_reason: row.opt_text("decision_reason")?,
        account: row.text("account")?,
        activated_at: row.opt_int("activated_at")?.map(from_millis),
        ends_at: row.opt_int("ends_at")?.map(from_millis),
        end_reason: row.opt_text("end_reason")?,
        ended_at: row.opt_int("ended_at")?.map(from_millis),
        confirm_by: row.opt_int("confirm_by")?.map(from_millis),
        certificate: row.opt_text("certificate")?,
        version: row.int("version")?,
        decisions: Vec::new(),
        hosts: Vec::new(),
    })
}

fn request_host_from_row(row: &impl Columns) -> Result<RequestHostRecord, StoreError> {
    Ok(RequestHostRecord {
        host_id: row.text("host_id")?,
        state: row.text("state")?,
        provision_job_id: row.opt_text("provision_job_id")?,
        revoke_job_id: row.opt_text("revoke_job_id")?,
        error: row.opt_text("error")?,
        updated_at: from_millis(row.int("updated_at")?),
    })
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| corrupt("policy", e))
}

macro_rules! access_store {
    ($store:ty, $tx:ident, $conn:ty, $lock:literal) => {
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

            async fn insert_request(
                &self,
                r: &RequestRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), RequestRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                for host in &r.hosts {
                    // Under the host's lock (PostgreSQL; SQLite writes one at a time): one
                    // request not over per requester and host, so two made at once cannot
                    // share an account.
                    if let Some(other) =
                        Self::live_of(tx.conn(), &host.host_id, &r.requester_id).await?
                    {
                        return Ok(Err(RequestRefusal::Overlaps(other)));
                    }
                    if r.state == "approved" {
                        if let Some(holder) =
                            Self::holder(tx.conn(), &host.host_id, r.access, &r.id, r.exclusive)
                                .await?
                        {
                            return Ok(Err(RequestRefusal::Held(holder)));
                        }
                    }
                }
                sqlx::query(
                    "INSERT INTO access_requests (id, requester_id, target, access, minutes, reason, \
                     ssh_public_key, key_generated, policy_id, policy_name, approver_group_id, \
                     approvals_needed, exclusive, state, created_at, pending_until, decided_at, \
                     decision_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                     $13, $14, $15, $16, $17, $18)",
                )
                .bind(&r.id)
                .bind(&r.requester_id)
                .bind(&r.target)
                .bind(r.access.as_str())
                .bind(i64::from(r.minutes))
                .bind(&r.reason)
                .bind(&r.ssh_public_key)
                .bind(i64::from(r.key_generated))
                .bind(&r.policy_id)
                .bind(&r.policy_name)
                .bind(&r.approver_group_id)
                .bind(i64::from(r.approvals_needed))
                .bind(i64::from(r.exclusive))
                .bind(&r.state)
                .bind(millis(r.created_at))
                .bind(r.pending_until.map(millis))
                .bind(r.decided_at.map(millis))
                .bind(&r.decision_reason)
                .execute(tx.conn())
                .await?;
                for host in &r.hosts {
                    sqlx::query(
                        "INSERT INTO access_request_hosts (request_id, host_id, state, updated_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&r.id)
                    .bind(&host.host_id)
                    .bind(&host.state)
                    .bind(millis(host.updated_at))
                    .execute(tx.conn())
                    .await?;
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn access_request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
                let sql = format!("{REQUEST_SELECT} WHERE id = $1");
                let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?
                else {
                    return Ok(None);
                };
                let mut request = request_from_row(&row)?;
                self.fill_request(&mut request).await?;
                Ok(Some(request))
            }

            async fn list_requests(
                &self,
                filter: &RequestFilter,
                limit: u32,
                offset: u32,
            ) -> Result<Vec<RequestRecord>, StoreError> {
                let mut sql = format!(
                    "{REQUEST_SELECT} WHERE (CAST($1 AS TEXT) IS NULL OR requester_id = $1) \
                     AND (CAST($2 AS TEXT) IS NULL OR state = $2)"
                );
                let (viewer, groups) = match &filter.visible_to {
                    Some((viewer, groups)) => (Some(viewer.clone()), groups.clone()),
                    None => (None, Vec::new()),
                };
                if viewer.is_some() {
                    sql.push_str(" AND (requester_id = $5");
                    for n in 0..groups.len() {
                        sql.push_str(&format!(" OR approver_group_id = ${}", n + 6));
                    }
                    sql.push(')');
                }
                sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4");
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&filter.requester_id)
                    .bind(&filter.state)
                    .bind(i64::from(limit))
                    .bind(i64::from(offset));
                if let Some(viewer) = &viewer {
                    query = query.bind(viewer);
                    for group in &groups {
                        query = query.bind(group);
                    }
                }
                let rows = query.fetch_all(self.pool()).await?;
                let mut requests = Vec::with_capacity(rows.len());
                for row in &rows {
                    let mut request = request_from_row(row)?;
                    self.fill_request(&mut request).await?;
                    requests.push(request);
                }
                Ok(requests)
            }

            async fn requests_to_advance(
                &self,
                now: DateTime<Utc>,
            ) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id FROM access_requests WHERE state IN ('approved', 'provisioning', \
                     'revoking') OR (state = 'active' AND (ends_at <= $1 OR confirm_by <= $1 \
                     OR requester_id IN (SELECT id FROM principals WHERE disabled_at IS NOT NULL))) \
                     ORDER BY CASE state WHEN 'active' THEN 0 WHEN 'approved' THEN 1 \
                     WHEN 'provisioning' THEN 2 ELSE 3 END, created_at LIMIT 500",
                )
                .bind(millis(now))
                .fetch_all(self.pool())
                .await?;
                rows.iter()
                    .map(|row| row.text("id").map_err(StoreError::from))
                    .collect()
            }

            async fn save_request(
                &self,
                r: &RequestRecord,
                events: Vec<AuditEvent>,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let changed = sqlx::query(
                    "UPDATE access_requests SET state = $1, decision_reason = $2, account = $3, \
                     activated_at = $4, ends_at = $5, end_reason = $6, ended_at = $7, \
                     confirm_by = $8, certificate = $9, pending_until = $10, \
                     version = version + 1 WHERE id = $11 AND version = $12",
                )
                .bind(&r.state)
                .bind(&r.decision_reason)
                .bind(&r.account)
                .bind(r.activated_at.map(millis))
                .bind(r.ends_at.map(millis))
                .bind(&r.end_reason)
                .bind(r.ended_at.map(millis))
                .bind(r.confirm_by.map(millis))
                .bind(&r.certificate)
                .bind(r.pending_until.map(millis))
                .bind(&r.id)
                .bind(r.version)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if changed == 0 {
                    return Ok(false);
                }
                for host in &r.hosts {
                    sqlx::query(
                        "UPDATE access_request_hosts SET state = $1, provision_job_id = $2, \
                         revoke_job_id = $3, error = $4, updated_at = $5 \
                         WHERE request_id = $6 AND host_id = $7",
                    )
                    .bind(&host.state)
                    .bind(&host.provision_job_id)
                    .bind(&host.revoke_job_id)
                    .bind(&host.error)
                    .bind(millis(host.updated_at))
                    .bind(&r.id)
                    .bind(&host.host_id)
                    .execute(tx.conn())
                    .await?;
                }
                for event in events {
                    tx.audit(event, now);
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn live_requests_on_host(
                &self,
                host_id: &str,
            ) -> Result<Vec<(String, String, String)>, StoreError> {
                let sql = format!(
                    "SELECT r.id, r.requester_id, r.account FROM access_requests r \
                     JOIN access_request_hosts h ON h.request_id = r.id \
                     WHERE h.host_id = $1 AND r.state IN {LIVE} ORDER BY r.created_at"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(host_id)
                    .fetch_all(self.pool())
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.text("id")?, row.text("requester_id")?, row.text("account")?)))
                    .collect()
            }

            async fn decide_request(
                &self,
                id: &str,
                d: &DecisionRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<String, RequestRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let sql = format!("{REQUEST_SELECT} WHERE id = $1{}", $lock);
                let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(tx.conn())
                    .await?
                else {
                    return Ok(Err(RequestRefusal::Missing));
                };
                let request = request_from_row(&row)?;
                if request.state != "pending_approval" {
                    return Ok(Err(RequestRefusal::NotInState(request.state)));
                }
                let inserted = sqlx::query(
                    "INSERT INTO access_decisions (request_id, principal_id, decision, reason, at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id)
                .bind(&d.principal_id)
                .bind(&d.decision)
                .bind(&d.reason)
                .bind(millis(d.at))
                .execute(tx.conn())
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => return Ok(Err(RequestRefusal::AlreadyDecided)),
                    other => other?,
                };
                let state = if d.decision == "deny" {
                    "denied"
                } else {
                    let approvals: i64 = sqlx::query(
                        "SELECT count(*) AS n FROM access_decisions WHERE request_id = $1 \
                         AND decision = 'approve'",
                    )
                    .bind(id)
                    .fetch_one(tx.conn())
                    .await?
                    .try_get("n")?;
                    if approvals < i64::from(request.approvals_needed) {
                        "pending_approval"
                    } else {
                        for host_id in Self::request_hosts(tx.conn(), id).await? {
                            if let Some(holder) = Self::holder(
                                tx.conn(),
                                &host_id,
                                request.access,
                                id,
                                request.exclusive,
                            )
                            .await?
                            {
                                return Ok(Err(RequestRefusal::Held(holder)));
                            }
                        }
                        "approved"
                    }
                };
                if state != "pending_approval" {
                    sqlx::query(
                        "UPDATE access_requests SET state = $1, decided_at = $2, \
                         decision_reason = $3, pending_until = NULL, version = version + 1 \
                         WHERE id = $4",
                    )
                    .bind(state)
                    .bind(millis(now))
                    .bind(&d.reason)
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(state.to_owned()))
            }

            async fn cancel_request(
                &self,
                id: &str,
                reason: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<Result<(), RequestRefusal>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let changed = sqlx::query(
                    "UPDATE access_requests SET state = 'cancelled', decided_at = $1, \
                     decision_reason = $2, pending_until = NULL, version = version + 1 \
                     WHERE id = $3 AND state IN ('pending_approval', 'approved')",
                )
                .bind(millis(now))
                .bind(reason)
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if changed == 0 {
                    let state: Option<String> =
                        sqlx::query("SELECT state FROM access_requests WHERE id = $1")
                            .bind(id)
                            .fetch_optional(tx.conn())
                            .await?
                            .map(|row| row.try_get("state"))
                            .transpose()?;
                    return Ok(Err(match state {
                        Some(state) => RequestRefusal::NotInState(state),
                        None => RequestRefusal::Missing,
                    }));
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(Ok(()))
            }

            async fn expire_pending_requests(
                &self,
                now: DateTime<Utc>,
            ) -> Result<Vec<String>, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let rows = sqlx::query(
                    "UPDATE access_requests SET state = 'expired', decided_at = $1, \
                     decision_reason = 'nobody decided in time', pending_until = NULL, \
                     version = version + 1 \
                     WHERE state = 'pending_approval' AND pending_until <= $1 RETURNING id",
                )
                .bind(millis(now))
                .fetch_all(tx.conn())
                .await?;
                let ids: Vec<String> = rows
                    .iter()
                    .map(|row| row.text("id"))
                    .collect::<Result<_, _>>()?;
                if ids.is_empty() {
                    return Ok(ids);
                }
                for id in &ids {
                    tx.audit(
                        AuditEvent::new(crate::vault::CONTROL_PLANE, "access.request_expired")
                            .detail(serde_json::json!({"request_id": id})),
                        now,
                    );
                }
                tx.commit().await?;
                Ok(ids)
            }
        }

        impl $store {
            /// The request holding `access` on `host_id` now (other than `except`) in a way
            /// that excludes another: an exclusive holder, or any holder when the newcomer is
            /// `exclusive`. Locks the host's row on PostgreSQL so two approvals cannot both
            /// pass.
            async fn holder(
                conn: &mut $conn,
                host_id: &str,
                access: AccessKind,
                except: &str,
                exclusive: bool,
            ) -> Result<Option<String>, StoreError> {
                Self::lock_host(conn, host_id).await?;
                let sql = format!(
                    "SELECT r.id FROM access_requests r JOIN access_request_hosts h \
                     ON h.request_id = r.id WHERE h.host_id = $1 AND r.access = $2 \
                     AND r.id <> $3 AND (r.exclusive = 1 OR $4 = 1) AND r.state IN {HOLDING} \
                     ORDER BY r.created_at LIMIT 1"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(host_id)
                    .bind(access.as_str())
                    .bind(except)
                    .bind(i64::from(exclusive))
                    .fetch_optional(&mut *conn)
                    .await?;
                row.map(|r| r.text("id")).transpose().map_err(StoreError::from)
            }

            /// The request of `requester_id` on `host_id` that is not over, if any (locking the
            /// host's row on PostgreSQL).
            async fn live_of(
                conn: &mut $conn,
                host_id: &str,
                requester_id: &str,
            ) -> Result<Option<String>, StoreError> {
                Self::lock_host(conn, host_id).await?;
                let sql = format!(
                    "SELECT r.id FROM access_requests r JOIN access_request_hosts h \
                     ON h.request_id = r.id WHERE h.host_id = $1 AND r.requester_id = $2 \
                     AND r.state IN {LIVE} LIMIT 1"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(host_id)
                    .bind(requester_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                row.map(|r| r.text("id")).transpose().map_err(StoreError::from)
            }

            /// Locks the host's row on PostgreSQL (SQLite writes one at a time), so checks
            /// of what holds the host and the change that follows them cannot interleave.
            async fn lock_host(conn: &mut $conn, host_id: &str) -> Result<(), StoreError> {
                let lock = format!("SELECT id FROM hosts WHERE id = $1{}", $lock);
                sqlx::query(sqlx::AssertSqlSafe(lock))
                    .bind(host_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(())
            }

            /// The hosts of request `id`.
            async fn request_hosts(conn: &mut $conn, id: &str) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "SELECT host_id FROM access_request_hosts WHERE request_id = $1 ORDER BY host_id",
                )
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|row| row.text("host_id").map_err(StoreError::from))
                    .collect()
            }

            /// Fills in a request's decisions and hosts.
            async fn fill_request(&self, request: &mut RequestRecord) -> Result<(), StoreError> {
                let rows = sqlx::query(
                    "SELECT principal_id, decision, reason, at FROM access_decisions \
                     WHERE request_id = $1 ORDER BY at, principal_id",
                )
                .bind(&request.id)
                .fetch_all(self.pool())
                .await?;
                for row in &rows {
                    request.decisions.push(DecisionRecord {
                        principal_id: row.text("principal_id")?,
                        decision: row.text("decision")?,
                        reason: row.text("reason")?,
                        at: from_millis(row.int("at")?),
                    });
                }
                let rows = sqlx::query(
                    "SELECT host_id, state, provision_job_id, revoke_job_id, error, updated_at \
                     FROM access_request_hosts WHERE request_id = $1 ORDER BY host_id",
                )
                .bind(&request.id)
                .fetch_all(self.pool())
                .await?;
                request.hosts = rows
                    .iter()
                    .map(request_host_from_row)
                    .collect::<Result<_, _>>()?;
                Ok(())
            }
        }
    };
}

use super::postgres::Tx as PgTx;
use super::sqlite::SqliteTx;

access_store!(SqliteStore, SqliteTx, sqlx::SqliteConnection, "");
access_store!(PgStore, PgTx, sqlx::PgConnection, " FOR UPDATE");
