//! Turning a plaintext password into the SHA-512 crypt hash that travels to the host. The
//! plaintext never leaves this function: it is not stored, logged or sent on.

use latch_common::names::{ValidationError, validate_password_hash};
use sha_crypt::{PasswordHasher, ShaCrypt};

use crate::secret::random_bytes;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Hashes `password` with SHA-512 crypt and a fresh random salt (the `$6$` format `chpasswd -e`
/// accepts).
pub fn hash_password(password: &str) -> Result<String, ValidationError> {
    if password.len() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(ValidationError::new(
            "password",
            format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes long"),
        ));
    }
    if password.contains(['\0', '\n', '\r']) {
        return Err(ValidationError::new(
            "password",
            "must not contain NUL or line breaks",
        ));
    }
    let salt = random_bytes::<12>().map_err(|e| ValidationError::new("password", e.to_string()))?;
    let hash = ShaCrypt::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| ValidationError::new("password", format!("cannot be hashed: {e}")))?
        .to_string();
    validate_password_hash(&hash)?;
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha_crypt::PasswordVerifier;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$6$"), "{a}");
        assert_ne!(a, b);
        assert!(
            ShaCrypt::default()
                .verify_password(b"correct horse battery", a.as_str())
                .is_ok()
        );
        assert!(
            ShaCrypt::default()
                .verify_password(b"wrong", a.as_str())
                .is_err()
        );
    }

    #[test]
    fn refuses_short_or_multiline_passwords() {
        assert!(hash_password("short").is_err());
        assert!(hash_password("long enough\nroot::0:0").is_err());
    }
}
