//! The agent's state directory (mode 0700, files 0600, written atomically):
//! - `identity.json`: server URL, host id, host credential, machine-id at enrollment;
//! - `accounts.json`: the accounts Latch created here (one of the three ownership proofs, with
//!   the marker group and the GECOS tag) and their active grants with expiries, the UID
//!   high-water mark that keeps ephemeral UIDs from ever being reused, the highest job sequence
//!   applied per account (stale jobs are refused), the outbox of revocations done locally
//!   that the control plane has not acknowledged yet, and the existing accounts Latch adopted
//!   (name → UID, adopting job; their password may be set, they are never removed);
//! - `journal/`: one file per job in flight (see `journal`);
//! - `revoke-only.json`: present while the agent runs in revoke-only mode (its credential was
//!   refused, or the machine-id changed): polling is stopped, local expiry goes on;
//! - `agent.lock`: held while an agent runs, so two agents never share one identity.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use latch_common::api::RevocationReport;
use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Identity file name.
pub const IDENTITY_FILE: &str = "identity.json";
/// Account records file name.
pub const ACCOUNTS_FILE: &str = "accounts.json";
/// Lock file name.
pub const LOCK_FILE: &str = "agent.lock";
/// Revoke-only marker file name.
pub const REVOKE_ONLY_FILE: &str = "revoke-only.json";

/// Why the state could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    /// File system error.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A state file is corrupt.
    #[error("{path} is corrupt ({source}); restore it from backup or re-enroll the host")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
    /// The host is not enrolled.
    #[error(
        "this host is not enrolled ({path} does not exist); run `latch-agent enroll --server URL --ca-fingerprint sha256:… --token-file FILE` first (both printed by `latchctl enroll-token create`)"
    )]
    NotEnrolled {
        /// The identity file.
        path: PathBuf,
    },
    /// Another agent holds the lock.
    #[error("another latch-agent is already running with state directory {0}; stop it first")]
    Locked(PathBuf),
}

/// What enrollment gave this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Control plane URL.
    pub server: String,
    /// This host's id.
    pub host_id: String,
    /// Bearer credential for the agent endpoints.
    pub credential: String,
    /// `/etc/machine-id` at enrollment.
    pub machine_id: String,
    /// When the host enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// The control plane's job-signing public key (Ed25519, base64), pinned at enrollment.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// The control plane's CA fingerprint (`sha256:…`), pinned at enrollment; `None` when
    /// enrolled over plain HTTP on loopback (`--insecure-http`).
    #[serde(default)]
    pub ca_fingerprint: Option<String>,
    /// The control plane's next signing key during a rotation; promoted (replacing
    /// `signing_key`) on the first job that verifies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_signing_key: Option<String>,
    /// A new credential being rotated in, kept until the control plane confirmed the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_credential: Option<String>,
    /// The control plane's SSH user CA (OpenSSH public key line), when the host was enrolled
    /// with `--ssh-ca`: installed for sshd at every start of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ca_key: Option<String>,
}

impl Identity {
    /// How to reach the control plane.
    pub fn transport(&self) -> crate::client::Transport {
        match &self.ca_fingerprint {
            Some(fingerprint) => crate::client::Transport::Pinned(fingerprint.clone()),
            None => crate::client::Transport::InsecureHttp,
        }
    }
}

/// One account Latch created on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedAccount {
    /// Its UID.
    pub uid: u32,
    /// The job that created it.
    pub created_by_job: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When the account's access ends (revocation comes with local expiry).
    pub expires_at: Option<DateTime<Utc>>,
    /// Group memberships granted by jobs, by group.
    #[serde(default)]
    pub group_grants: BTreeMap<String, GroupGrant>,
}

/// An existing account Latch adopted (`adopt-account`): Latch may set its password, and never
/// deletes, locks or expires it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptedAccount {
    /// Its UID when it was adopted: an account of the same name with another UID (deleted and
    /// re-created) is someone else's and is not adopted.
    pub uid: u32,
    /// The job that adopted it.
    pub adopted_by_job: String,
    /// When it was adopted.
    pub adopted_at: DateTime<Utc>,
}

/// A group membership Latch granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupGrant {
    /// The job that granted it.
    pub job_id: String,
    /// When it ends.
    pub expires_at: Option<DateTime<Utc>>,
}

/// `accounts.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    /// Highest UID ever handed out; new UIDs are always above it.
    pub uid_high_water: u32,
    /// Accounts by name.
    pub accounts: BTreeMap<String, ManagedAccount>,
    /// Highest job sequence number applied, per account name.
    #[serde(default)]
    pub applied_seq: BTreeMap<String, i64>,
    /// Revocations done locally, not yet acknowledged by the control plane.
    #[serde(default)]
    pub outbox: Vec<RevocationReport>,
    /// Ids of the most recently applied jobs, by sequence number (replays are refused).
    #[serde(default)]
    pub applied_jobs: BTreeMap<i64, String>,
    /// Jobs at or below this sequence fell out of `applied_jobs`: all count as applied.
    #[serde(default)]
    pub applied_floor: i64,
    /// Existing accounts adopted by name (never deleted, locked or expired by Latch; only their
    /// password is set). Kept apart from `accounts`, so no revocation path can reach them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub adopted: BTreeMap<String, AdoptedAccount>,
}

/// Why the agent stopped polling and only revokes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeOnly {
    /// What happened, for `latch-agent status` and the log.
    pub reason: String,
    /// Since when.
    pub since: DateTime<Utc>,
}

/// How many applied job ids are remembered individually.
pub const APPLIED_JOBS_KEPT: usize = 1000;

impl Accounts {
    /// Whether the job `id` with sequence `seq` was already applied here.
    pub fn was_applied(&self, seq: i64, id: &str) -> bool {
        seq <= self.applied_floor
            || self
                .applied_jobs
                .get(&seq)
                .is_some_and(|applied| applied == id)
    }

    /// Forgets everything tied to the previous enrollment (job sequence numbers, applied job
    /// ids, unsent revocation reports) before the host enrolls again. The accounts Latch
    /// created, their grants and the UID high-water mark stay: they are still revoked at their
    /// end. Adoptions stay too: they belong to the host's accounts, not to the enrollment.
    pub fn forget_enrollment(&mut self) {
        self.applied_seq.clear();
        self.applied_jobs.clear();
        self.applied_floor = 0;
        self.outbox.clear();
    }

    /// Records job `id` with sequence `seq` as applied.
    pub fn mark_applied(&mut self, seq: i64, id: &str) {
        self.applied_jobs.insert(seq, id.to_owned());
        while self.applied_jobs.len() > APPLIED_JOBS_KEPT {
            if let Some((oldest, _)) = self.applied_jobs.pop_first() {
                self.applied_floor = self.applied_floor.max(oldest);
            }
        }
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The state directory at `path`, created with mode 0700 if needed.
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        let io = |action, source| StateError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| io("create", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("secure", e))?;
        Ok(StateDir {
            path: path.to_owned(),
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the single-instance lock; held until the returned guard is dropped.
    pub fn lock(&self) -> Result<Flock<File>, StateError> {
        let path = self.path.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StateError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateError::Locked(self.path.clone()))
    }

    /// Takes the lock, waiting up to `wait` while another process holds it (a `status` run
    /// peeking at it, a stopping agent).
    pub fn lock_waiting(&self, wait: std::time::Duration) -> Result<Flock<File>, StateError> {
        let until = std::time::Instant::now() + wait;
        loop {
            match self.lock() {
                Err(StateError::Locked(_)) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Whether the lock is held by a running agent. Peeks with a shared lock, so two `status`
    /// runs at once do not mistake each other for the agent.
    pub fn is_locked(&self) -> bool {
        let Ok(file) = std::fs::File::open(self.path.join(LOCK_FILE)) else {
            return false;
        };
        Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
    }

    /// The identity, or [`StateError::NotEnrolled`].
    pub fn identity(&self) -> Result<Identity, StateError> {
        let path = self.path.join(IDENTITY_FILE);
        self.read_json::<Identity>(IDENTITY_FILE)?
            .ok_or(StateError::NotEnrolled { path })
    }

    /// Whether an identity exists.
    pub fn is_enrolled(&self) -> bool {
        self.path.join(IDENTITY_FILE).exists()
    }

    /// Writes the identity (atomically, 0600).
    pub fn save_identity(&self, identity: &Identity) -> Result<(), StateError> {
        self.write_json(IDENTITY_FILE, identity)
    }

    /// The account records (empty if none yet).
    pub fn accounts(&self) -> Result<Accounts, StateError> {
        Ok(self.read_json(ACCOUNTS_FILE)?.unwrap_or_default())
    }

    /// Writes the account records (atomically, 0600).
    pub fn save_accounts(&self, accounts: &Accounts) -> Result<(), StateError> {
        self.write_json(ACCOUNTS_FILE, accounts)
    }

    /// Why the agent is in revoke-only mode, if it is.
    pub fn revoke_only(&self) -> Result<Option<RevokeOnly>, StateError> {
        self.read_json(REVOKE_ONLY_FILE)
    }

    /// Enters revoke-only mode (persisted, so `status` and a restart see it).
    pub fn set_revoke_only(&self, mode: &RevokeOnly) -> Result<(), StateError> {
        self.write_json(REVOKE_ONLY_FILE, mode)
    }

    /// Leaves revoke-only mode.
    pub fn clear_revoke_only(&self) -> Result<(), StateError> {
        remove_state_file(&self.path.join(REVOKE_ONLY_FILE))
    }

    fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        read_json_file(&self.path.join(name))
    }

    fn write_json(&self, name: &str, value: &impl Serialize) -> Result<(), StateError> {
        write_json_file(&self.path.join(name), value)
    }
}

/// Reads a JSON state file; `None` if it does not exist.
pub fn read_json_file<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes a state file; one that does not exist is already removed.
pub fn remove_state_file(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io {
            action: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a JSON state file atomically with mode 0600 (see `system::files::write_file_atomic`).
pub fn write_json_file(path: &Path, value: &impl Serialize) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    crate::system::files::write_file_atomic(path, &bytes, 0o600).map_err(|source| StateError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("latch")).unwrap();
        assert!(matches!(
            state.identity(),
            Err(StateError::NotEnrolled { .. })
        ));
        let identity = Identity {
            server: "http://127.0.0.1:8443".into(),
            host_id: "h".into(),
            credential: "latch_host_x".into(),
            machine_id: "0".repeat(32),
            enrolled_at: Utc::now(),
            signing_key: Some("AAAA".into()),
            ca_fingerprint: None,
            pending_credential: None,
            next_signing_key: None,
            user_ca_key: Some("ssh-ed25519 AAAA latch-user-ca".into()),
        };
        state.save_identity(&identity).unwrap();
        assert_eq!(state.identity().unwrap(), identity);
        let meta = std::fs::metadata(state.path().join(IDENTITY_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(state.path()).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(state.accounts().unwrap(), Accounts::default());
    }

    #[test]
    fn applied_jobs_are_remembered_and_bounded() {
        let mut accounts = Accounts::default();
        assert!(!accounts.was_applied(1, "a"));
        accounts.mark_applied(1, "a");
        assert!(accounts.was_applied(1, "a"));
        assert!(
            !accounts.was_applied(1, "b"),
            "another job with that seq is not a replay of this one"
        );
        for seq in 2..=(APPLIED_JOBS_KEPT as i64 + 5) {
            accounts.mark_applied(seq, &format!("j{seq}"));
        }
        assert_eq!(accounts.applied_jobs.len(), APPLIED_JOBS_KEPT);
        assert!(
            accounts.was_applied(3, "anything"),
            "below the floor everything counts as applied"
        );
    }

    /// An `accounts.json` written before adoption existed reads as "nothing adopted", and one
    /// without adoptions is written without the key (older agents refuse unknown keys).
    #[test]
    fn adoptions_are_optional_in_accounts_json() {
        let old = br#"{"uid_high_water": 60000, "accounts": {}}"#;
        let accounts: Accounts = serde_json::from_slice(old).unwrap();
        assert!(accounts.adopted.is_empty());
        let written = serde_json::to_value(&accounts).unwrap();
        assert!(written.get("adopted").is_none(), "{written}");
        let mut adopted = accounts;
        adopted.adopted.insert(
            "legacy".into(),
            AdoptedAccount {
                uid: 1001,
                adopted_by_job: "j1".into(),
                adopted_at: Utc::now(),
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.save_accounts(&adopted).unwrap();
        assert_eq!(state.accounts().unwrap(), adopted);
    }

    #[test]
    fn one_agent_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let _held = state.lock().unwrap();
        assert!(matches!(state.lock(), Err(StateError::Locked(_))));
        assert!(state.is_locked());
    }

    #[test]
    fn corrupt_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(ACCOUNTS_FILE), b"{not json").unwrap();
        assert!(matches!(state.accounts(), Err(StateError::Corrupt { .. })));
    }
}
