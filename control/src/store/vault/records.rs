//! The vault's rows as the store hands them out, and how they are decoded (the same on both
//! engines). Secrets stay sealed here: opening them is [`crate::vault`]'s work.

use chrono::{DateTime, Utc};
use latch_common::vault::{AccessLevel, CredentialType};

use super::super::StoreError;
use super::super::rows::{Columns, corrupt, from_millis};

/// A vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRecord {
    /// `vlt_…`.
    pub id: String,
    /// Its organization's id.
    pub organization_id: String,
    /// Its organization's name (filled in on reads).
    pub organization: String,
    /// Name, unique in the organization.
    pub name: String,
    /// What it holds.
    pub description: String,
    /// The owning principal's id.
    pub owner_id: Option<String>,
    /// The owning principal's name (filled in on reads).
    pub owner: Option<String>,
    /// Identities it holds (filled in on reads).
    pub identities: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A grant of vault access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultGrantRecord {
    /// `vg_…`.
    pub id: String,
    /// The vault.
    pub vault_id: String,
    /// The principal it is for.
    pub principal_id: Option<String>,
    /// The principal's name (filled in on reads).
    pub principal: Option<String>,
    /// The group it is for.
    pub group_id: Option<String>,
    /// The group's name (filled in on reads).
    pub group: Option<String>,
    /// How much it opens.
    pub level: AccessLevel,
    /// When it ends.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// A host to link an identity to, with the jobs that bring the account there in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    /// The host.
    pub host_id: String,
    /// The adopt-account job (queued right after).
    pub adopt_job_id: Option<String>,
    /// The set-password job of the current password (queued after the adoption).
    pub password_job_id: Option<String>,
}

/// A host an identity is linked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedHostRecord {
    /// The host.
    pub host_id: String,
    /// Its name.
    pub hostname: String,
    /// The adoption job queued when it was linked.
    pub adopt_job_id: Option<String>,
    /// That job's status.
    pub adopt_status: Option<String>,
    /// The set-password job that gave the account the current password when it was linked.
    pub password_job_id: Option<String>,
    /// That job's status.
    pub password_status: Option<String>,
}

/// An identity: a shared account and its sealed credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// `idn_…`.
    pub id: String,
    /// The vault.
    pub vault_id: String,
    /// The vault's name (filled in on reads).
    pub vault: String,
    /// The vault's organization (filled in on reads).
    pub organization_id: String,
    /// Name, unique in the vault.
    pub name: String,
    /// The account name on the hosts.
    pub username: String,
    /// What the credential is.
    pub credential_type: CredentialType,
    /// The current credential, sealed with the identity's id as associated data.
    pub secret: Option<String>,
    /// Days between scheduled rotations.
    pub rotation_interval_days: Option<u32>,
    /// Rotate on every check-in.
    pub rotate_after_use: bool,
    /// Several checkouts at once.
    pub concurrent_checkout: bool,
    /// How many, when concurrent (1 otherwise).
    pub max_concurrent: u32,
    /// When the credential last changed.
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// When the next scheduled rotation is due.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Linked hosts (filled in on reads).
    pub hosts: Vec<LinkedHostRecord>,
    /// The latest rotation's state (filled in on reads).
    pub rotation_state: Option<String>,
    /// Open checkouts (filled in on reads).
    pub active_checkouts: u64,
}

/// How a checkout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckinHow {
    /// Its holder checked it in.
    Holder,
    /// An admin checked it in.
    Forced,
    /// The sweep checked it in at its end.
    Expired,
}

impl CheckinHow {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Holder => "holder",
            Self::Forced => "forced",
            Self::Expired => "expired",
        }
    }
}

/// A checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRecord {
    /// `co_…`.
    pub id: String,
    /// The identity.
    pub identity_id: String,
    /// The holder.
    pub principal_id: String,
    /// The holder's name (filled in on reads).
    pub holder: String,
    /// Why.
    pub reason: String,
    /// The host it is for.
    pub host_id: Option<String>,
    /// Break-glass.
    pub break_glass: bool,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub expires_at: DateTime<Utc>,
    /// When it was checked in.
    pub checked_in_at: Option<DateTime<Utc>>,
    /// How (`holder`, `forced`, `expired`).
    pub checked_in_how: Option<String>,
    /// Who checked it in.
    pub checked_in_by: Option<String>,
    /// The rotation the check-in queued.
    pub rotation_id: Option<String>,
}

/// What starts a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationCause {
    /// An admin asked.
    Manual,
    /// The identity's interval ran out.
    Scheduled,
    /// A check-in of an identity that rotates after use.
    AfterUse,
    /// The check-in of a break-glass checkout.
    BreakGlass,
    /// The first password of an account enrolled from a host.
    Enrollment,
}

impl RotationCause {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::AfterUse => "after_use",
            Self::BreakGlass => "break_glass",
            Self::Enrollment => "enrollment",
        }
    }
}

/// One host of a rotation and its job's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationHostRecord {
    /// The host.
    pub host_id: String,
    /// Its name.
    pub hostname: String,
    /// The `set-password` job.
    pub job_id: String,
    /// The job's status (`None`: not queued yet).
    pub status: Option<String>,
    /// Its error code.
    pub error_code: Option<String>,
    /// Its error message.
    pub error_message: Option<String>,
}

/// A rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRecord {
    /// `rot_…`.
    pub id: String,
    /// The identity.
    pub identity_id: String,
    /// What started it.
    pub cause: String,
    /// `pending`, `confirmed`, `failed`.
    pub state: String,
    /// The new credential, sealed with the identity's id as associated data.
    pub secret: String,
    /// Its keyed hash (for the history).
    pub secret_hash: String,
    /// Who started it.
    pub started_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it was settled.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub note: Option<String>,
    /// Per host (filled in on reads).
    pub hosts: Vec<RotationHostRecord>,
}

/// How a rotation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Every host confirmed: the new credential becomes current — this, its rotation's secret
    /// sealed again for the identity (bound to the identity's id, not the rotation's).
    Confirmed(String),
    /// A host failed: the previous credential stays.
    Failed(String),
}

/// A period of support access to an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportAccessRecord {
    /// `sa_…`.
    pub id: String,
    /// The organization.
    pub organization_id: String,
    /// Why it was enabled.
    pub reason: String,
    /// Who enabled it.
    pub enabled_by: String,
    /// When.
    pub enabled_at: DateTime<Utc>,
    /// When it ends on its own.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was disabled.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Who disabled it.
    pub disabled_by: Option<String>,
    /// `disabled` (that one) or `emergency` (all at once).
    pub disabled_how: Option<String>,
}

/// Why a vault change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultRefusal {
    /// The name is taken.
    NameTaken,
    /// The vault still holds identities.
    NotEmpty(u64),
    /// The identity is checked out.
    CheckedOut,
    /// Another checkout holds the identity (exclusive).
    AlreadyCheckedOut,
    /// As many checkouts as allowed are open.
    MaxConcurrent(u32),
    /// Gone meanwhile.
    Missing,
}

pub(super) fn bool_of(value: i64) -> bool {
    value != 0
}

fn days(value: Option<i64>) -> Option<u32> {
    value.and_then(|d| u32::try_from(d).ok())
}

pub(super) fn vault_from_row(row: &impl Columns) -> Result<VaultRecord, StoreError> {
    Ok(VaultRecord {
        id: row.text("id")?,
        organization_id: row.text("organization_id")?,
        organization: row.text("organization")?,
        name: row.text("name")?,
        description: row.text("description")?,
        owner_id: row.opt_text("owner_id")?,
        owner: row.opt_text("owner")?,
        identities: u64::try_from(row.int("identities")?).unwrap_or(0),
        created_at: from_millis(row.int("created_at")?),
    })
}

pub(super) fn grant_from_row(row: &impl Columns) -> Result<VaultGrantRecord, StoreError> {
    Ok(VaultGrantRecord {
        id: row.text("id")?,
        vault_id: row.text("vault_id")?,
        principal_id: row.opt_text("principal_id")?,
        principal: row.opt_text("principal")?,
        group_id: row.opt_text("group_id")?,
        group: row.opt_text("group_name")?,
        level: level_of(&row.text("level")?)?,
        expires_at: row.opt_int("expires_at")?.map(from_millis),
        created_at: from_millis(row.int("created_at")?),
    })
}

pub(super) fn level_of(text: &str) -> Result<AccessLevel, StoreError> {
    text.parse().map_err(|e| corrupt("vault grant level", e))
}

pub(super) fn identity_from_row(row: &impl Columns) -> Result<IdentityRecord, StoreError> {
    Ok(IdentityRecord {
        id: row.text("id")?,
        vault_id: row.text("vault_id")?,
        vault: row.text("vault")?,
        organization_id: row.text("organization_id")?,
        name: row.text("name")?,
        username: row.text("username")?,
        credential_type: row
            .text("credential_type")?
            .parse()
            .map_err(|e| corrupt("identity credential type", e))?,
        secret: row.opt_text("secret")?,
        rotation_interval_days: days(row.opt_int("rotation_interval_days")?),
        rotate_after_use: bool_of(row.int("rotate_after_use")?),
        concurrent_checkout: bool_of(row.int("concurrent_checkout")?),
        max_concurrent: u32::try_from(row.int("max_concurrent")?).unwrap_or(1),
        last_rotated_at: row.opt_int("last_rotated_at")?.map(from_millis),
        next_rotation_at: row.opt_int("next_rotation_at")?.map(from_millis),
        created_at: from_millis(row.int("created_at")?),
        hosts: Vec::new(),
        rotation_state: row.opt_text("rotation_state")?,
        active_checkouts: u64::try_from(row.int("active_checkouts")?).unwrap_or(0),
    })
}

pub(super) fn linked_host_from_row(
    row: &impl Columns,
) -> Result<(String, LinkedHostRecord), StoreError> {
    Ok((
        row.text("identity_id")?,
        LinkedHostRecord {
            host_id: row.text("host_id")?,
            hostname: row.text("hostname")?,
            adopt_job_id: row.opt_text("adopt_job_id")?,
            adopt_status: row.opt_text("adopt_status")?,
            password_job_id: row.opt_text("password_job_id")?,
            password_status: row.opt_text("password_status")?,
        },
    ))
}

pub(super) fn checkout_from_row(row: &impl Columns) -> Result<CheckoutRecord, StoreError> {
    Ok(CheckoutRecord {
        id: row.text("id")?,
        identity_id: row.text("identity_id")?,
        principal_id: row.text("principal_id")?,
        holder: row.text("holder")?,
        reason: row.text("reason")?,
        host_id: row.opt_text("host_id")?,
        break_glass: bool_of(row.int("break_glass")?),
        started_at: from_millis(row.int("started_at")?),
        expires_at: from_millis(row.int("expires_at")?),
        checked_in_at: row.opt_int("checked_in_at")?.map(from_millis),
        checked_in_how: row.opt_text("checked_in_how")?,
        checked_in_by: row.opt_text("checked_in_by")?,
        rotation_id: row.opt_text("rotation_id")?,
    })
}

pub(super) fn rotation_from_row(row: &impl Columns) -> Result<RotationRecord, StoreError> {
    Ok(RotationRecord {
        id: row.text("id")?,
        identity_id: row.text("identity_id")?,
        cause: row.text("cause")?,
        state: row.text("state")?,
        secret: row.text("secret")?,
        secret_hash: row.text("secret_hash")?,
        started_by: row.text("started_by")?,
        created_at: from_millis(row.int("created_at")?),
        finished_at: row.opt_int("finished_at")?.map(from_millis),
        note: row.opt_text("note")?,
        hosts: Vec::new(),
    })
}

pub(super) fn rotation_host_from_row(
    row: &impl Columns,
) -> Result<(String, RotationHostRecord), StoreError> {
    Ok((
        row.text("rotation_id")?,
        RotationHostRecord {
            host_id: row.text("host_id")?,
            hostname: row.text("hostname")?,
            job_id: row.text("job_id")?,
            status: row.opt_text("status")?,
            error_code: row.opt_text("error_code")?,
            error_message: row.opt_text("error_message")?,
        },
    ))
}

pub(super) fn support_access_from_row(
    row: &impl Columns,
) -> Result<SupportAccessRecord, StoreError> {
    Ok(SupportAccessRecord {
        id: row.text("id")?,
        organization_id: row.text("organization_id")?,
        reason: row.text("reason")?,
        enabled_by: row.text("enabled_by")?,
        enabled_at: from_millis(row.int("enabled_at")?),
        expires_at: row.opt_int("expires_at")?.map(from_millis),
        disabled_at: row.opt_int("disabled_at")?.map(from_millis),
        disabled_by: row.opt_text("disabled_by")?,
        disabled_how: row.opt_text("disabled_how")?,
    })
}
