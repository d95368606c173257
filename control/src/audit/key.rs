//! The audit key: a random 32-byte seed kept outside the database (`audit.key`, mode 0600), from
//! which HKDF-SHA256 (ring) derives three keys — an HMAC-SHA256 key that authenticates every
//! entry, an Ed25519 key that signs checkpoints of the chain's head, and an HMAC-SHA256 key under
//! which people's credentials (API keys, session tokens) are stored. Someone who can write the
//! database but not read this file cannot produce a valid entry, a checkpoint, or a credential.

use std::path::Path;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use ring::{digest, hkdf, hmac};
use thiserror::Error;

use crate::secret::hex;

/// Length of the seed in `audit.key`.
pub const SEED_LEN: usize = 32;

const HKDF_SALT: &[u8] = b"latch audit key v1";
const MAC_INFO: &[u8] = b"latch audit entry mac";
const SIGNING_INFO: &[u8] = b"latch audit checkpoint signing";
const MAC_DOMAIN: &[u8] = b"latch-audit-entry-v1\0";
const CREDENTIAL_INFO: &[u8] = b"latch credential hash";
const SEAL_INFO: &[u8] = b"latch small secret seal";
const PEPPER_INFO: &[u8] = b"latch password pepper";
const SEAL_VERSION: u8 = 1;
const CREDENTIAL_DOMAIN: &[u8] = b"latch-credential-v1\0";

/// Why the audit key could not be loaded, made or used.
#[derive(Debug, Error)]
pub enum AuditKeyError {
    /// Reading or writing the key file failed.
    #[error("cannot {action} the audit key {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not hold a seed.
    #[error(
        "{0} does not hold an audit key (32 bytes); restore it from a backup of the data directory"
    )]
    Invalid(String),
    /// The system random generator or the key derivation failed.
    #[error("cannot make the audit key: the system random generator or key derivation failed")]
    Derive,
}

/// The keys derived from one `audit.key` seed.
pub struct AuditKey {
    seed: [u8; SEED_LEN],
    mac: hmac::Key,
    credential: hmac::Key,
    seal: ring::aead::LessSafeKey,
    pepper: [u8; SEED_LEN],
    signer: Ed25519KeyPair,
    public_key: String,
    key_id: String,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

struct SeedLen;

impl hkdf::KeyType for SeedLen {
    fn len(&self) -> usize {
        SEED_LEN
    }
}

impl AuditKey {
    /// The keys derived from `seed`.
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Result<AuditKey, AuditKeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&seed);
        let mac = hmac::Key::from(
            prk.expand(&[MAC_INFO], hmac::HMAC_SHA256)
                .map_err(|_| AuditKeyError::Derive)?,
        );
        let credential = hmac::Key::from(
            prk.expand(&[CREDENTIAL_INFO], hmac::HMAC_SHA256)
                .map_err(|_| AuditKeyError::Derive)?,
        );
        let mut seal_key = [0u8; SEED_LEN];
        prk.expand(&[SEAL_INFO], SeedLen)
            .and_then(|okm| okm.fill(&mut seal_key))
            .map_err(|_| AuditKeyError::Derive)?;
        let seal = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &seal_key)
                .map_err(|_| AuditKeyError::Derive)?,
        );
        let mut pepper = [0u8; SEED_LEN];
        prk.expand(&[PEPPER_INFO], SeedLen)
            .and_then(|okm| okm.fill(&mut pepper))
            .map_err(|_| AuditKeyError::Derive)?;
        let mut signing_seed = [0u8; SEED_LEN];
        prk.expand(&[SIGNING_INFO], SeedLen)
            .and_then(|okm| okm.fill(&mut signing_seed))
            .map_err(|_| AuditKeyError::Derive)?;
        let signer = Ed25519KeyPair::from_seed_unchecked(&signing_seed)
            .map_err(|_| AuditKeyError::Derive)?;
        let public = signer.public_key().as_ref().to_vec();
        let key_id = hex(&digest::digest(&digest::SHA256, &public).as_ref()[..8]);
        Ok(AuditKey {
            seed,
            mac,
            credential,
            seal,
            pepper,
            signer,
            public_key: base64::engine::general_purpose::STANDARD.encode(public),
            key_id,
        })
    }

    /// A new random key, in memory only until [`AuditKey::write_new`].
    pub fn generate() -> Result<AuditKey, AuditKeyError> {
        let seed = crate::secret::random_bytes::<SEED_LEN>().map_err(|_| AuditKeyError::Derive)?;
        AuditKey::from_seed(seed)
    }

    /// Loads the key at `path`; `Ok(None)` if there is no such file.
    pub fn load(path: &Path) -> Result<Option<AuditKey>, AuditKeyError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => {
                let seed: [u8; SEED_LEN] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| AuditKeyError::Invalid(shown))?;
                AuditKey::from_seed(seed).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuditKeyError::Io {
                action: "read",
                path: shown,
                source,
            }),
        }
    }

    /// Writes the seed to `path` (mode 0600, atomically); refuses to replace an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), AuditKeyError> {
        crate::files::write_file(path, &self.seed, 0o600, crate::files::Existing::Refuse).map_err(
            |source| AuditKeyError::Io {
                action: "create",
                path: path.display().to_string(),
                source,
            },
        )
    }

    /// The checkpoint-signing public key, base64 (recorded in the database and in every
    /// checkpoint).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// A short id of the key (16 hex digits of the public key's SHA-256): entry MACs are stored
    /// under it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The MAC of the entry whose hash is `entry_hash` (hex).
    pub fn entry_mac(&self, entry_hash: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.mac);
        ctx.update(MAC_DOMAIN);
        ctx.update(entry_hash.as_bytes());
        hex(ctx.sign().as_ref())
    }

    /// Whether `mac` (hex) is the MAC of `entry_hash`; compared in constant time.
    pub fn entry_mac_is_valid(&self, entry_hash: &str, mac: &str) -> bool {
        let Ok(tag) = hex::decode(mac) else {
            return false;
        };
        let mut message = MAC_DOMAIN.to_vec();
        message.extend_from_slice(entry_hash.as_bytes());
        hmac::verify(&self.mac, &message, &tag).is_ok()
    }

    /// The stored form of a person's or service user's credential: HMAC-SHA256 under the
    /// credential key of the credential's SHA-256 (hex), hex. Keyed, so that write access to the
    /// database alone cannot mint a credential; over the SHA-256, so that a credential stored
    /// before as a plain SHA-256 can be converted without knowing it.
    pub fn credential_hash(&self, token: &str) -> String {
        self.credential_hash_of_sha256(&crate::secret::hash_token(token))
    }

    /// [`AuditKey::credential_hash`] of a credential known only by its SHA-256 (hex).
    pub fn credential_hash_of_sha256(&self, sha256_hex: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.credential);
        ctx.update(CREDENTIAL_DOMAIN);
        ctx.update(sha256_hex.as_bytes());
        hex(ctx.sign().as_ref())
    }

    /// The secret mixed into every local password hash (Argon2's `secret`), so a hash written
    /// into the database without this key matches no password.
    pub fn password_pepper(&self) -> [u8; SEED_LEN] {
        self.pepper
    }

    /// Seals a small secret kept in the database (a TOTP secret): AES-256-GCM under a key
    /// derived from this seed, with `bound_to` (the record's id) as associated data, so a sealed
    /// value copied to another record does not open. Base64 of version, nonce and ciphertext.
    pub fn seal(&self, bound_to: &str, secret: &[u8]) -> Result<String, AuditKeyError> {
        let nonce = crate::secret::random_bytes::<12>().map_err(|_| AuditKeyError::Derive)?;
        let mut sealed = secret.to_vec();
        self.seal
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(bound_to.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| AuditKeyError::Derive)?;
        let mut out = vec![SEAL_VERSION];
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Opens what [`AuditKey::seal`] sealed for `bound_to`; `None` if it was sealed under
    /// another key, for another record, or altered.
    pub fn open(&self, bound_to: &str, sealed: &str) -> Option<Vec<u8>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        let (&version, rest) = bytes.split_first()?;
        if version != SEAL_VERSION || rest.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .seal
            .open_in_place(
                nonce,
                ring::aead::Aad::from(bound_to.as_bytes()),
                &mut buffer,
            )
            .ok()?;
        Some(plain.to_vec())
    }

    /// The Ed25519 signature of `message`, base64.
    pub(crate) fn sign(&self, message: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.signer.sign(message).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_hashes_are_keyed_and_convert_from_plain_sha256() {
        let a = AuditKey::from_seed([7; SEED_LEN]).unwrap();
        let b = AuditKey::from_seed([8; SEED_LEN]).unwrap();
        let token = "latch_key_0123";
        assert_eq!(a.credential_hash(token), a.credential_hash(token));
        assert_ne!(a.credential_hash(token), b.credential_hash(token));
        assert_ne!(a.credential_hash(token), crate::secret::hash_token(token));
        assert_ne!(
            a.credential_hash(token),
            a.entry_mac(&crate::secret::hash_token(token))
        );
        assert_eq!(
            a.credential_hash_of_sha256(&crate::secret::hash_token(token)),
            a.credential_hash(token)
        );
    }

    #[test]
    fn sealed_secrets_open_only_with_the_key_for_their_record() {
        let a = AuditKey::from_seed([7; SEED_LEN]).unwrap();
        let b = AuditKey::from_seed([8; SEED_LEN]).unwrap();
        let sealed = a.seal("usr_1", b"totp secret bytes").unwrap();
        assert_ne!(
            a.seal("usr_1", b"totp secret bytes").unwrap(),
            sealed,
            "fresh nonce"
        );
        assert_eq!(a.open("usr_1", &sealed).unwrap(), b"totp secret bytes");
        assert!(a.open("usr_2", &sealed).is_none(), "bound to its record");
        assert!(b.open("usr_1", &sealed).is_none(), "another key");
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert!(a.open("usr_1", &altered).is_none(), "altered");
        assert!(a.open("usr_1", "not base64!").is_none());
    }

    #[test]
    fn the_same_seed_gives_the_same_keys_and_another_seed_others() {
        let a = AuditKey::from_seed([7; SEED_LEN]).unwrap();
        let again = AuditKey::from_seed([7; SEED_LEN]).unwrap();
        let b = AuditKey::from_seed([8; SEED_LEN]).unwrap();
        assert_eq!(a.public_key(), again.public_key());
        assert_eq!(a.entry_mac("ab"), again.entry_mac("ab"));
        assert_ne!(a.public_key(), b.public_key());
        assert_ne!(a.entry_mac("ab"), b.entry_mac("ab"));
        assert_eq!(a.key_id().len(), 16);
        assert!(!format!("{a:?}").contains("seed"));
    }

    #[test]
    fn a_mac_is_valid_only_for_its_hash_and_key() {
        let key = AuditKey::generate().unwrap();
        let other = AuditKey::generate().unwrap();
        let mac = key.entry_mac("00ff");
        assert!(key.entry_mac_is_valid("00ff", &mac));
        assert!(!key.entry_mac_is_valid("00fe", &mac));
        assert!(!other.entry_mac_is_valid("00ff", &mac));
        assert!(!key.entry_mac_is_valid("00ff", "zz"));
        assert!(!key.entry_mac_is_valid("00ff", ""));
    }

    #[test]
    fn the_key_file_is_private_and_never_replaced() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        assert!(AuditKey::load(&path).unwrap().is_none());
        let key = AuditKey::generate().unwrap();
        key.write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let loaded = AuditKey::load(&path).unwrap().unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        assert!(AuditKey::generate().unwrap().write_new(&path).is_err());
        assert_eq!(
            AuditKey::load(&path).unwrap().unwrap().public_key(),
            key.public_key()
        );
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            AuditKey::load(&path),
            Err(AuditKeyError::Invalid(_))
        ));
    }
}
