//! Handlers of the webhook endpoints: parse, authenticate, call [`Control`]. The permission
//! (`settings.manage` everywhere) is checked in [`crate::webhooks`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latch_common::api::ListResponse;
use latch_common::webhooks::{CreateWebhookRequest, DeliveryView, WebhookView};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, check_path_id};
use super::pagination::{PageParams, paged};
use crate::Control;

type Ctl = State<Arc<Control>>;

/// Lists webhooks (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    params(PageParams),
    responses((status = 200, description = "A page of webhooks", body = ListResponse<WebhookView>)),
)]
pub async fn list_webhooks(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged("/v1/webhooks", control.list_webhooks(&by).await?, &page)
}

/// Creates a signed webhook.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses((status = 201, description = "The webhook", body = WebhookView)),
)]
pub async fn create_webhook(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateWebhookRequest>,
) -> Result<Response, ApiError> {
    let webhook = control.create_webhook(&by, &request).await?;
    Ok((StatusCode::CREATED, Json(webhook)).into_response())
}

/// Deletes a webhook.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The webhook's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 204, description = "Deleted")),
)]
pub async fn delete_webhook(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("webhook", &id)?;
    control.delete_webhook(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lists a webhook's deliveries, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The webhook's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = ListResponse<DeliveryView>),
    ),
)]
pub async fn list_deliveries(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    check_path_id("webhook", &id)?;
    paged(
        &format!("/v1/webhooks/{id}/deliveries"),
        control.list_webhook_deliveries(&by, &id).await?,
        &page,
    )
}
