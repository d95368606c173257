//! sshd's side of Latch's SSH user certificates, on hosts enrolled with `--ssh-ca`:
//!
//! ```text
//! /etc/ssh/latch/                      0755 root
//!   user_ca.pub                        0644  the control plane's user CA (TrustedUserCAKeys)
//!   principals/                        0755 root
//!     USER                             0644  the principals USER accepts, one per line
//! /etc/ssh/sshd_config.d/50-latch.conf 0644  TrustedUserCAKeys + AuthorizedPrincipalsFile
//! ```
//!
//! Every file is root's and replaced atomically ([`write_file_atomic`]); the directories are
//! refused when they are links or belong to someone else, so no user can steer a write. A
//! principals file exists only for accounts Latch created with principals: an account without
//! one accepts no certificate at all (sshd reads the file instead of the certificate's
//! principals once `AuthorizedPrincipalsFile` is set).

use std::ffi::OsStr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::cmd;
use super::files::write_file_atomic;

/// The drop-in's file name in `sshd_config.d`.
pub const DROP_IN_NAME: &str = "50-latch.conf";

/// Why an sshd file could not be written, removed or read.
#[derive(Debug, Error)]
pub enum SshdError {
    /// A file system call failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A directory Latch writes into is a link, not a directory, or not the agent's own.
    #[error(
        "{path} is not a directory owned by root (a link, a file, or another owner); Latch does not write there — remove it and let the agent create it"
    )]
    Untrusted {
        /// The directory.
        path: PathBuf,
    },
    /// The CA key from enrollment is not an OpenSSH public key line.
    #[error(
        "the SSH user CA key from enrollment is not a valid public key ({0}); enroll the host again"
    )]
    BadCaKey(String),
}

/// Where the sshd files are (the real `/etc/ssh` on a host; a temporary directory in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPaths {
    /// sshd's configuration directory, `/etc/ssh`.
    pub etc_ssh: PathBuf,
}

impl Default for SshPaths {
    fn default() -> Self {
        SshPaths {
            etc_ssh: PathBuf::from("/etc/ssh"),
        }
    }
}

impl SshPaths {
    /// `/etc/ssh/latch`.
    pub fn latch_dir(&self) -> PathBuf {
        self.etc_ssh.join("latch")
    }

    /// `/etc/ssh/latch/principals`.
    pub fn principals_dir(&self) -> PathBuf {
        self.latch_dir().join("principals")
    }

    /// `/etc/ssh/latch/principals/USER` (`user` is a validated account name).
    pub fn principals_file(&self, user: &str) -> PathBuf {
        self.principals_dir().join(user)
    }

    /// `/etc/ssh/latch/user_ca.pub`.
    pub fn user_ca_file(&self) -> PathBuf {
        self.latch_dir().join("user_ca.pub")
    }

    /// `/etc/ssh/sshd_config.d/50-latch.conf`.
    pub fn drop_in(&self) -> PathBuf {
        self.etc_ssh.join("sshd_config.d").join(DROP_IN_NAME)
    }

    /// `/etc/ssh/sshd_config`.
    pub fn sshd_config(&self) -> PathBuf {
        self.etc_ssh.join("sshd_config")
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SshdError + 'a {
    move |source| SshdError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Makes `dir` a directory of mode 0755 owned by the agent (root), creating it if needed; a link
/// or a directory of another owner is refused.
fn ensure_dir(dir: &Path) -> Result<(), SshdError> {
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(io("create", dir)(source)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io("inspect", dir))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(SshdError::Untrusted {
            path: dir.to_owned(),
        });
    }
    if meta.mode() & 0o7777 != 0o755 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", dir))?;
    }
    Ok(())
}

/// The content of a principals file: one principal per line.
pub fn principals_text(principals: &[String]) -> String {
    let mut text = principals.join("\n");
    text.push('\n');
    text
}

/// Replaces the principals file of `user` with `principals` (each already validated).
pub fn write_principals(
    paths: &SshPaths,
    user: &str,
    principals: &[String],
) -> Result<(), SshdError> {
    ensure_dir(&paths.latch_dir())?;
    ensure_dir(&paths.principals_dir())?;
    let file = paths.principals_file(user);
    write_file_atomic(&file, principals_text(principals).as_bytes(), 0o644)
        .map_err(io("write", &file))
}

/// Removes the principals file of `user`; a missing file is already removed.
pub fn remove_principals(paths: &SshPaths, user: &str) -> Result<(), SshdError> {
    let file = paths.principals_file(user);
    match std::fs::remove_file(&file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io("remove", &file)(source)),
    }
}

/// The principals file of `user` as found: content, owner and mode; `None` if there is none.
pub fn read_principals(
    paths: &SshPaths,
    user: &str,
) -> Result<Option<(String, u32, u32)>, SshdError> {
    let file = paths.principals_file(user);
    let meta = match std::fs::symlink_metadata(&file) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io("inspect", &file)(source)),
    };
    let text = std::fs::read_to_string(&file).map_err(io("read", &file))?;
    Ok(Some((text, meta.uid(), meta.mode() & 0o7777)))
}

/// Whether a principals file of `user` exists (a link counts).
pub fn principals_present(paths: &SshPaths, user: &str) -> bool {
    std::fs::symlink_metadata(paths.principals_file(user)).is_ok()
}

/// The drop-in that makes sshd trust the CA and read each account's principals file.
pub fn drop_in_text(paths: &SshPaths) -> String {
    format!(
        "# Written by latch-agent (the host was enrolled with --ssh-ca); it is rewritten at each\n\
         # start of the agent. Certificates signed by the Latch control plane's user CA log in as\n\
         # an account only with a principal listed in that account's principals file.\n\
         TrustedUserCAKeys {}\n\
         AuthorizedPrincipalsFile {}/%u\n",
        paths.user_ca_file().display(),
        paths.principals_dir().display()
    )
}

/// What [`install_user_ca`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Whether a file changed (sshd must then reload its configuration).
    pub changed: bool,
    /// What a person should know: sshd may not read the drop-in.
    pub warnings: Vec<String>,
}

/// Writes `content` to `path` (0644) unless it already holds exactly that; says whether it
/// wrote.
fn ensure_file(path: &Path, content: &str) -> Result<bool, SshdError> {
    let same = std::fs::symlink_metadata(path).is_ok_and(|meta| {
        meta.is_file()
            && meta.mode() & 0o7777 == 0o644
            && meta.uid() == nix::unistd::geteuid().as_raw()
            && std::fs::read_to_string(path).is_ok_and(|text| text == content)
    });
    if same {
        return Ok(false);
    }
    write_file_atomic(path, content.as_bytes(), 0o644).map_err(io("write", path))?;
    Ok(true)
}

/// Installs the control plane's user CA `ca_key` (an OpenSSH public key line): the key file,
/// the principals directory and the sshd drop-in, each written only if it differs. Warns when
/// `sshd_config` does not include `sshd_config.d` or sets the same options itself (sshd takes
/// the first value it reads).
pub fn install_user_ca(paths: &SshPaths, ca_key: &str) -> Result<Installed, SshdError> {
    let ca_key = ca_key.trim();
    latch_common::names::validate_ssh_public_key(ca_key)
        .map_err(|e| SshdError::BadCaKey(e.reason))?;
    ensure_dir(&paths.latch_dir())?;
    ensure_dir(&paths.principals_dir())?;
    let mut changed = ensure_file(&paths.user_ca_file(), &format!("{ca_key}\n"))?;
    let drop_in = paths.drop_in();
    if let Some(dir) = drop_in.parent() {
        ensure_dir(dir)?;
    }
    changed |= ensure_file(&drop_in, &drop_in_text(paths))?;
    let config = std::fs::read_to_string(paths.sshd_config()).unwrap_or_default();
    Ok(Installed {
        changed,
        warnings: config_warnings(&config, paths),
    })
}

/// What in `sshd_config` would keep sshd from using the drop-in.
pub fn config_warnings(config: &str, paths: &SshPaths) -> Vec<String> {
    let mut warnings = Vec::new();
    let directives: Vec<(String, String)> = config
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (keyword, rest) = line.split_once(|c: char| c.is_whitespace() || c == '=')?;
            Some((keyword.to_ascii_lowercase(), rest.trim().to_owned()))
        })
        .collect();
    let included = directives
        .iter()
        .any(|(keyword, args)| keyword == "include" && args.contains("sshd_config.d"));
    if !included {
        warnings.push(format!(
            "{} has no 'Include /etc/ssh/sshd_config.d/*.conf': sshd does not read {}, so certificates signed by the Latch user CA are not accepted on this host. Add the Include line at the top of {} and reload sshd",
            paths.sshd_config().display(),
            paths.drop_in().display(),
            paths.sshd_config().display()
        ));
    }
    for keyword in ["trustedusercakeys", "authorizedprincipalsfile"] {
        if directives.iter().any(|(k, _)| k == keyword) {
            warnings.push(format!(
                "{} sets {keyword} itself; sshd uses the first value it reads, so if that line comes before the Include, Latch's certificates are not accepted. Remove it or move it below the Include",
                paths.sshd_config().display()
            ));
        }
    }
    warnings
}

/// How sshd is told to read its configuration again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// A command to run (argv; the program by absolute path or by name in the system
    /// directories). `None`: `systemctl reload ssh`, then `systemctl reload sshd`, where
    /// systemd runs.
    pub command: Option<Vec<String>>,
    /// The file holding sshd's PID: SIGHUP goes there when the commands fail.
    pub pid_file: PathBuf,
}

/// Why sshd could not be reloaded: every way tried, with its error.
#[derive(Debug, Error)]
#[error(
    "sshd was not told to reload its configuration ({0}); it uses the new files from its next restart — reload it by hand (systemctl reload ssh), or set sshd_reload_command / sshd_pid_file in the agent's configuration"
)]
pub struct ReloadError(String);

/// Tells sshd to read its configuration again: the configured command, or systemd's reload of
/// `ssh`/`sshd`; failing that, SIGHUP to the PID in [`Reload::pid_file`] (only if that process
/// is an sshd). Returns how it was done.
pub fn reload(how: &Reload) -> Result<String, ReloadError> {
    let mut tried = Vec::new();
    let commands: Vec<Vec<String>> = match &how.command {
        Some(command) => vec![command.clone()],
        None if Path::new("/run/systemd/system").is_dir() => vec![
            vec!["systemctl".into(), "reload".into(), "ssh".into()],
            vec!["systemctl".into(), "reload".into(), "sshd".into()],
        ],
        None => Vec::new(),
    };
    for command in commands {
        let Some((program, args)) = command.split_first() else {
            continue;
        };
        let path = if program.starts_with('/') {
            Ok(PathBuf::from(program))
        } else {
            cmd::tool(program)
        };
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        match path.and_then(|path| cmd::run(&path, &args, None)) {
            Ok(_) => return Ok(command.join(" ")),
            Err(error) => tried.push(format!("{}: {error}", command.join(" "))),
        }
    }
    match sighup(&how.pid_file) {
        Ok(pid) => Ok(format!(
            "SIGHUP to sshd (PID {pid} from {})",
            how.pid_file.display()
        )),
        Err(error) => {
            tried.push(error);
            Err(ReloadError(tried.join("; ")))
        }
    }
}

/// Sends SIGHUP to the sshd whose PID `pid_file` holds.
fn sighup(pid_file: &Path) -> Result<i32, String> {
    let shown = pid_file.display();
    let text = std::fs::read_to_string(pid_file).map_err(|e| format!("{shown}: {e}"))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 1)
        .ok_or_else(|| format!("{shown} does not hold a PID"))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "sshd" {
        return Err(format!(
            "PID {pid} from {shown} is not sshd (it is {:?})",
            comm.trim()
        ));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| format!("SIGHUP to PID {pid}: {e}"))?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBu2K6/pB0pY+4p2eGZq1jWbA5i6RzkmVfO2hXmLHqXh latch-user-ca";

    fn paths() -> (tempfile::TempDir, SshPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = SshPaths {
            etc_ssh: dir.path().to_owned(),
        };
        (dir, paths)
    }

    #[test]
    fn principals_are_written_read_and_removed() {
        let (_dir, paths) = paths();
        assert_eq!(read_principals(&paths, "alice").unwrap(), None);
        write_principals(&paths, "alice", &["p-test".into(), "ops".into()]).unwrap();
        let (text, owner, mode) = read_principals(&paths, "alice").unwrap().unwrap();
        assert_eq!(text, "p-test\nops\n");
        assert_eq!(owner, nix::unistd::geteuid().as_raw());
        assert_eq!(mode, 0o644);
        for dir in [paths.latch_dir(), paths.principals_dir()] {
            assert_eq!(std::fs::metadata(dir).unwrap().mode() & 0o7777, 0o755);
        }
        write_principals(&paths, "alice", &["p-test".into()]).unwrap();
        assert_eq!(
            read_principals(&paths, "alice").unwrap().unwrap().0,
            "p-test\n"
        );
        assert!(principals_present(&paths, "alice"));
        remove_principals(&paths, "alice").unwrap();
        assert!(!principals_present(&paths, "alice"));
        remove_principals(&paths, "alice").unwrap();
    }

    #[test]
    fn a_linked_directory_is_not_written_through() {
        let (_dir, paths) = paths();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), paths.latch_dir()).unwrap();
        let err = write_principals(&paths, "alice", &["p".into()]).unwrap_err();
        assert!(matches!(err, SshdError::Untrusted { .. }), "{err}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_ca_and_drop_in_are_installed_once() {
        let (_dir, paths) = paths();
        std::fs::write(
            paths.sshd_config(),
            "Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n",
        )
        .unwrap();
        let first = install_user_ca(&paths, CA).unwrap();
        assert_eq!(
            first,
            Installed {
                changed: true,
                warnings: vec![]
            }
        );
        assert_eq!(
            std::fs::read_to_string(paths.user_ca_file()).unwrap(),
            format!("{CA}\n")
        );
        let drop_in = std::fs::read_to_string(paths.drop_in()).unwrap();
        assert!(drop_in.contains(&format!(
            "\nTrustedUserCAKeys {}\n",
            paths.user_ca_file().display()
        )));
        assert!(drop_in.contains(&format!(
            "\nAuthorizedPrincipalsFile {}/%u\n",
            paths.principals_dir().display()
        )));
        assert!(!install_user_ca(&paths, CA).unwrap().changed);
        assert!(paths.principals_dir().is_dir());
        // A key that is not one public key line is refused.
        for bad in [
            "command=\"/bin/sh\" ssh-ed25519 AAAA",
            &format!("{CA}\nssh-ed25519 AAAA x"),
        ] {
            assert!(matches!(
                install_user_ca(&paths, bad),
                Err(SshdError::BadCaKey(_))
            ));
        }
    }

    #[test]
    fn warns_when_sshd_would_not_read_the_drop_in() {
        let (_dir, paths) = paths();
        let warnings =
            config_warnings("Port 22\n# Include /etc/ssh/sshd_config.d/*.conf\n", &paths);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("no 'Include"), "{warnings:?}");
        let warnings = config_warnings(
            "include /etc/ssh/sshd_config.d/*.conf\nTrustedUserCAKeys /etc/ssh/other.pub\n",
            &paths,
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("trustedusercakeys"), "{warnings:?}");
    }

    #[test]
    fn reload_falls_back_to_the_pid_file_and_names_each_failure() {
        let (dir, _paths) = paths();
        let err = reload(&Reload {
            command: Some(vec!["/bin/false".into()]),
            pid_file: dir.path().join("sshd.pid"),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("/bin/false"), "{err}");
        assert!(err.contains("sshd.pid"), "{err}");
        // A PID that is not sshd's is never signalled.
        std::fs::write(dir.path().join("self.pid"), std::process::id().to_string()).unwrap();
        let err = reload(&Reload {
            command: Some(vec!["/bin/false".into()]),
            pid_file: dir.path().join("self.pid"),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("is not sshd"), "{err}");
        let done = reload(&Reload {
            command: Some(vec!["true".into()]),
            pid_file: dir.path().join("sshd.pid"),
        })
        .unwrap();
        assert_eq!(done, "true");
    }
}
