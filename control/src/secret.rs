//! Random secrets (tokens, credentials, salts) and the hashes under which they are stored.
//!
//! Tokens carry a prefix naming what they are (`latch_admin_`, `latch_enroll_`, `latch_host_`) so
//! secret scanners and people can tell them apart. Only their SHA-256 is stored; look-ups are by
//! hash, so comparing a presented token never compares secret bytes directly.

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// The operating system's random generator failed.
#[derive(Debug, Error)]
#[error("the system random generator failed; the host's entropy source is broken")]
pub struct RandomError;

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(bytes)
}

/// A new token: `prefix` followed by 256 random bits in hex.
pub fn new_token(prefix: &str) -> Result<String, RandomError> {
    Ok(format!("{prefix}{}", hex(&random_bytes::<32>()?)))
}

/// The stored form of a token: SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let a = new_token("latch_host_").unwrap();
        let b = new_token("latch_host_").unwrap();
        assert!(a.starts_with("latch_host_"));
        assert_eq!(a.len(), "latch_host_".len() + 64);
        assert_ne!(a, b);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
