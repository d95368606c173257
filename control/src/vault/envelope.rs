//! The one ciphertext format of the vault: AES-256-GCM (ring's AEAD), written as text
//! `v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, with the id of the record it belongs to as
//! associated data — so a ciphertext copied onto another record, or opened with another key,
//! is refused. Nonces are 96 random bits from the system generator, fresh for every seal.
//! Nothing here is hand-made cryptography: sealing and opening are ring's.

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use thiserror::Error;

use crate::secret::{RandomError, random_bytes};

/// The format version written in front of every ciphertext.
pub const VERSION: &str = "v1";
/// Length of a key, in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Why a ciphertext could not be made or opened.
#[derive(Debug, Error)]
pub enum EnvelopeError {
    /// The text is not `v1:<key id>:<base64>`.
    #[error(
        "the stored ciphertext is not in the form v1:<key id>:<base64> ({detail}); it was altered or is not a Latch ciphertext: restore the record from a backup"
    )]
    Malformed {
        /// What is wrong.
        detail: &'static str,
    },
    /// A format version this build does not know.
    #[error(
        "the stored ciphertext has format version {version}, which this Latch does not know; run the Latch version that wrote it, or a newer one"
    )]
    UnknownVersion {
        /// The version found.
        version: String,
    },
    /// Sealed under another key than the one given.
    #[error(
        "the ciphertext was sealed under key {found}, not under key {expected}; open it with the key it was sealed under"
    )]
    WrongKey {
        /// The key given.
        expected: String,
        /// The key named by the ciphertext.
        found: String,
    },
    /// The key id matches but authentication failed: another record's ciphertext, or altered.
    #[error(
        "the ciphertext under key {key_id} does not open for record {record}: it belongs to another record, or it or the key was altered; restore it from a backup"
    )]
    Rejected {
        /// The key used.
        key_id: String,
        /// The record it was opened for (the associated data).
        record: String,
    },
    /// The system random generator failed (no nonce or key could be made).
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// An AES-256-GCM key with its id (the id is written into every ciphertext sealed under it and
/// must not contain `:`). Its bytes are never printed: `Debug` shows the id only.
pub struct SecretKey {
    id: String,
    raw: [u8; KEY_LEN],
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

impl SecretKey {
    /// The key `raw` under the id `id`.
    pub fn from_bytes(id: String, raw: [u8; KEY_LEN]) -> Result<SecretKey, EnvelopeError> {
        if id.is_empty() || id.contains(':') {
            return Err(EnvelopeError::Malformed {
                detail: "a key id is empty or holds ':'",
            });
        }
        let unbound =
            UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| EnvelopeError::Malformed {
                detail: "a key is not 32 bytes long",
            })?;
        Ok(SecretKey {
            id,
            raw,
            key: LessSafeKey::new(unbound),
        })
    }

    /// A new random key under the id `id`.
    pub fn generate(id: String) -> Result<SecretKey, EnvelopeError> {
        SecretKey::from_bytes(id, random_bytes::<KEY_LEN>()?)
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's bytes, to wrap it under another key (and for tests that check it is stored
    /// nowhere in plain). Never log or print them.
    pub fn expose_secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.raw
    }

    /// Seals `plaintext` for the record `record`: `v1:<key id>:<base64>`.
    pub fn seal(&self, record: &str, plaintext: &[u8]) -> Result<String, EnvelopeError> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let mut sealed = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(record.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| EnvelopeError::Malformed {
                detail: "the plaintext is too long",
            })?;
        let mut body = Vec::with_capacity(NONCE_LEN + sealed.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        Ok(format!(
            "{VERSION}:{}:{}",
            self.id,
            base64::engine::general_purpose::STANDARD.encode(body)
        ))
    }

    /// Opens what [`SecretKey::seal`] sealed for `record` under this key.
    pub fn open(&self, record: &str, sealed: &str) -> Result<Vec<u8>, EnvelopeError> {
        let (key_id, body) = split(sealed)?;
        if key_id != self.id {
            return Err(EnvelopeError::WrongKey {
                expected: self.id.clone(),
                found: key_id.to_owned(),
            });
        }
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| EnvelopeError::Malformed {
                detail: "the body is not base64",
            })?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(EnvelopeError::Malformed {
                detail: "the body is too short",
            });
        }
        let mut ciphertext = bytes.split_off(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(&bytes).map_err(|_| EnvelopeError::Malformed {
                detail: "the nonce is not 12 bytes long",
            })?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(record.as_bytes()), &mut ciphertext)
            .map_err(|_| EnvelopeError::Rejected {
                key_id: self.id.clone(),
                record: record.to_owned(),
            })?;
        Ok(plain.to_vec())
    }
}

/// The id of the key `sealed` was sealed under.
pub fn key_id_of(sealed: &str) -> Result<&str, EnvelopeError> {
    split(sealed).map(|(key_id, _)| key_id)
}

fn split(sealed: &str) -> Result<(&str, &str), EnvelopeError> {
    let mut parts = sealed.splitn(3, ':');
    let (Some(version), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(EnvelopeError::Malformed {
            detail: "it has fewer than three ':'-separated parts",
        });
    };
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion {
            version: version.chars().take(16).collect(),
        });
    }
    if key_id.is_empty() {
        return Err(EnvelopeError::Malformed {
            detail: "the key id is empty",
        });
    }
    Ok((key_id, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_names_version_and_key_and_opens_only_for_its_record() {
        let key = SecretKey::from_bytes("dk_a".into(), [7; KEY_LEN]).unwrap();
        let sealed = key.seal("idn_1", b"hunter2").unwrap();
        assert!(sealed.starts_with("v1:dk_a:"), "{sealed}");
        assert_ne!(
            key.seal("idn_1", b"hunter2").unwrap(),
            sealed,
            "fresh nonce"
        );
        assert_eq!(key.open("idn_1", &sealed).unwrap(), b"hunter2");
        assert!(matches!(
            key.open("idn_2", &sealed),
            Err(EnvelopeError::Rejected { .. })
        ));
        let other = SecretKey::from_bytes("dk_b".into(), [8; KEY_LEN]).unwrap();
        assert!(matches!(
            other.open("idn_1", &sealed),
            Err(EnvelopeError::WrongKey { .. })
        ));
        let impostor = SecretKey::from_bytes("dk_a".into(), [8; KEY_LEN]).unwrap();
        assert!(matches!(
            impostor.open("idn_1", &sealed),
            Err(EnvelopeError::Rejected { .. })
        ));
        assert!(matches!(
            key.open("idn_1", &sealed.replacen("v1:", "v9:", 1)),
            Err(EnvelopeError::UnknownVersion { .. })
        ));
        assert!(matches!(
            key.open("idn_1", "v1:dk_a:!!"),
            Err(EnvelopeError::Malformed { .. })
        ));
        assert!(matches!(
            key.open("idn_1", "v1:dk_a:AAAA"),
            Err(EnvelopeError::Malformed { .. })
        ));
        assert!(
            !format!("{key:?}").contains("7, 7"),
            "no key bytes in Debug"
        );
    }
}
