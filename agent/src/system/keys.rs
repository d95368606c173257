//! Writing `~/.ssh/authorized_keys` for an account without following links the account's owner
//! may have planted: every step is relative to an open directory, opened with `O_NOFOLLOW`.

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use thiserror::Error;

/// Why the keys could not be written or read.
#[derive(Debug, Error)]
#[error("cannot {action} {path}: {source}")]
pub struct KeysError {
    action: &'static str,
    path: PathBuf,
    source: Errno,
}

fn open_dir(
    parent: Option<&OwnedFd>,
    path: &Path,
    action: &'static str,
) -> Result<OwnedFd, KeysError> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let result = match parent {
        Some(dir) => openat(dir, path, flags, Mode::empty()),
        None => openat(nix::fcntl::AT_FDCWD, path, flags, Mode::empty()),
    };
    result.map_err(|source| KeysError {
        action,
        path: path.to_owned(),
        source,
    })
}

/// Replaces `home/.ssh/authorized_keys` with `lines` (each already validated), owned by the
/// account, `.ssh` mode 0700, the file mode 0600. The home directory itself must be owned by
/// `uid`, and neither it nor `.ssh` may be a symbolic link.
pub fn write_authorized_keys(
    home: &Path,
    uid: u32,
    gid: u32,
    lines: &[String],
) -> Result<(), KeysError> {
    let home_fd = open_dir(None, home, "open home directory")?;
    let owner = fstat(&home_fd).map_err(|source| KeysError {
        action: "inspect",
        path: home.to_owned(),
        source,
    })?;
    if owner.st_uid != uid {
        return Err(KeysError {
            action: "trust (not owned by the account)",
            path: home.to_owned(),
            source: Errno::EPERM,
        });
    }
    let ssh = Path::new(".ssh");
    let ssh_path = home.join(ssh);
    match mkdirat(&home_fd, ssh, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(source) => {
            return Err(KeysError {
                action: "create",
                path: ssh_path,
                source,
            });
        }
    }
    let ssh_fd = open_dir(Some(&home_fd), ssh, "open")?;
    let err = |action, source| KeysError {
        action,
        path: ssh_path.clone(),
        source,
    };
    fchown(&ssh_fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| err("chown", e))?;
    fchmod(&ssh_fd, Mode::from_bits_truncate(0o700)).map_err(|e| err("chmod", e))?;

    let tmp = Path::new(".authorized_keys.latch-tmp");
    match unlinkat(&ssh_fd, tmp, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(err("remove stale temporary file in", e)),
    }
    let file_fd = openat(
        &ssh_fd,
        tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| err("create temporary file in", e))?;
    fchown(&file_fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| err("chown file in", e))?;
    fchmod(&file_fd, Mode::from_bits_truncate(0o600)).map_err(|e| err("chmod file in", e))?;
    let mut file = std::fs::File::from(file_fd);
    let mut content = lines.join("\n");
    content.push('\n');
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            err(
                "write file in",
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })?;
    renameat(&ssh_fd, tmp, &ssh_fd, Path::new("authorized_keys"))
        .map_err(|e| err("rename file in", e))?;
    Ok(())
}

/// Files sshd reads keys from by default (`AuthorizedKeysFile`).
const KEY_FILES: [&str; 2] = ["authorized_keys", "authorized_keys2"];

/// Moves `name` (whatever it is: file, link, directory) out of sshd's way inside `dir`.
fn move_aside(dir: &OwnedFd, name: &str, shown: &Path) -> Result<(), KeysError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let aside = format!(".latch-revoked-{name}-{stamp}");
    renameat(dir, Path::new(name), dir, Path::new(&aside)).map_err(|source| KeysError {
        action: "move aside",
        path: shown.join(name),
        source,
    })
}

/// Removes every key sshd could read for the account — `.ssh/authorized_keys` and
/// `.ssh/authorized_keys2` — whatever the account's user turned them into (a directory, a
/// link, a `.ssh` that is a file or a link): files and links are unlinked, anything else is
/// moved aside. Never follows a link. A missing home or `.ssh` means there is nothing to
/// remove.
pub fn revoke_authorized_keys(home: &Path) -> Result<(), KeysError> {
    let home_fd = match open_dir(None, home, "open home directory") {
        Ok(fd) => fd,
        Err(KeysError {
            source: Errno::ENOENT,
            ..
        }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let ssh_fd = match open_dir(Some(&home_fd), Path::new(".ssh"), "open") {
        Ok(fd) => fd,
        Err(KeysError {
            source: Errno::ENOENT,
            ..
        }) => return Ok(()),
        // A file or a link where `.ssh` should be: move it out of the way as a whole.
        Err(KeysError {
            source: Errno::ENOTDIR | Errno::ELOOP,
            ..
        }) => return move_aside(&home_fd, ".ssh", home),
        Err(e) => return Err(e),
    };
    let ssh_path = home.join(".ssh");
    for name in KEY_FILES {
        match unlinkat(&ssh_fd, Path::new(name), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            // A directory (or anything unlink refuses): out of sshd's way.
            Err(_) => move_aside(&ssh_fd, name, &ssh_path)?,
        }
    }
    Ok(())
}

/// Reads `home/.ssh/authorized_keys` without following links; `None` if it does not exist.
pub fn read_authorized_keys(home: &Path) -> Result<Option<(String, u32, u32)>, KeysError> {
    let home_fd = open_dir(None, home, "open home directory")?;
    let ssh_fd = match open_dir(Some(&home_fd), Path::new(".ssh"), "open") {
        Ok(fd) => fd,
        Err(KeysError {
            source: Errno::ENOENT,
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = home.join(".ssh/authorized_keys");
    let fd = match openat(
        &ssh_fd,
        Path::new("authorized_keys"),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(source) => {
            return Err(KeysError {
                action: "open",
                path,
                source,
            });
        }
    };
    let stat = fstat(&fd).map_err(|source| KeysError {
        action: "inspect",
        path: path.clone(),
        source,
    })?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .read_to_string(&mut text)
        .map_err(|e| KeysError {
            action: "read",
            path,
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
    Ok(Some((text, stat.st_uid, stat.st_mode & 0o7777)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_and_refuses_symlinked_ssh_dir() {
        let home = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let my_gid = nix::unistd::getegid().as_raw();
        let keys = vec![
            "ssh-ed25519 AAAA one".to_owned(),
            "ssh-ed25519 AAAA two".to_owned(),
        ];
        write_authorized_keys(home.path(), me, my_gid, &keys).unwrap();
        let (text, owner, mode) = read_authorized_keys(home.path()).unwrap().unwrap();
        assert_eq!(text, "ssh-ed25519 AAAA one\nssh-ed25519 AAAA two\n");
        assert_eq!((owner, mode), (me, 0o600));

        let other = tempfile::tempdir().unwrap();
        let evil_home = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(other.path(), evil_home.path().join(".ssh")).unwrap();
        assert!(write_authorized_keys(evil_home.path(), me, my_gid, &keys).is_err());
        assert!(!other.path().join("authorized_keys").exists());
    }

    #[test]
    fn revocation_removes_keys_whatever_the_user_made_of_them() {
        let me = nix::unistd::geteuid().as_raw();
        let my_gid = nix::unistd::getegid().as_raw();
        let keys = vec!["ssh-ed25519 AAAA one".to_owned()];
        let readable = |home: &Path| {
            std::fs::read_to_string(home.join(".ssh/authorized_keys")).is_ok()
                || std::fs::read_to_string(home.join(".ssh/authorized_keys2")).is_ok()
        };

        // A plain file, plus an authorized_keys2 the user added.
        let home = tempfile::tempdir().unwrap();
        write_authorized_keys(home.path(), me, my_gid, &keys).unwrap();
        std::fs::write(
            home.path().join(".ssh/authorized_keys2"),
            "ssh-ed25519 AAAA two\n",
        )
        .unwrap();
        revoke_authorized_keys(home.path()).unwrap();
        assert!(!readable(home.path()));

        // authorized_keys turned into a directory (writing an empty file would fail).
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".ssh/authorized_keys/inner")).unwrap();
        assert!(write_authorized_keys(home.path(), me, my_gid, &[]).is_err());
        revoke_authorized_keys(home.path()).unwrap();
        assert!(!home.path().join(".ssh/authorized_keys").exists());

        // .ssh is a link to a directory elsewhere: the link goes, the target is untouched.
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(
            elsewhere.path().join("authorized_keys"),
            "ssh-ed25519 AAAA x\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), home.path().join(".ssh")).unwrap();
        revoke_authorized_keys(home.path()).unwrap();
        assert!(std::fs::symlink_metadata(home.path().join(".ssh")).is_err());
        assert!(elsewhere.path().join("authorized_keys").exists());

        // Nothing there at all: nothing to do.
        let gone = home.path().join("no-such-home");
        revoke_authorized_keys(&gone).unwrap();
    }

    #[test]
    fn refuses_a_home_owned_by_someone_else() {
        let home = tempfile::tempdir().unwrap();
        let not_me = nix::unistd::geteuid().as_raw() + 12345;
        assert!(write_authorized_keys(home.path(), not_me, 0, &[]).is_err());
    }
}
