//! `latch-agent`: the Latch host agent.
//!
//! Layout: [`config`] (agent.toml), [`state`] (identity and records), [`enroll`], [`client`]
//! (the only transport), [`poll`] (the main loop), [`worker`] (applies one job), [`plan`] (pure
//! decisions), [`system`] (the only code that changes the host), [`facts`].

#![forbid(unsafe_code)]

mod client;
mod config;
mod credential;
mod enroll;
mod expiry;
mod facts;
mod journal;
mod plan;
mod poll;
mod state;
mod system;
mod worker;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::state::StateDir;

/// Exit status when the host's identity is refused or no longer valid (systemd does not restart
/// on it: see RestartPreventExitStatus in the unit).
const EXIT_REENROLL: u8 = 78;

/// The Latch host agent: enrolls this host once, then long-polls the control plane for account
/// jobs and applies them with the distribution's own tools, one at a time, verifying each.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this host with a control plane (once). Writes the identity to the state directory.
    Enroll {
        /// Control plane URL: https://… (give --ca-fingerprint), or http:// on loopback with
        /// --insecure-http.
        #[arg(long)]
        server: String,
        /// The control plane's CA fingerprint (sha256:…, printed by `latchctl enroll-token
        /// create` and at the server's start). The agent trusts only that CA, from now on.
        #[arg(
            long,
            required_unless_present = "insecure_http",
            conflicts_with = "insecure_http"
        )]
        ca_fingerprint: Option<String>,
        /// Talk plain HTTP to a control plane on loopback (development only; the server must
        /// run with --insecure-http too).
        #[arg(long)]
        insecure_http: bool,
        /// Enrollment token from `latchctl enroll-token create`. Prefer --token-file or the
        /// LATCH_ENROLL_TOKEN variable: arguments are visible to other users in /proc.
        #[arg(
            long,
            env = "LATCH_ENROLL_TOKEN",
            hide_env_values = true,
            conflicts_with = "token_file"
        )]
        token: Option<String>,
        /// Read the enrollment token from this file ("-" for standard input).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// State directory.
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Run the agent: long-poll for jobs and apply them. Normally started by systemd.
    Run {
        /// Configuration file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// State directory (overrides state_dir in the configuration).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Replace this host's credential with a new one (the old one stops working). Stop the
    /// agent first: `systemctl stop latch-agent; latch-agent rotate-credential; systemctl start
    /// latch-agent`.
    RotateCredential {
        /// Configuration file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// State directory (overrides state_dir in the configuration).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Show this host's enrollment, the accounts Latch manages here, and whether the control
    /// plane is reachable.
    Status {
        /// Configuration file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// State directory (overrides state_dir in the configuration).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest is built without a default TLS provider: install ring's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &std::path::Path, state_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let explicit = path.as_os_str() != config::DEFAULT_CONFIG_PATH;
    let mut config = Config::load(explicit.then_some(path))?;
    if let Some(dir) = state_dir {
        config.state_dir = dir;
    }
    Ok(config)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Enroll {
            server,
            ca_fingerprint,
            insecure_http,
            token,
            token_file,
            state_dir,
        } => {
            let token = match (token, token_file) {
                (Some(token), _) => token,
                (None, Some(path)) if path.as_os_str() == "-" => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("cannot read the token from standard input")?;
                    text
                }
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?,
                (None, None) => anyhow::bail!(
                    "give the enrollment token with --token, --token-file or LATCH_ENROLL_TOKEN"
                ),
            };
            let state = StateDir::open(&state_dir)?;
            let transport = match (ca_fingerprint, insecure_http) {
                (Some(fingerprint), _) => {
                    client::Transport::Pinned(client::check_fingerprint(&fingerprint)?)
                }
                (None, true) => client::Transport::InsecureHttp,
                (None, false) => anyhow::bail!(
                    "give --ca-fingerprint sha256:… (or --insecure-http for a loopback development server)"
                ),
            };
            let identity = enroll::enroll(&server, &transport, token.trim(), &state).await?;
            println!(
                "enrolled as host {} with {}",
                identity.host_id, identity.server
            );
            println!(
                "identity stored in {} (mode 0600)",
                state.path().join(state::IDENTITY_FILE).display()
            );
            println!(
                "start the agent: systemctl enable --now latch-agent   (or: latch-agent run --state-dir {})",
                state.path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config, state_dir } => {
            let config = load_config(&config, state_dir)?;
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&config.log_level)
                        .context("invalid log_level in the configuration")?,
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let state = StateDir::open(&config.state_dir)?;
            let _lock = state.lock()?;
            // Finish a credential rotation a crash interrupted, if any.
            let identity = match credential::settle_pending(&state).await {
                Ok(identity) => identity,
                Err(error) => {
                    tracing::warn!(%error, "cannot settle a pending credential rotation yet");
                    state.identity()?
                }
            };
            let machine_id = facts::machine_id().context("cannot read /etc/machine-id")?;
            if machine_id != identity.machine_id {
                eprintln!(
                    "error: /etc/machine-id changed since enrollment (this looks like a cloned image); \
                     this host must be enrolled on its own: remove {} and run `latch-agent enroll`",
                    state.path().join(state::IDENTITY_FILE).display()
                );
                return Ok(ExitCode::from(EXIT_REENROLL));
            }
            tracing::info!(host_id = %identity.host_id, server = %identity.server, state_dir = %state.path().display(), "latch-agent started");
            let client = client::AgentClient::new(
                &identity.server,
                &identity.transport(),
                Some(identity.credential.clone()),
            )?;
            let journal = journal::Journal::open(state.path())?;
            // Refuse to start without a pinned job-signing key.
            identity
                .signing_key
                .as_deref()
                .and_then(latch_common::signing::decode_public_key)
                .context("the identity holds no job-signing key (enrolled by an older agent); re-enroll this host")?;
            let host_id = identity.host_id.clone();
            let worker = Arc::new(worker::Worker::new(config, state, identity.host_id));
            worker.prepare_host()?;
            // Grants that ended while the agent was down are revoked before anything else.
            {
                let worker = worker.clone();
                match tokio::task::spawn_blocking(move || worker.revoke_expired(chrono::Utc::now()))
                    .await?
                {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(
                        count,
                        "revoked grants that expired while the agent was stopped"
                    ),
                    Err(error) => {
                        tracing::error!(code = %error.code, message = %error.message, "revoking expired grants at start failed; the expiry timer retries")
                    }
                }
            }
            let grants_changed = Arc::new(tokio::sync::Notify::new());
            let outbox_ready = Arc::new(tokio::sync::Notify::new());
            tokio::spawn(expiry::run(
                worker.clone(),
                grants_changed.clone(),
                outbox_ready.clone(),
            ));
            tokio::spawn(expiry::flush_loop(
                client.clone(),
                worker.clone(),
                outbox_ready,
            ));
            let agent = poll::Agent {
                client,
                worker,
                journal,
                host_id,
                grants_changed,
            };
            tokio::select! {
                result = agent.run() => match result {
                    Err(poll::PollError::Unauthorized(message)) => {
                        tracing::error!(%message, "host credential refused; stopping");
                        eprintln!("error: {}", poll::PollError::Unauthorized(message));
                        Ok(ExitCode::from(EXIT_REENROLL))
                    }
                    Err(error) => Err(error.into()),
                    Ok(()) => Ok(ExitCode::SUCCESS),
                },
                () = shutdown_signal() => {
                    tracing::info!("stopping");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::RotateCredential { config, state_dir } => {
            let config = load_config(&config, state_dir)?;
            let state = StateDir::open(&config.state_dir)?;
            let _lock = state.lock().context(
                "stop the agent before rotating its credential (systemctl stop latch-agent)",
            )?;
            let identity = credential::rotate(&state).await?;
            println!(
                "host {} now uses a new credential; the old one no longer works",
                identity.host_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, state_dir } => {
            let config = load_config(&config, state_dir)?;
            let state = StateDir::open(&config.state_dir)?;
            let identity = state.identity()?;
            let reachable =
                match client::AgentClient::new(&identity.server, &identity.transport(), None) {
                    Ok(client) => client.health().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
            println!("host id:       {}", identity.host_id);
            println!(
                "control plane: {} ({})",
                identity.server,
                match &reachable {
                    Ok(()) => "reachable".to_owned(),
                    Err(e) => format!("NOT reachable: {e}"),
                }
            );
            println!("enrolled:      {}", identity.enrolled_at.to_rfc3339());
            println!(
                "agent:         {}",
                if state.is_locked() {
                    "running"
                } else {
                    "not running"
                }
            );
            let accounts = state.accounts()?;
            println!(
                "managed accounts ({}), UID high-water mark {}:",
                accounts.accounts.len(),
                accounts.uid_high_water
            );
            for (name, account) in &accounts.accounts {
                let groups: Vec<String> = account
                    .group_grants
                    .iter()
                    .map(|(group, grant)| match grant.expires_at {
                        Some(end) => format!("{group} (until {})", end.to_rfc3339()),
                        None => group.clone(),
                    })
                    .collect();
                println!(
                    "  {name:<32} uid {:<6} expires {:<25} groups {}",
                    account.uid,
                    account
                        .expires_at
                        .map_or("never".to_owned(), |t| t.to_rfc3339()),
                    if groups.is_empty() {
                        "-".to_owned()
                    } else {
                        groups.join(",")
                    }
                );
            }
            Ok(if reachable.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
