//! `latchctl jobs`: queue a job for a host, list and show jobs, wait for one's outcome.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use latch_common::api::CreateJobRequest;
use latch_common::job::{JobKind, JobStatus};
use latch_control::client::AdminClient;

use super::{print_job_detail, print_json};

#[derive(Subcommand)]
pub(crate) enum JobsCommand {
    /// Queue a job for a host.
    Create(CreateJobArgs),
    /// List jobs, newest first.
    List {
        /// Only jobs of this host (id or name).
        #[arg(long)]
        host: Option<String>,
        /// Only jobs with this status.
        #[arg(long, value_parser = ["pending", "confirmed", "failed"])]
        status: Option<String>,
        /// Only jobs of hosts whose labels match (e.g. 'env=prod,team in (db,web)').
        #[arg(long, value_name = "SELECTOR")]
        selector: Option<String>,
    },
    /// Show one job with its history.
    Show {
        /// Job id.
        id: String,
    },
    /// Wait until a job is confirmed (exit 0) or failed (exit 1); exit 2 on timeout.
    Wait {
        /// Job id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Args)]
pub(crate) struct CreateJobArgs {
    /// Host id or host name.
    #[arg(long)]
    host: String,
    /// What to do.
    #[arg(long, value_parser = ["create-account", "delete-account", "add-group", "remove-group", "set-password"])]
    kind: String,
    /// The account.
    #[arg(long)]
    user: String,
    /// add-group / remove-group: the group; create-account: an extra group (repeatable).
    #[arg(long)]
    group: Vec<String>,
    /// create-account / add-group: end the access after this long (e.g. 30m, 2h, 1d), counted
    /// from when the control plane receives the job. At most the control plane's
    /// --max-grant-duration (default 24h); without it the default window applies (default 1h).
    #[arg(long, allow_hyphen_values = true)]
    expires_in: Option<String>,
    /// create-account / add-group: no end at all (recorded in the audit trail). Use sparingly:
    /// only a delete-account or remove-group job ends such access.
    #[arg(long, conflicts_with = "expires_in")]
    permanent: bool,
    /// create-account: file of SSH public keys, one per line (blank lines and # comments skipped).
    #[arg(long)]
    ssh_key_file: Option<PathBuf>,
    /// create-account: login shell (default: the host's configured default).
    #[arg(long)]
    shell: Option<String>,
    /// create-account: also join the host's sudo group (the first of its allowed_groups that
    /// exists there; refused with no_sudo_group if none does).
    #[arg(long)]
    sudo: bool,
    /// create-account: an SSH certificate principal the account accepts, on hosts enrolled
    /// with --ssh-ca (repeatable, at most 8; letters, digits, _ . @ -).
    #[arg(long = "principal", value_name = "PRINCIPAL")]
    principals: Vec<String>,
    /// set-password: read the new password from the first line of standard input. The control
    /// plane hashes it; only the hash reaches the host.
    #[arg(long)]
    password_stdin: bool,
}

pub(crate) fn job_request(args: &CreateJobArgs) -> anyhow::Result<CreateJobRequest> {
    let kind = JobKind::parse(&args.kind).context("unknown job kind")?;
    let mut request = CreateJobRequest {
        host: args.host.clone(),
        kind: Some(kind),
        user: args.user.clone(),
        shell: args.shell.clone(),
        sudo: args.sudo,
        principals: args.principals.clone(),
        ..CreateJobRequest::default()
    };
    match kind {
        JobKind::CreateAccount => request.groups = args.group.clone(),
        _ => match args.group.as_slice() {
            [] => {}
            [group] => request.group = Some(group.clone()),
            _ => bail!("--group may be given once for {kind}"),
        },
    }
    if let Some(text) = &args.expires_in {
        request.expires_in_ms = Some(parse_expires_in(text)?);
    }
    request.permanent = args.permanent;
    if let Some(path) = &args.ssh_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the SSH key file {}", path.display()))?;
        request.ssh_keys = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect();
        if request.ssh_keys.is_empty() {
            bail!("{} holds no SSH public key", path.display());
        }
    }
    if args.password_stdin {
        if std::io::stdin().is_terminal() {
            eprint!("New password (input is not hidden; prefer a pipe): ");
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            bail!("--password-stdin: standard input held no password");
        }
        request.password = Some(password);
    } else if kind == JobKind::SetPassword {
        bail!(
            "set-password needs --password-stdin (passwords are never taken from the command line)"
        );
    }
    Ok(request)
}
/// `--expires-in`: a positive duration, in milliseconds (the control plane checks the maximum).
fn parse_expires_in(text: &str) -> anyhow::Result<u64> {
    let plain = || {
        anyhow::anyhow!(
            "--expires-in {text:?}: give a positive duration such as 30m, 2h or 1d (units: s, m, h, d)"
        )
    };
    let duration = humantime::parse_duration(text.trim()).map_err(|_| plain())?;
    match u64::try_from(duration.as_millis()) {
        Ok(0) => Err(plain()),
        Ok(ms) => Ok(ms),
        // Longer than any control plane allows; let it name its limit.
        Err(_) => Ok(u64::MAX),
    }
}
pub(crate) async fn wait_for_job(
    client: &AdminClient,
    id: &str,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let show_progress = !json && std::io::stderr().is_terminal();
    loop {
        let job = match client.show_job(id).await {
            Ok(job) => job,
            Err(latch_control::client::ClientError::Api { status: 429, .. }) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if job.status != JobStatus::Pending {
            if json {
                print_json(&job)?;
            } else {
                if show_progress {
                    eprintln!();
                }
                print_job_detail(&job);
            }
            return Ok(if job.status == JobStatus::Confirmed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if started.elapsed() >= timeout {
            if json {
                print_json(&job)?;
            } else {
                eprintln!(
                    "timed out after {:?}: job {id} is still pending (attempts: {})",
                    timeout, job.attempts
                );
            }
            return Ok(ExitCode::from(2));
        }
        if show_progress {
            const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
            let frame = SPINNER[(started.elapsed().as_millis() / 100) as usize % SPINNER.len()];
            eprint!(
                "\r{frame} waiting for job {id}: pending, {} delivery attempt(s), {:.0?} elapsed ",
                job.attempts,
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
