//! Vaults and their access grants: create, rename, delete (only when empty), grant and
//! revoke access. Every change is audited with its actor.

use chrono::Utc;
use latch_common::names::ValidationError;
use latch_common::vault::{
    CreateVaultGrantRequest, CreateVaultRequest, UpdateVaultRequest, VaultGrantView, VaultView,
    validate_vault_name,
};
use serde_json::json;

use super::access::Need;
use crate::people::{Authority, new_id};
use crate::store::vault::{VaultGrantRecord, VaultRecord, VaultRefusal};
use crate::{Control, ControlError};

/// Longest vault description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 1000;

fn validate_description(description: &str) -> Result<(), ValidationError> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ValidationError::new(
            "description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if description.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ValidationError::new(
            "description",
            "must not contain control characters other than newlines",
        ));
    }
    Ok(())
}

fn name_taken(name: &str) -> ControlError {
    ControlError::AlreadyExists {
        what: "vault",
        key: name.to_owned(),
    }
}

impl Control {
    /// The organization `key` names (id or name; `None`: the default one).
    pub(crate) async fn organization_named(
        &self,
        key: Option<&str>,
    ) -> Result<crate::store::vault::OrganizationRecord, ControlError> {
        let key = key.unwrap_or(super::DEFAULT_ORGANIZATION);
        self.store
            .organizations()
            .await?
            .into_iter()
            .find(|o| o.name == key || o.id == key)
            .ok_or_else(|| ControlError::NotFound {
                what: "organization",
                key: key.to_owned(),
            })
    }

    async fn vault_view(
        &self,
        by: &Authority,
        vault: VaultRecord,
    ) -> Result<VaultView, ControlError> {
        let my_access = self.vault_level(by, &vault).await?;
        Ok(VaultView {
            id: vault.id,
            name: vault.name,
            description: vault.description,
            organization: vault.organization,
            owner: vault.owner,
            identities: vault.identities,
            my_access,
            created_at: vault.created_at,
        })
    }

    /// The vaults the caller may see: every one with `pam_vaults.view`, else those it holds a
    /// grant on or owns.
    pub async fn list_vaults(&self, by: &Authority) -> Result<Vec<VaultView>, ControlError> {
        let mut views = Vec::new();
        for vault in self.store.vaults().await? {
            if self.require_vault(by, &vault, Need::View).await.is_ok() {
                views.push(self.vault_view(by, vault).await?);
            }
        }
        Ok(views)
    }

    /// One vault.
    pub async fn show_vault(&self, by: &Authority, key: &str) -> Result<VaultView, ControlError> {
        let vault = self.vault_for(by, key, Need::View).await?;
        self.vault_view(by, vault).await
    }

    /// Creates a vault owned by the caller (`pam_vaults.manage`).
    pub async fn create_vault(
        &self,
        by: &Authority,
        request: &CreateVaultRequest,
    ) -> Result<VaultView, ControlError> {
        if !super::access::holds(by, latch_common::authz::Permission::PamVaultsManage) {
            return Err(ControlError::Forbidden(format!(
                "{} lacks the permission pam_vaults.manage (everywhere); it comes with the role pam_admin or resource_admin",
                by.actor()
            )));
        }
        validate_vault_name("name", &request.name)?;
        validate_description(&request.description)?;
        let organization = self
            .organization_named(request.organization.as_deref())
            .await?;
        let now = Utc::now();
        let vault = VaultRecord {
            id: new_id("vlt_")?,
            organization_id: organization.id.clone(),
            organization: organization.name.clone(),
            name: request.name.clone(),
            description: request.description.clone(),
            owner_id: Some(by.principal.id.clone()),
            owner: Some(by.principal.name.clone()),
            identities: 0,
            created_at: now,
        };
        let event = by.event("vault.created").detail(json!({
            "vault_id": vault.id,
            "name": vault.name,
            "organization": organization.name,
        }));
        match self.store.insert_vault(&vault, event, now).await? {
            Ok(()) => self.vault_view(by, vault).await,
            Err(_) => Err(name_taken(&request.name)),
        }
    }

    /// Renames or re-describes a vault (`pam_vaults.manage`).
    pub async fn update_vault(
        &self,
        by: &Authority,
        key: &str,
        request: &UpdateVaultRequest,
    ) -> Result<VaultView, ControlError> {
        let vault = self.vault_for(by, key, Need::Manage).await?;
        let name = request.name.clone().unwrap_or_else(|| vault.name.clone());
        let description = request
            .description
            .clone()
            .unwrap_or_else(|| vault.description.clone());
        validate_vault_name("name", &name)?;
        validate_description(&description)?;
        let event = by.event("vault.updated").detail(json!({
            "vault_id": vault.id,
            "name": name,
            "previous_name": vault.name,
        }));
        match self
            .store
            .update_vault(&vault.id, &name, &description, event, Utc::now())
            .await?
        {
            Ok(()) => self.show_vault(by, &vault.id).await,
            Err(VaultRefusal::Missing) => Err(ControlError::NotFound {
                what: "vault",
                key: key.to_owned(),
            }),
            Err(_) => Err(name_taken(&name)),
        }
    }

    /// Deletes an empty vault and its grants (`pam_vaults.manage`).
    pub async fn delete_vault(&self, by: &Authority, key: &str) -> Result<(), ControlError> {
        let vault = self.vault_for(by, key, Need::Manage).await?;
        let event = by
            .event("vault.deleted")
            .detail(json!({"vault_id": vault.id, "name": vault.name}));
        match self
            .store
            .delete_vault(&vault.id, event, Utc::now())
            .await?
        {
            Ok(()) => Ok(()),
            Err(VaultRefusal::NotEmpty(n)) => Err(ControlError::Conflict(format!(
                "Cannot delete vault with {n} identities: delete or move them first (`latchctl identities list --vault {}`)",
                vault.name
            ))),
            Err(_) => Err(ControlError::NotFound {
                what: "vault",
                key: key.to_owned(),
            }),
        }
    }

    /// The grants of a vault (`pam_vaults.manage`).
    pub async fn list_vault_grants(
        &self,
        by: &Authority,
        key: &str,
    ) -> Result<Vec<VaultGrantView>, ControlError> {
        let vault = self.vault_for(by, key, Need::Manage).await?;
        Ok(self
            .store
            .vault_grants(&vault.id)
            .await?
            .into_iter()
            .map(grant_view)
            .collect())
    }

    /// Grants a user or a group access to a vault (`pam_vaults.manage`).
    pub async fn grant_vault_access(
        &self,
        by: &Authority,
        key: &str,
        request: &CreateVaultGrantRequest,
    ) -> Result<VaultGrantView, ControlError> {
        let vault = self.vault_for(by, key, Need::Manage).await?;
        let now = Utc::now();
        if request.expires_at.is_some_and(|at| at <= now) {
            return Err(ValidationError::new("expires_at", "must be in the future").into());
        }
        let (principal, group) = match (&request.user, &request.group) {
            (Some(user), None) => {
                let p =
                    self.principal_named(user)
                        .await?
                        .ok_or_else(|| ControlError::NotFound {
                            what: "user",
                            key: user.clone(),
                        })?;
                (Some(p), None)
            }
            (None, Some(group)) => (None, Some(self.group_named(group).await?)),
            _ => {
                return Err(
                    ValidationError::new("user", "name exactly one of user and group").into(),
                );
            }
        };
        let grant = VaultGrantRecord {
            id: new_id("vg_")?,
            vault_id: vault.id.clone(),
            principal_id: principal.as_ref().map(|p| p.id.clone()),
            principal: principal.as_ref().map(|p| p.name.clone()),
            group_id: group.as_ref().map(|g| g.id.clone()),
            group: group.as_ref().map(|g| g.name.clone()),
            level: request.level,
            expires_at: request.expires_at,
            created_at: now,
        };
        let event = by.event("vault.access_granted").detail(json!({
            "vault_id": vault.id,
            "grant_id": grant.id,
            "user": grant.principal,
            "group": grant.group,
            "level": grant.level.as_str(),
            "expires_at": grant.expires_at,
        }));
        self.store.insert_vault_grant(&grant, event, now).await?;
        Ok(grant_view(grant))
    }

    /// Removes a grant (`pam_vaults.manage`).
    pub async fn revoke_vault_access(
        &self,
        by: &Authority,
        key: &str,
        grant_id: &str,
    ) -> Result<(), ControlError> {
        let vault = self.vault_for(by, key, Need::Manage).await?;
        let event = by
            .event("vault.access_revoked")
            .detail(json!({"vault_id": vault.id, "grant_id": grant_id}));
        if self
            .store
            .delete_vault_grant(&vault.id, grant_id, event, Utc::now())
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound {
                what: "vault grant",
                key: grant_id.to_owned(),
            })
        }
    }
}

fn grant_view(grant: VaultGrantRecord) -> VaultGrantView {
    VaultGrantView {
        id: grant.id,
        vault_id: grant.vault_id,
        principal: grant.principal,
        group: grant.group,
        level: grant.level,
        expires_at: grant.expires_at,
        created_at: grant.created_at,
    }
}
