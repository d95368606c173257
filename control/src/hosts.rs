//! Hosts: authentication of agents, look-up by id or name, and the `online` rule.

use std::collections::HashMap;

use chrono::Utc;
use latch_common::api::HostView;
use latch_common::authz::Permission;
use latch_common::labels::{Labels, Selector};
use latch_common::protocol::AgentInfo;

use crate::audit::AuditEvent;
use crate::people::{Authority, Scope};
use crate::secret::hash_token;
use crate::store::{HostFilter, HostRecord, Page};
use crate::{Control, ControlError};

/// The ids of the hosts (among `labels`, every host's labels by id) within `scope` that match
/// `selector`, sorted; `None` when every host does (no delegation, no selector).
fn hosts_within(
    scope: &Scope,
    selector: &Selector,
    labels: &HashMap<String, Labels>,
) -> Option<Vec<String>> {
    if matches!(scope, Scope::Everywhere) && selector.is_empty() {
        return None;
    }
    let mut ids: Vec<String> = labels
        .iter()
        .filter(|(_, l)| scope.covers(l) && selector.matches(l))
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    Some(ids)
}

impl Control {
    /// The host whose credential this is.
    pub async fn authenticate_host(&self, credential: &str) -> Result<HostRecord, ControlError> {
        match self
            .store
            .host_by_credential(&hash_token(credential))
            .await?
        {
            Some(host) => Ok(host),
            None => {
                self.audit_auth_failure("host").await?;
                Err(ControlError::Unauthenticated(
                    "the host credential is not valid (the host was removed, or the database restored); enroll it again with `latch-agent enroll --replace`",
                ))
            }
        }
    }

    async fn audit_auth_failure(&self, credential: &str) -> Result<(), ControlError> {
        let event = AuditEvent::new("anonymous", "auth.failure")
            .detail(serde_json::json!({"credential": credential}));
        Ok(self.store.append_audit(&event, Utc::now()).await?)
    }

    /// A page of the hosts the caller may see (a delegated admin sees those within its labels)
    /// that match `selector` (an empty one matches every host). The page counts matching hosts
    /// only, so `offset` and `count` walk them without gaps or repeats.
    pub async fn list_hosts(
        &self,
        by: &Authority,
        selector: &Selector,
        page: Page,
    ) -> Result<Vec<HostView>, ControlError> {
        let scope = by.require(Permission::HostsView)?;
        let mut labels = self.store.host_labels().await?;
        let filter = HostFilter {
            ids: hosts_within(&scope, selector, &labels),
        };
        let hosts = self.store.list_hosts(&filter, page).await?;
        Ok(hosts
            .into_iter()
            .map(|h| {
                let l = labels.remove(&h.id).unwrap_or_default();
                self.host_view(h, l)
            })
            .collect())
    }

    /// The ids of the hosts within `scope` that match `selector`, or `None` when every host
    /// does (no delegation, no selector), for the store to filter lists by.
    pub(crate) async fn host_ids_within(
        &self,
        scope: &Scope,
        selector: &Selector,
    ) -> Result<Option<Vec<String>>, ControlError> {
        if matches!(scope, Scope::Everywhere) && selector.is_empty() {
            return Ok(None);
        }
        let labels = self.store.host_labels().await?;
        Ok(hosts_within(scope, selector, &labels))
    }

    /// The labels of a host (none if it has none).
    pub(crate) async fn labels_of(&self, host_id: &str) -> Result<Labels, ControlError> {
        Ok(self
            .store
            .labels_of_host(host_id)
            .await?
            .unwrap_or_default())
    }

    /// The host `key` names, if the caller has `permission` on it. A host outside a delegated
    /// admin's labels is reported as not found and is not counted when a name is ambiguous, so
    /// its existence does not leak.
    pub(crate) async fn host_for(
        &self,
        by: &Authority,
        permission: Permission,
        key: &str,
    ) -> Result<(HostRecord, Labels), ControlError> {
        let scope = by.require(permission)?;
        let mut within = Vec::new();
        for host in self.store.find_hosts(key).await? {
            let labels = self.labels_of(&host.id).await?;
            if scope.covers(&labels) {
                within.push((host, labels));
            }
        }
        match within.len() {
            0 => Err(ControlError::NotFound {
                what: "host",
                key: key.to_owned(),
            }),
            1 => Ok(within.remove(0)),
            n => Err(ControlError::AmbiguousHost(key.to_owned(), n)),
        }
    }

    /// One host, as the caller may see it.
    pub async fn show_host(&self, by: &Authority, key: &str) -> Result<HostView, ControlError> {
        let (host, labels) = self.host_for(by, Permission::HostsView, key).await?;
        Ok(self.host_view(host, labels))
    }

    /// The one host with this id or host name.
    pub async fn find_host(&self, id_or_hostname: &str) -> Result<HostRecord, ControlError> {
        let mut hosts = self.store.find_hosts(id_or_hostname).await?;
        match hosts.len() {
            0 => Err(ControlError::NotFound {
                what: "host",
                key: id_or_hostname.to_owned(),
            }),
            1 => Ok(hosts.remove(0)),
            n => Err(ControlError::AmbiguousHost(id_or_hostname.to_owned(), n)),
        }
    }

    /// Removes a host: its credential stops working at once (also for a long-poll in progress)
    /// and its pending jobs are cancelled. Returns the host id and how many jobs were cancelled.
    pub async fn remove_host(
        &self,
        by: &Authority,
        id_or_hostname: &str,
    ) -> Result<(String, u64), ControlError> {
        let (host, _) = self
            .host_for(by, Permission::HostsManage, id_or_hostname)
            .await?;
        let cancelled = self
            .store
            .remove_host(&host.id, Utc::now(), &by.audit_actor())
            .await?
            .ok_or_else(|| ControlError::NotFound {
                what: "host",
                key: id_or_hostname.to_owned(),
            })?;
        tracing::warn!(host_id = %host.id, hostname = %host.facts.hostname, cancelled, "host removed");
        self.wakeups.wake(&host.id);
        Ok((host.id, cancelled))
    }

    /// Replaces `host`'s credential with the one its agent made; the old one stops working.
    pub async fn rotate_host_credential(
        &self,
        host: &HostRecord,
        request: &latch_common::api::RotateCredentialRequest,
    ) -> Result<(), ControlError> {
        request.validate()?;
        if self
            .store
            .rotate_host_credential(&host.id, &hash_token(&request.new_credential), Utc::now())
            .await?
        {
            tracing::info!(host_id = %host.id, "host credential rotated");
            Ok(())
        } else {
            Err(ControlError::NotFound {
                what: "host",
                key: host.id.clone(),
            })
        }
    }

    /// The administrator's view of a host.
    pub fn host_view(&self, host: HostRecord, labels: Labels) -> HostView {
        let online = host
            .last_seen
            .is_some_and(|seen| Utc::now() - seen < self.config.online_window);
        HostView {
            id: host.id,
            facts: host.facts,
            enrolled_at: host.enrolled_at,
            last_seen: host.last_seen,
            online,
            labels,
            ssh_ca: host.ssh_ca,
            agent: host.agent,
        }
    }

    /// Records which agent `host` runs, when it differs from what is recorded (a poll's
    /// User-Agent and protocol; written only when an agent was installed or upgraded).
    pub async fn note_agent(
        &self,
        host: &HostRecord,
        agent: AgentInfo,
    ) -> Result<(), ControlError> {
        if host.agent.as_ref() != Some(&agent) {
            self.store.record_agent(&host.id, &agent).await?;
        }
        Ok(())
    }

    /// Whether the host `host_id` was enrolled to trust the SSH user CA (`latchctl
    /// enroll-token create --ssh-ca`): its sshd accepts certificates from
    /// [`Control::issue_user_certificate`] for the principals a create-account job wrote.
    pub async fn host_uses_ssh_ca(&self, host_id: &str) -> Result<bool, ControlError> {
        self.store
            .find_hosts(host_id)
            .await?
            .into_iter()
            .find(|host| host.id == host_id)
            .map(|host| host.ssh_ca)
            .ok_or_else(|| ControlError::NotFound {
                what: "host",
                key: host_id.to_owned(),
            })
    }
}
