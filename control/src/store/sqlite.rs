//! The embedded default store: SQLite in WAL mode.
//!
//! Reads run in parallel on sqlx's connection pool. Every write transaction runs on one
//! dedicated `rusqlite` connection behind an async mutex, as a single synchronous call: the
//! whole transaction (`BEGIN IMMEDIATE` … `COMMIT`, with cached prepared statements) costs no
//! round trip to another thread, so the single writer is held for microseconds per statement
//! instead of a thread hand-off per statement (BENCHMARKS.md, "Fleet simulator"). The writer
//! also keeps the audit chain's head in memory, checked against `PRAGMA data_version` so that a
//! write by any other connection or process is noticed.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use latch_common::api::{GrantState, GrantWindow, JobEvent, RevokedBy};
use latch_common::job::{JobError, JobKind, JobOutcome, JobSpec, JobStatus};
use latch_common::labels::Labels;
use rusqlite::{TransactionBehavior, params};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Mutex;

use std::sync::Arc;

use crate::audit::{Actor, AuditEntry, AuditEvent, AuditKey, GENESIS, entry_hash};

use super::rows::{
    Columns, audit_from_row, context_from_row, corrupt, from_millis, host_actor, host_from_row,
    host_removed, is_rejection, job_from_row, labels_from_text, labels_to_text, millis,
    unresponsive,
};
use super::{
    AuditFilter, Finish, GrantFilter, GrantRecord, GrantRevocation, HostFilter, HostRecord,
    JobContext, JobFilter, JobRecord, JobRefusal, Lease, NewJob, Page, PinnedKey, RetryBackoff,
    Revoke, Store, StoreError, TokenRefusal,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    pool: SqlitePool,
    writer: Mutex<Writer>,
    readers: Readers,
    key: Arc<AuditKey>,
    /// Dropping it ends the checkpoint thread ([`start_checkpointer`]).
    _checkpointer: std::sync::mpsc::Sender<()>,
    /// The directory of a throwaway database ([`SqliteStore::open_in_memory`]), removed on drop
    /// (declared last: dropped after the connections).
    _scratch: Option<tempfile::TempDir>,
}

/// The one connection every write transaction runs on.
struct Writer {
    conn: rusqlite::Connection,
    /// The audit chain's last `(id, hash)` as this connection committed it, with the
    /// `PRAGMA data_version` it was read under; `None` when unknown (after a rollback or error).
    head: Option<Head>,
}

/// Idle `rusqlite` connections for the reads on every request (authentication, a poll's first
/// look), used synchronously like the writer: a WAL reader never waits for the writer, and a
/// query of a few microseconds costs less than a hand-off to sqlx's connection thread.
struct Readers {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

/// How often the checkpoint thread copies the WAL into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// At most this many idle reader connections are kept.
const IDLE_READERS: usize = 8;

impl Readers {
    /// Runs `query` on an idle reader connection (opening one if none is idle).
    fn read<T>(
        &self,
        query: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_connection(&self.path, true)?,
        };
        let result = query(&conn);
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

/// The audit chain's last entry, `(0, GENESIS)` for an empty chain.
#[derive(Clone)]
struct Head {
    id: i64,
    hash: String,
    data_version: i64,
}

/// What a write transaction ends with.
enum End<T> {
    /// Commit, then return the value.
    Commit(T),
    /// Roll back (nothing of it was meant to stay), then return the value.
    Rollback(T),
}

/// An open write transaction with the audit key and the chain head.
struct Tx<'c> {
    tx: rusqlite::Transaction<'c>,
    key: &'c AuditKey,
    head: Option<Head>,
    data_version: i64,
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.get(column).map_err(decode)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.get(column).map_err(decode)
    }
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.get(column).map_err(decode)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.get(column).map_err(decode)
    }
}

/// A list of host ids as a JSON array, for `IN (SELECT value FROM json_each(?))`; `None` (no
/// restriction) stays `None`.
fn ids_json(ids: Option<&[String]>) -> Result<Option<String>, StoreError> {
    ids.map(|ids| serde_json::to_string(ids).map_err(|e| corrupt("host id list", e)))
        .transpose()
}

fn decode(error: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(error))
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

/// Runs one statement (prepared once per connection) and returns the rows it changed.
fn exec(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, StoreError> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

/// The first row of `sql`, decoded by `read`, or `None`.
fn row<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl FnOnce(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    rows.next()?.map(read).transpose()
}

/// Every row of `sql`, decoded by `read`.
fn rows<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut read: impl FnMut(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut all = Vec::new();
    while let Some(row) = rows.next()? {
        all.push(read(row)?);
    }
    Ok(all)
}

/// Whether `sql` returns a row.
fn exists(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<bool, StoreError> {
    Ok(row(conn, sql, params, |_| Ok(()))?.is_some())
}

impl Tx<'_> {
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
        exec(&self.tx, sql, params)
    }

    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnOnce(&rusqlite::Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        row(&self.tx, sql, params, read)
    }

    fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnMut(&rusqlite::Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        rows(&self.tx, sql, params, read)
    }

    fn exists(&self, sql: &str, params: impl rusqlite::Params) -> Result<bool, StoreError> {
        exists(&self.tx, sql, params)
    }

    fn add_event(
        &self,
        job_id: &str,
        at: DateTime<Utc>,
        event: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO job_events (job_id, at, event, detail) VALUES (?, ?, ?, ?)",
            params![job_id, millis(at), event, detail],
        )?;
        Ok(())
    }

    /// Appends `event` to the audit chain, with its MAC under the store's key, inside this
    /// transaction (the single writer keeps the chain linear). The head comes from memory when
    /// no other connection has written since it was known.
    fn audit(&mut self, event: &AuditEvent, now: DateTime<Utc>) -> Result<(), StoreError> {
        let head = match self.head.take() {
            Some(head) => head,
            None => self
                .row(
                    "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1",
                    [],
                    |row| Ok((row.int("id")?, row.text("hash")?)),
                )?
                .map_or_else(
                    || Head {
                        id: 0,
                        hash: GENESIS.to_owned(),
                        data_version: self.data_version,
                    },
                    |(id, hash)| Head {
                        id,
                        hash,
                        data_version: self.data_version,
                    },
                ),
        };
        let id = head.id + 1;
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
            &head.hash,
        );
        self.exec(
            "INSERT INTO audit_log (id, at, actor, action, host_id, job_id, detail, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                id,
                at,
                event.actor,
                event.action,
                event.host_id,
                event.job_id,
                detail,
                head.hash,
                hash
            ],
        )?;
        self.exec(
            "INSERT INTO audit_macs (key_id, entry_id, mac) VALUES (?, ?, ?)",
            params![self.key.key_id(), id, self.key.entry_mac(&hash)],
        )?;
        self.head = Some(Head {
            id,
            hash,
            data_version: self.data_version,
        });
        Ok(())
    }

    fn fail_job(
        &self,
        job_id: &str,
        error: &JobError,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, finished_at = ?, \
             lease = NULL, lease_expires_at = NULL WHERE id = ?",
            params![error.code.as_str(), error.message, millis(now), job_id],
        )?;
        self.add_event(job_id, now, "failed", Some(error.code.as_str()))?;
        self.release_grant(job_id, error, now)
    }

    /// When `job_id` is the revocation job of a grant that is still not revoked, records the
    /// failure on the grant and frees it, so `due_grants` offers it again once the retry wait is
    /// over. Every way a job fails goes through here (a failed report, the lease sweep, host
    /// removal).
    fn release_grant(
        &self,
        job_id: &str,
        error: &JobError,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let released = self.rows(
            "UPDATE jobs SET revocation_job_id = NULL, revocation_attempts = revocation_attempts + 1, \
             revocation_failed_at = ?, revocation_error = ? \
             WHERE revocation_job_id = ? AND revoked_at IS NULL RETURNING id, revocation_attempts",
            params![
                millis(now),
                format!("{}: {}", error.code.as_str(), error.message),
                job_id
            ],
            |row| Ok((row.text("id")?, row.int("revocation_attempts")?)),
        )?;
        for (grant, attempts) in &released {
            let detail = format!(
                "{job_id} failed ({}), attempt {attempts}",
                error.code.as_str()
            );
            self.add_event(grant, now, "revocation_failed", Some(&detail))?;
        }
        Ok(())
    }

    fn mark_revoked(
        &mut self,
        host_id: &str,
        job_id: &str,
        at: DateTime<Utc>,
        by: RevokedBy,
        by_job: Option<&str>,
    ) -> Result<Revoke, StoreError> {
        let Some(revoked_at) = self.row(
            "SELECT revoked_at FROM jobs WHERE id = ? AND host_id = ? AND status = 'confirmed' \
             AND kind IN ('create-account', 'add-group')",
            params![job_id, host_id],
            |row| Ok(row.opt_int("revoked_at")?),
        )?
        else {
            return Ok(Revoke::NotAGrant);
        };
        if revoked_at.is_some() {
            return Ok(Revoke::AlreadyRevoked);
        }
        self.exec(
            "UPDATE jobs SET revoked_at = ?, revoked_by = ?, revoked_by_job_id = ? WHERE id = ?",
            params![millis(at), by.as_str(), by_job, job_id],
        )?;
        let detail = match by_job {
            Some(by_job) => format!("{} {by_job}", by.as_str()),
            None => by.as_str().to_owned(),
        };
        self.add_event(job_id, at, "revoked", Some(&detail))?;
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
        self.audit(&event, at)?;
        Ok(Revoke::Recorded)
    }

    fn pin(&self, key: PinnedKey, public: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO key_pins (name, public, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET public = excluded.public, updated_at = excluded.updated_at",
            params![key.as_str(), public, millis(now)],
        )?;
        Ok(())
    }

    /// A confirmed delete-account ends every earlier grant of that account on the host (the
    /// account and its memberships are gone); a confirmed remove-group ends the earlier
    /// add-group grants of that account and group. They are recorded as revoked by `job`.
    fn revoke_earlier_grants(
        &mut self,
        job: &JobRecord,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (kinds, group) = match &job.spec {
            JobSpec::DeleteAccount { .. } => (&["create-account", "add-group"][..], None),
            JobSpec::RemoveGroup { group, .. } => (&["add-group"][..], Some(group.as_str())),
            _ => return Ok(()),
        };
        let grants = self.rows(
            "SELECT id FROM jobs WHERE host_id = ?1 AND subject_user = ?2 \
             AND kind IN (SELECT value FROM json_each(?3)) AND (?4 IS NULL OR subject_group = ?4) \
             AND status = 'confirmed' AND revoked_at IS NULL AND seq < ?5 ORDER BY seq",
            params![
                job.host_id,
                job.spec.user(),
                serde_json::to_string(kinds).map_err(|e| corrupt("job kinds", e))?,
                group,
                job.seq
            ],
            |row| Ok(row.text("id")?),
        )?;
        for grant in &grants {
            self.mark_revoked(
                &job.host_id,
                grant,
                now,
                RevokedBy::Job,
                Some(job.id.as_str()),
            )?;
        }
        Ok(())
    }
}

/// The columns of an audit entry with its MAC under the key bound as `?1`.
macro_rules! audit_select {
    () => {
        "SELECT a.id, a.at, a.actor, a.action, a.host_id, a.job_id, a.detail, a.prev_hash, a.hash, \
         m.mac FROM audit_log a LEFT JOIN audit_macs m ON m.entry_id = a.id AND m.key_id = ?1 "
    };
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` in WAL mode and migrates it.
    /// Audit entries are authenticated with `key` (the data directory's `audit.key`, see
    /// [`crate::datadir`]).
    pub async fn open(path: &Path, key: Arc<AuditKey>) -> Result<Self, StoreError> {
        Self::connect(path, key, None).await
    }

    /// Opens a private throwaway database (for tests and examples), with a random audit key: a
    /// file in a new temporary directory, removed when the store is dropped, so that it runs
    /// exactly like [`SqliteStore::open`] (the writer and the readers are separate connections).
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let scratch = tempfile::Builder::new()
            .prefix("latch-store-")
            .tempdir()
            .map_err(|e| StoreError::Scratch(e.to_string()))?;
        let path = scratch.path().join("latch.db");
        Self::connect(&path, Arc::new(AuditKey::generate()?), Some(scratch)).await
    }

    /// The connection pool (for the copy to PostgreSQL).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn connect(
        path: &Path,
        key: Arc<AuditKey>,
        scratch: Option<tempfile::TempDir>,
    ) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A file on this machine cannot drop the connection: no ping before each use (a
            // round trip to the connection's thread, one per query at load).
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                location: location.clone(),
                source,
            })?;
        let mut migrating = pool.acquire().await.map_err(|source| StoreError::Open {
            location: location.clone(),
            source,
        })?;
        super::migrations::refuse_newer_schema(&MIGRATOR, &mut *migrating).await?;
        MIGRATOR.run(&mut *migrating).await?;
        drop(migrating);
        let conn = open_connection(path, false)
            .and_then(|conn| {
                // Checkpoints run on their own thread instead of in the commit that fills the
                // WAL, so that no write (and no tokio worker) waits for their writes and fsync.
                conn.pragma_update(None, "wal_autocheckpoint", 0)?;
                Ok(conn)
            })
            .map_err(|source| StoreError::OpenWriter {
                location: location.clone(),
                source,
            })?;
        let checkpointer = start_checkpointer(path, &location)?;
        Ok(Self {
            pool,
            writer: Mutex::new(Writer { conn, head: None }),
            readers: Readers {
                path: path.to_owned(),
                idle: std::sync::Mutex::new(Vec::new()),
            },
            key,
            _checkpointer: checkpointer,
            _scratch: scratch,
        })
    }

    /// Runs `work` as one write transaction (`BEGIN IMMEDIATE`) on the writer connection,
    /// synchronously: no other thread is involved, so the writer is held only for the time
    /// SQLite itself takes. An error or [`End::Rollback`] rolls everything back.
    async fn write<T>(
        &self,
        work: impl FnOnce(&mut Tx<'_>) -> Result<End<T>, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let mut writer = self.writer.lock().await;
        let Writer { conn, head } = &mut *writer;
        // Known again only once this transaction commits.
        let known = head.take();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Changes whenever another connection (another process) committed since.
        let data_version: i64 = tx.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        let mut tx = Tx {
            tx,
            key: &self.key,
            head: known.filter(|head| head.data_version == data_version),
            data_version,
        };
        match work(&mut tx)? {
            End::Commit(value) => {
                let Tx { tx, head: new, .. } = tx;
                tx.commit()?;
                *head = new;
                Ok(value)
            }
            End::Rollback(value) => {
                let Tx { tx, .. } = tx;
                tx.rollback()?;
                Ok(value)
            }
        }
    }
}

/// Starts the thread that checkpoints the WAL every [`CHECKPOINT_EVERY`] on a connection of its
/// own (`PASSIVE`: it never blocks the writer or a reader). It ends when the returned sender is
/// dropped.
fn start_checkpointer(
    path: &Path,
    location: &str,
) -> Result<std::sync::mpsc::Sender<()>, StoreError> {
    let conn = open_connection(path, false).map_err(|source| StoreError::OpenWriter {
        location: location.to_owned(),
        source,
    })?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, "SQLite WAL checkpoint failed; retried in a second");
                }
            }
        })
        .map_err(StoreError::Checkpointer)?;
    Ok(stop)
}

/// A writer or reader connection, with the pool's settings (WAL, set by the pool, which is
/// kept by the file; synchronous NORMAL, foreign keys, busy timeout); a reader is `query_only`.
fn open_connection(path: &Path, reader: bool) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if reader {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
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
        self.write(|tx| {
            tx.exec(
                "INSERT INTO admin_tokens (hash, created_at) VALUES (?, ?)",
                params![hash, millis(now)],
            )?;
            Ok(End::Commit(()))
        })
        .await
    }

    async fn admin_token_exists(&self, hash: &str) -> Result<bool, StoreError> {
        self.readers.read(|conn| {
            exists(
                conn,
                "SELECT 1 FROM admin_tokens WHERE hash = ?",
                params![hash],
            )
        })
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
        let labels_text = labels_to_text(labels)?;
        self.write(|tx| {
            tx.exec(
                "INSERT INTO enroll_tokens (hash, created_at, expires_at, uses_total, uses_left, labels, ssh_ca) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    hash,
                    millis(now),
                    millis(expires_at),
                    i64::from(uses),
                    i64::from(uses),
                    labels_text,
                    i64::from(ssh_ca)
                ],
            )?;
            let event = actor
                .event("enroll_token.create")
                .detail(serde_json::json!({
                    "token_hash_prefix": &hash[..hash.len().min(12)],
                    "expires_at": expires_at.to_rfc3339(),
                    "uses": uses,
                    "labels": labels,
                    "ssh_ca": ssh_ca,
                }));
            tx.audit(&event, now)?;
            Ok(End::Commit(()))
        })
        .await
    }

    async fn enroll_host(
        &self,
        token_hash: &str,
        host: &HostRecord,
        credential_hash: &str,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let token_actor = format!("enroll_token:{}", &token_hash[..token_hash.len().min(12)]);
        self.write(|tx| {
            let token = tx.row(
                "SELECT expires_at, uses_left, labels, ssh_ca FROM enroll_tokens WHERE hash = ?",
                params![token_hash],
                |row| {
                    Ok((
                        row.int("expires_at")?,
                        row.int("uses_left")?,
                        row.text("labels")?,
                        row.int("ssh_ca")? != 0,
                    ))
                },
            )?;
            let refusal = match &token {
                None => Some(TokenRefusal::Unknown),
                Some((expires_at, ..)) if *expires_at <= millis(host.enrolled_at) => {
                    Some(TokenRefusal::Expired)
                }
                Some((_, uses_left, ..)) if *uses_left <= 0 => Some(TokenRefusal::UsedUp),
                Some(_) => None,
            };
            if let Some(refusal) = refusal {
                let event =
                    AuditEvent::new(&token_actor, "enroll.refused").detail(serde_json::json!({
                        "reason": format!("{refusal:?}").to_lowercase(),
                        "hostname": host.facts.hostname,
                    }));
                tx.audit(&event, host.enrolled_at)?;
                return Ok(End::Commit(Err(refusal)));
            }
            let (labels_text, ssh_ca) = token
                .map(|(_, _, labels, ssh_ca)| (labels, ssh_ca))
                .unwrap_or_default();
            let labels = labels_from_text(&labels_text)?;
            tx.exec(
                "UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE hash = ?",
                params![token_hash],
            )?;
            let facts = &host.facts;
            tx.exec(
                "INSERT INTO hosts (id, hostname, os, kernel, arch, cpus, memory_bytes, machine_id, \
                 credential_hash, enrolled_at, labels, ssh_ca) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    host.id,
                    facts.hostname,
                    facts.os,
                    facts.kernel,
                    facts.arch,
                    i64::from(facts.cpus),
                    i64::try_from(facts.memory_bytes).unwrap_or(i64::MAX),
                    facts.machine_id,
                    credential_hash,
                    millis(host.enrolled_at),
                    labels_to_text(&labels)?,
                    i64::from(ssh_ca)
                ],
            )?;
            let event = AuditEvent::new(&token_actor, "host.enroll")
                .host(&host.id)
                .detail(serde_json::json!({
                    "hostname": facts.hostname,
                    "machine_id": facts.machine_id,
                    "labels": labels,
                    "ssh_ca": ssh_ca,
                }));
            tx.audit(&event, host.enrolled_at)?;
            Ok(End::Commit(Ok(())))
        })
        .await
    }

    async fn host_by_credential(&self, hash: &str) -> Result<Option<HostRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE credential_hash = ? AND removed_at IS NULL"
        );
        self.readers
            .read(|conn| row(conn, sql, params![hash], |row| host_from_row(row)))
    }

    async fn touch_host(&self, host_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE hosts SET last_seen = ? WHERE id = ?",
                params![millis(now), host_id],
            )?;
            Ok(End::Commit(()))
        })
        .await
    }

    async fn record_agent(
        &self,
        host_id: &str,
        agent: &latch_common::protocol::AgentInfo,
    ) -> Result<(), StoreError> {
        let (version, protocol) = (agent.version.clone(), i64::from(agent.protocol));
        let host_id = host_id.to_owned();
        self.write(move |tx| {
            tx.exec(
                "UPDATE hosts SET agent_version = ?, agent_protocol = ? WHERE id = ?",
                params![version, protocol, host_id],
            )?;
            Ok(End::Commit(()))
        })
        .await
    }

    async fn list_hosts(
        &self,
        filter: &HostFilter,
        page: Page,
    ) -> Result<Vec<HostRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE removed_at IS NULL \
             AND (?1 IS NULL OR id IN (SELECT value FROM json_each(?1))) \
             ORDER BY hostname, id LIMIT ?2 OFFSET ?3"
        );
        sqlx::query(sql)
            .bind(ids_json(filter.ids.as_deref())?)
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
        actor: &Actor,
    ) -> Result<Option<u64>, StoreError> {
        self.write(|tx| {
            let removed = tx.exec(
                "UPDATE hosts SET removed_at = ? WHERE id = ? AND removed_at IS NULL",
                params![millis(now), host_id],
            )?;
            if removed == 0 {
                return Ok(End::Rollback(None));
            }
            let pending = tx.rows(
                "SELECT id FROM jobs WHERE host_id = ? AND status = 'pending'",
                params![host_id],
                |row| Ok(row.text("id")?),
            )?;
            let error = host_removed();
            for job_id in &pending {
                tx.fail_job(job_id, &error, now)?;
            }
            let event = actor
                .event("host.remove")
                .host(host_id)
                .detail(serde_json::json!({"cancelled_jobs": pending}));
            tx.audit(&event, now)?;
            Ok(End::Commit(Some(pending.len() as u64)))
        })
        .await
    }

    async fn rotate_host_credential(
        &self,
        host_id: &str,
        credential_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let changed = tx.exec(
                "UPDATE hosts SET credential_hash = ? WHERE id = ? AND removed_at IS NULL",
                params![credential_hash, host_id],
            )?;
            if changed == 1 {
                let event =
                    AuditEvent::new(host_actor(host_id), "host.credential_rotated").host(host_id);
                tx.audit(&event, now)?;
            }
            Ok(End::Commit(changed == 1))
        })
        .await
    }

    async fn raise_next_seq(
        &self,
        host_id: &str,
        applied: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Read first: the write lock only when the sequence really is behind.
        let behind = self.readers.read(|conn| {
            exists(
                conn,
                "SELECT 1 FROM hosts WHERE id = ? AND next_seq <= ?",
                params![host_id, applied],
            )
        })?;
        if !behind {
            return Ok(false);
        }
        self.write(|tx| {
            let changed = tx.exec(
                "UPDATE hosts SET next_seq = ? + 1 WHERE id = ? AND next_seq <= ? AND removed_at IS NULL",
                params![applied, host_id, applied],
            )?;
            if changed == 1 {
                let event = AuditEvent::new(host_actor(host_id), "host.sequence_raised")
                    .host(host_id)
                    .detail(serde_json::json!({"applied": applied, "next_seq": applied + 1}));
                tx.audit(&event, now)?;
            }
            Ok(End::Commit(changed == 1))
        })
        .await
    }

    async fn host_is_active(&self, host_id: &str) -> Result<bool, StoreError> {
        self.readers.read(|conn| {
            exists(
                conn,
                "SELECT 1 FROM hosts WHERE id = ? AND removed_at IS NULL",
                params![host_id],
            )
        })
    }

    async fn find_hosts(&self, id_or_hostname: &str) -> Result<Vec<HostRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE removed_at IS NULL AND (id = ?1 OR (hostname = ?1 AND NOT EXISTS \
             (SELECT 1 FROM hosts WHERE id = ?1 AND removed_at IS NULL))) ORDER BY id"
        );
        self.readers
            .read(|conn| rows(conn, sql, params![id_or_hostname], |row| host_from_row(row)))
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
        self.write(|tx| {
            // Only an active host gets a sequence number: a host removed a moment ago gets
            // nothing, not even an internal revocation or key-rotation job.
            let Some(seq) = tx.row(
                "UPDATE hosts SET next_seq = next_seq + 1 WHERE id = ? AND removed_at IS NULL \
                 RETURNING next_seq - 1 AS seq",
                params![host_id],
                |row| Ok(row.int("seq")?),
            )?
            else {
                let exists = tx.exists("SELECT 1 FROM hosts WHERE id = ?", params![host_id])?;
                return Ok(End::Rollback(Err(if exists {
                    JobRefusal::HostRemoved
                } else {
                    JobRefusal::NoSuchHost
                })));
            };
            if let Some(grant) = revokes {
                let underway = tx.exists(
                    "SELECT 1 FROM jobs WHERE id = ? AND (revocation_job_id IS NOT NULL \
                     OR revoked_at IS NOT NULL)",
                    params![grant],
                )?;
                if underway {
                    return Ok(End::Rollback(Err(JobRefusal::RevocationUnderway)));
                }
            }
            let (payload, signature) = sign(seq).map_err(|detail| StoreError::Corrupt {
                what: "job signature",
                detail,
            })?;
            tx.exec(
                "INSERT INTO jobs (id, host_id, seq, kind, spec, status, created_at, subject_user, \
                 subject_group, expires_at, revokes_job_id, payload, signature) \
                 VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                params![
                    id,
                    host_id,
                    seq,
                    spec.kind().as_str(),
                    spec_json,
                    millis(now),
                    spec.user(),
                    spec.group(),
                    spec.expires_at().map(millis),
                    revokes,
                    payload,
                    signature
                ],
            )?;
            tx.add_event(id, now, "queued", Some(&format!("seq {seq}")))?;
            if let Some(grant) = revokes {
                tx.exec(
                    "UPDATE jobs SET revocation_job_id = ? WHERE id = ? AND revocation_job_id IS NULL",
                    params![id, grant],
                )?;
                tx.add_event(grant, now, "revocation_queued", Some(id))?;
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
            let event = actor.event("job.create")
                .host(host_id)
                .job(id)
                .detail(detail);
            tx.audit(&event, now)?;
            Ok(End::Commit(Ok(JobRecord {
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
            })))
        })
        .await
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
                 AND (?3 IS NULL OR g.subject_user = ?3) \
                 AND (?8 IS NULL OR g.host_id IN (SELECT value FROM json_each(?8))))) \
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
            .bind(ids_json(filter.host_ids.as_deref())?)
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
        self.write(|tx| Ok(End::Commit(tx.mark_revoked(host_id, job_id, at, by, None)?)))
            .await
    }

    async fn lease_next_job(
        &self,
        host_id: &str,
        lease: &str,
        now: DateTime<Utc>,
        lease_ttl: Duration,
        max_attempts: u32,
    ) -> Result<Lease, StoreError> {
        // Read first, without the writer: an idle host (most polls) or a job still leased out
        // needs no write. A job queued after this read wakes the poll, which looks again.
        let first = self.readers.read(|conn| {
            row(
                conn,
                "SELECT lease_expires_at FROM jobs WHERE host_id = ? AND status = 'pending' \
                 ORDER BY seq LIMIT 1",
                params![host_id],
                |row| Ok(row.opt_int("lease_expires_at")?),
            )
        })?;
        let Some(lease_expires_at) = first else {
            return Ok(Lease::Idle);
        };
        if let Some(until) = lease_expires_at
            .map(from_millis)
            .filter(|until| *until > now)
        {
            return Ok(Lease::InFlight { until });
        }
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE host_id = ? AND status = 'pending' \
             ORDER BY seq LIMIT 1"
        );
        self.write(|tx| {
            loop {
                let Some(job) = tx.row(sql, params![host_id], |row| job_from_row(row))? else {
                    return Ok(End::Commit(Lease::Idle));
                };
                if let Some(until) = job.lease_expires_at {
                    if until > now {
                        return Ok(End::Commit(Lease::InFlight { until }));
                    }
                    tx.add_event(
                        &job.id,
                        now,
                        "lease_expired",
                        Some(&format!("attempt {}", job.attempts)),
                    )?;
                    if job.attempts >= max_attempts {
                        let error = unresponsive(job.attempts);
                        tx.fail_job(&job.id, &error, now)?;
                        let event = AuditEvent::new("control_plane", "job.fail")
                            .host(host_id)
                            .job(&job.id)
                            .detail(serde_json::json!({"code": error.code.as_str()}));
                        tx.audit(&event, now)?;
                        continue;
                    }
                }
                let attempts = job.attempts + 1;
                let expires = now + lease_ttl;
                tx.exec(
                    "UPDATE jobs SET attempts = ?, lease = ?, lease_expires_at = ? WHERE id = ?",
                    params![i64::from(attempts), lease, millis(expires), job.id],
                )?;
                tx.add_event(
                    &job.id,
                    now,
                    "delivered",
                    Some(&format!("attempt {attempts}")),
                )?;
                let event = AuditEvent::new(host_actor(host_id), "job.deliver")
                    .host(host_id)
                    .job(&job.id)
                    .detail(serde_json::json!({"attempt": attempts}));
                tx.audit(&event, now)?;
                return Ok(End::Commit(Lease::Delivered(Box::new(JobRecord {
                    attempts,
                    lease: Some(lease.to_owned()),
                    lease_expires_at: Some(from_millis(millis(expires))),
                    ..job
                }))));
            }
        })
        .await
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
        self.write(|tx| {
            let Some(job) = tx.row(sql, params![job_id, host_id], |row| job_from_row(row))? else {
                return Ok(End::Rollback(Finish::NotFound));
            };
            if job.status != JobStatus::Pending {
                let same = job.status == outcome.status()
                    && match outcome {
                        JobOutcome::Confirmed { .. } => true,
                        JobOutcome::Failed { error } => job.error.as_ref() == Some(error),
                    };
                return Ok(End::Rollback(if same {
                    Finish::Duplicate
                } else {
                    Finish::Conflict
                }));
            }
            if !job
                .lease
                .as_deref()
                .is_some_and(|current| crate::secret::same_secret(current, lease))
            {
                return Ok(End::Rollback(Finish::Conflict));
            }
            match outcome {
                JobOutcome::Confirmed { notes } => {
                    let notes = (!notes.is_empty())
                        .then(|| serde_json::to_string(notes))
                        .transpose()
                        .map_err(|e| corrupt("job notes", e))?;
                    tx.exec(
                        "UPDATE jobs SET status = 'confirmed', finished_at = ?, lease = NULL, \
                         lease_expires_at = NULL, outcome_notes = ? WHERE id = ?",
                        params![millis(now), notes, job_id],
                    )?;
                    tx.add_event(job_id, now, "confirmed", None)?;
                    if let Some(grant) = &job.revokes {
                        tx.mark_revoked(host_id, grant, now, RevokedBy::ControlPlane, None)?;
                    }
                    tx.revoke_earlier_grants(&job, now)?;
                }
                JobOutcome::Failed { error } => tx.fail_job(job_id, error, now)?,
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
            tx.audit(&event, now)?;
            Ok(End::Commit(Finish::Recorded))
        })
        .await
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
        self.write(|tx| {
            let jobs = tx.rows(sql, params![millis(now), i64::from(max_attempts)], |row| {
                job_from_row(row)
            })?;
            let mut hosts = Vec::new();
            for job in jobs {
                tx.add_event(
                    &job.id,
                    now,
                    "lease_expired",
                    Some(&format!("attempt {}", job.attempts)),
                )?;
                let error = unresponsive(job.attempts);
                tx.fail_job(&job.id, &error, now)?;
                let event = AuditEvent::new("control_plane", "job.fail")
                    .host(&job.host_id)
                    .job(&job.id)
                    .detail(serde_json::json!({"code": error.code.as_str()}));
                tx.audit(&event, now)?;
                hosts.push(job.host_id);
            }
            Ok(End::Commit(hosts))
        })
        .await
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
             AND (?2 IS NULL OR status = ?2) \
             AND (?5 IS NULL OR host_id IN (SELECT value FROM json_each(?5))) \
             AND (?6 IS NULL OR kind = ?6) \
             ORDER BY created_at DESC, host_id, seq DESC \
             LIMIT ?3 OFFSET ?4"
        );
        sqlx::query(sql)
            .bind(filter.host_id.as_deref())
            .bind(filter.status.map(JobStatus::as_str))
            .bind(i64::try_from(page.count).unwrap_or(i64::MAX))
            .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
            .bind(ids_json(filter.host_ids.as_deref())?)
            .bind(filter.kind.map(JobKind::as_str))
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
        self.write(|tx| {
            tx.audit(event, now)?;
            Ok(End::Commit(()))
        })
        .await
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
        self.write(|tx| {
            let entries = tx.rows(
                "SELECT id, hash FROM audit_log WHERE id <= ? ORDER BY id",
                params![through],
                |row| Ok((row.int("id")?, row.text("hash")?)),
            )?;
            for (id, hash) in entries {
                tx.exec(
                    "INSERT OR IGNORE INTO audit_macs (key_id, entry_id, mac) VALUES (?, ?, ?)",
                    params![tx.key.key_id(), id, tx.key.entry_mac(&hash)],
                )?;
            }
            tx.pin(PinnedKey::Audit, tx.key.public_key(), now)?;
            tx.audit(event, now)?;
            Ok(End::Commit(()))
        })
        .await
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
        self.write(|tx| {
            tx.pin(key, public, now)?;
            tx.audit(event, now)?;
            Ok(End::Commit(()))
        })
        .await
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

/// One write transaction for code shared with the PostgreSQL store ([`super::people`], written
/// with sqlx): it holds the writer's mutex, so no other write runs meanwhile, and runs on a
/// pooled sqlx connection with `BEGIN IMMEDIATE`. Its audit entries are appended when it
/// commits, after the chain's head read from the database; the writer's cached head is dropped,
/// and `PRAGMA data_version` would show the writer this connection's commit anyway.
pub(super) struct SqliteTx<'s> {
    writer: tokio::sync::MutexGuard<'s, Writer>,
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    key: &'s AuditKey,
    audit: Vec<(AuditEvent, DateTime<Utc>)>,
}

impl<'s> SqliteTx<'s> {
    /// Takes the writer's mutex and begins an immediate transaction.
    pub(super) async fn begin(store: &'s SqliteStore) -> Result<Self, StoreError> {
        let writer = store.writer.lock().await;
        Ok(Self {
            writer,
            tx: store.pool.begin_with("BEGIN IMMEDIATE").await?,
            key: &store.key,
            audit: Vec::new(),
        })
    }

    /// The transaction's connection.
    pub(super) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }

    /// Queues `event` for the audit chain; it is appended when the transaction commits.
    pub(super) fn audit(&mut self, event: AuditEvent, at: DateTime<Utc>) {
        self.audit.push((event, at));
    }

    /// Appends the queued audit entries and commits.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        self.writer.head = None;
        for (event, at) in std::mem::take(&mut self.audit) {
            append_audit_sqlx(&mut self.tx, self.key, &event, at).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// Appends `event` to the audit chain on a sqlx connection inside the caller's transaction,
/// reading the head from the database (the writer's mutex is held by the caller).
async fn append_audit_sqlx(
    conn: &mut sqlx::SqliteConnection,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify_chain;

    /// The writer's cached audit head must not fork the chain when another process (here a
    /// second store on the same file) appends in between, nor after a transaction that rolled
    /// back.
    #[tokio::test]
    async fn a_second_writer_on_the_same_file_never_forks_the_audit_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.db");
        let key = Arc::new(AuditKey::generate().unwrap());
        let one = SqliteStore::open(&path, key.clone()).await.unwrap();
        let two = SqliteStore::open(&path, key.clone()).await.unwrap();
        let now = Utc::now();
        for i in 0..20 {
            let store = if i % 3 == 0 { &two } else { &one };
            let event = AuditEvent::new("admin", "test.append").detail(serde_json::json!({"i": i}));
            store.append_audit(&event, now).await.unwrap();
            if i % 7 != 6 {
                continue;
            }
            // A refused job rolls its transaction back (the host does not exist).
            let refused = store
                .insert_job(
                    &NewJob {
                        id: "job",
                        host_id: "no-such-host",
                        spec: &JobSpec::DeleteAccount {
                            user: "alice".to_owned(),
                        },
                        revokes: None,
                        now,
                        actor: &Actor::new("admin"),
                        window: GrantWindow::NotAGrant,
                    },
                    &|_| Ok((String::new(), String::new())),
                )
                .await
                .unwrap();
            assert!(matches!(refused, Err(JobRefusal::NoSuchHost)));
        }
        let chain = one.audit_chain().await.unwrap();
        assert_eq!(chain.len(), 20);
        assert_eq!(verify_chain(&chain, &key), Ok(20));
        assert_eq!(two.audit_chain().await.unwrap(), chain);
    }

    /// Commits leave checkpoints to the checkpoint thread, which still moves the WAL into the
    /// database file.
    #[tokio::test]
    async fn the_checkpoint_thread_moves_committed_writes_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.db");
        let store = SqliteStore::open(&path, Arc::new(AuditKey::generate().unwrap()))
            .await
            .unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        tokio::time::sleep(CHECKPOINT_EVERY * 2).await;
        let before = size();
        let detail = serde_json::json!({"padding": "x".repeat(2000)});
        for _ in 0..500 {
            let event = AuditEvent::new("admin", "test.append").detail(detail.clone());
            store.append_audit(&event, Utc::now()).await.unwrap();
        }
        let deadline = std::time::Instant::now() + CHECKPOINT_EVERY * 5;
        while size() < before + 500 * 2000 && std::time::Instant::now() < deadline {
            tokio::time::sleep(CHECKPOINT_EVERY / 10).await;
        }
        assert!(
            size() >= before + 500 * 2000,
            "the database file stayed at {} bytes (was {before})",
            size()
        );
    }
}
