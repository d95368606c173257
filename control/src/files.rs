//! The data directory's file names, and the one way the control plane writes a file there
//! ([`write_file`]: atomic and durable). A leaf module: everything that owns one of these files
//! (`signing`, `tls`, `audit`, `keys`, `datadir`) uses it, and it uses none of them.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the database file in the data directory.
pub const DATABASE_FILE: &str = "latch.db";
/// Left beside [`DATABASE_FILE`] once it was copied to PostgreSQL: the SQLite database is then
/// refused, so no server can run on the stale copy.
pub const MOVED_FILE: &str = "latch.db.moved";
/// Name of the admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the job-signing key file in the data directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// File of the next signing key during a rotation.
pub const NEXT_KEY_FILE: &str = "signing.next.key";
/// Where the previous signing key is kept after a promotion.
pub const OLD_KEY_FILE: &str = "signing.key.old";
/// The audit key (seed) file.
pub const AUDIT_KEY_FILE: &str = "audit.key";
/// An audit key being introduced: renamed to [`AUDIT_KEY_FILE`] once the chain is keyed.
pub const AUDIT_KEY_PENDING_FILE: &str = "audit.key.new";
/// The latest signed checkpoint of the audit chain, kept by the server.
pub const AUDIT_HEAD_FILE: &str = "audit.head";
/// CA certificate file (PEM).
pub const CA_CERT_FILE: &str = "ca.crt";
/// CA key file (PEM, 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The SSH user CA key (OpenSSH private key, 0600): signs user certificates for hosts enrolled
/// with `--ssh-ca`.
pub const USER_CA_KEY_FILE: &str = "user_ca.key";
/// The vault's master key (64 hex digits, 0600), unless `--master-key-file` names another file.
pub const MASTER_KEY_FILE: &str = "master.key";

/// What [`write_file`] does when the file exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it atomically.
    Replace,
    /// Fail with `AlreadyExists` and leave it as it is (keys are never overwritten).
    Refuse,
}

pub(crate) fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Fsyncs the directory holding `path` so a rename or link in it is durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => std::fs::File::open(".")?.sync_all(),
    }
}

/// Writes `contents` to `path` with `mode`, atomically and durably: a temporary file beside it
/// (created with `mode`, fsynced), then a rename over `path` ([`Existing::Replace`]) or a hard
/// link to it that fails if `path` exists ([`Existing::Refuse`]), then an fsync of the
/// directory.
pub fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    existing: Existing,
) -> std::io::Result<()> {
    let tmp = temporary(path);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    let placed = match existing {
        Existing::Replace => std::fs::rename(&tmp, path),
        Existing::Refuse => {
            std::fs::hard_link(&tmp, path).and_then(|()| std::fs::remove_file(&tmp))
        }
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}
