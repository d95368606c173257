//! Bodies of the people-and-permissions endpoints: users, groups, role bindings, service users
//! and their API keys, TOTP enrollment and local sign-in (`/v1/users`, `/v1/groups`,
//! `/v1/roles`, `/v1/role-bindings`, `/v1/service-users`, `/v1/mfa/totp`, `/v1/login/local`).
//!
//! Requests refuse unknown fields, so a misspelt option is an error rather than ignored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::authz::{Permission, Role};

/// A user or service user as admins see it (never a password hash or key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrincipalView {
    /// Record id (`usr_…` or `svc_…`).
    pub id: String,
    /// `user` or `service`.
    pub kind: String,
    /// Login name.
    pub name: String,
    /// Name to show.
    pub display_name: String,
    /// E-mail address.
    pub email: Option<String>,
    /// Identity-provider issuer, for users who sign in through single sign-on.
    pub idp_issuer: Option<String>,
    /// Whether the user has a local password.
    pub local_password: bool,
    /// When it was disabled (its sessions and tokens ended then).
    pub disabled_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last signed in or exchanged a key.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Groups it is in (filled in by `show`, empty in lists).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Roles that apply to it, directly and through groups (filled in by `show`).
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Login name: 1–64 of `a-z 0-9 . _ - @`.
    #[schema(pattern = "^[a-z0-9][a-z0-9._@-]{0,63}$")]
    pub name: String,
    /// Name to show (default: the login name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A local password (none: the user signs in through the identity provider only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `PUT /v1/users/{name}/password`: a new local password, or `null` to remove local sign-in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordRequest {
    /// The new password (8 to 1024 characters); `null`: no local sign-in any more.
    pub password: Option<String>,
}

/// A group as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    /// Record id (`grp_…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The identity provider's group whose members join it at sign-in.
    pub idp_group: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Member names (filled in by `show`, empty in lists).
    #[serde(default)]
    pub members: Vec<String>,
}

/// `POST /v1/groups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// Name: 1–64 of `a-z 0-9 . _ - @`.
    #[schema(pattern = "^[a-z0-9][a-z0-9._@-]{0,63}$")]
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// The identity provider's group (the `groups` claim value) mapped onto it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_group: Option<String>,
}

/// A role and what it allows (`GET /v1/roles`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleView {
    /// The role.
    pub role: Role,
    /// Whether a binding of it is limited to hosts matching a label selector.
    pub delegated: bool,
    /// Its permissions.
    pub permissions: Vec<Permission>,
}

/// Who a role binding gives its role to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A user or service user.
    Principal,
    /// A group (its members get the role).
    Group,
}

/// A role binding (`GET /v1/role-bindings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleBindingView {
    /// Record id (`rb_…`).
    pub id: String,
    /// The role given.
    pub role: Role,
    /// To a principal or a group.
    pub subject_kind: SubjectKind,
    /// The principal's or group's id.
    pub subject_id: String,
    /// Its name (empty if it no longer resolves).
    pub subject_name: String,
    /// The hosts a delegated binding covers.
    pub selector: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/role-bindings`: exactly one of `user`, `service_user`, `group`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindRoleRequest {
    /// The role to give.
    pub role: Option<Role>,
    /// A user's name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A service user's name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_user: Option<String>,
    /// A group's name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// For `delegated_resource_admin`: the hosts it covers (`team=db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// `POST /v1/service-users`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceUserRequest {
    /// Name: 1–64 of `a-z 0-9 . _ - @`.
    #[schema(pattern = "^[a-z0-9][a-z0-9._@-]{0,63}$")]
    pub name: String,
    /// Roles to bind at once (a delegated role needs a selector: bind it afterwards).
    #[serde(default)]
    pub roles: Vec<Role>,
}

/// A new API key, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewApiKeyResponse {
    /// The service user.
    pub service_user: String,
    /// The key's id (to revoke it).
    pub key_id: String,
    /// The key itself (`latch_key_…`): store it in the pipeline's secret store; it is not shown again.
    pub api_key: String,
}

/// `POST /v1/service-users` answer: the new service user and its first API key (shown once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedServiceUser {
    /// The service user.
    pub service_user: PrincipalView,
    /// Its first API key.
    pub key: NewApiKeyResponse,
}

/// An API key's record (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// Its id.
    pub id: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When a token was last issued for it.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked (its tokens ended then).
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One of the caller's own live sessions (`GET /v1/sessions`); never its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Its id (`ses_…`): `DELETE /v1/sessions/{id}` ends it.
    pub id: String,
    /// How it began: `sso`, `local` or `service`.
    pub kind: String,
    /// When it began.
    pub created_at: DateTime<Utc>,
    /// When it ends by itself.
    pub expires_at: DateTime<Utc>,
    /// When a second factor was last shown in it.
    pub mfa_at: Option<DateTime<Utc>>,
    /// The address it began from, when known.
    pub address: Option<String>,
    /// Whether it is the session making this request.
    pub current: bool,
}

/// `POST /v1/sessions/end-others` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndedSessions {
    /// How many sessions ended.
    pub ended: u64,
}

/// `POST /v1/mfa/totp`: a new factor to add to an authenticator app.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrollResponse {
    /// The secret, base32.
    pub secret: String,
    /// The `otpauth://` URI (what the QR code holds).
    pub otpauth_uri: String,
}

/// `POST /v1/mfa/totp/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpVerifyRequest {
    /// The 6-digit code the authenticator shows now.
    pub code: String,
}

/// `POST /v1/mfa/totp/verify` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TotpVerifyResponse {
    /// When the second factor was shown (the step-up counts from then).
    pub mfa_at: DateTime<Utc>,
}

/// `POST /v1/login/local`: a local user's name and password.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalLoginRequest {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
}

/// `PUT /v1/hosts/{host}/labels`: the host's labels, replacing the ones it has.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLabelsRequest {
    /// Every label the host should have.
    pub labels: crate::labels::Labels,
}
