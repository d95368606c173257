//! Identity secrets: sealed under their organization's data key (bound to the identity's id),
//! random passwords from ring's generator under a policy, and the keyed hashes (HMAC-SHA-256
//! under a key derived from the data key) that let a rotation refuse one of the last 10
//! passwords without keeping any of them.

use std::sync::Arc;

use latch_common::names::ValidationError;
use ring::hmac;

use super::envelope::SecretKey;
use super::open_data_key;
use crate::{Control, ControlError};

/// Lower-case letters of generated passwords.
const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
/// Upper-case letters.
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// Digits.
const DIGITS: &[u8] = b"0123456789";
/// Symbols: none that a shell, a CSV file or `chpasswd` treats specially (no quotes,
/// backslash, colon, comma, dollar, space).
const SYMBOLS: &[u8] = b"!#%+-.=?@^_~";

/// Shortest password the policy allows (generated or given).
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password the policy allows.
pub const MAX_PASSWORD_LEN: usize = 128;

/// How generated passwords look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Characters (12–128).
    pub length: usize,
}

impl Default for PasswordPolicy {
    /// 24 characters: about 148 bits from 74 symbols.
    fn default() -> Self {
        Self { length: 24 }
    }
}

/// Which of the four classes (lower, upper, digit, symbol) `password` uses.
fn classes(password: &str) -> usize {
    let bytes = password.as_bytes();
    [LOWER, UPPER, DIGITS, SYMBOLS]
        .iter()
        .filter(|class| bytes.iter().any(|b| class.contains(b)))
        .count()
}

impl PasswordPolicy {
    /// A random password of this policy: every class at least once, each character drawn
    /// uniformly (rejection sampling) from ring's system generator.
    pub fn generate(&self) -> Result<String, ControlError> {
        let alphabet: Vec<u8> = [LOWER, UPPER, DIGITS, SYMBOLS].concat();
        let limit = 256 - (256 % alphabet.len());
        loop {
            let mut password = String::with_capacity(self.length);
            while password.len() < self.length {
                for byte in crate::secret::random_bytes::<64>()? {
                    if usize::from(byte) < limit && password.len() < self.length {
                        password.push(char::from(alphabet[usize::from(byte) % alphabet.len()]));
                    }
                }
            }
            if classes(&password) == 4 {
                return Ok(password);
            }
        }
    }

    /// Checks a password an admin gives: length, at least three classes, printable ASCII
    /// without space or colon.
    pub fn check(&self, password: &str) -> Result<(), ValidationError> {
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
            return Err(ValidationError::new(
                "password",
                format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters long"),
            ));
        }
        if password.bytes().any(|b| !b.is_ascii_graphic() || b == b':') {
            return Err(ValidationError::new(
                "password",
                "must be printable ASCII without spaces or ':'",
            ));
        }
        if classes(password) < 3 {
            return Err(ValidationError::new(
                "password",
                "must mix at least three of: lower-case, upper-case, digits, symbols",
            ));
        }
        Ok(())
    }
}

/// An organization's data key, ready to seal and open its identities' secrets.
pub(crate) struct DataKey(SecretKey);

impl DataKey {
    /// Seals `secret` for identity `identity_id`.
    pub(crate) fn seal(&self, identity_id: &str, secret: &str) -> Result<String, ControlError> {
        self.0
            .seal(identity_id, secret.as_bytes())
            .map_err(|e| ControlError::Internal(format!("cannot seal a vault secret: {e}")))
    }

    /// Opens the sealed secret of identity `identity_id`.
    pub(crate) fn open(&self, identity_id: &str, sealed: &str) -> Result<String, ControlError> {
        let bytes = self.0.open(identity_id, sealed).map_err(|e| {
            ControlError::Internal(format!(
                "the secret of identity {identity_id} does not open: {e}"
            ))
        })?;
        String::from_utf8(bytes).map_err(|_| {
            ControlError::Internal(format!(
                "the secret of identity {identity_id} is not text; the record was altered"
            ))
        })
    }

    /// The keyed hash of a password of identity `identity_id` (for the reuse history): HMAC-SHA-256
    /// under a key derived from the data key for this purpose only, hex.
    pub(crate) fn history_hash(&self, identity_id: &str, password: &str) -> String {
        let root = hmac::Key::new(hmac::HMAC_SHA256, self.0.expose_secret_bytes());
        let derived = hmac::sign(&root, b"latch vault password history v1");
        let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        let mut context = hmac::Context::with_key(&key);
        context.update(identity_id.as_bytes());
        context.update(&[0]);
        context.update(password.as_bytes());
        hex::encode(context.sign().as_ref())
    }
}

impl Control {
    /// The master key this control plane was started with.
    pub(crate) fn master_key(&self) -> Result<&Arc<SecretKey>, ControlError> {
        self.master_key.as_ref().ok_or_else(|| {
            ControlError::Internal(
                "this control plane was started without the vault's master key; start it from its data directory (`latch-control serve`)".into(),
            )
        })
    }

    /// The data key of organization `organization_id`.
    pub(crate) async fn data_key(&self, organization_id: &str) -> Result<DataKey, ControlError> {
        let master = self.master_key()?;
        let organization = self
            .store
            .organizations()
            .await?
            .into_iter()
            .find(|o| o.id == organization_id)
            .ok_or_else(|| {
                ControlError::Internal(format!(
                    "Organization secret not found: organization {organization_id} has no data key; restore the organizations table from a backup"
                ))
            })?;
        open_data_key(master, &organization)
            .map(DataKey)
            .map_err(|e| {
                ControlError::Internal(format!(
                    "organization {organization_id}'s data key does not open: {e}"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_passwords_follow_the_policy() {
        let policy = PasswordPolicy::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let password = policy.generate().unwrap();
            assert_eq!(password.len(), 24);
            assert_eq!(classes(&password), 4);
            policy.check(&password).unwrap();
            assert!(seen.insert(password), "a password came twice");
        }
    }

    #[test]
    fn given_passwords_are_checked() {
        let policy = PasswordPolicy::default();
        assert!(policy.check("Short1!").is_err());
        assert!(policy.check("alllowercaseletters").is_err());
        assert!(policy.check("has space Inside1").is_err());
        assert!(policy.check("has:colon:Inside1").is_err());
        assert!(policy.check("Good-Password-2026").is_ok());
    }

    #[test]
    fn history_hashes_are_keyed_and_bound_to_the_identity() {
        let a = DataKey(SecretKey::generate("dk_a".into()).unwrap());
        let b = DataKey(SecretKey::generate("dk_b".into()).unwrap());
        let hash = a.history_hash("idn_1", "Good-Password-2026");
        assert_eq!(hash, a.history_hash("idn_1", "Good-Password-2026"));
        assert_ne!(hash, a.history_hash("idn_2", "Good-Password-2026"));
        assert_ne!(hash, b.history_hash("idn_1", "Good-Password-2026"));
        assert!(!hash.contains("Good-Password"));
        assert_eq!(hash.len(), 64);
    }
}
