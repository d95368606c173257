//! Extractors that turn every malformed request into an [`ApiError`] with the right code,
//! instead of axum's plain-text rejections.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::Control;
use crate::people::Authority;
use crate::store::HostRecord;

/// A JSON body; malformed bodies are `400 invalid_request`, a wrong content type `415`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                "send the body as JSON with 'Content-Type: application/json'",
            )),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    format!("the body is larger than {} bytes", super::MAX_BODY_BYTES),
                ))
            }
            Err(rejection) => Err(ApiError::invalid(format!(
                "the JSON body is not valid: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Query parameters; malformed ones are `400 invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::invalid(format!("the query string is not valid: {}", e.body_text()))
            })
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthenticated("missing 'Authorization: Bearer <token>' header")
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty() && token.len() <= 256)
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be 'Bearer <token>'")
        })
}

/// The authenticated caller: a user's session or a service user's token, with the roles that
/// apply to it now. Each handler passes it on; the library checks the permission it needs.
pub struct Caller(pub Authority);

impl FromRequestParts<Arc<Control>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        control: &Arc<Control>,
    ) -> Result<Self, Self::Rejection> {
        let by = control.authenticate(bearer(parts)?).await?;
        super::limits::credential_accepted(&parts.extensions);
        // The client's address as the limiter worked it out: the peer, or the address a
        // trusted proxy forwarded for (never a header from anyone else).
        let address = parts
            .extensions
            .get::<super::limits::ClientAddress>()
            .map(|client| client.0.to_string());
        Ok(Caller(by.from_address(address)))
    }
}

/// The host whose credential the request carries.
pub struct Host(pub HostRecord);

impl FromRequestParts<Arc<Control>> for Host {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        control: &Arc<Control>,
    ) -> Result<Self, Self::Rejection> {
        let host = control.authenticate_host(bearer(parts)?).await?;
        super::limits::credential_accepted(&parts.extensions);
        Ok(Host(host))
    }
}

/// Checks an id taken from the path: 1–64 characters of `[A-Za-z0-9._-]` (a host name or a UUID).
pub fn check_path_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "the {what} in the path must be 1 to 64 characters of letters, digits, '.', '_' or '-'"
        )))
    }
}
