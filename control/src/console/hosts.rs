//! The Hosts page: online/offline, last seen, facts, labels and agent; a host's page with its
//! recent jobs (live) and **Enroll account** — an existing account of an online host into a
//! vault in one click, its jobs followed to `confirmed`; enrollment tokens with the agent's
//! enroll command to copy.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::Utc;
use latch_common::api::{CreateEnrollTokenRequest, HostView};
use latch_common::authz::Permission;
use latch_common::labels::{Labels, Selector, parse_label};
use latch_common::vault::EnrollAccountRequest;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Failure, Section, badge, notice, when, when_opt};
use super::session::{Posted, Viewer, see_other};
use crate::Control;
use crate::api::extract::check_path_id;
use crate::store::Page;
use crate::vault::access::Need;

fn online_badge(host: &HostView) -> Markup {
    badge(if host.online { "online" } else { "offline" })
}

fn labels_text(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `GET /hosts`.
pub async fn page(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
) -> Result<Response, Failure> {
    let hosts = control
        .list_hosts(
            &viewer.by,
            &Selector::default(),
            Page {
                offset: 0,
                count: 1000,
            },
        )
        .await?;
    let now = Utc::now();
    let body = html! {
        @if viewer.can_everywhere(Permission::HostsManage) { (token_form(&viewer)) }
        table.list #hosts {
            caption.visually-hidden { "Enrolled hosts" }
            thead { tr {
                th scope="col" { "Host" }
                th scope="col" { "Status" }
                th scope="col" { "Last seen" }
                th scope="col" { "System" }
                th scope="col" { "Labels" }
                th scope="col" { "Agent" }
            } }
            tbody {
                @for host in &hosts {
                    tr id=(format!("host-{}", host.facts.hostname)) {
                        td { a href=(format!("/hosts/{}", host.id)) { (host.facts.hostname) } }
                        td { (online_badge(host)) }
                        td { (when_opt(host.last_seen, now)) }
                        td { (host.facts.os) " · " (host.facts.kernel) " · " (host.facts.arch) }
                        td { (labels_text(&host.labels)) }
                        td { @match &host.agent { Some(agent) => { (agent.version) }, None => { span.muted { "—" } } } }
                    }
                }
                @if hosts.is_empty() {
                    tr { td colspan="6" { "No hosts are enrolled yet. Create an enrollment token to enroll one." } }
                }
            }
        }
    };
    Ok(layout::page(&viewer, Section::Hosts, "Hosts", body))
}

fn token_form(viewer: &Viewer) -> Markup {
    html! {
        details.panel {
            summary { "Enroll a new host" }
            form.inline method="post" action="/enroll-tokens" {
                (viewer.csrf_field())
                div {
                    label for="t-ttl" { "Valid for" }
                    select #t-ttl name="ttl_minutes" {
                        option value="15" { "15 minutes" }
                        option value="60" selected { "1 hour" }
                        option value="1440" { "1 day" }
                    }
                }
                div {
                    label for="t-uses" { "Hosts it may enroll" }
                    input #t-uses name="uses" type="number" min="1" max="1000" value="1" required;
                }
                div {
                    label for="t-labels" { "Labels (optional)" }
                    input #t-labels name="labels" type="text" placeholder="env=prod,role=db" maxlength="512";
                }
                div.actions { button type="submit" { "Create enrollment token" } }
            }
        }
    }
}

/// The enrollment-token form.
#[derive(Deserialize)]
pub struct TokenForm {
    ttl_minutes: u64,
    uses: u32,
    #[serde(default)]
    labels: String,
}

/// `POST /enroll-tokens`: shows the token once, with the enroll command to copy.
pub async fn create_enroll_token(
    State(control): State<Arc<Control>>,
    served: Option<axum::Extension<super::ServedAt>>,
    viewer: Viewer,
    Posted(form): Posted<TokenForm>,
) -> Result<Response, Failure> {
    let mut labels = Labels::default();
    for item in form
        .labels
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (key, value) =
            parse_label(item).map_err(|e| Failure::invalid(format!("labels: {}", e.reason)))?;
        labels.insert(key, value);
    }
    let request = CreateEnrollTokenRequest {
        ttl_seconds: Some(form.ttl_minutes.saturating_mul(60)),
        uses: Some(form.uses),
        labels,
        ..Default::default()
    };
    let token = control.create_enroll_token(&viewer.by, &request).await?;
    // The address this console is reached at (agents enroll against the same server).
    let server = super::origin(&control, served.as_ref().map(|e| &e.0))
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_else(|| "https://LATCH-CONTROL:8443".to_owned());
    let mut command = format!(
        "printf %s '{}' | latch-agent enroll --server {server} --token-file -",
        token.token
    );
    if let Some(fingerprint) = &control.ca_fingerprint {
        command.push_str(&format!(" --ca-fingerprint {fingerprint}"));
    }
    let body = html! {
        (notice("success", "Enrollment token created. It is shown only now: copy it."))
        p { "Run this as root on the host to enroll it:" }
        pre.copyable #enroll-command tabindex="0" aria-label="The enroll command" { code { (command) } }
        button type="button" data-copy="enroll-command" { "Copy command" }
        p.muted { "Then: " code { "systemctl enable --now latch-agent" } "." }
        p { a href="/hosts" { "Back to hosts" } }
    };
    Ok(layout::page(
        &viewer,
        Section::Hosts,
        "Enrollment token",
        body,
    ))
}

/// `GET /hosts/{host}?enrolled=`.
#[derive(Deserialize)]
pub struct HostQuery {
    #[serde(default)]
    enrolled: Option<String>,
}

/// `GET /hosts/{host}`: the host, its recent jobs (live), and account enrollment.
pub async fn show(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Path(key): Path<String>,
    Query(query): Query<HostQuery>,
) -> Result<Response, Failure> {
    check_path_id("host", &key)?;
    let host = control.show_host(&viewer.by, &key).await?;
    let now = Utc::now();
    // Vaults the viewer manages: where an account can be enrolled.
    let mut managed = Vec::new();
    if viewer.can(Permission::HostsManageUsers) && viewer.can(Permission::PamVaultsManage) {
        for vault in control.list_vaults(&viewer.by).await? {
            if control
                .vault_for(&viewer.by, &vault.id, Need::Manage)
                .await
                .is_ok()
            {
                managed.push(vault);
            }
        }
    }
    let jobs_url = format!("/jobs?host={}", host.facts.hostname);
    // The identity just enrolled, as the viewer may see it: the link's text is never shown
    // (anyone can write a link to this page).
    let enrolled = match &query.enrolled {
        Some(id) if check_path_id("identity", id).is_ok() => {
            control.show_identity(&viewer.by, id).await.ok()
        }
        _ => None,
    };
    let body = html! {
        @if let Some(identity) = &enrolled {
            (notice("success", &format!("Enrollment queued (identity {}). The jobs below turn confirmed once the host has applied them.", identity.name)))
        }
        dl.facts {
            dt { "Status" } dd { (online_badge(&host)) }
            dt { "Last seen" } dd { (when_opt(host.last_seen, now)) }
            dt { "Enrolled" } dd { (when(host.enrolled_at, now)) }
            dt { "System" } dd { (host.facts.os) " · kernel " (host.facts.kernel) " · " (host.facts.arch) }
            dt { "CPUs · memory" } dd { (host.facts.cpus) " · " (host.facts.memory_bytes / (1024 * 1024)) " MiB" }
            dt { "Labels" } dd { (labels_text(&host.labels)) }
            dt { "Agent" } dd { @match &host.agent { Some(a) => { (a.version) " (protocol " (a.protocol) ")" }, None => { "not polled yet" } } }
            dt { "Host id" } dd { code { (host.id) } }
        }
        @if !managed.is_empty() {
            section aria-labelledby="enroll-heading" {
                h2 #enroll-heading { "Enroll account" }
                @if host.online {
                    p.muted { "Takes over an existing account of this host into a vault: Latch adopts it and sets a new password only the vault knows." }
                    form.inline method="post" action=(format!("/hosts/{}/enroll-account", host.id)) {
                        (viewer.csrf_field())
                        div {
                            label for="e-user" { "Account on the host" }
                            input #e-user name="user" type="text" required maxlength="32" autocomplete="off";
                        }
                        div {
                            label for="e-vault" { "Vault" }
                            select #e-vault name="vault" required {
                                @for vault in &managed { option value=(vault.id) { (vault.name) } }
                            }
                        }
                        div.actions { button type="submit" { "Enroll account" } }
                    }
                } @else {
                    p { "The host is offline: enrollment needs its agent running." }
                }
            }
        }
        section aria-labelledby="jobs-heading" {
            h2 #jobs-heading { "Recent jobs" }
            p { a href=(jobs_url) { "All jobs of this host" } }
            (super::jobs::live_table(&control, &viewer, &host.facts.hostname, 20).await?)
        }
    };
    Ok(layout::page(
        &viewer,
        Section::Hosts,
        &format!("Host {}", host.facts.hostname),
        body,
    ))
}

/// The enroll-account form.
#[derive(Deserialize)]
pub struct EnrollForm {
    user: String,
    vault: String,
}

/// `POST /hosts/{host}/enroll-account`: queues the enrollment and goes to the host's page,
/// where its jobs follow live.
pub async fn enroll_account(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Path(key): Path<String>,
    Posted(form): Posted<EnrollForm>,
) -> Result<Response, Failure> {
    check_path_id("host", &key)?;
    let request = EnrollAccountRequest {
        user: form.user.trim().to_owned(),
        vault: form.vault,
        name: None,
    };
    let enrolled = control.enroll_account(&viewer.by, &key, &request).await?;
    Ok(see_other(&format!(
        "/hosts/{key}?enrolled={}",
        enrolled.identity.id
    )))
}
