//! File helpers shared by everything that writes state or configuration on the host.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content: a
/// temporary file beside it (created with exactly `mode`, whatever the umask, never following
/// a link), fsync, rename over `path`, fsync of the directory.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic(path, bytes, mode, None)
}

/// Like [`write_file_atomic`] for a file of the host's configuration: the new content keeps
/// the existing file's mode, owner and group (`default_mode`, owned by the agent, if there is
/// no file yet).
pub fn rewrite_file_atomic(path: &Path, bytes: &[u8], default_mode: u32) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => write_atomic(
            path,
            bytes,
            meta.mode() & 0o7777,
            Some((meta.uid(), meta.gid())),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomic(path, bytes, default_mode, None)
        }
        Err(e) => Err(e),
    }
}

fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.latch-tmp"));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o700)
        .open(&tmp)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_file_atomic(&path, b"one", 0o600).unwrap();
        write_file_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_rewritten_config_file_keeps_its_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sudo.conf");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&path).unwrap();
        rewrite_file_atomic(&path, b"new\n", 0o644).unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        // A new file gets the default mode exactly, whatever the umask.
        let fresh = dir.path().join("fresh.conf");
        rewrite_file_atomic(&fresh, b"x", 0o644).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o7777, 0o644);
    }
}
