//! Rotations: a new password for an identity, set on every linked host.
//!
//! 1. The new password is generated (or given, and checked against the policy) and refused if
//!    its keyed hash matches one of the identity's last 10.
//! 2. It is stored sealed as the rotation's *pending* secret, with one pre-assigned job id per
//!    linked host, in one audited transaction — before any job leaves.
//! 3. One `set-password` job per host carries only its SHA-512 crypt hash
//!    ([`Control::dispatch_rotation`]); a crash between 2 and 3 is repaired by the sweep, which
//!    queues the jobs still missing.
//! 4. The sweep ([`Control::settle_rotations`]) follows the jobs: every host confirmed → the
//!    pending secret becomes current and enters the history; a host failed → the rotation
//!    fails, the previous secret stays current, and the hosts that may have taken the new
//!    password get the previous one back; a host that never answers leaves it `pending`,
//!    naming the host.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use latch_common::job::JobSpec;
use latch_common::vault::{CredentialType, RotateRequest, RotationHostView, RotationView};
use serde_json::json;

use super::access::Need;
use super::secrets::DataKey;
use crate::audit::AuditEvent;
use crate::people::{Authority, new_id};
use crate::store::vault::{
    IdentityRecord, RotationCause, RotationHostRecord, RotationRecord, Settlement, VaultRefusal,
};
use crate::{Control, ControlError};

/// How old an undispatched rotation must be before the sweep queues its jobs (the request
/// that made it normally does so at once).
pub(crate) const DISPATCH_GRACE_SECONDS: i64 = 30;

/// The associated data a rotation's secret is sealed under: its identity and its own id, so
/// one rotation's ciphertext cannot stand in for another's (or for the identity's current one).
fn sealed_as(identity_id: &str, rotation_id: &str) -> String {
    format!("{identity_id}/rotation/{rotation_id}")
}

/// One lock per identity: creating a rotation and queueing its jobs, settling it (with its
/// roll-back) and queueing a linked host's password happen one at a time per identity in this
/// process, so no job of an older rotation is queued after a newer one's.
#[derive(Debug, Default)]
pub struct IdentityLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl IdentityLocks {
    /// Waits for the lock of `identity_id`.
    pub async fn lock(&self, identity_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(identity_id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// The view of a rotation.
pub(crate) fn rotation_view(rotation: RotationRecord) -> RotationView {
    let waiting_for = rotation
        .hosts
        .iter()
        .filter(|h| h.status.as_deref().is_none_or(|s| s == "pending"))
        .map(|h| h.hostname.clone())
        .collect();
    RotationView {
        id: rotation.id,
        identity_id: rotation.identity_id,
        trigger: rotation.cause,
        waiting_for: if rotation.state == "pending" {
            waiting_for
        } else {
            Vec::new()
        },
        state: rotation.state,
        hosts: rotation
            .hosts
            .into_iter()
            .map(|h| RotationHostView {
                host_id: h.host_id,
                hostname: h.hostname,
                job_id: h.job_id,
                status: h.status.unwrap_or_else(|| "pending".to_owned()),
                error_code: h.error_code,
                error_message: h.error_message,
            })
            .collect(),
        started_by: rotation.started_by,
        created_at: rotation.created_at,
        finished_at: rotation.finished_at,
    }
}

/// Where a rotation stands, from its hosts' jobs.
fn outcome(rotation: &RotationRecord) -> Option<Settlement> {
    let failed: Vec<String> = rotation
        .hosts
        .iter()
        .filter(|h| h.status.as_deref() == Some("failed"))
        .map(|h| {
            format!(
                "host {} failed: {}: {}",
                h.hostname,
                h.error_code.as_deref().unwrap_or("unknown"),
                h.error_message.as_deref().unwrap_or("")
            )
        })
        .collect();
    if !failed.is_empty() {
        return Some(Settlement::Failed(failed.join("; ")));
    }
    rotation
        .hosts
        .iter()
        .all(|h| h.status.as_deref() == Some("confirmed"))
        .then(|| Settlement::Confirmed(String::new()))
}

impl Control {
    /// A new rotation of `identity` to `password` (or a generated one), not stored yet: the
    /// pending secret sealed, a job id for each linked host.
    pub(crate) async fn prepare_rotation(
        &self,
        identity: &IdentityRecord,
        cause: RotationCause,
        password: Option<&str>,
        started_by: &str,
        now: DateTime<Utc>,
    ) -> Result<(RotationRecord, DataKey), ControlError> {
        if identity.credential_type != CredentialType::Password {
            return Err(ControlError::Conflict(format!(
                "identity {} holds an SSH key; Latch rotates passwords only — replace the key with `latchctl identities update`",
                identity.id
            )));
        }
        let key = self.data_key(&identity.organization_id).await?;
        let policy = self.config.vault.password_policy;
        let history = self.store.password_history(&identity.id).await?;
        let password = match password {
            Some(given) => {
                policy.check(given)?;
                if history.contains(&key.history_hash(&identity.id, given)) {
                    return Err(latch_common::names::ValidationError::new(
                        "password",
                        "was used recently for this identity (one of its last 10 passwords); choose another, or let Latch generate one",
                    )
                    .into());
                }
                given.to_owned()
            }
            None => loop {
                let candidate = policy.generate()?;
                if !history.contains(&key.history_hash(&identity.id, &candidate)) {
                    break candidate;
                }
            },
        };
        let id = new_id("rot_")?;
        let mut hosts = Vec::new();
        for host in &identity.hosts {
            hosts.push(RotationHostRecord {
                host_id: host.host_id.clone(),
                hostname: host.hostname.clone(),
                job_id: uuid::Uuid::new_v4().to_string(),
                status: None,
                error_code: None,
                error_message: None,
            });
        }
        let rotation = RotationRecord {
            secret: key.seal(&sealed_as(&identity.id, &id), &password)?,
            id,
            identity_id: identity.id.clone(),
            cause: cause.as_str().to_owned(),
            state: "pending".to_owned(),
            secret_hash: key.history_hash(&identity.id, &password),
            started_by: started_by.to_owned(),
            created_at: now,
            finished_at: None,
            note: None,
            hosts,
        };
        Ok((rotation, key))
    }

    /// The audit event of a rotation starting.
    pub(crate) fn rotation_event(event: AuditEvent, rotation: &RotationRecord) -> AuditEvent {
        event.detail(json!({
            "rotation_id": rotation.id,
            "identity_id": rotation.identity_id,
            "cause": rotation.cause,
            "hosts": rotation.hosts.iter().map(|h| &h.host_id).collect::<Vec<_>>(),
        }))
    }

    /// Queues the `set-password` jobs of `rotation` not queued yet (the SHA-512 crypt hash
    /// only), while it is still pending. A host removed meanwhile fails the rotation. The
    /// caller holds the identity's lock.
    pub(crate) async fn dispatch_rotation(
        &self,
        rotation: &RotationRecord,
        username: &str,
        key: &DataKey,
    ) -> Result<(), ControlError> {
        let missing: Vec<&RotationHostRecord> = rotation
            .hosts
            .iter()
            .filter(|h| h.status.is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let password = key.open(
            &sealed_as(&rotation.identity_id, &rotation.id),
            &rotation.secret,
        )?;
        for host in missing {
            // A rotation superseded (or failed) meanwhile queues nothing more.
            let still = self.store.rotation(&rotation.id).await?;
            if still.is_none_or(|r| r.state != "pending") {
                return Ok(());
            }
            let spec = JobSpec::SetPassword {
                user: username.to_owned(),
                password_hash: crate::password::hash_password(&password)?,
            };
            match self
                .queue_internal_job(&host.host_id, &host.job_id, &spec)
                .await
            {
                Ok(()) => {}
                Err(ControlError::HostRemoved(_) | ControlError::NotFound { .. }) => {
                    let note = format!(
                        "host {} was removed before its job could be queued",
                        host.hostname
                    );
                    self.finish_rotation(rotation.clone(), Settlement::Failed(note))
                        .await?;
                    return Ok(());
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Rotates an identity's password now (`pam_vaults.manage`); refused while it is checked
    /// out.
    pub async fn rotate_identity(
        &self,
        by: &Authority,
        identity_id: &str,
        request: &RotateRequest,
    ) -> Result<RotationView, ControlError> {
        let (identity, _) = self.identity_for(by, identity_id, Need::Manage).await?;
        let _lock = self.identity_locks.lock(&identity.id).await;
        let now = Utc::now();
        let (rotation, key) = self
            .prepare_rotation(
                &identity,
                RotationCause::Manual,
                request.password.as_deref(),
                &by.actor(),
                now,
            )
            .await?;
        let event = Self::rotation_event(by.event("vault.rotation_started"), &rotation);
        match self
            .store
            .insert_rotation(&rotation, true, event, now)
            .await?
        {
            Ok(()) => {}
            Err(VaultRefusal::CheckedOut) => {
                return Err(ControlError::Conflict(format!(
                    "identity {identity_id} is checked out; rotate it after the check-in (or force the check-in: `latchctl identities checkin CHECKOUT --force`)"
                )));
            }
            Err(_) => {
                return Err(ControlError::NotFound {
                    what: "identity",
                    key: identity_id.to_owned(),
                });
            }
        }
        self.start_dispatched(rotation, &identity, &key).await
    }

    /// Dispatches a stored rotation and returns its view (settled at once when it has no
    /// hosts). The caller holds the identity's lock.
    pub(crate) async fn start_dispatched(
        &self,
        rotation: RotationRecord,
        identity: &IdentityRecord,
        key: &DataKey,
    ) -> Result<RotationView, ControlError> {
        self.dispatch_rotation(&rotation, &identity.username, key)
            .await?;
        let current = self.store.rotation(&rotation.id).await?.unwrap_or(rotation);
        let current = self.settle_locked(current).await?;
        Ok(rotation_view(current))
    }

    /// One rotation (`pam_vaults.view` or a grant on its vault).
    pub async fn show_rotation(
        &self,
        by: &Authority,
        rotation_id: &str,
    ) -> Result<RotationView, ControlError> {
        let not_found = || ControlError::NotFound {
            what: "rotation",
            key: rotation_id.to_owned(),
        };
        let rotation = self
            .store
            .rotation(rotation_id)
            .await?
            .ok_or_else(not_found)?;
        self.identity_for(by, &rotation.identity_id, Need::View)
            .await
            .map_err(|e| match e {
                ControlError::NotFound { .. } => not_found(),
                other => other,
            })?;
        Ok(rotation_view(rotation))
    }

    /// The rotations of an identity, newest first.
    pub async fn list_rotations(
        &self,
        by: &Authority,
        identity_id: &str,
    ) -> Result<Vec<RotationView>, ControlError> {
        let (identity, _) = self.identity_for(by, identity_id, Need::View).await?;
        Ok(self
            .store
            .rotations(&identity.id)
            .await?
            .into_iter()
            .map(rotation_view)
            .collect())
    }

    /// Settles `rotation` if its hosts decided it; returns it as it stands afterwards. The
    /// caller holds the identity's lock.
    async fn settle_locked(
        &self,
        rotation: RotationRecord,
    ) -> Result<RotationRecord, ControlError> {
        if rotation.state != "pending" {
            return Ok(rotation);
        }
        let Some(settlement) = outcome(&rotation) else {
            return Ok(rotation);
        };
        let id = rotation.id.clone();
        let fallback = rotation.clone();
        self.finish_rotation(rotation, settlement).await?;
        Ok(self.store.rotation(&id).await?.unwrap_or(fallback))
    }

    /// Ends a pending rotation as `settlement` says (audited): confirmed makes its secret the
    /// identity's current one; failed keeps the previous and rolls the hosts back to it.
    async fn finish_rotation(
        &self,
        rotation: RotationRecord,
        settlement: Settlement,
    ) -> Result<(), ControlError> {
        let now = Utc::now();
        let settlement = match settlement {
            Settlement::Confirmed(_) => {
                let identity = self.store.identity(&rotation.identity_id).await?;
                let Some(identity) = identity else {
                    return Ok(());
                };
                let key = self.data_key(&identity.organization_id).await?;
                let password =
                    key.open(&sealed_as(&identity.id, &rotation.id), &rotation.secret)?;
                Settlement::Confirmed(key.seal(&identity.id, &password)?)
            }
            failed => failed,
        };
        let action = match settlement {
            Settlement::Confirmed(_) => "vault.rotation_confirmed",
            Settlement::Failed(_) => "vault.rotation_failed",
        };
        let event = AuditEvent::new(super::CONTROL_PLANE, action).detail(json!({
            "rotation_id": rotation.id,
            "identity_id": rotation.identity_id,
            "note": match &settlement { Settlement::Failed(note) => Some(note), _ => None },
        }));
        if self
            .store
            .settle_rotation(&rotation.id, &settlement, event, now)
            .await?
        {
            tracing::info!(rotation_id = %rotation.id, identity_id = %rotation.identity_id, outcome = action, "rotation settled");
            if matches!(settlement, Settlement::Failed(_)) {
                self.roll_back(&rotation).await?;
            }
        }
        Ok(())
    }

    /// After a failed rotation: gives every host of the rotation the current password again —
    /// a host may have applied the new one even if its job failed afterwards (verification, a
    /// lost report), and setting the current one again is harmless — unless a newer rotation
    /// of the identity exists (it sets the password everywhere itself). Audited with the jobs.
    async fn roll_back(&self, rotation: &RotationRecord) -> Result<(), ControlError> {
        let Some(identity) = self.store.identity(&rotation.identity_id).await? else {
            return Ok(());
        };
        let newer = self
            .store
            .rotations(&identity.id)
            .await?
            .into_iter()
            .any(|r| r.id != rotation.id && r.created_at > rotation.created_at);
        let Some(current) = &identity.secret else {
            return Ok(());
        };
        if newer {
            return Ok(());
        }
        let key = self.data_key(&identity.organization_id).await?;
        let password = key.open(&identity.id, current)?;
        let mut jobs = Vec::new();
        let mut missed = Vec::new();
        for host in &rotation.hosts {
            let spec = JobSpec::SetPassword {
                user: identity.username.clone(),
                password_hash: crate::password::hash_password(&password)?,
            };
            let job_id = uuid::Uuid::new_v4().to_string();
            match self.queue_internal_job(&host.host_id, &job_id, &spec).await {
                Ok(()) => jobs.push(json!({"host": host.hostname, "job_id": job_id})),
                Err(error) => {
                    tracing::error!(rotation_id = %rotation.id, host_id = %host.host_id, %error, "failed rotation: cannot queue the previous password again");
                    missed.push(json!({"host": host.hostname, "error": error.to_string()}));
                }
            }
        }
        let event =
            AuditEvent::new(super::CONTROL_PLANE, "vault.rotation_rolled_back").detail(json!({
                "rotation_id": rotation.id,
                "identity_id": identity.id,
                "jobs": jobs,
                "not_queued": missed,
            }));
        self.store.append_audit(&event, Utc::now()).await?;
        Ok(())
    }

    /// Settles every pending rotation whose hosts decided it, and queues the jobs of those (and
    /// of host links) a crash left undispatched. Run by the leader's sweep every second.
    pub async fn settle_rotations(&self) -> Result<(), ControlError> {
        if let Err(error) = self.repair_links().await {
            tracing::error!(%error, "queueing unqueued host-link jobs failed");
        }
        let now = Utc::now();
        for rotation in self.store.pending_rotations().await? {
            let id = rotation.id.clone();
            let undispatched = rotation.hosts.iter().any(|h| h.status.is_none());
            if undispatched && (now - rotation.created_at).num_seconds() < DISPATCH_GRACE_SECONDS {
                continue;
            }
            // One rotation's trouble (a record that does not open) never holds up the others.
            if let Err(error) = self.settle_one(rotation, undispatched).await {
                tracing::error!(rotation_id = %id, %error, "settling a rotation failed");
            }
        }
        Ok(())
    }

    async fn settle_one(
        &self,
        rotation: RotationRecord,
        undispatched: bool,
    ) -> Result<(), ControlError> {
        let _lock = self.identity_locks.lock(&rotation.identity_id).await;
        // Read again under the lock: a request may have settled or superseded it meanwhile.
        let Some(rotation) = self.store.rotation(&rotation.id).await? else {
            return Ok(());
        };
        if undispatched {
            if let Some(identity) = self.store.identity(&rotation.identity_id).await? {
                let key = self.data_key(&identity.organization_id).await?;
                self.dispatch_rotation(&rotation, &identity.username, &key)
                    .await?;
            }
            return Ok(());
        }
        self.settle_locked(rotation).await?;
        Ok(())
    }

    /// Starts the scheduled rotations that are due (identities with an interval whose next
    /// date passed, not checked out, no rotation pending). Run by the leader's scheduler.
    pub async fn rotate_due_identities(&self) -> Result<u32, ControlError> {
        let now = Utc::now();
        let mut started = 0;
        for identity_id in self.store.due_rotations(now, 100).await? {
            match self.rotate_due(&identity_id, now).await {
                Ok(true) => started += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(identity_id, %error, "scheduled rotation could not start");
                }
            }
        }
        Ok(started)
    }

    /// Starts the scheduled rotation of one identity; false if it was not due any more.
    async fn rotate_due(
        &self,
        identity_id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, ControlError> {
        let _lock = self.identity_locks.lock(identity_id).await;
        let Some(identity) = self.store.identity(identity_id).await? else {
            return Ok(false);
        };
        let (rotation, key) = self
            .prepare_rotation(
                &identity,
                RotationCause::Scheduled,
                None,
                super::CONTROL_PLANE,
                now,
            )
            .await?;
        let event = Self::rotation_event(
            AuditEvent::new(super::CONTROL_PLANE, "vault.rotation_started"),
            &rotation,
        );
        if self
            .store
            .insert_rotation(&rotation, true, event, now)
            .await?
            .is_err()
        {
            return Ok(false);
        }
        self.start_dispatched(rotation, &identity, &key).await?;
        Ok(true)
    }
}
