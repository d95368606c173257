//! Checkout and check-in, break-glass, and the sweep that checks in what ran out.
//!
//! A checkout hands a credential out for a bounded time with a reason: exclusive unless the
//! identity allows concurrent checkouts (then up to its maximum). Only the holder checks in;
//! an admin may force it (audited). Rotate-after-use (and every break-glass) queues the
//! rotation in the same transaction as the check-in, so no check-in is ever recorded without
//! its rotation.
//!
//! Check-in never fails because a rotation cannot be prepared: the checkout ends anyway, and
//! the failure is logged and audited (taking access away reaches the end).

use chrono::{Duration, Utc};
use latch_common::authz::Permission;
use latch_common::vault::{
    BreakGlassRequest, CheckinRequest, CheckoutGranted, CheckoutRequest, CheckoutView,
    CredentialType, validate_checkout_minutes, validate_reason,
};
use serde_json::json;

use super::access::{Need, holds};
use crate::audit::AuditEvent;
use crate::mfa::SensitiveAction;
use crate::people::{Authority, new_id};
use crate::store::vault::{
    CheckinHow, CheckoutRecord, IdentityRecord, RotationCause, RotationRecord, VaultRefusal,
};
use crate::{Control, ControlError};

/// Most expired checkouts one sweep checks in.
const SWEEP_BATCH: u32 = 100;

pub(crate) fn checkout_view(checkout: CheckoutRecord) -> CheckoutView {
    CheckoutView {
        id: checkout.id,
        identity_id: checkout.identity_id,
        holder: checkout.holder,
        reason: checkout.reason,
        host_id: checkout.host_id,
        break_glass: checkout.break_glass,
        started_at: checkout.started_at,
        expires_at: checkout.expires_at,
        checked_in_at: checkout.checked_in_at,
        checked_in_how: checkout.checked_in_how,
        rotation_id: checkout.rotation_id,
    }
}

impl Control {
    /// Checks a credential out: a grant of `checkout` (or ownership) and, like a reveal, a
    /// recent second factor where configured. Returns the checkout and the credential.
    pub async fn checkout_identity(
        &self,
        by: &Authority,
        id: &str,
        request: &CheckoutRequest,
    ) -> Result<CheckoutGranted, ControlError> {
        let (identity, _) = self.identity_for(by, id, Need::Checkout).await?;
        validate_reason(&request.reason)?;
        validate_checkout_minutes(request.duration_minutes)?;
        let now = Utc::now();
        by.require_mfa(&self.config.mfa, SensitiveAction::Reveal, now)?;
        let host_id = match &request.host {
            None => None,
            Some(key) => Some(
                identity
                    .hosts
                    .iter()
                    .find(|h| h.host_id == *key || h.hostname == *key)
                    .map(|h| h.host_id.clone())
                    .ok_or_else(|| {
                        latch_common::names::ValidationError::new(
                            "host",
                            format!(
                                "host '{key}' is not linked to identity {id}; `latchctl identities show {id}` lists its hosts"
                            ),
                        )
                    })?,
            ),
        };
        // A checkout that ran out but was not swept yet must not hold the identity.
        self.check_in_expired(Some(&identity.id)).await?;
        let checkout = CheckoutRecord {
            id: new_id("co_")?,
            identity_id: identity.id.clone(),
            principal_id: by.principal.id.clone(),
            holder: by.principal.name.clone(),
            reason: request.reason.clone(),
            host_id,
            break_glass: false,
            started_at: now,
            expires_at: now + Duration::minutes(i64::from(request.duration_minutes)),
            checked_in_at: None,
            checked_in_how: None,
            checked_in_by: None,
            rotation_id: None,
        };
        let event = by.event("vault.checked_out").detail(json!({
            "checkout_id": checkout.id,
            "identity_id": identity.id,
            "vault_id": identity.vault_id,
            "reason": checkout.reason,
            "host_id": checkout.host_id,
            "expires_at": checkout.expires_at,
        }));
        let exclusive = !identity.concurrent_checkout;
        match self
            .store
            .open_checkout(&checkout, exclusive, identity.max_concurrent, event, now)
            .await?
        {
            Ok(()) => {}
            Err(VaultRefusal::AlreadyCheckedOut) => {
                return Err(ControlError::Conflict(format!(
                    "Identity is already checked out: {id} allows one checkout at a time; wait for its check-in (`latchctl identities checkouts {id}`)"
                )));
            }
            Err(VaultRefusal::MaxConcurrent(max)) => {
                return Err(ControlError::Conflict(format!(
                    "Maximum concurrent sessions reached: {id} allows {max} checkouts at once; wait for a check-in"
                )));
            }
            Err(_) => {
                return Err(ControlError::NotFound {
                    what: "identity",
                    key: id.to_owned(),
                });
            }
        }
        let credential = self.open_identity(&identity).await?;
        tracing::info!(checkout_id = %checkout.id, identity_id = %identity.id, actor = %by.actor(), "credential checked out");
        Ok(CheckoutGranted {
            checkout: checkout_view(checkout),
            credential,
        })
    }

    /// Break-glass: the credential without a vault grant or approval (`pam_vaults.break_glass`
    /// and a recent second factor), at most `break_glass_per_minute` per person, for the
    /// organization's break-glass duration. Audited as critical and sent to the break-glass
    /// webhook; its check-in (by hand or at its end) always rotates the password.
    pub async fn break_glass(
        &self,
        by: &Authority,
        id: &str,
        request: &BreakGlassRequest,
    ) -> Result<CheckoutGranted, ControlError> {
        if !holds(by, Permission::PamVaultsBreakGlass) {
            return Err(ControlError::Forbidden(format!(
                "{} lacks the permission pam_vaults.break_glass; it comes with the role pam_admin",
                by.actor()
            )));
        }
        validate_reason(&request.reason)?;
        let now = Utc::now();
        by.require_mfa(&self.config.mfa, SensitiveAction::BreakGlass, now)?;
        let identity = self
            .store
            .identity(id)
            .await?
            .ok_or_else(|| ControlError::NotFound {
                what: "identity",
                key: id.to_owned(),
            })?;
        let organization = self
            .organization_named(Some(&identity.organization_id))
            .await?;
        let break_glass_for = self.break_glass_duration(&organization);
        // Nothing to hand out: refuse before anything is counted, recorded or announced.
        if identity.secret.is_none() {
            return Err(ControlError::Conflict(format!(
                "identity {id} has no credential yet: its first rotation is still pending (`latchctl identities rotations {id}`)"
            )));
        }
        let per_minute = self.config.vault.break_glass_per_minute;
        if !self
            .store
            .note_break_glass(&by.principal.id, per_minute, now)
            .await?
        {
            return Err(ControlError::TooManyRequests(format!(
                "{} used break-glass {per_minute} times in the last minute, the most allowed; wait a minute (every use is audited as critical)",
                by.actor()
            )));
        }
        let checkout = CheckoutRecord {
            id: new_id("co_")?,
            identity_id: identity.id.clone(),
            principal_id: by.principal.id.clone(),
            holder: by.principal.name.clone(),
            reason: request.reason.clone(),
            host_id: None,
            break_glass: true,
            started_at: now,
            expires_at: now + break_glass_for,
            checked_in_at: None,
            checked_in_how: None,
            checked_in_by: None,
            rotation_id: None,
        };
        let detail = json!({
            "severity": "critical",
            "checkout_id": checkout.id,
            "identity_id": identity.id,
            "vault_id": identity.vault_id,
            "username": identity.username,
            "reason": checkout.reason,
            "expires_at": checkout.expires_at,
        });
        let event = by.event("vault.break_glass").detail(detail.clone());
        // Emergencies are not held back by exclusivity or the concurrency limit.
        if let Err(refusal) = self
            .store
            .open_checkout(&checkout, false, u32::MAX, event, now)
            .await?
        {
            return Err(ControlError::Conflict(format!(
                "break-glass on identity {id} could not be recorded ({refusal:?}); retry"
            )));
        }
        tracing::warn!(checkout_id = %checkout.id, identity_id = %identity.id, actor = %by.actor(), "BREAK-GLASS checkout");
        self.notify_break_glass(&by.actor(), detail.clone());
        // Security admins subscribed to `break_glass` on the signed webhooks learn of it too.
        let mut signed = detail;
        signed["actor"] = serde_json::Value::String(by.actor());
        signed["severity"] = serde_json::Value::String("critical".to_owned());
        if let Err(error) = self.notify("break_glass", signed).await {
            tracing::error!(checkout_id = %checkout.id, %error, "cannot queue the break-glass webhook event");
        }
        let credential = self.open_identity(&identity).await?;
        Ok(CheckoutGranted {
            checkout: checkout_view(checkout),
            credential,
        })
    }

    /// Checks a checkout in: its holder, or an admin with `force` (`pam_vaults.manage`,
    /// audited as forced). Queues the rotation of rotate-after-use and break-glass checkouts
    /// in the same transaction.
    pub async fn checkin(
        &self,
        by: &Authority,
        checkout_id: &str,
        request: &CheckinRequest,
    ) -> Result<CheckoutView, ControlError> {
        let not_found = || ControlError::NotFound {
            what: "checkout",
            key: checkout_id.to_owned(),
        };
        let checkout = self
            .store
            .checkout(checkout_id)
            .await?
            .ok_or_else(not_found)?;
        let holder = checkout.principal_id == by.principal.id;
        let how = if holder {
            CheckinHow::Holder
        } else {
            let (_, _) = self
                .identity_for(by, &checkout.identity_id, Need::View)
                .await
                .map_err(|e| match e {
                    ControlError::NotFound { .. } => not_found(),
                    other => other,
                })?;
            if !request.force {
                return Err(ControlError::Forbidden(format!(
                    "checkout {checkout_id} is someone else's; only its holder checks it in — an admin with pam_vaults.manage may force it (`--force`, audited)"
                )));
            }
            if !holds(by, Permission::PamVaultsManage) {
                return Err(ControlError::Forbidden(format!(
                    "{} lacks the permission pam_vaults.manage needed to force a check-in",
                    by.actor()
                )));
            }
            CheckinHow::Forced
        };
        if checkout.checked_in_at.is_some() {
            return Err(ControlError::Conflict(format!(
                "checkout {checkout_id} was checked in already"
            )));
        }
        self.close(checkout, how, &by.actor(), by.event("vault.checked_in"))
            .await?;
        let closed = self
            .store
            .checkout(checkout_id)
            .await?
            .ok_or_else(not_found)?;
        Ok(checkout_view(closed))
    }

    /// Ends `checkout` with `event`, with its rotation when it needs one.
    async fn close(
        &self,
        checkout: CheckoutRecord,
        how: CheckinHow,
        by: &str,
        event: AuditEvent,
    ) -> Result<(), ControlError> {
        let _lock = self.identity_locks.lock(&checkout.identity_id).await;
        let now = Utc::now();
        let identity = self.store.identity(&checkout.identity_id).await?;
        // A scheduled rotation skipped while the identity was checked out happens now, so
        // back-to-back checkouts cannot put it off for ever.
        let due = identity
            .as_ref()
            .is_some_and(|i| i.next_rotation_at.is_some_and(|at| at <= now));
        let cause = if checkout.break_glass {
            Some(RotationCause::BreakGlass)
        } else if identity.as_ref().is_some_and(|i| i.rotate_after_use) {
            Some(RotationCause::AfterUse)
        } else if due {
            Some(RotationCause::Scheduled)
        } else {
            None
        };
        let owed = identity.clone();
        let mut rotation: Option<(RotationRecord, IdentityRecord, super::secrets::DataKey)> = None;
        let mut rotation_error = None;
        if let (Some(cause), Some(identity)) = (cause, identity) {
            if identity.credential_type == CredentialType::Password {
                match self.prepare_rotation(&identity, cause, None, by, now).await {
                    Ok((record, key)) => rotation = Some((record, identity, key)),
                    Err(error) => rotation_error = Some(error.to_string()),
                }
            } else {
                rotation_error = Some(
                    "an ssh_key identity is not rotated by Latch; replace the key by hand"
                        .to_owned(),
                );
            }
        }
        let event = event.detail(json!({
            "checkout_id": checkout.id,
            "identity_id": checkout.identity_id,
            "how": how.as_str(),
            "holder": checkout.holder,
            "break_glass": checkout.break_glass,
            "rotation_id": rotation.as_ref().map(|(r, _, _)| &r.id),
            "rotation_error": rotation_error,
        }));
        let closed = self
            .store
            .close_checkout(
                &checkout.id,
                how,
                by,
                rotation.as_ref().map(|(r, _, _)| r),
                event,
                now,
            )
            .await?;
        if let Some(error) = &rotation_error {
            tracing::error!(checkout_id = %checkout.id, %error, "check-in without its rotation");
            // The rotation is owed: the scheduled sweep tries again from now on.
            if let Some(mut identity) =
                owed.filter(|i| i.credential_type == CredentialType::Password)
            {
                identity.next_rotation_at = Some(now);
                let event = AuditEvent::new(super::CONTROL_PLANE, "vault.rotation_owed").detail(
                    json!({"identity_id": identity.id, "checkout_id": checkout.id, "error": error}),
                );
                self.store
                    .update_identity(&identity, None, event, now)
                    .await?
                    .map_err(|refusal| {
                        ControlError::Internal(format!(
                            "cannot mark identity {} for rotation: {refusal:?}",
                            identity.id
                        ))
                    })?;
            }
        }
        if closed && let Some((record, identity, key)) = rotation {
            self.start_dispatched(record, &identity, &key).await?;
        }
        Ok(())
    }

    /// Checks in the checkouts whose end passed (of one identity, or all); returns how many.
    pub async fn check_in_expired(&self, identity_id: Option<&str>) -> Result<u32, ControlError> {
        let mut done = 0;
        for checkout in self
            .store
            .expired_checkouts(identity_id, Utc::now(), SWEEP_BATCH)
            .await?
        {
            let event = AuditEvent::new(super::CONTROL_PLANE, "vault.checked_in");
            let id = checkout.id.clone();
            match self
                .close(checkout, CheckinHow::Expired, super::CONTROL_PLANE, event)
                .await
            {
                Ok(()) => done += 1,
                Err(error) => {
                    tracing::error!(checkout_id = %id, %error, "expired checkout could not be checked in")
                }
            }
        }
        Ok(done)
    }

    /// The checkouts of an identity, newest first: all of them for those who may manage the
    /// vault, else the caller's own.
    pub async fn list_checkouts(
        &self,
        by: &Authority,
        identity_id: &str,
    ) -> Result<Vec<CheckoutView>, ControlError> {
        let (identity, _) = self.identity_for(by, identity_id, Need::View).await?;
        let everyone =
            holds(by, Permission::PamVaultsManage) || holds(by, Permission::PamVaultsView);
        Ok(self
            .store
            .checkouts(&identity.id)
            .await?
            .into_iter()
            .filter(|c| everyone || c.principal_id == by.principal.id)
            .map(checkout_view)
            .collect())
    }
}
