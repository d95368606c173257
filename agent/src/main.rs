//! `latch-agent`: the Latch host agent.
//!
//! Layout: [`config`] (agent.toml), [`state`] (identity and records), [`enroll`], [`client`]
//! (the only transport), [`daemon`] (`run`: tasks and the revoke-only mode), [`poll`] (the
//! polling loop), [`expiry`] (the local expiry timer), [`worker`] (applies one job, revokes
//! expired grants), [`plan`] (pure decisions), [`journal`] (crash journal), [`system`] (the only
//! code that changes the host), [`status`] (`latch-agent status`, health), [`watchdog`]
//! (systemd readiness and watchdog), [`logging`] (journal, JSON or text), [`facts`],
//! [`backoff`], [`crash_hook`] (crash-test hook).

#![forbid(unsafe_code)]

mod backoff;
mod client;
mod config;
mod crash_hook;
mod credential;
mod daemon;
mod enroll;
mod expiry;
mod facts;
mod journal;
mod logging;
mod pinning;
mod plan;
mod poll;
mod state;
mod status;
mod system;
mod watchdog;
mod worker;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::state::StateDir;

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
        /// Enrollment token from `latchctl enroll-token create`. Prefer --token-file (or the
        /// LATCH_ENROLL_TOKEN variable): arguments are visible to other users in /proc.
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
        /// Enroll again although this host is enrolled (after `latchctl hosts remove`, a restored
        /// control-plane database, or a cloned image). Stop the agent first. The accounts Latch
        /// created here stay recorded and still end on time.
        #[arg(long)]
        replace: bool,
    },
    /// Run the agent: long-poll for jobs and apply them. Normally started by systemd
    /// (Type=notify: ready once grants that ended while it was stopped are revoked; pings the
    /// watchdog while its expiry timer runs).
    Run {
        /// Configuration file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// State directory (overrides state_dir in the configuration).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Log format: auto (the journal, with structured fields, when systemd connected the
        /// output to it; text otherwise), text, json (one object per line on stderr, for log
        /// shippers) or journald. The level is RUST_LOG when set, else log_level. An unknown
        /// value falls back to auto with a warning (it never keeps the agent from starting).
        #[arg(long, default_value = "auto", env = "LATCH_LOG_FORMAT")]
        log_format: String,
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
    /// Show this host's health: enrollment, whether the control plane accepts the agent, the
    /// agent's mode (polling or revoke-only), the last successful poll, reports not yet
    /// acknowledged, the job journal, and the grants on this host with their ends. Exit status
    /// 1 when unhealthy (agent stopped, control plane unusable, revoke-only, no successful poll
    /// for 5 minutes, a revocation overdue, journal unreadable), so monitoring can run it.
    Status {
        /// Configuration file.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// State directory (overrides state_dir in the configuration).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// text for people, json for scripts and monitoring.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// The configuration file (`/etc/latch/agent.toml`; every key in packaging/agent.toml).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check the configuration as `run` would read it — the file, then the LATCH_AGENT_<KEY>
    /// environment variables that override its keys — without starting anything or touching
    /// the state directory. Prints "FILE: ok" and every key's effective value with where it
    /// came from (the file's line, the environment or the default); or each mistake as
    /// FILE:LINE:COLUMN (or the variable) with what to write instead. Exit status 0 when the
    /// configuration is valid, 1 when it is not (the agent would then only revoke).
    Check {
        /// Configuration file. At the default path a missing file means all defaults; a file
        /// named here must exist.
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// `status --output`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// A report for people.
    Text,
    /// One JSON object.
    Json,
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
            replace,
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
            let _lock = state
                .lock()
                .context("stop the agent before enrolling (systemctl stop latch-agent)")?;
            let transport = match (ca_fingerprint, insecure_http) {
                (Some(fingerprint), _) => {
                    client::Transport::Pinned(client::check_fingerprint(&fingerprint)?)
                }
                (None, true) => client::Transport::InsecureHttp,
                (None, false) => anyhow::bail!(
                    "give --ca-fingerprint sha256:… (or --insecure-http for a loopback development server)"
                ),
            };
            let identity =
                enroll::enroll(&server, &transport, token.trim(), &state, replace).await?;
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
        Command::Run {
            config,
            state_dir,
            log_format,
        } => {
            // A configuration that cannot be used must not stop revocation: the agent then runs
            // on the defaults, only revoking, and says why (here, in its log and in `status`).
            let (config, problem) = match load_config(&config, state_dir.clone()) {
                Ok(config) => (config, None),
                Err(error) => {
                    let mut defaults = Config::defaults();
                    if let Some(dir) = state_dir {
                        defaults.state_dir = dir;
                    }
                    let problem = format!(
                        "the configuration is not usable ({error:#}); fix it and restart the agent"
                    );
                    eprintln!("error: {problem}; until then the agent only revokes");
                    (defaults, Some(problem))
                }
            };
            let host_id = StateDir::open(&config.state_dir)
                .and_then(|state| state.identity())
                .ok()
                .map(|identity| identity.host_id);
            let (format, unknown) = logging::LogFormat::parse_or_auto(&log_format);
            let unusable = logging::init(format, &config.log_level, host_id.as_deref());
            for note in unknown.into_iter().chain(unusable) {
                tracing::warn!("{note}");
            }
            daemon::run(config, problem, shutdown_signal()).await
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
        Command::Config {
            command: ConfigCommand::Check { config },
        } => Ok(check_config(&config)),
        Command::Status {
            config,
            state_dir,
            output,
        } => {
            let config = match load_config(&config, state_dir.clone()) {
                Ok(config) => config,
                Err(error) => {
                    println!(
                        "configuration: NOT USABLE ({error:#}); the agent runs on the defaults, only revoking"
                    );
                    let mut defaults = Config::defaults();
                    if let Some(dir) = state_dir {
                        defaults.state_dir = dir;
                    }
                    defaults
                }
            };
            status::status(&StateDir::open(&config.state_dir)?, output == Output::Json).await
        }
    }
}

/// `latch-agent config check`: prints the report, or each mistake; exit status 1 if any.
fn check_config(path: &std::path::Path) -> ExitCode {
    let explicit = path.as_os_str() != config::DEFAULT_CONFIG_PATH;
    match config::check(explicit.then_some(path), &|name| std::env::var(name).ok()) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(mistakes) => {
            for mistake in &mistakes.0 {
                eprintln!("{mistake}");
            }
            eprintln!(
                "{}: not valid ({} mistake(s)); `latch-agent run` would only revoke until it is fixed",
                path.display(),
                mistakes.0.len()
            );
            ExitCode::FAILURE
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
