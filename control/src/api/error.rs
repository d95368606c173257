//! API errors: `{"code": "...", "message": "..."}` with the status codes of DESIGN.md §5.

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use latch_common::api::ApiErrorBody;

use crate::ControlError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// `400 invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// `404 resource_does_not_exist`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "resource_does_not_exist", message)
    }

    /// `401 authentication_error`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        match &error {
            ControlError::Invalid(e) => ApiError::invalid(e.to_string()),
            ControlError::Unauthenticated(_)
            | ControlError::EnrollRefused(_)
            | ControlError::SsoRefused(_) => ApiError::unauthenticated(error.to_string()),
            ControlError::NotFound { .. } | ControlError::HostRemoved(_) => {
                ApiError::not_found(error.to_string())
            }
            ControlError::AmbiguousHost(..) => ApiError::invalid(error.to_string()),
            ControlError::AuthorizationRevoked(_) => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "server_authorization_revoked",
                error.to_string(),
            ),
            ControlError::StepUpRequired(_) => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authorization_error",
                error.to_string(),
            ),
            ControlError::SsoNotConfigured(_) => ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "sso_not_configured",
                error.to_string(),
            ),
            ControlError::IdentityProvider(_) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "identity_provider_error",
                error.to_string(),
            ),
            ControlError::Forbidden(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden_error", error.to_string())
            }
            ControlError::AlreadyExists { .. } | ControlError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "resource_already_exists",
                error.to_string(),
            ),
            ControlError::TooManyRequests(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                error.to_string(),
            ),
            ControlError::Store(_) | ControlError::Internal(_) => {
                // The cause goes to the server log only; the client gets no internals.
                tracing::error!(error = %error, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unknown_error",
                    "the control plane failed to handle the request; its log has the cause",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Turns an error answer that is not JSON — one of axum's own plain-text rejections, such as a
/// path segment that is not valid UTF-8 — into `{"code", "message"}` with the code for its
/// status, so every error of the API uses the codes (a safety net under the extractors of
/// [`super::extract`], which give the precise messages).
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    // JSON errors are the API's own; HTML ones are the web console's error pages.
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("application/json") || value.starts_with("text/html")
        });
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "resource_does_not_exist",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_content_type",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "service_offline",
        status if status.is_server_error() => "unknown_error",
        _ => "invalid_request",
    };
    let message = if text.is_empty() || status.is_server_error() {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned()
    } else {
        text
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    if let Some(allow) = parts.headers.get(ALLOW) {
        answer.headers_mut().insert(ALLOW, allow.clone());
    }
    answer
}
