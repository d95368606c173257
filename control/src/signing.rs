//! The control plane's job-signing key (Ed25519, ring). Kept in the data directory as PKCS#8
//! (`signing.key`, mode 0600). Agents pin its public key at enrollment, so the key is made once
//! ([`JobSigner::create`], never over an existing file) and afterwards only loaded
//! ([`JobSigner::load`]); [`crate::datadir`] decides when making one is allowed.

use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use thiserror::Error;

/// Why the signing key could not be loaded or made.
#[derive(Debug, Error)]
pub enum SigningError {
    /// Reading or writing the key file failed.
    #[error("cannot {action} the job-signing key {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not hold an Ed25519 PKCS#8 key.
    #[error(
        "{0} does not hold an Ed25519 key (PKCS#8); restore it from backup — agents pinned its public key"
    )]
    Invalid(String),
    /// Key generation failed.
    #[error("cannot generate a signing key: the system random generator failed")]
    Random,
}

/// Signs jobs.
pub struct JobSigner {
    key: Ed25519KeyPair,
}

impl JobSigner {
    /// A new random key, kept in memory only (tests and embedding).
    pub fn generate() -> Result<JobSigner, SigningError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| SigningError::Random)?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningError::Random)?;
        Ok(JobSigner { key })
    }

    /// Loads the key at `path`; `Ok(None)` if there is no such file.
    pub fn load(path: &Path) -> Result<Option<JobSigner>, SigningError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(pkcs8) => Ed25519KeyPair::from_pkcs8(&pkcs8)
                .map(|key| Some(JobSigner { key }))
                .map_err(|_| SigningError::Invalid(shown)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SigningError::Io {
                action: "read",
                path: shown,
                source,
            }),
        }
    }

    /// Makes a new key and writes it to `path` (mode 0600, atomically); refuses to replace an
    /// existing file.
    pub fn create(path: &Path) -> Result<JobSigner, SigningError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| SigningError::Random)?;
        crate::files::write_file(path, pkcs8.as_ref(), 0o600, crate::files::Existing::Refuse)
            .map_err(|source| SigningError::Io {
                action: "create",
                path: path.display().to_string(),
                source,
            })?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningError::Random)?;
        Ok(JobSigner { key })
    }

    /// The public key, base64 (what agents pin).
    pub fn public_key(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.public_key().as_ref())
    }

    /// The signature of `payload`, base64.
    pub fn sign(&self, payload: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.sign(payload).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_key_persists_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        assert!(JobSigner::load(&path).unwrap().is_none());
        let first = JobSigner::create(&path).unwrap();
        let again = JobSigner::load(&path).unwrap().unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(
            JobSigner::create(&path).is_err(),
            "an existing key is never replaced"
        );
        assert_eq!(
            JobSigner::load(&path).unwrap().unwrap().public_key(),
            first.public_key()
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            JobSigner::load(&path),
            Err(SigningError::Invalid(_))
        ));
    }
}
