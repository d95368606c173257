//! The Jobs page: filter by host, state and kind; rows follow their job from `pending` to
//! `confirmed` or `failed` live, over Server-Sent Events (`GET /jobs/events` with the same
//! filter), without a reload. A failed job shows its code, its message and what to do.
//!
//! The event stream looks at the filtered list once a second and sends the rows that changed,
//! rendered here (the page's script only swaps them in). It checks the session on every look
//! and lists the jobs with the roles that apply then: signing out, an expired session or losing
//! the permission to see jobs ends the stream. A user holds at most [`STREAMS_PER_USER`]
//! streams open at once, the server at most [`STREAMS_IN_ALL`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, Stream};
use latch_common::api::{HostView, JobView};
use latch_common::authz::Permission;
use latch_common::job::{JobKind, JobStatus};
use latch_common::labels::Selector;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Failure, Section, badge, when, when_opt};
use super::session::Viewer;
use crate::Control;
use crate::store::{JobFilter, Page};

/// Rows on the page (newest first).
const ROWS: u64 = 100;
/// How often the event stream looks for changes.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Live job streams one user may hold open at once (several tabs, and pages just left whose
/// streams the server has not yet found closed). Each stream looks at the store every second,
/// so without a bound one signed-in user could load the database at will.
pub const STREAMS_PER_USER: usize = 16;
/// Live job streams this server holds open at once, all users together.
pub const STREAMS_IN_ALL: usize = 256;
/// How often a quiet stream sends a comment: a browser that left the page is noticed (and its
/// stream's place freed) when a write to it fails, within two of these.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// The open streams per principal id.
static OPEN_STREAMS: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Mutex::default);

/// One open stream of a principal, freed when dropped (the stream ended, or the browser went
/// away and the server dropped it).
struct StreamSlot(String);

impl StreamSlot {
    /// A slot for `principal`, unless it or the server already holds the most streams allowed.
    fn take(principal: &str) -> Option<StreamSlot> {
        let mut open = OPEN_STREAMS.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.get(principal).copied().unwrap_or(0);
        if mine >= STREAMS_PER_USER || open.values().sum::<usize>() >= STREAMS_IN_ALL {
            return None;
        }
        *open.entry(principal.to_owned()).or_default() += 1;
        Some(StreamSlot(principal.to_owned()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = OPEN_STREAMS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.0) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.0);
            }
        }
    }
}

/// The filter: `host` (id or name), `state`, `kind`; empty means any.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobsQuery {
    #[serde(default)]
    host: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    /// The event stream only: when the page was rendered (Unix milliseconds). Rows created or
    /// finished since then are sent at the first look, so a change between the page and the
    /// stream's start is not lost.
    #[serde(default)]
    since: Option<i64>,
}

impl JobsQuery {
    /// The store filter, the host looked up as the viewer may see it.
    async fn filter(&self, control: &Control, viewer: &Viewer) -> Result<JobFilter, Failure> {
        let mut filter = JobFilter::default();
        if !self.host.is_empty() {
            crate::api::extract::check_path_id("host", &self.host)?;
            filter.host_id = Some(control.show_host(&viewer.by, &self.host).await?.id);
        }
        if !self.state.is_empty() {
            filter.status =
                Some(JobStatus::parse(&self.state).ok_or_else(|| {
                    Failure::invalid("state must be pending, confirmed or failed")
                })?);
        }
        if !self.kind.is_empty() {
            filter.kind = Some(JobKind::parse_listed(&self.kind).ok_or_else(|| {
                Failure::invalid(format!(
                    "kind must be one of {}",
                    JobKind::LISTED.map(JobKind::as_str).join(", ")
                ))
            })?);
        }
        Ok(filter)
    }

    fn query_string(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("host", &self.host)
            .append_pair("state", &self.state)
            .append_pair("kind", &self.kind)
            .finish()
    }
}

async fn jobs(
    control: &Control,
    viewer: &Viewer,
    filter: &JobFilter,
) -> Result<Vec<JobView>, Failure> {
    newest(control, viewer, filter, ROWS).await
}

async fn newest(
    control: &Control,
    viewer: &Viewer,
    filter: &JobFilter,
    count: u64,
) -> Result<Vec<JobView>, Failure> {
    Ok(control
        .list_jobs(
            &viewer.by,
            filter,
            &Selector::default(),
            Page { offset: 0, count },
        )
        .await?)
}

/// A live table of the newest `count` jobs of `host`, for the host's page (nothing when the
/// viewer may not see jobs).
pub async fn live_table(
    control: &Control,
    viewer: &Viewer,
    host: &str,
    count: u64,
) -> Result<Markup, Failure> {
    if !viewer.can(Permission::JobsView) {
        return Ok(html! {});
    }
    let query = JobsQuery {
        host: host.to_owned(),
        ..JobsQuery::default()
    };
    let filter = query.filter(control, viewer).await?;
    let list = newest(control, viewer, &filter, count).await?;
    Ok(table(&list, &query, Utc::now()))
}

/// The jobs table; the page's script follows `data-events` and swaps changed rows in.
fn table(list: &[JobView], query: &JobsQuery, now: DateTime<Utc>) -> Markup {
    html! {
        p.muted.live-status role="status" { "Rows update live." }
        table.list.jobs data-events=(format!("/jobs/events?{}&since={}", query.query_string(), now.timestamp_millis())) {
            caption.visually-hidden { "Jobs, newest first" }
            thead {
                tr {
                    th scope="col" { "Job" }
                    th scope="col" { "Host" }
                    th scope="col" { "Kind" }
                    th scope="col" { "Account" }
                    th scope="col" { "State" }
                    th scope="col" { "Queued" }
                    th scope="col" { "Finished" }
                }
            }
            tbody {
                @for job in list { (row(job, now)) }
                @if list.is_empty() {
                    tr.empty { td colspan="7" { "No jobs match." } }
                }
            }
        }
    }
}

/// `GET /jobs?host=&state=&kind=`.
pub async fn page(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Query(query): Query<JobsQuery>,
) -> Result<Response, Failure> {
    let filter = query.filter(&control, &viewer).await?;
    let list = jobs(&control, &viewer, &filter).await?;
    let hosts: Vec<HostView> = if viewer.can(Permission::HostsView) {
        control
            .list_hosts(
                &viewer.by,
                &Selector::default(),
                Page {
                    offset: 0,
                    count: 500,
                },
            )
            .await?
    } else {
        Vec::new()
    };
    let now = Utc::now();
    let body = html! {
        form.filters method="get" action="/jobs" aria-label="Filter jobs" {
            div {
                label for="f-host" { "Host" }
                @if hosts.is_empty() {
                    input #f-host name="host" type="text" value=(query.host) maxlength="64";
                } @else {
                    select #f-host name="host" {
                        option value="" { "Any host" }
                        @for host in &hosts {
                            option value=(host.facts.hostname) selected[query.host == host.facts.hostname || query.host == host.id] { (host.facts.hostname) }
                        }
                    }
                }
            }
            div {
                label for="f-state" { "State" }
                select #f-state name="state" {
                    option value="" { "Any state" }
                    @for state in ["pending", "confirmed", "failed"] {
                        option value=(state) selected[query.state == state] { (state) }
                    }
                }
            }
            div {
                label for="f-kind" { "Kind" }
                select #f-kind name="kind" {
                    option value="" { "Any kind" }
                    @for kind in JobKind::LISTED {
                        option value=(kind.as_str()) selected[query.kind == kind.as_str()] { (kind.as_str()) }
                    }
                }
            }
            div.actions { button type="submit" { "Filter" } a href="/jobs" { "Clear" } }
        }
        (table(&list, &query, now))
    };
    Ok(layout::page(&viewer, Section::Jobs, "Jobs", body))
}

/// One job's row: its failure (code, message, what to do) under it when it failed.
fn row(job: &JobView, now: DateTime<Utc>) -> Markup {
    let account = job
        .params
        .get("user")
        .and_then(|u| u.as_str())
        .unwrap_or("—");
    let group = job.params.get("group").and_then(|g| g.as_str());
    html! {
        tr id=(format!("job-{}", job.id)) data-status=(job.status.as_str()) {
            td { code title=(job.id) { (short(&job.id)) } }
            td { (job.host_name) }
            td { (job.kind.as_str()) }
            td { (account) @if let Some(group) = group { " → " (group) } }
            td {
                (badge(job.status.as_str()))
                @if let Some(error) = &job.error {
                    div.failure {
                        p { code { (error.code.as_str()) } ": " (error.message) }
                        p.todo { strong { "What to do: " } (error.code.what_to_do()) }
                    }
                }
                @if job.status == JobStatus::Confirmed && !job.notes.is_empty() {
                    ul.notes { @for note in &job.notes { li { (note) } } }
                }
            }
            td { (when(job.created_at, now)) }
            td { (when_opt(job.finished_at, now)) }
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `GET /jobs/events?host=&state=&kind=`: `job` events carrying `{"id", "status", "html"}`
/// for each row that appeared or changed; `ended` (`session` or `forbidden`) when the session
/// ended or the viewer may no longer see jobs.
pub async fn events(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Query(query): Query<JobsQuery>,
) -> Result<Response, Failure> {
    let slot = StreamSlot::take(&viewer.by.principal.id).ok_or_else(|| {
        Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "too many live job views are open (at most {STREAMS_PER_USER} per user); close some console tabs and reload"
            ),
        )
    })?;
    let filter = query.filter(&control, &viewer).await?;
    // What the page showed: rows older than the page (with a margin; sending a row twice is
    // harmless) count as seen, newer ones go out at the first look.
    let rendered = query
        .since
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|at| at - chrono::Duration::seconds(2));
    let seen: HashMap<String, (JobStatus, Option<DateTime<Utc>>)> =
        jobs(&control, &viewer, &filter)
            .await?
            .into_iter()
            .filter(|job| {
                rendered
                    .is_none_or(|at| job.created_at < at && job.finished_at.is_none_or(|f| f < at))
            })
            .map(|job| (job.id, (job.status, job.finished_at)))
            .collect();
    let stream = changes(control, viewer, filter, seen, slot);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

struct Watch {
    control: Arc<Control>,
    viewer: Viewer,
    filter: JobFilter,
    seen: HashMap<String, (JobStatus, Option<DateTime<Utc>>)>,
    ended: bool,
    /// Held for as long as the stream is open.
    _slot: StreamSlot,
}

fn changes(
    control: Arc<Control>,
    viewer: Viewer,
    filter: JobFilter,
    seen: HashMap<String, (JobStatus, Option<DateTime<Utc>>)>,
    slot: StreamSlot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let watch = Watch {
        control,
        viewer,
        filter,
        seen,
        ended: false,
        _slot: slot,
    };
    stream::unfold(watch, |mut watch| async move {
        if watch.ended {
            return None;
        }
        loop {
            tokio::time::sleep(LOOK_EVERY).await;
            // The session and the roles as they are now, not as they were when the page opened.
            if !watch.viewer.refresh(&watch.control).await {
                watch.ended = true;
                return Some((Ok(Event::default().event("ended").data("session")), watch));
            }
            let list = match jobs(&watch.control, &watch.viewer, &watch.filter).await {
                Ok(list) => list,
                Err(Failure(error)) if error.status == StatusCode::FORBIDDEN => {
                    watch.ended = true;
                    return Some((Ok(Event::default().event("ended").data("forbidden")), watch));
                }
                Err(_) => continue,
            };
            let now = Utc::now();
            let mut changed = Vec::new();
            // Oldest first, so new rows end up newest on top.
            for job in list.iter().rev() {
                let state = (job.status, job.finished_at);
                if watch.seen.get(&job.id) != Some(&state) {
                    watch.seen.insert(job.id.clone(), state);
                    changed.push(serde_json::json!({
                        "id": job.id,
                        "status": job.status.as_str(),
                        "html": row(job, now).into_string(),
                    }));
                }
            }
            if !changed.is_empty() {
                let data = serde_json::Value::Array(changed).to_string();
                return Some((Ok(Event::default().event("jobs").data(data)), watch));
            }
        }
    })
}
