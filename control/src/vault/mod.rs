//! The credential vault: keys, vaults, identities, reveal, checkout/checkin, rotation,
//! break-glass and one-click enrollment of host accounts.
//!
//! - [`envelope`]: AES-256-GCM (ring) as `v1:<key id>:<base64>`, bound to its record's id;
//! - [`organizations`]: organizations, their data keys and canaries;
//! - [`master`]: the master key file — made once, checked at start against every
//!   organization, rotated crash-safely;
//! - [`access`]: who may see, reveal, check out and manage (permissions, grants, owners);
//! - [`vaults`]: vaults and their grants;
//! - [`identities`]: identities, linked hosts (adoption jobs), reveal;
//! - [`checkouts`]: checkout/checkin, break-glass, the expired-checkout sweep;
//! - [`rotation`]: password rotation across linked hosts and its settlement;
//! - [`enroll`]: one-click enrollment of an existing host account;
//! - [`secrets`]: sealing identity secrets, the password policy, the reuse history;
//! - [`notify`]: the break-glass webhook;
//! - [`support`]: support access (the vendor's engineers see metadata, for a while);
//! - [`schedule`]: the leader's cron sweeps (scheduled rotations, expired checkouts).
//!
//! Persistence is [`crate::store::vault::VaultStore`]; the data directory opens the master key
//! at start ([`crate::datadir::open`]).

pub mod access;
pub mod checkouts;
pub mod enroll;
pub mod envelope;
pub mod identities;
pub mod master;
pub mod notify;
pub mod organizations;
pub mod rotation;
pub mod schedule;
pub mod secrets;
pub mod support;
pub mod vaults;

use std::path::PathBuf;

use chrono::Duration;
use thiserror::Error;

pub use envelope::{EnvelopeError, SecretKey};
pub use master::{
    MasterKeyFiles, Rotated, finish_rotation, open_master_key, rewrap_under_new_key,
    rotate_master_key,
};
pub use organizations::{DEFAULT_ORGANIZATION, create_organization, open_data_key};

use crate::store::StoreError;

/// The actor of changes the control plane makes on its own (at start, or from the server's
/// command line with the server stopped).
pub const CONTROL_PLANE: &str = "control_plane";

/// The vault's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// How generated passwords look.
    pub password_policy: secrets::PasswordPolicy,
    /// How long a break-glass checkout lasts before it is checked in (and rotated).
    pub break_glass_duration: Duration,
    /// Break-glass uses allowed per person per minute.
    pub break_glass_per_minute: u32,
    /// Where break-glass notifications go.
    pub break_glass_webhook: Option<notify::Webhook>,
    /// When the scheduled-rotation sweep runs (cron, with seconds).
    pub sweep_schedule: String,
    /// When the expired-checkout sweep runs (cron, with seconds).
    pub checkout_sweep_schedule: String,
}

impl Default for VaultConfig {
    /// 24-character passwords, break-glass for 1 hour and 3 per minute, no webhook; scheduled
    /// rotations every 30 minutes, expired checkouts every minute.
    fn default() -> Self {
        Self {
            password_policy: secrets::PasswordPolicy::default(),
            break_glass_duration: Duration::hours(1),
            break_glass_per_minute: 3,
            break_glass_webhook: None,
            sweep_schedule: "0 */30 * * * *".to_owned(),
            checkout_sweep_schedule: "0 * * * * *".to_owned(),
        }
    }
}

/// Why the vault's keys could not be opened, made or rotated.
#[derive(Debug, Error)]
pub enum VaultError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing or opening failed (or the random generator did).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A key file could not be read, written or renamed.
    #[error("cannot {action} {path}: {source}; check the file's directory, its permissions and free space", path = .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The master key file does not hold a key.
    #[error(
        "the master key file {path} does not hold a master key ({detail}): it must hold 64 hex digits; restore it from the backup kept apart from the database",
        path = .path.display()
    )]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: &'static str,
    },
    /// The master key opens none of the organizations' data keys.
    #[error(
        "the master key {path} ({found}) does not open organization {organization}'s data key, which is sealed under master key {wanted}: start with the master key it was created with (--master-key-file or LATCH_MASTER_KEY_FILE), restored from the backup kept apart from the database. No other key can read this organization's secrets",
        path = .path.display()
    )]
    WrongMasterKey {
        /// The file read.
        path: PathBuf,
        /// The first organization it does not open.
        organization: String,
        /// The id of the key in the file.
        found: String,
        /// The id of the key the organization needs.
        wanted: String,
    },
    /// No master key file, while organizations have data keys.
    #[error(
        "the master key file {path} is missing, but organization(s) {organizations:?} have data keys sealed under master key {wanted}: restore the file from the backup kept apart from the database, or point --master-key-file (LATCH_MASTER_KEY_FILE) at it. A new master key could not read the existing secrets, so none is made",
        path = .path.display()
    )]
    MasterKeyMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// The organizations.
        organizations: Vec<String>,
        /// The id of the key they need.
        wanted: String,
    },
    /// The master key's id matches, but an organization's data key or canary does not open.
    #[error(
        "organization {organization}'s data key does not open with the right master key: {source}"
    )]
    Unreadable {
        /// The organization.
        organization: String,
        /// Cause.
        source: EnvelopeError,
    },
    /// An organization of that name exists.
    #[error("an organization named {name} exists already; choose another name")]
    OrganizationExists {
        /// The name.
        name: String,
    },
}

/// `prefix` followed by 64 random bits in hex.
fn random_id(prefix: &str) -> Result<String, EnvelopeError> {
    Ok(format!(
        "{prefix}{}",
        hex::encode(crate::secret::random_bytes::<8>()?)
    ))
}
