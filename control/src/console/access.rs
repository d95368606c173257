//! The Access page: request access (a host or a label selector, what, how long, why, an SSH
//! key or a generated temporary key offered once as a download); approvers see what waits for
//! them and approve or deny with an MFA step-up; active grants with their time left and an
//! early revoke. A request's own page is the link a notification carries.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
use latch_common::access::{AccessKind, AccessRequestCreate, AccessRequestView};
use latch_common::authz::Permission;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Failure, Section, badge, duration_words, notice, when, when_opt};
use super::non_empty;
use super::session::{Posted, Viewer, see_other, step_up, totp_field};
use crate::Control;
use crate::access::requests::{Action, NewRequest};
use crate::api::extract::check_path_id;
use crate::mfa::SensitiveAction;

/// Requests listed per table.
const ROWS: u32 = 50;

/// `GET /access`.
pub async fn page(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
) -> Result<Response, Failure> {
    Ok(render(&control, &viewer, None).await?.into_response())
}

async fn render(
    control: &Control,
    viewer: &Viewer,
    message: Option<Markup>,
) -> Result<Response, Failure> {
    let now = Utc::now();
    let mine = if viewer.can(Permission::AccessRequest) {
        control.list_access(&viewer.by, true, None, ROWS, 0).await?
    } else {
        Vec::new()
    };
    // What the viewer may decide: the pending requests they see (as requester, approver-group
    // member or access.view holder) whose actions include approving.
    let mut waiting = Vec::new();
    for request in control
        .list_access(
            &viewer.by,
            false,
            Some("pending_approval".to_owned()),
            ROWS,
            0,
        )
        .await?
    {
        if control
            .access_actions(&viewer.by, &request.id)
            .await?
            .contains(&Action::Approve)
        {
            waiting.push(request);
        }
    }
    let approver = !waiting.is_empty() || viewer.can(Permission::AccessApprove);
    let active = control
        .list_access(&viewer.by, false, Some("active".to_owned()), ROWS, 0)
        .await?;
    let body = html! {
        @if let Some(message) = message { (message) }
        @if approver {
            section aria-labelledby="waiting-heading" {
                h2 #waiting-heading { "Waiting for your approval" }
                (requests_table("waiting", &waiting, now, "Nothing waits for your approval."))
            }
        }
        section aria-labelledby="active-heading" {
            h2 #active-heading { "Active grants" }
            (requests_table("active", &active, now, "No active grants."))
        }
        @if viewer.can(Permission::AccessRequest) {
            section aria-labelledby="request-heading" {
                h2 #request-heading { "Request access" }
                (request_form(viewer))
            }
            section aria-labelledby="mine-heading" {
                h2 #mine-heading { "My requests" }
                (requests_table("mine", &mine, now, "You have not requested access yet."))
            }
        }
    };
    Ok(layout::page(viewer, Section::Access, "Access", body))
}

fn requests_table(
    id: &str,
    list: &[AccessRequestView],
    now: chrono::DateTime<Utc>,
    empty: &str,
) -> Markup {
    html! {
        table.list id=(format!("requests-{id}")) {
            thead { tr {
                th scope="col" { "Request" }
                th scope="col" { "Requester" }
                th scope="col" { "Hosts" }
                th scope="col" { "Access" }
                th scope="col" { "State" }
                th scope="col" { "Time left" }
                th scope="col" { "Reason" }
            } }
            tbody {
                @for request in list {
                    tr id=(format!("{id}-{}", request.id)) {
                        td { a href=(format!("/access/requests/{}", request.id)) { code { (request.id) } } }
                        td { (request.requester) }
                        td { (request.target) }
                        td { (request.access.as_str()) " · " (request.minutes) " min" }
                        td { (badge(&request.state)) }
                        td { (time_left(request, now)) }
                        td { (request.reason) }
                    }
                }
                @if list.is_empty() { tr { td colspan="7" { (empty) } } }
            }
        }
    }
}

fn time_left(request: &AccessRequestView, now: chrono::DateTime<Utc>) -> Markup {
    match (request.state.as_str(), request.ends_at) {
        ("active", Some(ends)) if ends > now => {
            html! { (duration_words((ends - now).num_seconds().unsigned_abs())) }
        }
        ("pending_approval", _) => {
            html! { "pending until " (when_opt(request.pending_until, now)) }
        }
        _ => html! { span.muted { "—" } },
    }
}

fn request_form(viewer: &Viewer) -> Markup {
    html! {
        form.stack.request method="post" action="/access" {
            (viewer.csrf_field())
            label for="r-host" { "Host (name or id)" }
            input #r-host name="host" type="text" maxlength="253" autocomplete="off" aria-describedby="r-host-help";
            p.muted #r-host-help { "Or leave it empty and give a label selector below to ask for several hosts." }
            label for="r-hosts" { "Hosts by label selector" }
            input #r-hosts name="hosts" type="text" maxlength="512" placeholder="env=prod,role=db";
            label for="r-access" { "Access" }
            select #r-access name="access" {
                @for kind in AccessKind::ALL { option value=(kind.as_str()) { (kind.as_str()) } }
            }
            label for="r-minutes" { "For how long (from when it becomes active)" }
            select #r-minutes name="minutes" {
                @for (minutes, label) in [(15, "15 minutes"), (30, "30 minutes"), (60, "1 hour"), (120, "2 hours"), (240, "4 hours"), (480, "8 hours")] {
                    option value=(minutes) selected[minutes == 60] { (label) }
                }
            }
            label for="r-reason" { "Why (1–500 characters)" }
            textarea #r-reason name="reason" required maxlength="500" rows="2" {}
            label for="r-key" { "Your SSH public key (optional)" }
            textarea #r-key name="ssh_public_key" maxlength="16384" rows="2" placeholder="ssh-ed25519 AAAA… you@laptop" aria-describedby="r-key-help" {}
            p.muted #r-key-help { "Leave it empty to get a temporary key pair: its private key is offered once as a download and never stored." }
            button type="submit" { "Request access" }
        }
    }
}

/// The request form.
#[derive(Deserialize)]
pub struct RequestForm {
    #[serde(default)]
    host: String,
    #[serde(default)]
    hosts: String,
    access: String,
    minutes: u32,
    reason: String,
    #[serde(default)]
    ssh_public_key: String,
}

/// `POST /access`: makes the request; a generated private key is offered once.
pub async fn request(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Posted(form): Posted<RequestForm>,
) -> Result<Response, Failure> {
    let access = AccessKind::ALL
        .into_iter()
        .find(|k| k.as_str() == form.access)
        .ok_or_else(|| Failure::invalid("access must be ephemeral-account or sudo"))?;
    let body = AccessRequestCreate {
        host: non_empty(&form.host),
        hosts: non_empty(&form.hosts),
        access,
        minutes: form.minutes,
        reason: form.reason.trim().to_owned(),
        ssh_public_key: non_empty(&form.ssh_public_key),
    };
    let new = NewRequest::try_from(&body).map_err(crate::ControlError::from)?;
    let made = control.request_access(&viewer.by, &new).await?;
    let view = control.made_request_view(made).await?;
    let Some(private_key) = &view.private_key else {
        return Ok(see_other(&format!("/access/requests/{}", view.id)));
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(private_key.as_bytes());
    let file = format!("latch-{}", view.id);
    let body = html! {
        (notice("success", "Access requested. Latch generated a temporary SSH key pair for it."))
        div.notice.warning role="alert" {
            p { strong { "Download the private key now: " } "it is offered only on this page and Latch keeps no copy." }
        }
        p { a.button download=(file) href=(format!("data:application/octet-stream;base64,{encoded}")) { "Download private key (" (file) ")" } }
        p.muted { "Then: " code { "chmod 600 " (file) } " and " code { "ssh -i " (file) " " (view.account.as_deref().unwrap_or("ACCOUNT")) "@HOST" } " once the request is active." }
        p { a href=(format!("/access/requests/{}", view.id)) { "Follow the request" } }
    };
    Ok(layout::page(
        &viewer,
        Section::Access,
        "Access requested",
        body,
    ))
}

/// `GET /access/requests/{id}`.
pub async fn show(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    check_path_id("access request", &id)?;
    show_with(&control, &viewer, &id, StatusCode::OK, None).await
}

async fn show_with(
    control: &Control,
    viewer: &Viewer,
    id: &str,
    status: StatusCode,
    message: Option<Markup>,
) -> Result<Response, Failure> {
    let request = control.show_access(&viewer.by, id).await?;
    let actions = control.access_actions(&viewer.by, id).await?;
    let now = Utc::now();
    let mfa = &control.config().mfa;
    let approve_needs_code = mfa.required.contains(&SensitiveAction::Approve);
    let body = html! {
        @if let Some(message) = message { (message) }
        dl.facts {
            dt { "State" } dd { (badge(&request.state)) }
            dt { "Requester" } dd { (request.requester) }
            dt { "Hosts" } dd { (request.target) }
            dt { "Access" } dd { (request.access.as_str()) " for " (request.minutes) " minutes" }
            dt { "Reason" } dd { (request.reason) }
            dt { "Policy" } dd { (request.policy) @if let Some(group) = &request.approver_group { " · approvers: " (group) " (" (request.approvals_needed) " needed)" } }
            dt { "Requested" } dd { (when(request.created_at, now)) }
            @if let Some(account) = &request.account { dt { "Account" } dd { code { (account) } } }
            @if request.activated_at.is_some() { dt { "Active since" } dd { (when_opt(request.activated_at, now)) } }
            @if request.ends_at.is_some() { dt { "Ends" } dd { (when_opt(request.ends_at, now)) " (" (time_left(&request, now)) ")" } }
            @if let Some(reason) = &request.decision_reason { dt { "Decision" } dd { (reason) } }
            @if let Some(end) = &request.end_reason { dt { "Ended because" } dd { (end) } }
        }
        @if !request.decisions.is_empty() {
            h2 { "Decisions" }
            ul { @for d in &request.decisions { li { (d.by) " " strong { (d.decision) } " " (when(d.at, now)) @if !d.reason.is_empty() { " — " (d.reason) } } } }
        }
        @if !request.hosts.is_empty() {
            h2 { "Hosts" }
            table.list #request-hosts {
                thead { tr { th scope="col" { "Host" } th scope="col" { "State" } th scope="col" { "Provisioning" } th scope="col" { "Removal" } } }
                tbody {
                    @for host in &request.hosts {
                        tr {
                            td { (host.host) }
                            td { (badge(&host.state)) @if let Some(error) = &host.error { div.failure { p { (error) } } } }
                            td { @if let Some(s) = &host.provision_status { (badge(s)) } }
                            td { @if let Some(s) = &host.revoke_status { (badge(s)) } }
                        }
                    }
                }
            }
        }
        @if !actions.is_empty() {
            h2 { "Act on it" }
            div.actions-row {
                @for action in &actions {
                    (action_form(viewer, &request.id, *action, approve_needs_code))
                }
            }
        }
        p { a href="/access" { "Back to access" } }
    };
    let mut response = layout::page(
        viewer,
        Section::Access,
        &format!("Access request {}", request.id),
        body,
    );
    *response.status_mut() = status;
    Ok(response)
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Approve => "approve",
        Action::Deny => "deny",
        Action::Cancel => "cancel",
        Action::Revoke => "revoke",
        Action::Confirm => "confirm",
    }
}

fn action_form(viewer: &Viewer, id: &str, action: Action, approve_needs_code: bool) -> Markup {
    let name = action_name(action);
    let (label, class) = match action {
        Action::Approve => ("Approve", ""),
        Action::Deny => ("Deny", "danger"),
        Action::Cancel => ("Cancel request", "secondary"),
        Action::Revoke => ("Revoke now", "danger"),
        Action::Confirm => ("Confirm I still need it", ""),
    };
    let code = match action {
        Action::Approve | Action::Deny => approve_needs_code,
        Action::Confirm => true,
        _ => false,
    };
    html! {
        form.card.inline method="post" action=(format!("/access/requests/{id}/{name}")) aria-label=(label) {
            (viewer.csrf_field())
            @if !matches!(action, Action::Confirm) {
                div {
                    label for=(format!("{name}-reason")) { "Reason (optional)" }
                    input id=(format!("{name}-reason")) name="reason" type="text" maxlength="500";
                }
            }
            @if code { div { (totp_field(&format!("{name}-totp"))) } }
            div.actions { button type="submit" class=(class) { (label) } }
        }
    }
}

/// An action's form: a reason and, for a step-up, a TOTP code.
#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    totp: String,
}

/// `POST /access/requests/{id}/{approve|deny|cancel|revoke|confirm}`.
pub async fn act(
    State(control): State<Arc<Control>>,
    mut viewer: Viewer,
    Path((id, action)): Path<(String, String)>,
    Posted(form): Posted<ActionForm>,
) -> Result<Response, Failure> {
    check_path_id("access request", &id)?;
    let action = match action.as_str() {
        "approve" => Action::Approve,
        "deny" => Action::Deny,
        "cancel" => Action::Cancel,
        "revoke" => Action::Revoke,
        "confirm" => Action::Confirm,
        _ => {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "resource_does_not_exist",
                "no such action; use approve, deny, cancel, revoke or confirm",
            ));
        }
    };
    let outcome = match step_up(&control, &mut viewer, &form.totp).await {
        Ok(()) => control
            .act_on_access(&viewer.by, &id, action, form.reason.trim())
            .await
            .map_err(Failure::from),
        Err(failure) => Err(failure),
    };
    match outcome {
        Ok(_) => Ok(see_other(&format!("/access/requests/{id}"))),
        // Refusals the user can fix here (a second factor, a conflict) show on the request.
        Err(Failure(error))
            if error.status != StatusCode::NOT_FOUND && error.status != StatusCode::FORBIDDEN =>
        {
            let message = notice("error", &error.message);
            show_with(&control, &viewer, &id, error.status, Some(message)).await
        }
        Err(failure) => Err(failure),
    }
}
