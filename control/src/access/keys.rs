//! Temporary SSH keys: when a requester gives no public key, Latch makes a key pair for the
//! grant and hands the private key over once. The control plane keeps nothing of it but the
//! public key, which goes to the host (or into a certificate).

use crate::ControlError;
use crate::access::certificates::{CertificateError, new_ed25519};

/// A key pair made for one grant.
pub struct TemporaryKey {
    /// The private key in OpenSSH format, unencrypted (`-----BEGIN OPENSSH PRIVATE KEY-----`),
    /// wiped from memory when dropped. Shown to the requester once; never stored or logged.
    pub private_openssh: zeroize::Zeroizing<String>,
    /// The public key as an OpenSSH line (`ssh-ed25519 AAAA… COMMENT`).
    pub public_openssh: String,
}

impl std::fmt::Debug for TemporaryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporaryKey")
            .field("private_openssh", &"<redacted>")
            .field("public_openssh", &self.public_openssh)
            .finish()
    }
}

/// Makes a new Ed25519 key pair with `comment` (at most 256 bytes, no control character or
/// `"`: it ends up in `authorized_keys`).
pub fn generate_temporary_key(comment: &str) -> Result<TemporaryKey, ControlError> {
    if comment.len() > 256 || comment.chars().any(|c| c.is_control() || c == '"') {
        return Err(latch_common::names::ValidationError::new(
            "comment",
            "must be at most 256 bytes without control characters or '\"'",
        )
        .into());
    }
    let key = new_ed25519(comment)?;
    let private_openssh = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| CertificateError::Encoding(format!("encode the private key: {e}")))?;
    let public_openssh = key
        .public_key()
        .to_openssh()
        .map_err(|e| CertificateError::Encoding(format!("encode the public key: {e}")))?;
    Ok(TemporaryKey {
        private_openssh,
        public_openssh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_an_unencrypted_ed25519_pair_that_matches() {
        let key = generate_temporary_key("ar_1 alice").unwrap();
        assert!(
            key.private_openssh
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        let private = ssh_key::PrivateKey::from_openssh(key.private_openssh.as_bytes()).unwrap();
        assert!(!private.is_encrypted());
        assert_eq!(private.algorithm(), ssh_key::Algorithm::Ed25519);
        assert_eq!(
            private.public_key().to_openssh().unwrap(),
            key.public_openssh
        );
        assert!(key.public_openssh.starts_with("ssh-ed25519 "));
        assert!(key.public_openssh.ends_with(" ar_1 alice"));
        latch_common::names::validate_ssh_public_key(&key.public_openssh).unwrap();
        assert!(!format!("{key:?}").contains("PRIVATE"));
        let other = generate_temporary_key("ar_1 alice").unwrap();
        assert_ne!(other.public_openssh, key.public_openssh);
        assert!(generate_temporary_key("a\nb").is_err());
    }

    /// The real `ssh-keygen` reads the private key and derives the same public key.
    #[test]
    fn ssh_keygen_reads_the_private_key() {
        if !std::path::Path::new("/usr/bin/ssh-keygen").is_file() {
            eprintln!("ssh-keygen is not installed; skipped");
            return;
        }
        let key = generate_temporary_key("tmp").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        crate::files::write_file(
            &path,
            key.private_openssh.as_bytes(),
            0o600,
            crate::files::Existing::Refuse,
        )
        .unwrap();
        let out = std::process::Command::new("/usr/bin/ssh-keygen")
            .args(["-y", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let derived = String::from_utf8(out.stdout).unwrap();
        let blob = |line: &str| line.split(' ').nth(1).unwrap_or_default().to_owned();
        assert_eq!(blob(derived.trim()), blob(&key.public_openssh));
    }
}
