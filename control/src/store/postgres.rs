//! The PostgreSQL store, for several control-plane processes on one database (and for operators
//! who already run, back up and replicate PostgreSQL). Same schema meaning and same behaviour as
//! [`super::SqliteStore`]; what SQLite's single writer gave for free is made explicit here, and
//! ARCHITECTURE.md ("Stores") lists it operation by operation:
//!
//! - every transaction runs at READ COMMITTED and takes the row locks it needs
//!   (`SELECT … FOR NO KEY UPDATE`: exclusive among writers, while foreign-key checks still
//!   pass) or writes through a conditional update (`UPDATE … WHERE <the state it expects>
//!   RETURNING`), so two connections — or two replicas — racing on one token, job, grant or
//!   host cannot both win;
//! - audit entries are appended last in their transaction, under a transaction-scoped advisory
//!   lock: the chain stays one line (ids 1, 2, 3, … without gaps) whoever writes. Taking that
//!   lock only after every row lock means it never closes a lock cycle.
//!
//! Tables live in the connection's current schema (the first of its `search_path`), so one
//! database can hold several independent Latch schemas (the tests use one each).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use latch_common::api::{GrantState, GrantWindow, JobEvent, RevokedBy};
use latch_common::job::{JobError, JobKind, JobOutcome, JobSpec, JobStatus};
use latch_common::labels::Labels;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool, Postgres, Row, Transaction};

use crate::audit::{Actor, AuditEntry, AuditEvent, AuditKey, GENESIS, entry_hash};

use super::rows::{
    audit_from_row, context_from_row, corrupt, from_millis, host_actor, host_from_row,
    host_removed, is_rejection, job_from_row, labels_from_text, labels_to_text, millis,
    unresponsive,
};
use super::{
    AuditFilter, Finish, GrantFilter, GrantRecord, GrantRevocation, HostFilter, HostRecord,
    JobContext, JobFilter, JobRecord, JobRefusal, Lease, NewJob, Page, PinnedKey, RetryBackoff,
    Revoke, Store, StoreError, TokenRefusal,
};

/// Connections per process. Each request holds one for a transaction of a few statements.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// How long opening the store waits for the server before it names the problem.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Advisory lock class of the audit chain's appends (`pg_advisory_xact_lock(class, schema)`);
/// the second key is the hash of the schema, so separate Latch schemas do not wait on each other.
const AUDIT_LOCK: i32 = 0x4C41_5441; // "LATA"
/// Advisory lock class of the migrations (one process migrates a schema at a time).
const MIGRATION_LOCK: i32 = 0x4C41_544D; // "LATM"

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    pool: PgPool,
    key: Arc<AuditKey>,
    /// `hashtext(current_schema())`: the second key of this schema's advisory locks.
    schema_key: i32,
    /// The `NOTIFY` channel of this schema's wake-ups ([`crate::replicas`]).
    wake_channel: String,
    location: String,
}

/// Columns describing a job `g`'s host and, for a grant, the later confirmed grant of the same
/// access that supersedes it.
macro_rules! context_columns {
    () => {
        "(SELECT h.hostname FROM hosts h WHERE h.id = g.host_id) AS host_name, \
         (SELECT h.removed_at FROM hosts h WHERE h.id = g.host_id) AS host_removed_at, \
         (SELECT l.id FROM jobs l WHERE l.host_id = g.host_id AND l.subject_user = g.subject_user \
             AND l.kind = g.kind AND l.subject_group IS NOT DISTINCT FROM g.subject_group \
             AND l.seq > g.seq AND l.status = 'confirmed' ORDER BY l.seq LIMIT 1) AS superseded_by, \
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
/// The columns of an audit entry with its MAC under the key bound as `$1`.
macro_rules! audit_select {
    () => {
        "SELECT a.id, a.at, a.actor, a.action, a.host_id, a.job_id, a.detail, a.prev_hash, a.hash, \
         m.mac FROM audit_log a LEFT JOIN audit_macs m ON m.entry_id = a.id AND m.key_id = $1 "
    };
}

fn page_bounds(page: Page) -> (i64, i64) {
    (
        i64::try_from(page.count).unwrap_or(i64::MAX),
        i64::try_from(page.offset).unwrap_or(i64::MAX),
    )
}

/// One transaction, with the audit entries it will append when it commits.
pub(super) struct Tx<'s> {
    tx: Transaction<'static, Postgres>,
    store: &'s PgStore,
    audit: Vec<(AuditEvent, DateTime<Utc>)>,
    /// Hosts whose long-polls (in any replica) are woken when this transaction commits.
    wakes: Vec<String>,
}

impl<'s> Tx<'s> {
    pub(super) async fn begin(store: &'s PgStore) -> Result<Self, StoreError> {
        Ok(Self {
            tx: store.pool.begin().await?,
            store,
            audit: Vec::new(),
            wakes: Vec::new(),
        })
    }

    /// Wakes the long-polls of `host_id` in every replica once this transaction commits
    /// (`NOTIFY` is delivered at commit, and not at all on rollback).
    fn wake(&mut self, host_id: &str) {
        if !self.wakes.iter().any(|h| h == host_id) {
            self.wakes.push(host_id.to_owned());
        }
    }

    pub(super) fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Queues `event` for the audit chain; it is appended, in order, when the transaction
    /// commits.
    pub(super) fn audit(&mut self, event: AuditEvent, at: DateTime<Utc>) {
        self.audit.push((event, at));
    }

    /// Appends the queued audit entries — under the chain's advisory lock, after every row lock
    /// this transaction takes — and commits. The lock is held from here to the commit only.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        if !self.wakes.is_empty() {
            let wakes = std::mem::take(&mut self.wakes);
            sqlx::query("SELECT pg_notify($1, host) FROM unnest($2::text[]) AS host")
                .bind(&self.store.wake_channel)
                .bind(&wakes)
                .execute(self.conn())
                .await?;
        }
        if !self.audit.is_empty() {
            let entries = std::mem::take(&mut self.audit);
            let key = self.store.key.clone();
            let schema_key = self.store.schema_key;
            append_audit(self.conn(), &key, schema_key, &entries).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }

    async fn add_event(
        &mut self,
        job_id: &str,
        at: DateTime<Utc>,
        event: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO job_events (job_id, at, event, detail) VALUES ($1, $2, $3, $4)")
            .bind(job_id)
            .bind(millis(at))
            .bind(event)
            .bind(detail)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Fails a pending job the caller holds locked.
    async fn fail_job(
        &mut self,
        job_id: &str,
        error: &JobError,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET status = 'failed', error_code = $1, error_message = $2, finished_at = $3, \
             lease = NULL, lease_expires_at = NULL WHERE id = $4",
        )
        .bind(error.code.as_str())
        .bind(&error.message)
        .bind(millis(now))
        .bind(job_id)
        .execute(self.conn())
        .await?;
        self.add_event(job_id, now, "failed", Some(error.code.as_str()))
            .await?;
        self.release_grant(job_id, error, now).await
    }

    /// When `job_id` is the revocation job of a grant that is still not revoked, records the
    /// failure on the grant and frees it, so `due_grants` offers it again once the retry wait is
    /// over. Every way a job fails goes through here.
    async fn release_grant(
        &mut self,
        job_id: &str,
        error: &JobError,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let released = sqlx::query(
            "UPDATE jobs SET revocation_job_id = NULL, revocation_attempts = revocation_attempts + 1, \
             revocation_failed_at = $1, revocation_error = $2 \
             WHERE revocation_job_id = $3 AND revoked_at IS NULL RETURNING id, revocation_attempts",
        )
        .bind(millis(now))
        .bind(format!("{}: {}", error.code.as_str(), error.message))
        .bind(job_id)
        .fetch_all(self.conn())
        .await?;
        for row in &released {
            let grant: String = row.try_get("id")?;
            let attempts: i64 = row.try_get("revocation_attempts")?;
            let detail = format!(
                "{job_id} failed ({}), attempt {attempts}",
                error.code.as_str()
            );
            self.add_event(&grant, now, "revocation_failed", Some(&detail))
                .await?;
        }
        Ok(())
    }

    /// Marks grant `job_id` revoked — a conditional update, so of two racing reports exactly one
    /// records it.
    async fn mark_revoked(
        &mut self,
        host_id: &str,
        job_id: &str,
        at: DateTime<Utc>,
        by: RevokedBy,
        by_job: Option<&str>,
    ) -> Result<Revoke, StoreError> {
        let marked = sqlx::query(
            "UPDATE jobs SET revoked_at = $1, revoked_by = $2, revoked_by_job_id = $3 \
             WHERE id = $4 AND host_id = $5 AND status = 'confirmed' \
             AND kind IN ('create-account', 'add-group') AND revoked_at IS NULL RETURNING id",
        )
        .bind(millis(at))
        .bind(by.as_str())
        .bind(by_job)
        .bind(job_id)
        .bind(host_id)
        .fetch_optional(self.conn())
        .await?;
        if marked.is_none() {
            let grant = sqlx::query(
                "SELECT 1 FROM jobs WHERE id = $1 AND host_id = $2 AND status = 'confirmed' \
                 AND kind IN ('create-account', 'add-group')",
            )
            .bind(job_id)
            .bind(host_id)
            .fetch_optional(self.conn())
            .await?;
            return Ok(match grant {
                Some(_) => Revoke::AlreadyRevoked,
                None => Revoke::NotAGrant,
            });
        }
        let detail = match by_job {
            Some(by_job) => format!("{} {by_job}", by.as_str()),
            None => by.as_str().to_owned(),
        };
        self.add_event(job_id, at, "revoked", Some(&detail)).await?;
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
        self.audit(event, at);
        Ok(Revoke::Recorded)
    }

    /// A confirmed delete-account ends every earlier grant of that account on the host; a
    /// confirmed remove-group the earlier add-group grants of that account and group.
    async fn revoke_earlier_grants(
        &mut self,
        job: &JobRecord,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (kinds, group) = match &job.spec {
            JobSpec::DeleteAccount { .. } => (&["create-account", "add-group"][..], None),
            JobSpec::RemoveGroup { group, .. } => (&["add-group"][..], Some(group.as_str())),
            _ => return Ok(()),
        };
        let grants: Vec<String> = sqlx::query(
            "SELECT id FROM jobs WHERE host_id = $1 AND subject_user = $2 AND kind = ANY($3) \
             AND ($4::text IS NULL OR subject_group = $4) AND status = 'confirmed' \
             AND revoked_at IS NULL AND seq < $5 ORDER BY seq",
        )
        .bind(&job.host_id)
        .bind(job.spec.user())
        .bind(kinds)
        .bind(group)
        .bind(job.seq)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
        for grant in &grants {
            self.mark_revoked(
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

    async fn pin(
        &mut self,
        key: PinnedKey,
        public: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO key_pins (name, public, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET public = excluded.public, updated_at = excluded.updated_at",
        )
        .bind(key.as_str())
        .bind(public)
        .bind(millis(now))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Fails a job whose last allowed delivery ran out, with its event and audit entry.
    async fn fail_unresponsive(
        &mut self,
        job: &JobRecord,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let error = unresponsive(job.attempts);
        self.fail_job(&job.id, &error, now).await?;
        let event = AuditEvent::new("control_plane", "job.fail")
            .host(&job.host_id)
            .job(&job.id)
            .detail(serde_json::json!({"code": error.code.as_str()}));
        self.audit(event, now);
        Ok(())
    }
}

/// Appends `entries` to the audit chain, each with its MAC, inside the caller's transaction.
/// The advisory lock serializes appends across connections and processes until the commit;
/// the head is read after it is granted, in a statement of its own (so with a snapshot that
/// includes the previous holder's commit).
async fn append_audit(
    conn: &mut PgConnection,
    key: &AuditKey,
    schema_key: i32,
    entries: &[(AuditEvent, DateTime<Utc>)],
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(AUDIT_LOCK)
        .bind(schema_key)
        .execute(&mut *conn)
        .await?;
    let last = sqlx::query("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (mut id, mut prev_hash) = match last {
        Some(row) => (
            row.try_get::<i64, _>("id")?,
            row.try_get::<String, _>("hash")?,
        ),
        None => (0, GENESIS.to_owned()),
    };
    for (event, now) in entries {
        id += 1;
        let detail = event.detail.to_string();
        let at = millis(*now);
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
            "WITH entry AS (INSERT INTO audit_log (id, at, actor, action, host_id, job_id, detail, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id) \
             INSERT INTO audit_macs (key_id, entry_id, mac) SELECT $10, id, $11 FROM entry",
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
        .bind(key.key_id())
        .bind(key.entry_mac(&hash))
        .execute(&mut *conn)
        .await?;
        prev_hash = hash;
    }
    Ok(())
}

/// `user@host:port/database`, and the connection options (such as `-c search_path=…`) if
/// there are any, for messages: never the password.
fn describe(options: &PgConnectOptions) -> String {
    let mut location = format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    );
    if let Some(extra) = options.get_options() {
        location.push_str(&format!(" ({extra})"));
    }
    location
}

/// What to check when connecting failed.
fn connect_hint(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {
            "check that PostgreSQL is running and listening on that host and port (pg_lsclusters; listen_addresses in postgresql.conf) and that no firewall is in the way"
        }
        sqlx::Error::Tls(_) => {
            "check the TLS settings: sslmode, and sslrootcert naming the CA of the server's certificate"
        }
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000") => {
                "check the user and its password (PGPASSWORD or ~/.pgpass) and the server's pg_hba.conf"
            }
            Some("3D000") => {
                "the database does not exist: create it (createdb NAME) or fix the URL's database name"
            }
            Some("42501") => {
                "the user lacks a privilege: let it create tables in the schema (GRANT CREATE ON SCHEMA …) or use the schema's owner"
            }
            Some("53300") => {
                "the server has no connection left: raise max_connections or lower the number of processes"
            }
            _ => "check the server's log for the reason",
        },
        _ => "check the URL's host, port, user and database",
    }
}

impl PgStore {
    /// Connects to the PostgreSQL database at `url` (`postgres://USER@HOST:PORT/DATABASE`,
    /// libpq-style parameters such as `sslmode`, `sslrootcert` and `options=-c search_path=…`
    /// allowed; the password may come from `PGPASSWORD` or `~/.pgpass`) and migrates it. Audit
    /// entries are authenticated with `key`.
    pub async fn open(url: &str, key: Arc<AuditKey>) -> Result<Self, StoreError> {
        let options = Self::options(url)?;
        Self::connect(options, DEFAULT_POOL_SIZE, key).await
    }

    /// Parses a database URL; refuses anything but `postgres://` or `postgresql://`.
    pub fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("postgres" | "postgresql")) {
            return Err(StoreError::BadUrl {
                detail: format!(
                    "it must start with postgres:// or postgresql://, not {:?}; SQLite needs no URL, it lives in the data directory",
                    scheme.map_or("", |s| s)
                ),
            });
        }
        PgConnectOptions::from_str(url).map_err(|error| StoreError::BadUrl {
            detail: match error {
                sqlx::Error::Configuration(cause) => cause.to_string(),
                _ => "it does not parse as a URL".to_owned(),
            },
        })
    }

    /// Connects with `options` and a pool of `pool_size` connections, checks there is a schema
    /// to work in, and migrates it.
    pub async fn connect(
        options: PgConnectOptions,
        pool_size: u32,
        key: Arc<AuditKey>,
    ) -> Result<Self, StoreError> {
        let location = describe(&options);
        let connect_error = |source: sqlx::Error| StoreError::Connect {
            location: location.clone(),
            hint: connect_hint(&source),
            source,
        };
        // One connection first, to report why it fails (a pool would only time out).
        let mut first =
            match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await
            {
                Ok(connected) => connected.map_err(connect_error)?,
                Err(_) => {
                    return Err(connect_error(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    ))));
                }
            };
        let row = sqlx::query(
            "SELECT current_schema() AS schema, current_setting('search_path') AS search_path, \
             hashtext(coalesce(current_schema(), '')) AS schema_key",
        )
        .fetch_one(&mut first)
        .await
        .map_err(connect_error)?;
        first.close().await.map_err(connect_error)?;
        if row.try_get::<Option<String>, _>("schema")?.is_none() {
            return Err(StoreError::NoSchema {
                location,
                search_path: row.try_get("search_path")?,
            });
        }
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        let schema_key: i32 = row.try_get("schema_key")?;
        migrate(&pool, schema_key).await?;
        Ok(Self {
            pool,
            key,
            schema_key,
            wake_channel: crate::replicas::wake_channel(schema_key),
            location,
        })
    }

    /// `user@host:port/database` of this store (no password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The connection pool (for tests and tools that inspect the database).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Applies the migrations of `migrations/postgres` not applied yet, one process at a time per
/// schema (a session advisory lock keyed by the schema, so other schemas are not held up).
async fn migrate(pool: &PgPool, schema_key: i32) -> Result<(), StoreError> {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_locking(false);
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(MIGRATION_LOCK)
        .bind(schema_key)
        .execute(&mut *conn)
        .await?;
    let migrated = match super::migrations::refuse_newer_schema(&migrator, &mut *conn).await {
        Ok(()) => migrator.run(&mut *conn).await.map_err(StoreError::from),
        Err(refused) => Err(refused),
    };
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(MIGRATION_LOCK)
        .bind(schema_key)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // Closing the session releases its locks.
        conn.close_on_drop();
    }
    migrated?;
    unlocked?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn coordination(&self) -> Option<crate::replicas::Coordination> {
        Some(crate::replicas::Coordination::new(
            self.pool.connect_options().as_ref().clone(),
            self.schema_key,
        ))
    }

    async fn has_admin_token(&self) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT EXISTS (SELECT 1 FROM admin_tokens) AS any")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<bool, _>("any")?)
    }

    async fn insert_admin_token(&self, hash: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO admin_tokens (hash, created_at) VALUES ($1, $2)")
            .bind(hash)
            .bind(millis(now))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn admin_token_exists(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM admin_tokens WHERE hash = $1")
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
        labels: &Labels,
        ssh_ca: bool,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let mut tx = Tx::begin(self).await?;
        sqlx::query(
            "INSERT INTO enroll_tokens (hash, created_at, expires_at, uses_total, uses_left, labels, ssh_ca) \
             VALUES ($1, $2, $3, $4, $4, $5, $6)",
        )
        .bind(hash)
        .bind(millis(now))
        .bind(millis(expires_at))
        .bind(i64::from(uses))
        .bind(labels_to_text(labels)?)
        .bind(i64::from(ssh_ca))
        .execute(tx.conn())
        .await?;
        let event = actor
            .event("enroll_token.create")
            .detail(serde_json::json!({
                "token_hash_prefix": hash.get(..12).unwrap_or(hash),
                "expires_at": expires_at.to_rfc3339(),
                "uses": uses,
                "labels": labels,
                "ssh_ca": ssh_ca,
            }));
        tx.audit(event, now);
        tx.commit().await
    }

    async fn enroll_host(
        &self,
        token_hash: &str,
        host: &HostRecord,
        credential_hash: &str,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let token_actor = format!(
            "enroll_token:{}",
            token_hash.get(..12).unwrap_or(token_hash)
        );
        let mut tx = Tx::begin(self).await?;
        // Spend a use only if one is left: of N racing enrollments with one use left, one
        // updates the row and the others find `uses_left > 0` false once it commits.
        let spent = sqlx::query(
            "UPDATE enroll_tokens SET uses_left = uses_left - 1 \
             WHERE hash = $1 AND expires_at > $2 AND uses_left > 0 RETURNING labels, ssh_ca",
        )
        .bind(token_hash)
        .bind(millis(host.enrolled_at))
        .fetch_optional(tx.conn())
        .await?;
        let Some(spent) = spent else {
            let token = sqlx::query("SELECT expires_at FROM enroll_tokens WHERE hash = $1")
                .bind(token_hash)
                .fetch_optional(tx.conn())
                .await?;
            let refusal = match token {
                None => TokenRefusal::Unknown,
                Some(token)
                    if token.try_get::<i64, _>("expires_at")? <= millis(host.enrolled_at) =>
                {
                    TokenRefusal::Expired
                }
                Some(_) => TokenRefusal::UsedUp,
            };
            let event = AuditEvent::new(token_actor, "enroll.refused").detail(serde_json::json!({
                "reason": format!("{refusal:?}").to_lowercase(),
                "hostname": host.facts.hostname,
            }));
            tx.audit(event, host.enrolled_at);
            tx.commit().await?;
            return Ok(Err(refusal));
        };
        let labels = labels_from_text(&spent.try_get::<String, _>("labels")?)?;
        let ssh_ca = spent.try_get::<i64, _>("ssh_ca")? != 0;
        let facts = &host.facts;
        sqlx::query(
            "INSERT INTO hosts (id, hostname, os, kernel, arch, cpus, memory_bytes, machine_id, \
             credential_hash, enrolled_at, labels, ssh_ca) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        .bind(labels_to_text(&labels)?)
        .bind(i64::from(ssh_ca))
        .execute(tx.conn())
        .await?;
        let event = AuditEvent::new(token_actor, "host.enroll")
            .host(&host.id)
            .detail(serde_json::json!({
                "hostname": facts.hostname,
                "machine_id": facts.machine_id,
                "labels": labels,
                "ssh_ca": ssh_ca,
            }));
        tx.audit(event, host.enrolled_at);
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn host_by_credential(&self, hash: &str) -> Result<Option<HostRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE credential_hash = $1 AND removed_at IS NULL"
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
        sqlx::query("UPDATE hosts SET last_seen = $1 WHERE id = $2")
            .bind(millis(now))
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_agent(
        &self,
        host_id: &str,
        agent: &latch_common::protocol::AgentInfo,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET agent_version = $1, agent_protocol = $2 WHERE id = $3")
            .bind(&agent.version)
            .bind(i64::from(agent.protocol))
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_hosts(
        &self,
        filter: &HostFilter,
        page: Page,
    ) -> Result<Vec<HostRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE removed_at IS NULL AND ($3::text[] IS NULL OR id = ANY($3)) \
             ORDER BY hostname, id LIMIT $1 OFFSET $2"
        );
        let (count, offset) = page_bounds(page);
        sqlx::query(sql)
            .bind(count)
            .bind(offset)
            .bind(filter.ids.as_deref())
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
        actor: &Actor,
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = Tx::begin(self).await?;
        // The host row lock orders this against insert_job: a job inserted first is pending
        // below and fails; one inserted after finds the host removed.
        let removed =
            sqlx::query("UPDATE hosts SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL")
                .bind(millis(now))
                .bind(host_id)
                .execute(tx.conn())
                .await?
                .rows_affected();
        if removed == 0 {
            return Ok(None);
        }
        // Locked, so a delivery or an outcome being recorded right now finishes first (and a
        // job it finished is no longer pending when the lock is granted).
        let pending: Vec<String> = sqlx::query(
            "SELECT id FROM jobs WHERE host_id = $1 AND status = 'pending' ORDER BY seq FOR NO KEY UPDATE",
        )
        .bind(host_id)
        .fetch_all(tx.conn())
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
        let error = host_removed();
        for job_id in &pending {
            tx.fail_job(job_id, &error, now).await?;
        }
        let event = actor
            .event("host.remove")
            .host(host_id)
            .detail(serde_json::json!({"cancelled_jobs": pending}));
        tx.audit(event, now);
        tx.wake(host_id);
        tx.commit().await?;
        Ok(Some(pending.len() as u64))
    }

    async fn rotate_host_credential(
        &self,
        host_id: &str,
        credential_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = Tx::begin(self).await?;
        let changed = sqlx::query(
            "UPDATE hosts SET credential_hash = $1 WHERE id = $2 AND removed_at IS NULL",
        )
        .bind(credential_hash)
        .bind(host_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if changed == 1 {
            let event =
                AuditEvent::new(host_actor(host_id), "host.credential_rotated").host(host_id);
            tx.audit(event, now);
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
        let behind = sqlx::query("SELECT 1 FROM hosts WHERE id = $1 AND next_seq <= $2")
            .bind(host_id)
            .bind(applied)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if !behind {
            return Ok(false);
        }
        let mut tx = Tx::begin(self).await?;
        let changed = sqlx::query(
            "UPDATE hosts SET next_seq = $1 + 1 WHERE id = $2 AND next_seq <= $1 AND removed_at IS NULL",
        )
        .bind(applied)
        .bind(host_id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if changed == 1 {
            let event = AuditEvent::new(host_actor(host_id), "host.sequence_raised")
                .host(host_id)
                .detail(serde_json::json!({"applied": applied, "next_seq": applied + 1}));
            tx.audit(event, now);
        }
        tx.commit().await?;
        Ok(changed == 1)
    }

    async fn host_is_active(&self, host_id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM hosts WHERE id = $1 AND removed_at IS NULL")
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
            " FROM hosts WHERE removed_at IS NULL AND (id = $1 OR (hostname = $1 AND NOT EXISTS \
             (SELECT 1 FROM hosts WHERE id = $1 AND removed_at IS NULL))) ORDER BY id"
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
        let mut tx = Tx::begin(self).await?;
        // Lock the host row: sequence numbers are handed out one at a time, and a removal
        // either commits first (refused here) or waits for this job and fails it.
        let host =
            sqlx::query("SELECT next_seq, removed_at FROM hosts WHERE id = $1 FOR NO KEY UPDATE")
                .bind(host_id)
                .fetch_optional(tx.conn())
                .await?;
        let seq: i64 = match host {
            None => return Ok(Err(JobRefusal::NoSuchHost)),
            Some(row) if row.try_get::<Option<i64>, _>("removed_at")?.is_some() => {
                return Ok(Err(JobRefusal::HostRemoved));
            }
            Some(row) => row.try_get("next_seq")?,
        };
        if let Some(grant) = revokes {
            // The grant's row lock (after the host's, as everywhere): of two sweeps queueing
            // its revocation at once, the second waits here and finds the first one's job.
            let underway = sqlx::query(
                "SELECT revocation_job_id IS NOT NULL OR revoked_at IS NOT NULL AS underway \
                 FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
            )
            .bind(grant)
            .fetch_optional(tx.conn())
            .await?;
            if let Some(row) = underway
                && row.try_get::<bool, _>("underway")?
            {
                return Ok(Err(JobRefusal::RevocationUnderway));
            }
        }
        sqlx::query("UPDATE hosts SET next_seq = $1 WHERE id = $2")
            .bind(seq + 1)
            .bind(host_id)
            .execute(tx.conn())
            .await?;
        let (payload, signature) = sign(seq).map_err(|detail| StoreError::Corrupt {
            what: "job signature",
            detail,
        })?;
        sqlx::query(
            "INSERT INTO jobs (id, host_id, seq, kind, spec, status, created_at, subject_user, \
             subject_group, expires_at, revokes_job_id, payload, signature) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $12)",
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
        .execute(tx.conn())
        .await?;
        tx.add_event(id, now, "queued", Some(&format!("seq {seq}")))
            .await?;
        if let Some(grant) = revokes {
            sqlx::query(
                "UPDATE jobs SET revocation_job_id = $1 WHERE id = $2 AND revocation_job_id IS NULL",
            )
            .bind(id)
            .bind(grant)
            .execute(tx.conn())
            .await?;
            tx.add_event(grant, now, "revocation_queued", Some(id))
                .await?;
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
        let event = actor
            .event("job.create")
            .host(host_id)
            .job(id)
            .detail(detail);
        tx.audit(event, now);
        tx.wake(host_id);
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
             AND g.expires_at <= $1 AND g.revoked_at IS NULL AND g.revocation_job_id IS NULL \
             AND (g.revocation_attempts = 0 OR g.revocation_failed_at \
                 + LEAST($3::bigint << LEAST(g.revocation_attempts - 1, 30)::int, $4) <= $1) \
             AND EXISTS (SELECT 1 FROM hosts h WHERE h.id = g.host_id AND h.removed_at IS NULL) \
             AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.host_id = g.host_id \
                 AND l.subject_user = g.subject_user AND l.kind = g.kind \
                 AND l.subject_group IS NOT DISTINCT FROM g.subject_group AND l.seq > g.seq \
                 AND l.status != 'failed') \
             ORDER BY g.expires_at LIMIT $2"
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
            grant_state_case!("$2"),
            " FROM (SELECT ",
            job_columns!(),
            ", ",
            context_columns!(),
            " FROM jobs g WHERE g.id = ANY($1)) AS j"
        );
        let rows = sqlx::query(sql)
            .bind(ids)
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
            grant_state_case!("$1"),
            " FROM (SELECT ",
            job_columns!(),
            ", ",
            context_columns!(),
            " FROM jobs g WHERE g.status = 'confirmed' AND g.kind IN ('create-account', 'add-group') \
                 AND ($2::text IS NULL OR g.host_id IN (SELECT id FROM hosts WHERE id = $2 OR hostname = $2)) \
                 AND ($3::text IS NULL OR g.subject_user = $3) \
                 AND ($8::text[] IS NULL OR g.host_id = ANY($8))) AS j) AS s \
             WHERE ($4::text IS NULL OR grant_state = $4) \
               AND ($5::bigint IS NULL OR created_at >= $5 OR revoked_at >= $5 \
                    OR grant_state NOT IN ('revoked', 'superseded')) \
             ORDER BY created_at DESC, host_id, seq DESC LIMIT $6 OFFSET $7"
        );
        let (count, offset) = page_bounds(page);
        sqlx::query(sql)
            .bind(millis(now))
            .bind(filter.host.as_deref())
            .bind(filter.user.as_deref())
            .bind(filter.state.map(GrantState::as_str))
            .bind(filter.since.map(millis))
            .bind(count)
            .bind(offset)
            .bind(filter.host_ids.as_deref())
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
        let mut tx = Tx::begin(self).await?;
        let revoked = tx.mark_revoked(host_id, job_id, at, by, None).await?;
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
        // The head job, locked: a second poll of the same host waits here, then finds the lease
        // just given (InFlight); a job finished meanwhile no longer matches and the next one is
        // read instead. One delivery per host at a time, in sequence order.
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE host_id = $1 AND status = 'pending' \
             ORDER BY seq LIMIT 1 FOR NO KEY UPDATE"
        );
        let mut tx = Tx::begin(self).await?;
        loop {
            let Some(row) = sqlx::query(sql)
                .bind(host_id)
                .fetch_optional(tx.conn())
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
                tx.add_event(
                    &job.id,
                    now,
                    "lease_expired",
                    Some(&format!("attempt {}", job.attempts)),
                )
                .await?;
                if job.attempts >= max_attempts {
                    tx.fail_unresponsive(&job, now).await?;
                    continue;
                }
            }
            let attempts = job.attempts + 1;
            let expires = now + lease_ttl;
            sqlx::query(
                "UPDATE jobs SET attempts = $1, lease = $2, lease_expires_at = $3 WHERE id = $4",
            )
            .bind(i64::from(attempts))
            .bind(lease)
            .bind(millis(expires))
            .bind(&job.id)
            .execute(tx.conn())
            .await?;
            tx.add_event(
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
            tx.audit(event, now);
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
        // Locked: a resent report, a new delivery or the lease sweep wait for this one and
        // then see the job final (compare-and-set on status and lease).
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1 AND host_id = $2 FOR NO KEY UPDATE"
        );
        let mut tx = Tx::begin(self).await?;
        let Some(row) = sqlx::query(sql)
            .bind(job_id)
            .bind(host_id)
            .fetch_optional(tx.conn())
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
                    "UPDATE jobs SET status = 'confirmed', finished_at = $1, lease = NULL, \
                     lease_expires_at = NULL, outcome_notes = $2 WHERE id = $3",
                )
                .bind(millis(now))
                .bind(notes)
                .bind(job_id)
                .execute(tx.conn())
                .await?;
                tx.add_event(job_id, now, "confirmed", None).await?;
                if let Some(grant) = &job.revokes {
                    tx.mark_revoked(host_id, grant, now, RevokedBy::ControlPlane, None)
                        .await?;
                }
                tx.revoke_earlier_grants(&job, now).await?;
            }
            JobOutcome::Failed { error } => tx.fail_job(job_id, error, now).await?,
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
        tx.audit(event, now);
        tx.wake(host_id);
        tx.commit().await?;
        Ok(Finish::Recorded)
    }

    async fn fail_abandoned_jobs(
        &self,
        now: DateTime<Utc>,
        max_attempts: u32,
    ) -> Result<Vec<String>, StoreError> {
        // SKIP LOCKED: a job locked right now is being delivered or finished; whichever way
        // that goes, the next sweep (or that delivery itself) settles it. Two sweeps (two
        // replicas) never fail the same job twice.
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE status = 'pending' AND lease_expires_at <= $1 \
             AND attempts >= $2 ORDER BY host_id, seq FOR NO KEY UPDATE SKIP LOCKED"
        );
        let mut tx = Tx::begin(self).await?;
        let rows = sqlx::query(sql)
            .bind(millis(now))
            .bind(i64::from(max_attempts))
            .fetch_all(tx.conn())
            .await?;
        let mut hosts = Vec::new();
        for row in &rows {
            let job = job_from_row(row)?;
            tx.add_event(
                &job.id,
                now,
                "lease_expired",
                Some(&format!("attempt {}", job.attempts)),
            )
            .await?;
            tx.fail_unresponsive(&job, now).await?;
            tx.wake(&job.host_id);
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
            " FROM jobs WHERE ($1::text IS NULL OR host_id = $1) \
             AND ($2::text IS NULL OR status = $2) \
             AND ($5::text[] IS NULL OR host_id = ANY($5)) \
             AND ($6::text IS NULL OR kind = $6) \
             ORDER BY created_at DESC, host_id, seq DESC \
             LIMIT $3 OFFSET $4"
        );
        let (count, offset) = page_bounds(page);
        sqlx::query(sql)
            .bind(filter.host_id.as_deref())
            .bind(filter.status.map(JobStatus::as_str))
            .bind(count)
            .bind(offset)
            .bind(filter.host_ids.as_deref())
            .bind(filter.kind.map(JobKind::as_str))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
        sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn job_history(&self, id: &str) -> Result<Vec<JobEvent>, StoreError> {
        sqlx::query("SELECT at, event, detail FROM job_events WHERE job_id = $1 ORDER BY id")
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

    fn audit_key(&self) -> Arc<AuditKey> {
        self.key.clone()
    }

    async fn append_audit(&self, event: &AuditEvent, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = Tx::begin(self).await?;
        tx.audit(event.clone(), now);
        tx.commit().await
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let (count, offset) = page_bounds(page);
        sqlx::query(concat!(
            audit_select!(),
            "WHERE ($2::bigint IS NULL OR a.at >= $2) AND ($3::text IS NULL OR a.actor = $3) \
             AND ($4::text IS NULL OR a.host_id = $4) ORDER BY a.id LIMIT $5 OFFSET $6"
        ))
        .bind(self.key.key_id())
        .bind(filter.since.map(millis))
        .bind(filter.actor.as_deref())
        .bind(filter.host_id.as_deref())
        .bind(count)
        .bind(offset)
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
        sqlx::query("SELECT hash FROM audit_log WHERE id = $1")
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
        let mut tx = Tx::begin(self).await?;
        let rows = sqlx::query("SELECT id, hash FROM audit_log WHERE id <= $1 ORDER BY id")
            .bind(through)
            .fetch_all(tx.conn())
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut macs = Vec::with_capacity(rows.len());
        for row in rows {
            ids.push(row.try_get::<i64, _>("id")?);
            macs.push(self.key.entry_mac(&row.try_get::<String, _>("hash")?));
        }
        sqlx::query(
            "INSERT INTO audit_macs (key_id, entry_id, mac) \
             SELECT $1, entry_id, mac FROM UNNEST($2::bigint[], $3::text[]) AS m (entry_id, mac) \
             ON CONFLICT DO NOTHING",
        )
        .bind(self.key.key_id())
        .bind(&ids)
        .bind(&macs)
        .execute(tx.conn())
        .await?;
        tx.pin(PinnedKey::Audit, self.key.public_key(), now).await?;
        tx.audit(event.clone(), now);
        tx.commit().await
    }

    async fn key_pin(&self, key: PinnedKey) -> Result<Option<String>, StoreError> {
        sqlx::query("SELECT public FROM key_pins WHERE name = $1")
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
        let mut tx = Tx::begin(self).await?;
        tx.pin(key, public, now).await?;
        tx.audit(event.clone(), now);
        tx.commit().await
    }
}
