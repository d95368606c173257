//! Handlers of the just-in-time access endpoints (`/v1/policies`): parse, authenticate, call
//! [`Control`]; the permission each needs is checked in [`crate::access`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latch_common::access::PolicyRequest;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, check_path_id};
use super::pagination::{PageParams, paged};
use crate::Control;

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
