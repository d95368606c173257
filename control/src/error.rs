//! The control plane's error type. Each variant maps to one API error code in `api::error`.

use latch_common::names::ValidationError;
use thiserror::Error;

use crate::store::{StoreError, TokenRefusal};

/// Why a control-plane operation did not happen.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The request is malformed or hostile; nothing was changed.
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// No valid credential was presented.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The credential was valid but has been revoked (its key revoked, its session ended, its
    /// principal disabled).
    #[error("{0}")]
    AuthorizationRevoked(String),
    /// The action needs a second factor shown recently in this session (MFA step-up).
    #[error("{0}")]
    StepUpRequired(String),
    /// The caller is authenticated but lacks the permission, or the scope, for this request.
    #[error("{0}")]
    Forbidden(String),
    /// A record with that name already exists.
    #[error("{what} '{key}' already exists")]
    AlreadyExists {
        /// What (`service user`, `group`).
        what: &'static str,
        /// The name.
        key: String,
    },
    /// The enrollment token cannot be used.
    #[error("{}", match .0 {
        TokenRefusal::Expired => "the enrollment token has expired; create a new one with `latchctl enroll-token create`",
        TokenRefusal::UsedUp => "the enrollment token has no uses left; create a new one with `latchctl enroll-token create`",
        TokenRefusal::Unknown => "the enrollment token is not valid; check it was copied whole, or create a new one with `latchctl enroll-token create`",
    })]
    EnrollRefused(TokenRefusal),
    /// The named thing does not exist.
    #[error("{what} '{key}' does not exist")]
    NotFound {
        /// What was looked up (`host`, `job`).
        what: &'static str,
        /// The key it was looked up by.
        key: String,
    },
    /// The host was removed: nothing can be queued for it any more.
    #[error(
        "host '{0}' was removed (`latchctl hosts remove`); no job can be queued for it any more — enroll it again with `latch-agent enroll --replace` to manage it"
    )]
    HostRemoved(String),
    /// A host name matches several hosts.
    #[error("host name '{0}' matches {1} hosts; use the host id (see `latchctl hosts list`)")]
    AmbiguousHost(String, usize),
    /// The change conflicts with the current state (e.g. a report for a lease that is gone).
    #[error("{0}")]
    Conflict(String),
    /// Single sign-on is not configured.
    #[error("{0}")]
    SsoNotConfigured(String),
    /// A sign-in through the identity provider was refused (unknown or replayed state, an ID
    /// token that fails validation, no usable user name).
    #[error("{0}")]
    SsoRefused(String),
    /// The identity provider could not be reached or answered nonsense.
    #[error("{0}")]
    IdentityProvider(String),
    /// Too many requests of this kind (e.g. break-glass past its per-minute limit).
    #[error("{0}")]
    TooManyRequests(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something that should not fail did (random generator, encoding).
    #[error("{0}")]
    Internal(String),
}

impl From<crate::secret::RandomError> for ControlError {
    fn from(e: crate::secret::RandomError) -> Self {
        ControlError::Internal(e.to_string())
    }
}
