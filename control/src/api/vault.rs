//! Handlers of the credential-vault endpoints: parse, authenticate, call [`Control`]. The
//! permission and vault grant each needs is checked in [`crate::vault`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latch_common::api::ListResponse;
use latch_common::vault::{
    BreakGlassRequest, CheckinRequest, CheckoutGranted, CheckoutRequest, CheckoutView,
    CreateIdentityRequest, CreateOrganizationRequest, CreateVaultGrantRequest, CreateVaultRequest,
    EmergencyDisableRequest, EmergencyDisabled, EnableSupportAccessRequest, EnrollAccountRequest,
    EnrolledAccount, IdentityView, OrganizationView, RevealedSecret, RotateRequest, RotationView,
    SupportAccessView, UpdateIdentityRequest, UpdateOrganizationRequest, UpdateVaultRequest,
    VaultGrantView, VaultView,
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

/// Lists the vaults the caller may see.
#[utoipa::path(
    get,
    path = "/v1/vaults",
    tag = "vault",
    params(PageParams),
    responses((status = 200, description = "A page of vaults", body = ListResponse<VaultView>)),
)]
pub async fn list_vaults(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged("/v1/vaults", control.list_vaults(&by).await?, &page)
}

/// Creates a vault.
#[utoipa::path(
    post,
    path = "/v1/vaults",
    tag = "vault",
    request_body = CreateVaultRequest,
    responses((status = 201, description = "The vault", body = VaultView)),
)]
pub async fn create_vault(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateVaultRequest>,
) -> Result<Response, ApiError> {
    Ok(created(control.create_vault(&by, &request).await?))
}

/// Shows a vault.
#[utoipa::path(
    get,
    path = "/v1/vaults/{key}",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The vault's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 200, description = "The vault", body = VaultView)),
)]
pub async fn show_vault(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(ok(control.show_vault(&by, &key).await?))
}

/// Changes a vault's name or description.
#[utoipa::path(
    patch,
    path = "/v1/vaults/{key}",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The vault's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    request_body = UpdateVaultRequest,
    responses((status = 200, description = "The vault", body = VaultView)),
)]
pub async fn update_vault(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<UpdateVaultRequest>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(ok(control.update_vault(&by, &key, &request).await?))
}

/// Deletes an empty vault.
#[utoipa::path(
    delete,
    path = "/v1/vaults/{key}",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The vault's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "Deleted")),
)]
pub async fn delete_vault(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    control.delete_vault(&by, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lists who may use a vault, and how.
#[utoipa::path(
    get,
    path = "/v1/vaults/{key}/grants",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The vault's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of vault grants", body = ListResponse<VaultGrantView>),
    ),
)]
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

/// Grants a user or group access to a vault.
#[utoipa::path(
    post,
    path = "/v1/vaults/{key}/grants",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The vault's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    request_body = CreateVaultGrantRequest,
    responses((status = 201, description = "The grant", body = VaultGrantView)),
)]
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

/// Revokes a vault grant.
#[utoipa::path(
    delete,
    path = "/v1/vaults/{key}/grants/{grant}",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The vault's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
        ("grant" = String, Path, description = "The grant's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 204, description = "Revoked")),
)]
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

/// Lists a vault's identities (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/vaults/{key}/identities",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The vault's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of identities", body = ListResponse<IdentityView>),
    ),
)]
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

/// Creates an identity in a vault.
#[utoipa::path(
    post,
    path = "/v1/vaults/{key}/identities",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The vault's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    request_body = CreateIdentityRequest,
    responses((status = 201, description = "The identity", body = IdentityView)),
)]
pub async fn create_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<CreateIdentityRequest>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(created(control.create_identity(&by, &key, &request).await?))
}

/// Shows an identity (never its secret).
#[utoipa::path(
    get,
    path = "/v1/identities/{id}",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 200, description = "The identity", body = IdentityView)),
)]
pub async fn show_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(ok(control.show_identity(&by, &id).await?))
}

/// Changes an identity.
#[utoipa::path(
    patch,
    path = "/v1/identities/{id}",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = UpdateIdentityRequest,
    responses((status = 200, description = "The identity", body = IdentityView)),
)]
pub async fn update_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateIdentityRequest>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(ok(control.update_identity(&by, &id, &request).await?))
}

/// Deletes an identity.
#[utoipa::path(
    delete,
    path = "/v1/identities/{id}",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 204, description = "Deleted")),
)]
pub async fn delete_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    control.delete_identity(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Reveals an identity's credential (audited; MFA step-up).
#[utoipa::path(
    post,
    path = "/v1/identities/{id}/reveal",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 200, description = "The credential", body = RevealedSecret)),
)]
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

/// Checks an identity out (MFA step-up).
#[utoipa::path(
    post,
    path = "/v1/identities/{id}/checkout",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = CheckoutRequest,
    responses(
        (status = 201, description = "The checkout and the credential", body = CheckoutGranted),
    ),
)]
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

/// Emergency checkout (MFA step-up; limited per minute).
#[utoipa::path(
    post,
    path = "/v1/identities/{id}/break-glass",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = BreakGlassRequest,
    responses(
        (status = 201, description = "The checkout and the credential", body = CheckoutGranted),
    ),
)]
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

/// Lists an identity's checkouts.
#[utoipa::path(
    get,
    path = "/v1/identities/{id}/checkouts",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of checkouts", body = ListResponse<CheckoutView>),
    ),
)]
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

/// Checks a checkout in (rotates the credential if configured).
#[utoipa::path(
    post,
    path = "/v1/checkouts/{id}/checkin",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The checkout's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = CheckinRequest,
    responses((status = 200, description = "The checkout", body = CheckoutView)),
)]
pub async fn checkin(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CheckinRequest>,
) -> Result<Response, ApiError> {
    check_path_id("checkout", &id)?;
    Ok(ok(control.checkin(&by, &id, &request).await?))
}

/// Rotates an identity's credential on every linked host.
#[utoipa::path(
    post,
    path = "/v1/identities/{id}/rotate",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = RotateRequest,
    responses((status = 201, description = "The rotation", body = RotationView)),
)]
pub async fn rotate_identity(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RotateRequest>,
) -> Result<Response, ApiError> {
    check_path_id("identity", &id)?;
    Ok(created(control.rotate_identity(&by, &id, &request).await?))
}

/// Lists an identity's rotations.
#[utoipa::path(
    get,
    path = "/v1/identities/{id}/rotations",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The identity's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of rotations", body = ListResponse<RotationView>),
    ),
)]
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

/// Shows a rotation with its per-host status.
#[utoipa::path(
    get,
    path = "/v1/rotations/{id}",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The rotation's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 200, description = "The rotation", body = RotationView)),
)]
pub async fn show_rotation(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("rotation", &id)?;
    Ok(ok(control.show_rotation(&by, &id).await?))
}

/// Adopts an existing account on a host into a vault and starts its first rotation.
#[utoipa::path(
    post,
    path = "/v1/hosts/{host}/enroll-account",
    tag = "vault",
    params(
        ("host" = String, Path, description = "The host's id or hostname", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = EnrollAccountRequest,
    responses(
        (status = 201, description = "The identity and its rotation", body = EnrolledAccount),
    ),
)]
pub async fn enroll_account(
    State(control): Ctl,
    Caller(by): Caller,
    Path(host): Path<String>,
    ApiJson(request): ApiJson<EnrollAccountRequest>,
) -> Result<Response, ApiError> {
    check_path_id("host", &host)?;
    Ok(created(control.enroll_account(&by, &host, &request).await?))
}

/// Lists support access.
#[utoipa::path(
    get,
    path = "/v1/support-access",
    tag = "vault",
    params(PageParams),
    responses(
        (status = 200, description = "A page of support access", body = ListResponse<SupportAccessView>),
    ),
)]
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

/// Enables support access for a while.
#[utoipa::path(
    post,
    path = "/v1/support-access",
    tag = "vault",
    request_body = EnableSupportAccessRequest,
    responses((status = 201, description = "The support access", body = SupportAccessView)),
)]
pub async fn enable_support_access(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<EnableSupportAccessRequest>,
) -> Result<Response, ApiError> {
    Ok(created(control.enable_support_access(&by, &request).await?))
}

/// Ends a support access.
#[utoipa::path(
    delete,
    path = "/v1/support-access/{id}",
    tag = "vault",
    params(
        ("id" = String, Path, description = "The support access's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 204, description = "Ended")),
)]
pub async fn disable_support_access(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("support access", &id)?;
    control.disable_support_access(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Ends every support access at once.
#[utoipa::path(
    post,
    path = "/v1/support-access/emergency-disable",
    tag = "vault",
    request_body = EmergencyDisableRequest,
    responses((status = 200, description = "How many ended", body = EmergencyDisabled)),
)]
pub async fn emergency_disable_support_access(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<EmergencyDisableRequest>,
) -> Result<Response, ApiError> {
    Ok(ok(control
        .emergency_disable_support_access(&by, &request)
        .await?))
}

/// Lists organizations.
#[utoipa::path(
    get,
    path = "/v1/organizations",
    tag = "vault",
    params(PageParams),
    responses(
        (status = 200, description = "A page of organizations", body = ListResponse<OrganizationView>),
    ),
)]
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

/// Creates an organization.
#[utoipa::path(
    post,
    path = "/v1/organizations",
    tag = "vault",
    request_body = CreateOrganizationRequest,
    responses((status = 201, description = "The organization", body = OrganizationView)),
)]
pub async fn create_organization(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateOrganizationRequest>,
) -> Result<Response, ApiError> {
    Ok(created(
        control.create_organization_from(&by, &request).await?,
    ))
}

/// Changes an organization's settings.
#[utoipa::path(
    patch,
    path = "/v1/organizations/{key}",
    tag = "vault",
    params(
        ("key" = String, Path, description = "The organization's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    request_body = UpdateOrganizationRequest,
    responses((status = 200, description = "The organization", body = OrganizationView)),
)]
pub async fn update_organization(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<UpdateOrganizationRequest>,
) -> Result<Response, ApiError> {
    check_vault(&key)?;
    Ok(ok(control.update_organization(&by, &key, &request).await?))
}
