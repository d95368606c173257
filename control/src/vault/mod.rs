//! The credential vault's keys (issue 11, first slice): the master key outside the database,
//! one data key per organization wrapped by it, and the one ciphertext format everything is
//! sealed in.
//!
//! - [`envelope`]: AES-256-GCM (ring) as `v1:<key id>:<base64>`, bound to its record's id;
//! - [`organizations`]: organizations, their data keys and canaries;
//! - [`master`]: the master key file — made once, checked at start against every
//!   organization, rotated crash-safely.
//!
//! Persistence is [`crate::store::vault::VaultStore`]; the data directory opens the master key
//! at start ([`crate::datadir::open`]).

pub mod envelope;
pub mod master;
pub mod organizations;

use std::path::PathBuf;

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
