//! `latchctl`: the Latch admin CLI. A thin layer over the admin API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use latch_common::api::CreateEnrollTokenRequest;
use latch_common::labels::Labels;
use latch_control::client::AdminClient;

#[path = "latchctl/access.rs"]
mod access;
#[path = "latchctl/jobs.rs"]
mod jobs;
#[path = "latchctl/people.rs"]
mod people;
#[path = "latchctl/requests.rs"]
mod requests;
#[path = "latchctl/session.rs"]
mod session;
#[path = "latchctl/tables.rs"]
mod tables;
#[path = "latchctl/terminal.rs"]
mod terminal;
#[path = "latchctl/vault.rs"]
mod vault;
#[path = "latchctl/vault_settings.rs"]
mod vault_settings;
#[path = "latchctl/vault_views.rs"]
mod vault_views;
#[path = "latchctl/webhooks.rs"]
mod webhooks;

use jobs::{JobsCommand, job_request, wait_for_job};
use session::{admin_token, session_command};
use tables::{print_grants, print_hosts, print_job_detail, print_jobs, print_json, print_table};

/// Administer a Latch control plane: enrollment tokens, hosts, account jobs, grants (who has
/// which access), the audit trail, the job-signing key, people and permissions (users,
/// groups, roles, service users, MFA), and the credential vault (vaults, identities,
/// checkouts, rotations).
///
/// Credentials: --token (or LATCH_TOKEN) takes a bearer token or an API key (`latch_key_…`,
/// e.g. a service user's in a pipeline: latchctl exchanges it for a short-lived bearer token
/// itself). Without it, the session of `latchctl login` for this --server, else
/// ./latch-data/admin.token.
///
/// Exit status: 0 on success; 1 when the command failed (the message says why); for `jobs
/// wait`, 0 confirmed, 1 failed, 2 timed out, 3 the wait itself failed; the same for a
/// rotation followed with --wait (`rotations show`, `identities rotate`, `hosts
/// enroll-account`), 2 meaning still pending.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Control plane URL.
    #[arg(
        long,
        global = true,
        env = "LATCH_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    server: String,
    /// The control plane's CA certificate (PEM) to trust for https://. Default:
    /// ./latch-data/ca.crt when it exists.
    #[arg(long, global = true, env = "LATCH_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Bearer token or API key (`latch_key_…`). Prefer LATCH_TOKEN: a command line is visible
    /// to other users. Default: the session of `latchctl login` for this --server, else the
    /// contents of ./latch-data/admin.token.
    #[arg(long, global = true, env = "LATCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format: tables for people, JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Enrollment tokens (used once by `latch-agent enroll`).
    #[command(subcommand)]
    EnrollToken(EnrollTokenCommand),
    /// Enrolled hosts.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Account jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Who has which access now, and how recent grants ended (expired and revoked, revoked by a
    /// job, superseded, host removed, revocation stuck).
    Grants(GrantsArgs),
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rotation of the job-signing key agents pinned.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
    /// Sign in through the organization's identity provider (OpenID Connect): opens the
    /// provider in a browser, receives its redirect on 127.0.0.1, and keeps the session token
    /// (mode 0600) in $XDG_CONFIG_HOME/latch/session (or ~/.config/latch/session). With
    /// --local NAME: a local user's sign-in with their Latch password, kept the same way.
    Login {
        /// Do not try to open a browser; only print the URL.
        #[arg(long)]
        no_browser: bool,
        /// Use the device flow (for a machine without a browser): prints a code and a URL to
        /// open on any device, then waits.
        #[arg(long)]
        device: bool,
        /// How long to wait for the sign-in to come back.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        local: people::LocalLoginArgs,
    },
    /// End the signed-in session (the token stops working) and delete the session file.
    Logout,
    /// Who the session token (or --token) belongs to: name, roles, groups, session.
    Whoami,
    /// Your own live sessions (every sign-in: browser, `latchctl login`, service tokens): list
    /// them, end one you do not recognise, or end all but this one.
    #[command(subcommand)]
    Sessions(session::SessionsCommand),
    #[command(flatten)]
    People(people::PeopleCommand),
    #[command(flatten)]
    Vault(vault::VaultCommand),
    /// Just-in-time access policies: which group may request which access (ephemeral-account,
    /// sudo) on which hosts, for how long, and who approves.
    #[command(subcommand)]
    Policies(access::PoliciesCommand),
    /// Just-in-time access requests: ask for sudo or an account on hosts for a while, approve
    /// or deny, follow one live, re-confirm, end one early.
    #[command(subcommand)]
    Access(requests::AccessCommand),
    /// Print a shell completion script, e.g. `latchctl completions bash >
    /// /etc/bash_completion.d/latchctl` (or zsh, fish, elvish, powershell). Needs no server.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Signed webhooks: where the control plane POSTs events (pending access requests,
    /// decisions, break-glass), signed with HMAC-SHA-256 and retried with backoff; each
    /// delivery's status. Needs `settings.manage`.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Make the next key and send it to every host (in a job signed with the current key).
    Rotate,
    /// Switch to the next key once every host confirmed it.
    Promote {
        /// Switch even if some hosts have not confirmed; they must then be enrolled again.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// List audit entries, oldest first.
    List {
        /// Only entries of the last DURATION (e.g. 1h, 7d) or since an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only this actor (admin, host:<id>, control_plane, anonymous, enroll_token:<prefix>).
        #[arg(long)]
        actor: Option<String>,
        /// Only this host (id or name).
        #[arg(long)]
        host: Option<String>,
    },
    /// Check the chain — ids, links, hashes and each entry's MAC under the audit key — and that
    /// it still holds the head the server recorded (audit.head) and every --checkpoint: exit 0
    /// if intact; exit 1 and the first bad entry if not.
    Verify {
        /// A checkpoint exported earlier with `latchctl audit checkpoint` (repeatable): the
        /// chain must still hold its entry with its hash (a removed tail or rewritten history
        /// is reported), and it must be signed by this control plane's audit key.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
    },
    /// Sign a checkpoint of the chain's head (refused if the chain does not verify). Keep it
    /// outside the control plane; `audit verify --checkpoint FILE` checks against it later.
    Checkpoint {
        /// Write the checkpoint to this new file (never overwritten) instead of stdout.
        #[arg(long)]
        output_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EnrollTokenCommand {
    /// Create an enrollment token; prints it once, with the enroll command to run on the host.
    Create {
        /// Lifetime (e.g. 30m, 1h, 7d); at least 1s.
        #[arg(long, default_value = "1h", value_parser = positive_duration, allow_hyphen_values = true)]
        ttl: Duration,
        /// How many hosts may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// A label every host enrolled with the token gets (KEY=VALUE, e.g. env=prod);
        /// repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label_arg)]
        labels: Vec<(String, String)>,
        /// Hosts enrolled with the token trust this control plane's SSH user CA: their agent
        /// installs it in sshd (TrustedUserCAKeys, AuthorizedPrincipalsFile), so grants there can
        /// use OpenSSH user certificates valid exactly for their window.
        #[arg(long)]
        ssh_ca: bool,
    },
}

#[derive(Subcommand)]
enum HostsCommand {
    /// List hosts with their facts, labels and whether their agent is online.
    List {
        /// Only hosts whose labels match (e.g. 'env=prod,team in (db,web)').
        #[arg(long, value_name = "SELECTOR")]
        selector: Option<String>,
    },
    /// Show one host (HOST = host id or host name).
    Show {
        /// Host id or host name.
        host: String,
    },
    /// Remove a host: its credential stops working at once, its pending jobs are cancelled, and
    /// its agent stops (it must be enrolled again to be managed). Accounts already on the host
    /// stay: queue delete-account jobs first if they should go.
    Remove {
        /// Host id or host name.
        host: String,
    },
    /// Set or remove labels of a host (the others stay): `hosts label db1 env=prod team=db
    /// --remove legacy`.
    Label {
        /// Host id or host name.
        host: String,
        /// Labels to set (KEY=VALUE); a key the host has gets the new value.
        #[arg(value_name = "KEY=VALUE", value_parser = label_arg)]
        set: Vec<(String, String)>,
        /// A label to remove (KEY); repeat for more.
        #[arg(long = "remove", value_name = "KEY", value_parser = label_key_arg)]
        remove: Vec<String>,
    },
    /// One-click vault enrollment of an existing account on a host: Latch adopts the account,
    /// makes an identity for it in a vault, and sets a new random password there (a rotation:
    /// follow it with --wait). Needs `hosts.manage_users` and `pam_vaults.manage`, and the
    /// host's agent online.
    EnrollAccount(vault::EnrollAccountArgs),
}

#[derive(Args)]
struct GrantsArgs {
    /// Only grants on this host (id or name; removed hosts too).
    #[arg(long)]
    host: Option<String>,
    /// Only grants of this account.
    #[arg(long)]
    user: Option<String>,
    /// Only grants in this state.
    #[arg(long, value_parser = ["active", "revoking", "revocation_stuck", "revoked", "superseded", "host_removed"])]
    state: Option<String>,
    /// Besides every grant not over yet, show those created or revoked within DURATION (e.g.
    /// 1h, 7d) or since an RFC 3339 time.
    #[arg(long, default_value = "24h", conflicts_with = "all")]
    since: String,
    /// Show every grant ever made, however old.
    #[arg(long)]
    all: bool,
    /// Only grants on hosts whose labels match (e.g. 'env=prod,team in (db,web)').
    #[arg(long, value_name = "SELECTOR")]
    selector: Option<String>,
}

fn main() -> ExitCode {
    exit_quietly_when_stdout_closes();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() && json_output_requested() => {
            // A usage error in JSON mode: the same {"code", "message"} as every other error.
            let rendered = error.to_string();
            let message = rendered.lines().next().unwrap_or_default();
            print_error_json(
                "invalid_request",
                message.strip_prefix("error: ").unwrap_or(message),
            );
            return ExitCode::from(2);
        }
        Err(error) => error.exit(),
    };
    if let Command::Completions { shell } = &cli.command {
        use clap::CommandFactory as _;
        use std::io::Write as _;
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "latchctl", &mut script);
        return match std::io::stdout().write_all(&script) {
            // `| head`: the reader has what it wanted.
            Ok(()) => ExitCode::SUCCESS,
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: cannot write the completion script: {error}");
                ExitCode::from(1)
            }
        };
    }
    let json = cli.output == Output::Json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return report_error(json, &anyhow::Error::new(error).context("cannot start"), 1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => report_error(json, &error, 1),
    }
}

/// Exit status when standard output was closed early (`latchctl … | head`): that of a program
/// ended by SIGPIPE, so a pipeline under `set -o pipefail` does not mistake a cut-short
/// `audit verify` or `jobs wait` for success.
const CLOSED_STDOUT_EXIT: i32 = 128 + 13;

/// `println!` panics when standard output is a closed pipe (Rust ignores SIGPIPE, so the write
/// fails with EPIPE). Output written through [`print_json`] returns that error instead; for the
/// rest, this hook turns exactly that panic into a quiet exit, and leaves every other panic to
/// the default hook.
fn exit_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout")
            && (message.contains("Broken pipe") || message.contains("os error 32"))
        {
            std::process::exit(CLOSED_STDOUT_EXIT);
        }
        default(info);
    }));
}

/// Whether the raw arguments ask for `--output json` (used before they could be parsed).
fn json_output_requested() -> bool {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter().any(|a| a == "--output=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--output" && w[1] == "json")
}

/// The API error code for `error`: the control plane's own code when it answered with one;
/// `service_offline` when it could not be reached; `unknown_error` for an unreadable answer;
/// `invalid_request` for anything refused here before a request was sent.
fn error_code(error: &anyhow::Error) -> String {
    use latch_control::client::ClientError;
    match error
        .chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>())
    {
        Some(ClientError::Api { code, .. }) => code.clone(),
        Some(ClientError::Unreachable { .. }) => "service_offline".to_owned(),
        Some(ClientError::Decode(_)) => "unknown_error".to_owned(),
        Some(_) | None => "invalid_request".to_owned(),
    }
}

fn print_error_json(code: &str, message: &str) {
    use std::io::Write as _;
    let body = serde_json::json!({ "code": code, "message": message });
    // Nothing more can be said if standard output itself is gone.
    let _ = writeln!(std::io::stdout().lock(), "{body:#}");
}

/// Prints `error` — in JSON mode as `{"code", "message"}` on standard output, else as
/// `error: …` on standard error — and returns `status`. A closed standard output ends the
/// program quietly instead.
fn report_error(json: bool, error: &anyhow::Error, status: u8) -> ExitCode {
    let stdout_closed = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if stdout_closed {
        std::process::exit(CLOSED_STDOUT_EXIT);
    }
    if json {
        print_error_json(&error_code(error), &format!("{error:#}"));
    } else {
        eprintln!("error: {error:#}");
    }
    ExitCode::from(status)
}

/// `--ttl`: a positive duration, with plain-language errors.
/// A `KEY=VALUE` label argument, checked.
fn label_arg(text: &str) -> Result<(String, String), String> {
    latch_common::labels::parse_label(text).map_err(|e| e.reason)
}

/// A label key argument (`--remove KEY`), checked.
fn label_key_arg(text: &str) -> Result<String, String> {
    latch_common::labels::validate_label_key(text).map_err(|e| e.reason)?;
    Ok(text.to_owned())
}

/// Labels as `key=value,key=value` (`-` for none).
fn labels_text(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `labels` with `set` applied and the keys in `remove` taken away; refuses a request that
/// changes nothing or names a key both ways.
fn relabel(
    mut labels: Labels,
    set: &[(String, String)],
    remove: &[String],
) -> anyhow::Result<Labels> {
    if set.is_empty() && remove.is_empty() {
        bail!(
            "nothing to change: give labels to set (KEY=VALUE) and/or --remove KEY, e.g. `latchctl hosts label db1 env=prod --remove legacy`"
        );
    }
    if let Some((key, _)) = set.iter().find(|(key, _)| remove.contains(key)) {
        bail!("label {key:?} is both set and removed; give it once");
    }
    for key in remove {
        labels.remove(key);
    }
    labels.extend(set.iter().cloned());
    Ok(labels)
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err("a lifetime cannot be negative; give e.g. 30m, 1h or 7d".to_owned());
    }
    let duration = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is not a duration; give a number with a unit, e.g. 90s, 30m, 1h or 7d")
    })?;
    if duration < Duration::from_secs(1) {
        return Err(
            "must be at least 1s (e.g. 30m, 1h); a token that expires at once could never be used"
                .to_owned(),
        );
    }
    Ok(duration)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Before anything is read or sent: the admin token never goes over plain http:// to a host
    // that is not loopback.
    latch_control::client::check_server_url(&cli.server)?;
    // reqwest is built without a default TLS provider: install ring's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_file = cli.ca_file.clone().or_else(|| {
        let default = PathBuf::from("latch-data").join("ca.crt");
        default.exists().then_some(default)
    });
    let ca_pem = match &ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?,
        ),
        None => None,
    };
    let json = cli.output == Output::Json;
    if let Some(code) = session_command(&cli, ca_pem.as_deref(), json).await? {
        return Ok(code);
    }
    let client = AdminClient::new(&cli.server, &admin_token(&cli)?, ca_pem.as_deref())?;
    match &cli.command {
        Command::EnrollToken(EnrollTokenCommand::Create {
            ttl,
            uses,
            labels,
            ssh_ca,
        }) => {
            let token = client
                .create_enroll_token(&CreateEnrollTokenRequest {
                    // Whole seconds, rounded up: 1.5s is 2s, never 1s.
                    ttl_seconds: Some(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)),
                    uses: Some(*uses),
                    labels: labels.iter().cloned().collect(),
                    ssh_ca: *ssh_ca,
                })
                .await?;
            if json {
                print_json(&token)?;
            } else {
                print_table(
                    &["TOKEN", "EXPIRES", "USES", "LABELS"],
                    vec![vec![
                        token.token.clone(),
                        token.expires_at.to_rfc3339(),
                        token.uses.to_string(),
                        labels_text(&token.labels),
                    ]],
                );
                let trust = match &token.ca_fingerprint {
                    Some(fingerprint) => format!("--ca-fingerprint {fingerprint}"),
                    None => "--insecure-http".to_owned(),
                };
                println!(
                    "\nEnroll a host: as root on that host, with the URL by which it reaches this control plane\n\
                     (the token goes on standard input, not on the command line, where other users could see it):\n\n  \
                     echo '{}' | latch-agent enroll --server {} {trust} --token-file -\n\n\
                     A host enrolled before (removed, restored database, cloned image): stop its agent and add --replace.",
                    token.token, cli.server
                );
            }
        }
        Command::Hosts(HostsCommand::List { selector }) => {
            let hosts = client.list_hosts(selector.as_deref()).await?;
            if json {
                print_json(&serde_json::json!({ "list": hosts }))?;
            } else {
                print_hosts(&hosts);
            }
        }
        Command::Hosts(HostsCommand::Show { host }) => {
            let host = client.show_host(host).await?;
            if json {
                print_json(&host)?;
            } else {
                print_hosts(std::slice::from_ref(&host));
                println!(
                    "machine-id: {}  enrolled: {}\nlabels: {}\nSSH user CA trusted: {}\nagent: {}",
                    host.facts.machine_id,
                    host.enrolled_at.to_rfc3339(),
                    labels_text(&host.labels),
                    if host.ssh_ca { "yes" } else { "no" },
                    host.agent
                        .as_ref()
                        .map_or("not polled yet".to_owned(), |agent| format!(
                            "latch-agent {} (protocol {})",
                            agent.version, agent.protocol
                        ))
                );
            }
        }
        Command::Hosts(HostsCommand::Label { host, set, remove }) => {
            let current = client.show_host(host).await?;
            let labels = relabel(current.labels, set, remove)?;
            let host = client.set_host_labels(&current.id, &labels).await?;
            if json {
                print_json(&host)?;
            } else {
                println!(
                    "labels of {} ({}): {}",
                    host.facts.hostname,
                    host.id,
                    labels_text(&host.labels)
                );
            }
        }
        Command::Hosts(HostsCommand::Remove { host }) => {
            let removed = client.remove_host(host).await?;
            if json {
                print_json(&removed)?;
            } else {
                println!(
                    "removed host {}; {} pending job(s) cancelled; its agent stops at its next request",
                    removed["id"].as_str().unwrap_or(host),
                    removed["cancelled_jobs"]
                );
            }
        }
        Command::Jobs(JobsCommand::Create(args)) => {
            let job = client
                .create_job(&job_request(args)?)
                .await
                .map_err(in_cli_words)?;
            if json {
                print_json(&job)?;
            } else {
                print_jobs(std::slice::from_ref(&job));
                println!("\nFollow it with: latchctl jobs wait {}", job.id);
            }
        }
        Command::Jobs(JobsCommand::List {
            host,
            status,
            selector,
        }) => {
            let jobs = client
                .list_jobs(host.as_deref(), status.as_deref(), selector.as_deref())
                .await?;
            if json {
                print_json(&serde_json::json!({ "list": jobs }))?;
            } else {
                print_jobs(&jobs);
            }
        }
        Command::Grants(args) => {
            let since = if args.all {
                None
            } else {
                Some(parse_since(&args.since)?)
            };
            let grants = client
                .list_grants(
                    args.host.as_deref(),
                    args.user.as_deref(),
                    args.state.as_deref(),
                    since,
                    args.selector.as_deref(),
                )
                .await?;
            if json {
                print_json(&serde_json::json!({ "list": grants }))?;
            } else {
                print_grants(&grants);
            }
        }
        Command::Jobs(JobsCommand::Show { id }) => {
            let job = client.show_job(id).await?;
            if json {
                print_json(&job)?;
            } else {
                print_job_detail(&job);
            }
        }
        Command::Audit(AuditCommand::List { since, actor, host }) => {
            let since = match since {
                None => None,
                Some(text) => Some(match chrono::DateTime::parse_from_rfc3339(text) {
                    Ok(time) => time.with_timezone(&chrono::Utc),
                    Err(_) => {
                        let ago = humantime::parse_duration(text).with_context(|| {
                            format!(
                                "--since {text:?}: give a duration (1h, 7d) or an RFC 3339 time"
                            )
                        })?;
                        chrono::Utc::now()
                            - chrono::Duration::from_std(ago).context("--since is too long")?
                    }
                }),
            };
            let entries = client
                .list_audit(since, actor.as_deref(), host.as_deref())
                .await?;
            if json {
                print_json(&serde_json::json!({ "list": entries }))?;
            } else {
                let rows = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.id.to_string(),
                            e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                            e.actor.clone(),
                            e.action.clone(),
                            e.host_id.clone().unwrap_or_default(),
                            e.job_id.clone().unwrap_or_default(),
                            e.detail.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &["ID", "AT", "ACTOR", "ACTION", "HOST", "JOB", "DETAIL"],
                    rows,
                );
            }
        }
        Command::SigningKey(SigningKeyCommand::Rotate) => {
            let rotation = client.rotate_signing_key().await?;
            if json {
                print_json(&rotation)?;
            } else {
                let jobs = rotation["jobs"].as_array().map_or(0, Vec::len);
                println!(
                    "next signing key: {}",
                    rotation["next_key"].as_str().unwrap_or("")
                );
                println!(
                    "queued a rotate-signing-key job for {jobs} host(s); when all are confirmed: latchctl signing-key promote"
                );
            }
        }
        Command::People(command) => {
            people::run(&client, command, json, &cli.server).await?;
        }
        Command::Vault(command) => return vault::run(&client, command, json).await,
        Command::Policies(command) => access::run(&client, command, json).await?,
        Command::Access(command) => return requests::run(&client, command, json).await,
        // Answered in `main`, before any connection.
        Command::Completions { .. } => {}
        Command::Webhooks(command) => webhooks::run(&client, command, json).await?,
        Command::Hosts(HostsCommand::EnrollAccount(args)) => {
            return vault::enroll_account(&client, args, json).await;
        }
        // Handled by session_command above.
        Command::Login { .. } | Command::Logout | Command::Whoami | Command::Sessions(_) => {}
        Command::SigningKey(SigningKeyCommand::Promote { force }) => {
            let promoted = client.promote_signing_key(*force).await?;
            if json {
                print_json(&promoted)?;
            } else {
                println!(
                    "new jobs are now signed with {}",
                    promoted["signing_key"].as_str().unwrap_or("")
                );
                if let Some(behind) = promoted["hosts_left_behind"]
                    .as_array()
                    .filter(|b| !b.is_empty())
                {
                    println!(
                        "{} host(s) never confirmed the key and must be enrolled again",
                        behind.len()
                    );
                }
            }
        }
        Command::Audit(AuditCommand::Verify { checkpoint }) => {
            let mut checkpoints = Vec::new();
            for path in checkpoint {
                let text = std::fs::read(path)
                    .with_context(|| format!("cannot read the checkpoint {}", path.display()))?;
                let parsed: latch_control::audit::Checkpoint = serde_json::from_slice(&text)
                    .with_context(|| {
                        format!(
                            "{} is not a checkpoint written by `latchctl audit checkpoint`",
                            path.display()
                        )
                    })?;
                checkpoints.push(serde_json::to_value(parsed)?);
            }
            let result = if checkpoints.is_empty() {
                client.verify_audit().await?
            } else {
                client.verify_audit_with(&checkpoints).await?
            };
            if json {
                print_json(&result)?;
            } else {
                if result["ok"] == true {
                    println!(
                        "audit chain intact: {} entries, each with a valid MAC under audit key {}",
                        result["entries"],
                        result["key_id"].as_str().unwrap_or("")
                    );
                } else {
                    println!(
                        "audit chain BROKEN at entry {}: {}",
                        result["first_bad"]["id"],
                        result["first_bad"]["reason"].as_str().unwrap_or("")
                    );
                }
                for check in result["checkpoints"].as_array().into_iter().flatten() {
                    let source = check["source"].as_str().unwrap_or("");
                    let at = check["at"].as_str().unwrap_or("");
                    if check["ok"] == true {
                        println!(
                            "  holds the checkpoint of {at} ({source}, entry {})",
                            check["id"]
                        );
                    } else {
                        println!(
                            "  does NOT hold the checkpoint of {at} ({source}, entry {}): {}",
                            check["id"],
                            check["problem"]["reason"].as_str().unwrap_or("")
                        );
                    }
                }
                if !result["checkpoints"]
                    .as_array()
                    .is_some_and(|checks| checks.iter().any(|c| c["source"] == "audit.head"))
                {
                    println!(
                        "  (no head recorded by the server yet: a removed tail shows only against an exported --checkpoint)"
                    );
                }
            }
            return Ok(if result["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Audit(AuditCommand::Checkpoint { output_file }) => {
            let checkpoint = client.audit_checkpoint().await?;
            match output_file {
                None => print_json(&checkpoint)?,
                Some(path) => {
                    let mut text = serde_json::to_vec_pretty(&checkpoint)?;
                    text.push(b'\n');
                    latch_control::datadir::write_file(
                        path,
                        &text,
                        0o644,
                        latch_control::datadir::Existing::Refuse,
                    )
                    .with_context(|| {
                        format!(
                            "cannot write the checkpoint to {} (an existing file is never overwritten: checkpoints are evidence; choose a new name)",
                            path.display()
                        )
                    })?;
                    if json {
                        print_json(&checkpoint)?;
                    } else {
                        println!(
                            "checkpoint of entry {} written to {}; keep it outside the control plane and check it later with `latchctl audit verify --checkpoint {}`",
                            checkpoint["id"],
                            path.display(),
                            path.display()
                        );
                    }
                }
            }
        }
        Command::Jobs(JobsCommand::Wait { id, timeout }) => {
            return Ok(match wait_for_job(&client, id, *timeout, json).await {
                Ok(code) => code,
                Err(error) => report_error(json, &error, 3),
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Names the command-line flag where the control plane names the API field it came from.
fn in_cli_words(error: latch_control::client::ClientError) -> latch_control::client::ClientError {
    match error {
        latch_control::client::ClientError::Api {
            status,
            code,
            message,
        } => {
            let message = [
                ("expires_in_ms:", "--expires-in:"),
                ("permanent:", "--permanent:"),
            ]
            .iter()
            .find_map(|(field, flag)| {
                message
                    .strip_prefix(field)
                    .map(|rest| format!("{flag}{rest}"))
            })
            .unwrap_or(message);
            latch_control::client::ClientError::Api {
                status,
                code,
                message,
            }
        }
        other => other,
    }
}

/// `--since`: a duration back from now (1h, 7d) or an RFC 3339 time.
fn parse_since(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    let plain = || {
        anyhow::anyhow!("--since {text:?}: give a duration such as 1h or 7d, or an RFC 3339 time")
    };
    let ago = humantime::parse_duration(text).map_err(|_| plain())?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| plain())?;
    chrono::Utc::now().checked_sub_signed(ago).ok_or_else(plain)
}
