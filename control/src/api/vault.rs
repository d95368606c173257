//! Handlers of the credential-vault endpoints: parse, authenticate, call [`Control`]. The
//! permission and vault grant each needs is checked in [`crate::vault`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latch_common::vault::{
    BreakGlassRequest, CheckinRequest, CheckoutRequest, CreateIdentityRequest,
    CreateOrganizationRequest, CreateVaultGrantRequest, CreateVaultRequest,
    EmergencyDisableRequest, EnableSupportAccessRequest, EnrollAccountRequest, RotateRequest,
    UpdateIdentityRequest, UpdateOrganizationRequest, UpdateVaultRequest,
};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, check_path_id};
use super::pagination::{PageParams, paged};
use crate::Control;

type Ctl = State<Arc<Control>>;

fn created<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

fn ok<T: serde::Serialize>(body: T) -> Response {
    Json(body).into_response()
}

/// An answer that carries a credential: never stored by a cache on the way.
pub(super) fn secret<T: serde::Serialize>(status: StatusCode, body: T) -> Response {
    (
        status,
        [
            (axum::http::header::CACHE_CONTROL, "no-store"),
            (axum::http::header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

/// Checks a vault key (id or name, which may hold `@`) taken from the path.
fn check_vault(key: &str) -> Result<(), ApiError> {
    check_path_id("vault", &key.replace('@', "."))
}

pub async fn list_vaults(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged("/v1/vaults", control.list_vaults(&by).await?, &page)
}

pub async fn create_vault(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateVaultRequest>,
) -> Result<Response, ApiError> {
    Ok(created(control.create_vault(&by, &request).await?))
}

pub async fn show_vault(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(ok(control.show_vault(&by, &key).await?))
}

pub async fn update_vault(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<UpdateVaultRequest>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(ok(control.update_vault(&by, &key, &request).await?))
}

pub async fn delete_vault(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    control.delete_vault(&by, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_vault_grants(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    paged(
        &format!("/v1/vaults/{key}/grants"),
        control.list_vault_grants(&by, &key).await?,
        &page,
    )
}

pub async fn grant_vault_access(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<CreateVaultGrantRequest>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(created(
        control.grant_vault_access(&by, &key, &request).await?,
    ))
}

pub async fn revoke_vault_access(
    State(control): Ctl,
    Caller(by): Caller,
    Path((key, grant)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    check_path_id("grant", &grant)?;
    control.revoke_vault_access(&by, &key, &grant).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_identities(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    paged(
        &format!("/v1/vaults/{key}/identities"),
        control.list_identities(&by, &key).await?,
        &page,
    )
}

pub async fn create_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<CreateIdentityRequest>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(created(control.create_identity(&by, &key, &request).await?))
}

pub async fn show_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(ok(control.show_identity(&by, &id).await?))
}

pub async fn update_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateIdentityRequest>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(ok(control.update_identity(&by, &id, &request).await?))
}

pub async fn delete_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    control.delete_identity(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn reveal_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(secret(
        StatusCode::OK,
        control.reveal_identity(&by, &id).await?,
    ))
}

pub async fn checkout_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CheckoutRequest>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(secret(
        StatusCode::CREATED,
        control.checkout_identity(&by, &id, &request).await?,
    ))
}

pub async fn break_glass(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<BreakGlassRequest>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(secret(
        StatusCode::CREATED,
        control.break_glass(&by, &id, &request).await?,
    ))
}

pub async fn list_checkouts(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    paged(
        &format!("/v1/identities/{id}/checkouts"),
        control.list_checkouts(&by, &id).await?,
        &page,
    )
}

pub async fn checkin(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CheckinRequest>,
) -> Result<Response, ApiError> {
    check_path_id("checkout", &id)?;
    Ok(ok(control.checkin(&by, &id, &request).await?))
}

pub async fn rotate_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RotateRequest>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(created(control.rotate_identity(&by, &id, &request).await?))
}

pub async fn list_rotations(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    paged(
        &format!("/v1/identities/{id}/rotations"),
        control.list_rotations(&by, &id).await?,
        &page,
    )
}

pub async fn show_rotation(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("rotation", &id)?;
    Ok(ok(control.show_rotation(&by, &id).await?))
}

pub async fn enroll_account(
    State(control): Ctl,
    Caller(by): Caller,
    Path(host): Path<String>,
    ApiJson(request): ApiJson<EnrollAccountRequest>,
) -> Result<Response, ApiError> {
    check_path_id("host", &host)?;
    Ok(created(control.enroll_account(&by, &host, &request).await?))
}

pub async fn list_support_access(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged(
        "/v1/support-access",
        control.list_support_access(&by).await?,
        &page,
    )
}

pub async fn enable_support_access(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<EnableSupportAccessRequest>,
) -> Result<Response, ApiError> {
    Ok(created(control.enable_support_access(&by, &request).await?))
}

pub async fn disable_support_access(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("support access", &id)?;
    control.disable_support_access(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn emergency_disable_support_access(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<EmergencyDisableRequest>,
) -> Result<Response, ApiError> {
    Ok(ok(control
        .emergency_disable_support_access(&by, &request)
        .await?))
}

pub async fn list_organizations(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged(
        "/v1/organizations",
        control.list_organizations(&by).await?,
        &page,
    )
}

pub async fn create_organization(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateOrganizationRequest>,
) -> Result<Response, ApiError> {
    Ok(created(
        control.create_organization_from(&by, &request).await?,
    ))
}

pub async fn update_organization(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<UpdateOrganizationRequest>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(ok(control.update_organization(&by, &key, &request).await?))
}
