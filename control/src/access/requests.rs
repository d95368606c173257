//! Access requests, up to their decision: made by anyone with `access.request` (people and
//! service users alike) and allowed by a policy ([`super::policy::evaluate`]), approved by
//! the number of members of the policy's approver group it asks for — never by the requester
//! — or at once; denied, cancelled by the requester, or expired when nobody decides within
//! the pending time. Provisioning (jobs on the host) follows approval in a later part.

use chrono::{Duration, Utc};
use latch_common::access::AccessKind;
use latch_common::authz::Permission;
use latch_common::names::{ValidationError, validate_ssh_public_key};
use latch_common::vault::validate_reason;
use serde_json::json;

use super::policy::{Approval, Ask, Requester, evaluate};
use crate::mfa::{MfaPolicy, SensitiveAction};
use crate::people::{Authority, new_id};
use crate::store::access::{DecisionRecord, RequestRecord, RequestRefusal};
use crate::store::people::PrincipalKind;
use crate::{Control, ControlError};

/// What a requester asks for.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// The host (id or name).
    pub host: String,
    /// Which access.
    pub access: AccessKind,
    /// For how long once active, in minutes.
    pub minutes: u32,
    /// Why (1–500 characters).
    pub reason: String,
    /// The requester's SSH public key (none: a temporary one, later).
    pub ssh_public_key: Option<String>,
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
    }
}

impl Control {
    /// Tells the subscribed webhooks (`access.requested`, `access.approved`, …) about a
    /// request. After the change is committed; a failure to queue is logged, never undoes it.
    async fn notify_request(&self, event: &'static str, request: &RequestRecord) {
        let detail = json!({
            "request_id": request.id,
            "state": request.state,
            "host_id": request.host_id,
            "access": request.access.as_str(),
            "minutes": request.minutes,
            "policy": request.policy_name,
            "approver_group_id": request.approver_group_id,
            "approvals_needed": request.approvals_needed,
            "approvals": request.decisions.iter().filter(|d| d.decision == "approve").count(),
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

    /// Makes a request: allowed by a policy (else `forbidden_error` saying why), pending
    /// approval or approved at once. Audited.
    pub async fn request_access(
        &self,
        by: &Authority,
        request: &NewRequest,
    ) -> Result<RequestRecord, ControlError> {
        by.require(Permission::AccessRequest)?;
        validate_reason(&request.reason)?;
        if request.minutes == 0 {
            return Err(ValidationError::new("minutes", "must be at least 1").into());
        }
        if let Some(key) = &request.ssh_public_key {
            validate_ssh_public_key(key)?;
        }
        let host = self.find_host(&request.host).await?;
        let labels = self.labels_of(&host.id).await?;
        let groups: Vec<String> = self
            .store
            .groups_of(&by.principal.id)
            .await?
            .into_iter()
            .map(|g| g.id)
            .collect();
        let now = Utc::now();
        let policies = self.store.policies().await?;
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
        .map_err(ControlError::Forbidden)?;
        if allowed.mfa_at_request {
            self.require_factor(by, SensitiveAction::Approve)?;
        }
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
        let record = RequestRecord {
            id: new_id("ar_")?,
            requester_id: by.principal.id.clone(),
            host_id: host.id.clone(),
            access: request.access,
            minutes: request.minutes,
            reason: request.reason.clone(),
            ssh_public_key: request.ssh_public_key.clone(),
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
            decisions: Vec::new(),
        };
        let event = by.event("access.requested").host(&host.id).detail(json!({
            "request_id": record.id,
            "access": request.access.as_str(),
            "minutes": request.minutes,
            "reason": request.reason,
            "policy": allowed.policy,
            "state": state,
        }));
        self.store
            .insert_request(&record, event, now)
            .await?
            .map_err(|r| refusal(&record.id, r))?;
        let stored = self.request_named(&record.id).await?;
        // Approvers learn of a pending request; everyone subscribed of one approved at once.
        let event = if stored.state == "approved" {
            "access.approved"
        } else {
            "access.requested"
        };
        self.notify_request(event, &stored).await;
        Ok(stored)
    }

    async fn request_named(&self, id: &str) -> Result<RequestRecord, ControlError> {
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
        by.require(Permission::AccessApprove)?;
        if !reason.is_empty() {
            validate_reason(reason)?;
        }
        let request = self.request_named(id).await?;
        if request.requester_id == by.principal.id {
            return Err(ControlError::Forbidden(format!(
                "{} made access request {id}; a request is never decided by its requester",
                by.actor()
            )));
        }
        let approver = match &request.approver_group_id {
            Some(group) => self
                .store
                .groups_of(&by.principal.id)
                .await?
                .iter()
                .any(|g| g.id == *group),
            None => false,
        };
        if !approver {
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
            .host(&request.host_id)
            .detail(json!({"request_id": id, "reason": reason}));
        let state = self
            .store
            .decide_request(id, &decision, event, now)
            .await?
            .map_err(|r| refusal(id, r))?;
        let stored = self.request_named(id).await?;
        // The requester learns of the decision.
        match state.as_str() {
            "approved" => self.notify_request("access.approved", &stored).await,
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
        let request = self.request_named(id).await?;
        if request.requester_id != by.principal.id {
            return Err(ControlError::Forbidden(format!(
                "access request {id} is someone else's; only its requester cancels it"
            )));
        }
        let event = by
            .event("access.cancelled")
            .host(&request.host_id)
            .detail(json!({"request_id": id, "reason": reason}));
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

/// How long a request may wait for its approvals by default.
pub const DEFAULT_PENDING_TTL: Duration = Duration::hours(1);
