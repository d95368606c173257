//! Handlers of the people-and-permissions endpoints: parse, authenticate, call [`Control`].
//! The permission each needs is checked in the library method it calls (listed in the API
//! table of [`super`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use latch_common::api::{ListResponse, TokenResponse};
use latch_common::people::{
    BindRoleRequest, CreateGroupRequest, CreateServiceUserRequest, CreateUserRequest,
    CreatedServiceUser, LocalLoginRequest, NewApiKeyResponse, SetLabelsRequest, SetPasswordRequest,
    TotpEnrollResponse, TotpVerifyRequest, TotpVerifyResponse,
};

use super::error::ApiError;
use super::extract::{ApiJson, Caller, check_path_id};
use super::limits::AuthAttempt;
use crate::Control;
use crate::directory::principal_view;
use crate::store::people::PrincipalKind;

type Ctl = State<Arc<Control>>;

/// Checks a name or id taken from the path: a host-style id, or a principal or group name
/// (which may hold `@`).
fn check_name(what: &str, key: &str) -> Result<(), ApiError> {
    check_path_id(what, &key.replace('@', "."))
}

fn list<T: serde::Serialize>(list: Vec<T>) -> Response {
    Json(ListResponse { list }).into_response()
}

fn created<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

pub async fn list_users(State(control): Ctl, Caller(by): Caller) -> Result<Response, ApiError> {
    Ok(list(
        control.list_principals(&by, PrincipalKind::User).await?,
    ))
}

pub async fn create_user(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<CreateUserRequest>,
) -> Result<Response, ApiError> {
    Ok(created(control.create_user_from(&by, &request).await?))
}

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

pub async fn disable_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&control, &by, &key, PrincipalKind::User, true).await
}

pub async fn enable_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&control, &by, &key, PrincipalKind::User, false).await
}

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

pub async fn list_groups(State(control): Ctl, Caller(by): Caller) -> Result<Response, ApiError> {
    Ok(list(control.list_groups(&by).await?))
}

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

pub async fn show_group(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_name("group", &key)?;
    Ok(Json(control.show_group(&by, &key).await?).into_response())
}

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

pub async fn add_member(
    State(control): Ctl,
    Caller(by): Caller,
    Path(path): Path<(String, String)>,
) -> Result<Response, ApiError> {
    change_member(&control, &by, path, true).await
}

pub async fn remove_member(
    State(control): Ctl,
    Caller(by): Caller,
    Path(path): Path<(String, String)>,
) -> Result<Response, ApiError> {
    change_member(&control, &by, path, false).await
}

/// The roles and their permissions: any signed-in caller may read them (they are the
/// product's fixed table, the same for every installation).
pub async fn list_roles(Caller(_by): Caller) -> Response {
    list(crate::directory::role_views())
}

pub async fn list_role_bindings(
    State(control): Ctl,
    Caller(by): Caller,
) -> Result<Response, ApiError> {
    Ok(list(control.list_role_bindings(&by).await?))
}

pub async fn bind_role(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<BindRoleRequest>,
) -> Result<Response, ApiError> {
    Ok(created(control.bind_role_from(&by, &request).await?))
}

pub async fn unbind_role(
    State(control): Ctl,
    Caller(by): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_path_id("role binding", &id)?;
    control.unbind_role_checked(&by, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_service_users(
    State(control): Ctl,
    Caller(by): Caller,
) -> Result<Response, ApiError> {
    Ok(list(
        control.list_principals(&by, PrincipalKind::Service).await?,
    ))
}

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

pub async fn disable_service_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&control, &by, &key, PrincipalKind::Service, true).await
}

pub async fn enable_service_user(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&control, &by, &key, PrincipalKind::Service, false).await
}

pub async fn list_api_keys(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_name("service user", &key)?;
    Ok(list(control.api_key_views(&by, &key).await?))
}

pub async fn create_api_key(
    State(control): Ctl,
    Caller(by): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    check_name("service user", &key)?;
    Ok(created(control.new_api_key(&by, &key).await?))
}

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

pub async fn enroll_totp(State(control): Ctl, Caller(by): Caller) -> Result<Response, ApiError> {
    let enrollment = control.enroll_totp(&by).await?;
    Ok(created(TotpEnrollResponse {
        secret: enrollment.secret_base32,
        otpauth_uri: enrollment.otpauth_uri,
    }))
}

pub async fn verify_totp(
    State(control): Ctl,
    Caller(by): Caller,
    ApiJson(request): ApiJson<TotpVerifyRequest>,
) -> Result<Response, ApiError> {
    let mfa_at = control.verify_totp(&by, &request.code).await?;
    Ok(Json(TotpVerifyResponse { mfa_at }).into_response())
}

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
