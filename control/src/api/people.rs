//! Handlers of the people-and-permissions endpoints: parse, authenticate, call [`Control`].
//! The permission each needs is checked in the library method it calls (listed in the API
//! table of [`super`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latch_common::api::{HostView, ListResponse, TokenResponse};
use latch_common::people::{
    ApiKeyView, BindRoleRequest, CreateGroupRequest, CreateServiceUserRequest, CreateUserRequest,
    CreatedServiceUser, EndedSessions, GroupView, LocalLoginRequest, NewApiKeyResponse,
    PrincipalView, RoleBindingView, RoleView, SessionView, SetLabelsRequest, SetPasswordRequest,
    TotpEnrollResponse, TotpVerifyRequest, TotpVerifyResponse,
};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, check_path_id};
use super::limits::AuthAttempt;
use super::pagination::{PageParams, paged};
use crate::Control;
use crate::directory::principal_view;
use crate::store::people::PrincipalKind;

type Ctl = State<Arc<Control>>;

/// Checks a name or id taken from the path: a host-style id, or a principal or group name
/// (which may hold `@`).
fn check_name(what: &str, key: &str) -> Result<(), ApiError> {
    check_path_id(what, &key.replace('@', "."))
}

fn created<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

/// Lists users.
#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "people",
    params(PageParams),
    responses((status = 200, description = "A page of users", body = ListResponse<PrincipalView>)),
)]
pub async fn list_users(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged(
        "/v1/users",
        control.list_principals(&by, PrincipalKind::User).await?,
        &page,
    )
}

/// Creates a user.
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "people",
    request_body = CreateUserRequest,
    responses((status = 201, description = "The user", body = PrincipalView)),
)]
pub async fn create_user(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateUserRequest>,
) -> Result<Response, ApiError> {
    Ok(created(control.create_user_from(&by, &request).await?))
}

/// Shows a user with its groups and roles.
#[utoipa::path(
    get,
    path = "/v1/users/{key}",
    tag = "people",
    params(
        ("key" = String, Path, description = "The user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 200, description = "The user", body = PrincipalView)),
)]
pub async fn show_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_name("user", &key)?;
    let view = control
        .show_principal(&by, &key, PrincipalKind::User)
        .await?;
    Ok(Json(view).into_response())
}

async fn set_disabled(
    control: &Control,
    by: &crate::people::Authority,
    key: &str,
    kind: PrincipalKind,
    disabled: bool,
) -> Result<Response, ApiError> {
    check_name("name", key)?;
    control
        .set_principal_disabled(by, key, kind, disabled)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Disables a user: every session ends at once.
#[utoipa::path(
    post,
    path = "/v1/users/{key}/disable",
    tag = "people",
    params(
        ("key" = String, Path, description = "The user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "Disabled")),
)]
pub async fn disable_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&control, &by, &key, PrincipalKind::User, true).await
}

/// Enables a user again.
#[utoipa::path(
    post,
    path = "/v1/users/{key}/enable",
    tag = "people",
    params(
        ("key" = String, Path, description = "The user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "Enabled")),
)]
pub async fn enable_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&control, &by, &key, PrincipalKind::User, false).await
}

/// Sets or removes a user's local password; every session of the user ends.
#[utoipa::path(
    put,
    path = "/v1/users/{key}/password",
    tag = "people",
    params(
        ("key" = String, Path, description = "The user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    request_body = SetPasswordRequest,
    responses((status = 204, description = "Set")),
)]
pub async fn set_user_password(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<SetPasswordRequest>,
) -> Result<Response, ApiError> {
    check_name("user", &key)?;
    control
        .set_user_password(&by, &key, request.password.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lists groups.
#[utoipa::path(
    get,
    path = "/v1/groups",
    tag = "people",
    params(PageParams),
    responses((status = 200, description = "A page of groups", body = ListResponse<GroupView>)),
)]
pub async fn list_groups(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged("/v1/groups", control.list_groups(&by).await?, &page)
}

/// Creates a group.
#[utoipa::path(
    post,
    path = "/v1/groups",
    tag = "people",
    request_body = CreateGroupRequest,
    responses((status = 201, description = "The group", body = GroupView)),
)]
pub async fn create_group(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateGroupRequest>,
) -> Result<Response, ApiError> {
    let group = control
        .create_group(
            &by,
            &request.name,
            &request.description,
            request.idp_group.as_deref(),
        )
        .await?;
    Ok(created(control.show_group(&by, &group.id).await?))
}

/// Shows a group with its members.
#[utoipa::path(
    get,
    path = "/v1/groups/{key}",
    tag = "people",
    params(
        ("key" = String, Path, description = "The group's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 200, description = "The group", body = GroupView)),
)]
pub async fn show_group(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_name("group", &key)?;
    Ok(Json(control.show_group(&by, &key).await?).into_response())
}

/// Deletes a group.
#[utoipa::path(
    delete,
    path = "/v1/groups/{key}",
    tag = "people",
    params(
        ("key" = String, Path, description = "The group's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "Deleted")),
)]
pub async fn delete_group(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_name("group", &key)?;
    control.delete_group(&by, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn change_member(
    control: &Control,
    by: &crate::people::Authority,
    (group, member): (String, String),
    add: bool,
) -> Result<Response, ApiError> {
    check_name("group", &group)?;
    check_name("member", &member)?;
    control
        .change_group_member(by, &group, &member, add)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Adds a user or service user to a group.
#[utoipa::path(
    put,
    path = "/v1/groups/{group}/members/{member}",
    tag = "people",
    params(
        ("group" = String, Path, description = "The group's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
        ("member" = String, Path, description = "The user's or service user's name", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "A member")),
)]
pub async fn add_member(
    State(control): Ctl,
    Caller(by): Caller,
    Path(path): Path<(String, String)>,
) -> Result<Response, ApiError> {
    change_member(&control, &by, path, true).await
}

/// Removes a user or service user from a group.
#[utoipa::path(
    delete,
    path = "/v1/groups/{group}/members/{member}",
    tag = "people",
    params(
        ("group" = String, Path, description = "The group's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
        ("member" = String, Path, description = "The user's or service user's name", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "Not a member")),
)]
pub async fn remove_member(
    State(control): Ctl,
    Caller(by): Caller,
    Path(path): Path<(String, String)>,
) -> Result<Response, ApiError> {
    change_member(&control, &by, path, false).await
}

/// The roles and their permissions: any signed-in caller may read them (they are the
/// product's fixed table, the same for every installation).
#[utoipa::path(
    get,
    path = "/v1/roles",
    tag = "people",
    params(PageParams),
    responses((status = 200, description = "A page of roles", body = ListResponse<RoleView>)),
)]
pub async fn list_roles(
    Caller(_by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged("/v1/roles", crate::directory::role_views(), &page)
}

/// Lists role bindings: who has which role.
#[utoipa::path(
    get,
    path = "/v1/role-bindings",
    tag = "people",
    params(PageParams),
    responses(
        (status = 200, description = "A page of role bindings", body = ListResponse<RoleBindingView>),
    ),
)]
pub async fn list_role_bindings(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged(
        "/v1/role-bindings",
        control.list_role_bindings(&by).await?,
        &page,
    )
}

/// Binds a role to a user, service user or group.
#[utoipa::path(
    post,
    path = "/v1/role-bindings",
    tag = "people",
    request_body = BindRoleRequest,
    responses((status = 201, description = "The binding", body = RoleBindingView)),
)]
pub async fn bind_role(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<BindRoleRequest>,
) -> Result<Response, ApiError> {
    Ok(created(control.bind_role_from(&by, &request).await?))
}

/// Removes a role binding.
#[utoipa::path(
    delete,
    path = "/v1/role-bindings/{id}",
    tag = "people",
    params(
        ("id" = String, Path, description = "The binding's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 204, description = "Removed")),
)]
pub async fn unbind_role(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("role binding", &id)?;
    control.unbind_role_checked(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lists service users.
#[utoipa::path(
    get,
    path = "/v1/service-users",
    tag = "people",
    params(PageParams),
    responses(
        (status = 200, description = "A page of service users", body = ListResponse<PrincipalView>),
    ),
)]
pub async fn list_service_users(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged(
        "/v1/service-users",
        control.list_principals(&by, PrincipalKind::Service).await?,
        &page,
    )
}

/// Creates a service user and its first API key (shown once).
#[utoipa::path(
    post,
    path = "/v1/service-users",
    tag = "people",
    request_body = CreateServiceUserRequest,
    responses(
        (status = 201, description = "The service user and its key", body = CreatedServiceUser),
    ),
)]
pub async fn create_service_user(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateServiceUserRequest>,
) -> Result<Response, ApiError> {
    let made = control
        .create_service_user(&by, &request.name, &request.roles)
        .await?;
    Ok(created(CreatedServiceUser {
        service_user: principal_view(&made.principal),
        key: NewApiKeyResponse {
            service_user: made.principal.name.clone(),
            key_id: made.key_id,
            api_key: made.api_key,
        },
    }))
}

/// Shows a service user.
#[utoipa::path(
    get,
    path = "/v1/service-users/{key}",
    tag = "people",
    params(
        ("key" = String, Path, description = "The service user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 200, description = "The service user", body = PrincipalView)),
)]
pub async fn show_service_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_name("service user", &key)?;
    let view = control
        .show_principal(&by, &key, PrincipalKind::Service)
        .await?;
    Ok(Json(view).into_response())
}

/// Disables a service user: every token ends at once.
#[utoipa::path(
    post,
    path = "/v1/service-users/{key}/disable",
    tag = "people",
    params(
        ("key" = String, Path, description = "The service user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "Disabled")),
)]
pub async fn disable_service_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&control, &by, &key, PrincipalKind::Service, true).await
}

/// Enables a service user again.
#[utoipa::path(
    post,
    path = "/v1/service-users/{key}/enable",
    tag = "people",
    params(
        ("key" = String, Path, description = "The service user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 204, description = "Enabled")),
)]
pub async fn enable_service_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&control, &by, &key, PrincipalKind::Service, false).await
}

/// Lists a service user's API keys (never the keys).
#[utoipa::path(
    get,
    path = "/v1/service-users/{key}/keys",
    tag = "people",
    params(
        ("key" = String, Path, description = "The service user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
        PageParams,
    ),
    responses((status = 200, description = "A page of API keys", body = ListResponse<ApiKeyView>)),
)]
pub async fn list_api_keys(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    check_name("service user", &key)?;
    paged(
        &format!("/v1/service-users/{key}/keys"),
        control.api_key_views(&by, &key).await?,
        &page,
    )
}

/// Adds an API key (shown once).
#[utoipa::path(
    post,
    path = "/v1/service-users/{key}/keys",
    tag = "people",
    params(
        ("key" = String, Path, description = "The service user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
    ),
    responses((status = 201, description = "The new key", body = NewApiKeyResponse)),
)]
pub async fn create_api_key(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_name("service user", &key)?;
    Ok(created(control.new_api_key(&by, &key).await?))
}

/// Revokes an API key.
#[utoipa::path(
    delete,
    path = "/v1/service-users/{key}/keys/{key_id}",
    tag = "people",
    params(
        ("key" = String, Path, description = "The service user's name or id", pattern = "^[A-Za-z0-9._@-]{1,64}$"),
        ("key_id" = String, Path, description = "The key's id", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    responses((status = 204, description = "Revoked")),
)]
pub async fn revoke_api_key(
    State(control): Ctl,
    Caller(by): Caller,
    Path((service_user, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_name("service user", &service_user)?;
    check_path_id("key id", &key_id)?;
    control.revoke_api_key(&by, &service_user, &key_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lists the caller's own live sessions, newest first (never their tokens).
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    params(PageParams),
    responses((status = 200, description = "A page of the caller's live sessions", body = ListResponse<SessionView>)),
)]
pub async fn list_sessions(
    State(control): Ctl,
    Caller(by): Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    paged("/v1/sessions", control.session_views(&by).await?, &page)
}

/// Ends one of the caller's own sessions; another's, or one already over, is not found.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id (`ses_…`)", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 204, description = "The session ended: its token no longer works")),
)]
pub async fn end_session(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("session id", &id)?;
    control.end_own_session(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Ends every session of the caller but the one making this request.
#[utoipa::path(
    post,
    path = "/v1/sessions/end-others",
    tag = "sessions",
    responses((status = 200, description = "How many sessions ended", body = EndedSessions)),
)]
pub async fn end_other_sessions(
    State(control): Ctl,
    Caller(by): Caller,
) -> Result<Response, ApiError> {
    let ended = control.end_other_sessions(&by).await?;
    Ok(Json(EndedSessions { ended }).into_response())
}

/// Enrolls a TOTP factor for the signed-in user.
#[utoipa::path(
    post,
    path = "/v1/mfa/totp",
    tag = "sessions",
    responses(
        (status = 201, description = "The secret and its otpauth URI", body = TotpEnrollResponse),
    ),
)]
pub async fn enroll_totp(State(control): Ctl, Caller(by): Caller) -> Result<Response, ApiError> {
    let enrollment = control.enroll_totp(&by).await?;
    Ok(created(TotpEnrollResponse {
        secret: enrollment.secret_base32,
        otpauth_uri: enrollment.otpauth_uri,
    }))
}

/// Shows a TOTP code: the session's MFA step-up.
#[utoipa::path(
    post,
    path = "/v1/mfa/totp/verify",
    tag = "sessions",
    request_body = TotpVerifyRequest,
    responses((status = 200, description = "Stepped up", body = TotpVerifyResponse)),
)]
pub async fn verify_totp(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<TotpVerifyRequest>,
) -> Result<Response, ApiError> {
    let mfa_at = control.verify_totp(&by, &request.code).await?;
    Ok(Json(TotpVerifyResponse { mfa_at }).into_response())
}

/// Signs a local user in with a password.
#[utoipa::path(
    post,
    path = "/v1/login/local",
    tag = "sessions",
    security(()),
    request_body = LocalLoginRequest,
    responses((status = 201, description = "The session token", body = TokenResponse)),
)]
pub async fn login_local(
    State(control): Ctl,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    attempt: AuthAttempt,
    ApiJson(request): ApiJson<LocalLoginRequest>,
) -> Result<Response, ApiError> {
    // A refused password is charged to the name tried (and the address), like a bad key.
    attempt.present(&request.name)?;
    let issued = control
        .sign_in_local(
            &request.name,
            &request.password,
            Some(peer.ip().to_string()),
        )
        .await?;
    attempt.accepted();
    Ok(created(TokenResponse {
        token: issued.token,
        expires_at: issued.expires_at,
    }))
}

/// Replaces a host's labels; answers the host.
#[utoipa::path(
    put,
    path = "/v1/hosts/{host}/labels",
    tag = "hosts",
    params(
        ("host" = String, Path, description = "The host's id or hostname", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body = SetLabelsRequest,
    responses((status = 200, description = "The host", body = HostView)),
)]
pub async fn set_host_labels(
    State(control): Ctl,
    Caller(by): Caller,
    Path(host): Path<String>,
    ApiJson(request): ApiJson<SetLabelsRequest>,
) -> Result<Response, ApiError> {
    check_path_id("host", &host)?;
    control.set_host_labels(&by, &host, request.labels).await?;
    Ok(Json(control.show_host(&by, &host).await?).into_response())
}
