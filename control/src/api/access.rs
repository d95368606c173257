//! Handlers of the just-in-time access endpoints (`/v1/policies`, `/v1/access/requests`):
//! parse, authenticate, call [`Control`]; who may do what is checked in [`crate::access`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latch_common::access::{AccessDecision, AccessRequestCreate, PolicyRequest};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, check_path_id};
use super::pagination::{PageParams, link_header, paged};
use crate::Control;
use crate::access::requests::{Action, NewRequest};
use crate::people::Authority;

type Ctl = State<Arc<Control>>;

/// Lists access policies.
#[utoipa::path(
    get,
    path = "/v1/policies",
    tag = "access",
    params(PageParams),
    responses(
        (status = 200, description = "A page of policies", body = latch_common::api::ListResponse<latch_common::access::PolicyView>),
    ),
)]
pub async fn list_policies(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged("/v1/policies", control.list_policies(&by).await?, &page)
}

/// Creates an access policy.
#[utoipa::path(
    post,
    path = "/v1/policies",
    tag = "access",
    request_body = PolicyRequest,
    responses((status = 201, description = "The policy", body = latch_common::access::PolicyView)),
)]
pub async fn create_policy(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<PolicyRequest>,
) -> Result<Response, ApiError> {
    let policy = control.create_policy(&by, &request).await?;
    Ok((StatusCode::CREATED, Json(policy)).into_response())
}

/// Shows an access policy.
#[utoipa::path(
    get,
    path = "/v1/policies/{key}",
    tag = "access",
    params(
        ("key" = String, Path, description = "The policy's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 200, description = "The policy", body = latch_common::access::PolicyView)),
)]
pub async fn show_policy(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("policy", &key.replace('@', "."))?;
    Ok(Json(control.show_policy(&by, &key).await?).into_response())
}

/// Replaces an access policy.
#[utoipa::path(
    put,
    path = "/v1/policies/{key}",
    tag = "access",
    params(
        ("key" = String, Path, description = "The policy's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    request_body = PolicyRequest,
    responses((status = 200, description = "The policy", body = latch_common::access::PolicyView)),
)]
pub async fn replace_policy(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<PolicyRequest>,
) -> Result<Response, ApiError> {
    check_path_id("policy", &key.replace('@', "."))?;
    Ok(Json(control.replace_policy(&by, &key, &request).await?).into_response())
}

/// Deletes an access policy.
#[utoipa::path(
    delete,
    path = "/v1/policies/{key}",
    tag = "access",
    params(
        ("key" = String, Path, description = "The policy's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "Deleted")),
)]
pub async fn delete_policy(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("policy", &key.replace('@', "."))?;
    control.delete_policy(&by, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The query of `GET /v1/access/requests`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RequestListParams {
    /// Only the caller's own requests.
    pub mine: Option<bool>,
    /// Only requests in this state.
    pub state: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 1000)]
    pub count: Option<u64>,
    /// Items to skip.
    pub offset: Option<u64>,
}

/// Every state a request can be in.
const REQUEST_STATES: [&str; 10] = [
    "pending_approval",
    "approved",
    "provisioning",
    "active",
    "revoking",
    "expired",
    "revoked",
    "denied",
    "cancelled",
    "failed",
];

#[utoipa::path(
    get,
    path = "/v1/access/requests",
    tag = "access",
    params(RequestListParams),
    responses(
        (status = 200, description = "A page of requests, newest first", body = latch_common::api::ListResponse<latch_common::access::AccessRequestView>),
    ),
)]
pub async fn list_requests(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(params): ApiQuery<RequestListParams>,
) -> Result<Response, ApiError> {
    let page = PageParams {
        count: params.count,
        offset: params.offset,
    }
    .page()?;
    let mut filters = Vec::new();
    if let Some(state) = &params.state {
        if !REQUEST_STATES.contains(&state.as_str()) {
            return Err(ApiError::invalid(format!(
                "state must be one of {}",
                REQUEST_STATES.join(", ")
            )));
        }
        filters.push(("state", state.clone()));
    }
    let mine = params.mine.unwrap_or(false);
    if mine {
        filters.push(("mine", "true".to_owned()));
    }
    let limit = u32::try_from(page.count + 1).unwrap_or(u32::MAX);
    let offset =
        u32::try_from(page.offset).map_err(|_| ApiError::invalid("offset is too large"))?;
    let mut list = control
        .list_access(&by, mine, params.state.clone(), limit, offset)
        .await?;
    let has_next = list.len() as u64 > page.count;
    list.truncate(usize::try_from(page.count).unwrap_or(usize::MAX));
    let mut headers = axum::http::HeaderMap::new();
    if let Some(link) = link_header("/v1/access/requests", &filters, page, has_next) {
        headers.insert(axum::http::header::LINK, link);
    }
    Ok((headers, Json(latch_common::api::ListResponse { list })).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/access/requests",
    tag = "access",
    request_body = AccessRequestCreate,
    responses((status = 201, description = "The request; `private_key` only here, when Latch generated the key pair", body = latch_common::access::AccessRequestView)),
)]
pub async fn create_request(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(body): ApiJson<AccessRequestCreate>,
) -> Result<Response, ApiError> {
    let request = NewRequest::try_from(&body).map_err(crate::ControlError::from)?;
    let made = control.request_access(&by, &request).await?;
    let view = control.made_request_view(made).await?;
    // The answer may carry the generated private key: never kept by a cache on the way.
    Ok(super::vault::secret(StatusCode::CREATED, view))
}

#[utoipa::path(
    get,
    path = "/v1/access/requests/{id}",
    tag = "access",
    params(
        ("id" = String, Path, description = "The request's id (ar_…)", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 200, description = "The request with its decisions, hosts and jobs", body = latch_common::access::AccessRequestView)),
)]
pub async fn show_request(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("access request", &id)?;
    Ok(Json(control.show_access(&by, &id).await?).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/access/requests/{id}/approve",
    tag = "access",
    params(
        ("id" = String, Path, description = "The request's id (ar_…)", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = latch_common::access::AccessDecision,
    responses((status = 200, description = "The request after the approval", body = latch_common::access::AccessRequestView)),
)]
pub async fn approve_request(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AccessDecision>,
) -> Result<Response, ApiError> {
    act(&control, &by, &id, Action::Approve, &body.reason).await
}

#[utoipa::path(
    post,
    path = "/v1/access/requests/{id}/deny",
    tag = "access",
    params(
        ("id" = String, Path, description = "The request's id (ar_…)", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = latch_common::access::AccessDecision,
    responses((status = 200, description = "The denied request", body = latch_common::access::AccessRequestView)),
)]
pub async fn deny_request(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AccessDecision>,
) -> Result<Response, ApiError> {
    act(&control, &by, &id, Action::Deny, &body.reason).await
}

#[utoipa::path(
    post,
    path = "/v1/access/requests/{id}/cancel",
    tag = "access",
    params(
        ("id" = String, Path, description = "The request's id (ar_…)", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = latch_common::access::AccessDecision,
    responses((status = 200, description = "The cancelled request", body = latch_common::access::AccessRequestView)),
)]
pub async fn cancel_request(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AccessDecision>,
) -> Result<Response, ApiError> {
    act(&control, &by, &id, Action::Cancel, &body.reason).await
}

#[utoipa::path(
    post,
    path = "/v1/access/requests/{id}/revoke",
    tag = "access",
    params(
        ("id" = String, Path, description = "The request's id (ar_…)", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = latch_common::access::AccessDecision,
    responses((status = 200, description = "The request, revoking (or revoked)", body = latch_common::access::AccessRequestView)),
)]
pub async fn revoke_request(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AccessDecision>,
) -> Result<Response, ApiError> {
    act(&control, &by, &id, Action::Revoke, &body.reason).await
}

#[utoipa::path(
    post,
    path = "/v1/access/requests/{id}/confirm",
    tag = "access",
    params(
        ("id" = String, Path, description = "The request's id (ar_…)", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 200, description = "The request with its next re-confirmation deadline", body = latch_common::access::AccessRequestView)),
)]
pub async fn confirm_request(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(&control, &by, &id, Action::Confirm, "").await
}

/// Takes `action` on request `id` and answers the request as the caller now sees it.
async fn act(
    control: &Control,
    by: &Authority,
    id: &str,
    action: Action,
    reason: &str,
) -> Result<Response, ApiError> {
    check_path_id("access request", id)?;
    Ok(Json(control.act_on_access(by, id, action, reason).await?).into_response())
}
