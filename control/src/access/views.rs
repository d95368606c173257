//! Access requests as people see them: one request or a page of them, with names for ids,
//! each host's jobs and their statuses ([`AccessRequestView`]).

use std::collections::HashMap;

use latch_common::access::{AccessRequestView, DecisionView, RequestHostView};
use latch_common::authz::Permission;

use super::requests::MadeRequest;
use crate::people::Authority;
use crate::store::access::{RequestFilter, RequestRecord};
use crate::{Control, ControlError};

impl Control {
    /// One request as `by` may see it.
    pub async fn show_access(
        &self,
        by: &Authority,
        id: &str,
    ) -> Result<AccessRequestView, ControlError> {
        let request = self.visible_request(by, id).await?;
        let mut names = Names::default();
        self.request_view(request, &mut names).await
    }

    /// A page of requests, newest first: `mine` only the caller's; otherwise everyone's for a
    /// holder of `access.view` on every host, and for anyone else theirs plus those they may approve.
    pub async fn list_access(
        &self,
        by: &Authority,
        mine: bool,
        state: Option<String>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<AccessRequestView>, ControlError> {
        let visible_to = if by.require_everywhere(Permission::AccessView).is_ok() {
            None
        } else {
            let groups = self
                .store
                .groups_of(&by.principal.id)
                .await?
                .into_iter()
                .map(|g| g.id)
                .collect();
            Some((by.principal.id.clone(), groups))
        };
        let filter = RequestFilter {
            requester_id: mine.then(|| by.principal.id.clone()),
            state,
            visible_to,
        };
        let mut names = Names::default();
        let mut views = Vec::new();
        for request in self.store.list_requests(&filter, limit, offset).await? {
            views.push(self.request_view(request, &mut names).await?);
        }
        Ok(views)
    }

    /// A request as shown, with names for ids.
    async fn request_view(
        &self,
        request: RequestRecord,
        names: &mut Names,
    ) -> Result<AccessRequestView, ControlError> {
        let mut decisions = Vec::new();
        for d in &request.decisions {
            decisions.push(DecisionView {
                by: names.principal(self, &d.principal_id).await?,
                decision: d.decision.clone(),
                reason: d.reason.clone(),
                at: d.at,
            });
        }
        let mut hosts = Vec::new();
        for h in &request.hosts {
            hosts.push(RequestHostView {
                host_id: h.host_id.clone(),
                host: names.host(self, &h.host_id).await?,
                state: h.state.clone(),
                provision_job: h.provision_job_id.clone(),
                revoke_job: h.revoke_job_id.clone(),
                error: h.error.clone(),
                ssh_certificate: self.uses_certificates(&h.host_id).await?,
                provision_status: self.job_status(h.provision_job_id.as_deref()).await?,
                revoke_status: self.job_status(h.revoke_job_id.as_deref()).await?,
            });
        }
        let approver_group = match &request.approver_group_id {
            Some(id) => Some(
                self.store
                    .group(id)
                    .await?
                    .map_or_else(|| id.clone(), |g| g.name),
            ),
            None => None,
        };
        Ok(AccessRequestView {
            requester: names.principal(self, &request.requester_id).await?,
            id: request.id,
            target: request.target,
            access: request.access,
            minutes: request.minutes,
            reason: request.reason,
            state: request.state,
            policy: request.policy_name,
            approver_group,
            approvals_needed: request.approvals_needed,
            decisions,
            account: (!request.account.is_empty()).then_some(request.account),
            hosts,
            created_at: request.created_at,
            pending_until: request.pending_until,
            decided_at: request.decided_at,
            decision_reason: request.decision_reason,
            activated_at: request.activated_at,
            ends_at: request.ends_at,
            end_reason: request.end_reason,
            ended_at: request.ended_at,
            confirm_by: request.confirm_by,
            ssh_public_key: request.ssh_public_key,
            key_generated: request.key_generated,
            certificate: request.certificate,
            private_key: None,
        })
    }

    /// The status of job `id` (`pending`, `confirmed`, `failed`), if there is one.
    async fn job_status(&self, id: Option<&str>) -> Result<Option<String>, ControlError> {
        let Some(id) = id else {
            return Ok(None);
        };
        Ok(self.store.get_job(id).await?.map(|j| j.status.to_string()))
    }

    /// The view of a request just made, with its generated private key (this once).
    pub async fn made_request_view(
        &self,
        made: MadeRequest,
    ) -> Result<AccessRequestView, ControlError> {
        let mut names = Names::default();
        let mut view = self.request_view(made.request, &mut names).await?;
        view.private_key = made.private_key.map(|key| key.as_str().to_owned());
        Ok(view)
    }
}

/// Names of principals and hosts looked up once per answer.
#[derive(Default)]
struct Names {
    principals: HashMap<String, String>,
    hosts: HashMap<String, String>,
}

impl Names {
    async fn principal(&mut self, control: &Control, id: &str) -> Result<String, ControlError> {
        if let Some(name) = self.principals.get(id) {
            return Ok(name.clone());
        }
        let name = control
            .store
            .principal(id)
            .await?
            .map_or_else(|| id.to_owned(), |p| p.name);
        self.principals.insert(id.to_owned(), name.clone());
        Ok(name)
    }

    async fn host(&mut self, control: &Control, id: &str) -> Result<String, ControlError> {
        if let Some(name) = self.hosts.get(id) {
            return Ok(name.clone());
        }
        let name = match control.store.find_hosts(id).await?.into_iter().next() {
            Some(host) => host.facts.hostname,
            None => id.to_owned(),
        };
        self.hosts.insert(id.to_owned(), name.clone());
        Ok(name)
    }
}
