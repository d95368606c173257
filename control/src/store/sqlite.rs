//! The embedded default store: SQLite in WAL mode. Writes go through one async mutex so that
//! concurrent transactions never race for SQLite's single write lock; reads run in parallel.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use latch_common::api::{GrantState, GrantWindow, JobEvent, RevokedBy};
use latch_common::job::{JobError, JobOutcome, JobSpec, JobStatus};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::Mutex;

use std::sync::Arc;

use crate::audit::{AuditEntry, AuditEvent, AuditKey, GENESIS, entry_hash};

use super::rows::{
    audit_from_row, context_from_row, corrupt, from_millis, host_actor, host_from_row,
    host_removed, is_rejection, job_from_row, millis, unresponsive,
};
use super::{
    AuditFilter, Finish, GrantFilter, GrantRecord, GrantRevocation, HostRecord, JobContext,
    JobFilter, JobRecord, JobRefusal, Lease, NewJob, Page, PinnedKey, RetryBackoff, Revoke, Store,
    StoreError, TokenRefusal,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    pool: SqlitePool,
    write: Mutex<()>,
    key: Arc<AuditKey>,
}

/// Columns describing a job `g`'s host and, for a grant, the later confirmed grant of the same
/// access that supersedes it.
macro_rules! context_columns {
    () => {
        "(SELECT h.hostname FROM hosts h WHERE h.id = g.host_id) AS host_name, \
         (SELECT h.removed_at FROM hosts h WHERE h.id = g.host_id) AS host_removed_at, \
         (SELECT l.id FROM jobs l WHERE l.host_id = g.host_id AND l.subject_user = g.subject_user \
             AND l.kind = g.kind AND l.subject_group IS g.subject_group AND l.seq > g.seq \
             AND l.status = 'confirmed' ORDER BY l.seq LIMIT 1) AS superseded_by, \
         g.kind AS grant_kind, g.expires_at AS grant_expires_at"
    };
}
/// The state of a grant (NULL for any other job) over a row with `job_columns!` and
/// `context_columns!`; `$now` is the parameter holding the current time.
macro_rules! grant_state_case {
    ($now:literal) => {
        concat!(
            "CASE WHEN grant_kind NOT IN ('create-account', 'add-group') OR status != 'confirmed' THEN NULL \
             WHEN revoked_at IS NOT NULL THEN 'revoked' \
             WHEN host_removed_at IS NOT NULL THEN 'host_removed' \
             WHEN superseded_by IS NOT NULL THEN 'superseded' \
             WHEN grant_expires_at IS NOT NULL AND grant_expires_at <= ",
            $now,
            " THEN CASE WHEN revocation_attempts > 0 THEN 'revocation_stuck' ELSE 'revoking' END \
             ELSE 'active' END AS grant_state"
        )
    };
}
async fn add_event(
    conn: &mut SqliteConnection,
    job_id: &str,
    at: DateTime<Utc>,
    event: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO job_events (job_id, at, event, detail) VALUES (?, ?, ?, ?)")
        .bind(job_id)
        .bind(millis(at))
        .bind(event)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends `event` to the audit chain, with its MAC under `key`, inside the caller's transaction
/// (the single write mutex keeps the chain linear).
async fn audit(
    conn: &mut SqliteConnection,
    key: &AuditKey,
    event: &AuditEvent,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let last = sqlx::query("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (id, prev_hash) = match last {
        Some(row) => (
            row.try_get::<i64, _>("id")? + 1,
            row.try_get::<String, _>("hash")?,
        ),
        None => (1, GENESIS.to_owned()),
    };
    let detail = event.detail.to_string();
    let at = millis(now);
    let hash = entry_hash(
        id,
        at,
        &event.actor,
        event.action,
        event.host_id.as_deref(),
        event.job_id.as_deref(),
        &detail,
        &prev_hash,
    );
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, host_id, job_id, detail, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(at)
    .bind(&event.actor)
    .bind(event.action)
    .bind(&event.host_id)
    .bind(&event.job_id)
    .bind(&detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO audit_macs (key_id, entry_id, mac) VALUES (?, ?, ?)")
        .bind(key.key_id())
        .bind(id)
        .bind(key.entry_mac(&hash))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The columns of an audit entry with its MAC under the key bound as `?1`.
macro_rules! audit_select {
    () => {
        "SELECT a.id, a.at, a.actor, a.action, a.host_id, a.job_id, a.detail, a.prev_hash, a.hash, \
         m.mac FROM audit_log a LEFT JOIN audit_macs m ON m.entry_id = a.id AND m.key_id = ?1 "
    };
}

async fn fail_job(
    conn: &mut SqliteConnection,
    job_id: &str,
    error: &JobError,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, finished_at = ?, \
         lease = NULL, lease_expires_at = NULL WHERE id = ?",
    )
    .bind(error.code.as_str())
    .bind(&error.message)
    .bind(millis(now))
    .bind(job_id)
    .execute(&mut *conn)
    .await?;
    add_event(conn, job_id, now, "failed", Some(error.code.as_str())).await?;
    release_grant(conn, job_id, error, now).await
}

/// When `job_id` is the revocation job of a grant that is still not revoked, records the failure
/// on the grant and frees it, so `due_grants` offers it again once the retry wait is over.
/// Every way a job fails goes through here (a failed report, the lease sweep, host removal).
async fn release_grant(
    conn: &mut SqliteConnection,
    job_id: &str,
    error: &JobError,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let released = sqlx::query(
        "UPDATE jobs SET revocation_job_id = NULL, revocation_attempts = revocation_attempts + 1, \
         revocation_failed_at = ?, revocation_error = ? \
         WHERE revocation_job_id = ? AND revoked_at IS NULL RETURNING id, revocation_attempts",
    )
    .bind(millis(now))
    .bind(format!("{}: {}", error.code.as_str(), error.message))
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    for row in &released {
        let grant: String = row.try_get("id")?;
        let attempts: i64 = row.try_get("revocation_attempts")?;
        let detail = format!(
            "{job_id} failed ({}), attempt {attempts}",
            error.code.as_str()
        );
        add_event(conn, &grant, now, "revocation_failed", Some(&detail)).await?;
    }
    Ok(())
}

async fn mark_revoked(
    conn: &mut SqliteConnection,
    key: &AuditKey,
    host_id: &str,
    job_id: &str,
    at: DateTime<Utc>,
    by: RevokedBy,
    by_job: Option<&str>,
) -> Result<Revoke, StoreError> {
    let row = sqlx::query(
        "SELECT revoked_at FROM jobs WHERE id = ? AND host_id = ? AND status = 'confirmed' \
         AND kind IN ('create-account', 'add-group')",
    )
    .bind(job_id)
    .bind(host_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(Revoke::NotAGrant);
    };
    if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
        return Ok(Revoke::AlreadyRevoked);
    }
    sqlx::query(
        "UPDATE jobs SET revoked_at = ?, revoked_by = ?, revoked_by_job_id = ? WHERE id = ?",
    )
    .bind(millis(at))
    .bind(by.as_str())
    .bind(by_job)
    .bind(job_id)
    .execute(&mut *conn)
    .await?;
    let detail = match by_job {
        Some(by_job) => format!("{} {by_job}", by.as_str()),
        None => by.as_str().to_owned(),
    };
    add_event(conn, job_id, at, "revoked", Some(&detail)).await?;
    let actor = match by {
        RevokedBy::AgentExpiry => host_actor(host_id),
        RevokedBy::ControlPlane | RevokedBy::Job => "control_plane".to_owned(),
    };
    let event = AuditEvent::new(actor, "grant.revoked")
        .host(host_id)
        .job(job_id)
        .detail(match by_job {
            Some(by_job) => serde_json::json!({"by": by.as_str(), "revoking_job": by_job}),
            None => serde_json::json!({"by": by.as_str()}),
        });
    audit(conn, key, &event, at).await?;
    Ok(Revoke::Recorded)
}

async fn pin(
    conn: &mut SqliteConnection,
    key: PinnedKey,
    public: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO key_pins (name, public, updated_at) VALUES (?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET public = excluded.public, updated_at = excluded.updated_at",
    )
    .bind(key.as_str())
    .bind(public)
    .bind(millis(now))
    .execute(conn)
    .await?;
    Ok(())
}

/// A confirmed delete-account ends every earlier grant of that account on the host (the account
/// and its memberships are gone); a confirmed remove-group ends the earlier add-group grants of
/// that account and group. They are recorded as revoked by `job`.
async fn revoke_earlier_grants(
    conn: &mut SqliteConnection,
    key: &AuditKey,
    job: &JobRecord,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (kinds, group) = match &job.spec {
        JobSpec::DeleteAccount { .. } => (&["create-account", "add-group"][..], None),
        JobSpec::RemoveGroup { group, .. } => (&["add-group"][..], Some(group.as_str())),
        _ => return Ok(()),
    };
    let grants: Vec<String> = sqlx::query(
        "SELECT id FROM jobs WHERE host_id = ?1 AND subject_user = ?2 \
         AND kind IN (SELECT value FROM json_each(?3)) AND (?4 IS NULL OR subject_group = ?4) \
         AND status = 'confirmed' AND revoked_at IS NULL AND seq < ?5 ORDER BY seq",
    )
    .bind(&job.host_id)
    .bind(job.spec.user())
    .bind(serde_json::to_string(kinds).map_err(|e| corrupt("job kinds", e))?)
    .bind(group)
    .bind(job.seq)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| row.try_get("id"))
    .collect::<Result<_, _>>()?;
    for grant in &grants {
        mark_revoked(
            conn,
            key,
            &job.host_id,
            grant,
            now,
            RevokedBy::Job,
            Some(job.id.as_str()),
        )
        .await?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` in WAL mode and migrates it.
    /// Audit entries are authenticated with `key` (the data directory's `audit.key`, see
    /// [`crate::datadir`]).
    pub async fn open(path: &Path, key: Arc<AuditKey>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        Self::connect(options, &path.display().to_string(), key).await
    }

    /// Opens a private in-memory database (for tests and examples), with a random audit key.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|source| StoreError::Open {
                location: "sqlite::memory:".into(),
                source,
            })?
            .foreign_keys(true);
        // One connection: every connection to ":memory:" is a database of its own.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                location: "sqlite::memory:".into(),
                source,
            })?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            write: Mutex::new(()),
            key: Arc::new(AuditKey::generate()?),
        })
    }

    /// The connection pool (for the copy to PostgreSQL).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn connect(
        options: SqliteConnectOptions,
        location: &str,
        key: Arc<AuditKey>,
    ) -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A file on this machine cannot drop the connection: no ping before each use (a
            // round trip to the connection's thread, one per query at load).
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                location: location.to_owned(),
                source,
            })?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            write: Mutex::new(()),
            key,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn has_admin_token(&self) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM admin_tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    async fn insert_admin_token(&self, hash: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        sqlx::query("INSERT INTO admin_tokens (hash, created_at) VALUES (?, ?)")
            .bind(hash)
            .bind(millis(now))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn admin_token_exists(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM admin_tokens WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    async fn insert_enroll_token(
        &self,
        hash: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        uses: u32,
        actor: &str,
    ) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO enroll_tokens (hash, created_at, expires_at, uses_total, uses_left) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(millis(now))
        .bind(millis(expires_at))
        .bind(i64::from(uses))
        .bind(i64::from(uses))
        .execute(&mut *tx)
        .await?;
        let event = AuditEvent::new(actor, "enroll_token.create").detail(serde_json::json!({
            "token_hash_prefix": &hash[..hash.len().min(12)],
            "expires_at": expires_at.to_rfc3339(),
            "uses": uses,
        }));
        audit(&mut tx, &self.key, &event, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enroll_host(
        &self,
        token_hash: &str,
        host: &HostRecord,
        credential_hash: &str,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let token = sqlx::query("SELECT expires_at, uses_left FROM enroll_tokens WHERE hash = ?")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let token_actor = format!("enroll_token:{}", &token_hash[..token_hash.len().min(12)]);
        let refusal = match &token {
            None => Some(TokenRefusal::Unknown),
            Some(token) if token.try_get::<i64, _>("expires_at")? <= millis(host.enrolled_at) => {
                Some(TokenRefusal::Expired)
            }
            Some(token) if token.try_get::<i64, _>("uses_left")? <= 0 => Some(TokenRefusal::UsedUp),
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            let event = AuditEvent::new(token_actor, "enroll.refused").detail(serde_json::json!({
                "reason": format!("{refusal:?}").to_lowercase(),
                "hostname": host.facts.hostname,
            }));
            audit(&mut tx, &self.key, &event, host.enrolled_at).await?;
            tx.commit().await?;
            return Ok(Err(refusal));
        }
        sqlx::query("UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE hash = ?")
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        let facts = &host.facts;
        sqlx::query(
            "INSERT INTO hosts (id, hostname, os, kernel, arch, cpus, memory_bytes, machine_id, \
             credential_hash, enrolled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&host.id)
        .bind(&facts.hostname)
        .bind(&facts.os)
        .bind(&facts.kernel)
        .bind(&facts.arch)
        .bind(i64::from(facts.cpus))
        .bind(i64::try_from(facts.memory_bytes).unwrap_or(i64::MAX))
        .bind(&facts.machine_id)
        .bind(credential_hash)
        .bind(millis(host.enrolled_at))
        .execute(&mut *tx)
        .await?;
        let event = AuditEvent::new(token_actor, "host.enroll")
            .host(&host.id)
            .detail(serde_json::json!({
                "hostname": facts.hostname,
                "machine_id": facts.machine_id,
            }));
        audit(&mut tx, &self.key, &event, host.enrolled_at).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn host_by_credential(&self, hash: &str) -> Result<Option<HostRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE credential_hash = ? AND removed_at IS NULL"
        );
        sqlx::query(sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(host_from_row)
            .transpose()
    }

    async fn touch_host(&self, host_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        sqlx::query("UPDATE hosts SET last_seen = ? WHERE id = ?")
            .bind(millis(now))
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_hosts(&self, page: Page) -> Result<Vec<HostRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE removed_at IS NULL ORDER BY hostname, id LIMIT ? OFFSET ?"
        );
        sqlx::query(sql)
            .bind(i64::try_from(page.count).unwrap_or(i64::MAX))
            .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(host_from_row)
            .collect()
    }

    async fn remove_host(
        &self,
        host_id: &str,
        now: DateTime<Utc>,
        actor: &str,
    ) -> Result<Option<u64>, StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let removed =
            sqlx::query("UPDATE hosts SET removed_at = ? WHERE id = ? AND removed_at IS NULL")
                .bind(millis(now))
                .bind(host_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if removed == 0 {
            return Ok(None);
        }
        let pending: Vec<String> =
            sqlx::query("SELECT id FROM jobs WHERE host_id = ? AND status = 'pending'")
                .bind(host_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get("id"))
                .collect::<Result<_, _>>()?;
        let error = host_removed();
        for job_id in &pending {
            fail_job(&mut tx, job_id, &error, now).await?;
        }
        let event = AuditEvent::new(actor, "host.remove")
            .host(host_id)
            .detail(serde_json::json!({"cancelled_jobs": pending}));
        audit(&mut tx, &self.key, &event, now).await?;
        tx.commit().await?;
        Ok(Some(pending.len() as u64))
    }

    async fn rotate_host_credential(
        &self,
        host_id: &str,
        credential_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let changed =
            sqlx::query("UPDATE hosts SET credential_hash = ? WHERE id = ? AND removed_at IS NULL")
                .bind(credential_hash)
                .bind(host_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if changed == 1 {
            let event =
                AuditEvent::new(host_actor(host_id), "host.credential_rotated").host(host_id);
            audit(&mut tx, &self.key, &event, now).await?;
        }
        tx.commit().await?;
        Ok(changed == 1)
    }

    async fn raise_next_seq(
        &self,
        host_id: &str,
        applied: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Read first: the write lock only when the sequence really is behind.
        let behind = sqlx::query("SELECT 1 FROM hosts WHERE id = ? AND next_seq <= ?")
            .bind(host_id)
            .bind(applied)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if !behind {
            return Ok(false);
        }
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE hosts SET next_seq = ? + 1 WHERE id = ? AND next_seq <= ? AND removed_at IS NULL",
        )
        .bind(applied)
        .bind(host_id)
        .bind(applied)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            let event = AuditEvent::new(host_actor(host_id), "host.sequence_raised")
                .host(host_id)
                .detail(serde_json::json!({"applied": applied, "next_seq": applied + 1}));
            audit(&mut tx, &self.key, &event, now).await?;
        }
        tx.commit().await?;
        Ok(changed == 1)
    }

    async fn host_is_active(&self, host_id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM hosts WHERE id = ? AND removed_at IS NULL")
                .bind(host_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn find_hosts(&self, id_or_hostname: &str) -> Result<Vec<HostRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE removed_at IS NULL AND (id = ?1 OR (hostname = ?1 AND NOT EXISTS \
             (SELECT 1 FROM hosts WHERE id = ?1 AND removed_at IS NULL))) ORDER BY id"
        );
        sqlx::query(sql)
            .bind(id_or_hostname)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(host_from_row)
            .collect()
    }

    async fn insert_job(
        &self,
        job: &NewJob<'_>,
        sign: super::SignJob<'_>,
    ) -> Result<Result<JobRecord, JobRefusal>, StoreError> {
        let NewJob {
            id,
            host_id,
            spec,
            revokes,
            now,
            actor,
            window,
        } = *job;
        let spec_json = serde_json::to_string(spec).map_err(|e| corrupt("job spec", e))?;
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        // Only an active host gets a sequence number: a host removed a moment ago gets nothing,
        // not even an internal revocation or key-rotation job.
        let row = sqlx::query(
            "UPDATE hosts SET next_seq = next_seq + 1 WHERE id = ? AND removed_at IS NULL \
             RETURNING next_seq - 1 AS seq",
        )
        .bind(host_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let exists = sqlx::query("SELECT 1 FROM hosts WHERE id = ?")
                .bind(host_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            return Ok(Err(if exists {
                JobRefusal::HostRemoved
            } else {
                JobRefusal::NoSuchHost
            }));
        };
        let seq: i64 = row.try_get("seq")?;
        if let Some(grant) = revokes {
            let underway = sqlx::query(
                "SELECT 1 FROM jobs WHERE id = ? AND (revocation_job_id IS NOT NULL \
                 OR revoked_at IS NOT NULL)",
            )
            .bind(grant)
            .fetch_optional(&mut *tx)
            .await?;
            if underway.is_some() {
                return Ok(Err(JobRefusal::RevocationUnderway));
            }
        }
        let (payload, signature) = sign(seq).map_err(|detail| StoreError::Corrupt {
            what: "job signature",
            detail,
        })?;
        sqlx::query(
            "INSERT INTO jobs (id, host_id, seq, kind, spec, status, created_at, subject_user, \
             subject_group, expires_at, revokes_job_id, payload, signature) \
             VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(host_id)
        .bind(seq)
        .bind(spec.kind().as_str())
        .bind(&spec_json)
        .bind(millis(now))
        .bind(spec.user())
        .bind(spec.group())
        .bind(spec.expires_at().map(millis))
        .bind(revokes)
        .bind(&payload)
        .bind(&signature)
        .execute(&mut *tx)
        .await?;
        add_event(&mut tx, id, now, "queued", Some(&format!("seq {seq}"))).await?;
        if let Some(grant) = revokes {
            sqlx::query(
                "UPDATE jobs SET revocation_job_id = ? WHERE id = ? AND revocation_job_id IS NULL",
            )
            .bind(id)
            .bind(grant)
            .execute(&mut *tx)
            .await?;
            add_event(&mut tx, grant, now, "revocation_queued", Some(id)).await?;
        }
        let mut detail = serde_json::json!({
            "kind": spec.kind().as_str(),
            "user": spec.user(),
            "group": spec.group(),
            "seq": seq,
            "revokes": revokes,
        });
        if window != GrantWindow::NotAGrant {
            detail["window"] = window.as_str().into();
            detail["permanent"] = (window == GrantWindow::Permanent).into();
            detail["expires_at"] = spec.expires_at().map(|t| t.to_rfc3339()).into();
        }
        let event = AuditEvent::new(actor, "job.create")
            .host(host_id)
            .job(id)
            .detail(detail);
        audit(&mut tx, &self.key, &event, now).await?;
        tx.commit().await?;
        Ok(Ok(JobRecord {
            id: id.to_owned(),
            host_id: host_id.to_owned(),
            seq,
            spec: spec.clone(),
            status: JobStatus::Pending,
            error: None,
            notes: Vec::new(),
            created_at: from_millis(millis(now)),
            finished_at: None,
            attempts: 0,
            lease: None,
            lease_expires_at: None,
            revoked_at: None,
            revoked_by: None,
            revoked_by_job: None,
            revocation: GrantRevocation::default(),
            revokes: revokes.map(str::to_owned),
            payload,
            signature,
        }))
    }

    async fn due_grants(
        &self,
        now: DateTime<Utc>,
        retry: RetryBackoff,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        // The retry wait is `first << (failures - 1)`, at most `max` (RetryBackoff::delay).
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs g WHERE g.status = 'confirmed' AND g.expires_at IS NOT NULL \
             AND g.expires_at <= ?1 AND g.revoked_at IS NULL AND g.revocation_job_id IS NULL \
             AND (g.revocation_attempts = 0 OR g.revocation_failed_at \
                 + MIN(?3 << MIN(g.revocation_attempts - 1, 30), ?4) <= ?1) \
             AND EXISTS (SELECT 1 FROM hosts h WHERE h.id = g.host_id AND h.removed_at IS NULL) \
             AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.host_id = g.host_id \
                 AND l.subject_user = g.subject_user AND l.kind = g.kind \
                 AND l.subject_group IS g.subject_group AND l.seq > g.seq AND l.status != 'failed') \
             ORDER BY g.expires_at LIMIT ?2"
        );
        let rows = sqlx::query(sql)
            .bind(millis(now))
            .bind(i64::from(limit))
            .bind(retry.first.num_milliseconds().max(0))
            .bind(retry.max.num_milliseconds().max(0))
            .fetch_all(&self.pool)
            .await?;
        // One grant that does not decode must not keep every other from being revoked.
        Ok(rows
            .iter()
            .map(job_from_row)
            .filter_map(super::rows::skip_corrupt_grant)
            .collect())
    }

    async fn job_context(
        &self,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, JobContext>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = concat!(
            "SELECT *, ",
            grant_state_case!("?2"),
            " FROM (SELECT ",
            job_columns!(),
            ", ",
            context_columns!(),
            " FROM jobs g WHERE g.id IN (SELECT value FROM json_each(?1)))"
        );
        let ids_json = serde_json::to_string(ids).map_err(|e| corrupt("job ids", e))?;
        let rows = sqlx::query(sql)
            .bind(ids_json)
            .bind(millis(now))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, context_from_row(row)?)))
            .collect()
    }

    async fn list_grants(
        &self,
        filter: &GrantFilter,
        now: DateTime<Utc>,
        page: Page,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let sql = concat!(
            "SELECT * FROM (SELECT *, ",
            grant_state_case!("?1"),
            " FROM (SELECT ",
            job_columns!(),
            ", ",
            context_columns!(),
            " FROM jobs g WHERE g.status = 'confirmed' AND g.kind IN ('create-account', 'add-group') \
                 AND (?2 IS NULL OR g.host_id IN (SELECT id FROM hosts WHERE id = ?2 OR hostname = ?2)) \
                 AND (?3 IS NULL OR g.subject_user = ?3))) \
             WHERE (?4 IS NULL OR grant_state = ?4) \
               AND (?5 IS NULL OR created_at >= ?5 OR revoked_at >= ?5 \
                    OR grant_state NOT IN ('revoked', 'superseded')) \
             ORDER BY created_at DESC, host_id, seq DESC LIMIT ?6 OFFSET ?7"
        );
        sqlx::query(sql)
            .bind(millis(now))
            .bind(filter.host.as_deref())
            .bind(filter.user.as_deref())
            .bind(filter.state.map(GrantState::as_str))
            .bind(filter.since.map(millis))
            .bind(i64::try_from(page.count).unwrap_or(i64::MAX))
            .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(GrantRecord {
                    job: job_from_row(row)?,
                    context: context_from_row(row)?,
                })
            })
            .collect()
    }

    async fn record_revocation(
        &self,
        host_id: &str,
        job_id: &str,
        at: DateTime<Utc>,
        by: RevokedBy,
    ) -> Result<Revoke, StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let revoked = mark_revoked(&mut tx, &self.key, host_id, job_id, at, by, None).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn lease_next_job(
        &self,
        host_id: &str,
        lease: &str,
        now: DateTime<Utc>,
        lease_ttl: Duration,
        max_attempts: u32,
    ) -> Result<Lease, StoreError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE host_id = ? AND status = 'pending' \
             ORDER BY seq LIMIT 1"
        );
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        loop {
            let Some(row) = sqlx::query(sql)
                .bind(host_id)
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.commit().await?;
                return Ok(Lease::Idle);
            };
            let job = job_from_row(&row)?;
            if let Some(until) = job.lease_expires_at {
                if until > now {
                    tx.commit().await?;
                    return Ok(Lease::InFlight { until });
                }
                add_event(
                    &mut tx,
                    &job.id,
                    now,
                    "lease_expired",
                    Some(&format!("attempt {}", job.attempts)),
                )
                .await?;
                if job.attempts >= max_attempts {
                    let error = unresponsive(job.attempts);
                    fail_job(&mut tx, &job.id, &error, now).await?;
                    let event = AuditEvent::new("control_plane", "job.fail")
                        .host(host_id)
                        .job(&job.id)
                        .detail(serde_json::json!({"code": error.code.as_str()}));
                    audit(&mut tx, &self.key, &event, now).await?;
                    continue;
                }
            }
            let attempts = job.attempts + 1;
            let expires = now + lease_ttl;
            sqlx::query(
                "UPDATE jobs SET attempts = ?, lease = ?, lease_expires_at = ? WHERE id = ?",
            )
            .bind(i64::from(attempts))
            .bind(lease)
            .bind(millis(expires))
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            add_event(
                &mut tx,
                &job.id,
                now,
                "delivered",
                Some(&format!("attempt {attempts}")),
            )
            .await?;
            let event = AuditEvent::new(host_actor(host_id), "job.deliver")
                .host(host_id)
                .job(&job.id)
                .detail(serde_json::json!({"attempt": attempts}));
            audit(&mut tx, &self.key, &event, now).await?;
            tx.commit().await?;
            return Ok(Lease::Delivered(Box::new(JobRecord {
                attempts,
                lease: Some(lease.to_owned()),
                lease_expires_at: Some(from_millis(millis(expires))),
                ..job
            })));
        }
    }

    async fn finish_job(
        &self,
        host_id: &str,
        job_id: &str,
        lease: &str,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> Result<Finish, StoreError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = ? AND host_id = ?"
        );
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(sql)
            .bind(job_id)
            .bind(host_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Finish::NotFound);
        };
        let job = job_from_row(&row)?;
        if job.status != JobStatus::Pending {
            let same = job.status == outcome.status()
                && match outcome {
                    JobOutcome::Confirmed { .. } => true,
                    JobOutcome::Failed { error } => job.error.as_ref() == Some(error),
                };
            return Ok(if same {
                Finish::Duplicate
            } else {
                Finish::Conflict
            });
        }
        if !job
            .lease
            .as_deref()
            .is_some_and(|current| crate::secret::same_secret(current, lease))
        {
            return Ok(Finish::Conflict);
        }
        match outcome {
            JobOutcome::Confirmed { notes } => {
                let notes = (!notes.is_empty())
                    .then(|| serde_json::to_string(notes))
                    .transpose()
                    .map_err(|e| corrupt("job notes", e))?;
                sqlx::query(
                    "UPDATE jobs SET status = 'confirmed', finished_at = ?, lease = NULL, \
                     lease_expires_at = NULL, outcome_notes = ? WHERE id = ?",
                )
                .bind(millis(now))
                .bind(notes)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
                add_event(&mut tx, job_id, now, "confirmed", None).await?;
                if let Some(grant) = &job.revokes {
                    mark_revoked(
                        &mut tx,
                        &self.key,
                        host_id,
                        grant,
                        now,
                        RevokedBy::ControlPlane,
                        None,
                    )
                    .await?;
                }
                revoke_earlier_grants(&mut tx, &self.key, &job, now).await?;
            }
            JobOutcome::Failed { error } => fail_job(&mut tx, job_id, error, now).await?,
        }
        let (action, code) = match outcome {
            JobOutcome::Confirmed { .. } => ("job.outcome", None),
            JobOutcome::Failed { error } if is_rejection(error.code) => {
                ("job.rejected", Some(error.code.as_str()))
            }
            JobOutcome::Failed { error } => ("job.outcome", Some(error.code.as_str())),
        };
        let event = AuditEvent::new(host_actor(host_id), action)
            .host(host_id)
            .job(job_id)
            .detail(serde_json::json!({"status": outcome.status().as_str(), "code": code}));
        audit(&mut tx, &self.key, &event, now).await?;
        tx.commit().await?;
        Ok(Finish::Recorded)
    }

    async fn fail_abandoned_jobs(
        &self,
        now: DateTime<Utc>,
        max_attempts: u32,
    ) -> Result<Vec<String>, StoreError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE status = 'pending' AND lease_expires_at <= ? \
             AND attempts >= ?"
        );
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(sql)
            .bind(millis(now))
            .bind(i64::from(max_attempts))
            .fetch_all(&mut *tx)
            .await?;
        let mut hosts = Vec::new();
        for row in &rows {
            let job = job_from_row(row)?;
            add_event(
                &mut tx,
                &job.id,
                now,
                "lease_expired",
                Some(&format!("attempt {}", job.attempts)),
            )
            .await?;
            let error = unresponsive(job.attempts);
            fail_job(&mut tx, &job.id, &error, now).await?;
            let event = AuditEvent::new("control_plane", "job.fail")
                .host(&job.host_id)
                .job(&job.id)
                .detail(serde_json::json!({"code": error.code.as_str()}));
            audit(&mut tx, &self.key, &event, now).await?;
            hosts.push(job.host_id);
        }
        tx.commit().await?;
        Ok(hosts)
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: Page,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE (?1 IS NULL OR host_id = ?1) \
             AND (?2 IS NULL OR status = ?2) ORDER BY created_at DESC, host_id, seq DESC \
             LIMIT ?3 OFFSET ?4"
        );
        sqlx::query(sql)
            .bind(filter.host_id.as_deref())
            .bind(filter.status.map(JobStatus::as_str))
            .bind(i64::try_from(page.count).unwrap_or(i64::MAX))
            .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?");
        sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    fn audit_key(&self) -> Arc<AuditKey> {
        self.key.clone()
    }

    async fn append_audit(&self, event: &AuditEvent, now: DateTime<Utc>) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        audit(&mut tx, &self.key, event, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        sqlx::query(concat!(
            audit_select!(),
            "WHERE (?2 IS NULL OR a.at >= ?2) AND (?3 IS NULL OR a.actor = ?3) \
             AND (?4 IS NULL OR a.host_id = ?4) ORDER BY a.id LIMIT ?5 OFFSET ?6"
        ))
        .bind(self.key.key_id())
        .bind(filter.since.map(millis))
        .bind(filter.actor.as_deref())
        .bind(filter.host_id.as_deref())
        .bind(i64::try_from(page.count).unwrap_or(i64::MAX))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(audit_from_row)
        .collect()
    }

    async fn audit_chain(&self) -> Result<Vec<AuditEntry>, StoreError> {
        sqlx::query(concat!(audit_select!(), "ORDER BY a.id"))
            .bind(self.key.key_id())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_from_row)
            .collect()
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        sqlx::query("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .map(|row| Ok((row.try_get("id")?, row.try_get("hash")?)))
            .transpose()
    }

    async fn audit_hash(&self, id: i64) -> Result<Option<String>, StoreError> {
        sqlx::query("SELECT hash FROM audit_log WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| Ok(row.try_get("hash")?))
            .transpose()
    }

    async fn key_audit_entries(
        &self,
        through: i64,
        event: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("SELECT id, hash FROM audit_log WHERE id <= ? ORDER BY id")
            .bind(through)
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let (id, hash): (i64, String) = (row.try_get("id")?, row.try_get("hash")?);
            sqlx::query(
                "INSERT OR IGNORE INTO audit_macs (key_id, entry_id, mac) VALUES (?, ?, ?)",
            )
            .bind(self.key.key_id())
            .bind(id)
            .bind(self.key.entry_mac(&hash))
            .execute(&mut *tx)
            .await?;
        }
        pin(&mut tx, PinnedKey::Audit, self.key.public_key(), now).await?;
        audit(&mut tx, &self.key, event, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn key_pin(&self, key: PinnedKey) -> Result<Option<String>, StoreError> {
        sqlx::query("SELECT public FROM key_pins WHERE name = ?")
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| Ok(row.try_get("public")?))
            .transpose()
    }

    async fn set_key_pin(
        &self,
        key: PinnedKey,
        public: &str,
        event: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        pin(&mut tx, key, public, now).await?;
        audit(&mut tx, &self.key, event, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job_history(&self, id: &str) -> Result<Vec<JobEvent>, StoreError> {
        sqlx::query("SELECT at, event, detail FROM job_events WHERE job_id = ? ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(JobEvent {
                    at: from_millis(row.try_get("at")?),
                    event: row.try_get("event")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

/// One write transaction behind the store's write mutex, with the audit entries it appends
/// when it commits (the same shape as the PostgreSQL store's `Tx`, so code shared by both
/// engines — [`super::people`] — writes the same way on each).
pub(super) struct SqliteTx<'s> {
    _write: tokio::sync::MutexGuard<'s, ()>,
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    key: &'s AuditKey,
    audit: Vec<(AuditEvent, DateTime<Utc>)>,
}

impl<'s> SqliteTx<'s> {
    /// Takes the write mutex and begins a transaction.
    pub(super) async fn begin(store: &'s SqliteStore) -> Result<Self, StoreError> {
        let write = store.write.lock().await;
        Ok(Self {
            _write: write,
            tx: store.pool.begin().await?,
            key: &store.key,
            audit: Vec::new(),
        })
    }

    /// The transaction's connection.
    pub(super) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// Queues `event` for the audit chain; it is appended when the transaction commits.
    pub(super) fn audit(&mut self, event: AuditEvent, at: DateTime<Utc>) {
        self.audit.push((event, at));
    }

    /// Appends the queued audit entries and commits.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        for (event, at) in std::mem::take(&mut self.audit) {
            audit(&mut self.tx, self.key, &event, at).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
