//! The tables `latchctl` prints for people (hosts, jobs, grants, a job's history) and the
//! JSON it prints for scripts.

use std::io::IsTerminal as _;

use chrono::{DateTime, Utc};
use latch_common::api::{GrantState, GrantView, HostView, JobView};
use latch_common::job::JobKind;

use super::labels_text;

/// Writes `value` as pretty JSON to standard output; a closed pipe comes back as an error
/// (see [`report_error`]) rather than a panic.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let text = serde_json::to_string_pretty(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

pub(crate) fn print_hosts(hosts: &[HostView]) {
    let paint = Paint::stdout();
    let now = Utc::now();
    let rows = hosts
        .iter()
        .map(|h| {
            vec![
                h.id.clone(),
                h.facts.hostname.clone(),
                h.facts.os.clone(),
                h.facts.kernel.clone(),
                h.facts.arch.clone(),
                h.facts.cpus.to_string(),
                format!("{} MiB", h.facts.memory_bytes / (1024 * 1024)),
                paint.state(if h.online { "yes" } else { "no" }),
                h.last_seen
                    .map_or("never".to_owned(), |t| paint.time(t, now)),
                h.agent
                    .as_ref()
                    .map_or("-".to_owned(), |agent| agent.version.clone()),
                labels_text(&h.labels),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "HOSTNAME",
            "OS",
            "KERNEL",
            "ARCH",
            "CPUS",
            "MEMORY",
            "ONLINE",
            "LAST SEEN",
            "AGENT",
            "LABELS",
        ],
        rows,
    );
}

fn host_label(name: &str, id: &str) -> String {
    if name.is_empty() {
        id.to_owned()
    } else {
        name.to_owned()
    }
}

pub(crate) fn print_jobs(jobs: &[JobView]) {
    let paint = Paint::stdout();
    let now = Utc::now();
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                host_label(&j.host_name, &j.host_id),
                j.seq.to_string(),
                j.kind.to_string(),
                j.params
                    .get("user")
                    .and_then(|u| u.as_str())
                    .unwrap_or("")
                    .to_owned(),
                paint.state(&j.status.to_string()),
                j.error
                    .as_ref()
                    .map_or(String::new(), |e| e.code.to_string()),
                j.grant_state
                    .map_or(String::new(), |s| paint.state(&s.to_string())),
                paint.time(j.created_at, now),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "HOST", "SEQ", "KIND", "USER", "STATUS", "ERROR", "GRANT", "CREATED",
        ],
        rows,
    );
}

pub(crate) fn print_grants(grants: &[GrantView]) {
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let rows = grants
        .iter()
        .map(|g| {
            let access = match (&g.group, g.groups.as_slice()) {
                (Some(group), _) => format!("group {group}"),
                (None, []) => "account".to_owned(),
                (None, groups) => format!("account +{}", groups.join(",")),
            };
            vec![
                g.job_id.clone(),
                host_label(&g.host_name, &g.host_id),
                g.user.clone(),
                access,
                g.state.to_string(),
                g.expires_at.map_or("never".to_owned(), time),
                g.summary.clone(),
            ]
        })
        .collect();
    print_table(
        &["GRANT", "HOST", "USER", "ACCESS", "STATE", "ENDS", "DETAIL"],
        rows,
    );
    let stuck = grants
        .iter()
        .filter(|g| g.state == GrantState::RevocationStuck)
        .count();
    if stuck > 0 {
        println!(
            "\n{stuck} grant(s) past their end are NOT revoked: their revocation jobs failed. The control plane keeps retrying; check the host's agent (`latch-agent status`, its log) and `latchctl jobs show` of the failed revocation jobs."
        );
    }
}

pub(crate) fn print_job_detail(job: &JobView) {
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".to_owned(), |t| t.to_rfc3339());
    println!("id:          {}", job.id);
    if job.host_name.is_empty() {
        println!("host:        {}", job.host_id);
    } else {
        println!("host:        {} ({})", job.host_name, job.host_id);
    }
    println!("kind:        {} (seq {})", job.kind, job.seq);
    println!("params:      {}", job.params);
    println!("status:      {}", job.status);
    if let Some(error) = &job.error {
        println!("error:       {}: {}", error.code, error.message);
    }
    for note in &job.notes {
        println!("note:        {note}");
    }
    println!("attempts:    {}", job.attempts);
    let is_grant = matches!(job.kind, JobKind::CreateAccount | JobKind::AddGroup);
    if is_grant {
        match job.expires_at {
            Some(end) => println!("expires:     {}", end.to_rfc3339()),
            None => println!("expires:     never (permanent)"),
        }
    }
    if let Some(state) = job.grant_state {
        println!("grant:       {state}");
        match (job.revoked_at, job.revoked_by, &job.revoked_by_job) {
            (Some(at), Some(by), Some(by_job)) => {
                println!(
                    "revoked:     {} by {} {by_job}",
                    at.to_rfc3339(),
                    by.as_str()
                );
            }
            (Some(at), Some(by), None) => {
                println!("revoked:     {} by {}", at.to_rfc3339(), by.as_str());
            }
            _ => println!("revoked:     no"),
        }
        if let Some(later) = &job.superseded_by {
            println!("superseded:  by grant {later}");
        }
        if state == GrantState::HostRemoved {
            println!("             host removed — revocation impossible from here");
        }
        if let Some(revocation) = &job.revocation {
            let mut parts = Vec::new();
            if let Some(id) = &revocation.job_id {
                parts.push(format!("job {id} in flight"));
            }
            if revocation.failed_attempts > 0 {
                parts.push(format!(
                    "{} failed attempt(s), last: {}",
                    revocation.failed_attempts,
                    revocation.last_error.as_deref().unwrap_or("")
                ));
            }
            if let Some(next) = revocation.next_retry_at {
                parts.push(format!("next attempt {}", next.to_rfc3339()));
            }
            if !parts.is_empty() {
                println!("revocation:  {}", parts.join("; "));
            }
        }
    }
    if let Some(grant) = &job.revokes {
        println!("revokes:     {grant} (expired grant)");
    }
    println!("created:     {}", job.created_at.to_rfc3339());
    println!("finished:    {}", time(job.finished_at));
    if !job.history.is_empty() {
        println!("history:");
        for event in &job.history {
            println!(
                "  {}  {:<14} {}",
                event.at.to_rfc3339(),
                event.event,
                event.detail.as_deref().unwrap_or("")
            );
        }
    }
}

pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(visible_width(cell));
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(visible_width(c)))))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The width of `text` on a terminal: its characters, without colour escape sequences.
fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

/// `at` relative to `now`, as people say it: `in 1h 59m`, `3m ago`, `just now`.
pub(crate) fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let span = seconds.unsigned_abs();
    if span < 5 {
        return "just now".to_owned();
    }
    let text = if span < 60 {
        format!("{span}s")
    } else if span < 3600 {
        format!("{}m", span / 60)
    } else if span < 86_400 {
        format!("{}h {}m", span / 3600, span % 3600 / 60)
    } else {
        format!("{}d {}h", span / 86_400, span % 86_400 / 3600)
    };
    if seconds > 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Colours for states, only on a terminal and unless `NO_COLOR` is set (no-color.org).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paint {
    on: bool,
}

impl Paint {
    fn new(terminal: bool) -> Self {
        Self {
            on: terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// For what goes to standard output.
    pub(crate) fn stdout() -> Self {
        Self::new(std::io::stdout().is_terminal())
    }

    /// For what goes to standard error.
    pub(crate) fn stderr() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    /// A time: relative (`3m ago`) on a terminal, to the second (UTC) for scripts and pipes.
    pub(crate) fn time(self, at: DateTime<Utc>, now: DateTime<Utc>) -> String {
        if self.on {
            relative(at, now)
        } else {
            at.format("%Y-%m-%d %H:%M:%S").to_string()
        }
    }

    /// A state in its colour: green when in force or done well, yellow while on its way,
    /// red when refused or failed, plain otherwise.
    pub(crate) fn state(self, state: &str) -> String {
        if !self.on {
            return state.to_owned();
        }
        let colour = match state {
            "active" | "confirmed" | "revoked" | "expired" | "yes" => "32",
            "pending" | "pending_approval" | "approved" | "provisioning" | "revoking"
            | "waiting" => "33",
            "failed" | "denied" | "revocation_stuck" | "no" => "31",
            _ => return state.to_owned(),
        };
        format!("\x1b[{colour}m{state}\x1b[0m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_like_speech() {
        let now = Utc::now();
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now + chrono::Duration::seconds(30), now), "in 30s");
        assert_eq!(relative(now - chrono::Duration::minutes(3), now), "3m ago");
        assert_eq!(
            relative(now + chrono::Duration::minutes(119), now),
            "in 1h 59m"
        );
        assert_eq!(
            relative(now - chrono::Duration::hours(50), now),
            "2d 2h ago"
        );
    }

    #[test]
    fn colour_codes_take_no_width() {
        let painted = Paint { on: true }.state("active");
        assert_ne!(painted, "active");
        assert_eq!(visible_width(&painted), "active".len());
        assert_eq!(Paint { on: false }.state("active"), "active");
    }
}
