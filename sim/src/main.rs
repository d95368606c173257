//! `latch-fleet-sim`: the command line over [`latch_fleet_sim::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use latch_fleet_sim::run::{Config, Target};
use latch_fleet_sim::server::{ServerOptions, default_binary};

/// Simulate a fleet of Latch agents against a control plane and measure enqueue → confirmed
/// latency, jobs confirmed per second, errors, and the server's CPU and memory.
///
/// By default it starts `latch-control serve` (the binary next to this one) on 127.0.0.1 with
/// a fresh data directory and the request limits raised, enrolls --agents simulated agents over
/// HTTPS (pinned CA), waits until all of them long-poll, queues --jobs jobs at --rate per second
/// (create-account for random simulated hosts, and delete-account of accounts created earlier),
/// waits for their outcomes and prints a table (or JSON). Simulated agents verify every job's
/// signature and change nothing on this machine.
///
/// Exit status: 0 when the run had no errors, 2 when it completed with errors (see the table),
/// 1 when it could not run.
#[derive(Parser)]
#[command(version, about, long_about, max_term_width = 100)]
struct Cli {
    /// Simulated agents (each holds one HTTPS connection).
    #[arg(short = 'n', long, default_value_t = 100)]
    agents: usize,
    /// Jobs to queue.
    #[arg(long, default_value_t = 1000)]
    jobs: u64,
    /// Jobs queued per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Fake work time of each job on a simulated host (included in the latency).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    work_time: Duration,
    /// Long-poll wait the agents ask for, in seconds (the control plane allows at most 30).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=30))]
    poll_wait: u64,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Admin connections that queue jobs in parallel.
    #[arg(long, default_value_t = 16)]
    queue_connections: usize,
    /// How long to wait, after enrolling, for every agent to be long-polling.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// How long to wait for outcomes after the last job was queued; jobs still open then count
    /// as `not_confirmed` errors.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Use a running control plane instead of starting one (repeatable: agents and admin
    /// connections are spread over the URLs in turn, e.g. several replicas). Start it with
    /// limits raised: `--rate-limit 1000000000 --auth-failure-limit 1000000
    /// --address-auth-failure-limit 1000000`.
    #[arg(long = "server", value_name = "URL")]
    servers: Vec<String>,
    /// The CA certificate (PEM) of --server (its data directory's ca.crt).
    #[arg(long, env = "LATCH_CA_FILE", requires = "servers")]
    ca_file: Option<PathBuf>,
    /// Admin token of --server. Prefer the environment (LATCH_TOKEN) or --token-file: argv is
    /// visible to other users.
    #[arg(
        long,
        env = "LATCH_TOKEN",
        hide_env_values = true,
        requires = "servers"
    )]
    token: Option<String>,
    /// File holding the admin token of --server (e.g. DATA_DIR/admin.token).
    #[arg(long, conflicts_with = "token", requires = "servers")]
    token_file: Option<PathBuf>,
    /// Process id of --server, to report its CPU and memory (same machine only).
    #[arg(long, requires = "servers")]
    server_pid: Option<u32>,
    /// The latch-control binary to start. Default: the one next to this executable.
    #[arg(long, conflicts_with = "servers")]
    server_binary: Option<PathBuf>,
    /// Database of the started server: passed to it as LATCH_DATABASE_URL (e.g.
    /// postgres://…; needs a latch-control with the PostgreSQL store). Default: SQLite in its
    /// data directory.
    #[arg(
        long,
        env = "LATCH_DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "servers"
    )]
    database_url: Option<String>,
    /// Log level of the started server (its log goes to WORK_DIR/server.log).
    #[arg(long, default_value = "info", conflicts_with = "servers")]
    server_log_level: String,
    /// An extra `latch-control serve` flag for the started server (repeatable), e.g.
    /// --server-arg=--lease-timeout=30s.
    #[arg(
        long = "server-arg",
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "servers"
    )]
    server_args: Vec<String>,
    /// Directory for the started server's data directory and log. Default: a temporary
    /// directory, removed afterwards.
    #[arg(long, conflicts_with = "servers")]
    work_dir: Option<PathBuf>,
    /// Output: a table for people, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// No progress bars (they are drawn only on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Raises this process's open-file limit to its hard limit; returns the soft limit now.
fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    if !(cli.rate > 0.0 && cli.rate.is_finite()) {
        anyhow::bail!("--rate must be a positive number of jobs per second");
    }
    if cli.agents == 0 {
        anyhow::bail!("--agents must be at least 1");
    }
    // Each agent holds a socket; the server this process starts inherits the raised limit.
    let limit = raise_fd_limit();
    let needed = cli.agents as u64 + cli.queue_connections as u64 + 64;
    if limit < needed {
        anyhow::bail!(
            "the open-file limit is {limit}, {needed} are needed for {} agents; raise the hard limit (`ulimit -Hn`, or LimitNOFILE= in a systemd unit) and run again",
            cli.agents
        );
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut temp_dir = None;
    let target = if cli.servers.is_empty() {
        let work_dir = match &cli.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create --work-dir {}", dir.display()))?;
                dir.clone()
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("latch-fleet-sim.")
                    .tempdir()
                    .context("cannot create a temporary directory (set TMPDIR or --work-dir)")?;
                let path = dir.path().to_path_buf();
                temp_dir = Some(dir);
                path
            }
        };
        Target::Start(ServerOptions {
            binary: cli.server_binary.clone().unwrap_or_else(default_binary),
            work_dir,
            database_url: cli.database_url.clone(),
            log_level: cli.server_log_level.clone(),
            extra_args: cli.server_args.clone(),
        })
    } else {
        let token = match (&cli.token, &cli.token_file) {
            (Some(token), _) => token.trim().to_owned(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read --token-file {}", file.display()))?
                .trim()
                .to_owned(),
            (None, None) => anyhow::bail!(
                "--server needs an admin token: set LATCH_TOKEN or pass --token-file DATA_DIR/admin.token"
            ),
        };
        let ca = match &cli.ca_file {
            Some(path) => Some((
                std::fs::read(path)
                    .with_context(|| format!("cannot read --ca-file {}", path.display()))?,
                path.display().to_string(),
            )),
            None => None,
        };
        Target::Connect {
            urls: cli.servers.clone(),
            ca,
            token,
            pid: cli.server_pid,
        }
    };
    let config = Config {
        agents: cli.agents,
        jobs: cli.jobs,
        rate: cli.rate,
        work_time: cli.work_time,
        poll_wait: Duration::from_secs(cli.poll_wait),
        enroll_concurrency: cli.enroll_concurrency,
        queue_connections: cli.queue_connections,
        connect_timeout: cli.connect_timeout,
        drain_timeout: cli.drain_timeout,
        target,
        progress: !cli.no_progress,
        command,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(latch_fleet_sim::run::run(config))?;
    // Drop the runtime before the work directory, so the server is gone when it is removed.
    drop(runtime);
    drop(temp_dir);
    match cli.output {
        Output::Table => print!("{}", report.table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.error_total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
