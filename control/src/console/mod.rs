//! The web console: server-rendered HTML pages over [`Control`], served by `latch-control` at
//! `/` next to the API. Like the API's handlers, pages only parse, authenticate and call the
//! library; every permission check is the library's, and the pages hide what the viewer's
//! roles do not permit (the library refuses it anyway).
//!
//! - [`session`]: sign-in (local password or the identity provider), the session cookie
//!   (`__Host-latch_session`: `HttpOnly; Secure; SameSite=Strict`), CSRF tokens, sign-out;
//! - [`layout`]: the page frame, navigation by permission, error pages, time formatting;
//! - [`jobs`] (live over Server-Sent Events), [`hosts`] (one-click account enrollment,
//!   enrollment tokens), [`access`] (requests, approvals with MFA step-up, grants), [`vault`]
//!   (reveal, checkout/checkin, break-glass), [`audit`] (the trail and its verification),
//!   [`account`] (who you are; setting up an authenticator app).
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles only from
//! `/assets/`, no inline script, no framing) and `Cache-Control: no-store`, except the
//! embedded assets themselves.

mod access;
mod account;
mod audit;
mod hosts;
mod jobs;
mod layout;
mod session;
mod vault;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::Control;

/// Where this server listens, added by [`crate::server::run`]: the console's address when no
/// `public_url` is configured and the address is loopback.
#[derive(Debug, Clone, Copy)]
pub struct ServedAt {
    /// `https` or `http`.
    pub scheme: &'static str,
    /// The bound address.
    pub addr: SocketAddr,
}

/// The stylesheet, embedded in the binary.
const CSS: &str = include_str!("assets/console.css");
/// The console's only script (live jobs, the reveal timer, copy buttons), embedded.
const JS: &str = include_str!("assets/console.js");

/// The Content-Security-Policy of every console answer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, merged into the API's router (which adds the rate limiter and the
/// request metrics around both).
pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/jobs") }))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .route(
            "/login",
            get(session::login_page).post(session::login_local),
        )
        .route("/login/sso", get(session::login_sso))
        .route("/login/callback", get(session::login_callback))
        .route("/logout", post(session::logout))
        .route("/mfa", post(session::verify_mfa))
        .route("/account", get(account::page))
        .route("/account/totp", post(account::enroll))
        .route(
            "/account/sessions/end-others",
            post(account::end_other_sessions),
        )
        .route("/account/sessions/{id}/end", post(account::end_session))
        .route("/jobs", get(jobs::page))
        .route("/jobs/events", get(jobs::events))
        .route("/hosts", get(hosts::page))
        .route("/hosts/{host}", get(hosts::show))
        .route("/hosts/{host}/enroll-account", post(hosts::enroll_account))
        .route("/enroll-tokens", post(hosts::create_enroll_token))
        .route("/access", get(access::page).post(access::request))
        .route("/access/requests/{id}", get(access::show))
        .route("/access/requests/{id}/{action}", post(access::act))
        .route("/vault", get(vault::page))
        .route("/vault/identities/{id}", get(vault::identity))
        .route("/vault/identities/{id}/reveal", post(vault::reveal))
        .route("/vault/identities/{id}/checkout", post(vault::checkout))
        .route(
            "/vault/identities/{id}/break-glass",
            post(vault::break_glass),
        )
        .route("/vault/checkouts/{id}/checkin", post(vault::checkin))
        .route("/audit", get(audit::page))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Whether a request is for the console (a browser page), not the API: the API's fallback
/// answers those with an HTML page.
pub fn wants_html(request: &Request) -> bool {
    request
        .headers()
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.starts_with("text/html"))
}

/// A 404 page for a browser that asked for a page that does not exist.
pub fn not_found_page() -> Response {
    layout::Failure::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "there is no such page; use the navigation above",
    )
    .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // The URL carries the version: a new release is a new URL.
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Adds the security headers to every console answer; pages are never stored by a cache.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let fixed = [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !is_asset {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A form field as an option: trimmed, `None` when empty.
fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The console's origin (`https://host:port`, no path): the configured `public_url`, else the
/// listening address when it is loopback. `None` when neither is known (a server listening on
/// every address without `public_url`): the console then offers local sign-in only.
fn origin(control: &Control, served: Option<&ServedAt>) -> Option<url::Url> {
    if let Some(url) = &control.config().public_url {
        return Some(url.clone());
    }
    let served = served?;
    if !served.addr.ip().is_loopback() {
        return None;
    }
    url::Url::parse(&format!("{}://{}/", served.scheme, served.addr)).ok()
}
