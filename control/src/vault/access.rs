//! Who may do what with a vault: the RBAC permissions (`pam_vaults.view`, `pam_vaults.manage`,
//! `pam_vaults.break_glass`) and the per-vault grants (`view_vault` < `view_credentials` <
//! `checkout`, to users or groups, optional expiry; group grants are inherited). A vault's
//! owner holds every level without a grant.
//!
//! Vaults carry no host labels, so a delegated binding (`delegated_resource_admin`) gives no
//! vault permission: only bindings in force everywhere do.
//!
//! While support access is in force ([`super::support`]), the support group sees an
//! organization's vaults and identities too — metadata only.
//!
//! A caller who may not see a vault gets "does not exist", so vault names do not leak.

use chrono::Utc;
use latch_common::authz::Permission;
use latch_common::vault::AccessLevel;

use crate::people::{Authority, Scope};
use crate::store::vault::{IdentityRecord, VaultRecord};
use crate::{Control, ControlError};

/// What a caller wants to do with a vault or one of its identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// See it and its identities' metadata: `pam_vaults.view`, or any grant.
    View,
    /// Reveal a credential: a grant of `view_credentials` or more.
    Reveal,
    /// Check a credential out: a grant of `checkout`.
    Checkout,
    /// Change it, its identities and grants, rotate: `pam_vaults.manage`.
    Manage,
}

/// Whether the caller holds `permission` everywhere (delegations do not count for vaults).
pub(crate) fn holds(by: &Authority, permission: Permission) -> bool {
    matches!(by.scope(permission), Some(Scope::Everywhere))
}

impl Control {
    /// The caller's level on `vault` from grants in force now (directly and through groups)
    /// and ownership.
    pub(crate) async fn vault_level(
        &self,
        by: &Authority,
        vault: &VaultRecord,
    ) -> Result<Option<AccessLevel>, ControlError> {
        // The owner (its creator) bypasses grants only while it still may manage vaults: a
        // creator demoted since keeps nothing through ownership.
        if vault.owner_id.as_deref() == Some(by.principal.id.as_str())
            && holds(by, Permission::PamVaultsManage)
        {
            return Ok(Some(AccessLevel::Checkout));
        }
        Ok(self
            .store
            .vault_access(&by.principal.id, Utc::now())
            .await?
            .into_iter()
            .filter(|(id, _)| *id == vault.id)
            .map(|(_, level)| level)
            .max())
    }

    /// Refuses `need` on `vault` unless the caller may; a caller who may not even see the
    /// vault is told it does not exist.
    pub(crate) async fn require_vault(
        &self,
        by: &Authority,
        vault: &VaultRecord,
        need: Need,
    ) -> Result<(), ControlError> {
        let level = self.vault_level(by, vault).await?;
        let sees = level.is_some()
            || holds(by, Permission::PamVaultsView)
            || holds(by, Permission::PamVaultsManage)
            || self.support_sees(by, &vault.organization_id).await?;
        if !sees {
            return Err(ControlError::NotFound {
                what: "vault",
                key: vault.name.clone(),
            });
        }
        let wanted = match need {
            Need::View => return Ok(()),
            Need::Manage => {
                if holds(by, Permission::PamVaultsManage) {
                    return Ok(());
                }
                return Err(ControlError::Forbidden(format!(
                    "{} lacks the permission pam_vaults.manage (everywhere) for vault {}; it comes with the role pam_admin or resource_admin",
                    by.actor(),
                    vault.name
                )));
            }
            Need::Reveal => AccessLevel::ViewCredentials,
            Need::Checkout => AccessLevel::Checkout,
        };
        if level.is_some_and(|l| l >= wanted) {
            return Ok(());
        }
        Err(ControlError::Forbidden(format!(
            "{} needs a grant of {wanted} or more on vault {} (it has {}); ask an admin: `latchctl vaults grant {} --user {} --level {wanted}`",
            by.actor(),
            vault.name,
            level.map_or("none", AccessLevel::as_str),
            vault.name,
            by.principal.name
        )))
    }

    /// The vault `key` (id or name) if the caller may see it.
    pub(crate) async fn vault_for(
        &self,
        by: &Authority,
        key: &str,
        need: Need,
    ) -> Result<VaultRecord, ControlError> {
        let not_found = || ControlError::NotFound {
            what: "vault",
            key: key.to_owned(),
        };
        // Only the vaults the caller may see count, so an ambiguous name says nothing about
        // vaults it may not see.
        let mut found = Vec::new();
        for vault in self.store.find_vaults(key).await? {
            if self.require_vault(by, &vault, Need::View).await.is_ok() {
                found.push(vault);
            }
        }
        let vault = match found.len() {
            0 => return Err(not_found()),
            1 => found.remove(0),
            n => {
                return Err(ControlError::Conflict(format!(
                    "vault name '{key}' is used in {n} organizations; use the vault id (see `latchctl vaults list`)"
                )));
            }
        };
        self.require_vault(by, &vault, need)
            .await
            .map_err(|e| match e {
                ControlError::NotFound { .. } => not_found(),
                other => other,
            })?;
        Ok(vault)
    }

    /// The identity `id` and its vault, if the caller may do `need` with it.
    pub(crate) async fn identity_for(
        &self,
        by: &Authority,
        id: &str,
        need: Need,
    ) -> Result<(IdentityRecord, VaultRecord), ControlError> {
        let not_found = || ControlError::NotFound {
            what: "identity",
            key: id.to_owned(),
        };
        let identity = self.store.identity(id).await?.ok_or_else(not_found)?;
        let vault = self
            .store
            .find_vaults(&identity.vault_id)
            .await?
            .into_iter()
            .find(|v| v.id == identity.vault_id)
            .ok_or_else(not_found)?;
        self.require_vault(by, &vault, need)
            .await
            .map_err(|e| match e {
                ControlError::NotFound { .. } => not_found(),
                other => other,
            })?;
        Ok((identity, vault))
    }
}
