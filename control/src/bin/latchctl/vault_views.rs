//! How `latchctl` shows the vault's objects: tables and details of vaults, grants,
//! identities, checkouts and rotations, and credentials — erased from a terminal after
//! [`super::vault::CLEAR_AFTER`].

use std::io::{IsTerminal as _, Write as _};

use latch_common::vault::{
    AccessLevel, CheckoutGranted, CheckoutView, CredentialType, IdentityView, RevealedSecret,
    RotationView, VaultGrantView, VaultView,
};

use super::people::{maybe_time, time};
use super::{print_json, print_table};

use super::vault::{CLEAR_AFTER, waiting_text};

/// Prints a checkout (or break-glass) and its credential; the credential is erased from a
/// terminal after [`CLEAR_AFTER`] when `clear`.
pub(super) async fn show_checkout(
    granted: &CheckoutGranted,
    json: bool,
    clear: bool,
) -> anyhow::Result<()> {
    if json {
        return print_json(granted);
    }
    let checkout = &granted.checkout;
    let what = if checkout.break_glass {
        "break-glass checkout"
    } else {
        "checked out"
    };
    println!(
        "{what} {} of identity {} until {} UTC",
        checkout.id,
        checkout.identity_id,
        time(checkout.expires_at)
    );
    if checkout.break_glass {
        println!(
            "it is checked in by itself then, and its check-in (yours or that one) rotates the credential. Done earlier: latchctl identities checkin {}",
            checkout.id
        );
    } else {
        println!(
            "check it in when done: latchctl identities checkin {}",
            checkout.id
        );
    }
    show_credential(&granted.credential, clear).await
}

/// The lines that show a credential.
pub(super) fn credential_lines(secret: &RevealedSecret) -> Vec<String> {
    let mut lines = vec![format!("username: {}", secret.username)];
    match secret.credential_type {
        CredentialType::Password => lines.push(format!("password: {}", secret.secret)),
        CredentialType::SshKey => {
            lines.push("private key:".to_owned());
            lines.extend(secret.secret.lines().map(str::to_owned));
        }
    }
    lines
}

/// How many terminal rows `lines` take on a terminal `columns` wide (long lines wrap).
pub(super) fn rows(lines: &[String], columns: usize) -> usize {
    let columns = columns.max(1);
    lines
        .iter()
        .map(|line| line.chars().count().div_ceil(columns).max(1))
        .sum()
}

/// Shows a credential. On a terminal, unless `clear` is off, it is erased from the screen after
/// [`CLEAR_AFTER`], or at once on Ctrl-C (then the program ends, status 130); piped, it is
/// printed once.
pub(super) async fn show_credential(secret: &RevealedSecret, clear: bool) -> anyhow::Result<()> {
    let mut lines = credential_lines(secret);
    let on_terminal = std::io::stdout().is_terminal();
    if !(clear && on_terminal) {
        let mut out = std::io::stdout().lock();
        for line in &lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        return Ok(());
    }
    lines.push(format!(
        "(erased from the screen in {} s; Ctrl-C erases it now)",
        CLEAR_AFTER.as_secs()
    ));
    {
        let mut out = std::io::stdout().lock();
        for line in &lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    let interrupted = tokio::select! {
        () = tokio::time::sleep(CLEAR_AFTER) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    let columns = terminal_size::terminal_size_of(std::io::stdout())
        .map_or(80, |(width, _)| usize::from(width.0));
    let mut out = std::io::stdout().lock();
    // Up to the first row of the credential, then erase everything below.
    write!(out, "\r\x1b[{}F\x1b[J", rows(&lines, columns))?;
    writeln!(
        out,
        "(credential erased from the screen; your terminal's scrollback may still hold it if it scrolled)"
    )?;
    out.flush()?;
    if interrupted {
        std::process::exit(130);
    }
    Ok(())
}

fn level_text(level: Option<AccessLevel>) -> String {
    level.map_or_else(|| "-".to_owned(), |l| l.to_string())
}

pub(super) fn print_vaults(vaults: &[VaultView]) {
    let rows = vaults
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.id.clone(),
                v.organization.clone(),
                v.identities.to_string(),
                v.owner.clone().unwrap_or_else(|| "-".to_owned()),
                level_text(v.my_access),
                v.description.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "ID",
            "ORGANIZATION",
            "IDENTITIES",
            "OWNER",
            "MY ACCESS",
            "DESCRIPTION",
        ],
        rows,
    );
}

pub(super) fn print_vault(v: &VaultView) {
    println!("name:          {}", v.name);
    println!("id:            {}", v.id);
    println!("organization:  {}", v.organization);
    println!("description:   {}", v.description);
    println!("owner:         {}", v.owner.as_deref().unwrap_or("-"));
    println!("identities:    {}", v.identities);
    println!("my access:     {}", level_text(v.my_access));
    println!("created:       {}", time(v.created_at));
}

pub(super) fn print_vault_grants(grants: &[VaultGrantView]) {
    let rows = grants
        .iter()
        .map(|g| {
            let to = match (&g.principal, &g.group) {
                (Some(user), _) => format!("user {user}"),
                (None, Some(group)) => format!("group {group}"),
                (None, None) => "(gone)".to_owned(),
            };
            vec![
                g.id.clone(),
                to,
                g.level.to_string(),
                maybe_time(g.expires_at, "never"),
                time(g.created_at),
            ]
        })
        .collect();
    print_table(&["ID", "GIVEN TO", "LEVEL", "EXPIRES", "CREATED"], rows);
}

/// How many may hold an identity at once, and how many do.
fn checkouts_text(i: &IdentityView) -> String {
    let most = if i.concurrent_checkout {
        i.max_concurrent_checkouts
    } else {
        1
    };
    format!("{}/{most}", i.active_checkouts)
}

pub(super) fn print_identities(identities: &[IdentityView]) {
    let rows = identities
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.name.clone(),
                i.username.clone(),
                i.credential_type.as_str().to_owned(),
                i.hosts.len().to_string(),
                i.rotation_state.clone().unwrap_or_else(|| "-".to_owned()),
                maybe_time(i.last_rotated_at, "never"),
                maybe_time(i.next_rotation_at, "-"),
                checkouts_text(i),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "USERNAME",
            "TYPE",
            "HOSTS",
            "ROTATION",
            "ROTATED",
            "NEXT ROTATION",
            "CHECKED OUT",
        ],
        rows,
    );
}

pub(super) fn print_identity(i: &IdentityView) {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!("name:              {}", i.name);
    println!("id:                {}", i.id);
    println!("vault:             {} ({})", i.vault, i.vault_id);
    println!("username:          {}", i.username);
    println!("type:              {}", i.credential_type.as_str());
    println!("credential stored: {}", yes_no(i.has_secret));
    println!(
        "rotation:          {}",
        i.rotation_interval_days
            .map_or("not scheduled".to_owned(), |d| format!("every {d} day(s)"))
    );
    println!("rotate after use:  {}", yes_no(i.rotate_after_use));
    println!(
        "checkouts:         {} open ({})",
        i.active_checkouts,
        if i.concurrent_checkout {
            format!("up to {} at once", i.max_concurrent_checkouts)
        } else {
            "one at a time".to_owned()
        }
    );
    println!(
        "latest rotation:   {}",
        i.rotation_state.as_deref().unwrap_or("none yet")
    );
    println!(
        "last rotated:      {}",
        maybe_time(i.last_rotated_at, "never")
    );
    println!("next rotation:     {}", maybe_time(i.next_rotation_at, "-"));
    println!("created:           {}", time(i.created_at));
    println!("hosts:");
    if i.hosts.is_empty() {
        println!("  (none)");
        return;
    }
    let rows = i
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.hostname.clone(),
                h.host_id.clone(),
                h.adopt_status.clone().unwrap_or_else(|| "-".to_owned()),
                h.adopt_job_id.clone().unwrap_or_else(|| "-".to_owned()),
                h.password_status.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    print_table(&["HOST", "ID", "ADOPTION", "JOB", "PASSWORD SET"], rows);
}

pub(super) fn print_checkouts(checkouts: &[CheckoutView]) {
    let rows = checkouts
        .iter()
        .map(|c| {
            let state = match (c.checked_in_at, &c.checked_in_how) {
                (Some(at), how) => {
                    format!("in {} ({})", time(at), how.as_deref().unwrap_or("-"))
                }
                (None, _) => "open".to_owned(),
            };
            vec![
                c.id.clone(),
                c.holder.clone(),
                if c.break_glass { "break-glass" } else { "" }.to_owned(),
                time(c.started_at),
                time(c.expires_at),
                state,
                c.host_id.clone().unwrap_or_default(),
                c.reason.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "HOLDER", "KIND", "STARTED", "ENDS", "STATE", "HOST", "REASON",
        ],
        rows,
    );
}

/// How many of a rotation's hosts confirmed, of all.
fn confirmed_text(r: &RotationView) -> String {
    let confirmed = r.hosts.iter().filter(|h| h.status == "confirmed").count();
    format!("{confirmed}/{}", r.hosts.len())
}

pub(super) fn print_rotations(rotations: &[RotationView]) {
    let rows = rotations
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.trigger.clone(),
                r.state.clone(),
                confirmed_text(r),
                r.started_by.clone(),
                time(r.created_at),
                maybe_time(r.finished_at, "-"),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "TRIGGER",
            "STATE",
            "CONFIRMED",
            "STARTED BY",
            "CREATED",
            "FINISHED",
        ],
        rows,
    );
}

pub(super) fn show_rotation(r: &RotationView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    println!("rotation:     {}", r.id);
    println!("identity:     {}", r.identity_id);
    println!("trigger:      {}", r.trigger);
    println!("state:        {}", r.state);
    if r.state == "pending" {
        println!("waiting for:  {}", waiting_text(r));
    }
    println!("started by:   {}", r.started_by);
    println!("created:      {}", time(r.created_at));
    println!("finished:     {}", maybe_time(r.finished_at, "-"));
    println!("hosts:");
    if r.hosts.is_empty() {
        println!("  (none: the credential changes in the vault only)");
        return Ok(());
    }
    let rows = r
        .hosts
        .iter()
        .map(|h| {
            let error = match (&h.error_code, &h.error_message) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.clone(),
                (None, Some(message)) => message.clone(),
                (None, None) => String::new(),
            };
            vec![
                h.hostname.clone(),
                h.status.clone(),
                h.job_id.clone(),
                error,
            ]
        })
        .collect();
    print_table(&["HOST", "STATUS", "JOB", "ERROR"], rows);
    Ok(())
}
