//! Support access: a pam_admin lets the vendor's support engineers — the members of the group
//! [`SUPPORT_GROUP`] — see an organization's vaults and identities (metadata only: never a
//! secret, never a checkout) for a stated reason and at most a year; `emergency-disable` ends
//! every period at once. Each step is audited; the emergency as critical.

use chrono::{Duration, Utc};
use latch_common::authz::Permission;
use latch_common::names::ValidationError;
use latch_common::vault::{
    EmergencyDisableRequest, EmergencyDisabled, EnableSupportAccessRequest, MAX_SUPPORT_DAYS,
    SupportAccessView, validate_reason,
};
use serde_json::json;

use crate::mfa::SensitiveAction;
use crate::people::{Authority, new_id};
use crate::store::vault::SupportAccessRecord;
use crate::{Control, ControlError};

/// The group whose members support access lets in.
pub const SUPPORT_GROUP: &str = "latch-support";

fn in_force(access: &SupportAccessRecord, now: chrono::DateTime<Utc>) -> bool {
    access.disabled_at.is_none() && access.expires_at.is_none_or(|end| end > now)
}

impl Control {
    /// Changing support access: `settings.manage` everywhere and the step-up of role changes
    /// (it lets people outside the organization look in).
    fn require_support_change(&self, by: &Authority) -> Result<(), ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        by.require_mfa(&self.config.mfa, SensitiveAction::ChangeRoles, Utc::now())
    }

    async fn support_view(
        &self,
        access: SupportAccessRecord,
    ) -> Result<SupportAccessView, ControlError> {
        let organization = self
            .store
            .organizations()
            .await?
            .into_iter()
            .find(|o| o.id == access.organization_id)
            .map_or_else(|| access.organization_id.clone(), |o| o.name);
        Ok(SupportAccessView {
            active: in_force(&access, Utc::now()),
            id: access.id,
            organization,
            reason: access.reason,
            enabled_by: access.enabled_by,
            enabled_at: access.enabled_at,
            expires_at: access.expires_at,
            disabled_at: access.disabled_at,
            disabled_by: access.disabled_by,
            disabled_how: access.disabled_how,
        })
    }

    /// Enables support access to an organization for a reason and, optionally, 1–365 days.
    pub async fn enable_support_access(
        &self,
        by: &Authority,
        request: &EnableSupportAccessRequest,
    ) -> Result<SupportAccessView, ControlError> {
        self.require_support_change(by)?;
        validate_reason(&request.reason)?;
        if let Some(days) = request.days
            && !(1..=MAX_SUPPORT_DAYS).contains(&days)
        {
            return Err(ValidationError::new(
                "days",
                format!("support access lasts 1 to {MAX_SUPPORT_DAYS} days (or until disabled)"),
            )
            .into());
        }
        let organization = self
            .organization_named(request.organization.as_deref())
            .await?;
        let now = Utc::now();
        let access = SupportAccessRecord {
            id: new_id("sa_")?,
            organization_id: organization.id.clone(),
            reason: request.reason.clone(),
            enabled_by: by.actor(),
            enabled_at: now,
            expires_at: request.days.map(|d| now + Duration::days(i64::from(d))),
            disabled_at: None,
            disabled_by: None,
            disabled_how: None,
        };
        let event = by.event("support_access.enabled").detail(json!({
            "support_access_id": access.id,
            "organization": organization.name,
            "reason": access.reason,
            "expires_at": access.expires_at,
            "group": SUPPORT_GROUP,
        }));
        self.store
            .insert_support_access(&access, event, now)
            .await?;
        self.support_view(access).await
    }

    /// Every period of support access, newest first (`settings.manage`).
    pub async fn list_support_access(
        &self,
        by: &Authority,
    ) -> Result<Vec<SupportAccessView>, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        let mut views = Vec::new();
        for access in self.store.support_accesses().await? {
            views.push(self.support_view(access).await?);
        }
        Ok(views)
    }

    /// Ends one period of support access.
    pub async fn disable_support_access(
        &self,
        by: &Authority,
        id: &str,
    ) -> Result<(), ControlError> {
        self.require_support_change(by)?;
        let event = by
            .event("support_access.disabled")
            .detail(json!({"support_access_id": id}));
        let ended = self
            .store
            .disable_support_access(Some(id), "disabled", &by.actor(), event, Utc::now())
            .await?;
        if ended == 0 {
            return Err(ControlError::NotFound {
                what: "support access in force",
                key: id.to_owned(),
            });
        }
        Ok(())
    }

    /// Ends every period of support access at once. Needs no step-up: an emergency must not
    /// wait for a second factor, and it only takes access away.
    pub async fn emergency_disable_support_access(
        &self,
        by: &Authority,
        request: &EmergencyDisableRequest,
    ) -> Result<EmergencyDisabled, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        validate_reason(&request.reason)?;
        let event = by.event("support_access.emergency_disabled").detail(json!({
            "severity": "critical",
            "reason": request.reason,
        }));
        let disabled = self
            .store
            .disable_support_access(None, "emergency", &by.actor(), event, Utc::now())
            .await?;
        tracing::warn!(disabled, actor = %by.actor(), "support access emergency-disabled");
        Ok(EmergencyDisabled { disabled })
    }

    /// Whether `by` is a support engineer let in to organization `organization_id` now.
    pub(crate) async fn support_sees(
        &self,
        by: &Authority,
        organization_id: &str,
    ) -> Result<bool, ControlError> {
        let now = Utc::now();
        let open = self
            .store
            .support_accesses()
            .await?
            .iter()
            .any(|a| a.organization_id == organization_id && in_force(a, now));
        if !open {
            return Ok(false);
        }
        Ok(self
            .store
            .groups_of(&by.principal.id)
            .await?
            .iter()
            .any(|g| g.name == SUPPORT_GROUP))
    }
}
