//! Persistence behind one trait, so the SQLite default and a PostgreSQL store can share every
//! caller and every test. Each method is one transaction; the store never decides policy (how
//! long a lease lasts, how many attempts) — callers pass it in.

pub mod access;
#[macro_use]
mod rows;
pub mod copy;
pub mod metrics;
mod migrations;
pub mod people;
mod postgres;
mod sqlite;
pub mod vault;
pub mod webhooks;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use latch_common::api::{GrantState, GrantWindow, HostFacts, JobEvent, RevokedBy};
use latch_common::job::{JobError, JobOutcome, JobSpec, JobStatus};
use latch_common::labels::Labels;
use thiserror::Error;

use crate::audit::{Actor, AuditEntry, AuditEvent, AuditKey};

/// A failure of the database itself (not a refusal).
#[derive(Debug, Error)]
pub enum StoreError {
    /// Opening or migrating the database failed.
    #[error("cannot open the database at {location}: {source}; check the path and its permissions")]
    Open {
        /// Path or URL.
        location: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// A PostgreSQL URL that cannot be used.
    #[error(
        "the database URL is not usable ({detail}); write it as postgres://USER@HOST:PORT/DATABASE, and keep the password out of it (PGPASSWORD or ~/.pgpass)"
    )]
    BadUrl {
        /// What is wrong (never the password).
        detail: String,
    },
    /// PostgreSQL could not be reached, or refused the connection.
    #[error("cannot connect to PostgreSQL at {location}: {source}; {hint}")]
    Connect {
        /// `user@host:port/database` (never the password).
        location: String,
        /// Cause.
        source: sqlx::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The connection's search_path names no schema that exists.
    #[error(
        "PostgreSQL at {location} has no schema to keep Latch's tables in: the search_path ({search_path}) names none that exists; create it (CREATE SCHEMA name) or fix `options=-c search_path=name` in the URL"
    )]
    NoSchema {
        /// `user@host:port/database`.
        location: String,
        /// The connection's search_path.
        search_path: String,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// The SQLite store's write connection could not be opened.
    #[error(
        "cannot open the database at {location} for writing: {source}; check the path and its permissions"
    )]
    OpenWriter {
        /// Path.
        location: String,
        /// Cause.
        source: rusqlite::Error,
    },
    /// The temporary directory of a throwaway SQLite database could not be made.
    #[error(
        "cannot make a temporary directory for a throwaway database: {0}; check TMPDIR and its free space"
    )]
    Scratch(String),
    /// The SQLite store's checkpoint thread could not be started.
    #[error(
        "cannot start the SQLite checkpoint thread: {0}; the process may be out of threads or memory"
    )]
    Checkpointer(std::io::Error),
    /// A statement of the SQLite store's write path failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A newer release migrated the database: its schema is one this binary does not know.
    #[error(
        "the database's schema is at migration {database}, newer than this latch-control knows (migration {binary}): a newer release has run on it, and migrations only go forward; upgrade latch-control to that release, or restore the backup taken before the upgrade"
    )]
    SchemaNewer {
        /// The newest migration applied to the database.
        database: i64,
        /// The newest migration this binary carries.
        binary: i64,
    },
    /// The audit key could not be made.
    #[error(transparent)]
    AuditKey(#[from] crate::audit::key::AuditKeyError),
    /// A stored row could not be decoded (the database was edited by hand or is corrupt).
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    /// Host id.
    pub id: String,
    /// Facts reported at enrollment.
    pub facts: HostFacts,
    /// When it enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// Last poll.
    pub last_seen: Option<DateTime<Utc>>,
    /// Whether it was enrolled to trust the SSH user CA (its token's `--ssh-ca`).
    pub ssh_ca: bool,
    /// The agent its last poll came from (`None` before its first poll).
    pub agent: Option<latch_common::protocol::AgentInfo>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// The host it is for.
    pub host_id: String,
    /// Per-host sequence number.
    pub seq: i64,
    /// What to do.
    pub spec: JobSpec,
    /// Current status.
    pub status: JobStatus,
    /// Why it failed.
    pub error: Option<JobError>,
    /// Notes of a confirmed outcome.
    pub notes: Vec<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it reached its final status.
    pub finished_at: Option<DateTime<Utc>>,
    /// Deliveries so far.
    pub attempts: u32,
    /// Token of the current delivery.
    pub lease: Option<String>,
    /// When the current delivery's lease runs out.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Grants: when the access was removed.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Grants: who removed it.
    pub revoked_by: Option<RevokedBy>,
    /// Grants revoked by an explicit job: that job.
    pub revoked_by_job: Option<String>,
    /// Grants: how their revocation is going.
    pub revocation: GrantRevocation,
    /// Revocation jobs: the grant they end.
    pub revokes: Option<String>,
    /// The signed payload, as delivered (empty for a row that was never signed).
    pub payload: String,
    /// Its signature, base64 (empty if unsigned).
    pub signature: String,
}

/// The revocation of a grant past its end, as stored on the grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantRevocation {
    /// The revocation job now queued or delivered, if any.
    pub job_id: Option<String>,
    /// Revocation jobs that failed.
    pub attempts: u32,
    /// When the last one failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// Its error, `code: message`.
    pub last_error: Option<String>,
}

/// How long to wait before queueing a grant's revocation again after a revocation job failed:
/// `first`, doubling with each failure, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl RetryBackoff {
    /// The wait after `failures` failed revocation jobs (none for 0).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::zero();
        }
        let doublings = (failures - 1).min(30);
        let first = self.first.num_milliseconds().max(0);
        let wait = first.saturating_mul(1_i64 << doublings);
        Duration::milliseconds(wait.min(self.max.num_milliseconds().max(0)))
    }
}

/// What the store knows about a job beyond its own row: its host's name, and for a grant where
/// it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContext {
    /// The host's name.
    pub host_name: String,
    /// When the host was removed, if it was.
    pub host_removed_at: Option<DateTime<Utc>>,
    /// For a confirmed grant: its state.
    pub grant_state: Option<GrantState>,
    /// For a confirmed grant: the later confirmed grant of the same access, if any.
    pub superseded_by: Option<String>,
}

/// A grant with its context.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantRecord {
    /// The job that granted the access.
    pub job: JobRecord,
    /// Its host and state.
    pub context: JobContext,
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    /// Only this host's: a host id or host name, removed hosts included.
    pub host: Option<String>,
    /// Only this account's.
    pub user: Option<String>,
    /// Only in this state.
    pub state: Option<GrantState>,
    /// Only grants created or revoked at or after this time, plus every grant not over yet
    /// (neither revoked nor superseded).
    pub since: Option<DateTime<Utc>>,
    /// Only grants of these hosts (by id); `None` for every host.
    pub host_ids: Option<Vec<String>>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobRefusal {
    /// No host has this id.
    NoSuchHost,
    /// The host was removed; nothing is queued for it any more.
    HostRemoved,
    /// A revocation job for a grant that already has one queued or delivered, or is revoked
    /// (two sweeps racing — on PostgreSQL, two control-plane processes): one is enough.
    RevocationUnderway,
}

/// A job to queue.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    /// Job id.
    pub id: &'a str,
    /// The host it is for.
    pub host_id: &'a str,
    /// What to do.
    pub spec: &'a JobSpec,
    /// For a revocation job: the grant it ends.
    pub revokes: Option<&'a str>,
    /// Creation time.
    pub now: DateTime<Utc>,
    /// Who queued it (audit actor).
    pub actor: &'a Actor,
    /// For a grant: how its end was decided (audited).
    pub window: GrantWindow,
}

/// Signs a job once its sequence number is known: `seq` in, `(payload, signature)` out.
pub type SignJob<'a> = &'a (dyn Fn(i64) -> Result<(String, String), String> + Send + Sync);

/// Why an enrollment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No such token.
    Unknown,
    /// Past its expiry.
    Expired,
    /// No uses left.
    UsedUp,
}

/// Result of asking for the next job of a host.
#[derive(Debug, Clone, PartialEq)]
pub enum Lease {
    /// This job was leased to the caller.
    Delivered(Box<JobRecord>),
    /// The head job is leased to an earlier delivery until `until`; jobs run in order, so nothing
    /// else is delivered before then.
    InFlight {
        /// When the lease runs out.
        until: DateTime<Utc>,
    },
    /// Nothing is pending.
    Idle,
}

/// Result of recording an outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// The outcome was recorded.
    Recorded,
    /// The job already had this same outcome (a resent report); nothing changed.
    Duplicate,
    /// The job is final with a different outcome, or the lease is not the current one.
    Conflict,
    /// No such job for this host.
    NotFound,
}

/// Result of recording that a grant was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// Recorded now.
    Recorded,
    /// It was already recorded as revoked; nothing changed.
    AlreadyRevoked,
    /// The job is not a confirmed grant of this host.
    NotAGrant,
}

/// A key of the data directory whose public half the database records when the key is made,
/// so a missing or replaced key file is refused instead of silently made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedKey {
    /// The job-signing key (its public key, base64).
    Signing,
    /// The audit key (its checkpoint-signing public key, base64).
    Audit,
    /// The private CA (its fingerprint, `sha256:…`).
    Ca,
    /// The SSH user CA (its public key, an OpenSSH line).
    UserCa,
}

impl PinnedKey {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            PinnedKey::Signing => "signing",
            PinnedKey::Audit => "audit",
            PinnedKey::Ca => "ca",
            PinnedKey::UserCa => "user_ca",
        }
    }
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this host.
    pub host_id: Option<String>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this host's.
    pub host_id: Option<String>,
    /// Only with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of these hosts (by id); `None` for every host.
    pub host_ids: Option<Vec<String>>,
    /// Only jobs of this kind.
    pub kind: Option<latch_common::job::JobKind>,
}

/// Which hosts to list.
#[derive(Debug, Clone, Default)]
pub struct HostFilter {
    /// Only these hosts (by id); `None` for every host.
    pub ids: Option<Vec<String>>,
}

/// A page of a list: `count` items starting at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Items to skip.
    pub offset: u64,
    /// Items to return.
    pub count: u64,
}

/// The control plane's persistence.
#[async_trait]
pub trait Store:
    people::PeopleStore
    + vault::VaultStore
    + access::AccessStore
    + webhooks::WebhookStore
    + metrics::MetricsStore
    + Send
    + Sync
{
    /// How several control-plane processes on this database find each other (wake-ups, one
    /// leader), when the database can be shared (PostgreSQL); `None` for a database one process
    /// owns (SQLite).
    fn coordination(&self) -> Option<crate::replicas::Coordination> {
        None
    }
    /// Whether any admin token exists.
    async fn has_admin_token(&self) -> Result<bool, StoreError>;
    /// Stores the hash of a new admin token.
    async fn insert_admin_token(&self, hash: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Whether `hash` is the hash of a valid admin token.
    async fn admin_token_exists(&self, hash: &str) -> Result<bool, StoreError>;

    /// Stores a new enrollment token; the hosts it enrolls get `labels`, and trust the SSH user
    /// CA when `ssh_ca`.
    #[allow(clippy::too_many_arguments)]
    async fn insert_enroll_token(
        &self,
        hash: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        uses: u32,
        labels: &Labels,
        ssh_ca: bool,
        actor: &Actor,
    ) -> Result<(), StoreError>;
    /// Spends one use of the token and creates the host with the token's labels and SSH CA
    /// choice (whatever `host.ssh_ca` says), in one transaction.
    async fn enroll_host(
        &self,
        token_hash: &str,
        host: &HostRecord,
        credential_hash: &str,
    ) -> Result<Result<(), TokenRefusal>, StoreError>;

    /// The host whose credential hashes to `hash`.
    async fn host_by_credential(&self, hash: &str) -> Result<Option<HostRecord>, StoreError>;
    /// Records that the host polled at `now`.
    async fn touch_host(&self, host_id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Records which agent the host runs.
    async fn record_agent(
        &self,
        host_id: &str,
        agent: &latch_common::protocol::AgentInfo,
    ) -> Result<(), StoreError>;
    /// Raises the host's next job sequence above `applied`, the highest sequence its agent
    /// applied (after the database was restored from a backup older than what the agent saw,
    /// every new job would otherwise be refused as replayed or stale). Audited. Returns whether
    /// it changed; never lowers it.
    async fn raise_next_seq(
        &self,
        host_id: &str,
        applied: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Active hosts, ordered by host name then id.
    async fn list_hosts(
        &self,
        filter: &HostFilter,
        page: Page,
    ) -> Result<Vec<HostRecord>, StoreError>;
    /// Removes a host: its credential stops working and its pending jobs fail with
    /// `host_removed`, in one transaction. Returns the number of jobs cancelled, or `None` if
    /// there is no such (active) host.
    async fn remove_host(
        &self,
        host_id: &str,
        now: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<u64>, StoreError>;
    /// Replaces the credential hash of an active host (audited). `false` if there is no such host.
    async fn rotate_host_credential(
        &self,
        host_id: &str,
        credential_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Whether the host exists and was not removed.
    async fn host_is_active(&self, host_id: &str) -> Result<bool, StoreError>;
    /// The host with this id, or every host with this host name.
    async fn find_hosts(&self, id_or_hostname: &str) -> Result<Vec<HostRecord>, StoreError>;

    /// Queues a job with the host's next sequence number, signed by `sign` in the same
    /// transaction. Refused, in that transaction, for a removed or unknown host. `revokes`
    /// names the grant a revocation job ends; the grant is marked so it is not revoked twice,
    /// and a revocation job for a grant already marked (or revoked) is refused.
    async fn insert_job(
        &self,
        job: &NewJob<'_>,
        sign: SignJob<'_>,
    ) -> Result<Result<JobRecord, JobRefusal>, StoreError>;
    /// Confirmed grants of active hosts whose expiry has passed, that are not revoked, have no
    /// revocation job in flight, are not superseded by a later grant of the same access, and —
    /// if revocation jobs for them failed — whose `retry` wait since the last failure is over.
    async fn due_grants(
        &self,
        now: DateTime<Utc>,
        retry: RetryBackoff,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// Host names and grant states of the jobs `ids` (missing ids are left out).
    async fn job_context(
        &self,
        ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, JobContext>, StoreError>;
    /// Confirmed grants (create-account, add-group), newest first.
    async fn list_grants(
        &self,
        filter: &GrantFilter,
        now: DateTime<Utc>,
        page: Page,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    /// Records that the host revoked grant `job_id` at `at` (first report wins). A revocation
    /// job that fails, by report or by the lease sweep, frees its grant for another one.
    async fn record_revocation(
        &self,
        host_id: &str,
        job_id: &str,
        at: DateTime<Utc>,
        by: RevokedBy,
    ) -> Result<Revoke, StoreError>;
    /// Leases the host's oldest pending job if it is not leased already; fails jobs whose lease
    /// ran out after `max_attempts` deliveries with `agent_unresponsive`.
    async fn lease_next_job(
        &self,
        host_id: &str,
        lease: &str,
        now: DateTime<Utc>,
        lease_ttl: Duration,
        max_attempts: u32,
    ) -> Result<Lease, StoreError>;
    /// Records the outcome of the delivery holding `lease`. A confirmed revocation job marks
    /// its grant revoked (`control_plane`); a confirmed delete-account marks every earlier
    /// unrevoked grant of that account on the host revoked (`job`), a confirmed remove-group
    /// the earlier add-group grants of that account and group.
    async fn finish_job(
        &self,
        host_id: &str,
        job_id: &str,
        lease: &str,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> Result<Finish, StoreError>;
    /// Fails, with `agent_unresponsive`, every job whose last allowed delivery's lease ran out.
    /// Returns the hosts concerned.
    async fn fail_abandoned_jobs(
        &self,
        now: DateTime<Utc>,
        max_attempts: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Jobs, newest first.
    async fn list_jobs(&self, filter: &JobFilter, page: Page)
    -> Result<Vec<JobRecord>, StoreError>;
    /// One job.
    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// A job's history, oldest first.
    async fn job_history(&self, id: &str) -> Result<Vec<JobEvent>, StoreError>;

    /// The key the store authenticates audit entries with (each entry's MAC is written in the
    /// same transaction as the entry).
    fn audit_key(&self) -> std::sync::Arc<AuditKey>;
    /// Appends an audit entry on its own (for events that change nothing else, such as a
    /// refused credential).
    async fn append_audit(&self, event: &AuditEvent, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Audit entries, oldest first.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// The whole audit chain, in order, with each entry's MAC under the current audit key (for
    /// verification).
    async fn audit_chain(&self) -> Result<Vec<AuditEntry>, StoreError>;
    /// The id and hash of the chain's last entry.
    async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError>;
    /// The hash of entry `id`.
    async fn audit_hash(&self, id: i64) -> Result<Option<String>, StoreError>;
    /// Keys entries `1..=through` that have no MAC under the current audit key, records that
    /// key as the audit key ([`PinnedKey::Audit`]) and appends `event`, in one transaction.
    /// The caller checks the hash chain up to `through` first.
    async fn key_audit_entries(
        &self,
        through: i64,
        event: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// What the database records for `key`.
    async fn key_pin(&self, key: PinnedKey) -> Result<Option<String>, StoreError>;
    /// Records `public` for `key` and appends `event`, in one transaction.
    async fn set_key_pin(
        &self,
        key: PinnedKey,
        public: &str,
        event: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}
