//! sudo: making open sessions lose sudo when a group membership is revoked, and forgetting
//! cached credentials.
//!
//! sudo's default `group_source` is the process's login-time supplementary group list, so a
//! session opened while the user was in `sudo` keeps sudo after `gpasswd -d` (measured on these
//! machines). `Set group_source dynamic` in `/etc/sudo.conf` makes sudo ask the group database
//! on every use instead; the agent ensures that line at start (configurable).

use std::path::{Path, PathBuf};

use thiserror::Error;

/// sudo's timestamp directory (Debian: `--with-rundir=/run/sudo`).
pub const TIMESTAMP_DIR: &str = "/run/sudo/ts";
/// The line that makes sudo read group membership from the group database on every use.
pub const DYNAMIC_LINE: &str = "Set group_source dynamic";

/// Why a sudo file could not be changed.
#[derive(Debug, Error)]
#[error("cannot {action} {path}: {source}")]
pub struct SudoError {
    action: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

/// Removes the user's cached sudo credentials. `user` was validated (no `/`, no `..`).
pub fn clear_timestamps(user: &str) -> Result<(), SudoError> {
    let path = Path::new(TIMESTAMP_DIR).join(user);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SudoError {
            action: "remove",
            path,
            source,
        }),
    }
}

/// `sudo.conf` text with `group_source` set to dynamic; `None` if it already is. Other
/// `group_source` settings are commented out, never silently kept.
pub fn with_dynamic_group_source(text: &str) -> Option<String> {
    let is_setting = |line: &&str| {
        let mut words = line.split_whitespace();
        words.next() == Some("Set") && words.next() == Some("group_source")
    };
    let settings: Vec<&str> = text.lines().filter(is_setting).collect();
    if let [only] = settings.as_slice()
        && only.split_whitespace().nth(2) == Some("dynamic")
    {
        return None;
    }
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| {
            if is_setting(&line) {
                format!("# {line}  # replaced by latch-agent")
            } else {
                line.to_owned()
            }
        })
        .collect();
    lines.push(
        "# Added by latch-agent: sudo checks group membership at each use, so a revoked".to_owned(),
    );
    lines.push(
        "# sudo membership also ends sudo in sessions opened before the revocation.".to_owned(),
    );
    lines.push(DYNAMIC_LINE.to_owned());
    Some(lines.join("\n") + "\n")
}

/// Ensures `path` (normally `/etc/sudo.conf`) sets `group_source dynamic`, writing atomically
/// and keeping the file's mode and owner (0644 for a new file). Returns whether the file
/// changed.
pub fn ensure_dynamic_group_source(path: &Path) -> Result<bool, SudoError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(SudoError {
                action: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    let Some(new) = with_dynamic_group_source(&text) else {
        return Ok(false);
    };
    super::files::rewrite_file_atomic(path, new.as_bytes(), 0o644).map_err(|source| SudoError {
        action: "write",
        path: path.to_owned(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_the_setting_once() {
        let text = "# sudo.conf\nSet disable_coredump true\n";
        let new = with_dynamic_group_source(text).unwrap();
        assert!(new.starts_with(text));
        assert!(new.ends_with("Set group_source dynamic\n"));
        assert_eq!(with_dynamic_group_source(&new), None);
        assert!(
            with_dynamic_group_source("")
                .unwrap()
                .contains(DYNAMIC_LINE)
        );
    }

    #[test]
    fn replaces_another_group_source() {
        let new = with_dynamic_group_source("Set group_source static\n").unwrap();
        assert!(new.contains("# Set group_source static"));
        assert!(new.lines().any(|l| l == DYNAMIC_LINE));
        assert_eq!(with_dynamic_group_source(&new), None);
    }

    #[test]
    fn writes_atomically_and_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sudo.conf");
        assert!(ensure_dynamic_group_source(&path).unwrap());
        assert!(!ensure_dynamic_group_source(&path).unwrap());
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains(DYNAMIC_LINE)
        );
    }

    /// Finding 17: `/etc/sudo.conf` was rewritten with the agent's own mode and owner.
    #[test]
    fn finding_17_sudo_conf_keeps_its_mode_and_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sudo.conf");
        std::fs::write(&path, "Set disable_coredump true\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(ensure_dynamic_group_source(&path).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640, "mode changed");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains(DYNAMIC_LINE)
        );
    }
}
