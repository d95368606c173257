//! Access requests, up to their decision: made by anyone with `access.request` (people and
//! service users alike) and allowed by a policy ([`super::policy::evaluate`]), approved by
//! the number of members of the policy's approver group it asks for — never by the requester
//! — or at once; denied, cancelled by the requester, or expired when nobody decides within
//! the pending time. What follows approval (jobs on the hosts) is in [`super::provision`].

use chrono::{Duration, Utc};
use latch_common::access::{AccessKind, AccessRequestCreate, AccessRequestView, MAX_REQUEST_HOSTS};
use latch_common::authz::Permission;
use latch_common::labels::Selector;
use latch_common::names::{ValidationError, validate_ssh_public_key};
use latch_common::vault::validate_reason;
use serde_json::json;
use zeroize::Zeroizing;

use super::policy::{Allowed, Approval, Ask, Requester, evaluate};
use crate::mfa::{MfaPolicy, SensitiveAction};
use crate::people::{Authority, new_id};
use crate::store::HostRecord;
use crate::store::access::{DecisionRecord, RequestHostRecord, RequestRecord, RequestRefusal};
use crate::store::people::PrincipalKind;
use crate::{Control, ControlError};

/// What a requester asks for.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// One host (id or name), or several by label selector.
    pub target: Target,
    /// Which access.
    pub access: AccessKind,
    /// For how long once active, in minutes.
    pub minutes: u32,
    /// Why (1–500 characters).
    pub reason: String,
    /// The requester's SSH public key (none: Latch generates a key pair).
    pub ssh_public_key: Option<String>,
}

/// The hosts a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One host, by id or name.
    Host(String),
    /// Every host matching a label selector.
    Selector(String),
}

impl TryFrom<&AccessRequestCreate> for NewRequest {
    type Error = ValidationError;

    fn try_from(body: &AccessRequestCreate) -> Result<Self, Self::Error> {
        body.validate()?;
        let target = match (&body.host, &body.hosts) {
            (Some(host), _) => Target::Host(host.clone()),
            (None, Some(selector)) => Target::Selector(selector.clone()),
            (None, None) => return Err(ValidationError::new("host", "name a host")),
        };
        Ok(NewRequest {
            target,
            access: body.access,
            minutes: body.minutes,
            reason: body.reason.clone(),
            ssh_public_key: body.ssh_public_key.clone(),
        })
    }
}

/// What a person does to a request after it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Approve it (an approver).
    Approve,
    /// Deny it (an approver).
    Deny,
    /// Withdraw it before provisioning (its requester).
    Cancel,
    /// End it now (its requester, approvers or `access.approve`).
    Revoke,
    /// Re-confirm an active grant (its holder, with a second factor).
    Confirm,
}

/// A request just made: the record, and the private key Latch generated for it (given out
/// this once, never stored).
#[derive(Debug)]
pub struct MadeRequest {
    /// The request as stored.
    pub request: RequestRecord,
    /// The generated private key (OpenSSH format), when the requester gave no key.
    pub private_key: Option<Zeroizing<String>>,
}

fn refusal(id: &str, refused: RequestRefusal) -> ControlError {
    match refused {
        RequestRefusal::Missing => ControlError::NotFound {
            what: "access request",
            key: id.to_owned(),
        },
        RequestRefusal::NotInState(state) => {
            ControlError::Conflict(format!("access request {id} is {state}; nothing to decide"))
        }
        RequestRefusal::AlreadyDecided => {
            ControlError::Conflict(format!("you decided on access request {id} already"))
        }
        RequestRefusal::Held(other) => ControlError::Conflict(format!(
            "this access is exclusive and held by request {other}; wait until it ends"
        )),
        RequestRefusal::Overlaps(other) => ControlError::Conflict(format!(
            "you have access request {other} on this host, not over yet; one at a time per host: wait for it to end, or revoke it (latchctl access revoke {other})"
        )),
    }
}

impl Control {
    /// Tells the subscribed webhooks (`access.requested`, `access.approved`, …) about a
    /// request. After the change is committed; a failure to queue is logged, never undoes it.
    pub(crate) async fn notify_request(&self, event: &'static str, request: &RequestRecord) {
        let detail = json!({
            "request_id": request.id,
            "state": request.state,
            "target": request.target,
            "host_ids": request.hosts.iter().map(|h| &h.host_id).collect::<Vec<_>>(),
            "account": request.account,
            "ends_at": request.ends_at,
            "end_reason": request.end_reason,
            "access": request.access.as_str(),
            "minutes": request.minutes,
            "policy": request.policy_name,
            "approver_group_id": request.approver_group_id,
            "approvals_needed": request.approvals_needed,
            "approvals": request.decisions.iter().filter(|d| d.decision == "approve").count(),
            // Where an approver opens it in the web console (with public_url configured).
            "console_url": self.config.public_url.as_ref()
                .and_then(|url| url.join(&format!("access/requests/{}", request.id)).ok())
                .map(|url| url.to_string()),
        });
        if let Err(error) = self.notify(event, detail).await {
            tracing::error!(request_id = %request.id, event, %error, "cannot queue the access notification");
        }
    }

    /// A recent second factor, whatever `--mfa-required` says (a policy asks for it).
    fn require_factor(&self, by: &Authority, action: SensitiveAction) -> Result<(), ControlError> {
        let policy = MfaPolicy {
            required: vec![action],
            window: self.config.mfa.window,
        };
        by.require_mfa(&policy, action, Utc::now())
    }

    /// The hosts `target` names: one host, or every host (not removed) matching the selector.
    async fn target_hosts(&self, target: &Target) -> Result<Vec<HostRecord>, ControlError> {
        match target {
            Target::Host(key) => Ok(vec![self.find_host(key).await?]),
            Target::Selector(text) => {
                let selector = Selector::parse(text)?;
                let mut ids: Vec<String> = self
                    .store
                    .host_labels()
                    .await?
                    .into_iter()
                    .filter(|(_, labels)| selector.matches(labels))
                    .map(|(id, _)| id)
                    .collect();
                ids.sort();
                if ids.is_empty() {
                    return Err(ValidationError::new(
                        "hosts",
                        format!(
                            "no host matches {text:?}; check the labels with latchctl hosts list"
                        ),
                    )
                    .into());
                }
                if ids.len() > MAX_REQUEST_HOSTS {
                    return Err(ValidationError::new(
                        "hosts",
                        format!(
                            "{text:?} matches {} hosts; one request spans at most {MAX_REQUEST_HOSTS}",
                            ids.len()
                        ),
                    )
                    .into());
                }
                let mut hosts = Vec::with_capacity(ids.len());
                for id in ids {
                    if self.store.host_is_active(&id).await? {
                        hosts.push(self.find_host(&id).await?);
                    }
                }
                Ok(hosts)
            }
        }
    }

    /// The one policy that allows `request` on every host, or `forbidden_error` naming the
    /// host no policy allows it on (or the hosts that fall under different policies).
    async fn policy_for_hosts(
        &self,
        by: &Authority,
        request: &NewRequest,
        hosts: &[HostRecord],
    ) -> Result<Allowed, ControlError> {
        let groups: Vec<String> = self
            .store
            .groups_of(&by.principal.id)
            .await?
            .into_iter()
            .map(|g| g.id)
            .collect();
        let policies = self.store.policies().await?;
        let now = Utc::now();
        let mut chosen: Option<(Allowed, String)> = None;
        for host in hosts {
            let labels = self.labels_of(&host.id).await?;
            let allowed = evaluate(
                &policies,
                Requester {
                    groups: &groups,
                    service: by.principal.kind == PrincipalKind::Service,
                },
                Ask {
                    access: request.access,
                    host_labels: &labels,
                    minutes: request.minutes,
                    at: now,
                },
            )
            .map_err(|why| {
                ControlError::Forbidden(if hosts.len() > 1 {
                    format!("on host {}: {why}", host.facts.hostname)
                } else {
                    why
                })
            })?;
            match &chosen {
                Some((first, first_host)) if first.policy_id != allowed.policy_id => {
                    return Err(ControlError::Forbidden(format!(
                        "host {first_host} falls under policy {} and host {} under policy {}; request them separately",
                        first.policy, host.facts.hostname, allowed.policy
                    )));
                }
                Some(_) => {}
                None => chosen = Some((allowed, host.facts.hostname.clone())),
            }
        }
        chosen
            .map(|(allowed, _)| allowed)
            .ok_or_else(|| ControlError::Forbidden("the request names no host".to_owned()))
    }

    /// Makes a request: allowed by a policy on each of its hosts (else `forbidden_error`
    /// saying why), pending approval or approved at once, and provisioned at once when
    /// approved. Without an SSH key Latch generates a key pair and returns its private half
    /// this once. Audited.
    pub async fn request_access(
        &self,
        by: &Authority,
        request: &NewRequest,
    ) -> Result<MadeRequest, ControlError> {
        by.require(Permission::AccessRequest)?;
        validate_reason(&request.reason)?;
        if request.minutes == 0 {
            return Err(ValidationError::new("minutes", "must be at least 1").into());
        }
        if let Some(key) = &request.ssh_public_key {
            validate_ssh_public_key(key)?;
        }
        let hosts = self.target_hosts(&request.target).await?;
        let allowed = self.policy_for_hosts(by, request, &hosts).await?;
        if allowed.mfa_at_request {
            self.require_factor(by, SensitiveAction::Approve)?;
        }
        for host in &hosts {
            for (other, requester, _) in self.store.live_requests_on_host(&host.id).await? {
                if requester == by.principal.id {
                    return Err(ControlError::Conflict(format!(
                        "you have access request {other} on host {} not over yet; one at a time per host: wait for it to end, or revoke it (latchctl access revoke {other})",
                        host.facts.hostname
                    )));
                }
            }
        }
        let now = Utc::now();
        let (state, approver_group_id, approvals_needed, pending_until, decided_at) =
            match &allowed.approval {
                Approval::Automatic => ("approved", None, 0, None, Some(now)),
                Approval::Needed {
                    group_id,
                    approvals,
                } => (
                    "pending_approval",
                    Some(group_id.clone()),
                    *approvals,
                    Some(now + self.config.access_pending_ttl),
                    None,
                ),
            };
        let id = new_id("ar_")?;
        let (ssh_public_key, private_key) = match &request.ssh_public_key {
            Some(key) => (key.clone(), None),
            None => {
                let pair = super::keys::generate_temporary_key(&format!("latch {id}"))?;
                (pair.public_openssh, Some(pair.private_openssh))
            }
        };
        let record = RequestRecord {
            id,
            requester_id: by.principal.id.clone(),
            target: match &request.target {
                Target::Host(host) => host.clone(),
                Target::Selector(selector) => selector.clone(),
            },
            access: request.access,
            minutes: request.minutes,
            reason: request.reason.clone(),
            ssh_public_key: Some(ssh_public_key),
            key_generated: private_key.is_some(),
            policy_id: allowed.policy_id.clone(),
            policy_name: allowed.policy.clone(),
            approver_group_id,
            approvals_needed,
            exclusive: allowed.exclusive,
            state: state.to_owned(),
            created_at: now,
            pending_until,
            decided_at,
            decision_reason: (state == "approved").then(|| format!("policy {}", allowed.policy)),
            account: String::new(),
            activated_at: None,
            ends_at: None,
            end_reason: None,
            ended_at: None,
            confirm_by: None,
            certificate: None,
            version: 0,
            decisions: Vec::new(),
            hosts: hosts
                .iter()
                .map(|h| RequestHostRecord {
                    host_id: h.id.clone(),
                    state: "waiting".to_owned(),
                    provision_job_id: None,
                    revoke_job_id: None,
                    error: None,
                    updated_at: now,
                })
                .collect(),
        };
        let event = by.event("access.requested").detail(json!({
            "request_id": record.id,
            "target": record.target,
            "hosts": hosts.iter().map(|h| &h.id).collect::<Vec<_>>(),
            "access": request.access.as_str(),
            "minutes": request.minutes,
            "reason": request.reason,
            "policy": allowed.policy,
            "state": state,
            "key_generated": record.key_generated,
        }));
        let event = match hosts.as_slice() {
            [one] => event.host(&one.id),
            _ => event,
        };
        self.store
            .insert_request(&record, event, now)
            .await?
            .map_err(|r| refusal(&record.id, r))?;
        let stored = self.request_named(&record.id).await?;
        // Approvers learn of a pending request; everyone subscribed of one approved at once.
        if stored.state == "approved" {
            self.notify_request("access.approved", &stored).await;
            // The sweep provisions it too: a failure here must not lose the key given out once.
            if let Err(error) = self.advance_request(&stored.id).await {
                tracing::warn!(request_id = %stored.id, %error, "cannot start provisioning at once; the sweep retries");
            }
        } else {
            self.notify_request("access.requested", &stored).await;
        }
        Ok(MadeRequest {
            request: self.request_named(&record.id).await?,
            private_key,
        })
    }

    pub(crate) async fn request_named(&self, id: &str) -> Result<RequestRecord, ControlError> {
        self.store
            .access_request(id)
            .await?
            .ok_or_else(|| ControlError::NotFound {
                what: "access request",
                key: id.to_owned(),
            })
    }

    /// Approves (`approve`) or denies a pending request: `access.approve`, a member of the
    /// policy's approver group, never the requester, and a second factor where the policy (or
    /// `--mfa-required`) asks. Audited. Returns the request as it stands.
    pub async fn decide_access(
        &self,
        by: &Authority,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<RequestRecord, ControlError> {
        if !reason.is_empty() {
            validate_reason(reason)?;
        }
        let request = self.visible_request(by, id).await?;
        if request.requester_id == by.principal.id {
            return Err(ControlError::Forbidden(format!(
                "{} made access request {id}; a request is never decided by its requester",
                by.actor()
            )));
        }
        if !self.is_approver(by, &request).await? {
            return Err(ControlError::Forbidden(format!(
                "{} is not in the approver group of policy {}",
                by.actor(),
                request.policy_name
            )));
        }
        let policy_asks = self
            .store
            .policies()
            .await?
            .iter()
            .any(|p| p.id == request.policy_id && p.mfa_at_approval);
        if policy_asks {
            self.require_factor(by, SensitiveAction::Approve)?;
        } else {
            by.require_mfa(&self.config.mfa, SensitiveAction::Approve, Utc::now())?;
        }
        let now = Utc::now();
        let decision = DecisionRecord {
            principal_id: by.principal.id.clone(),
            decision: if approve { "approve" } else { "deny" }.to_owned(),
            reason: reason.to_owned(),
            at: now,
        };
        let event = by
            .event(if approve {
                "access.approved"
            } else {
                "access.denied"
            })
            .detail(json!({"request_id": id, "reason": reason}));
        let event = single_host(event, &request);
        let state = self
            .store
            .decide_request(id, &decision, event, now)
            .await?
            .map_err(|r| refusal(id, r))?;
        let stored = self.request_named(id).await?;
        // The requester learns of the decision.
        match state.as_str() {
            "approved" => {
                self.notify_request("access.approved", &stored).await;
                self.advance_request(id).await?;
                return self.request_named(id).await;
            }
            "denied" => self.notify_request("access.denied", &stored).await,
            _ => {}
        }
        Ok(stored)
    }

    /// Cancels the caller's own pending or approved request. Audited.
    pub async fn cancel_access(
        &self,
        by: &Authority,
        id: &str,
        reason: &str,
    ) -> Result<RequestRecord, ControlError> {
        if !reason.is_empty() {
            validate_reason(reason)?;
        }
        let request = self.visible_request(by, id).await?;
        if request.requester_id != by.principal.id {
            return Err(ControlError::Forbidden(format!(
                "access request {id} is someone else's; only its requester cancels it"
            )));
        }
        let event = by
            .event("access.cancelled")
            .detail(json!({"request_id": id, "reason": reason}));
        let event = single_host(event, &request);
        self.store
            .cancel_request(id, reason, event, Utc::now())
            .await?
            .map_err(|r| refusal(id, r))?;
        let stored = self.request_named(id).await?;
        self.notify_request("access.cancelled", &stored).await;
        Ok(stored)
    }

    /// Expires the pending requests nobody decided in time; run by the leader's sweep.
    pub async fn expire_pending_requests(&self) -> Result<usize, ControlError> {
        let expired = self.store.expire_pending_requests(Utc::now()).await?;
        for id in &expired {
            if let Some(request) = self.store.access_request(id).await? {
                self.notify_request("access.expired", &request).await;
            }
        }
        Ok(expired.len())
    }
}

/// The event, naming the host when the request has exactly one.
fn single_host(
    event: crate::audit::AuditEvent,
    request: &RequestRecord,
) -> crate::audit::AuditEvent {
    match request.hosts.as_slice() {
        [one] => event.host(&one.host_id),
        _ => event,
    }
}

impl Control {
    /// Request `id`, if `by` may see it: its requester, a member of its approver group, or a
    /// holder of `access.view` on every host (no role grants it within a delegation, and one
    /// that did would not see every request). Anyone else is told it does not exist.
    pub(crate) async fn visible_request(
        &self,
        by: &Authority,
        id: &str,
    ) -> Result<RequestRecord, ControlError> {
        let request = self.request_named(id).await?;
        if request.requester_id == by.principal.id
            || by.require_everywhere(Permission::AccessView).is_ok()
        {
            return Ok(request);
        }
        if self.is_approver(by, &request).await? {
            return Ok(request);
        }
        Err(ControlError::NotFound {
            what: "access request",
            key: id.to_owned(),
        })
    }

    /// What `by` may do with access request `id` in its current state — the buttons a user
    /// interface offers. Each action checks again when it is taken.
    pub async fn access_actions(
        &self,
        by: &Authority,
        id: &str,
    ) -> Result<Vec<Action>, ControlError> {
        let request = self.visible_request(by, id).await?;
        let requester = request.requester_id == by.principal.id;
        let approver = self.is_approver(by, &request).await?;
        let mut actions = Vec::new();
        match request.state.as_str() {
            "pending_approval" => {
                let decided = request
                    .decisions
                    .iter()
                    .any(|d| d.principal_id == by.principal.id);
                if !requester && approver && !decided {
                    actions.extend([Action::Approve, Action::Deny]);
                }
                if requester {
                    actions.push(Action::Cancel);
                }
            }
            "approved" | "provisioning" | "active" => {
                if requester && request.state == "active" && request.confirm_by.is_some() {
                    actions.push(Action::Confirm);
                }
                if requester || approver || by.scope(Permission::AccessApprove).is_some() {
                    actions.push(Action::Revoke);
                }
            }
            _ => {}
        }
        Ok(actions)
    }

    /// Whether `by` is in the approver group of `request`'s policy.
    async fn is_approver(
        &self,
        by: &Authority,
        request: &RequestRecord,
    ) -> Result<bool, ControlError> {
        let Some(group) = &request.approver_group_id else {
            return Ok(false);
        };
        Ok(self
            .store
            .groups_of(&by.principal.id)
            .await?
            .iter()
            .any(|g| g.id == *group))
    }

    /// Takes `action` on request `id` (`reason` where the action has one) and returns the
    /// request as `by` sees it afterwards.
    pub async fn act_on_access(
        &self,
        by: &Authority,
        id: &str,
        action: Action,
        reason: &str,
    ) -> Result<AccessRequestView, ControlError> {
        match action {
            Action::Approve => self.decide_access(by, id, true, reason).await.map(drop)?,
            Action::Deny => self.decide_access(by, id, false, reason).await.map(drop)?,
            Action::Cancel => self.cancel_access(by, id, reason).await.map(drop)?,
            Action::Revoke => return self.revoke_access(by, id, reason).await,
            Action::Confirm => return self.confirm_access(by, id).await,
        }
        self.show_access(by, id).await
    }

    /// Ends a request early: its requester, a member of its approver group, or a holder of
    /// `access.approve`. A request not yet provisioned ends at once; a provisioning or active
    /// one once every host confirmed the removal. Audited.
    pub async fn revoke_access(
        &self,
        by: &Authority,
        id: &str,
        reason: &str,
    ) -> Result<AccessRequestView, ControlError> {
        if !reason.is_empty() {
            validate_reason(reason)?;
        }
        let request = self.visible_request(by, id).await?;
        if request.requester_id != by.principal.id
            && !self.is_approver(by, &request).await?
            && by.scope(Permission::AccessApprove).is_none()
        {
            return Err(ControlError::Forbidden(format!(
                "{} may not revoke access request {id}: its requester, its approvers and holders of access.approve may",
                by.actor()
            )));
        }
        match request.state.as_str() {
            "approved" | "provisioning" | "active" => {}
            "pending_approval" => {
                return Err(ControlError::Conflict(format!(
                    "access request {id} is still pending approval; cancel it (latchctl access cancel {id}) or deny it"
                )));
            }
            state => {
                return Err(ControlError::Conflict(format!(
                    "access request {id} is {state}; there is nothing to revoke"
                )));
            }
        }
        let why = if reason.is_empty() {
            format!("revoked by {}", by.actor())
        } else {
            reason.to_owned()
        };
        let event = single_host(by.event("access.revoke"), &request);
        self.begin_revocation(request, "revoked", &why, event, Utc::now())
            .await?;
        self.show_access(by, id).await
    }

    /// The holder re-confirms an active grant whose policy asks for it, with a recent second
    /// factor: the next deadline is the policy's interval from now. Audited.
    pub async fn confirm_access(
        &self,
        by: &Authority,
        id: &str,
    ) -> Result<AccessRequestView, ControlError> {
        let mut request = self.visible_request(by, id).await?;
        if request.requester_id != by.principal.id {
            return Err(ControlError::Forbidden(format!(
                "only the holder of access request {id} re-confirms it"
            )));
        }
        if request.state != "active" {
            return Err(ControlError::Conflict(format!(
                "access request {id} is {}; only an active grant is re-confirmed",
                request.state
            )));
        }
        let Some(interval) = self
            .store
            .policies()
            .await?
            .into_iter()
            .find(|p| p.id == request.policy_id)
            .and_then(|p| p.reauth_minutes)
        else {
            return Err(ControlError::Conflict(format!(
                "access request {id} needs no re-confirmation"
            )));
        };
        self.require_factor(by, SensitiveAction::Approve)?;
        let now = Utc::now();
        let next = now + Duration::minutes(i64::from(interval));
        request.confirm_by = request
            .ends_at
            .filter(|end| next >= *end)
            .map_or(Some(next), |_| None);
        let event = single_host(by.event("access.confirmed"), &request)
            .detail(json!({"request_id": id, "confirm_by": request.confirm_by}));
        if !self.store.save_request(&request, vec![event], now).await? {
            return Err(ControlError::Conflict(format!(
                "access request {id} changed meanwhile; look at it again and retry"
            )));
        }
        self.show_access(by, id).await
    }
}

/// How long a request may wait for its approvals by default.
pub const DEFAULT_PENDING_TTL: Duration = Duration::hours(1);
