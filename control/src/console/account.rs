//! The Account page: who the viewer is (roles, groups, the session and its second factor), and
//! setting up an authenticator app (TOTP) — the QR code and the secret shown once, confirmed by
//! its first code — so that approvals and reveals can ask for codes without `latchctl`.
//! The library decides who may enroll and when (a first factor only soon after signing in; a
//! replacement only after a code from the current one).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use chrono::Utc;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use super::layout::{self, Failure, Section, badge, when, when_opt};
use super::session::{Posted, Viewer, step_up, totp_field};
use crate::Control;

/// `GET /account`.
pub async fn page(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
) -> Result<Response, Failure> {
    let me = control.whoami(&viewer.by).await?;
    let factor = control.totp_status(&viewer.by).await?;
    let now = Utc::now();
    let body = html! {
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
