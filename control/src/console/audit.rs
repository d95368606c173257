//! The Audit page: the trail, newest first, filtered by actor, host, action and time, with the
//! chain's verification state (ids, links, hashes and MACs checked now).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use latch_common::authz::Permission;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Failure, Section, badge, when};
use super::non_empty;
use super::session::Viewer;
use crate::Control;
use crate::api::extract::check_path_id;
use crate::store::Page;

/// Entries shown (newest first).
const ROWS: u64 = 200;

/// The filter; empty fields mean any.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    action: String,
    /// `YYYY-MM-DD`: entries from that day on (UTC).
    #[serde(default)]
    since: String,
}

/// `GET /audit?actor=&host=&action=&since=`.
pub async fn page(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Result<Response, Failure> {
    viewer.by.require_everywhere(Permission::AuditView)?;
    if !query.host.is_empty() {
        check_path_id("host", &query.host)?;
    }
    let since = if query.since.is_empty() {
        None
    } else {
        let day = chrono::NaiveDate::parse_from_str(&query.since, "%Y-%m-%d")
            .map_err(|_| Failure::invalid("since must be a date: YYYY-MM-DD"))?;
        day.and_hms_opt(0, 0, 0)
            .map(|t| DateTime::<Utc>::from_naive_utc_and_offset(t, Utc))
    };
    let filter = control
        .audit_filter(
            since,
            non_empty(&query.actor).as_deref(),
            non_empty(&query.host).as_deref(),
        )
        .await?;
    if query.action.len() > 64 {
        return Err(Failure::invalid("action is at most 64 characters"));
    }
    let entries = control
        .list_audit(
            &filter,
            Page {
                offset: 0,
                count: ROWS,
            },
        )
        .await?;
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| query.action.is_empty() || e.action.starts_with(&query.action))
        .collect();
    let verification = control.verify_audit().await?;
    let now = Utc::now();
    let body = html! {
        @if verification.ok {
            div.notice.success role="status" {
                p { (badge("verified")) " The audit chain verifies: " (verification.entries) " entries, every link, hash and MAC checked now." }
            }
        } @else {
            div.notice.error role="alert" {
                p { (badge("broken")) " The audit chain does NOT verify"
                    @if let Some(bad) = &verification.first_bad { ": entry " (bad.id) " — " (bad.reason) }
                    ". Treat this as tampering: keep the database and the data directory, and compare with exported checkpoints (latchctl audit verify)." }
            }
        }
        form.filters method="get" action="/audit" aria-label="Filter the audit trail" {
            div { label for="a-actor" { "Actor" } input #a-actor name="actor" type="text" value=(query.actor) placeholder="user:alice" maxlength="128"; }
            div { label for="a-host" { "Host" } input #a-host name="host" type="text" value=(query.host) maxlength="64"; }
            div { label for="a-action" { "Action starts with" } input #a-action name="action" type="text" value=(query.action) placeholder="vault." maxlength="64"; }
            div { label for="a-since" { "Since" } input #a-since name="since" type="date" value=(query.since); }
            div.actions { button type="submit" { "Filter" } a href="/audit" { "Clear" } }
        }
        table.list #audit {
            caption.visually-hidden { "Audit entries, newest first" }
            thead { tr {
                th scope="col" { "#" }
                th scope="col" { "When" }
                th scope="col" { "Actor" }
                th scope="col" { "Action" }
                th scope="col" { "Host" }
                th scope="col" { "Detail" }
            } }
            tbody {
                @for entry in &entries {
                    tr {
                        td { (entry.id) }
                        td { (when(entry.at, now)) }
                        td { (entry.actor) }
                        td { code { (entry.action) } }
                        td { @if let Some(host) = &entry.host_id { code { (host) } } }
                        td.detail { code { (entry.detail) } }
                    }
                }
                @if entries.is_empty() { tr { td colspan="6" { "No entries match." } } }
            }
        }
    };
    Ok(layout::page(&viewer, Section::Audit, "Audit", body))
}
