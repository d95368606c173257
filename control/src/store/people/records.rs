//! The records of people and permissions as the store hands them out.

use chrono::{DateTime, Utc};
use latch_common::authz::Role;

use super::super::StoreError;
use super::super::rows::corrupt;

/// Whether a principal is a person or a non-human identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A person, signed in through the identity provider or with a local password.
    User,
    /// A pipeline, bot or AI agent authenticating with an API key.
    Service,
}

impl PrincipalKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Service => "service",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "user" => Ok(Self::User),
            "service" => Ok(Self::Service),
            other => Err(corrupt("principal", format!("unknown kind {other:?}"))),
        }
    }
}

/// A user or service user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalRecord {
    /// `usr_…` or `svc_…`.
    pub id: String,
    /// Person or service.
    pub kind: PrincipalKind,
    /// Login name or service user name; unique.
    pub name: String,
    /// Name to show.
    pub display_name: String,
    /// E-mail address, when known.
    pub email: Option<String>,
    /// Identity provider issuer and subject, for users who sign in through OIDC.
    pub idp: Option<(String, String)>,
    /// Argon2id hash of a local password (never shown).
    pub password_hash: Option<String>,
    /// When the principal was disabled; a disabled principal cannot authenticate.
    pub disabled_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Last successful authentication.
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// A group of principals; roles bound to it apply to its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// `grp_…`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The identity provider's group (claim value) whose members are made members here at sign-in.
    pub idp_group: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Who a role is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingSubject {
    /// A user or service user, by id.
    Principal(String),
    /// A group, by id.
    Group(String),
}

/// A role granted to a principal or a group, for delegated admins within a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleBinding {
    /// `rb_…`.
    pub id: String,
    /// The role.
    pub role: Role,
    /// To whom.
    pub subject: BindingSubject,
    /// The label selector scoping a `delegated_resource_admin` binding (checked text).
    pub selector: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// A service user's API key (its hash is never read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// `key_…`.
    pub id: String,
    /// The service user.
    pub principal_id: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last exchanged for a token.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Which of a principal's sessions [`super::PeopleStore::end_sessions`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSessions<'a> {
    /// This one, if it is the principal's and live.
    One(&'a str),
    /// Every live one but this one, and only while this one is live itself.
    AllBut(&'a str),
}

/// How a bearer session was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// Through the identity provider (OIDC).
    Sso,
    /// With a local password.
    Local,
    /// A service user's short-lived token, exchanged for an API key.
    Service,
}

impl SessionKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sso => "sso",
            Self::Local => "local",
            Self::Service => "service",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "sso" => Ok(Self::Sso),
            "local" => Ok(Self::Local),
            "service" => Ok(Self::Service),
            other => Err(corrupt("session", format!("unknown kind {other:?}"))),
        }
    }
}

/// A bearer session (its token's hash is never read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// `ses_…`.
    pub id: String,
    /// Whose.
    pub principal_id: String,
    /// How it was obtained.
    pub kind: SessionKind,
    /// The API key it was exchanged for (service sessions).
    pub api_key_id: Option<String>,
    /// When it began.
    pub created_at: DateTime<Utc>,
    /// When it ends by itself.
    pub expires_at: DateTime<Utc>,
    /// When it was ended early.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a second factor was last shown in it.
    pub mfa_at: Option<DateTime<Utc>>,
    /// The address it was started from.
    pub address: Option<String>,
}

/// A user's TOTP factor (the secrets stay sealed here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpRecord {
    /// The secret in force, sealed under the audit key for this principal
    /// ([`crate::audit::AuditKey::seal`]).
    pub sealed_secret: String,
    /// When a first code proved the enrollment; an unconfirmed factor steps nothing up but
    /// its first code.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// A replacement being enrolled (sealed): the confirmed secret stays in force until a code
    /// of this one is shown.
    pub pending: Option<String>,
    /// The last time step whose code was accepted: a code is used once.
    pub last_step: i64,
    /// Wrong codes since the last good one.
    pub failures: i64,
    /// Codes are refused until then.
    pub locked_until: Option<DateTime<Utc>>,
}

/// A TOTP code that matched, to be accepted once ([`PeopleStore::use_totp_step`]).
#[derive(Debug, Clone, Copy)]
pub struct TotpUse<'a> {
    /// Whose factor.
    pub principal_id: &'a str,
    /// The session that showed it (its `mfa_at` is set).
    pub session_id: &'a str,
    /// The time step the code belongs to.
    pub step: i64,
    /// The sealed secret that matched, as read.
    pub matched: &'a str,
    /// Whether that was the replacement being enrolled.
    pub pending: bool,
}

/// Which single sign-on flow a pending sign-in uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsoFlow {
    /// Authorization code with PKCE and a loopback redirect.
    Code,
    /// The device authorization grant (RFC 8628).
    Device,
}

impl SsoFlow {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Code => "code",
            Self::Device => "device",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "code" => Ok(Self::Code),
            "device" => Ok(Self::Device),
            other => Err(corrupt("sso login", format!("unknown kind {other:?}"))),
        }
    }
}

/// A sign-in through the identity provider that has begun and not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoLoginRecord {
    /// The OAuth `state` (code flow) or `sso_…` (device flow).
    pub id: String,
    /// Which flow.
    pub flow: SsoFlow,
    /// The nonce the ID token must carry (code flow).
    pub nonce: Option<String>,
    /// The PKCE verifier, sealed (code flow).
    pub sealed_pkce_verifier: Option<String>,
    /// The loopback redirect URI (code flow).
    pub redirect_uri: Option<String>,
    /// The device code, sealed (device flow).
    pub sealed_device_code: Option<String>,
    /// When it began.
    pub created_at: DateTime<Utc>,
    /// When it can no longer be finished.
    pub expires_at: DateTime<Utc>,
    /// When it was finished (a sign-in finishes once).
    pub used_at: Option<DateTime<Utc>>,
}

/// Why a change was not made (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeopleRefusal {
    /// A record with that name already exists.
    AlreadyExists(&'static str),
    /// A record it names does not exist.
    NotFound(&'static str),
}
