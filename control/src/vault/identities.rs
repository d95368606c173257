//! Identities: the shared accounts a vault holds, their sealed credentials and the hosts they
//! live on. Linking a host queues an `adopt-account` job there, so the agent records the
//! existing account as one Latch may set the password of (it never creates or deletes it).

use chrono::{Duration, Utc};
use latch_common::authz::Permission;
use latch_common::job::JobSpec;
use latch_common::names::{ValidationError, validate_user_name};
use latch_common::vault::{
    CreateIdentityRequest, CredentialType, IdentityView, LinkedHostView, MAX_CONCURRENT_CHECKOUTS,
    MAX_LINKED_HOSTS, MAX_ROTATION_DAYS, MAX_SECRET_BYTES, RevealedSecret, UpdateIdentityRequest,
    validate_vault_name,
};
use serde_json::json;

use super::access::Need;
use crate::mfa::SensitiveAction;
use crate::people::{Authority, new_id};
use crate::store::vault::{HostLink, IdentityRecord, RotationCause, VaultRefusal};
use crate::{Control, ControlError};

/// The view of an identity (never its secret).
pub(crate) fn identity_view(identity: IdentityRecord) -> IdentityView {
    IdentityView {
        id: identity.id,
        vault_id: identity.vault_id,
        vault: identity.vault,
        name: identity.name,
        username: identity.username,
        credential_type: identity.credential_type,
        has_secret: identity.secret.is_some(),
        rotation_interval_days: identity.rotation_interval_days,
        rotate_after_use: identity.rotate_after_use,
        concurrent_checkout: identity.concurrent_checkout,
        max_concurrent_checkouts: identity.max_concurrent,
        last_rotated_at: identity.last_rotated_at,
        next_rotation_at: identity.next_rotation_at,
        rotation_state: identity.rotation_state,
        active_checkouts: identity.active_checkouts,
        hosts: identity
            .hosts
            .into_iter()
            .map(|h| LinkedHostView {
                host_id: h.host_id,
                hostname: h.hostname,
                adopt_job_id: h.adopt_job_id,
                adopt_status: h.adopt_status,
                password_job_id: h.password_job_id,
                password_status: h.password_status,
            })
            .collect(),
        created_at: identity.created_at,
    }
}

fn check_interval(days: Option<u32>) -> Result<(), ValidationError> {
    match days {
        Some(d) if !(1..=MAX_ROTATION_DAYS).contains(&d) => Err(ValidationError::new(
            "rotation_interval_days",
            format!("must be 1 to {MAX_ROTATION_DAYS} days"),
        )),
        _ => Ok(()),
    }
}

fn check_concurrency(concurrent: bool, max: Option<u32>) -> Result<u32, ValidationError> {
    match (concurrent, max) {
        (false, None | Some(1)) => Ok(1),
        (false, Some(_)) => Err(ValidationError::new(
            "max_concurrent_checkouts",
            "applies only with concurrent_checkout; turn that on, or leave the maximum out",
        )),
        (true, None) => Ok(2),
        (true, Some(n)) if (1..=MAX_CONCURRENT_CHECKOUTS).contains(&n) => Ok(n),
        (true, Some(_)) => Err(ValidationError::new(
            "max_concurrent_checkouts",
            format!("must be 1 to {MAX_CONCURRENT_CHECKOUTS}"),
        )),
    }
}

fn check_secret(kind: CredentialType, secret: &str) -> Result<(), ValidationError> {
    if secret.is_empty() || secret.len() > MAX_SECRET_BYTES {
        return Err(ValidationError::new(
            "secret",
            format!("must be 1 to {MAX_SECRET_BYTES} bytes"),
        ));
    }
    // Control characters (escape sequences above all) would reach the terminal of whoever
    // reveals it; a key keeps its line breaks, a password has none.
    let allowed = |c: char| kind == CredentialType::SshKey && (c == '\n' || c == '\r');
    if secret.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(ValidationError::new(
            "secret",
            match kind {
                CredentialType::Password => {
                    "a password must not contain control characters (line breaks, tabs, escapes, NUL)"
                }
                CredentialType::SshKey => {
                    "a key must not contain control characters other than line breaks"
                }
            },
        ));
    }
    Ok(())
}

fn identity_name_taken(name: &str) -> ControlError {
    ControlError::AlreadyExists {
        what: "identity",
        key: name.to_owned(),
    }
}

impl Control {
    /// Resolves host keys the caller may manage accounts on, without duplicates.
    async fn linkable_hosts(
        &self,
        by: &Authority,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, ControlError> {
        if keys.len() > MAX_LINKED_HOSTS {
            return Err(
                ValidationError::new("hosts", format!("at most {MAX_LINKED_HOSTS} hosts")).into(),
            );
        }
        let mut hosts: Vec<(String, String)> = Vec::new();
        for key in keys {
            let (host, _) = self.host_for(by, Permission::HostsManageUsers, key).await?;
            if !hosts.iter().any(|(id, _)| *id == host.id) {
                hosts.push((host.id, host.facts.hostname));
            }
        }
        Ok(hosts)
    }

    /// New links to `hosts`: an adoption job each and, when the identity has a password
    /// already, a job that sets it there (so the vault's password works on every linked host).
    fn new_links(hosts: &[String], with_password: bool) -> Vec<HostLink> {
        hosts
            .iter()
            .map(|host_id| HostLink {
                host_id: host_id.clone(),
                adopt_job_id: Some(uuid::Uuid::new_v4().to_string()),
                password_job_id: with_password.then(|| uuid::Uuid::new_v4().to_string()),
            })
            .collect()
    }

    /// Queues the jobs recorded for new `links`: the adoption, then the current password.
    async fn queue_links(
        &self,
        identity: &IdentityRecord,
        links: &[HostLink],
    ) -> Result<(), ControlError> {
        let password = match (&identity.secret, identity.credential_type) {
            (Some(sealed), CredentialType::Password)
                if links.iter().any(|l| l.password_job_id.is_some()) =>
            {
                let key = self.data_key(&identity.organization_id).await?;
                Some(key.open(&identity.id, sealed)?)
            }
            _ => None,
        };
        let adopt = JobSpec::AdoptAccount {
            user: identity.username.clone(),
        };
        for link in links {
            if let Some(job_id) = &link.adopt_job_id {
                self.queue_internal_job(&link.host_id, job_id, &adopt)
                    .await?;
            }
            if let (Some(job_id), Some(password)) = (&link.password_job_id, &password) {
                let spec = JobSpec::SetPassword {
                    user: identity.username.clone(),
                    password_hash: crate::password::hash_password(password)?,
                };
                self.queue_internal_job(&link.host_id, job_id, &spec)
                    .await?;
            }
        }
        Ok(())
    }

    /// Queues the jobs of links a crash left unqueued (recorded with their identity, never
    /// sent); a link to a host removed meanwhile forgets its jobs. Run by the leader's sweep.
    pub(crate) async fn repair_links(&self) -> Result<(), ControlError> {
        let before = Utc::now() - Duration::seconds(super::rotation::DISPATCH_GRACE_SECONDS);
        for (identity_id, link) in self.store.undispatched_links(before).await? {
            let Some(identity) = self.store.identity(&identity_id).await? else {
                continue;
            };
            match self
                .queue_links(&identity, std::slice::from_ref(&link))
                .await
            {
                Ok(()) => {
                    tracing::warn!(identity_id, host_id = %link.host_id, "queued the jobs of a link a crash left unqueued");
                }
                Err(ControlError::HostRemoved(_) | ControlError::NotFound { .. }) => {
                    self.store
                        .forget_link_jobs(&identity_id, &link.host_id)
                        .await?;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    /// Adds an identity to a vault (`pam_vaults.manage`; `hosts.manage_users` on each linked
    /// host). Each linked host gets an `adopt-account` job. A password identity with hosts and
    /// no password given gets a generated one, set on the hosts by a first rotation.
    pub async fn create_identity(
        &self,
        by: &Authority,
        vault_key: &str,
        request: &CreateIdentityRequest,
    ) -> Result<IdentityView, ControlError> {
        let vault = self.vault_for(by, vault_key, Need::Manage).await?;
        validate_vault_name("name", &request.name)?;
        validate_user_name(&request.username)
            .map_err(|e| ValidationError::new("username", e.reason))?;
        check_interval(request.rotation_interval_days)?;
        let max = check_concurrency(
            request.concurrent_checkout,
            request.max_concurrent_checkouts,
        )?;
        if let Some(secret) = &request.secret {
            check_secret(request.credential_type, secret)?;
        } else if request.credential_type == CredentialType::SshKey {
            return Err(ValidationError::new(
                "secret",
                "an ssh_key identity needs its private key (Latch generates passwords only)",
            )
            .into());
        }
        if request.credential_type == CredentialType::SshKey
            && (request.rotation_interval_days.is_some() || request.rotate_after_use)
        {
            return Err(ValidationError::new(
                "rotation_interval_days",
                "Latch rotates passwords only; an ssh_key identity cannot be rotated",
            )
            .into());
        }
        let hosts = self.linkable_hosts(by, &request.hosts).await?;
        let now = Utc::now();
        let id = new_id("idn_")?;
        let key = self.data_key(&vault.organization_id).await?;
        // Without a password: one is generated; with hosts it reaches them by a rotation.
        let generated = match (&request.secret, hosts.is_empty()) {
            (None, true) => Some(self.config.vault.password_policy.generate()?),
            _ => None,
        };
        let secret = request.secret.as_ref().or(generated.as_ref());
        let identity = IdentityRecord {
            id: id.clone(),
            vault_id: vault.id.clone(),
            vault: vault.name.clone(),
            organization_id: vault.organization_id.clone(),
            name: request.name.clone(),
            username: request.username.clone(),
            credential_type: request.credential_type,
            secret: secret.map(|s| key.seal(&id, s)).transpose()?,
            rotation_interval_days: request.rotation_interval_days,
            rotate_after_use: request.rotate_after_use,
            concurrent_checkout: request.concurrent_checkout,
            max_concurrent: max,
            last_rotated_at: secret.map(|_| now),
            next_rotation_at: request
                .rotation_interval_days
                .map(|d| now + Duration::days(i64::from(d))),
            created_at: now,
            hosts: Vec::new(),
            rotation_state: None,
            active_checkouts: 0,
        };
        let host_ids: Vec<String> = hosts.iter().map(|(id, _)| id.clone()).collect();
        let links = Self::new_links(
            &host_ids,
            secret.is_some() && request.credential_type == CredentialType::Password,
        );
        let history = match request.credential_type {
            CredentialType::Password => secret.map(|s| key.history_hash(&id, s)),
            CredentialType::SshKey => None,
        };
        let event = by.event("vault.identity_created").detail(json!({
            "identity_id": id,
            "vault_id": vault.id,
            "name": identity.name,
            "username": identity.username,
            "credential_type": identity.credential_type.as_str(),
            "hosts": hosts.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            "secret": if request.secret.is_some() { "given" } else { "generated" },
        }));
        match self
            .store
            .insert_identity(&identity, &links, history.as_deref(), event, now)
            .await?
        {
            Ok(()) => {}
            Err(_) => return Err(identity_name_taken(&request.name)),
        }
        let stored = self.stored_identity(&id).await?;
        self.queue_links(&stored, &links).await?;
        if secret.is_none() {
            self.first_rotation(by, &stored, RotationCause::Enrollment)
                .await?;
        }
        Ok(identity_view(self.stored_identity(&id).await?))
    }

    /// Starts the rotation that gives a new identity its first password on its hosts.
    pub(crate) async fn first_rotation(
        &self,
        by: &Authority,
        identity: &IdentityRecord,
        cause: RotationCause,
    ) -> Result<latch_common::vault::RotationView, ControlError> {
        let now = Utc::now();
        let (rotation, key) = self
            .prepare_rotation(identity, cause, None, &by.actor(), now)
            .await?;
        let event = Self::rotation_event(by.event("vault.rotation_started"), &rotation);
        if let Err(refusal) = self
            .store
            .insert_rotation(&rotation, false, event, now)
            .await?
        {
            return Err(ControlError::Conflict(format!(
                "the first rotation of identity {} could not be recorded ({refusal:?}); retry with `latchctl identities rotate {}`",
                identity.id, identity.id
            )));
        }
        self.start_dispatched(rotation, identity, &key).await
    }

    async fn stored_identity(&self, id: &str) -> Result<IdentityRecord, ControlError> {
        self.store
            .identity(id)
            .await?
            .ok_or_else(|| ControlError::NotFound {
                what: "identity",
                key: id.to_owned(),
            })
    }

    /// The identities of a vault the caller may see.
    pub async fn list_identities(
        &self,
        by: &Authority,
        vault_key: &str,
    ) -> Result<Vec<IdentityView>, ControlError> {
        let vault = self.vault_for(by, vault_key, Need::View).await?;
        Ok(self
            .store
            .identities(&vault.id)
            .await?
            .into_iter()
            .map(identity_view)
            .collect())
    }

    /// One identity.
    pub async fn show_identity(
        &self,
        by: &Authority,
        id: &str,
    ) -> Result<IdentityView, ControlError> {
        let (identity, _) = self.identity_for(by, id, Need::View).await?;
        Ok(identity_view(identity))
    }

    /// Changes an identity's settings (`pam_vaults.manage`); new linked hosts get an
    /// adoption job (`hosts.manage_users` on them), unlinked ones are only forgotten (the
    /// account stays on the host as it is).
    pub async fn update_identity(
        &self,
        by: &Authority,
        id: &str,
        request: &UpdateIdentityRequest,
    ) -> Result<IdentityView, ControlError> {
        let (mut identity, _) = self.identity_for(by, id, Need::Manage).await?;
        if let Some(name) = &request.name {
            validate_vault_name("name", name)?;
            identity.name = name.clone();
        }
        if let Some(days) = request.rotation_interval_days {
            if identity.credential_type == CredentialType::SshKey && days != 0 {
                return Err(ValidationError::new(
                    "rotation_interval_days",
                    "Latch rotates passwords only; an ssh_key identity cannot be rotated",
                )
                .into());
            }
            let days = (days != 0).then_some(days);
            check_interval(days)?;
            identity.rotation_interval_days = days;
            let since = identity.last_rotated_at.unwrap_or(identity.created_at);
            identity.next_rotation_at = days.map(|d| since + Duration::days(i64::from(d)));
        }
        if let Some(after_use) = request.rotate_after_use {
            identity.rotate_after_use = after_use;
        }
        let concurrent = request
            .concurrent_checkout
            .unwrap_or(identity.concurrent_checkout);
        let max = match (
            request.concurrent_checkout,
            request.max_concurrent_checkouts,
        ) {
            (None, None) => Some(identity.max_concurrent),
            (_, max) => max,
        };
        identity.max_concurrent = check_concurrency(concurrent, max.filter(|_| concurrent))?;
        identity.concurrent_checkout = concurrent;
        // Hosts kept keep their links; new ones get new links (and their jobs, below).
        let (links, new_links) = match &request.hosts {
            None => (None, Vec::new()),
            Some(keys) => {
                let hosts = self.linkable_hosts(by, keys).await?;
                // Unlinking takes a host out of future rotations: it needs the same right on
                // that host as linking it.
                for gone in identity
                    .hosts
                    .iter()
                    .filter(|h| !hosts.iter().any(|(id, _)| *id == h.host_id))
                {
                    self.host_for(by, Permission::HostsManageUsers, &gone.host_id)
                        .await?;
                }
                let new: Vec<String> = hosts
                    .iter()
                    .filter(|(id, _)| !identity.hosts.iter().any(|h| h.host_id == *id))
                    .map(|(id, _)| id.clone())
                    .collect();
                let with_password = identity.secret.is_some()
                    && identity.credential_type == CredentialType::Password;
                let new_links = Self::new_links(&new, with_password);
                let all: Vec<HostLink> = hosts
                    .iter()
                    .map(|(host_id, _)| {
                        match identity.hosts.iter().find(|h| h.host_id == *host_id) {
                            Some(kept) => HostLink {
                                host_id: host_id.clone(),
                                adopt_job_id: kept.adopt_job_id.clone(),
                                password_job_id: kept.password_job_id.clone(),
                            },
                            None => new_links
                                .iter()
                                .find(|l| l.host_id == *host_id)
                                .cloned()
                                .unwrap_or_else(|| HostLink {
                                    host_id: host_id.clone(),
                                    adopt_job_id: None,
                                    password_job_id: None,
                                }),
                        }
                    })
                    .collect();
                (Some(all), new_links)
            }
        };
        let event = by.event("vault.identity_updated").detail(json!({
            "identity_id": identity.id,
            "name": identity.name,
            "rotation_interval_days": identity.rotation_interval_days,
            "rotate_after_use": identity.rotate_after_use,
            "concurrent_checkout": identity.concurrent_checkout,
            "max_concurrent_checkouts": identity.max_concurrent,
            "hosts": links.as_ref().map(|l| l.iter().map(|h| &h.host_id).collect::<Vec<_>>()),
        }));
        match self
            .store
            .update_identity(&identity, links.as_deref(), event, Utc::now())
            .await?
        {
            Ok(()) => {}
            Err(VaultRefusal::NameTaken) => return Err(identity_name_taken(&identity.name)),
            Err(_) => {
                return Err(ControlError::NotFound {
                    what: "identity",
                    key: id.to_owned(),
                });
            }
        }
        self.queue_links(&identity, &new_links).await?;
        self.show_identity(by, id).await
    }

    /// Deletes an identity (`pam_vaults.manage`); refused while it is checked out. The account
    /// stays on its hosts as it is.
    pub async fn delete_identity(&self, by: &Authority, id: &str) -> Result<(), ControlError> {
        let (identity, _) = self.identity_for(by, id, Need::Manage).await?;
        let _lock = self.identity_locks.lock(&identity.id).await;
        if identity.rotation_state.as_deref() == Some("pending") {
            return Err(ControlError::Conflict(format!(
                "identity {id} has a rotation pending: deleting it now would leave its hosts with a password nobody keeps; wait until it is settled (`latchctl identities rotations {id}`)"
            )));
        }
        let event = by.event("vault.identity_deleted").detail(json!({
            "identity_id": identity.id,
            "vault_id": identity.vault_id,
            "name": identity.name,
        }));
        match self
            .store
            .delete_identity(&identity.id, event, Utc::now())
            .await?
        {
            Ok(()) => Ok(()),
            Err(VaultRefusal::CheckedOut) => Err(ControlError::Conflict(format!(
                "identity {id} is checked out; check it in first (`latchctl identities checkouts {id}`)"
            ))),
            Err(_) => Err(ControlError::NotFound {
                what: "identity",
                key: id.to_owned(),
            }),
        }
    }

    /// Reveals an identity's credential: a grant of `view_credentials` or more (or ownership)
    /// and, where configured, a recent second factor. Audited (never with the secret).
    pub async fn reveal_identity(
        &self,
        by: &Authority,
        id: &str,
    ) -> Result<RevealedSecret, ControlError> {
        let (identity, _) = self.identity_for(by, id, Need::Reveal).await?;
        let now = Utc::now();
        by.require_mfa(&self.config.mfa, SensitiveAction::Reveal, now)?;
        let revealed = self.open_identity(&identity).await?;
        let event = by.event("vault.revealed").detail(json!({
            "identity_id": identity.id,
            "vault_id": identity.vault_id,
            "username": identity.username,
        }));
        self.store.append_audit(&event, now).await?;
        tracing::info!(identity_id = %identity.id, actor = %by.actor(), "credential revealed");
        Ok(revealed)
    }

    /// The identity's current credential, opened.
    pub(crate) async fn open_identity(
        &self,
        identity: &IdentityRecord,
    ) -> Result<RevealedSecret, ControlError> {
        let sealed = identity.secret.as_ref().ok_or_else(|| {
            ControlError::Conflict(format!(
                "identity {} has no credential yet: its first rotation is still pending (`latchctl identities rotations {}`)",
                identity.id, identity.id
            ))
        })?;
        let key = self.data_key(&identity.organization_id).await?;
        Ok(RevealedSecret {
            identity_id: identity.id.clone(),
            username: identity.username.clone(),
            credential_type: identity.credential_type,
            secret: key.open(&identity.id, sealed)?,
        })
    }
}
