//! `latch-control`: the Latch control plane as a library.
//!
//! The server binary (`latch-control`) and the admin CLI (`latchctl`) are thin layers over this
//! crate, so a team can embed enrollment and job queueing in its own portal:
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use latch_control::{Control, ControlConfig, people, signing::JobSigner};
//! use latch_control::store::{SqliteStore, Store};
//! use latch_common::api::CreateEnrollTokenRequest;
//!
//! let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await?);
//! // The first start makes the pam_admin service user `admin` and hands over its API key.
//! let mut api_key = String::new();
//! people::bootstrap(store.as_ref(), |key| {
//!     api_key = key.to_owned();
//!     Ok(())
//! })
//! .await?;
//! let control = Control::new(store, ControlConfig::default(), JobSigner::generate()?);
//! // Every operation is done by someone: exchange the key for a token, authenticate it.
//! let token = control
//!     .issue_service_token(&api_key, chrono::Duration::hours(1), None)
//!     .await?;
//! let admin = control.authenticate(&token.token).await?;
//! let token = control
//!     .create_enroll_token(&admin, &CreateEnrollTokenRequest { ttl_seconds: Some(600), uses: Some(1), ..Default::default() })
//!     .await?;
//! assert!(token.token.starts_with("latch_enroll_"));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! Layout:
//! - [`store`]: persistence behind the [`store::Store`] trait: SQLite (the default) and PostgreSQL;
//! - [`enroll`]: enrollment tokens and host enrollment;
//! - [`hosts`]: host look-up and the `online` rule;
//! - [`queue`]: jobs — create, long-poll delivery with leases, outcomes, the abandoned-lease sweep,
//!   grants (windows, revocation at expiry with retries, the grants view);
//! - [`audit`]: the hash-chained, keyed audit trail (written by the store with each change),
//!   checkpoints of its head and their verification;
//! - [`signing`], [`keys`], [`tls`]: the job-signing key and its rotation, the private CA;
//! - [`datadir`]: the data directory — its files, atomic writes, keys made once and pinned;
//! - [`people`], [`users`], [`mfa`]: principals and their permissions — service users and API
//!   keys, role bindings and delegation by host labels, local users, TOTP step-up;
//! - [`access`]: just-in-time access — access policies and their evaluation;
//! - [`vault`]: the credential vault's keys — the master key file, organizations' data keys,
//!   the AES-256-GCM envelope, master-key rotation;
//! - [`webhooks`]: signed webhook delivery of events (durable, retried with backoff);
//! - [`sso`]: single sign-on through OpenID Connect (the control plane is the client);
//! - [`api`]: the HTTP API (thin handlers over [`Control`]);
//! - [`console`]: the web console (server-rendered pages over [`Control`], same sessions);
//! - [`server`]: the listening loop and the periodic sweep;
//! - [`settings`]: the server's configuration file under its command line (one definition of
//!   each option: its clap argument);
//! - [`replicas`]: several processes on one PostgreSQL database — wake-ups, one leader;
//! - [`client`]: an HTTP client for the admin API (used by `latchctl`).

#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod audit;
pub mod client;
pub mod console;
pub mod datadir;
pub mod directory;
pub mod enroll;
pub mod error;
pub mod files;
pub mod hosts;
pub mod keys;
pub mod login;
pub mod metrics;
pub mod mfa;
pub mod password;
pub mod people;
pub mod queue;
pub mod replicas;
pub mod secret;
pub mod server;
pub mod settings;
pub mod signing;
pub mod sso;
pub mod store;
pub mod tls;
pub mod users;
pub mod vault;
pub mod webhooks;

use std::sync::Arc;

use chrono::Duration;

pub use error::ControlError;

/// Policy knobs of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// How long a delivered job may stay unreported before it is delivered again.
    pub lease_ttl: Duration,
    /// Deliveries before an unreported job fails with `agent_unresponsive`.
    pub max_attempts: u32,
    /// A host is `online` if it polled within this window.
    pub online_window: Duration,
    /// How long after creation a job that grants access may still be applied (`not_after`).
    /// Revocations never expire.
    pub job_ttl: Duration,
    /// Request limits of the HTTP API.
    pub rate_limits: api::limits::RateLimits,
    /// The longest window a grant (create-account, add-group) may ask for; longer ones, and
    /// ends not in the future, are refused.
    pub max_grant_duration: Duration,
    /// The window of a grant that names no end and is not explicitly `permanent`.
    pub default_grant_duration: Duration,
    /// The wait before a grant whose revocation job failed gets another one: doubling from
    /// `first` with each failure, at most `max`. Revocations are retried until confirmed.
    pub revocation_retry: store::RetryBackoff,
    /// On a database shared by several replicas (PostgreSQL): the longest a waiting long-poll
    /// goes without looking for a job itself, in case a wake-up from another replica was lost
    /// ([`replicas`]). A process that owns its database (SQLite) is woken directly and only
    /// looks again at the end of the wait.
    pub poll_recheck: std::time::Duration,
    /// Which sensitive actions need a recent second factor (MFA step-up).
    pub mfa: mfa::MfaPolicy,
    /// The credential vault's settings.
    pub vault: vault::VaultConfig,
    /// How long an access request may wait for its approvals before it expires.
    pub access_pending_ttl: Duration,
    /// How long every host of an approved access request has to confirm its provisioning
    /// before the request fails (and what the hosts got is removed).
    pub access_provision_timeout: Duration,
    /// How webhook deliveries are attempted.
    pub webhooks: webhooks::WebhookConfig,
    /// The web console's address as browsers reach it (`https://latch.example.com`), which
    /// the identity provider redirects back to after a console sign-in. `None`: the address
    /// the server listens on, when that is a loopback address ([`console`]).
    pub public_url: Option<url::Url>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::seconds(120),
            max_attempts: 5,
            online_window: Duration::seconds(45),
            job_ttl: Duration::hours(24),
            rate_limits: api::limits::RateLimits::default(),
            max_grant_duration: Duration::hours(24),
            default_grant_duration: Duration::hours(1),
            revocation_retry: store::RetryBackoff {
                first: Duration::seconds(10),
                max: Duration::minutes(5),
            },
            poll_recheck: std::time::Duration::from_secs(5),
            mfa: mfa::MfaPolicy::default(),
            vault: vault::VaultConfig::default(),
            access_pending_ttl: access::requests::DEFAULT_PENDING_TTL,
            access_provision_timeout: access::provision::DEFAULT_PROVISION_TIMEOUT,
            webhooks: webhooks::WebhookConfig::default(),
            public_url: None,
        }
    }
}

/// The control plane: every operation the API offers, over one [`store::Store`].
pub struct Control {
    store: Arc<dyn store::Store>,
    config: ControlConfig,
    wakeups: queue::Wakeups,
    keys: keys::SigningKeys,
    ca_fingerprint: Option<String>,
    audit_head: audit::head::AuditHead,
    /// Whether other processes may share the database (and wake-ups can come from them).
    shared_store: bool,
    sso: Option<sso::Sso>,
    /// The vault's master key (from the data directory); without it the vault refuses to work.
    master_key: Option<Arc<vault::SecretKey>>,
    /// One lock per vault identity for its rotations and host links ([`vault::rotation`]).
    identity_locks: vault::rotation::IdentityLocks,
    /// The SSH user CA ([`access::certificates`]): the data directory's, or one made in memory.
    user_ca: Option<Arc<access::certificates::UserCa>>,
}

impl Control {
    /// A control plane over `store` that signs jobs with `signer`.
    pub fn new(
        store: Arc<dyn store::Store>,
        config: ControlConfig,
        signer: signing::JobSigner,
    ) -> Self {
        Self {
            shared_store: store.coordination().is_some(),
            store,
            config,
            wakeups: queue::Wakeups::default(),
            keys: keys::SigningKeys::in_memory(signer),
            ca_fingerprint: None,
            audit_head: audit::head::AuditHead::in_memory(),
            sso: None,
            master_key: None,
            identity_locks: vault::rotation::IdentityLocks::default(),
            user_ca: access::certificates::UserCa::generate().ok().map(Arc::new),
        }
    }

    /// Opens the credential vault with this master key ([`datadir::DataDir::master_key`]).
    pub fn with_master_key(mut self, master_key: Arc<vault::SecretKey>) -> Self {
        self.master_key = Some(master_key);
        self
    }

    /// Records the fingerprint of the CA agents must pin (shown with new enrollment tokens).
    pub fn with_ca_fingerprint(mut self, fingerprint: String) -> Self {
        self.ca_fingerprint = Some(fingerprint);
        self
    }

    /// Signs people in through this OpenID Connect provider ([`sso`]).
    pub fn with_sso(mut self, sso: sso::Sso) -> Self {
        self.sso = Some(sso);
        self
    }

    /// The filter of an audit listing (the API's and the console's): `actor` must be 1 to 128
    /// of letters, digits, `:`, `_`, `-`, `.` or `@`; `host` is a host id or name (one that no
    /// host has matches only entries naming it).
    pub async fn audit_filter(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
        actor: Option<&str>,
        host: Option<&str>,
    ) -> Result<store::AuditFilter, ControlError> {
        if let Some(actor) = actor {
            let ok = !actor.is_empty()
                && actor.len() <= 128
                && actor
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.' | '@'));
            if !ok {
                return Err(latch_common::names::ValidationError::new(
                    "actor",
                    "must be 1 to 128 characters of letters, digits, ':', '_', '-', '.' or '@' (e.g. user:alice)",
                )
                .into());
            }
        }
        let host_id = match host {
            Some(host) => Some(
                self.find_host(host)
                    .await
                    .map(|h| h.id)
                    .unwrap_or_else(|_| host.to_owned()),
            ),
            None => None,
        };
        Ok(store::AuditFilter {
            since,
            actor: actor.map(str::to_owned),
            host_id,
        })
    }

    /// Audit entries, oldest first.
    pub async fn list_audit(
        &self,
        filter: &store::AuditFilter,
        page: store::Page,
    ) -> Result<Vec<audit::AuditEntry>, ControlError> {
        Ok(self.store.list_audit(filter, page).await?)
    }

    /// Keeps the signing keys in the data directory `dir` (`signing.key`, and
    /// `signing.next.key` during a rotation), so rotation survives restarts, and the audit
    /// chain's recorded head in `dir/audit.head`.
    pub fn with_key_dir(
        mut self,
        dir: std::path::PathBuf,
        next: Option<signing::JobSigner>,
    ) -> Self {
        self.audit_head = audit::head::AuditHead::in_file(dir.join(files::AUDIT_HEAD_FILE));
        self.keys = self.keys.persisted_in(dir, next);
        self
    }

    /// The job-signing public key (base64) agents pin at enrollment.
    pub fn signing_key(&self) -> String {
        self.keys.current().public_key()
    }

    /// The policy in force.
    pub fn config(&self) -> &ControlConfig {
        &self.config
    }
}
