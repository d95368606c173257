//! The audit endpoints: the trail (filtered, paged), the chain's verification (also against
//! exported checkpoints), and signing a checkpoint. They check `audit.view` everywhere here:
//! the library's audit reads also serve the server's own checks.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latch_common::api::ListResponse;
use latch_common::authz::Permission;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, check_path_id};
use super::handlers::{Ctl, with_link};
use super::pagination::{PageParams, link_header};
use crate::audit::{AuditEntry, Checkpoint, Verification};
use crate::store::Page;

/// The query of `GET /v1/audit`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only entries since (RFC 3339).
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only entries by this actor.
    actor: Option<String>,
    /// Only entries about this host (id or hostname).
    host: Option<String>,
    /// Page size (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    count: Option<u64>,
    /// Items to skip.
    offset: Option<u64>,
}

/// Lists the audit trail.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of audit entries", body = ListResponse<AuditEntry>),
    ),
)]
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
    if let Some(host) = &params.host {
        check_path_id("host", host)?;
    }
    let filter = control
        .audit_filter(
            params.since,
            params.actor.as_deref(),
            params.host.as_deref(),
        )
        .await?;
    let mut filters = Vec::new();
    if let Some(since) = params.since {
        filters.push(("since", since.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()));
    }
    for (name, value) in [("actor", &params.actor), ("host", &params.host)] {
        if let Some(value) = value {
            filters.push((name, value.clone()));
        }
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

/// Checks the audit chain (ids, links, hashes, MACs) and the recorded head.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    responses((status = 200, description = "What the check found", body = Verification)),
)]
pub async fn verify_audit(State(control): Ctl, Caller(by): Caller) -> Result<Response, ApiError> {
    by.require_everywhere(Permission::AuditView)?;
    Ok(Json(control.verify_audit().await?).into_response())
}

/// `POST /v1/audit/verify`: checkpoints exported earlier.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The checkpoints to check against the chain.
    checkpoints: Vec<Checkpoint>,
}

/// Checks the audit chain, also against checkpoints exported earlier.
#[utoipa::path(
    post,
    path = "/v1/audit/verify",
    tag = "audit",
    request_body = VerifyRequest,
    responses((status = 200, description = "What the check found", body = Verification)),
)]
pub async fn verify_audit_with(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    by.require_everywhere(Permission::AuditView)?;
    Ok(Json(control.verify_audit_with(&request.checkpoints).await?).into_response())
}

/// Signs a checkpoint of the audit chain's head.
#[utoipa::path(
    post,
    path = "/v1/audit/checkpoints",
    tag = "audit",
    responses((status = 201, description = "The signed checkpoint", body = Checkpoint)),
)]
pub async fn audit_checkpoint(
    State(control): Ctl,
    Caller(by): Caller,
) -> Result<Response, ApiError> {
    by.require_everywhere(Permission::AuditView)?;
    Ok((StatusCode::CREATED, Json(control.audit_checkpoint().await?)).into_response())
}
