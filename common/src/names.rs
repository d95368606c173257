//! Validation of names, shells, SSH public keys and password hashes (DESIGN.md §3 rule 8).
//!
//! Everything here guards a colon-separated file (`/etc/passwd`, `/etc/group`, `/etc/shadow`),
//! a line-oriented stdin (`chpasswd -e`) or an `authorized_keys` file: one stray `:`, newline or
//! NUL would forge a record, and a leading `-` would turn a name into an option.

use base64::Engine as _;
use thiserror::Error;

/// Longest user or group name accepted (shadow-utils' default limit on Debian).
pub const MAX_NAME_LEN: usize = 32;

/// Longest SSH public key line accepted (an 16384-bit RSA key is about 2.8 KiB).
pub const MAX_SSH_KEY_LEN: usize = 8192;

/// Account names that are never created, changed or deleted through Latch, whatever the host allows.
pub const RESERVED_USER_NAMES: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "systemd-network",
    "systemd-resolve",
    "systemd-timesync",
    "messagebus",
    "sshd",
    "_apt",
    "polkitd",
    "postgres",
    "latch-managed",
];

/// SSH public key algorithms Latch installs.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Why a value was refused. The message names the rule so the caller knows what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The request field that failed (`user`, `group`, `ssh_keys`, …).
    pub field: &'static str,
    /// What rule it broke, in words a person can act on.
    pub reason: String,
}

impl ValidationError {
    /// A refusal of `field` for `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Checks `name` against `^[a-z_][a-z0-9_-]{0,31}$`, reporting failures against `field`.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!(
                "is {} bytes long; at most {MAX_NAME_LEN} are allowed",
                name.len()
            ),
        ));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first == '_') {
        return Err(ValidationError::new(
            field,
            "must start with a lowercase letter or '_' (pattern ^[a-z_][a-z0-9_-]{0,31}$)",
        ));
    }
    if let Some(bad) =
        chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(ValidationError::new(
            field,
            format!(
                "contains {:?}; only a-z, 0-9, '_' and '-' are allowed (pattern ^[a-z_][a-z0-9_-]{{0,31}}$)",
                bad
            ),
        ));
    }
    Ok(())
}

/// Checks a user name: the name pattern, and not one of [`RESERVED_USER_NAMES`].
pub fn validate_user_name(name: &str) -> Result<(), ValidationError> {
    validate_name("user", name)?;
    if RESERVED_USER_NAMES.contains(&name) {
        return Err(ValidationError::new(
            "user",
            format!("'{name}' is a reserved system account; Latch never manages it"),
        ));
    }
    Ok(())
}

/// Checks a group name against the name pattern. Whether the group may be granted is the host's
/// decision (its `allowed_groups`), not the API's.
pub fn validate_group_name(name: &str) -> Result<(), ValidationError> {
    validate_name("group", name)
}

/// Checks a login shell: an absolute path of plain characters (the agent also requires it to be
/// listed in the host's `/etc/shells`).
pub fn validate_shell(shell: &str) -> Result<(), ValidationError> {
    if !shell.starts_with('/') || shell.len() > 255 {
        return Err(ValidationError::new(
            "shell",
            "must be an absolute path of at most 255 bytes",
        ));
    }
    if shell.split('/').any(|part| part == "..") {
        return Err(ValidationError::new("shell", "must not contain '..'"));
    }
    if !shell
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.' | '+'))
    {
        return Err(ValidationError::new(
            "shell",
            "may contain only ASCII letters, digits and / _ - . +",
        ));
    }
    Ok(())
}

/// Checks one `authorized_keys` line: `TYPE BASE64 [COMMENT]`, no options, no control characters,
/// and a blob that decodes and names the same key type.
pub fn validate_ssh_public_key(key: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "ssh_keys";
    if key.len() > MAX_SSH_KEY_LEN {
        return Err(ValidationError::new(
            FIELD,
            format!("key is longer than {MAX_SSH_KEY_LEN} bytes"),
        ));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(ValidationError::new(
            FIELD,
            "key contains a newline or another control character; give one key per line",
        ));
    }
    let mut parts = key.splitn(3, ' ');
    let key_type = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default();
    let comment = parts.next().unwrap_or_default();
    if !SSH_KEY_TYPES.contains(&key_type) {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "key must start with its type ({}); options such as 'command=' are not accepted",
                SSH_KEY_TYPES.join(", ")
            ),
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| ValidationError::new(FIELD, "key data is not valid base64"))?;
    // The blob starts with a uint32 length and the key type again (RFC 4253 §6.6).
    let embedded_type = decoded
        .get(..4)
        .and_then(|len| {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            decoded.get(4..4usize.checked_add(len)?)
        })
        .ok_or_else(|| ValidationError::new(FIELD, "key data is truncated"))?;
    if embedded_type != key_type.as_bytes() {
        return Err(ValidationError::new(
            FIELD,
            "key data does not match the key type",
        ));
    }
    if comment.len() > 256 || comment.contains('"') {
        return Err(ValidationError::new(
            FIELD,
            "key comment must be at most 256 bytes without '\"'",
        ));
    }
    Ok(())
}

/// Checks a pre-hashed password: a SHA-512 crypt string (`$6$[rounds=N$]salt$hash`) with no
/// character that could end a shadow field or a `chpasswd` line.
pub fn validate_password_hash(hash: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "password_hash";
    if !hash.starts_with("$6$") || hash.len() > 512 {
        return Err(ValidationError::new(
            FIELD,
            "must be a SHA-512 crypt hash ($6$...)",
        ));
    }
    if !hash
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '$' | '.' | '/' | '='))
    {
        return Err(ValidationError::new(
            FIELD,
            "may contain only the crypt alphabet (a-z A-Z 0-9 . /) and '$' '='",
        ));
    }
    Ok(())
}

/// Longest SSH certificate principal accepted.
pub const MAX_PRINCIPAL_LEN: usize = 64;

/// Checks an SSH certificate principal, as written one per line into an
/// `AuthorizedPrincipalsFile` and matched by sshd against a certificate's principals: 1 to
/// [`MAX_PRINCIPAL_LEN`] characters of `A-Z a-z 0-9 _ . @ -`. A newline would add a principal,
/// a space or `"` would turn the line into principal options (`command=`, `from=`), a `,`
/// would make a list, and `*` `?` `!` would be patterns.
pub fn validate_principal(principal: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "principals";
    if principal.is_empty() || principal.len() > MAX_PRINCIPAL_LEN {
        return Err(ValidationError::new(
            FIELD,
            format!("each principal must be 1 to {MAX_PRINCIPAL_LEN} characters"),
        ));
    }
    if !principal
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'))
    {
        return Err(ValidationError::new(
            FIELD,
            format!("{principal:?} may contain only ASCII letters, digits, '_', '.', '@' and '-'"),
        ));
    }
    Ok(())
}

/// Decodes a base64 Ed25519 public key (32 bytes); `None` if it is not one.
pub fn decode_public_key(key: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .ok()
        .filter(|k| k.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0w3v6V8cUq3n3E6Qm9cGxvX9k2hGJm0r2mM3s5C3P user@laptop";

    #[test]
    fn accepts_ordinary_names() {
        for name in ["alice", "_svc", "a", "deploy-bot_2", &"a".repeat(32)] {
            assert_eq!(validate_user_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_hostile_names() {
        for name in [
            "-oops",
            "root",
            "a:b",
            "a\nb",
            "a\0b",
            "../x",
            "",
            "Alice",
            "1abc",
            "a b",
            "a,b",
            &"a".repeat(33),
            "sshd",
            "é",
        ] {
            assert!(validate_user_name(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn group_names_follow_the_pattern_but_root_is_for_the_host_to_refuse() {
        assert_eq!(validate_group_name("root"), Ok(()));
        assert!(validate_group_name("-G").is_err());
        assert!(validate_group_name("wheel\n").is_err());
    }

    #[test]
    fn accepts_a_real_ed25519_key() {
        assert_eq!(validate_ssh_public_key(ED25519), Ok(()));
    }

    #[test]
    fn refuses_keys_with_options_newlines_or_bad_data() {
        let with_option = format!("command=\"/bin/sh\" {ED25519}");
        let two_lines = format!("{ED25519}\n{ED25519}");
        let mismatched = ED25519.replace("ssh-ed25519 ", "ssh-rsa ");
        for key in [
            with_option.as_str(),
            two_lines.as_str(),
            mismatched.as_str(),
            "ssh-ed25519 !!!notbase64",
            "ssh-ed25519",
            "",
        ] {
            assert!(
                validate_ssh_public_key(key).is_err(),
                "{key:?} was accepted"
            );
        }
    }

    #[test]
    fn principals_are_plain_words() {
        for ok in ["p-test", "alice@example.com", "db.admin_1", &"a".repeat(64)] {
            assert_eq!(validate_principal(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            &"a".repeat(65),
            "a\nroot",
            "a b",
            "command=\"/bin/sh\" x",
            "a,b",
            "*",
            "!root",
            "é",
            "a\0",
        ] {
            assert!(validate_principal(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn shells() {
        assert_eq!(validate_shell("/bin/bash"), Ok(()));
        for shell in ["bash", "/bin/../tmp/x", "/bin/sh -c", "/bin/sh\n"] {
            assert!(validate_shell(shell).is_err(), "{shell:?}");
        }
    }

    #[test]
    fn password_hashes() {
        assert_eq!(validate_password_hash("$6$salt$abc./XYZ"), Ok(()));
        assert_eq!(validate_password_hash("$6$rounds=5000$salt$abc"), Ok(()));
        for hash in [
            "plaintext",
            "$1$md5$x",
            "$6$salt$abc:0:0",
            "$6$s$a\nroot:$6$x",
        ] {
            assert!(validate_password_hash(hash).is_err(), "{hash:?}");
        }
    }
}
