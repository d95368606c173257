//! `latchctl access`: just-in-time access requests (issue 12), over `/v1/access/requests`:
//! ask, decide, follow, re-confirm and end them.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use latch_common::access::{AccessKind, AccessRequestCreate, AccessRequestView};
use latch_control::client::{AdminClient, ClientError};

use super::access::{access_arg, minutes_arg};
use super::print_json;
use super::tables::{Paint, print_table, relative};
use super::vault::reason_arg;

/// Just-in-time access requests: ask for access to hosts for a while, approve or deny others'
/// requests, follow one until it is active, end one early.
#[derive(Subcommand)]
pub enum AccessCommand {
    /// Ask for access (`access.request`): a policy must allow it; it then waits for its
    /// approvers, or is approved and provisioned at once. Without --ssh-key-file Latch
    /// generates a key pair: the private key is written to --key-out (mode 0600), once.
    Request(RequestArgs),
    /// Requests: everyone's with access.view, otherwise yours and those you may approve.
    List {
        /// Only your own requests.
        #[arg(long)]
        mine: bool,
        /// Only requests in this state.
        #[arg(long, value_parser = STATES)]
        state: Option<String>,
    },
    /// One request: its timeline, decisions, hosts and their jobs.
    Show {
        /// Request id (ar_…).
        id: String,
    },
    /// Approve a request as a member of its policy's approver group (never your own).
    Approve {
        /// Request id.
        id: String,
        /// Why (optional, 1–500 characters).
        #[arg(long, default_value = "", value_parser = optional_reason)]
        reason: String,
    },
    /// Deny a request as a member of its policy's approver group.
    Deny {
        /// Request id.
        id: String,
        /// Why (optional, 1–500 characters).
        #[arg(long, default_value = "", value_parser = optional_reason)]
        reason: String,
    },
    /// Withdraw your own request before it is provisioned.
    Cancel {
        /// Request id.
        id: String,
        /// Why (optional).
        #[arg(long, default_value = "", value_parser = optional_reason)]
        reason: String,
    },
    /// End a request's access now (its requester, its approvers, or access.approve): the
    /// account is removed from every host.
    Revoke {
        /// Request id.
        id: String,
        /// Why (optional).
        #[arg(long, default_value = "", value_parser = optional_reason)]
        reason: String,
    },
    /// Re-confirm your active grant with a recent second factor (`latchctl mfa verify`),
    /// when its policy asks for it; otherwise the grant ends at the deadline.
    Confirm {
        /// Request id.
        id: String,
    },
    /// Follow a request live until it is active (exit 0), over without access (exit 1), or
    /// the timeout (exit 2): its state and each host's.
    Watch {
        /// Request id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Write the request's SSH certificate (hosts that trust Latch's CA) next to its key:
    /// to --out, or `<key>-cert.pub` for the key Latch generated.
    Certificate {
        /// Request id.
        id: String,
        /// Where to write it (default: ~/.ssh/latch-<id>-cert.pub).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

const STATES: [&str; 10] = [
    "pending_approval",
    "approved",
    "provisioning",
    "active",
    "revoking",
    "expired",
    "revoked",
    "denied",
    "cancelled",
    "failed",
];

/// What `latchctl access request` asks for.
#[derive(Args)]
pub struct RequestArgs {
    /// One host (id or name).
    #[arg(long, required_unless_present = "hosts", conflicts_with = "hosts")]
    host: Option<String>,
    /// Every host matching a label selector, e.g. env=prod,role=db.
    #[arg(long, value_name = "SELECTOR")]
    hosts: Option<String>,
    /// What: sudo (an account in the sudo group) or ephemeral-account (an account).
    #[arg(long, value_parser = access_arg)]
    role: AccessKind,
    /// For how long once active, e.g. 2h or 30m (the policy's maximum applies).
    #[arg(long = "for", value_parser = minutes_arg)]
    minutes: u32,
    /// Why (1–500 characters; in the audit trail and the approvers' notification).
    #[arg(long, value_parser = reason_arg)]
    reason: String,
    /// Your SSH public key (e.g. ~/.ssh/id_ed25519.pub). Without it Latch generates a key pair.
    #[arg(long)]
    ssh_key_file: Option<PathBuf>,
    /// Where to write the generated private key (default ~/.ssh/latch-<request id>).
    #[arg(long, conflicts_with = "ssh_key_file")]
    key_out: Option<PathBuf>,
    /// Then follow it like `latchctl access watch` until it is active.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn optional_reason(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Ok(String::new())
    } else {
        reason_arg(text)
    }
}

/// `~/.ssh/latch-<id>`.
fn default_key_path(id: &str) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; give --key-out")?;
    Ok(Path::new(&home).join(".ssh").join(format!("latch-{id}")))
}

/// Writes `text` to a new file `path` with mode 0600 (never over an existing file).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (it must not exist yet; choose another --key-out/--out)",
                path.display()
            )
        })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs an `access` command; the exit code tells scripts the outcome.
pub async fn run(
    client: &AdminClient,
    command: &AccessCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let view = match command {
        AccessCommand::Request(args) => return request(client, args, json).await,
        AccessCommand::List { mine, state } => {
            let list = client.list_access_requests(*mine, state.as_deref()).await?;
            if json {
                print_json(&serde_json::json!({ "list": list }))?;
            } else {
                print_requests(&list);
            }
            return Ok(ExitCode::SUCCESS);
        }
        AccessCommand::Show { id } => client.show_access_request(id).await?,
        AccessCommand::Approve { id, reason } => {
            client.act_on_access_request(id, "approve", reason).await?
        }
        AccessCommand::Deny { id, reason } => {
            client.act_on_access_request(id, "deny", reason).await?
        }
        AccessCommand::Cancel { id, reason } => {
            client.act_on_access_request(id, "cancel", reason).await?
        }
        AccessCommand::Revoke { id, reason } => {
            client.act_on_access_request(id, "revoke", reason).await?
        }
        AccessCommand::Confirm { id } => client.act_on_access_request(id, "confirm", "").await?,
        AccessCommand::Watch { id, timeout } => return watch(client, id, *timeout, json).await,
        AccessCommand::Certificate { id, out } => {
            let view = client.show_access_request(id).await?;
            let Some(certificate) = &view.certificate else {
                bail!(
                    "access request {id} has no certificate: it is {}, and a certificate is issued when it becomes active on hosts that trust Latch's CA",
                    view.state
                );
            };
            let path = match out {
                Some(path) => path.clone(),
                None => {
                    let mut key = default_key_path(id)?.into_os_string();
                    key.push("-cert.pub");
                    PathBuf::from(key)
                }
            };
            write_private(&path, &format!("{certificate}\n"))?;
            if json {
                print_json(&serde_json::json!({"request": id, "certificate_file": path}))?;
            } else {
                println!("certificate written to {}", path.display());
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        print_json(&view)?;
    } else {
        print_request(&view);
    }
    Ok(ExitCode::SUCCESS)
}

async fn request(client: &AdminClient, args: &RequestArgs, json: bool) -> anyhow::Result<ExitCode> {
    let ssh_public_key = match &args.ssh_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the SSH public key {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    if ssh_public_key
        .as_deref()
        .is_some_and(|key| key.contains("PRIVATE KEY"))
    {
        bail!(
            "{} holds a private key; give the public one (the .pub file)",
            args.ssh_key_file
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        );
    }
    let body = AccessRequestCreate {
        host: args.host.clone(),
        hosts: args.hosts.clone(),
        access: args.role,
        minutes: args.minutes,
        reason: args.reason.clone(),
        ssh_public_key,
    };
    let mut view = client.create_access_request(&body).await?;
    let mut key_file = None;
    if let Some(private_key) = view.private_key.take() {
        let path = match &args.key_out {
            Some(path) => path.clone(),
            None => default_key_path(&view.id)?,
        };
        write_private(&path, &private_key).with_context(|| {
            format!(
                "access request {} was made, but its generated private key could not be saved; revoke it (latchctl access revoke {}) and ask again with --key-out",
                view.id, view.id
            )
        })?;
        key_file = Some(path);
    }
    if json {
        let mut value = serde_json::to_value(&view)?;
        value["private_key_file"] = serde_json::json!(key_file);
        print_json(&value)?;
    } else {
        print_request(&view);
        if let Some(path) = &key_file {
            println!(
                "private key: {} (generated for this request; shown nowhere else)",
                path.display()
            );
        }
    }
    if args.wait {
        return watch(client, &view.id, args.timeout, json).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the request until it is active or over, drawing its state and each host's.
async fn watch(
    client: &AdminClient,
    id: &str,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let live = !json && std::io::stderr().is_terminal();
    let mut drawn = 0;
    let mut last = String::new();
    let mut tick = 0usize;
    loop {
        let view = match client.show_access_request(id).await {
            Ok(view) => view,
            Err(ClientError::Api { status: 429, .. }) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let lines = progress_lines(&view, tick);
        if live {
            // Redraw in place: up over what was drawn, clear, draw again.
            let mut err = std::io::stderr().lock();
            for _ in 0..drawn {
                let _ = write!(err, "\x1b[1A\x1b[2K");
            }
            for line in &lines {
                let _ = writeln!(err, "{line}");
            }
            drawn = lines.len();
        } else if !json {
            let summary = lines.join("\n");
            let plain = progress_lines(&view, 0).join("\n");
            if plain != last {
                eprintln!("{summary}");
                last = plain;
            }
        }
        let done = view.state == "active" || view.is_over();
        if done {
            if json {
                print_json(&view)?;
            } else {
                println!();
                print_request(&view);
                if view.state == "active" {
                    print_login_hint(&view);
                }
            }
            return Ok(match view.state.as_str() {
                "active" | "expired" | "revoked" => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            });
        }
        if started.elapsed() >= timeout {
            if json {
                print_json(&view)?;
            } else {
                eprintln!(
                    "timed out after {}: access request {id} is still {}",
                    humantime::format_duration(timeout),
                    view.state
                );
            }
            return Ok(ExitCode::from(2));
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const SPINNER: [&str; 4] = ["|", "/", "-", "\\"];

/// The request's state and one line per host.
fn progress_lines(view: &AccessRequestView, tick: usize) -> Vec<String> {
    let paint = Paint::stderr();
    let spin = if view.state == "active" || view.is_over() {
        " "
    } else {
        SPINNER[tick % SPINNER.len()]
    };
    let mut lines = vec![format!(
        "{spin} access request {}: {}{}",
        view.id,
        paint.state(&view.state),
        match view.state.as_str() {
            "pending_approval" => format!(
                " ({} of {} approvals from {})",
                view.decisions
                    .iter()
                    .filter(|d| d.decision == "approve")
                    .count(),
                view.approvals_needed,
                view.approver_group.as_deref().unwrap_or("-")
            ),
            _ => String::new(),
        }
    )];
    for host in &view.hosts {
        lines.push(format!(
            "    {:<24} {}{}",
            host.host,
            paint.state(&host.state),
            host.error
                .as_deref()
                .map_or(String::new(), |e| format!("  ({e})"))
        ));
    }
    lines
}

fn print_login_hint(view: &AccessRequestView) {
    let Some(account) = &view.account else {
        return;
    };
    for host in &view.hosts {
        if host.ssh_certificate {
            println!(
                "log in: latchctl access certificate {} && ssh -i <your key> {account}@{}",
                view.id, host.host
            );
        } else {
            println!("log in: ssh -i <your key> {account}@{}", host.host);
        }
    }
}

/// When a request's window ends or ended, relative to now.
fn window(view: &AccessRequestView, now: DateTime<Utc>) -> String {
    match (view.state.as_str(), view.ends_at) {
        ("active", Some(end)) => format!("ends {}", relative(end, now)),
        (_, Some(end)) if view.is_over() => {
            format!("ended {}", relative(view.ended_at.unwrap_or(end), now))
        }
        _ => format!("{}m", view.minutes),
    }
}

fn print_requests(list: &[AccessRequestView]) {
    let now = Utc::now();
    let paint = Paint::stdout();
    let rows = list
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.requester.clone(),
                r.target.clone(),
                r.access.as_str().to_owned(),
                paint.state(&r.state),
                window(r, now),
                relative(r.created_at, now),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "REQUESTER",
            "TARGET",
            "ACCESS",
            "STATE",
            "WINDOW",
            "CREATED",
        ],
        rows,
    );
}

/// A job id with its status, e.g. `3f2a… confirmed`.
fn job_cell(id: Option<&str>, status: Option<&str>, paint: Paint) -> String {
    match (id, status) {
        (Some(id), Some(status)) => format!("{id} {}", paint.state(status)),
        (Some(id), None) => format!("{id} (not queued yet)"),
        _ => "-".to_owned(),
    }
}

fn print_request(r: &AccessRequestView) {
    let now = Utc::now();
    let paint = Paint::stdout();
    let at = |t: Option<DateTime<Utc>>| {
        t.map_or("-".to_owned(), |t| {
            format!("{} ({})", t.format("%Y-%m-%d %H:%M:%S"), relative(t, now))
        })
    };
    println!("request:     {}", r.id);
    println!("state:       {}", paint.state(&r.state));
    println!("requester:   {}", r.requester);
    println!("access:      {} on {}", r.access, r.target);
    println!("window:      {} min from activation", r.minutes);
    println!("reason:      {}", r.reason);
    println!("policy:      {}", r.policy);
    if let Some(group) = &r.approver_group {
        println!("approvers:   {} of {group}", r.approvals_needed);
    }
    if let Some(account) = &r.account {
        println!("account:     {account}");
    }
    println!(
        "key:         {}",
        if r.key_generated {
            "generated by Latch (private key given out once)"
        } else {
            "the requester's"
        }
    );
    if r.certificate.is_some() {
        println!("certificate: issued (latchctl access certificate {})", r.id);
    }
    println!("timeline:");
    println!("  requested  {}", at(Some(r.created_at)));
    for d in &r.decisions {
        println!(
            "  {:<10} {} by {}{}",
            if d.decision == "approve" {
                "approved"
            } else {
                "denied"
            },
            at(Some(d.at)),
            d.by,
            if d.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", d.reason)
            }
        );
    }
    if r.state == "pending_approval" {
        println!("  expires    {} unless decided", at(r.pending_until));
    }
    if r.decisions.is_empty() && r.decided_at.is_some() {
        println!(
            "  decided    {}{}",
            at(r.decided_at),
            r.decision_reason
                .as_deref()
                .map_or(String::new(), |w| format!(": {w}"))
        );
    }
    if r.activated_at.is_some() {
        println!("  active     {}", at(r.activated_at));
        println!("  ends       {}", at(r.ends_at));
    }
    if let Some(by) = r.confirm_by {
        println!(
            "  re-confirm {} (latchctl access confirm {})",
            at(Some(by)),
            r.id
        );
    }
    if let Some(end) = &r.end_reason {
        println!(
            "  {:<10} {}{}",
            end,
            at(r.ended_at),
            r.decision_reason
                .as_deref()
                .map_or(String::new(), |w| format!(": {w}"))
        );
    }
    if !r.hosts.is_empty() {
        println!("hosts:");
        let rows = r
            .hosts
            .iter()
            .map(|h| {
                vec![
                    h.host.clone(),
                    paint.state(&h.state),
                    job_cell(
                        h.provision_job.as_deref(),
                        h.provision_status.as_deref(),
                        paint,
                    ),
                    job_cell(h.revoke_job.as_deref(), h.revoke_status.as_deref(), paint),
                    h.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(
            &["HOST", "STATE", "PROVISION JOB", "REMOVAL JOB", "ERROR"],
            rows,
        );
    }
}
