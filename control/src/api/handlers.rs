//! Request handlers: parse, authenticate, call [`Control`], shape the response. No policy here.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::LINK;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use latch_common::api::{
    CreateEnrollTokenRequest, CreateJobRequest, EnrollRequest, GrantState, ListResponse,
    MAX_POLL_WAIT_SECS, ReportRequest, RevocationReport,
};
use latch_common::job::JobStatus;
use latch_common::labels::Selector;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, Host, check_path_id};
use super::limits::AuthAttempt;
use super::pagination::{PageParams, link_header};
use crate::Control;
use crate::audit::Checkpoint;
use crate::sso::{
    DevicePollRequest, DevicePollResponse, LoginFinishRequest, LoginFinishResponse,
    LoginStartRequest, LoginStartResponse,
};
use crate::store::{AuditFilter, GrantFilter, JobFilter, Page};
use axum::extract::ConnectInfo;
use latch_common::authz::Permission;
use std::net::SocketAddr;

type Ctl = State<Arc<Control>>;

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

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

pub async fn login_device(State(control): Ctl) -> Result<Response, ApiError> {
    let start = control.sso_device_start().await?;
    Ok((StatusCode::CREATED, Json(start)).into_response())
}

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

pub async fn logout(State(control): Ctl, Caller(who): Caller) -> Result<Response, ApiError> {
    control.logout(&who).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn whoami(State(control): Ctl, Caller(who): Caller) -> Result<Response, ApiError> {
    Ok(Json(control.whoami(&who).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    wait: Option<u64>,
    applied: Option<i64>,
}

pub async fn poll_jobs(
    State(control): Ctl,
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
    let job = control.next_job(&host, Duration::from_secs(wait)).await?;
    Ok(Json(ListResponse {
        list: job.into_iter().collect(),
    })
    .into_response())
}

#[derive(Deserialize)]
pub struct ReportParams {
    /// `?next=true`: answer with the host's next job (leased now, as a poll with `wait=0`
    /// would) instead of 204, saving the agent a round trip per job. Servers without it ignore
    /// the parameter and answer 204; the agent then polls as before.
    next: Option<bool>,
}

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

pub async fn report_revocation(
    State(control): Ctl,
    Host(host): Host,
    ApiJson(report): ApiJson<RevocationReport>,
) -> Result<Response, ApiError> {
    check_path_id("job id", &report.job_id)?;
    control.record_agent_revocation(&host, &report).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn agent_self(Host(host): Host) -> Json<serde_json::Value> {
    Json(serde_json::json!({"host_id": host.id}))
}

pub async fn rotate_credential(
    State(control): Ctl,
    Host(host): Host,
    ApiJson(request): ApiJson<latch_common::api::RotateCredentialRequest>,
) -> Result<Response, ApiError> {
    control.rotate_host_credential(&host, &request).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostListParams {
    selector: Option<String>,
    count: Option<u64>,
    offset: Option<u64>,
}

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

pub async fn show_host(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("host", &key)?;
    Ok(Json(control.show_host(&by, &key).await?).into_response())
}

pub async fn remove_host(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("host", &key)?;
    let (id, cancelled) = control.remove_host(&by, &key).await?;
    Ok(
        Json(serde_json::json!({"id": id, "removed": true, "cancelled_jobs": cancelled}))
            .into_response(),
    )
}

pub async fn create_job(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateJobRequest>,
) -> Result<Response, ApiError> {
    let job = control.create_job(&by, request).await?;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobListParams {
    host: Option<String>,
    status: Option<String>,
    selector: Option<String>,
    count: Option<u64>,
    offset: Option<u64>,
}

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

pub async fn show_job(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("job id", &id)?;
    Ok(Json(control.get_job(&by, &id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantListParams {
    host: Option<String>,
    user: Option<String>,
    state: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    selector: Option<String>,
    count: Option<u64>,
    offset: Option<u64>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    since: Option<chrono::DateTime<chrono::Utc>>,
    actor: Option<String>,
    host: Option<String>,
    count: Option<u64>,
    offset: Option<u64>,
}

pub async fn list_audit(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Response, ApiError> {
    by.require_everywhere(Permission::AuditView)?;
    let page = PageParams {
        count: params.count,
        offset: params.offset,
    }
    .page()?;
    let mut filter = AuditFilter {
        since: params.since,
        ..AuditFilter::default()
    };
    let mut filters = Vec::new();
    if let Some(since) = params.since {
        filters.push(("since", since.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()));
    }
    if let Some(actor) = &params.actor {
        if actor.is_empty()
            || actor.len() > 128
            || !actor
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.' | '@'))
        {
            return Err(ApiError::invalid(
                "actor must be 1 to 128 characters of letters, digits, ':', '_', '-', '.' or '@'",
            ));
        }
        filter.actor = Some(actor.clone());
        filters.push(("actor", actor.clone()));
    }
    if let Some(host) = &params.host {
        check_path_id("host", host)?;
        filter.host_id = Some(
            control
                .find_host(host)
                .await
                .map(|h| h.id)
                .unwrap_or_else(|_| host.clone()),
        );
        filters.push(("host", host.clone()));
    }
    let mut entries = control
        .list_audit(
            &filter,
            Page {
                count: page.count + 1,
                ..page
            },
        )
        .await?;
    let has_next = entries.len() as u64 > page.count;
    entries.truncate(usize::try_from(page.count).unwrap_or(usize::MAX));
    Ok(with_link(
        Json(ListResponse { list: entries }),
        link_header("/v1/audit", &filters, page, has_next),
    ))
}

pub async fn verify_audit(State(control): Ctl, Caller(by): Caller) -> Result<Response, ApiError> {
    by.require_everywhere(Permission::AuditView)?;
    Ok(Json(control.verify_audit().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    checkpoints: Vec<Checkpoint>,
}

pub async fn verify_audit_with(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    by.require_everywhere(Permission::AuditView)?;
    Ok(Json(control.verify_audit_with(&request.checkpoints).await?).into_response())
}

pub async fn audit_checkpoint(
    State(control): Ctl,
    Caller(by): Caller,
) -> Result<Response, ApiError> {
    by.require_everywhere(Permission::AuditView)?;
    Ok((StatusCode::CREATED, Json(control.audit_checkpoint().await?)).into_response())
}

pub async fn rotate_signing_key(
    State(control): Ctl,
    Caller(by): Caller,
) -> Result<Response, ApiError> {
    Ok(Json(control.start_key_rotation(&by).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteParams {
    force: Option<bool>,
}

pub async fn promote_signing_key(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(params): ApiQuery<PromoteParams>,
) -> Result<Response, ApiError> {
    let behind = control
        .promote_signing_key(&by, params.force.unwrap_or(false))
        .await?;
    Ok(Json(serde_json::json!({"promoted": true, "signing_key": control.signing_key(), "hosts_left_behind": behind})).into_response())
}

fn with_link(body: impl IntoResponse, link: Option<axum::http::HeaderValue>) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(link) = link {
        headers.insert(LINK, link);
    }
    (headers, body).into_response()
}

pub async fn service_token(
    State(control): Ctl,
    address: Option<axum::Extension<super::limits::ClientAddress>>,
    ApiJson(request): ApiJson<latch_common::api::ServiceTokenRequest>,
) -> Result<Response, ApiError> {
    let address = address.map(|axum::Extension(a)| a.0.to_string());
    let issued = control.exchange_api_key(&request, address).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}
