//! Access requests after approval: provisioning on each host, activation, the end of the
//! window, early revocation, and the removal on each host.
//!
//! ```text
//! approved ──▶ provisioning ──▶ active ──▶ revoking ──▶ expired | revoked
//!                   │                          ▲
//!                   └── a host failed ─────────┘──▶ failed
//! ```
//!
//! Every step is written first (the request's row, with the ids of the jobs about to be
//! queued, compare-and-set on its version) and then acted on, so a crash between the two is
//! repaired by the next sweep: a job recorded but missing is queued again under its id. The
//! leader's sweep ([`Control::advance_access_requests`]) drives the states; people's actions
//! (approve, revoke) start the next step at once.
//!
//! Granting is strict: one host failing fails the request and removes what the others got.
//! Taking access away always reaches the end: each host's removal is retried until it is
//! confirmed, and a host that cannot confirm is named in the request's hosts.

use chrono::{DateTime, Duration, Utc};
use latch_common::access::AccessKind;
use latch_common::api::GrantState;
use latch_common::job::{JobError, JobErrorCode, JobSpec, JobStatus};
use latch_common::names::validate_user_name;
use serde_json::json;

use super::policy::{Ask, Requester, evaluate};
use crate::audit::AuditEvent;
use crate::store::access::{RequestHostRecord, RequestRecord};
use crate::store::people::PrincipalKind;
use crate::store::{GrantFilter, Page};
use crate::{Control, ControlError};

/// How long every host of a request has to confirm its provisioning before the request fails.
pub const DEFAULT_PROVISION_TIMEOUT: Duration = Duration::minutes(10);

/// A job recorded but not found is queued again after this long (the step that recorded it
/// may still be queueing it).
const REPAIR_AFTER: Duration = Duration::seconds(30);

/// How the control plane names itself in the audit trail of the steps it takes on its own.
const CONTROL_PLANE: &str = crate::vault::CONTROL_PLANE;

/// The account name for a requester: her name before any `@`, lower-cased, with every
/// character outside `[a-z0-9_-]` as `_`, at most 28 bytes, starting with a letter; a reserved
/// system name gets the prefix `l-`.
pub fn account_base(principal_name: &str) -> String {
    let local = principal_name
        .split('@')
        .next()
        .unwrap_or(principal_name)
        .to_ascii_lowercase();
    let mut name: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(28)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name = format!("u{name}");
        name.truncate(28);
    }
    if validate_user_name(&name).is_err() {
        name = format!("l-{name}");
        name.truncate(28);
    }
    name
}

/// A job's failure as shown on the request's host: `code: message`, without control
/// characters (the message comes from the host; a terminal must not run what it holds).
fn job_failure(error: Option<&JobError>, otherwise: &str) -> String {
    let text = error.map_or_else(
        || otherwise.to_owned(),
        |e| format!("{}: {}", e.code, e.message),
    );
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

impl Control {
    /// Moves every request with work to do one step on: provisions approved ones, activates
    /// or fails provisioning ones, ends active ones whose window (or re-confirmation
    /// deadline) passed, and settles revoking ones. Run by the leader every second; one
    /// request's error is logged and never stops the others.
    pub async fn advance_access_requests(&self) -> Result<(), ControlError> {
        for id in self.store.requests_to_advance(Utc::now()).await? {
            if let Err(error) = self.advance_request(&id).await {
                tracing::error!(request_id = %id, %error, "cannot advance the access request; the sweep goes on with the others");
            }
        }
        Ok(())
    }

    /// One step of one request (see [`Control::advance_access_requests`]).
    pub(crate) async fn advance_request(&self, id: &str) -> Result<(), ControlError> {
        let Some(request) = self.store.access_request(id).await? else {
            return Ok(());
        };
        let now = Utc::now();
        let disabled = self
            .store
            .principal(&request.requester_id)
            .await?
            .is_none_or(|p| p.disabled_at.is_some());
        match request.state.as_str() {
            "approved" | "provisioning" | "active" if disabled => {
                let event = AuditEvent::new(CONTROL_PLANE, "access.requester_disabled");
                self.begin_revocation(request, "revoked", "the requester was disabled", event, now)
                    .await
            }
            "approved" => self.start_provisioning(request, now).await,
            "provisioning" => self.settle_provisioning(request, now).await,
            "active" if request.ends_at.is_some_and(|end| end <= now) => {
                let event = AuditEvent::new(CONTROL_PLANE, "access.expiring");
                self.begin_revocation(request, "expired", "the window ended", event, now)
                    .await
            }
            "active" if request.confirm_by.is_some_and(|by| by <= now) => {
                let event = AuditEvent::new(CONTROL_PLANE, "access.reconfirmation_missed");
                self.begin_revocation(
                    request,
                    "revoked",
                    "the holder did not re-confirm in time",
                    event,
                    now,
                )
                .await
            }
            "revoking" => self.settle_revocation(request, now).await,
            _ => Ok(()),
        }
    }

    /// The account for `request` on its hosts: the requester's [`account_base`], with a
    /// number after it when another requester's live request on one of the hosts uses it.
    async fn account_for(&self, request: &RequestRecord) -> Result<String, ControlError> {
        let requester = self
            .store
            .principal(&request.requester_id)
            .await?
            .ok_or_else(|| ControlError::NotFound {
                what: "requester",
                key: request.requester_id.clone(),
            })?;
        let base = account_base(&requester.name);
        let mut taken = Vec::new();
        for host in &request.hosts {
            for (other, requester_id, account) in
                self.store.live_requests_on_host(&host.host_id).await?
            {
                if other != request.id && requester_id != request.requester_id {
                    taken.push(account);
                }
            }
        }
        let mut name = base.clone();
        let mut n = 2;
        // Taken: another person's live request uses it on one of the hosts, or an account
        // Latch made there for something else (a job, an earlier grant) is not gone yet —
        // create-account would take that account over.
        while taken.contains(&name) || self.account_in_use(&request.hosts, &name).await? {
            let suffix = n.to_string();
            let mut stem = base.clone();
            stem.truncate(28 - suffix.len());
            name = format!("{stem}{suffix}");
            n += 1;
        }
        Ok(name)
    }

    /// Whether a grant of the account `user` (a confirmed create-account or add-group) is
    /// not over on one of `hosts`.
    async fn account_in_use(
        &self,
        hosts: &[RequestHostRecord],
        user: &str,
    ) -> Result<bool, ControlError> {
        for host in hosts {
            let filter = GrantFilter {
                host: Some(host.host_id.clone()),
                user: Some(user.to_owned()),
                ..GrantFilter::default()
            };
            let grants = self
                .store
                .list_grants(
                    &filter,
                    Utc::now(),
                    Page {
                        offset: 0,
                        count: 50,
                    },
                )
                .await?;
            if grants.iter().any(|g| {
                matches!(
                    g.context.grant_state,
                    Some(GrantState::Active | GrantState::Revoking | GrantState::RevocationStuck)
                )
            }) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `host_id` trusts Latch's SSH certificate authority (set at enrollment); a host
    /// removed since is no longer asked anything.
    pub(crate) async fn uses_certificates(&self, host_id: &str) -> Result<bool, ControlError> {
        match self.host_uses_ssh_ca(host_id).await {
            Err(ControlError::NotFound { .. }) => Ok(false),
            other => other,
        }
    }

    /// The create-account job for `request` on `host_id`.
    async fn provision_spec(
        &self,
        request: &RequestRecord,
        host_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<JobSpec, ControlError> {
        let certificates = self.uses_certificates(host_id).await?;
        let key = request.ssh_public_key.clone().ok_or_else(|| {
            ControlError::Internal(format!("access request {} has no SSH key", request.id))
        })?;
        Ok(JobSpec::CreateAccount {
            user: request.account.clone(),
            groups: Vec::new(),
            shell: None,
            // On a host that trusts the certificate authority the certificate is the key:
            // nothing in ~/.ssh to clean up, and it stops working at the window's end.
            ssh_keys: if certificates { Vec::new() } else { vec![key] },
            expires_at: Some(expires_at),
            sudo: request.access == AccessKind::Sudo,
            principals: if certificates {
                vec![request.id.clone()]
            } else {
                Vec::new()
            },
        })
    }

    /// How long after provisioning starts the hosts remove the access on their own (the
    /// agent's timer, sshd's key expiry) even if the control plane is never heard from again:
    /// the window plus the provisioning time, so it never ends before the window does.
    fn host_side_end(&self, request: &RequestRecord, now: DateTime<Utc>) -> DateTime<Utc> {
        now + Duration::minutes(i64::from(request.minutes)) + self.config.access_provision_timeout
    }

    /// Whether a policy still allows `request` on each of its hosts for its requester as she
    /// is now (her groups, the policies as they are now), as of when it was made (a policy's
    /// hours are about when requests are made); the reason when not.
    async fn still_allowed(&self, request: &RequestRecord) -> Result<Option<String>, ControlError> {
        let service = self
            .store
            .principal(&request.requester_id)
            .await?
            .is_some_and(|p| p.kind == PrincipalKind::Service);
        let groups: Vec<String> = self
            .store
            .groups_of(&request.requester_id)
            .await?
            .into_iter()
            .map(|g| g.id)
            .collect();
        let policies = self.store.policies().await?;
        for host in &request.hosts {
            let labels = self.labels_of(&host.host_id).await?;
            let verdict = evaluate(
                &policies,
                Requester {
                    groups: &groups,
                    service,
                },
                Ask {
                    access: request.access,
                    host_labels: &labels,
                    minutes: request.minutes,
                    at: request.created_at,
                },
            );
            if let Err(why) = verdict {
                return Ok(Some(format!(
                    "no longer allowed on {}: {why}",
                    self.host_name(&host.host_id).await?
                )));
            }
        }
        Ok(None)
    }

    /// approved → provisioning: checks that a policy still allows it (the requester's groups
    /// and the policies may have changed since), picks the account, records one
    /// create-account job per host, then queues them.
    async fn start_provisioning(
        &self,
        mut request: RequestRecord,
        now: DateTime<Utc>,
    ) -> Result<(), ControlError> {
        if let Some(why) = self.still_allowed(&request).await? {
            let event = AuditEvent::new(CONTROL_PLANE, "access.no_longer_allowed");
            return self
                .begin_revocation(request, "revoked", &why, event, now)
                .await;
        }
        request.account = self.account_for(&request).await?;
        for host in &mut request.hosts {
            host.state = "provisioning".to_owned();
            host.provision_job_id = Some(uuid::Uuid::new_v4().to_string());
            host.updated_at = now;
        }
        request.state = "provisioning".to_owned();
        let event = AuditEvent::new(CONTROL_PLANE, "access.provisioning").detail(json!({
            "request_id": request.id,
            "account": request.account,
            "hosts": request.hosts.iter().map(|h| &h.host_id).collect::<Vec<_>>(),
        }));
        if !self.store.save_request(&request, vec![event], now).await? {
            return Ok(());
        }
        let expires_at = self.host_side_end(&request, now);
        let deadline = now + self.config.access_provision_timeout;
        for index in 0..request.hosts.len() {
            let host_id = request.hosts[index].host_id.clone();
            let Some(job_id) = request.hosts[index].provision_job_id.clone() else {
                continue;
            };
            let queued = match self.provision_spec(&request, &host_id, expires_at).await {
                Ok(spec) => {
                    self.queue_access_job(&host_id, &job_id, &spec, None, Some(deadline))
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = queued {
                tracing::warn!(request_id = %request.id, %host_id, %error, "cannot queue the provisioning job; the sweep fails the host");
            }
        }
        tracing::info!(request_id = %request.id, account = %request.account, hosts = request.hosts.len(), "access provisioning queued");
        Ok(())
    }

    /// provisioning → active once every host confirmed; → revoking (then failed) once one
    /// failed or did not confirm in time.
    async fn settle_provisioning(
        &self,
        mut request: RequestRecord,
        now: DateTime<Utc>,
    ) -> Result<(), ControlError> {
        let mut changed = false;
        for index in 0..request.hosts.len() {
            let host = request.hosts[index].clone();
            if host.state != "provisioning" {
                continue;
            }
            // A host still provisioning has not changed since provisioning started.
            let deadline_passed =
                host.updated_at + self.config.access_provision_timeout + REPAIR_AFTER <= now;
            let Some(job_id) = &host.provision_job_id else {
                continue;
            };
            let outcome = match self.store.get_job(job_id).await? {
                Some(job) => match job.status {
                    JobStatus::Confirmed => Some(("active", None)),
                    JobStatus::Failed => Some((
                        "failed",
                        Some(job_failure(job.error.as_ref(), "the job failed")),
                    )),
                    _ if deadline_passed => Some((
                        "failed",
                        Some("the host did not confirm in time; is its agent running?".to_owned()),
                    )),
                    _ => None,
                },
                None if deadline_passed => Some((
                    "failed",
                    Some("the provisioning job could not be queued".to_owned()),
                )),
                None if host.updated_at + REPAIR_AFTER <= now => {
                    // Recorded, then the process stopped before queueing it: queue it now.
                    let expires_at = self.host_side_end(&request, host.updated_at);
                    let deadline = host.updated_at + self.config.access_provision_timeout;
                    let spec = self
                        .provision_spec(&request, &host.host_id, expires_at)
                        .await?;
                    if let Err(error) = self
                        .queue_access_job(&host.host_id, job_id, &spec, None, Some(deadline))
                        .await
                    {
                        tracing::warn!(request_id = %request.id, host_id = %host.host_id, %error, "cannot queue the provisioning job again");
                    }
                    None
                }
                None => None,
            };
            if let Some((state, error)) = outcome {
                let slot = &mut request.hosts[index];
                slot.state = state.to_owned();
                slot.error = error;
                slot.updated_at = now;
                changed = true;
            }
        }
        if request.hosts.iter().any(|h| h.state == "failed") {
            let mut failures = Vec::new();
            for host in request.hosts.iter().filter(|h| h.state == "failed") {
                failures.push(format!(
                    "{}: {}",
                    self.host_name(&host.host_id).await?,
                    host.error.as_deref().unwrap_or("failed")
                ));
            }
            let reason = format!("provisioning failed on {}", failures.join("; "));
            let event = AuditEvent::new(CONTROL_PLANE, "access.provisioning_failed")
                .detail(json!({"request_id": request.id, "reason": reason}));
            return self
                .begin_revocation(request, "failed", &reason, event, now)
                .await;
        }
        if request.hosts.iter().all(|h| h.state == "active") {
            return self.activate(request, now).await;
        }
        if changed {
            self.store.save_request(&request, Vec::new(), now).await?;
        }
        Ok(())
    }

    /// provisioning → active: the window starts now; a certificate is issued for the hosts
    /// that trust the certificate authority.
    async fn activate(
        &self,
        mut request: RequestRecord,
        now: DateTime<Utc>,
    ) -> Result<(), ControlError> {
        let ends_at = now + Duration::minutes(i64::from(request.minutes));
        let mut certificates = false;
        for host in &request.hosts {
            certificates |= self.uses_certificates(&host.host_id).await?;
        }
        if let (true, Some(key)) = (certificates, &request.ssh_public_key) {
            // Valid from a minute before (clocks differ a little) to the window's end.
            match self.issue_user_certificate(
                key,
                &format!("{} {}", request.id, request.account),
                std::slice::from_ref(&request.id),
                now - Duration::minutes(1),
                ends_at,
            ) {
                Ok(certificate) => request.certificate = Some(certificate),
                Err(error) => {
                    let reason = format!("cannot issue the SSH certificate: {error}");
                    let event = AuditEvent::new(CONTROL_PLANE, "access.provisioning_failed")
                        .detail(json!({"request_id": request.id, "reason": reason}));
                    return self
                        .begin_revocation(request, "failed", &reason, event, now)
                        .await;
                }
            }
        }
        let reauth = self
            .store
            .policies()
            .await?
            .into_iter()
            .find(|p| p.id == request.policy_id)
            .and_then(|p| p.reauth_minutes);
        request.state = "active".to_owned();
        request.activated_at = Some(now);
        request.ends_at = Some(ends_at);
        request.confirm_by = reauth
            .map(|m| now + Duration::minutes(i64::from(m)))
            .filter(|by| *by < ends_at);
        let event = AuditEvent::new(CONTROL_PLANE, "access.activated").detail(json!({
            "request_id": request.id,
            "account": request.account,
            "ends_at": ends_at,
            "certificate": request.certificate.is_some(),
        }));
        if self.store.save_request(&request, vec![event], now).await? {
            tracing::info!(request_id = %request.id, account = %request.account, %ends_at, "access active");
            let stored = self.request_named(&request.id).await?;
            self.notify_request("access.active", &stored).await;
        }
        Ok(())
    }

    /// → revoking: records a delete-account job for every host that has (or may get) the
    /// account, then queues them. `end_reason` is the state the request ends in.
    pub(crate) async fn begin_revocation(
        &self,
        mut request: RequestRecord,
        end_reason: &str,
        reason: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), ControlError> {
        let mut queue = Vec::new();
        for host in &mut request.hosts {
            let foreign = host.state == "failed"
                && host.error.as_deref().is_some_and(|e| {
                    e.starts_with("account_exists") || e.starts_with("group_exists")
                });
            match host.state.as_str() {
                // A host that failed may still have applied the job (a report lost, a late
                // agent): remove the account there too, unless the failure was that the name
                // belongs to an account Latch did not make.
                "failed" if !foreign => {
                    let job_id = uuid::Uuid::new_v4().to_string();
                    queue.push((host.host_id.clone(), job_id.clone(), None));
                    host.state = "revoking".to_owned();
                    host.revoke_job_id = Some(job_id);
                }
                "active" | "provisioning" => {
                    let job_id = uuid::Uuid::new_v4().to_string();
                    // A confirmed grant's removal revokes it; a create-account job still on
                    // its way is followed by the removal in the host's queue.
                    let grant = (host.state == "active")
                        .then(|| host.provision_job_id.clone())
                        .flatten();
                    queue.push((host.host_id.clone(), job_id.clone(), grant));
                    host.state = "revoking".to_owned();
                    host.revoke_job_id = Some(job_id);
                }
                "waiting" => host.state = "revoked".to_owned(),
                _ => continue,
            }
            host.updated_at = now;
        }
        request.state = "revoking".to_owned();
        request.end_reason = Some(end_reason.to_owned());
        request.decision_reason = Some(reason.to_owned());
        request.confirm_by = None;
        let event = event.detail(json!({
            "request_id": request.id,
            "end": end_reason,
            "reason": reason,
        }));
        if queue.is_empty() {
            // No host has (or may get) the account: the request ends now.
            if !self.end_request(request, vec![event], now).await? {
                return Err(ControlError::Conflict(
                    "the access request changed meanwhile; look at it again and retry".into(),
                ));
            }
            return Ok(());
        }
        if !self.store.save_request(&request, vec![event], now).await? {
            return Err(ControlError::Conflict(format!(
                "access request {} changed meanwhile; look at it again and retry",
                request.id
            )));
        }
        for (host_id, job_id, grant) in queue {
            self.queue_removal(&request, &host_id, &job_id, grant.as_deref())
                .await;
        }
        tracing::info!(request_id = %request.id, end_reason, "access revocation queued");
        Ok(())
    }

    /// Queues the delete-account job `job_id` on `host_id`; a failure is logged and the sweep
    /// queues it again.
    async fn queue_removal(
        &self,
        request: &RequestRecord,
        host_id: &str,
        job_id: &str,
        grant: Option<&str>,
    ) {
        let spec = JobSpec::DeleteAccount {
            user: request.account.clone(),
        };
        let mut queued = self
            .queue_access_job(host_id, job_id, &spec, grant, None)
            .await;
        if matches!(queued, Err(ControlError::Conflict(_))) && grant.is_some() {
            // The grant's own revocation (its expiry) is already on its way: remove the
            // account with a job of its own all the same, so this request can see it done.
            queued = self
                .queue_access_job(host_id, job_id, &spec, None, None)
                .await;
        }
        if let Err(error) = queued {
            tracing::warn!(request_id = %request.id, %host_id, %error, "cannot queue the removal of the account; the sweep retries");
        }
    }

    /// revoking → expired, revoked or failed once every host confirmed the removal. A failed
    /// removal is queued again after the revocation backoff; a removed host can confirm
    /// nothing and is named.
    async fn settle_revocation(
        &self,
        mut request: RequestRecord,
        now: DateTime<Utc>,
    ) -> Result<(), ControlError> {
        let mut changed = false;
        for index in 0..request.hosts.len() {
            let host: RequestHostRecord = request.hosts[index].clone();
            if host.state != "revoking" {
                continue;
            }
            let Some(job_id) = &host.revoke_job_id else {
                continue;
            };
            let job = self.store.get_job(job_id).await?;
            let retry = match &job {
                Some(job) if job.status == JobStatus::Confirmed => {
                    let slot = &mut request.hosts[index];
                    slot.state = "revoked".to_owned();
                    slot.error = None;
                    slot.updated_at = now;
                    changed = true;
                    false
                }
                Some(job) if job.status == JobStatus::Failed => {
                    let message = job_failure(job.error.as_ref(), "the removal failed");
                    if job
                        .error
                        .as_ref()
                        .is_some_and(|e| e.code == JobErrorCode::AccountNotManaged)
                    {
                        // The name belongs to an account Latch did not make (or adopted):
                        // nothing of this request is there, and it is left alone.
                        let slot = &mut request.hosts[index];
                        slot.state = "revoked".to_owned();
                        slot.error = Some(format!("{message} (left alone)"));
                        slot.updated_at = now;
                        changed = true;
                        continue;
                    }
                    if request.hosts[index].error.as_deref() != Some(&message) {
                        request.hosts[index].error = Some(message);
                        changed = true;
                    }
                    job.finished_at.unwrap_or(job.created_at) + self.config.revocation_retry.first
                        <= now
                }
                Some(_) => false,
                None => host.updated_at + REPAIR_AFTER <= now,
            };
            if !retry {
                continue;
            }
            if self.host_removed(&host.host_id).await? {
                let slot = &mut request.hosts[index];
                slot.state = "revoked".to_owned();
                slot.error = Some(
                    "the host was removed before it confirmed; remove the account on it by hand if it still runs"
                        .to_owned(),
                );
                slot.updated_at = now;
                changed = true;
                continue;
            }
            let next = uuid::Uuid::new_v4().to_string();
            let grant = request.hosts[index].provision_job_id.clone();
            let slot = &mut request.hosts[index];
            slot.revoke_job_id = Some(next.clone());
            slot.updated_at = now;
            if self.store.save_request(&request, Vec::new(), now).await? {
                request.version += 1;
                self.queue_removal(&request, &host.host_id, &next, grant.as_deref())
                    .await;
            } else {
                return Ok(());
            }
        }
        if request
            .hosts
            .iter()
            .all(|h| h.state == "revoked" || h.state == "failed")
        {
            self.end_request(request, Vec::new(), now).await?;
            return Ok(());
        }
        if changed {
            self.store.save_request(&request, Vec::new(), now).await?;
        }
        Ok(())
    }

    /// revoking → expired, revoked or failed (its `end_reason`): written with `events` and
    /// the end's own audit event, then notified. Whether it was written (not changed
    /// meanwhile).
    async fn end_request(
        &self,
        mut request: RequestRecord,
        mut events: Vec<AuditEvent>,
        now: DateTime<Utc>,
    ) -> Result<bool, ControlError> {
        let end = request
            .end_reason
            .clone()
            .unwrap_or_else(|| "revoked".to_owned());
        let action = match end.as_str() {
            "expired" => "access.expired",
            "failed" => "access.failed",
            _ => "access.revoked",
        };
        request.state = end.clone();
        request.ended_at = Some(now);
        events.push(AuditEvent::new(CONTROL_PLANE, action).detail(json!({
            "request_id": request.id,
            "account": request.account,
            "hosts": request.hosts.iter().map(|h| json!({
                "host_id": h.host_id, "state": h.state, "error": h.error,
            })).collect::<Vec<_>>(),
        })));
        if !self.store.save_request(&request, events, now).await? {
            return Ok(false);
        }
        tracing::info!(request_id = %request.id, state = %end, "access ended");
        let stored = self.request_named(&request.id).await?;
        self.notify_request(action, &stored).await;
        Ok(true)
    }

    /// A host's name for messages (its id if it has none any more).
    async fn host_name(&self, host_id: &str) -> Result<String, ControlError> {
        Ok(self
            .store
            .find_hosts(host_id)
            .await?
            .into_iter()
            .next()
            .map_or_else(|| host_id.to_owned(), |h| h.facts.hostname))
    }

    /// Whether the host was removed (or never existed).
    async fn host_removed(&self, host_id: &str) -> Result<bool, ControlError> {
        Ok(!self.store.host_is_active(host_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::account_base;

    #[test]
    fn account_names_come_from_the_requester() {
        let cases = [
            ("alice", "alice"),
            ("Alice.Smith@example.com", "alice_smith"),
            ("root", "l-root"),
            ("root@example.com", "l-root"),
            ("9lives", "u9lives"),
            ("_x", "u_x"),
            ("ünïcode", "u_n_code"),
            (
                "a-very-long-name-that-goes-on-and-on",
                "a-very-long-name-that-goes-o",
            ),
        ];
        for (name, expected) in cases {
            let account = account_base(name);
            assert!(
                latch_common::names::validate_user_name(&account).is_ok(),
                "{account}"
            );
            assert_eq!(account, expected, "{name}");
        }
    }
}
