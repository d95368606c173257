//! Access policies: written by `security_admin` (`policies.manage`, with the `change_policy`
//! step-up), evaluated for every request by [`evaluate`], a pure function of the policies,
//! the requester and what is asked — so a table of cases pins its behaviour.
//!
//! A request is allowed by the policies of the requester's groups that grant the access, match
//! the host's labels, allow the duration and are open at the time; among those, one needing no
//! approval wins, else the first by name. A request no policy allows is refused naming the
//! closest reason (no policy for the groups, the access, the host, the duration, the time).

use chrono::{DateTime, Utc};
use latch_common::access::{AccessKind, PolicyRequest, PolicyView};
use latch_common::authz::Permission;
use latch_common::labels::{Labels, Selector};
use serde_json::json;

use crate::mfa::SensitiveAction;
use crate::people::{Authority, new_id};
use crate::store::access::{PolicyRecord, PolicyRefusal};
use crate::{Control, ControlError};

/// Who asks.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The ids of the groups the requester is in.
    pub groups: &'a [String],
    /// Whether the requester is a service user (pipelines, agents).
    pub service: bool,
}

/// What is asked.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Which access.
    pub access: AccessKind,
    /// The host's labels.
    pub host_labels: &'a Labels,
    /// For how long.
    pub minutes: u32,
    /// When.
    pub at: DateTime<Utc>,
}

/// Who must approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Nobody: the request is approved at once.
    Automatic,
    /// `approvals` different members of group `group_id`, never the requester.
    Needed {
        /// The approvers' group.
        group_id: String,
        /// How many.
        approvals: u32,
    },
}

/// The policy that allows a request, and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The policy.
    pub policy_id: String,
    /// Its name.
    pub policy: String,
    /// Who must approve.
    pub approval: Approval,
    /// One holder at a time per host and access.
    pub exclusive: bool,
    /// A second factor at request time.
    pub mfa_at_request: bool,
    /// A second factor at approval time.
    pub mfa_at_approval: bool,
    /// Re-confirmation interval.
    pub reauth_minutes: Option<u32>,
}

fn names(policies: &[&PolicyRecord]) -> String {
    policies
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which policy allows `ask` for `who`, or why none does (a sentence for the requester).
pub fn evaluate(
    policies: &[PolicyRecord],
    who: Requester<'_>,
    ask: Ask<'_>,
) -> Result<Allowed, String> {
    let mine: Vec<&PolicyRecord> = policies
        .iter()
        .filter(|p| who.groups.contains(&p.group_id))
        .collect();
    if mine.is_empty() {
        return Err(
            "no access policy covers any of your groups; ask a security_admin for one".to_owned(),
        );
    }
    let granting: Vec<&PolicyRecord> = mine
        .iter()
        .copied()
        .filter(|p| p.access.contains(&ask.access))
        .collect();
    if granting.is_empty() {
        return Err(format!(
            "the policies of your groups ({}) do not allow {}",
            names(&mine),
            ask.access
        ));
    }
    let on_host: Vec<&PolicyRecord> = granting
        .iter()
        .copied()
        .filter(|p| {
            Selector::parse(&p.hosts).is_ok_and(|s| !s.is_empty() && s.matches(ask.host_labels))
        })
        .collect();
    if on_host.is_empty() {
        let selectors: Vec<String> = granting
            .iter()
            .map(|p| format!("{}: {}", p.name, p.hosts))
            .collect();
        return Err(format!(
            "this host is outside the hosts your policies cover ({})",
            selectors.join("; ")
        ));
    }
    let long_enough: Vec<&PolicyRecord> = on_host
        .iter()
        .copied()
        .filter(|p| ask.minutes <= p.max_minutes)
        .collect();
    if long_enough.is_empty() {
        let most = on_host.iter().map(|p| p.max_minutes).max().unwrap_or(0);
        return Err(format!(
            "{} minutes is more than your policies allow here (at most {most} minutes); ask for less",
            ask.minutes
        ));
    }
    let open: Vec<&PolicyRecord> = long_enough
        .iter()
        .copied()
        .filter(|p| p.windows.is_empty() || p.windows.iter().any(|w| w.contains(ask.at)))
        .collect();
    if open.is_empty() {
        return Err(format!(
            "requests are allowed only within the time windows of {} (UTC); try again then",
            names(&long_enough)
        ));
    }
    let approval_of = |p: &PolicyRecord| {
        let automatic = !p.approval_required
            || (who.service
                && p.auto_approve_service_minutes
                    .is_some_and(|limit| ask.minutes <= limit));
        match (&p.approver_group_id, automatic) {
            (Some(group), false) => Approval::Needed {
                group_id: group.clone(),
                approvals: p.approvals,
            },
            _ => Approval::Automatic,
        }
    };
    let chosen = open
        .iter()
        .copied()
        .find(|p| approval_of(p) == Approval::Automatic)
        .unwrap_or(open[0]);
    Ok(Allowed {
        policy_id: chosen.id.clone(),
        policy: chosen.name.clone(),
        approval: approval_of(chosen),
        exclusive: chosen.exclusive,
        mfa_at_request: chosen.mfa_at_request,
        mfa_at_approval: chosen.mfa_at_approval,
        reauth_minutes: chosen.reauth_minutes,
    })
}

fn policy_view(p: PolicyRecord) -> PolicyView {
    PolicyView {
        id: p.id,
        name: p.name,
        description: p.description,
        group: p.group,
        access: p.access,
        hosts: p.hosts,
        max_minutes: p.max_minutes,
        approval_required: p.approval_required,
        approver_group: p.approver_group,
        approvals: p.approvals,
        auto_approve_service_minutes: p.auto_approve_service_minutes,
        windows: p.windows,
        exclusive: p.exclusive,
        mfa_at_request: p.mfa_at_request,
        mfa_at_approval: p.mfa_at_approval,
        reauth_minutes: p.reauth_minutes,
        created_at: p.created_at,
        updated_at: p.updated_at,
    }
}

impl Control {
    /// Changing policies: `policies.manage` everywhere and the `change_policy` step-up.
    fn require_policy_change(&self, by: &Authority) -> Result<(), ControlError> {
        by.require_everywhere(Permission::PoliciesManage)?;
        by.require_mfa(&self.config.mfa, SensitiveAction::ChangePolicy, Utc::now())
    }

    /// Reading policies: `policies.manage` or `access.view`.
    fn require_policy_view(&self, by: &Authority) -> Result<(), ControlError> {
        if by.require_everywhere(Permission::AccessView).is_ok() {
            return Ok(());
        }
        by.require_everywhere(Permission::PoliciesManage)
    }

    /// The policy `key` names (id or name).
    async fn policy_named(&self, key: &str) -> Result<PolicyRecord, ControlError> {
        self.store
            .policies()
            .await?
            .into_iter()
            .find(|p| p.id == key || p.name == key)
            .ok_or_else(|| ControlError::NotFound {
                what: "policy",
                key: key.to_owned(),
            })
    }

    /// A record from a request: its groups resolved.
    async fn policy_record(
        &self,
        request: &PolicyRequest,
        id: String,
        created_at: DateTime<Utc>,
    ) -> Result<PolicyRecord, ControlError> {
        request.validate()?;
        let group = self.group_named(&request.group).await?;
        let approver = match &request.approver_group {
            Some(name) => Some(self.group_named(name).await?),
            None => None,
        };
        let mut access = request.access.clone();
        access.sort();
        access.dedup();
        Ok(PolicyRecord {
            id,
            name: request.name.clone(),
            description: request.description.clone(),
            group_id: group.id,
            group: group.name,
            access,
            hosts: request.hosts.trim().to_owned(),
            max_minutes: request.max_minutes,
            approval_required: request.approval_required,
            approver_group_id: approver.as_ref().map(|g| g.id.clone()),
            approver_group: approver.map(|g| g.name),
            approvals: request.approvals,
            auto_approve_service_minutes: request.auto_approve_service_minutes,
            windows: request.windows.clone(),
            exclusive: request.exclusive,
            mfa_at_request: request.mfa_at_request,
            mfa_at_approval: request.mfa_at_approval,
            reauth_minutes: request.reauth_minutes,
            created_at,
            updated_at: Utc::now(),
        })
    }

    fn policy_event(
        by: &Authority,
        action: &'static str,
        p: &PolicyRecord,
    ) -> crate::audit::AuditEvent {
        by.event(action).detail(json!({
            "policy_id": p.id,
            "name": p.name,
            "group": p.group,
            "access": p.access,
            "hosts": p.hosts,
            "max_minutes": p.max_minutes,
            "approval_required": p.approval_required,
            "approver_group": p.approver_group,
            "approvals": p.approvals,
            "auto_approve_service_minutes": p.auto_approve_service_minutes,
            "windows": p.windows,
            "exclusive": p.exclusive,
        }))
    }

    /// Every policy (`policies.manage` or `access.view`).
    pub async fn list_policies(&self, by: &Authority) -> Result<Vec<PolicyView>, ControlError> {
        self.require_policy_view(by)?;
        Ok(self
            .store
            .policies()
            .await?
            .into_iter()
            .map(policy_view)
            .collect())
    }

    /// One policy.
    pub async fn show_policy(&self, by: &Authority, key: &str) -> Result<PolicyView, ControlError> {
        self.require_policy_view(by)?;
        Ok(policy_view(self.policy_named(key).await?))
    }

    /// Writes a new policy.
    pub async fn create_policy(
        &self,
        by: &Authority,
        request: &PolicyRequest,
    ) -> Result<PolicyView, ControlError> {
        self.require_policy_change(by)?;
        let now = Utc::now();
        let policy = self.policy_record(request, new_id("pol_")?, now).await?;
        let event = Self::policy_event(by, "policy.created", &policy);
        match self.store.insert_policy(&policy, event, now).await? {
            // As stored (times at the store's precision).
            Ok(()) => Ok(policy_view(self.policy_named(&policy.id).await?)),
            Err(_) => Err(ControlError::AlreadyExists {
                what: "policy",
                key: request.name.clone(),
            }),
        }
    }

    /// Replaces a policy's every field.
    pub async fn replace_policy(
        &self,
        by: &Authority,
        key: &str,
        request: &PolicyRequest,
    ) -> Result<PolicyView, ControlError> {
        self.require_policy_change(by)?;
        let old = self.policy_named(key).await?;
        let policy = self.policy_record(request, old.id, old.created_at).await?;
        let event = Self::policy_event(by, "policy.updated", &policy);
        match self
            .store
            .replace_policy(&policy, event, Utc::now())
            .await?
        {
            Ok(()) => Ok(policy_view(policy)),
            Err(PolicyRefusal::NameTaken) => Err(ControlError::AlreadyExists {
                what: "policy",
                key: request.name.clone(),
            }),
            Err(PolicyRefusal::Missing) => Err(ControlError::NotFound {
                what: "policy",
                key: key.to_owned(),
            }),
        }
    }

    /// Deletes a policy (requests it allowed stay as they are).
    pub async fn delete_policy(&self, by: &Authority, key: &str) -> Result<(), ControlError> {
        self.require_policy_change(by)?;
        let policy = self.policy_named(key).await?;
        let event = by
            .event("policy.deleted")
            .detail(json!({"policy_id": policy.id, "name": policy.name}));
        match self
            .store
            .delete_policy(&policy.id, event, Utc::now())
            .await?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(ControlError::NotFound {
                what: "policy",
                key: key.to_owned(),
            }),
        }
    }

    /// The names of the policies that name group `group_id` (as requesters or approvers).
    pub(crate) async fn policies_naming_group(
        &self,
        group_id: &str,
    ) -> Result<Vec<String>, ControlError> {
        Ok(self
            .store
            .policies()
            .await?
            .into_iter()
            .filter(|p| p.group_id == group_id || p.approver_group_id.as_deref() == Some(group_id))
            .map(|p| p.name)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use latch_common::access::TimeWindow;

    fn policy(name: &str, group: &str) -> PolicyRecord {
        PolicyRecord {
            id: format!("pol_{name}"),
            name: name.into(),
            description: String::new(),
            group_id: group.into(),
            group: group.into(),
            access: vec![AccessKind::EphemeralAccount, AccessKind::Sudo],
            hosts: "env=prod".into(),
            max_minutes: 120,
            approval_required: true,
            approver_group_id: Some("grp_managers".into()),
            approver_group: Some("managers".into()),
            approvals: 1,
            auto_approve_service_minutes: None,
            windows: Vec::new(),
            exclusive: false,
            mfa_at_request: false,
            mfa_at_approval: true,
            reauth_minutes: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn labels(text: &[(&str, &str)]) -> Labels {
        text.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// 2026-11-23 10:00 UTC, a Monday.
    fn monday_morning() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn policy_evaluation_follows_the_table() {
        let dba = policy("dba-prod", "grp_dbas");
        let readonly = PolicyRecord {
            access: vec![AccessKind::EphemeralAccount],
            hosts: "env=staging".into(),
            approval_required: false,
            approver_group_id: None,
            approver_group: None,
            ..policy("staging-login", "grp_devs")
        };
        let office_hours = PolicyRecord {
            windows: vec![TimeWindow {
                days: vec![
                    "mon".into(),
                    "tue".into(),
                    "wed".into(),
                    "thu".into(),
                    "fri".into(),
                ],
                start: "08:00".into(),
                end: "18:00".into(),
            }],
            exclusive: true,
            ..policy("office-hours", "grp_oncall")
        };
        let pipelines = PolicyRecord {
            auto_approve_service_minutes: Some(15),
            ..policy("ci-deploy", "grp_ci")
        };
        let policies = vec![dba, readonly, office_hours, pipelines];
        let prod = labels(&[("env", "prod"), ("team", "db")]);
        let staging = labels(&[("env", "staging")]);
        let dbas = ["grp_dbas".to_owned()];
        let devs = ["grp_devs".to_owned()];
        let oncall = ["grp_oncall".to_owned()];
        let ci = ["grp_ci".to_owned()];
        let nobody: [String; 0] = [];
        let saturday = monday_morning() + chrono::Duration::days(5);
        let needs = |approvals| Approval::Needed {
            group_id: "grp_managers".into(),
            approvals,
        };
        type Case<'a> = (
            &'a str,
            &'a [String],
            bool,
            AccessKind,
            &'a Labels,
            u32,
            DateTime<Utc>,
            Result<(&'a str, Approval), &'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "a DBA asks sudo on prod for 2 h",
                &dbas,
                false,
                AccessKind::Sudo,
                &prod,
                120,
                monday_morning(),
                Ok(("dba-prod", needs(1))),
            ),
            (
                "a DBA asks for too long",
                &dbas,
                false,
                AccessKind::Sudo,
                &prod,
                121,
                monday_morning(),
                Err("at most 120 minutes"),
            ),
            (
                "a DBA asks on staging",
                &dbas,
                false,
                AccessKind::Sudo,
                &staging,
                30,
                monday_morning(),
                Err("outside the hosts"),
            ),
            (
                "a dev logs in on staging: no approval",
                &devs,
                false,
                AccessKind::EphemeralAccount,
                &staging,
                60,
                monday_morning(),
                Ok(("staging-login", Approval::Automatic)),
            ),
            (
                "a dev asks sudo on staging",
                &devs,
                false,
                AccessKind::Sudo,
                &staging,
                60,
                monday_morning(),
                Err("do not allow sudo"),
            ),
            (
                "someone in no group",
                &nobody,
                false,
                AccessKind::Sudo,
                &prod,
                10,
                monday_morning(),
                Err("no access policy"),
            ),
            (
                "on call, in office hours",
                &oncall,
                false,
                AccessKind::Sudo,
                &prod,
                60,
                monday_morning(),
                Ok(("office-hours", needs(1))),
            ),
            (
                "on call, on a Saturday",
                &oncall,
                false,
                AccessKind::Sudo,
                &prod,
                60,
                saturday,
                Err("time windows"),
            ),
            (
                "a pipeline, short: approved at once",
                &ci,
                true,
                AccessKind::Sudo,
                &prod,
                15,
                monday_morning(),
                Ok(("ci-deploy", Approval::Automatic)),
            ),
            (
                "a pipeline, longer: approval",
                &ci,
                true,
                AccessKind::Sudo,
                &prod,
                16,
                monday_morning(),
                Ok(("ci-deploy", needs(1))),
            ),
            (
                "a person in the CI group: approval",
                &ci,
                false,
                AccessKind::Sudo,
                &prod,
                5,
                monday_morning(),
                Ok(("ci-deploy", needs(1))),
            ),
        ];
        for (what, groups, service, access, host, minutes, at, expected) in cases {
            let got = evaluate(
                &policies,
                Requester { groups, service },
                Ask {
                    access,
                    host_labels: host,
                    minutes,
                    at,
                },
            );
            match (got, expected) {
                (Ok(allowed), Ok((name, approval))) => {
                    assert_eq!(allowed.policy, name, "{what}");
                    assert_eq!(allowed.approval, approval, "{what}");
                }
                (Err(reason), Err(words)) => assert!(reason.contains(words), "{what}: {reason}"),
                (got, expected) => panic!("{what}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_policy_needing_no_approval_wins_and_exclusivity_follows_the_chosen_one() {
        let strict = PolicyRecord {
            exclusive: true,
            ..policy("a-strict", "grp_dbas")
        };
        let easy = PolicyRecord {
            approval_required: false,
            approver_group_id: None,
            approver_group: None,
            ..policy("b-easy", "grp_dbas")
        };
        let prod = labels(&[("env", "prod")]);
        let groups = ["grp_dbas".to_owned()];
        let allowed = evaluate(
            &[strict, easy],
            Requester {
                groups: &groups,
                service: false,
            },
            Ask {
                access: AccessKind::Sudo,
                host_labels: &prod,
                minutes: 30,
                at: monday_morning(),
            },
        )
        .unwrap();
        assert_eq!(allowed.policy, "b-easy");
        assert_eq!(allowed.approval, Approval::Automatic);
        assert!(!allowed.exclusive);
    }
}
