//! Bodies of the credential-vault endpoints: vaults and their access grants, identities (the
//! shared accounts whose credentials Latch keeps), reveal, checkout/checkin, rotations and
//! one-click enrollment of a host account (`/v1/vaults`, `/v1/identities`, `/v1/checkouts`,
//! `/v1/rotations`, `/v1/hosts/{host}/enroll-account`).
//!
//! Requests refuse unknown fields; the checks every server and client shares live here
//! ([`validate_reason`], [`validate_checkout_minutes`], [`validate_vault_name`]).
//! Secrets appear only in [`RevealedSecret`] (reveal, checkout, break-glass) and in requests
//! that set one; their `Debug` output is redacted.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::ValidationError;

/// Shortest checkout, in minutes.
pub const MIN_CHECKOUT_MINUTES: u32 = 5;
/// Longest checkout, in minutes (a day).
pub const MAX_CHECKOUT_MINUTES: u32 = 1440;
/// Longest reason for a checkout or break-glass, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Most hosts one identity may be linked to.
pub const MAX_LINKED_HOSTS: usize = 256;
/// Most concurrent checkouts an identity may allow.
pub const MAX_CONCURRENT_CHECKOUTS: u32 = 100;
/// Longest rotation interval, in days.
pub const MAX_ROTATION_DAYS: u32 = 3650;
/// Longest stored secret (a private key), in bytes.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// How much of a vault a grant opens; each level includes the ones below it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AccessLevel {
    /// See the vault and its identities' metadata.
    ViewVault,
    /// Also reveal credentials.
    ViewCredentials,
    /// Also check credentials out.
    Checkout,
}

impl AccessLevel {
    /// Every level, lowest first.
    pub const ALL: [AccessLevel; 3] = [Self::ViewVault, Self::ViewCredentials, Self::Checkout];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ViewVault => "view_vault",
            Self::ViewCredentials => "view_credentials",
            Self::Checkout => "checkout",
        }
    }
}

impl fmt::Display for AccessLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccessLevel {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == text)
            .ok_or_else(|| {
                ValidationError::new(
                    "level",
                    format!(
                        "unknown access level {text:?}; the levels are view_vault, view_credentials and checkout"
                    ),
                )
            })
    }
}

/// What an identity's credential is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// A password (rotated by Latch on the linked hosts).
    #[default]
    Password,
    /// An SSH private key (stored and handed out; not rotated on hosts).
    SshKey,
}

impl CredentialType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::SshKey => "ssh_key",
        }
    }
}

impl FromStr for CredentialType {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "password" => Ok(Self::Password),
            "ssh_key" => Ok(Self::SshKey),
            _ => Err(ValidationError::new(
                "credential_type",
                format!("unknown credential type {text:?}; use password or ssh_key"),
            )),
        }
    }
}

/// A vault as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultView {
    /// Record id (`vlt_…`).
    pub id: String,
    /// Name, unique in its organization.
    pub name: String,
    /// What it holds.
    pub description: String,
    /// The organization's name.
    pub organization: String,
    /// The principal who owns it (bypasses grants).
    pub owner: Option<String>,
    /// How many identities it holds.
    pub identities: u64,
    /// The caller's own access to it (`null`: none beyond `pam_vaults.view`).
    pub my_access: Option<AccessLevel>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/vaults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVaultRequest {
    /// Name: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9._@-]{0,63}$")]
    pub name: String,
    /// What it holds.
    #[serde(default)]
    pub description: String,
    /// The organization (default: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// `PATCH /v1/vaults/{vault}`: fields left out stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVaultRequest {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A grant of vault access to a user or a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultGrantView {
    /// Record id (`vg_…`).
    pub id: String,
    /// The vault's id.
    pub vault_id: String,
    /// The user or service user it is for (its name), if to a principal.
    pub principal: Option<String>,
    /// The group it is for (its name), if to a group.
    pub group: Option<String>,
    /// How much it opens.
    pub level: AccessLevel,
    /// When it ends (`null`: until removed).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/vaults/{vault}/grants`: exactly one of `user` and `group`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVaultGrantRequest {
    /// A user's or service user's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How much it opens.
    pub level: AccessLevel,
    /// When it ends (must be in the future).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A linked host of an identity and the state of the account there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LinkedHostView {
    /// Host id.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// The job that adopted the account there (`null`: none needed or not yet queued).
    pub adopt_job_id: Option<String>,
    /// `pending`, `confirmed` or `failed`: the adoption job's status.
    pub adopt_status: Option<String>,
    /// The job that set the current password there when the host was linked (`null`: none,
    /// e.g. the first password comes from a rotation).
    #[serde(default)]
    pub password_job_id: Option<String>,
    /// That job's status.
    #[serde(default)]
    pub password_status: Option<String>,
}

/// An identity (a shared account) as callers see it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IdentityView {
    /// Record id (`idn_…`).
    pub id: String,
    /// The vault's id.
    pub vault_id: String,
    /// The vault's name.
    pub vault: String,
    /// Name, unique in its vault.
    pub name: String,
    /// The account name on the hosts.
    pub username: String,
    /// What the credential is.
    pub credential_type: CredentialType,
    /// Whether a credential is stored.
    pub has_secret: bool,
    /// Days between scheduled rotations (`null`: not scheduled).
    pub rotation_interval_days: Option<u32>,
    /// Whether every check-in rotates the credential.
    pub rotate_after_use: bool,
    /// Whether several people may hold it checked out at once.
    pub concurrent_checkout: bool,
    /// How many at once, when concurrent.
    pub max_concurrent_checkouts: u32,
    /// When the credential last changed.
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// When the next scheduled rotation is due.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// The latest rotation's state (`pending`, `confirmed`, `failed`).
    pub rotation_state: Option<String>,
    /// Checkouts open now.
    pub active_checkouts: u64,
    /// The hosts the account lives on.
    pub hosts: Vec<LinkedHostView>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/vaults/{vault}/identities`.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIdentityRequest {
    /// Name, unique in the vault (the vault-name rules).
    pub name: String,
    /// The account name on the hosts (`^[a-z_][a-z0-9_-]{0,31}$`).
    pub username: String,
    /// What the credential is (default: password).
    #[serde(default)]
    pub credential_type: CredentialType,
    /// The current credential; for a password with linked hosts it may be left out, and
    /// Latch makes one and sets it on the hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Days between scheduled rotations (1–3650).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_interval_days: Option<u32>,
    /// Rotate on every check-in.
    #[serde(default)]
    pub rotate_after_use: bool,
    /// Allow several checkouts at once.
    #[serde(default)]
    pub concurrent_checkout: bool,
    /// How many at once (1–100; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_checkouts: Option<u32>,
    /// Hosts (ids or names) the account lives on; Latch adopts it there.
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl fmt::Debug for CreateIdentityRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateIdentityRequest")
            .field("name", &self.name)
            .field("username", &self.username)
            .field("credential_type", &self.credential_type)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// `PATCH /v1/identities/{identity}`: fields left out stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIdentityRequest {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Days between scheduled rotations; `0` turns scheduling off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_interval_days: Option<u32>,
    /// Rotate on every check-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_after_use: Option<bool>,
    /// Allow several checkouts at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_checkout: Option<bool>,
    /// How many at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_checkouts: Option<u32>,
    /// Replaces the linked hosts (ids or names); new ones get an adoption job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
}

/// A credential handed out (reveal, checkout, break-glass).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevealedSecret {
    /// The identity's id.
    pub identity_id: String,
    /// The account name on the hosts.
    pub username: String,
    /// What the credential is.
    pub credential_type: CredentialType,
    /// The credential.
    pub secret: String,
}

impl fmt::Debug for RevealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevealedSecret")
            .field("identity_id", &self.identity_id)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// `POST /v1/identities/{identity}/checkout`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// Why (1–500 characters).
    pub reason: String,
    /// How long (5–1440 minutes).
    pub duration_minutes: u32,
    /// The host it is for (id or name; must be linked to the identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `POST /v1/identities/{identity}/break-glass`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRequest {
    /// Why (1–500 characters).
    pub reason: String,
}

/// A checkout as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckoutView {
    /// Record id (`co_…`).
    pub id: String,
    /// The identity's id.
    pub identity_id: String,
    /// Who holds it (name).
    pub holder: String,
    /// Why.
    pub reason: String,
    /// The host it is for.
    pub host_id: Option<String>,
    /// Whether it is a break-glass checkout.
    pub break_glass: bool,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ends on its own.
    pub expires_at: DateTime<Utc>,
    /// When it was checked in.
    pub checked_in_at: Option<DateTime<Utc>>,
    /// How: `holder`, `forced` (by an admin, who is named) or `expired`.
    pub checked_in_how: Option<String>,
    /// The rotation the check-in queued.
    pub rotation_id: Option<String>,
}

/// What a checkout or break-glass returns: the checkout and the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckoutGranted {
    /// The checkout.
    pub checkout: CheckoutView,
    /// The credential.
    pub credential: RevealedSecret,
}

/// `POST /v1/checkouts/{checkout}/checkin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckinRequest {
    /// Check in someone else's checkout (needs `pam_vaults.manage`; audited).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/identities/{identity}/rotate`.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Set this password instead of a generated one (checked against the policy and the
    /// last 10 passwords).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl fmt::Debug for RotateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateRequest")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One host of a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RotationHostView {
    /// Host id.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// The `set-password` job.
    pub job_id: String,
    /// `pending`, `confirmed` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error_code: Option<String>,
    /// The host's message.
    pub error_message: Option<String>,
}

/// A rotation: its state is the aggregate of its hosts' jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RotationView {
    /// Record id (`rot_…`).
    pub id: String,
    /// The identity's id.
    pub identity_id: String,
    /// `manual`, `scheduled`, `after_use`, `break_glass` or `enrollment`.
    pub trigger: String,
    /// `pending` (some host has not confirmed), `confirmed` (every host did; the new
    /// credential is current) or `failed` (a host failed; the previous credential is kept).
    pub state: String,
    /// Hosts still pending, by name (a rotation waiting for them names them).
    pub waiting_for: Vec<String>,
    /// Per host.
    pub hosts: Vec<RotationHostView>,
    /// Who started it.
    pub started_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it was settled.
    pub finished_at: Option<DateTime<Utc>>,
}

/// `POST /v1/hosts/{host}/enroll-account`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollAccountRequest {
    /// The existing account on the host.
    pub user: String,
    /// The vault (id or name) that will hold it.
    pub vault: String,
    /// The identity's name (default: `<user>@<hostname>`, shortened to the name rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What an enrollment made: the identity and the rotation that sets its first password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrolledAccount {
    /// The identity.
    pub identity: IdentityView,
    /// The rotation (its `set-password` job follows the adoption job).
    pub rotation: RotationView,
}

/// An organization: vaults belong to one, and its data key seals their secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrganizationView {
    /// Record id (`org_…`).
    pub id: String,
    /// Unique name (the first one is `default`).
    pub name: String,
    /// How long its break-glass checkouts last, in minutes.
    pub break_glass_minutes: u32,
    /// Whether that is the server's default (`--break-glass-duration`) rather than its own.
    pub break_glass_default: bool,
    /// Its vaults.
    pub vaults: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/organizations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganizationRequest {
    /// Name (the vault-name rules).
    #[schema(pattern = "^[a-z0-9][a-z0-9._@-]{0,63}$")]
    pub name: String,
}

/// `PATCH /v1/organizations/{organization}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrganizationRequest {
    /// How long its break-glass checkouts last, 1–1440 minutes; `0`: the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_minutes: Option<u32>,
}

/// Longest support access, in days.
pub const MAX_SUPPORT_DAYS: u32 = 365;

/// A period of support access as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SupportAccessView {
    /// Record id (`sa_…`).
    pub id: String,
    /// The organization's name.
    pub organization: String,
    /// Why it was enabled.
    pub reason: String,
    /// Who enabled it.
    pub enabled_by: String,
    /// When.
    pub enabled_at: DateTime<Utc>,
    /// When it ends on its own (`null`: when disabled).
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether it is in force now.
    pub active: bool,
    /// When it was disabled.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Who disabled it.
    pub disabled_by: Option<String>,
    /// `disabled` (that one) or `emergency` (all at once).
    pub disabled_how: Option<String>,
}

/// `POST /v1/support-access`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableSupportAccessRequest {
    /// Why (1–500 characters).
    pub reason: String,
    /// How many days it lasts (1–365; `null`: until disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    /// The organization (default: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// `POST /v1/support-access/emergency-disable`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmergencyDisableRequest {
    /// Why (1–500 characters).
    pub reason: String,
}

/// What an emergency disable ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EmergencyDisabled {
    /// How many periods of support access were in force and ended.
    pub disabled: u64,
}

/// Checks a vault or identity name: 1–64 of `a-z 0-9 . _ - @`, starting with a letter or digit.
pub fn validate_vault_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > 64 {
        return Err(ValidationError::new(field, "must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(ValidationError::new(
            field,
            "must start with a lowercase letter or a digit",
        ));
    }
    if let Some(bad) = name.chars().find(|c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@'))
    }) {
        return Err(ValidationError::new(
            field,
            format!("contains {bad:?}; only a-z, 0-9, '.', '_', '-' and '@' are allowed"),
        ));
    }
    Ok(())
}

/// Checks a checkout or break-glass reason: 1–500 characters, no control characters.
pub fn validate_reason(reason: &str) -> Result<(), ValidationError> {
    let chars = reason.chars().count();
    if reason.trim().is_empty() {
        return Err(ValidationError::new(
            "reason",
            "is required: say why you need the credential",
        ));
    }
    if chars > MAX_REASON_CHARS {
        return Err(ValidationError::new(
            "reason",
            format!("is {chars} characters long; at most {MAX_REASON_CHARS} are allowed"),
        ));
    }
    if reason
        .chars()
        .any(|c| c.is_control() || is_invisible_format(c))
    {
        return Err(ValidationError::new(
            "reason",
            "must not contain control or invisible formatting characters (newlines, tabs, NUL, bidirectional overrides, zero-width characters)",
        ));
    }
    Ok(())
}

/// Whether `c` is an invisible formatting character that could make an audit entry read other
/// than it is: bidirectional controls, zero-width characters, the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Checks a checkout's duration: 5–1440 minutes.
pub fn validate_checkout_minutes(minutes: u32) -> Result<(), ValidationError> {
    if !(MIN_CHECKOUT_MINUTES..=MAX_CHECKOUT_MINUTES).contains(&minutes) {
        return Err(ValidationError::new(
            "duration_minutes",
            format!(
                "is {minutes}; a checkout lasts {MIN_CHECKOUT_MINUTES} to {MAX_CHECKOUT_MINUTES} minutes"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_round_trip() {
        assert!(AccessLevel::ViewVault < AccessLevel::ViewCredentials);
        assert!(AccessLevel::ViewCredentials < AccessLevel::Checkout);
        for level in AccessLevel::ALL {
            assert_eq!(level.as_str().parse::<AccessLevel>().unwrap(), level);
        }
        assert!("admin".parse::<AccessLevel>().is_err());
    }

    #[test]
    fn reasons_and_durations_have_bounds() {
        assert!(validate_reason("fix the disk").is_ok());
        assert!(validate_reason("").is_err());
        assert!(validate_reason("   ").is_err());
        assert!(validate_reason(&"é".repeat(500)).is_ok());
        assert!(validate_reason(&"é".repeat(501)).is_err());
        assert!(validate_reason("a\nb").is_err());
        assert!(validate_reason("fix \u{202E}kcab").is_err());
        assert!(validate_reason("zero\u{200B}width").is_err());
        assert!(validate_checkout_minutes(4).is_err());
        assert!(validate_checkout_minutes(5).is_ok());
        assert!(validate_checkout_minutes(1440).is_ok());
        assert!(validate_checkout_minutes(1441).is_err());
    }

    #[test]
    fn vault_names_follow_the_rules() {
        assert!(validate_vault_name("name", "prod-db.root@db1").is_ok());
        assert!(validate_vault_name("name", "").is_err());
        assert!(validate_vault_name("name", "-x").is_err());
        assert!(validate_vault_name("name", "Prod").is_err());
        assert!(validate_vault_name("name", "a b").is_err());
        assert!(validate_vault_name("name", &"a".repeat(65)).is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let revealed = RevealedSecret {
            identity_id: "idn_1".into(),
            username: "app".into(),
            credential_type: CredentialType::Password,
            secret: "hunter2-secret".into(),
        };
        assert!(!format!("{revealed:?}").contains("hunter2"));
        let request = RotateRequest {
            password: Some("hunter2-secret".into()),
        };
        assert!(!format!("{request:?}").contains("hunter2"));
        let create = CreateIdentityRequest {
            secret: Some("hunter2-secret".into()),
            ..Default::default()
        };
        assert!(!format!("{create:?}").contains("hunter2"));
    }
}
