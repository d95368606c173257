//! The Vault page: vaults, their identities and each identity's rotation status per host;
//! reveal (with a step-up where the MFA policy asks for one), checkout/checkin with a reason
//! and a duration, break-glass behind its warning.
//!
//! A revealed or checked-out credential never becomes part of a page: the page's script asks
//! for it (`POST`, answered as JSON with `Cache-Control: no-store`), shows it, and removes it
//! after 30 seconds. It is never written to the browser's storage.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use latch_common::authz::Permission;
use latch_common::vault::{
    AccessLevel, BreakGlassRequest, CheckinRequest, CheckoutRequest, IdentityView, VaultView,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Failure, Section, badge, when, when_opt};
use super::session::{Posted, Viewer, see_other, step_up, totp_field};
use crate::Control;
use crate::api::extract::check_path_id;
use crate::mfa::SensitiveAction;

/// How long a revealed credential stays on screen.
const HIDE_AFTER_SECONDS: u32 = 30;

/// `GET /vault?vault=`.
#[derive(Deserialize)]
pub struct VaultQuery {
    #[serde(default)]
    vault: String,
}

/// `GET /vault`: the vaults the viewer may see; a chosen vault's identities.
pub async fn page(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Query(query): Query<VaultQuery>,
) -> Result<Response, Failure> {
    let vaults = control.list_vaults(&viewer.by).await?;
    let chosen: Option<&VaultView> = if query.vault.is_empty() {
        (vaults.len() == 1).then(|| &vaults[0])
    } else {
        check_path_id("vault", &query.vault)?;
        Some(
            vaults
                .iter()
                .find(|v| v.id == query.vault || v.name == query.vault)
                .ok_or_else(|| {
                    Failure::new(
                        StatusCode::NOT_FOUND,
                        "resource_does_not_exist",
                        "no such vault, or you may not see it",
                    )
                })?,
        )
    };
    let identities = match chosen {
        Some(vault) => control.list_identities(&viewer.by, &vault.id).await?,
        None => Vec::new(),
    };
    let now = Utc::now();
    let body = html! {
        table.list #vaults {
            caption.visually-hidden { "Vaults you may see" }
            thead { tr { th scope="col" { "Vault" } th scope="col" { "Description" } th scope="col" { "Identities" } th scope="col" { "Your access" } } }
            tbody {
                @for vault in &vaults {
                    tr {
                        td { a href=(format!("/vault?vault={}", vault.id)) { (vault.name) } }
                        td { (vault.description) }
                        td { (vault.identities) }
                        td { @match vault.my_access { Some(level) => { (level.as_str()) }, None => { "metadata only (no grant)" } } }
                    }
                }
                @if vaults.is_empty() { tr { td colspan="4" { "No vault is shared with you." } } }
            }
        }
        @if let Some(vault) = chosen {
            h2 { "Identities in " (vault.name) }
            (identities_table(&identities, now))
        }
    };
    Ok(layout::page(&viewer, Section::Vault, "Vault", body))
}

fn rotation_badge(identity: &IdentityView) -> Markup {
    match &identity.rotation_state {
        Some(state) => badge(state),
        None => html! { span.muted { "—" } },
    }
}

fn identities_table(identities: &[IdentityView], now: chrono::DateTime<Utc>) -> Markup {
    html! {
        table.list #identities {
            thead { tr {
                th scope="col" { "Identity" }
                th scope="col" { "Account" }
                th scope="col" { "Hosts" }
                th scope="col" { "Rotation" }
                th scope="col" { "Last rotated" }
                th scope="col" { "Next rotation" }
                th scope="col" { "Checked out" }
            } }
            tbody {
                @for identity in identities {
                    tr {
                        td { a href=(format!("/vault/identities/{}", identity.id)) { (identity.name) } }
                        td { code { (identity.username) } }
                        td { @for host in &identity.hosts { span.host { (host.hostname) " " @if let Some(s) = &host.password_status { (badge(s)) } @else if let Some(s) = &host.adopt_status { (badge(s)) } } " " } }
                        td { (rotation_badge(identity)) }
                        td { (when_opt(identity.last_rotated_at, now)) }
                        td { (when_opt(identity.next_rotation_at, now)) }
                        td { (identity.active_checkouts) }
                    }
                }
                @if identities.is_empty() { tr { td colspan="7" { "No identities in this vault." } } }
            }
        }
    }
}

/// `GET /vault/identities/{id}`.
pub async fn identity(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    check_path_id("identity", &id)?;
    let identity = control.show_identity(&viewer.by, &id).await?;
    let checkouts = control.list_checkouts(&viewer.by, &id).await?;
    let rotations = control.list_rotations(&viewer.by, &id).await?;
    let vault = control.show_vault(&viewer.by, &identity.vault_id).await?;
    let now = Utc::now();
    let mfa = &control.config().mfa;
    let reveal_code = mfa.required.contains(&SensitiveAction::Reveal);
    let break_glass_code = mfa.required.contains(&SensitiveAction::BreakGlass);
    let level = vault.my_access;
    // The grant levels (view_vault < view_credentials < checkout); without a grant, metadata only.
    let may_reveal = level.is_some_and(|l| l >= AccessLevel::ViewCredentials);
    let may_checkout = level.is_some_and(|l| l >= AccessLevel::Checkout);
    let manager = viewer.can(Permission::PamVaultsManage);
    let body = html! {
        dl.facts {
            dt { "Vault" } dd { a href=(format!("/vault?vault={}", vault.id)) { (vault.name) } }
            dt { "Account" } dd { code { (identity.username) } }
            dt { "Rotation" } dd { (rotation_badge(&identity)) " last " (when_opt(identity.last_rotated_at, now)) " · next " (when_opt(identity.next_rotation_at, now)) }
            dt { "Checkouts" } dd { (identity.active_checkouts) " active" @if identity.concurrent_checkout { " (up to " (identity.max_concurrent_checkouts) " at once)" } @else { " (exclusive)" } }
        }
        h2 { "Hosts" }
        table.list #identity-hosts {
            thead { tr { th scope="col" { "Host" } th scope="col" { "Adopted" } th scope="col" { "Current password" } } }
            tbody {
                @for host in &identity.hosts {
                    tr {
                        td { a href=(format!("/hosts/{}", host.host_id)) { (host.hostname) } }
                        td { @if let Some(s) = &host.adopt_status { (badge(s)) } @else { span.muted { "—" } } }
                        td { @if let Some(s) = &host.password_status { (badge(s)) } @else { span.muted { "—" } } }
                    }
                }
                @if identity.hosts.is_empty() { tr { td colspan="3" { "Not linked to a host." } } }
            }
        }
        @if identity.has_secret && may_reveal {
            section.card aria-labelledby="reveal-heading" {
                h2 #reveal-heading { "Reveal" }
                p.muted { "Shows the credential for " (HIDE_AFTER_SECONDS) " seconds. Every reveal is audited." }
                form.inline method="post" action=(format!("/vault/identities/{}/reveal", identity.id)) data-reveal data-output="reveal-output" data-hide-after=(HIDE_AFTER_SECONDS) {
                    (viewer.csrf_field())
                    @if reveal_code { div { (totp_field("reveal-totp")) } }
                    div.actions { button type="submit" { "Reveal" } }
                }
                output #reveal-output hidden aria-live="polite" {}
            }
        }
        @if identity.has_secret && may_checkout {
            section.card aria-labelledby="checkout-heading" {
                h2 #checkout-heading { "Check out" }
                form.inline method="post" action=(format!("/vault/identities/{}/checkout", identity.id)) data-reveal data-output="checkout-output" data-hide-after=(HIDE_AFTER_SECONDS) {
                    (viewer.csrf_field())
                    div { label for="c-reason" { "Reason" } input #c-reason name="reason" type="text" required maxlength="500"; }
                    div {
                        label for="c-minutes" { "For" }
                        select #c-minutes name="duration_minutes" {
                            @for (minutes, label) in [(15, "15 minutes"), (60, "1 hour"), (240, "4 hours"), (480, "8 hours"), (1440, "1 day")] {
                                option value=(minutes) selected[minutes == 60] { (label) }
                            }
                        }
                    }
                    @if reveal_code { div { (totp_field("checkout-totp")) } }
                    div.actions { button type="submit" { "Check out" } }
                }
                output #checkout-output hidden aria-live="polite" {}
            }
        }
        @if identity.has_secret && viewer.can(Permission::PamVaultsBreakGlass) {
            section.card.danger-zone aria-labelledby="glass-heading" {
                h2 #glass-heading { "Break glass" }
                div.notice.warning {
                    p { strong { "Emergency use only." } " Break-glass checks the credential out without approval, alerts the security team at once, checks it in automatically at the end of its window and then rotates the password. Every use is audited and reviewed." }
                }
                form.inline method="post" action=(format!("/vault/identities/{}/break-glass", identity.id)) data-reveal data-output="glass-output" data-hide-after=(HIDE_AFTER_SECONDS) {
                    (viewer.csrf_field())
                    div { label for="g-reason" { "Emergency reason" } input #g-reason name="reason" type="text" required maxlength="500"; }
                    div.check { input #g-ack name="acknowledge" type="checkbox" value="yes" required; label for="g-ack" { "I understand this is an emergency action and will be reviewed" } }
                    @if break_glass_code { div { (totp_field("glass-totp")) } }
                    div.actions { button.danger type="submit" { "Break glass" } }
                }
                output #glass-output hidden aria-live="polite" {}
            }
        }
        h2 { "Checkouts" }
        table.list #checkouts {
            thead { tr { th scope="col" { "Holder" } th scope="col" { "Reason" } th scope="col" { "Started" } th scope="col" { "Ends" } th scope="col" { "State" } th scope="col" { span.visually-hidden { "Actions" } } } }
            tbody {
                @for checkout in &checkouts {
                    tr {
                        td { (checkout.holder) @if checkout.break_glass { " " (badge("break-glass")) } }
                        td { (checkout.reason) }
                        td { (when(checkout.started_at, now)) }
                        td { (when(checkout.expires_at, now)) }
                        td { @match &checkout.checked_in_how { Some(how) => { "checked in (" (how) ") " (when_opt(checkout.checked_in_at, now)) }, None => { (badge("checked_out")) } } }
                        td {
                            @if checkout.checked_in_at.is_none() && (checkout.holder == viewer.by.principal.name || manager) {
                                form method="post" action=(format!("/vault/checkouts/{}/checkin", checkout.id)) {
                                    (viewer.csrf_field())
                                    @if checkout.holder != viewer.by.principal.name { input type="hidden" name="force" value="true"; }
                                    button.secondary type="submit" { "Check in" }
                                }
                            }
                        }
                    }
                }
                @if checkouts.is_empty() { tr { td colspan="6" { "No checkouts." } } }
            }
        }
        h2 { "Rotations" }
        table.list #rotations {
            thead { tr { th scope="col" { "Started" } th scope="col" { "Why" } th scope="col" { "By" } th scope="col" { "State" } th scope="col" { "Hosts" } } }
            tbody {
                @for rotation in &rotations {
                    tr {
                        td { (when(rotation.created_at, now)) }
                        td { (rotation.trigger) }
                        td { (rotation.started_by) }
                        td { (badge(&rotation.state)) }
                        td { @for host in &rotation.hosts { span.host { (host.hostname) " " (badge(&host.status)) @if let Some(code) = &host.error_code { " " code { (code) } } } " " } }
                    }
                }
                @if rotations.is_empty() { tr { td colspan="5" { "No rotations yet." } } }
            }
        }
    };
    Ok(layout::page(
        &viewer,
        Section::Vault,
        &format!("Identity {}", identity.name),
        body,
    ))
}

/// A credential for the page's script: JSON, never cached.
fn secret_answer(secret: &str, note: Option<String>) -> Response {
    let mut response = Json(serde_json::json!({ "secret": secret, "note": note })).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// A refusal for the page's script: `{"code", "message"}` with the status.
fn json_failure(failure: Failure) -> Response {
    let error = failure.0;
    (
        error.status,
        Json(serde_json::json!({"code": error.code, "message": error.message})),
    )
        .into_response()
}

/// A step-up code.
#[derive(Deserialize)]
pub struct RevealForm {
    #[serde(default)]
    totp: String,
}

/// `POST /vault/identities/{id}/reveal` (the page's script): the credential as JSON.
pub async fn reveal(
    State(control): State<Arc<Control>>,
    mut viewer: Viewer,
    Path(id): Path<String>,
    posted: Result<Posted<RevealForm>, Failure>,
) -> Response {
    let outcome = async {
        let Posted(form) = posted?;
        check_path_id("identity", &id)?;
        step_up(&control, &mut viewer, &form.totp).await?;
        let revealed = control.reveal_identity(&viewer.by, &id).await?;
        Ok::<_, Failure>(secret_answer(&revealed.secret, None))
    };
    outcome.await.unwrap_or_else(json_failure)
}

/// The checkout form.
#[derive(Deserialize)]
pub struct CheckoutForm {
    reason: String,
    duration_minutes: u32,
    #[serde(default)]
    totp: String,
}

/// `POST /vault/identities/{id}/checkout` (the page's script): the credential as JSON.
pub async fn checkout(
    State(control): State<Arc<Control>>,
    mut viewer: Viewer,
    Path(id): Path<String>,
    posted: Result<Posted<CheckoutForm>, Failure>,
) -> Response {
    let outcome = async {
        let Posted(form) = posted?;
        check_path_id("identity", &id)?;
        step_up(&control, &mut viewer, &form.totp).await?;
        let request = CheckoutRequest {
            reason: form.reason.trim().to_owned(),
            duration_minutes: form.duration_minutes,
            host: None,
        };
        let granted = control.checkout_identity(&viewer.by, &id, &request).await?;
        let note = format!(
            "Checked out until {}; check it in when done.",
            granted.checkout.expires_at.format("%Y-%m-%d %H:%M UTC")
        );
        Ok::<_, Failure>(secret_answer(&granted.credential.secret, Some(note)))
    };
    outcome.await.unwrap_or_else(json_failure)
}

/// The break-glass form.
#[derive(Deserialize)]
pub struct BreakGlassForm {
    reason: String,
    #[serde(default)]
    acknowledge: String,
    #[serde(default)]
    totp: String,
}

/// `POST /vault/identities/{id}/break-glass` (the page's script): the credential as JSON.
pub async fn break_glass(
    State(control): State<Arc<Control>>,
    mut viewer: Viewer,
    Path(id): Path<String>,
    posted: Result<Posted<BreakGlassForm>, Failure>,
) -> Response {
    let outcome = async {
        let Posted(form) = posted?;
        check_path_id("identity", &id)?;
        if form.acknowledge != "yes" {
            return Err(Failure::invalid(
                "confirm that this is an emergency action (the checkbox) and submit again",
            ));
        }
        step_up(&control, &mut viewer, &form.totp).await?;
        let request = BreakGlassRequest {
            reason: form.reason.trim().to_owned(),
        };
        let granted = control.break_glass(&viewer.by, &id, &request).await?;
        let note = format!(
            "Break-glass checkout until {}; the security team was alerted, and the password is rotated when it ends.",
            granted.checkout.expires_at.format("%Y-%m-%d %H:%M UTC")
        );
        Ok::<_, Failure>(secret_answer(&granted.credential.secret, Some(note)))
    };
    outcome.await.unwrap_or_else(json_failure)
}

/// The check-in form.
#[derive(Deserialize)]
pub struct CheckinForm {
    #[serde(default)]
    force: bool,
}

/// `POST /vault/checkouts/{id}/checkin`.
pub async fn checkin(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Posted(form): Posted<CheckinForm>,
) -> Result<Response, Failure> {
    check_path_id("checkout", &id)?;
    let view = control
        .checkin(&viewer.by, &id, &CheckinRequest { force: form.force })
        .await?;
    Ok(see_other(&format!(
        "/vault/identities/{}",
        view.identity_id
    )))
}
