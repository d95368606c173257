//! The tables `latchctl` prints for people (hosts, jobs, grants, a job's history) and the
//! JSON it prints for scripts.

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
                if h.online { "yes" } else { "no" }.to_owned(),
                h.last_seen.map_or("never".to_owned(), |t| {
                    t.format("%Y-%m-%d %H:%M:%S").to_string()
                }),
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
                j.status.to_string(),
                j.error
                    .as_ref()
                    .map_or(String::new(), |e| e.code.to_string()),
                j.grant_state.map_or(String::new(), |s| s.to_string()),
                j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
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
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}
