//! Organizations and their data keys: each organization has its own random AES-256 data key,
//! stored only wrapped by the master key (bound to the organization's id), and a canary — a
//! known text sealed under the data key — that proves at start that the master key opens it.

use chrono::{DateTime, Utc};
use latch_common::authz::Permission;
use latch_common::names::ValidationError;
use latch_common::vault::{
    CreateOrganizationRequest, MAX_CHECKOUT_MINUTES, OrganizationView, UpdateOrganizationRequest,
    validate_vault_name,
};
use serde_json::json;

use super::envelope::{EnvelopeError, KEY_LEN, SecretKey};
use super::{VaultError, random_id};
use crate::audit::AuditEvent;
use crate::people::Authority;
use crate::store::Store;
use crate::store::vault::{OrganizationRecord, OrganizationRefusal};
use crate::{Control, ControlError};

/// The organization made at first start.
pub const DEFAULT_ORGANIZATION: &str = "default";

/// The text sealed as every organization's canary.
const CANARY: &[u8] = b"latch organization canary v1";

/// The associated data of an organization's canary (its data key is bound to the bare id).
fn canary_record(organization_id: &str) -> String {
    format!("{organization_id}/canary")
}

/// A new organization `name` with a fresh data key wrapped under `master` (nothing stored).
pub fn new_organization(
    master: &SecretKey,
    name: &str,
    now: DateTime<Utc>,
) -> Result<OrganizationRecord, EnvelopeError> {
    let id = random_id("org_")?;
    let data_key = SecretKey::generate(random_id("dk_")?)?;
    Ok(OrganizationRecord {
        wrapped_data_key: master.seal(&id, data_key.expose_secret_bytes())?,
        canary: data_key.seal(&canary_record(&id), CANARY)?,
        data_key_id: data_key.id().to_owned(),
        id,
        name: name.to_owned(),
        created_at: now,
        break_glass_minutes: None,
    })
}

/// Makes and stores organization `name` (audited as `organization.created` by `actor`).
pub async fn create_organization(
    store: &dyn Store,
    master: &SecretKey,
    name: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<OrganizationRecord, VaultError> {
    let organization = new_organization(master, name, now)?;
    let event = AuditEvent::new(actor, "organization.created").detail(serde_json::json!({
        "organization_id": organization.id,
        "name": organization.name,
        "data_key_id": organization.data_key_id,
        "master_key_id": master.id(),
    }));
    match store.insert_organization(&organization, event, now).await? {
        Ok(()) => Ok(organization),
        Err(OrganizationRefusal::NameTaken) => Err(VaultError::OrganizationExists {
            name: name.to_owned(),
        }),
    }
}

/// The data key of `organization`, unwrapped with `master`, after its canary was opened with it.
pub fn open_data_key(
    master: &SecretKey,
    organization: &OrganizationRecord,
) -> Result<SecretKey, EnvelopeError> {
    let raw = master.open(&organization.id, &organization.wrapped_data_key)?;
    let raw: [u8; KEY_LEN] = raw.try_into().map_err(|_| EnvelopeError::Malformed {
        detail: "a wrapped data key is not 32 bytes long",
    })?;
    let key = SecretKey::from_bytes(organization.data_key_id.clone(), raw)?;
    let record = canary_record(&organization.id);
    if key.open(&record, &organization.canary)? != CANARY {
        return Err(EnvelopeError::Rejected {
            key_id: key.id().to_owned(),
            record,
        });
    }
    Ok(key)
}

impl Control {
    /// How long a break-glass checkout of `organization` lasts: its own setting, or the
    /// server's.
    pub(crate) fn break_glass_duration(
        &self,
        organization: &OrganizationRecord,
    ) -> chrono::Duration {
        organization
            .break_glass_minutes
            .map_or(self.config.vault.break_glass_duration, |m| {
                chrono::Duration::minutes(i64::from(m))
            })
    }

    async fn organization_view(
        &self,
        organization: OrganizationRecord,
    ) -> Result<OrganizationView, ControlError> {
        let vaults = self
            .store
            .vaults()
            .await?
            .iter()
            .filter(|v| v.organization_id == organization.id)
            .count();
        Ok(OrganizationView {
            break_glass_minutes: u32::try_from(
                self.break_glass_duration(&organization).num_minutes(),
            )
            .unwrap_or(u32::MAX),
            break_glass_default: organization.break_glass_minutes.is_none(),
            vaults: vaults as u64,
            id: organization.id,
            name: organization.name,
            created_at: organization.created_at,
        })
    }

    /// Every organization (anyone who may see vaults, or change settings).
    pub async fn list_organizations(
        &self,
        by: &Authority,
    ) -> Result<Vec<OrganizationView>, ControlError> {
        if !(super::access::holds(by, Permission::PamVaultsView)
            || super::access::holds(by, Permission::PamVaultsManage))
        {
            by.require_everywhere(Permission::SettingsManage)?;
        }
        let mut views = Vec::new();
        for organization in self.store.organizations().await? {
            views.push(self.organization_view(organization).await?);
        }
        Ok(views)
    }

    /// Makes an organization with a data key of its own (`settings.manage`).
    pub async fn create_organization_from(
        &self,
        by: &Authority,
        request: &CreateOrganizationRequest,
    ) -> Result<OrganizationView, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        validate_vault_name("name", &request.name)?;
        let master = self.master_key()?;
        let organization =
            create_organization(&*self.store, master, &request.name, &by.actor(), Utc::now())
                .await
                .map_err(|e| match e {
                    VaultError::OrganizationExists { name } => ControlError::AlreadyExists {
                        what: "organization",
                        key: name,
                    },
                    other => ControlError::Internal(other.to_string()),
                })?;
        self.organization_view(organization).await
    }

    /// Sets an organization's break-glass duration (`settings.manage`; `0`: the server's).
    pub async fn update_organization(
        &self,
        by: &Authority,
        key: &str,
        request: &UpdateOrganizationRequest,
    ) -> Result<OrganizationView, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        let organization = self.organization_named(Some(key)).await?;
        if let Some(minutes) = request.break_glass_minutes {
            if minutes > MAX_CHECKOUT_MINUTES {
                return Err(ValidationError::new(
                    "break_glass_minutes",
                    format!(
                        "must be 1 to {MAX_CHECKOUT_MINUTES} minutes, or 0 for the server's default"
                    ),
                )
                .into());
            }
            let minutes = (minutes != 0).then_some(minutes);
            let event = by.event("organization.updated").detail(json!({
                "organization_id": organization.id,
                "name": organization.name,
                "break_glass_minutes": minutes,
            }));
            self.store
                .set_organization_break_glass(&organization.id, minutes, event, Utc::now())
                .await?;
        }
        let organization = self.organization_named(Some(&organization.id)).await?;
        self.organization_view(organization).await
    }
}
