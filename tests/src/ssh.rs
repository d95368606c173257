//! An ssh client for test hosts' sshd, with long-lived sessions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Ran, run};

/// An SSH client for `user@127.0.0.1:port` with a private key, never prompting.
pub struct Ssh {
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Private key file.
    pub key: PathBuf,
    /// Control socket of the master connection, once opened.
    control: Option<PathBuf>,
}

impl Ssh {
    /// A client for `user` on `port` using `key`.
    pub fn new(port: u16, user: &str, key: &Path) -> Ssh {
        Ssh {
            port,
            user: user.to_owned(),
            key: key.to_owned(),
            control: None,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(["-i"])
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "IdentitiesOnly=yes",
            ]);
        command
    }

    /// Runs `remote` in a new login.
    pub fn run(&self, remote: &str) -> Ran {
        run(
            self.command()
                .args(["-o", "ControlPath=none"])
                .arg(format!("{}@127.0.0.1", self.user))
                .arg(remote),
            None,
        )
    }

    /// Opens a long-lived master connection (a session that stays open).
    pub fn open_session(&mut self, dir: &Path) {
        let socket = dir.join(format!("mux-{}-{}", self.user, self.port));
        let ran = run(
            self.command()
                .args([
                    "-o",
                    "ControlMaster=yes",
                    "-o",
                    "ControlPersist=600",
                    "-N",
                    "-f",
                    "-o",
                ])
                .arg(format!("ControlPath={}", socket.display()))
                .arg(format!("{}@127.0.0.1", self.user)),
            None,
        );
        assert_eq!(ran.code, 0, "ssh master connection failed: {}", ran.stderr);
        self.control = Some(socket);
    }

    /// Runs `remote` inside the session opened by [`Ssh::open_session`] (its groups are the ones
    /// it got at login).
    pub fn in_session(&self, remote: &str) -> Ran {
        let socket = self.control.as_ref().expect("open_session first");
        run(
            self.command()
                .args(["-o", "ControlMaster=no", "-o"])
                .arg(format!("ControlPath={}", socket.display()))
                .arg(format!("{}@127.0.0.1", self.user))
                .arg(remote),
            None,
        )
    }

    /// Whether the session's master connection is still alive.
    pub fn session_alive(&self) -> bool {
        let socket = self.control.as_ref().expect("open_session first");
        run(
            Command::new("ssh")
                .args(["-o"])
                .arg(format!("ControlPath={}", socket.display()))
                .args(["-O", "check"])
                .arg(format!("{}@127.0.0.1", self.user)),
            None,
        )
        .code
            == 0
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        if let Some(socket) = &self.control {
            let _ = Command::new("ssh")
                .args(["-o"])
                .arg(format!("ControlPath={}", socket.display()))
                .args(["-O", "exit"])
                .arg(format!("{}@127.0.0.1", self.user))
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A fresh ed25519 key pair in `dir`: (private key path, public key line).
pub fn ssh_keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            &format!("{name}@latch-e2e"),
            "-f",
        ])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_owned())
}
