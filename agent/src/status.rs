//! `latch-agent status`: what the agent is doing and whether it is healthy, for people (a table)
//! and for monitoring (`--output json`, exit status 1 when unhealthy). Also the record the
//! polling loop keeps of its last successful poll ([`PollRecorder`]), which `status` reads.
//!
//! Unhealthy means someone must act: the agent is not running, the control plane cannot be
//! used (unreachable, credential refused, protocol refused), the agent only revokes, it has not
//! polled successfully for [`POLL_STALE`], a grant is still on the host [`REVOCATION_OVERDUE`]
//! after its end, or the job journal cannot be read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::client::{AgentClient, ClientError, ServerInUse};
use crate::journal::{Journal, JournalHealth};
use crate::state::{self, StateDir};

/// Where the polling loop records its last successful poll.
pub const POLL_RECORD_FILE: &str = "poll-status.json";

/// The control-plane URL the running agent uses (of the enrolled one and `servers`).
pub const SERVER_IN_USE_FILE: &str = "server-in-use.json";

/// A running agent that has not polled successfully for this long is unhealthy (a long-poll
/// answers within 30 s; the backoff between failed polls is at most 30 s).
pub const POLL_STALE: chrono::Duration = chrono::Duration::minutes(5);

/// A grant still recorded this long after its end is an overdue revocation (the expiry timer
/// revokes at the end and retries a failed step within 30 s).
pub const REVOCATION_OVERDUE: chrono::Duration = chrono::Duration::minutes(2);

/// How often a steady run of successful polls is written down.
const RECORD_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// `poll-status.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRecord {
    /// When the running agent started (a first long-poll may take 30 s to answer).
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When a poll last succeeded (at most [`RECORD_EVERY`] old while polls succeed).
    pub last_success: Option<DateTime<Utc>>,
    /// Since when polls fail, while they do.
    pub failing_since: Option<DateTime<Utc>>,
    /// The last failure's message, while polls fail.
    pub last_error: Option<String>,
}

/// Keeps `poll-status.json` up to date without writing it at every poll.
pub struct PollRecorder {
    path: PathBuf,
    state: Mutex<(PollRecord, Option<Instant>)>,
}

impl PollRecorder {
    /// A recorder for the state directory `dir`, starting from what it holds; records that the
    /// agent started now.
    pub fn new(dir: &Path) -> PollRecorder {
        let path = dir.join(POLL_RECORD_FILE);
        let mut record: PollRecord = state::read_json_file(&path)
            .ok()
            .flatten()
            .unwrap_or_default();
        record.started_at = Some(Utc::now());
        let recorder = PollRecorder {
            path,
            state: Mutex::new((record.clone(), None)),
        };
        recorder.write(&record);
        recorder
    }

    /// A poll succeeded. Returns whether it is the first of this run.
    pub fn succeeded(&self) -> bool {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (record, written) = &mut *guard;
        let first = written.is_none();
        let due =
            record.failing_since.is_some() || written.is_none_or(|at| at.elapsed() >= RECORD_EVERY);
        record.last_success = Some(Utc::now());
        record.failing_since = None;
        record.last_error = None;
        if due {
            *written = Some(Instant::now());
            self.write(record);
        }
        first
    }

    /// A poll failed with `error`.
    pub fn failed(&self, error: &str) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (record, _) = &mut *guard;
        if record.last_error.as_deref() == Some(error) {
            return;
        }
        record.failing_since.get_or_insert_with(Utc::now);
        record.last_error = Some(error.to_owned());
        self.write(record);
    }

    fn write(&self, record: &PollRecord) {
        if let Err(error) = state::write_json_file(&self.path, record) {
            tracing::warn!(%error, "cannot record the last poll for `latch-agent status`");
        }
    }
}

/// One grant on this host, as `status` lists it.
#[derive(Debug, Serialize)]
pub struct GrantLine {
    /// The account.
    pub user: String,
    /// Its UID.
    pub uid: u32,
    /// The group, for a membership; `None` for the account itself.
    pub group: Option<String>,
    /// When it ends (`None`: permanent).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Everything `status` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether nothing needs attention (exit status 0).
    pub healthy: bool,
    /// What needs attention, each with what to do.
    pub problems: Vec<String>,
    /// This host's id.
    pub host_id: String,
    /// The control-plane URL in use.
    pub control_plane: String,
    /// The URL enrolled with (differs when the agent moved to a replica).
    pub enrolled_with: String,
    /// What a credential check just said.
    pub control_plane_check: String,
    /// When the host enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// Whether an agent holds the state directory's lock.
    pub agent_running: bool,
    /// `polling` or `revoke-only`.
    pub mode: &'static str,
    /// Why revoke-only, when it is.
    pub revoke_only_reason: Option<String>,
    /// The polling loop's record.
    pub poll: PollRecord,
    /// Outcomes of jobs applied here not yet acknowledged by the control plane.
    pub pending_job_reports: usize,
    /// Revocations done locally not yet acknowledged by the control plane.
    pub pending_revocation_reports: usize,
    /// The job journal.
    pub journal: JournalHealth,
    /// Grants on this host: accounts Latch created and memberships it granted.
    pub grants: Vec<GrantLine>,
    /// Accounts adopted (password only, never removed).
    pub adopted: Vec<String>,
    /// Highest UID ever handed out.
    pub uid_high_water: u32,
}

/// What the credential check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Reachable and accepted.
    Ok,
    /// Not reachable (or no answer within [`PROBE_TIMEOUT`]).
    Unreachable,
    /// Reachable, but this host's credential or protocol is refused (or the URL is unusable).
    Refused,
}

/// How long `status` waits for the control plane.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What needs attention, from the facts `status` gathered. A control plane this run of
/// `status` cannot reach is not a problem while the running agent polls successfully (a
/// restarting control plane must not turn the whole fleet red); the poll's own staleness
/// covers a longer outage.
fn problems(report: &Report, check: Check, overdue: &[String], now: DateTime<Utc>) -> Vec<String> {
    let mut problems = Vec::new();
    let polls_fresh = report
        .poll
        .last_success
        .is_some_and(|at| now - at <= POLL_STALE);
    if !report.agent_running {
        problems.push(
            "the agent is not running: nothing revokes grants at their end; start it (systemctl start latch-agent)"
                .to_owned(),
        );
    }
    let tolerated = check == Check::Unreachable && report.agent_running && polls_fresh;
    if check != Check::Ok && !tolerated {
        problems.push(format!("control plane: {}", report.control_plane_check));
    }
    if let Some(reason) = &report.revoke_only_reason {
        problems.push(format!("revoke-only mode: {reason}"));
    }
    if report.agent_running && report.revoke_only_reason.is_none() {
        // Counted from the last success, or from the start for an agent yet to see one.
        let stale = report
            .poll
            .last_success
            .max(report.poll.started_at)
            .is_none_or(|at| now - at > POLL_STALE);
        if stale && let Some(since) = report.poll.failing_since {
            problems.push(format!(
                "no successful poll since {}: {}",
                since.to_rfc3339(),
                report.poll.last_error.as_deref().unwrap_or("unknown error")
            ));
        } else if stale {
            problems.push(format!(
                "no successful poll in the last {} minutes (last: {}); see journalctl -u latch-agent",
                POLL_STALE.num_minutes(),
                report
                    .poll
                    .last_success
                    .map_or("never".to_owned(), |at| at.to_rfc3339())
            ));
        }
    }
    for grant in overdue {
        problems.push(format!(
            "revocation overdue: {grant} ended more than {} minutes ago and is still on this host; see journalctl -u latch-agent for the failing step",
            REVOCATION_OVERDUE.num_minutes()
        ));
    }
    if let Some(error) = &report.journal.error {
        problems.push(format!("job journal: {error}"));
    }
    for file in &report.journal.unreadable {
        problems.push(format!(
            "job journal: {file} cannot be read; move it away and restart the agent (its job is then applied again if delivered again)"
        ));
    }
    problems
}

/// Gathers the report: reads the state directory (never changes it) and asks the control plane
/// whether it accepts this host's credential.
pub async fn gather(state: &StateDir) -> anyhow::Result<Report> {
    use anyhow::Context as _;
    let identity = state.identity()?;
    let running = state.is_locked();
    // A running agent records the replica it uses (it may have moved off the enrolled URL).
    let in_use = running
        .then(|| state::read_json_file::<ServerInUse>(&state.path().join(SERVER_IN_USE_FILE)))
        .and_then(Result::ok)
        .flatten();
    let server = in_use
        .as_ref()
        .map_or(identity.server.clone(), |used| used.server.clone());
    let (check, check_text) = match AgentClient::new(
        &server,
        &identity.transport(),
        Some(identity.credential.clone()),
    ) {
        Ok(client) => match tokio::time::timeout(PROBE_TIMEOUT, client.check_credential()).await {
            Ok(Ok(())) => (Check::Ok, "reachable, credential accepted".to_owned()),
            Ok(Err(ClientError::Unauthorized(message))) => (
                Check::Refused,
                format!(
                    "reachable, but this host's credential is REFUSED ({message}); the host was removed or the control plane's database restored: enroll again with `latch-agent enroll --replace`"
                ),
            ),
            Ok(Err(error @ ClientError::Protocol(_))) => (Check::Refused, error.to_string()),
            Ok(Err(error)) => (Check::Unreachable, format!("NOT reachable: {error}")),
            Err(_) => (
                Check::Unreachable,
                format!(
                    "NOT reachable: no answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                ),
            ),
        },
        Err(error) => (Check::Refused, format!("NOT usable: {error}")),
    };
    let revoke_only = state
        .revoke_only()
        .context("cannot read the agent's mode")?;
    let accounts = state.accounts()?;
    let now = Utc::now();
    let overdue: Vec<String> = crate::plan::expired(&accounts, now - REVOCATION_OVERDUE)
        .iter()
        .map(|expired| match expired.group() {
            Some(group) => format!("{}'s membership of {group}", expired.user()),
            None => format!("account {}", expired.user()),
        })
        .collect();
    let mut grants = Vec::new();
    for (name, account) in &accounts.accounts {
        grants.push(GrantLine {
            user: name.clone(),
            uid: account.uid,
            group: None,
            expires_at: account.expires_at,
        });
        for (group, grant) in &account.group_grants {
            grants.push(GrantLine {
                user: name.clone(),
                uid: account.uid,
                group: Some(group.clone()),
                expires_at: grant.expires_at,
            });
        }
    }
    let journal = Journal::inspect(state.path());
    let mut report = Report {
        healthy: false,
        problems: Vec::new(),
        host_id: identity.host_id.clone(),
        control_plane: server,
        enrolled_with: identity.server.clone(),
        control_plane_check: check_text,
        enrolled_at: identity.enrolled_at,
        agent_running: running,
        mode: if revoke_only.is_some() {
            "revoke-only"
        } else {
            "polling"
        },
        revoke_only_reason: revoke_only
            .map(|mode| format!("since {}: {}", mode.since.to_rfc3339(), mode.reason)),
        poll: state::read_json_file(&state.path().join(POLL_RECORD_FILE))
            .ok()
            .flatten()
            .unwrap_or_default(),
        pending_job_reports: journal.pending_reports,
        pending_revocation_reports: accounts.outbox.len(),
        journal,
        grants,
        adopted: accounts.adopted.keys().cloned().collect(),
        uid_high_water: accounts.uid_high_water,
    };
    report.problems = problems(&report, check, &overdue, now);
    report.healthy = report.problems.is_empty();
    Ok(report)
}

fn when(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match at {
        None => "never".to_owned(),
        Some(at) => {
            let seconds = (now - at).num_seconds();
            let ago = if seconds < 120 {
                format!("{seconds} s ago")
            } else if seconds < 7_200 {
                format!("{} min ago", seconds / 60)
            } else {
                format!("{} h ago", seconds / 3_600)
            };
            format!("{} ({ago})", at.to_rfc3339())
        }
    }
}

/// Prints the report for people.
pub fn print(report: &Report) {
    let now = Utc::now();
    println!(
        "health:        {}",
        if report.healthy { "OK" } else { "UNHEALTHY" }
    );
    for problem in &report.problems {
        println!("  - {problem}");
    }
    println!("host id:       {}", report.host_id);
    println!(
        "control plane: {} ({})",
        report.control_plane, report.control_plane_check
    );
    if report.control_plane != report.enrolled_with {
        println!("               enrolled with {}", report.enrolled_with);
    }
    println!("enrolled:      {}", report.enrolled_at.to_rfc3339());
    println!(
        "agent:         {}",
        if report.agent_running {
            "running"
        } else {
            "not running"
        }
    );
    match &report.revoke_only_reason {
        Some(reason) => println!(
            "mode:          REVOKE-ONLY {reason} — polling stopped, grants still end on time"
        ),
        None => println!("mode:          polling"),
    }
    println!("last poll:     {}", when(report.poll.last_success, now));
    if let (Some(since), Some(error)) = (report.poll.failing_since, &report.poll.last_error) {
        println!(
            "               failing since {}: {error}",
            since.to_rfc3339()
        );
    }
    println!(
        "reports:       {} job outcome(s) and {} revocation(s) not yet acknowledged by the control plane",
        report.pending_job_reports, report.pending_revocation_reports
    );
    println!(
        "journal:       {}",
        match (&report.journal.error, report.journal.unreadable.len()) {
            (Some(error), _) => format!("NOT READABLE: {error}"),
            (None, 0) => format!(
                "ok ({} entr{}, {} job(s) interrupted while applying)",
                report.journal.entries,
                if report.journal.entries == 1 {
                    "y"
                } else {
                    "ies"
                },
                report.journal.in_progress
            ),
            (None, bad) => format!(
                "{bad} unreadable entr{}",
                if bad == 1 { "y" } else { "ies" }
            ),
        }
    );
    println!(
        "grants ({}), UID high-water mark {}:",
        report.grants.len(),
        report.uid_high_water
    );
    if report.grants.is_empty() {
        println!("  none");
    } else {
        println!("  {:<32} {:<7} {:<12} ENDS", "ACCOUNT", "UID", "GRANT");
    }
    for grant in &report.grants {
        println!(
            "  {:<32} {:<7} {:<12} {}",
            grant.user,
            grant.uid,
            grant
                .group
                .as_deref()
                .map_or("account".to_owned(), |g| format!("group {g}")),
            grant
                .expires_at
                .map_or("never (permanent)".to_owned(), |end| format!(
                    "{} (in {})",
                    end.to_rfc3339(),
                    left(end - now)
                ))
        );
    }
    if !report.adopted.is_empty() {
        println!(
            "adopted accounts (password only, never removed): {}",
            report.adopted.join(", ")
        );
    }
}

fn left(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds();
    if seconds <= 0 {
        "ended".to_owned()
    } else if seconds < 120 {
        format!("{seconds} s")
    } else if seconds < 7_200 {
        format!("{} min", seconds / 60)
    } else {
        format!("{} h", seconds / 3_600)
    }
}

/// `latch-agent status`: prints the report (as JSON with `json`); exit status 1 when unhealthy.
pub async fn status(state: &StateDir, json: bool) -> anyhow::Result<ExitCode> {
    let report = gather(state).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(now: DateTime<Utc>) -> Report {
        Report {
            healthy: false,
            problems: Vec::new(),
            host_id: "h".into(),
            control_plane: "https://c".into(),
            enrolled_with: "https://c".into(),
            control_plane_check: "reachable, credential accepted".into(),
            enrolled_at: now,
            agent_running: true,
            mode: "polling",
            revoke_only_reason: None,
            poll: PollRecord {
                last_success: Some(now - chrono::Duration::seconds(30)),
                ..PollRecord::default()
            },
            pending_job_reports: 0,
            pending_revocation_reports: 0,
            journal: JournalHealth::default(),
            grants: Vec::new(),
            adopted: Vec::new(),
            uid_high_water: 60000,
        }
    }

    #[test]
    fn a_running_polling_agent_with_nothing_overdue_is_healthy() {
        let now = Utc::now();
        assert!(problems(&report(now), Check::Ok, &[], now).is_empty());
    }

    #[test]
    fn each_reason_to_act_is_named_with_what_to_do() {
        let now = Utc::now();
        let mut stopped = report(now);
        stopped.agent_running = false;
        let found = problems(&stopped, Check::Ok, &[], now);
        assert!(
            found[0].contains("systemctl start latch-agent"),
            "{found:?}"
        );

        let found = problems(&report(now), Check::Refused, &[], now);
        assert!(found[0].starts_with("control plane:"), "{found:?}");
        // Unreachable from here while the agent polls fine: not a problem (a control plane
        // restarting must not turn every host red); with stale polls, it is.
        assert!(problems(&report(now), Check::Unreachable, &[], now).is_empty());
        let mut stale_too = report(now);
        stale_too.poll.last_success = Some(now - POLL_STALE - chrono::Duration::seconds(1));
        let found = problems(&stale_too, Check::Unreachable, &[], now);
        assert!(
            found.iter().any(|p| p.starts_with("control plane:")),
            "{found:?}"
        );

        let mut stale = report(now);
        stale.poll.last_success = Some(now - POLL_STALE - chrono::Duration::seconds(1));
        let found = problems(&stale, Check::Ok, &[], now);
        assert!(found[0].contains("no successful poll"), "{found:?}");
        stale.poll.failing_since = Some(now - chrono::Duration::minutes(9));
        stale.poll.last_error = Some("cannot reach the control plane: refused".into());
        let found = problems(&stale, Check::Ok, &[], now);
        assert!(
            found[0].contains("cannot reach the control plane"),
            "{found:?}"
        );

        // Never polled: fine just after the start (a first long-poll takes up to 30 s), not
        // for long.
        let mut never = report(now);
        never.poll = PollRecord {
            started_at: Some(now - chrono::Duration::seconds(20)),
            ..PollRecord::default()
        };
        assert!(problems(&never, Check::Ok, &[], now).is_empty());
        never.poll.started_at = Some(now - POLL_STALE - chrono::Duration::seconds(1));
        let found = problems(&never, Check::Ok, &[], now);
        assert!(found[0].contains("(last: never)"), "{found:?}");
        never.poll.started_at = None;
        assert_eq!(problems(&never, Check::Ok, &[], now).len(), 1);

        let found = problems(&report(now), Check::Ok, &["account alice".to_owned()], now);
        assert!(
            found[0].contains("revocation overdue: account alice"),
            "{found:?}"
        );

        let mut broken = report(now);
        broken.journal.unreadable.push("journal/x.json".into());
        assert!(problems(&broken, Check::Ok, &[], now)[0].contains("journal/x.json"));

        // Revoke-only: named, and a stale poll is expected then (polling stopped).
        let mut revoke_only = report(now);
        revoke_only.revoke_only_reason = Some("credential refused".into());
        revoke_only.poll = PollRecord::default();
        let found = problems(&revoke_only, Check::Ok, &[], now);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("revoke-only mode"));
    }

    #[test]
    fn the_poll_record_is_written_on_change_not_at_every_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(POLL_RECORD_FILE);
        let recorder = PollRecorder::new(dir.path());
        let started: PollRecord = state::read_json_file(&path).unwrap().unwrap();
        assert!(started.started_at.is_some() && started.last_success.is_none());
        recorder.succeeded();
        let first: PollRecord = state::read_json_file(&path).unwrap().unwrap();
        assert!(first.last_success.is_some() && first.failing_since.is_none());
        std::fs::remove_file(&path).unwrap();
        recorder.succeeded();
        assert!(
            !path.exists(),
            "a second success within a minute is not written"
        );
        recorder.failed("cannot reach the control plane: refused");
        let failing: PollRecord = state::read_json_file(&path).unwrap().unwrap();
        assert!(failing.last_success >= first.last_success);
        assert!(failing.failing_since.is_some());
        assert_eq!(
            failing.last_error.as_deref(),
            Some("cannot reach the control plane: refused")
        );
        recorder.succeeded();
        let again: PollRecord = state::read_json_file(&path).unwrap().unwrap();
        assert!(again.failing_since.is_none() && again.last_error.is_none());
        // A new recorder starts from the file.
        let reopened = PollRecorder::new(dir.path());
        reopened.failed("x");
        let kept: PollRecord = state::read_json_file(&path).unwrap().unwrap();
        assert_eq!(kept.last_success, again.last_success);
    }
}
