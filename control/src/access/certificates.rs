//! Latch as an SSH user certificate authority. The control plane keeps one Ed25519 user-CA key
//! (`user_ca.key` in the data directory, OpenSSH format, mode 0600, made once and pinned in the
//! database like the job-signing key: [`crate::datadir`]); hosts enrolled with `--ssh-ca` get
//! its public key and trust it in sshd (`TrustedUserCAKeys`, with an `AuthorizedPrincipalsFile`
//! per account written by create-account jobs). A grant then gets an OpenSSH user certificate
//! valid exactly for its window ([`Control::issue_user_certificate`]): nothing is left on the
//! host to clean up but the principals file, which revocation removes with the account.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use latch_common::names::{ValidationError, validate_principal};
use ring::rand::SecureRandom as _;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};
use thiserror::Error;

use crate::{Control, ControlError};

/// The comment of the CA's public key (what `ssh-keygen -l` shows).
pub const USER_CA_COMMENT: &str = "latch-user-ca";

/// Most principals one certificate may carry.
pub const MAX_CERT_PRINCIPALS: usize = latch_common::job::MAX_PRINCIPALS;

/// Longest key id accepted (sshd logs it at each login).
pub const MAX_KEY_ID_LEN: usize = 256;

/// The extensions `ssh-keygen -s` gives a user certificate by default (no `force-command`, no
/// `source-address`: those would be critical options, and none is set).
pub const DEFAULT_EXTENSIONS: [&str; 5] = [
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// Why the user CA could not be loaded, made or used.
#[derive(Debug, Error)]
pub enum CertificateError {
    /// Reading or writing the key file failed.
    #[error("cannot {action} the SSH user CA key {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not hold an unencrypted OpenSSH Ed25519 private key.
    #[error(
        "{0} does not hold an unencrypted OpenSSH Ed25519 private key; restore it from backup — hosts enrolled with --ssh-ca trust its public key"
    )]
    Invalid(String),
    /// The system random generator failed.
    #[error("cannot generate an SSH key: the system random generator failed")]
    Random,
    /// Encoding or signing failed.
    #[error("cannot {0}")]
    Encoding(String),
}

impl From<CertificateError> for ControlError {
    fn from(e: CertificateError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

/// 32 random bytes from the system generator.
pub(crate) fn random_seed() -> Result<[u8; 32], CertificateError> {
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| CertificateError::Random)?;
    Ok(seed)
}

/// A new Ed25519 private key with `comment`.
pub(crate) fn new_ed25519(comment: &str) -> Result<PrivateKey, CertificateError> {
    let seed = zeroize::Zeroizing::new(random_seed()?);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    Ok(key)
}

/// The control plane's SSH user certificate authority.
pub struct UserCa {
    key: PrivateKey,
}

impl std::fmt::Debug for UserCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl UserCa {
    /// A new random CA key, kept in memory only (tests and embedding).
    pub fn generate() -> Result<UserCa, CertificateError> {
        Ok(UserCa {
            key: new_ed25519(USER_CA_COMMENT)?,
        })
    }

    /// Loads the CA key at `path`; `Ok(None)` if there is no such file.
    pub fn load(path: &Path) -> Result<Option<UserCa>, CertificateError> {
        let shown = path.display().to_string();
        let text = match std::fs::read(path) {
            Ok(text) => zeroize::Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CertificateError::Io {
                    action: "read",
                    path: shown,
                    source,
                });
            }
        };
        let key = PrivateKey::from_openssh(&*text)
            .ok()
            .filter(|key| !key.is_encrypted() && key.algorithm() == ssh_key::Algorithm::Ed25519)
            .ok_or(CertificateError::Invalid(shown))?;
        Ok(Some(UserCa { key }))
    }

    /// Makes a new CA key and writes it to `path` (OpenSSH format, unencrypted, mode 0600,
    /// atomically); refuses to replace an existing file.
    pub fn create(path: &Path) -> Result<UserCa, CertificateError> {
        let ca = UserCa::generate()?;
        let text = ca
            .key
            .to_openssh(LineEnding::LF)
            .map_err(|e| CertificateError::Encoding(format!("encode the CA key: {e}")))?;
        crate::files::write_file(path, text.as_bytes(), 0o600, crate::files::Existing::Refuse)
            .map_err(|source| CertificateError::Io {
                action: "create",
                path: path.display().to_string(),
                source,
            })?;
        Ok(ca)
    }

    /// The CA's public key as an OpenSSH line (`ssh-ed25519 AAAA… latch-user-ca`): what sshd's
    /// `TrustedUserCAKeys` holds.
    pub fn public_key(&self) -> Result<String, CertificateError> {
        self.key
            .public_key()
            .to_openssh()
            .map_err(|e| CertificateError::Encoding(format!("encode the CA public key: {e}")))
    }

    /// The CA key's fingerprint (`SHA256:…`, as `ssh-keygen -l` prints it).
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Signs an OpenSSH user certificate for `public_key` (an OpenSSH public key line; options
    /// are refused) with `key_id`, valid for exactly `principals` from `valid_after` until
    /// `valid_before` (to the second), with `ssh-keygen -s`'s default extensions and no
    /// critical option. Returns the certificate line (`ssh-ed25519-cert-v01@openssh.com …`).
    pub fn issue(
        &self,
        public_key: &str,
        key_id: &str,
        principals: &[String],
        valid_after: DateTime<Utc>,
        valid_before: DateTime<Utc>,
    ) -> Result<String, IssueError> {
        latch_common::names::validate_ssh_public_key(public_key.trim())?;
        let subject = PublicKey::from_openssh(public_key.trim())
            .map_err(|e| ValidationError::new("public_key", format!("is not readable: {e}")))?;
        if key_id.is_empty()
            || key_id.len() > MAX_KEY_ID_LEN
            || key_id.chars().any(char::is_control)
        {
            return Err(ValidationError::new(
                "key_id",
                format!("must be 1 to {MAX_KEY_ID_LEN} bytes without control characters"),
            )
            .into());
        }
        if principals.is_empty() || principals.len() > MAX_CERT_PRINCIPALS {
            return Err(ValidationError::new(
                "principals",
                format!(
                    "a certificate needs 1 to {MAX_CERT_PRINCIPALS} principals (none would make it valid for every account)"
                ),
            )
            .into());
        }
        for principal in principals {
            validate_principal(principal)?;
        }
        let (after, before) = (valid_after.timestamp(), valid_before.timestamp());
        let (Ok(after), Ok(before)) = (u64::try_from(after), u64::try_from(before)) else {
            return Err(ValidationError::new("valid_after", "must be after 1970").into());
        };
        if before <= after {
            return Err(ValidationError::new(
                "valid_before",
                "must be later than valid_after (to the second)",
            )
            .into());
        }
        let nonce = random_seed()?;
        let sign_error = |e: ssh_key::Error| CertificateError::Encoding(format!("sign: {e}"));
        let mut builder = Builder::new(nonce.to_vec(), subject.key_data().clone(), after, before)
            .map_err(sign_error)?;
        builder
            .serial(u64::from_be_bytes([
                nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7],
            ]))
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(key_id))
            .map_err(sign_error)?;
        for principal in principals {
            builder.valid_principal(principal).map_err(sign_error)?;
        }
        for extension in DEFAULT_EXTENSIONS {
            builder.extension(extension, "").map_err(sign_error)?;
        }
        let certificate = builder.sign(&self.key).map_err(sign_error)?;
        Ok(certificate
            .to_openssh()
            .map_err(|e| CertificateError::Encoding(format!("encode the certificate: {e}")))?)
    }
}

/// Why a certificate was not issued: the request was refused, or the CA failed.
#[derive(Debug, Error)]
pub enum IssueError {
    /// The public key, key id, principals or window were refused.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] CertificateError),
}

impl From<IssueError> for ControlError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Invalid(e) => ControlError::Invalid(e),
            IssueError::Ca(e) => e.into(),
        }
    }
}

impl Control {
    /// Uses `ca` as the SSH user CA (the data directory's `user_ca.key`, see
    /// [`crate::datadir::DataDir::user_ca`]) instead of the in-memory one [`Control::new`] makes.
    pub fn with_user_ca(mut self, ca: UserCa) -> Self {
        self.user_ca = Some(Arc::new(ca));
        self
    }

    fn user_ca(&self) -> Result<&UserCa, ControlError> {
        self.user_ca.as_deref().ok_or_else(|| {
            ControlError::Internal(
                "this control plane has no SSH user CA (its key could not be made at start)".into(),
            )
        })
    }

    /// The SSH user CA's public key (an OpenSSH public key line), which hosts enrolled with
    /// `--ssh-ca` trust in sshd.
    pub fn user_ca_public_key(&self) -> Result<String, ControlError> {
        Ok(self.user_ca()?.public_key()?)
    }

    /// Signs an OpenSSH user certificate (see [`UserCa::issue`]) for `public_key`, valid for
    /// `principals` from `valid_after` to `valid_before`; `key_id` names it in sshd's logs.
    /// Returns the certificate line, to be saved beside the private key as `…-cert.pub`.
    pub fn issue_user_certificate(
        &self,
        public_key: &str,
        key_id: &str,
        principals: &[String],
        valid_after: DateTime<Utc>,
        valid_before: DateTime<Utc>,
    ) -> Result<String, ControlError> {
        Ok(self
            .user_ca()?
            .issue(public_key, key_id, principals, valid_after, valid_before)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::Certificate;
    use std::os::unix::fs::MetadataExt as _;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn subject() -> String {
        crate::access::keys::generate_temporary_key("alice@laptop")
            .unwrap()
            .public_openssh
    }

    #[test]
    fn issues_a_certificate_for_exactly_the_principals_and_window() {
        let ca = UserCa::generate().unwrap();
        let (after, before) = (at("2026-11-25T10:00:00Z"), at("2026-11-25T12:00:00Z"));
        let line = ca
            .issue(
                &subject(),
                "ar_123 alice",
                &["p-test".into(), "alice".into()],
                after,
                before,
            )
            .unwrap();
        assert!(
            line.starts_with("ssh-ed25519-cert-v01@openssh.com "),
            "{line}"
        );
        let cert = Certificate::from_openssh(&line).unwrap();
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.key_id(), "ar_123 alice");
        assert_eq!(cert.valid_principals(), ["p-test", "alice"]);
        assert_eq!(cert.valid_after(), after.timestamp() as u64);
        assert_eq!(cert.valid_before(), before.timestamp() as u64);
        assert!(cert.critical_options().is_empty(), "no force-command");
        let extensions: Vec<&str> = cert.extensions().keys().map(String::as_str).collect();
        let mut expected = DEFAULT_EXTENSIONS.to_vec();
        expected.sort_unstable();
        assert_eq!(extensions, expected);
        assert_eq!(
            cert.public_key(),
            PublicKey::from_openssh(&subject_key_of(&line))
                .unwrap()
                .key_data()
        );
        // Signed by the CA: valid inside the window against its fingerprint, not outside it,
        // and not against another CA.
        let fingerprint = ca.key.public_key().fingerprint(HashAlg::Sha256);
        let inside = after.timestamp() as u64 + 60;
        cert.validate_at(inside, [&fingerprint]).unwrap();
        assert!(
            cert.validate_at(before.timestamp() as u64 + 1, [&fingerprint])
                .is_err()
        );
        let other = UserCa::generate().unwrap();
        let other_fingerprint = other.key.public_key().fingerprint(HashAlg::Sha256);
        assert!(cert.validate_at(inside, [&other_fingerprint]).is_err());
    }

    /// The subject key of a certificate line, as a plain public key line.
    fn subject_key_of(line: &str) -> String {
        let cert = Certificate::from_openssh(line).unwrap();
        PublicKey::new(cert.public_key().clone(), "")
            .to_openssh()
            .unwrap()
    }

    #[test]
    fn refuses_what_would_widen_or_forge_a_certificate() {
        let ca = UserCa::generate().unwrap();
        let key = subject();
        let (after, before) = (at("2026-11-25T10:00:00Z"), at("2026-11-25T12:00:00Z"));
        let ok = |principals: &[&str]| -> Vec<String> {
            principals.iter().map(|p| p.to_string()).collect()
        };
        let cases: Vec<(&str, Result<String, IssueError>)> = vec![
            ("principals", ca.issue(&key, "id", &[], after, before)),
            (
                "principals",
                ca.issue(&key, "id", &ok(&["a,b"]), after, before),
            ),
            (
                "principals",
                ca.issue(&key, "id", &ok(&["*"]), after, before),
            ),
            (
                "principals",
                ca.issue(&key, "id", &ok(&["a"; 9]), after, before),
            ),
            ("key_id", ca.issue(&key, "", &ok(&["a"]), after, before)),
            ("key_id", ca.issue(&key, "a\nb", &ok(&["a"]), after, before)),
            (
                "valid_before",
                ca.issue(&key, "id", &ok(&["a"]), before, after),
            ),
            (
                "ssh_keys",
                ca.issue(
                    &format!("command=\"/bin/sh\" {key}"),
                    "id",
                    &ok(&["a"]),
                    after,
                    before,
                ),
            ),
            (
                "ssh_keys",
                ca.issue("ssh-ed25519 AAAA", "id", &ok(&["a"]), after, before),
            ),
        ];
        for (field, result) in cases {
            match result {
                Err(IssueError::Invalid(e)) => assert_eq!(e.field, field, "{e}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_ca_key_persists_privately_in_openssh_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user_ca.key");
        assert!(UserCa::load(&path).unwrap().is_none());
        let first = UserCa::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let again = UserCa::load(&path).unwrap().unwrap();
        assert_eq!(again.public_key().unwrap(), first.public_key().unwrap());
        assert!(first.public_key().unwrap().ends_with(" latch-user-ca"));
        assert!(UserCa::create(&path).is_err(), "never replaced");
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            UserCa::load(&path),
            Err(CertificateError::Invalid(_))
        ));
    }

    /// `ssh-keygen -L` (the installed OpenSSH) reads the certificate as a user certificate with
    /// the principals and window, signed by the CA key.
    #[test]
    fn ssh_keygen_reads_the_certificate() {
        let Ok(keygen) = which("ssh-keygen") else {
            eprintln!("ssh-keygen is not installed; skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = UserCa::create(&dir.path().join("user_ca.key")).unwrap();
        let line = ca
            .issue(
                &subject(),
                "grant-7",
                &["p-test".into()],
                at("2026-11-25T10:00:00Z"),
                at("2026-11-25T12:00:00Z"),
            )
            .unwrap();
        let cert_path = dir.path().join("id-cert.pub");
        std::fs::write(&cert_path, format!("{line}\n")).unwrap();
        let out = std::process::Command::new(keygen)
            .args(["-L", "-f"])
            .arg(&cert_path)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let shown = String::from_utf8(out.stdout).unwrap();
        assert!(
            shown.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
            "{shown}"
        );
        assert!(shown.contains("Key ID: \"grant-7\""), "{shown}");
        assert!(
            shown.contains("Valid: from 2026-11-25T10:00:00 to 2026-11-25T12:00:00"),
            "{shown}"
        );
        assert!(
            shown.contains("Principals: \n                p-test\n"),
            "{shown}"
        );
        assert!(shown.contains("Critical Options: (none)"), "{shown}");
        assert!(shown.contains("permit-pty"), "{shown}");
        assert!(
            shown.contains(&format!("Signing CA: ED25519 {}", ca.fingerprint())),
            "{shown}"
        );
    }

    fn which(name: &str) -> Result<std::path::PathBuf, ()> {
        ["/usr/bin", "/bin", "/usr/local/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
            .ok_or(())
    }

    #[test]
    fn control_issues_with_its_ca() {
        let ca = UserCa::generate().unwrap();
        let public = ca.public_key().unwrap();
        let store: Arc<dyn crate::store::Store> = Arc::new(
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(crate::store::SqliteStore::open_in_memory())
                .unwrap(),
        );
        let control = Control::new(
            store,
            crate::ControlConfig::default(),
            crate::signing::JobSigner::generate().unwrap(),
        )
        .with_user_ca(ca);
        assert_eq!(control.user_ca_public_key().unwrap(), public);
        let line = control
            .issue_user_certificate(
                &subject(),
                "id",
                &["p".into()],
                at("2026-11-25T10:00:00Z"),
                at("2026-11-25T10:05:00Z"),
            )
            .unwrap();
        assert!(line.starts_with("ssh-ed25519-cert-v01@openssh.com "));
        let refused = control.issue_user_certificate(
            &subject(),
            "id",
            &[],
            at("2026-11-25T10:00:00Z"),
            at("2026-11-25T10:05:00Z"),
        );
        assert!(matches!(refused, Err(ControlError::Invalid(_))));
    }
}
