//! Monitoring endpoints: `GET /metrics` (Prometheus text format), `GET /healthz` (the process
//! serves) and `GET /readyz` (it can do its work), and the middleware that times every request.
//!
//! `/metrics` is on the API's listener and needs a bearer token with `hosts.view` everywhere:
//! its numbers are facts about the whole fleet (how many hosts, which are offline, what is
//! stuck), and one listener with the API's authentication, TLS and rate limits is simpler to run
//! safely than a second, unauthenticated one. Prometheus sends the token with `authorization`
//! (`credentials_file`) in its scrape config; a service user with the `security_admin` role is
//! enough. `/healthz` and `/readyz` tell nothing but up or down and take no token, so load
//! balancers and orchestrators can probe them.
//!
//! The fleet's numbers are counted in the database at each scrape ([`crate::metrics`]); the
//! request histograms live in this process (each replica has its own).

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use latch_common::api::HealthResponse;
use latch_common::job::{JobKind, JobStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::error::ApiError;
use super::extract::Caller;
use crate::Control;
use crate::store::metrics::FleetCounts;

type Ctl = State<std::sync::Arc<Control>>;

/// The content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state of a vault rotation.
const ROTATION_STATES: [&str; 3] = ["pending", "confirmed", "failed"];

/// Every state of an access request.
const ACCESS_REQUEST_STATES: [&str; 10] = [
    "pending_approval",
    "approved",
    "denied",
    "cancelled",
    "expired",
    "provisioning",
    "active",
    "revoking",
    "revoked",
    "failed",
];

/// The states of a grant past its end that is not revoked yet.
const UNREVOKED_GRANT_STATES: [&str; 2] = ["revoking", "revocation_stuck"];

/// The labels of one request's timing.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The HTTP method (`OTHER` for one outside the standard set).
    method: String,
    /// The route's template (`/v1/hosts/{host}`), or `unmatched`: never the raw path, so a
    /// caller cannot make a series per path it invents.
    route: String,
    /// `2xx`, `4xx`, …
    status: String,
}

/// The request-latency histograms of this process, shared by the middleware and the scrape.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            // 1 ms to about 16 s: a long poll (`/v1/agent/jobs?wait=`) lands in the last buckets.
            requests: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
        }
    }
}

/// Times each request under its route's template and its answer's status class.
pub async fn time_requests(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method();
    let method = if [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ]
    .contains(method)
    {
        method.as_str().to_owned()
    } else {
        "OTHER".to_owned()
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = RequestLabels {
        method,
        route,
        status: format!("{}xx", response.status().as_u16() / 100),
    };
    metrics
        .requests
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The process serves (no database access).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    security(()),
    responses((status = 200, description = "The process serves", body = HealthResponse)),
)]
pub async fn healthz() -> Json<HealthResponse> {
    super::handlers::health().await
}

/// The control plane can do its work: the database answers and its keys are loaded.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    security(()),
    responses(
        (status = 200, description = "Ready", body = HealthResponse),
        (status = 503, description = "`service_offline`: the database does not answer (the log has the cause)", body = latch_common::api::ApiErrorBody),
    ),
)]
pub async fn readyz(State(control): Ctl) -> Result<Json<HealthResponse>, ApiError> {
    match control.readiness().await {
        Ok(()) => Ok(Json(HealthResponse {
            status: "ok".to_owned(),
        })),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_offline",
                "the control plane cannot reach its database; its log has the cause",
            ))
        }
    }
}

/// The fleet's numbers and this process's request latencies, in the Prometheus text format.
/// Needs `hosts.view` everywhere. The README's "Monitoring" section lists the metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses((status = 200, description = "The metrics, Prometheus text format 0.0.4", body = String, content_type = "text/plain")),
)]
pub async fn metrics(
    State(control): Ctl,
    Caller(by): Caller,
    axum::Extension(http): axum::Extension<HttpMetrics>,
) -> Result<Response, ApiError> {
    let counts = control.fleet_counts(&by).await?;
    let text = encode(&counts, &http).map_err(|error| {
        tracing::error!(%error, "encoding the metrics failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unknown_error",
            "the control plane failed to encode its metrics; its log has the cause",
        )
    })?;
    Ok(([(CONTENT_TYPE, TEXT_FORMAT)], text).into_response())
}

type Labels = Vec<(&'static str, String)>;

/// A family of count gauges filled from `(labels, value)` pairs.
fn count_family(values: impl IntoIterator<Item = (Labels, i64)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    family
}

/// A family of age gauges (seconds) filled from `(labels, value)` pairs.
fn age_family(
    values: impl IntoIterator<Item = (Labels, f64)>,
) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    family
}

fn n(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// `states`, each with its count in `counted` (0 when absent), under the label `state`.
fn by_state(states: &[&str], counted: &[(String, u64)]) -> Vec<(Labels, i64)> {
    let mut out: Vec<(Labels, i64)> = states
        .iter()
        .map(|state| (vec![("state", (*state).to_owned())], 0))
        .collect();
    for (state, count) in counted {
        match out.iter_mut().find(|(labels, _)| labels[0].1 == *state) {
            Some((_, value)) => *value = n(*count),
            None => out.push((vec![("state", state.clone())], n(*count))),
        }
    }
    out
}

/// The scrape's text: the fleet's numbers (every known kind and state, zero included, so an
/// alert rule never meets an absent series) and the request histograms.
fn encode(counts: &FleetCounts, http: &HttpMetrics) -> Result<String, std::fmt::Error> {
    let now = chrono::Utc::now();
    let kinds: Vec<&str> = JobKind::ALL.iter().map(|kind| kind.as_str()).collect();
    let mut jobs: Vec<(Labels, i64)> = Vec::new();
    for kind in &kinds {
        for status in [JobStatus::Pending, JobStatus::Confirmed, JobStatus::Failed] {
            jobs.push((
                vec![
                    ("kind", (*kind).to_owned()),
                    ("state", status.as_str().to_owned()),
                ],
                0,
            ));
        }
    }
    for (kind, status, count) in &counts.jobs {
        let labels = vec![("kind", kind.clone()), ("state", status.clone())];
        match jobs.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, value)) => *value = n(*count),
            None => jobs.push((labels, n(*count))),
        }
    }
    let mut oldest: Vec<(Labels, f64)> = kinds
        .iter()
        .map(|kind| (vec![("kind", (*kind).to_owned())], 0.0))
        .collect();
    for (kind, queued) in &counts.oldest_pending {
        // Milliseconds to seconds: exact enough for an age.
        #[allow(clippy::cast_precision_loss)]
        let age = ((now - *queued).num_milliseconds().max(0) as f64) / 1000.0;
        let labels = vec![("kind", kind.clone())];
        match oldest.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, value)) => *value = age,
            None => oldest.push((labels, age)),
        }
    }
    let mut registry = Registry::with_prefix("latch");
    registry.register(
        "jobs",
        "Jobs by kind and state (pending, confirmed, failed)",
        count_family(jobs),
    );
    registry.register(
        "jobs_oldest_pending_age_seconds",
        "Seconds since the oldest pending job of each kind was queued (0: none pending)",
        age_family(oldest),
    );
    registry.register(
        "jobs_lease_expired",
        "Pending jobs delivered to their host whose lease ran out without a report (they are delivered again)",
        count_family([(Labels::new(), n(counts.lease_expired))]),
    );
    registry.register(
        "jobs_redelivered",
        "Pending jobs delivered more than once",
        count_family([(Labels::new(), n(counts.redelivered))]),
    );
    registry.register(
        "hosts",
        "Enrolled hosts (not removed) by state: online (polled within the online window) or offline",
        count_family([
            (vec![("state", "online".to_owned())], n(counts.hosts_online)),
            (vec![("state", "offline".to_owned())], n(counts.hosts_offline)),
        ]),
    );
    registry.register(
        "grants_unrevoked",
        "Grants past their end not revoked yet: revoking (nothing failed yet) or revocation_stuck (a revocation job failed; retried with backoff)",
        count_family(by_state(&UNREVOKED_GRANT_STATES, &counts.grants_unrevoked)),
    );
    registry.register(
        "vault_rotations",
        "Vault password rotations by state",
        count_family(by_state(&ROTATION_STATES, &counts.rotations)),
    );
    registry.register(
        "access_requests",
        "Access requests by state",
        count_family(by_state(&ACCESS_REQUEST_STATES, &counts.access_requests)),
    );
    registry.register(
        "hosts_agent",
        "Enrolled hosts (not removed) by the agent version and protocol of their last poll (version \"none\": not polled since versions were recorded)",
        count_family(counts.agents.iter().map(|(version, protocol, count)| {
            (
                vec![
                    ("version", version.clone()),
                    ("protocol", protocol.to_string()),
                ],
                n(*count),
            )
        })),
    );
    registry.register(
        "http_request_duration_seconds",
        "Time to answer an API request, by method, route template and status class (this process only)",
        http.requests.clone(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &registry)?;
    Ok(text)
}
