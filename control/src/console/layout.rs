//! The page frame: head, navigation (only the sections the viewer may use), the signed-in user
//! and sign-out; error pages; times as people read them.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use latch_common::authz::Permission;
use maud::{DOCTYPE, Markup, html};

use super::session::Viewer;
use crate::ControlError;
use crate::api::error::ApiError;

/// A section of the console, for the navigation's current-page mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Jobs,
    Hosts,
    Access,
    Vault,
    Audit,
    /// The viewer's own account (linked from their name, not in the section list).
    Account,
}

impl Section {
    const ALL: [Section; 5] = [
        Section::Jobs,
        Section::Hosts,
        Section::Access,
        Section::Vault,
        Section::Audit,
    ];

    fn label(self) -> &'static str {
        match self {
            Section::Jobs => "Jobs",
            Section::Hosts => "Hosts",
            Section::Access => "Access",
            Section::Vault => "Vault",
            Section::Audit => "Audit",
            Section::Account => "Your account",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Section::Jobs => "/jobs",
            Section::Hosts => "/hosts",
            Section::Access => "/access",
            Section::Vault => "/vault",
            Section::Audit => "/audit",
            Section::Account => "/account",
        }
    }

    /// Whether the viewer may open the section at all.
    pub fn visible_to(self, viewer: &Viewer) -> bool {
        match self {
            Section::Jobs => viewer.can(Permission::JobsView),
            Section::Hosts => viewer.can(Permission::HostsView),
            // Approvers are members of a policy's approver group, whatever their roles; per-vault
            // grants can let anyone see a vault. Both pages list what the library lets the
            // viewer see.
            Section::Access | Section::Vault | Section::Account => true,
            Section::Audit => viewer.can(Permission::AuditView),
        }
    }
}

/// The head shared by every page.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Latch" }
            // No favicon request (a 404 in every browser's console otherwise).
            link rel="icon" href="data:,";
            link rel="stylesheet" href=(concat!("/assets/console.css?v=", env!("CARGO_PKG_VERSION")));
            script src=(concat!("/assets/console.js?v=", env!("CARGO_PKG_VERSION"))) defer {}
        }
    }
}

/// A full page for a signed-in viewer.
pub fn page(viewer: &Viewer, current: Section, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-csrf=(viewer.csrf) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Latch" }
                    nav aria-label="Sections" {
                        ul {
                            @for section in Section::ALL {
                                @if section.visible_to(viewer) {
                                    li {
                                        @if section == current {
                                            a href=(section.path()) aria-current="page" { (section.label()) }
                                        } @else {
                                            a href=(section.path()) { (section.label()) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span {
                            "Signed in as "
                            a href="/account" aria-current=[(current == Section::Account).then_some("page")] {
                                strong { (viewer.by.principal.name) }
                            }
                        }
                        form method="post" action="/logout" {
                            (viewer.csrf_field())
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page without the navigation (sign-in, errors before sign-in).
pub fn bare(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { span.brand { "Latch" } }
                main #main.narrow {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// Why a console request failed: the API's status, code and message, shown as a page.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl Failure {
    /// A failure with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Failure(ApiError::new(status, code, message))
    }

    /// `400 invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure(ApiError::invalid(message))
    }
}

impl From<ControlError> for Failure {
    fn from(error: ControlError) -> Self {
        Failure(ApiError::from(error))
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure(error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let ApiError {
            status,
            code,
            message,
        } = self.0;
        let title = match status {
            StatusCode::FORBIDDEN => "Not permitted",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::UNAUTHORIZED => "Sign-in needed",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            s if s.is_server_error() => "Something went wrong",
            _ => "That did not work",
        };
        bare(
            status,
            title,
            html! {
                div.notice.error role="alert" {
                    p { (message) }
                    p.code { "Code: " code { (code) } }
                }
                p { a href="/jobs" { "Back to the console" } " · " a href="/login" { "Sign in" } }
            },
        )
    }
}

/// A notice above a page's content (what a form just did, or why it did not).
pub fn notice(kind: &str, text: &str) -> Markup {
    let role = if kind == "error" { "alert" } else { "status" };
    html! { div class=(format!("notice {kind}")) role=(role) { p { (text) } } }
}

/// `at` as people read it ("3 min ago", "in 2 h"), with the exact time in `datetime` and a
/// tooltip.
pub fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let exact = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    html! { time datetime=(exact) title=(exact) { (relative(at, now)) } }
}

/// An optional time, or a dash.
pub fn when_opt(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    match at {
        Some(at) => when(at, now),
        None => html! { span.muted { "—" } },
    }
}

/// "3 min ago" / "in 2 h" / "just now".
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let span = duration_words(seconds.unsigned_abs());
    match seconds {
        -4..=4 => "just now".to_owned(),
        s if s < 0 => format!("{span} ago"),
        _ => format!("in {span}"),
    }
}

/// A duration in the largest unit that fits: `42 s`, `5 min`, `3 h`, `2 d`.
pub fn duration_words(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d", s / 86_400),
    }
}

/// A status as a labelled badge (text, never colour alone).
pub fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge s-{status}")) { (status) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(relative(now, now), "just now");
        assert_eq!(
            relative(now - chrono::Duration::seconds(90), now),
            "1 min ago"
        );
        assert_eq!(
            relative(now + chrono::Duration::hours(2), now),
            "in 2 h 0 min"
        );
        assert_eq!(relative(now - chrono::Duration::days(3), now), "3 d ago");
        assert_eq!(duration_words(42), "42 s");
    }
}
