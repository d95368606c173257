//! Starting a `latch-control serve` for the run: a fresh data directory, loopback, an ephemeral
//! port, and request limits raised so the simulator's own traffic is not throttled (one admin
//! token queueing 1,000 jobs/s and 10,000 enrollments from one address exceed the defaults).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The flags that lift the limits for a simulated fleet on one address.
pub const LIMIT_FLAGS: [&str; 6] = [
    "--rate-limit",
    "1000000000",
    "--auth-failure-limit",
    "1000000",
    "--address-auth-failure-limit",
    "1000000",
];

/// Why the server could not be started.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The binary is not where it was looked for.
    #[error(
        "the control-plane binary {0} does not exist; build it (`cargo build --release --workspace --bins`) or pass --server-binary"
    )]
    Missing(PathBuf),
    /// It could not be run.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// It stopped (or said nothing) before it listened.
    #[error("latch-control did not start ({why}); its log {log}:\n{tail}")]
    NotListening {
        /// What happened.
        why: String,
        /// The log file.
        log: String,
        /// The log's last lines.
        tail: String,
    },
    /// A file of the work directory could not be made or read.
    #[error("{what} {path}: {source}")]
    File {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// How to start the server.
pub struct ServerOptions {
    /// The `latch-control` binary.
    pub binary: PathBuf,
    /// Where the data directory and the log go.
    pub work_dir: PathBuf,
    /// PostgreSQL (or another store) URL, passed as `LATCH_DATABASE_URL` (never in argv).
    pub database_url: Option<String>,
    /// `--log-level` of the server.
    pub log_level: String,
    /// More `serve` flags.
    pub extra_args: Vec<String>,
}

/// A running server this simulator started.
pub struct ServerProcess {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Its CA certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// Where the CA certificate is.
    pub ca_file: PathBuf,
    /// The admin token.
    pub token: String,
    /// The server's log (its standard error).
    pub log: PathBuf,
    /// What its start-up banner (standard output) said before it listened.
    pub banner: Vec<String>,
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The `latch-control` next to this executable.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("latch-control")))
        .unwrap_or_else(|| PathBuf::from("latch-control"))
}

impl ServerProcess {
    /// Starts the server and waits until it listens.
    pub async fn start(options: &ServerOptions) -> Result<Self, ServerError> {
        if !options.binary.is_file() {
            return Err(ServerError::Missing(options.binary.clone()));
        }
        let data_dir = options.work_dir.join("data");
        let log = options.work_dir.join("server.log");
        let log_file = std::fs::File::create(&log).map_err(|source| ServerError::File {
            what: "cannot create the server log",
            path: log.clone(),
            source,
        })?;
        let mut command = Command::new(&options.binary);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--log-level", &options.log_level])
            .args(LIMIT_FLAGS)
            .args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true);
        if let Some(url) = &options.database_url {
            command.env("LATCH_DATABASE_URL", url);
        }
        let mut child = command.spawn().map_err(|source| ServerError::Spawn {
            binary: options.binary.clone(),
            source,
        })?;
        let not_listening = |why: String| ServerError::NotListening {
            why,
            log: log.display().to_string(),
            tail: tail(&log),
        };
        let pid = child
            .id()
            .ok_or_else(|| not_listening("it exited at once".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| not_listening("no standard output".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let read_banner = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.trim().strip_prefix("listening on ") {
                    return Some(url.to_owned());
                }
                banner.push(line);
            }
            None
        };
        let url = match tokio::time::timeout(Duration::from_secs(120), read_banner).await {
            Ok(Some(url)) => url,
            Ok(None) => return Err(not_listening("it exited before listening".into())),
            Err(_) => return Err(not_listening("it did not listen within 120 s".into())),
        };
        // Keep reading its standard output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ca_file = data_dir.join("ca.crt");
        let ca_pem = if url.starts_with("https://") {
            std::fs::read(&ca_file).map_err(|source| ServerError::File {
                what: "cannot read the server's CA",
                path: ca_file.clone(),
                source,
            })?
        } else {
            Vec::new()
        };
        let token_file = data_dir.join("admin.token");
        let token = std::fs::read_to_string(&token_file)
            .map_err(|source| ServerError::File {
                what: "cannot read the admin token",
                path: token_file,
                source,
            })?
            .trim()
            .to_owned();
        Ok(Self {
            child,
            pid,
            url,
            ca_pem,
            ca_file,
            token,
            log,
            banner,
        })
    }

    /// The store its banner names: `postgres` when a line mentions PostgreSQL, else `sqlite`.
    pub fn store(&self) -> &'static str {
        if self
            .banner
            .iter()
            .any(|line| line.to_ascii_lowercase().contains("postgres"))
        {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// Stops the server: SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
