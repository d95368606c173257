//! The Account page: who the viewer is (roles, groups, the session and its second factor), their
//! live sessions (ending one, or all the others), and setting up an authenticator app (TOTP) — the QR code and the secret shown once, confirmed by
//! its first code — so that approvals and reveals can ask for codes without `latchctl`.
//! The library decides who may enroll and when (a first factor only soon after signing in; a
//! replacement only after a code from the current one).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::Utc;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use super::layout::{self, Failure, Section, badge, notice, when, when_opt};
use super::session::{Posted, Viewer, see_other, step_up, totp_field};
use crate::Control;
use latch_common::people::SessionView;

/// `GET /account?ended=N`: `ended` says how many sessions the last action ended (anything
/// but a number is ignored).
#[derive(Deserialize)]
pub struct AccountQuery {
    ended: Option<String>,
}

/// `GET /account`.
pub async fn page(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Query(query): Query<AccountQuery>,
) -> Result<Response, Failure> {
    let me = control.whoami(&viewer.by).await?;
    let factor = control.totp_status(&viewer.by).await?;
    let sessions = control.session_views(&viewer.by).await?;
    let now = Utc::now();
    let body = html! {
        @match query.ended.and_then(|n| n.parse::<u64>().ok()) {
            Some(0) => { (notice("success", "No other session was live.")) }
            Some(1) => { (notice("success", "The session was ended: its cookie or token no longer works.")) }
            Some(n) => { (notice("success", &format!("{n} sessions were ended: their cookies and tokens no longer work."))) }
            None => {}
        }
        dl.facts {
            dt { "Name" } dd { (me.name) }
            dt { "Roles" } dd { @if me.roles.is_empty() { "none" } @else { (me.roles.join(", ")) } }
            dt { "Groups" } dd { @if me.groups.is_empty() { "none" } @else { (me.groups.join(", ")) } }
            dt { "Signed in with" } dd { (me.session_kind) }
            dt { "Session ends" } dd { (when(me.expires_at, now)) }
            dt { "Second factor shown" } dd { (when_opt(me.mfa_at, now)) }
            dt { "Authenticator app" } dd {
                @if factor.confirmed { (badge("confirmed")) } @else { (badge("none")) }
                @if factor.pending { " — a new one waits for its first code" }
            }
        }
        (sessions_table(&viewer, &sessions, now))
        section.card aria-labelledby="code-heading" {
            h2 #code-heading { "Show a code now" }
            p.muted { "Approvals and reveals ask for a recent second factor; a code shown here counts for this session." }
            (code_form(&viewer, "now-code", "Authenticator code", "Verify"))
        }
        section.card aria-labelledby="enroll-heading" {
            h2 #enroll-heading { @if factor.confirmed { "Replace the authenticator app" } @else { "Set up an authenticator app" } }
            form.inline method="post" action="/account/totp" {
                (viewer.csrf_field())
                @if factor.confirmed { div { (totp_field("replace-totp")) } }
                div.actions { button type="submit" { @if factor.confirmed { "Replace" } @else { "Set up" } } }
            }
        }
    };
    Ok(layout::page(
        &viewer,
        Section::Account,
        "Your account",
        body,
    ))
}

/// The viewer's live sessions, each with a button that ends it (but the one in use: signing out
/// ends that), and one that ends all the others.
fn sessions_table(viewer: &Viewer, sessions: &[SessionView], now: chrono::DateTime<Utc>) -> Markup {
    let others = sessions.iter().any(|s| !s.current);
    html! {
        section.card aria-labelledby="sessions-heading" {
            h2 #sessions-heading { "Your sessions" }
            p.muted { "Each sign-in, in the browser or with latchctl, is a session. End any you do not recognise." }
            table.list #sessions {
                caption.visually-hidden { "Your live sessions" }
                thead { tr {
                    th scope="col" { "Started" }
                    th scope="col" { "Signed in with" }
                    th scope="col" { "From" }
                    th scope="col" { "Second factor" }
                    th scope="col" { "Ends" }
                    th scope="col" { span.visually-hidden { "Action" } }
                } }
                tbody {
                    @for session in sessions {
                        tr id=(format!("session-{}", session.id)) {
                            td { (when(session.created_at, now)) }
                            td { (session.kind) }
                            td { @match &session.address { Some(address) => { (address) }, None => { span.muted { "unknown" } } } }
                            td { (when_opt(session.mfa_at, now)) }
                            td { (when(session.expires_at, now)) }
                            td {
                                @if session.current {
                                    (badge("this session"))
                                } @else {
                                    form.inline method="post" action=(format!("/account/sessions/{}/end", session.id)) {
                                        (viewer.csrf_field())
                                        button.secondary type="submit" aria-label=(format!("End the {} session started {}", session.kind, session.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))) { "End" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if others {
                form.inline method="post" action="/account/sessions/end-others" {
                    (viewer.csrf_field())
                    div.actions { button type="submit" { "End all other sessions" } }
                }
            }
        }
    }
}

/// `POST /account/sessions/{id}/end`: ends one of the viewer's own sessions.
pub async fn end_session(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Posted(_): Posted<serde::de::IgnoredAny>,
) -> Result<Response, Failure> {
    control.end_own_session(&viewer.by, &id).await?;
    Ok(see_other("/account?ended=1"))
}

/// `POST /account/sessions/end-others`: ends every session of the viewer but this one.
pub async fn end_other_sessions(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Posted(_): Posted<serde::de::IgnoredAny>,
) -> Result<Response, Failure> {
    let ended = control.end_other_sessions(&viewer.by).await?;
    Ok(see_other(&format!("/account?ended={ended}")))
}

/// The enrollment form: a code from the current factor when replacing it.
#[derive(Deserialize)]
pub struct EnrollForm {
    #[serde(default)]
    totp: String,
}

/// `POST /account/totp`: a new factor; its QR code and secret, once, and the form for its first
/// code.
pub async fn enroll(
    State(control): State<Arc<Control>>,
    mut viewer: Viewer,
    Posted(form): Posted<EnrollForm>,
) -> Result<Response, Failure> {
    step_up(&control, &mut viewer, &form.totp).await?;
    let enrollment = control.enroll_totp(&viewer.by).await?;
    let qr = qr_svg(&enrollment.otpauth_uri)?;
    let body = html! {
        div.notice.warning role="alert" {
            p { "Scan this with your authenticator app now: the secret is shown only on this page." }
        }
        figure.qr {
            (qr)
            figcaption { "Or type the secret: " code #totp-secret { (enrollment.secret_base32) } }
        }
        (code_form(&viewer, "first-code", "The app's first code", "Confirm"))
    };
    Ok(layout::page(
        &viewer,
        Section::Account,
        "Set up an authenticator app",
        body,
    ))
}

/// A form that shows a code for this session (`POST /mfa`) and comes back here.
fn code_form(viewer: &Viewer, id: &str, label: &str, button: &str) -> Markup {
    html! {
        form.inline method="post" action="/mfa" {
            (viewer.csrf_field())
            input type="hidden" name="next" value="/account";
            div {
                label for=(id) { (label) }
                input id=(id) name="code" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required;
            }
            div.actions { button type="submit" { (button) } }
        }
    }
}

/// The otpauth URI as an inline SVG QR code (dark modules as one path; no script, no style).
fn qr_svg(uri: &str) -> Result<Markup, Failure> {
    let code = qrcode::QrCode::new(uri.as_bytes()).map_err(|e| {
        Failure::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "unknown_error",
            format!("cannot draw the QR code ({e}); type the secret instead"),
        )
    })?;
    let width = code.width();
    let quiet = 4;
    let mut path = String::new();
    for (i, color) in code.to_colors().iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (x, y) = (i % width + quiet, i / width + quiet);
            path.push_str(&format!("M{x} {y}h1v1h-1z"));
        }
    }
    let size = width + 2 * quiet;
    Ok(PreEscaped(format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" width="240" height="240" role="img" aria-label="QR code of the authenticator secret" shape-rendering="crispEdges"><rect width="{size}" height="{size}" fill="#ffffff"/><path d="{path}" fill="#000000"/></svg>"##
    )))
}
