//! Request handlers: parse, authenticate, call [`Control`], shape the response. No policy here.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::LINK;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use latch_common::api::{
    AgentJob, AgentSelf, ApiErrorBody, CreateEnrollTokenRequest, CreateJobRequest, EnrollRequest,
    EnrollResponse, EnrollTokenView, GrantState, GrantView, HealthResponse, HostRemoved, HostView,
    JobView, ListResponse, MAX_POLL_WAIT_SECS, ReportRequest, RevocationReport,
    RotateCredentialRequest, ServiceTokenRequest, SigningKeyPromoted, SigningKeyRotation,
    TokenResponse,
};
use latch_common::job::{JobKind, JobStatus};
use latch_common::labels::Selector;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, Host, check_path_id};
use super::limits::AuthAttempt;
use super::pagination::{PageParams, link_header};
use crate::Control;
use crate::sso::{
    DevicePollRequest, DevicePollResponse, LoginFinishRequest, LoginFinishResponse,
    LoginStartRequest, LoginStartResponse, SsoDeviceStart, WhoAmI,
};
use crate::store::{GrantFilter, JobFilter, Page};
use axum::extract::ConnectInfo;
use std::net::SocketAddr;

pub(super) type Ctl = State<Arc<Control>>;

/// Liveness: answers while the control plane serves.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "service",
    security(()),
    responses((status = 200, description = "The control plane serves", body = HealthResponse)),
)]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".to_owned(),
    })
}

/// Enrolls a host with an enrollment token: facts in, host id and credential out.
#[utoipa::path(
    post,
    path = "/v1/enroll",
    tag = "agent",
    security(()),
    request_body = EnrollRequest,
    responses((status = 201, description = "Enrolled", body = EnrollResponse)),
)]
pub async fn enroll(
    State(control): Ctl,
    attempt: AuthAttempt,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    // The token is in the body: the limiter charges a refusal to it, not to the address.
    attempt.present(&request.token)?;
    let response = control.enroll(&request).await?;
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

/// Begins a single sign-on (authorization-code flow).
#[utoipa::path(
    post,
    path = "/v1/login/start",
    tag = "sessions",
    security(()),
    request_body = LoginStartRequest,
    responses(
        (status = 201, description = "Where to send the user", body = LoginStartResponse),
        (status = 501, description = "Single sign-on is not configured (`sso_not_configured`)", body = ApiErrorBody),
        (status = 502, description = "The identity provider failed (`identity_provider_error`)", body = ApiErrorBody),
    ),
)]
pub async fn login_start(
    State(control): Ctl,
    ApiJson(request): ApiJson<LoginStartRequest>,
) -> Result<Response, ApiError> {
    let start = control.sso_start(&request.redirect_uri).await?;
    let response = LoginStartResponse {
        authorization_url: start.authorization_url,
        state: start.state,
        expires_at: start.expires_at,
    };
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

/// Finishes a single sign-on: a session token.
#[utoipa::path(
    post,
    path = "/v1/login/finish",
    tag = "sessions",
    security(()),
    request_body = LoginFinishRequest,
    responses(
        (status = 201, description = "Signed in", body = LoginFinishResponse),
        (status = 501, description = "Single sign-on is not configured (`sso_not_configured`)", body = ApiErrorBody),
        (status = 502, description = "The identity provider failed (`identity_provider_error`)", body = ApiErrorBody),
    ),
)]
pub async fn login_finish(
    State(control): Ctl,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    attempt: AuthAttempt,
    ApiJson(request): ApiJson<LoginFinishRequest>,
) -> Result<Response, ApiError> {
    // A refused state is charged to itself (and its address), like a bad enrollment token.
    attempt.present(&request.state)?;
    let session = control
        .sso_finish(&request.state, &request.code, Some(peer.ip().to_string()))
        .await?;
    attempt.accepted();
    Ok((
        StatusCode::CREATED,
        Json(LoginFinishResponse::from(session)),
    )
        .into_response())
}

/// Begins a device-flow sign-in: a user code and where to enter it.
#[utoipa::path(
    post,
    path = "/v1/login/device",
    tag = "sessions",
    security(()),
    responses(
        (status = 201, description = "The device flow started", body = SsoDeviceStart),
        (status = 501, description = "Single sign-on is not configured (`sso_not_configured`)", body = ApiErrorBody),
        (status = 502, description = "The identity provider failed (`identity_provider_error`)", body = ApiErrorBody),
    ),
)]
pub async fn login_device(State(control): Ctl) -> Result<Response, ApiError> {
    let start = control.sso_device_start().await?;
    Ok((StatusCode::CREATED, Json(start)).into_response())
}

/// Polls a device-flow sign-in: still pending, or the session token.
#[utoipa::path(
    post,
    path = "/v1/login/device/poll",
    tag = "sessions",
    security(()),
    request_body = DevicePollRequest,
    responses(
        (status = 200, description = "Pending, or done with the session", body = DevicePollResponse),
        (status = 501, description = "Single sign-on is not configured (`sso_not_configured`)", body = ApiErrorBody),
        (status = 502, description = "The identity provider failed (`identity_provider_error`)", body = ApiErrorBody),
    ),
)]
pub async fn login_device_poll(
    State(control): Ctl,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    attempt: AuthAttempt,
    ApiJson(request): ApiJson<DevicePollRequest>,
) -> Result<Response, ApiError> {
    attempt.present(&request.id)?;
    let poll = control
        .sso_device_poll(&request.id, Some(peer.ip().to_string()))
        .await?;
    attempt.accepted();
    Ok(Json(DevicePollResponse::from(poll)).into_response())
}

/// Ends the caller's session (or service token).
#[utoipa::path(
    post,
    path = "/v1/logout",
    tag = "sessions",
    responses((status = 204, description = "The session ended")),
)]
pub async fn logout(State(control): Ctl, Caller(who): Caller) -> Result<Response, ApiError> {
    control.logout(&who).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Who the token belongs to: name, kind, roles, groups, session.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "sessions",
    responses((status = 200, description = "The caller", body = WhoAmI)),
)]
pub async fn whoami(State(control): Ctl, Caller(who): Caller) -> Result<Response, ApiError> {
    Ok(Json(control.whoami(&who).await?).into_response())
}

/// The query of `GET /v1/agent/jobs`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PollParams {
    /// Seconds to wait for a job (at most 30, the default).
    wait: Option<u64>,
    /// The highest job sequence number the agent has applied (catches the queue up after a
    /// restore).
    applied: Option<i64>,
}

/// Long-polls for the host's next job (a host credential).
#[utoipa::path(
    get,
    path = "/v1/agent/jobs",
    tag = "agent",
    params(PollParams),
    responses(
        (status = 200, description = "The next job, leased (an empty list when none came within the wait)", body = ListResponse<AgentJob>),
    ),
)]
pub async fn poll_jobs(
    State(control): Ctl,
    headers: axum::http::HeaderMap,
    Host(host): Host,
    ApiQuery(params): ApiQuery<PollParams>,
) -> Result<Response, ApiError> {
    let wait = params.wait.unwrap_or(MAX_POLL_WAIT_SECS);
    if wait > MAX_POLL_WAIT_SECS {
        return Err(ApiError::invalid(format!(
            "wait must be at most {MAX_POLL_WAIT_SECS} seconds"
        )));
    }
    if let Some(applied) = params.applied {
        control.catch_up_sequence(&host, applied).await?;
    }
    control.note_agent(&host, agent_info(&headers)).await?;
    let job = control.next_job(&host, Duration::from_secs(wait)).await?;
    Ok(Json(ListResponse {
        list: job.into_iter().collect(),
    })
    .into_response())
}

/// The agent a request came from: its User-Agent and protocol header (checked by
/// [`super::protocol::handshake`] before any handler runs).
fn agent_info(headers: &axum::http::HeaderMap) -> latch_common::protocol::AgentInfo {
    let protocol = latch_common::protocol::parse_protocol(
        headers
            .get(latch_common::protocol::PROTOCOL_HEADER)
            .map(axum::http::HeaderValue::as_bytes),
    )
    .unwrap_or(1);
    latch_common::protocol::AgentInfo::from_request(
        headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|value| value.to_str().ok()),
        protocol,
    )
}

/// The query of `POST /v1/agent/jobs/{id}/report`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    /// `?next=true`: answer with the host's next job (leased now, as a poll with `wait=0`
    /// would) instead of 204, saving the agent a round trip per job. Servers without it ignore
    /// the parameter and answer 204; the agent then polls as before.
    next: Option<bool>,
}

/// Reports a job's outcome with the delivery's lease (a host credential).
#[utoipa::path(
    post,
    path = "/v1/agent/jobs/{id}/report",
    tag = "agent",
    params(
        ("id" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ReportParams,
    ),
    request_body = ReportRequest,
    responses(
        (status = 200, description = "Recorded; with `next=true`: the host's next job, leased", body = ListResponse<AgentJob>),
        (status = 204, description = "Recorded"),
    ),
)]
pub async fn report_job(
    State(control): Ctl,
    Host(host): Host,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ReportParams>,
    ApiJson(report): ApiJson<ReportRequest>,
) -> Result<Response, ApiError> {
    check_path_id("job id", &id)?;
    control.report(&host, &id, &report).await?;
    if params.next == Some(true) {
        // The outcome is recorded: a failure to lease the next job must not turn into an error
        // (the agent would send the outcome again); it polls instead.
        match control.next_job(&host, Duration::ZERO).await {
            Ok(job) => {
                return Ok(Json(ListResponse {
                    list: job.into_iter().collect(),
                })
                .into_response());
            }
            Err(error) => {
                tracing::warn!(host_id = %host.id, %error, "cannot lease the next job with a report; the agent polls for it");
            }
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Reports a grant the agent revoked at its expiry (a host credential).
#[utoipa::path(
    post,
    path = "/v1/agent/revocations",
    tag = "agent",
    request_body = RevocationReport,
    responses((status = 204, description = "Recorded")),
)]
pub async fn report_revocation(
    State(control): Ctl,
    Host(host): Host,
    ApiJson(report): ApiJson<RevocationReport>,
) -> Result<Response, ApiError> {
    check_path_id("job id", &report.job_id)?;
    control.record_agent_revocation(&host, &report).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The host the presented host credential belongs to.
#[utoipa::path(
    get,
    path = "/v1/agent/self",
    tag = "agent",
    responses((status = 200, description = "The host", body = AgentSelf)),
)]
pub async fn agent_self(Host(host): Host) -> Json<AgentSelf> {
    Json(AgentSelf { host_id: host.id })
}

/// Replaces the host credential (a host credential).
#[utoipa::path(
    post,
    path = "/v1/agent/credential",
    tag = "agent",
    request_body = RotateCredentialRequest,
    responses((status = 204, description = "The new credential replaces the old one")),
)]
pub async fn rotate_credential(
    State(control): Ctl,
    Host(host): Host,
    ApiJson(request): ApiJson<RotateCredentialRequest>,
) -> Result<Response, ApiError> {
    control.rotate_host_credential(&host, &request).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Creates an enrollment token.
#[utoipa::path(
    post,
    path = "/v1/enroll-tokens",
    tag = "hosts",
    request_body = CreateEnrollTokenRequest,
    responses((status = 201, description = "The token (shown once)", body = EnrollTokenView)),
)]
pub async fn create_enroll_token(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateEnrollTokenRequest>,
) -> Result<Response, ApiError> {
    let token = control.create_enroll_token(&by, &request).await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

/// The `selector` query parameter of a list, parsed (an absent one matches every host); a
/// present one is added to `filters` for the `Link` header.
fn selector_param(
    text: Option<&str>,
    filters: &mut Vec<(&'static str, String)>,
) -> Result<Selector, ApiError> {
    let Some(text) = text else {
        return Ok(Selector::default());
    };
    let selector = Selector::parse(text).map_err(crate::ControlError::from)?;
    filters.push((
        "selector",
        url::form_urlencoded::byte_serialize(text.as_bytes()).collect(),
    ));
    Ok(selector)
}

/// The query of `GET /v1/hosts`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HostListParams {
    /// A label selector (`env=prod,team in (db,web)`): only the hosts whose labels match.
    selector: Option<String>,
    /// Page size (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    count: Option<u64>,
    /// Items to skip.
    offset: Option<u64>,
}

/// Lists hosts; a label selector filters.
#[utoipa::path(
    get,
    path = "/v1/hosts",
    tag = "hosts",
    params(HostListParams),
    responses((status = 200, description = "A page of hosts", body = ListResponse<HostView>)),
)]
pub async fn list_hosts(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(params): ApiQuery<HostListParams>,
) -> Result<Response, ApiError> {
    let page = PageParams {
        count: params.count,
        offset: params.offset,
    }
    .page()?;
    let mut filters = Vec::new();
    let selector = selector_param(params.selector.as_deref(), &mut filters)?;
    let mut hosts = control
        .list_hosts(
            &by,
            &selector,
            Page {
                count: page.count + 1,
                ..page
            },
        )
        .await?;
    let has_next = hosts.len() as u64 > page.count;
    hosts.truncate(usize::try_from(page.count).unwrap_or(usize::MAX));
    Ok(with_link(
        Json(ListResponse { list: hosts }),
        link_header("/v1/hosts", &filters, page, has_next),
    ))
}

/// Shows a host.
#[utoipa::path(
    get,
    path = "/v1/hosts/{host}",
    tag = "hosts",
    params(
        ("host" = String, Path, description = "The host's id or hostname", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 200, description = "The host", body = HostView)),
)]
pub async fn show_host(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("host", &key)?;
    Ok(Json(control.show_host(&by, &key).await?).into_response())
}

/// Removes a host: its credential is revoked, its pending jobs cancelled.
#[utoipa::path(
    delete,
    path = "/v1/hosts/{host}",
    tag = "hosts",
    params(
        ("host" = String, Path, description = "The host's id or hostname", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 200, description = "Removed", body = HostRemoved)),
)]
pub async fn remove_host(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("host", &key)?;
    let (id, cancelled_jobs) = control.remove_host(&by, &key).await?;
    Ok(Json(HostRemoved {
        id,
        removed: true,
        cancelled_jobs,
    })
    .into_response())
}

/// Queues a job for a host.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body = CreateJobRequest,
    responses((status = 201, description = "Queued", body = JobView)),
)]
pub async fn create_job(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateJobRequest>,
) -> Result<Response, ApiError> {
    let job = control.create_job(&by, request).await?;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

/// The query of `GET /v1/jobs`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobListParams {
    /// Only this host's jobs (id or hostname).
    host: Option<String>,
    /// Only jobs in this status: `pending`, `confirmed` or `failed`.
    status: Option<String>,
    /// Only jobs of hosts whose labels match this selector.
    selector: Option<String>,
    /// Only jobs of this kind (`create-account`, `delete-account`, `add-group`, `remove-group`,
    /// `set-password`, `adopt-account`, `rotate-signing-key`).
    kind: Option<String>,
    /// Page size (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    count: Option<u64>,
    /// Items to skip.
    offset: Option<u64>,
}

/// Lists jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(JobListParams),
    responses((status = 200, description = "A page of jobs", body = ListResponse<JobView>)),
)]
pub async fn list_jobs(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(params): ApiQuery<JobListParams>,
) -> Result<Response, ApiError> {
    let page = PageParams {
        count: params.count,
        offset: params.offset,
    }
    .page()?;
    let mut filter = JobFilter::default();
    let mut filters = Vec::new();
    if let Some(host) = &params.host {
        check_path_id("host", host)?;
        // As the caller may see the host: a caller without hosts.view is refused before the
        // look-up, and a host outside a delegation is as unknown as one that does not exist,
        // so the filter does not tell who may not see hosts which of them exist.
        filter.host_id = Some(control.show_host(&by, host).await?.id);
        filters.push(("host", host.clone()));
    }
    if let Some(status) = &params.status {
        filter.status = Some(
            JobStatus::parse(status)
                .ok_or_else(|| ApiError::invalid("status must be pending, confirmed or failed"))?,
        );
        filters.push(("status", status.clone()));
    }
    if let Some(kind) = &params.kind {
        filter.kind = Some(JobKind::parse_listed(kind).ok_or_else(|| {
            ApiError::invalid(format!(
                "kind must be one of {}",
                JobKind::LISTED.map(JobKind::as_str).join(", ")
            ))
        })?);
        filters.push(("kind", kind.clone()));
    }
    let selector = selector_param(params.selector.as_deref(), &mut filters)?;
    let mut jobs = control
        .list_jobs(
            &by,
            &filter,
            &selector,
            Page {
                count: page.count + 1,
                ..page
            },
        )
        .await?;
    let has_next = jobs.len() as u64 > page.count;
    jobs.truncate(usize::try_from(page.count).unwrap_or(usize::MAX));
    Ok(with_link(
        Json(ListResponse { list: jobs }),
        link_header("/v1/jobs", &filters, page, has_next),
    ))
}

/// Shows a job with its history, host name and grant state.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, description = "The job", body = JobView)),
)]
pub async fn show_job(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("job id", &id)?;
    Ok(Json(control.get_job(&by, &id).await?).into_response())
}

/// The query of `GET /v1/grants`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GrantListParams {
    /// Only grants on this host (id or hostname).
    host: Option<String>,
    /// Only grants to this account.
    user: Option<String>,
    /// Only grants in this state.
    state: Option<String>,
    /// Only grants made since (RFC 3339).
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only grants on hosts whose labels match this selector.
    selector: Option<String>,
    /// Page size (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    count: Option<u64>,
    /// Items to skip.
    offset: Option<u64>,
}

/// Lists grants, newest first: who has which access, how each ended.
#[utoipa::path(
    get,
    path = "/v1/grants",
    tag = "jobs",
    params(GrantListParams),
    responses((status = 200, description = "A page of grants", body = ListResponse<GrantView>)),
)]
pub async fn list_grants(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(params): ApiQuery<GrantListParams>,
) -> Result<Response, ApiError> {
    let page = PageParams {
        count: params.count,
        offset: params.offset,
    }
    .page()?;
    let mut filter = GrantFilter {
        since: params.since,
        ..GrantFilter::default()
    };
    let mut filters = Vec::new();
    if let Some(host) = &params.host {
        check_path_id("host", host)?;
        filter.host = Some(host.clone());
        filters.push(("host", host.clone()));
    }
    if let Some(user) = &params.user {
        latch_common::names::validate_user_name(user)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        filter.user = Some(user.clone());
        filters.push(("user", user.clone()));
    }
    if let Some(state) = &params.state {
        filter.state = Some(GrantState::parse(state).ok_or_else(|| {
            let all: Vec<&str> = GrantState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(format!("state must be one of {}", all.join(", ")))
        })?);
        filters.push(("state", state.clone()));
    }
    if let Some(since) = params.since {
        filters.push(("since", since.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()));
    }
    let selector = selector_param(params.selector.as_deref(), &mut filters)?;
    let mut grants = control
        .list_grants(
            &by,
            &filter,
            &selector,
            Page {
                count: page.count + 1,
                ..page
            },
        )
        .await?;
    let has_next = grants.len() as u64 > page.count;
    grants.truncate(usize::try_from(page.count).unwrap_or(usize::MAX));
    Ok(with_link(
        Json(ListResponse { list: grants }),
        link_header("/v1/grants", &filters, page, has_next),
    ))
}

/// Starts (or continues) a rotation of the job-signing key.
#[utoipa::path(
    post,
    path = "/v1/signing-key/rotate",
    tag = "service",
    responses((status = 200, description = "The rotation under way", body = SigningKeyRotation)),
)]
pub async fn rotate_signing_key(
    State(control): Ctl,
    Caller(by): Caller,
) -> Result<Response, ApiError> {
    Ok(Json(control.start_key_rotation(&by).await?).into_response())
}

/// The query of `POST /v1/signing-key/promote`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PromoteParams {
    /// Promote although some hosts have not confirmed the next key (they must be enrolled
    /// again).
    force: Option<bool>,
}

/// Switches to the next job-signing key.
#[utoipa::path(
    post,
    path = "/v1/signing-key/promote",
    tag = "service",
    params(PromoteParams),
    responses((status = 200, description = "Promoted", body = SigningKeyPromoted)),
)]
pub async fn promote_signing_key(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(params): ApiQuery<PromoteParams>,
) -> Result<Response, ApiError> {
    let behind = control
        .promote_signing_key(&by, params.force.unwrap_or(false))
        .await?;
    Ok(Json(SigningKeyPromoted {
        promoted: true,
        signing_key: control.signing_key(),
        hosts_left_behind: behind,
    })
    .into_response())
}

pub(super) fn with_link(
    body: impl IntoResponse,
    link: Option<axum::http::HeaderValue>,
) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(link) = link {
        headers.insert(LINK, link);
    }
    (headers, body).into_response()
}

/// Exchanges a service user's API key for a short-lived bearer token.
#[utoipa::path(
    post,
    path = "/v1/service_token",
    tag = "sessions",
    security(()),
    request_body = ServiceTokenRequest,
    responses((status = 201, description = "The bearer token", body = TokenResponse)),
)]
pub async fn service_token(
    State(control): Ctl,
    address: Option<axum::Extension<super::limits::ClientAddress>>,
    ApiJson(request): ApiJson<ServiceTokenRequest>,
) -> Result<Response, ApiError> {
    let address = address.map(|axum::Extension(a)| a.0.to_string());
    let issued = control.exchange_api_key(&request, address).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}
