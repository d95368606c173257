//! Access policies (issue 12, first part) through the library, on both stores: written by a
//! security_admin with the step-up, refused to others, validated, audited; a group named by a
//! policy is not deleted; stored policies evaluate as written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::Arc;

use chrono::Utc;
use latch_common::access::{AccessKind, PolicyRequest};
use latch_common::authz::Role;
use latch_common::labels::Labels;
use latch_control::access::{Approval, Ask, Requester, evaluate};
use latch_control::audit::AuditEvent;
use latch_control::datadir;
use latch_control::error::ControlError;
use latch_control::store::Store;
use latch_control::store::people::GroupRecord;
use latch_control::{Control, ControlConfig};
use support::TestDb;

async fn group(store: &dyn Store, name: &str) {
    let now = Utc::now();
    store
        .insert_group(
            &GroupRecord {
                id: format!("grp_{name}"),
                name: name.into(),
                description: String::new(),
                idp_group: None,
                created_at: now,
            },
            AuditEvent::new("test", "group.create"),
            now,
        )
        .await
        .unwrap()
        .unwrap();
}

fn dba_policy() -> PolicyRequest {
    PolicyRequest {
        name: "dba-prod".into(),
        description: "DBAs on production databases".into(),
        group: "dbas".into(),
        access: vec![
            AccessKind::Sudo,
            AccessKind::EphemeralAccount,
            AccessKind::Sudo,
        ],
        hosts: "env=prod,team=db".into(),
        max_minutes: 120,
        approval_required: true,
        approver_group: Some("managers".into()),
        approvals: 1,
        auto_approve_service_minutes: None,
        windows: Vec::new(),
        exclusive: true,
        mfa_at_request: false,
        mfa_at_approval: true,
        reauth_minutes: None,
    }
}

both_stores!(policies_are_written_by_security_admins_and_evaluate_as_written);
async fn policies_are_written_by_security_admins_and_evaluate_as_written(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = datadir::open(dir.path(), &db.options()).await.unwrap();
    let store = data.store.clone();
    let control = Arc::new(Control::new(
        data.store,
        ControlConfig::default(),
        data.signer,
    ));
    let sec = support::person(&*store, "sam", &[Role::SecurityAdmin]).await;
    let mut sec_no_step_up = sec.clone();
    sec_no_step_up.session.mfa_at = None;
    let rex = support::person(&*store, "rex", &[Role::ResourceAdmin]).await;
    group(&*store, "dbas").await;
    group(&*store, "managers").await;

    assert!(matches!(
        control.create_policy(&rex, &dba_policy()).await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        control.create_policy(&sec_no_step_up, &dba_policy()).await,
        Err(ControlError::StepUpRequired(_))
    ));
    let unknown_group = PolicyRequest {
        group: "nobody".into(),
        ..dba_policy()
    };
    assert!(matches!(
        control.create_policy(&sec, &unknown_group).await,
        Err(ControlError::NotFound { .. })
    ));
    let everywhere = PolicyRequest {
        hosts: " ".into(),
        ..dba_policy()
    };
    assert!(matches!(
        control.create_policy(&sec, &everywhere).await,
        Err(ControlError::Invalid(_))
    ));
    let made = control.create_policy(&sec, &dba_policy()).await.unwrap();
    assert_eq!(
        made.access,
        [AccessKind::EphemeralAccount, AccessKind::Sudo]
    );
    assert_eq!(made.group, "dbas");
    assert!(matches!(
        control.create_policy(&sec, &dba_policy()).await,
        Err(ControlError::AlreadyExists { .. })
    ));
    assert_eq!(control.list_policies(&sec).await.unwrap().len(), 1);
    assert!(matches!(
        control.list_policies(&rex).await,
        Err(ControlError::Forbidden(_))
    ));

    // As stored, it decides requests.
    let policies = store.policies().await.unwrap();
    let prod_db: Labels = [("env", "prod"), ("team", "db")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let dbas = ["grp_dbas".to_owned()];
    let ask = |minutes| Ask {
        access: AccessKind::Sudo,
        host_labels: &prod_db,
        minutes,
        at: Utc::now(),
    };
    let who = Requester {
        groups: &dbas,
        service: false,
    };
    let allowed = evaluate(&policies, who, ask(60)).unwrap();
    assert_eq!(
        allowed.approval,
        Approval::Needed {
            group_id: "grp_managers".into(),
            approvals: 1
        }
    );
    assert!(allowed.exclusive && allowed.mfa_at_approval);
    assert!(
        evaluate(&policies, who, ask(121))
            .unwrap_err()
            .contains("at most 120")
    );

    // A group a policy names is not deleted.
    let refused = control
        .delete_group(&support::admin(), "managers")
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("dba-prod"), "{refused}");

    // Replaced whole, then deleted; every step audited.
    let shorter = PolicyRequest {
        max_minutes: 30,
        approval_required: false,
        approver_group: None,
        ..dba_policy()
    };
    let replaced = control
        .replace_policy(&sec, "dba-prod", &shorter)
        .await
        .unwrap();
    assert_eq!(replaced.max_minutes, 30);
    assert_eq!(replaced.created_at, made.created_at);
    assert!(!replaced.approval_required);
    control
        .delete_group(&support::admin(), "managers")
        .await
        .unwrap();
    control.delete_policy(&sec, "dba-prod").await.unwrap();
    assert!(matches!(
        control.show_policy(&sec, "dba-prod").await,
        Err(ControlError::NotFound { .. })
    ));
    let actions: Vec<String> = store
        .audit_chain()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for wanted in ["policy.created", "policy.updated", "policy.deleted"] {
        assert!(actions.iter().any(|a| a == wanted), "{wanted}: {actions:?}");
    }
}

async fn member(store: &dyn Store, group: &str, principal: &str) {
    store
        .set_member(
            &format!("grp_{group}"),
            &format!("usr_{principal}"),
            true,
            AuditEvent::new("test", "group.member"),
            Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
}

/// An SSH public key for requests that bring their own.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGp5Zm9ydGVzdHNvbmx5MDEyMzQ1Njc4OWFiY2RlZmdo alice@laptop";

/// The host's agent: takes its next job and reports it confirmed (or failed); the job's spec.
async fn agent_answers(
    control: &Control,
    host: &latch_control::store::HostRecord,
    confirm: bool,
) -> latch_common::job::JobSpec {
    let code = (!confirm).then_some(latch_common::job::JobErrorCode::AccountExists);
    agent_reports(control, host, code).await
}

/// The host's agent: takes its next job and reports it confirmed, or failed with `code`.
async fn agent_reports(
    control: &Control,
    host: &latch_control::store::HostRecord,
    code: Option<latch_common::job::JobErrorCode>,
) -> latch_common::job::JobSpec {
    use latch_common::api::ReportRequest;
    use latch_common::job::{JobError, JobOutcome};
    let job = control
        .next_job(host, std::time::Duration::ZERO)
        .await
        .unwrap()
        .expect("a job for the host");
    let signed: latch_common::signing::SignedJob = serde_json::from_str(&job.payload).unwrap();
    let outcome = match code {
        None => JobOutcome::confirmed(),
        Some(code) => JobOutcome::Failed {
            error: JobError::new(code, "it did not work\u{1b}[2J on this host"),
        },
    };
    control
        .report(
            host,
            &job.id,
            &ReportRequest {
                lease: job.lease,
                outcome,
            },
        )
        .await
        .unwrap();
    signed.spec
}

both_stores!(requests_are_decided_by_other_approvers_exclusively_and_expire_undecided);
async fn requests_are_decided_by_other_approvers_exclusively_and_expire_undecided(db: TestDb) {
    use latch_control::access::requests::{NewRequest, Target};
    let dir = tempfile::tempdir().unwrap();
    let data = datadir::open(dir.path(), &db.options()).await.unwrap();
    let store = data.store.clone();
    let config = ControlConfig {
        access_pending_ttl: chrono::Duration::seconds(1),
        public_url: Some("https://latch.example.com:8443".parse().unwrap()),
        ..ControlConfig::default()
    };
    let control =
        Arc::new(Control::new(data.store, config, data.signer).with_master_key(data.master_key));
    // A webhook subscribed to every event: each step of a request queues a signed delivery.
    let hook = control
        .create_webhook(
            &support::admin(),
            &latch_common::webhooks::CreateWebhookRequest {
                url: "http://127.0.0.1:9/hook".into(),
                events: vec!["*".into()],
                secret: "access-webhook-secret-0123".into(),
            },
        )
        .await
        .unwrap();
    let sec = support::person(&*store, "sam", &[Role::SecurityAdmin]).await;
    let alice = support::person(&*store, "alice", &[Role::EndUser, Role::SecurityAdmin]).await;
    let carol = support::person(&*store, "carol", &[Role::EndUser]).await;
    let bob = support::person(&*store, "bob", &[Role::EndUser]).await;
    // Approvers need no role: the policy names them by group.
    let mark = support::person(&*store, "mark", &[Role::EndUser]).await;
    let mia = support::person(&*store, "mia", &[Role::EndUser]).await;
    group(&*store, "dbas").await;
    group(&*store, "managers").await;
    member(&*store, "dbas", "alice").await;
    member(&*store, "dbas", "carol").await;
    for approver in ["alice", "mark", "mia"] {
        member(&*store, "managers", approver).await;
    }
    let host = support::enrolled_host(&control, "db1").await;
    let labels: Labels = [("env", "prod"), ("team", "db")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    control
        .set_host_labels(&support::admin(), &host.id, labels)
        .await
        .unwrap();
    control
        .create_policy(
            &sec,
            &PolicyRequest {
                approvals: 2,
                ..dba_policy()
            },
        )
        .await
        .unwrap();
    let ask = |minutes| NewRequest {
        target: Target::Host("db1".into()),
        access: AccessKind::Sudo,
        minutes,
        reason: "INC-42: replication stuck".into(),
        ssh_public_key: Some(KEY.into()),
    };

    // Refused with the reason: too long, or no policy for the requester's groups.
    let long = control.request_access(&alice, &ask(121)).await.unwrap_err();
    assert!(
        matches!(&long, ControlError::Forbidden(m) if m.contains("at most 120")),
        "{long}"
    );
    let stranger = control.request_access(&bob, &ask(30)).await.unwrap_err();
    assert!(
        matches!(&stranger, ControlError::Forbidden(m) if m.contains("no access policy")),
        "{stranger}"
    );

    // Removed from the requesting group while pending: approved, but never provisioned.
    let dropped = control
        .request_access(&carol, &ask(20))
        .await
        .unwrap()
        .request;
    store
        .set_member(
            "grp_dbas",
            "usr_carol",
            false,
            AuditEvent::new("test", "group.member"),
            Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
    control
        .decide_access(&mark, &dropped.id, true, "")
        .await
        .unwrap();
    let gone = control
        .decide_access(&mia, &dropped.id, true, "")
        .await
        .unwrap();
    assert_eq!(
        gone.state, "revoked",
        "nothing was provisioned: it ends at once: {gone:?}"
    );
    assert!(
        gone.decision_reason
            .as_deref()
            .unwrap()
            .contains("no longer allowed"),
        "{gone:?}"
    );
    control.advance_access_requests().await.unwrap();
    let settled = store.access_request(&dropped.id).await.unwrap().unwrap();
    assert_eq!(settled.state, "revoked");
    assert!(settled.hosts.iter().all(|h| h.provision_job_id.is_none()));
    member(&*store, "dbas", "carol").await;

    let first = control
        .request_access(&alice, &ask(60))
        .await
        .unwrap()
        .request;
    assert_eq!(first.state, "pending_approval");
    assert_eq!(first.approvals_needed, 2);
    assert!(!first.key_generated);
    // One request at a time per requester and host.
    let again = control.request_access(&alice, &ask(30)).await.unwrap_err();
    assert!(
        matches!(&again, ControlError::Conflict(m) if m.contains(&first.id)),
        "{again}"
    );
    // Never the requester, even in the approver group; never someone outside it.
    assert!(matches!(
        control.decide_access(&alice, &first.id, true, "").await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        control.decide_access(&sec, &first.id, true, "").await,
        Err(ControlError::NotFound { .. } | ControlError::Forbidden(_))
    ));
    let mut stale = mark.clone();
    stale.session.mfa_at = None;
    assert!(matches!(
        control.decide_access(&stale, &first.id, true, "").await,
        Err(ControlError::StepUpRequired(_))
    ));
    let half = control
        .decide_access(&mark, &first.id, true, "ok")
        .await
        .unwrap();
    assert_eq!(half.state, "pending_approval", "one of two");
    assert!(matches!(
        control.decide_access(&mark, &first.id, true, "again").await,
        Err(ControlError::Conflict(_))
    ));
    // The last approval provisions at once: a create-account job for alice, in sudo.
    let approved = control
        .decide_access(&mia, &first.id, true, "ok")
        .await
        .unwrap();
    assert_eq!(approved.state, "provisioning");
    assert_eq!(approved.decisions.len(), 2);
    assert_eq!(approved.account, "alice");

    // Exclusive: a second holder is not approved while the first holds it.
    let second = control
        .request_access(&carol, &ask(30))
        .await
        .unwrap()
        .request;
    control
        .decide_access(&mark, &second.id, true, "")
        .await
        .unwrap();
    let held = control
        .decide_access(&mia, &second.id, true, "")
        .await
        .unwrap_err();
    assert!(held.to_string().contains(&first.id), "{held}");
    // Only the requester cancels, and only before provisioning; a provisioned grant is
    // revoked, and holds its access until every host confirmed the removal.
    assert!(matches!(
        control.cancel_access(&mark, &first.id, "mine now").await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        control.cancel_access(&alice, &first.id, "").await,
        Err(ControlError::Conflict(_))
    ));
    assert!(matches!(
        control.revoke_access(&carol, &first.id, "").await,
        Err(ControlError::NotFound { .. })
    ));
    let revoking = control
        .revoke_access(&alice, &first.id, "done early")
        .await
        .unwrap();
    assert_eq!(revoking.state, "revoking");
    let created = agent_answers(&control, &host, true).await;
    assert!(
        matches!(&created, latch_common::job::JobSpec::CreateAccount { user, sudo: true, ssh_keys, .. } if user == "alice" && ssh_keys == &[KEY.to_owned()]),
        "{created:?}"
    );
    let removed = agent_answers(&control, &host, true).await;
    assert_eq!(
        removed,
        latch_common::job::JobSpec::DeleteAccount {
            user: "alice".into()
        }
    );
    assert!(matches!(
        control.decide_access(&mia, &second.id, true, "").await,
        Err(ControlError::Conflict(_))
    ));
    control.advance_access_requests().await.unwrap();
    let revoked = control.show_access(&alice, &first.id).await.unwrap();
    assert_eq!(revoked.state, "revoked");
    assert_eq!(revoked.end_reason.as_deref(), Some("revoked"));
    assert_eq!(revoked.hosts[0].state, "revoked");
    let approved = control
        .decide_access(&mia, &second.id, true, "")
        .await
        .unwrap();
    assert_eq!(approved.state, "provisioning");
    assert_eq!(approved.account, "carol");

    // A denial ends a request; the requester cancels one still pending; an undecided one
    // expires.
    let third = control
        .request_access(&alice, &ask(10))
        .await
        .unwrap()
        .request;
    let denied = control
        .decide_access(&mark, &third.id, false, "not during the freeze")
        .await
        .unwrap();
    assert_eq!(denied.state, "denied");
    assert!(matches!(
        control.decide_access(&mia, &third.id, true, "").await,
        Err(ControlError::Conflict(_))
    ));
    let fourth = control
        .request_access(&alice, &ask(10))
        .await
        .unwrap()
        .request;
    let cancelled = control
        .cancel_access(&alice, &fourth.id, "done early")
        .await
        .unwrap();
    assert_eq!(cancelled.state, "cancelled");
    let fifth = control
        .request_access(&alice, &ask(10))
        .await
        .unwrap()
        .request;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(control.expire_pending_requests().await.unwrap(), 1);
    let expired = store.access_request(&fifth.id).await.unwrap().unwrap();
    assert_eq!(expired.state, "expired");
    let actions: Vec<String> = store
        .audit_chain()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for wanted in [
        "access.requested",
        "access.approved",
        "access.provisioning",
        "access.revoke",
        "access.revoked",
        "access.denied",
        "access.cancelled",
        "access.request_expired",
    ] {
        assert!(actions.iter().any(|a| a == wanted), "{wanted}: {actions:?}");
    }
    // Approvers were told of each pending request, the requester of each decision.
    let deliveries = control
        .list_webhook_deliveries(&support::admin(), &hook.id)
        .await
        .unwrap();
    let events: Vec<&str> = deliveries.iter().map(|d| d.event.as_str()).collect();
    for (event, count) in [
        ("access.requested", 6),
        ("access.approved", 3),
        ("access.revoked", 2),
        ("access.denied", 1),
        ("access.cancelled", 1),
        ("access.expired", 1),
    ] {
        assert_eq!(
            events.iter().filter(|e| **e == event).count(),
            count,
            "{event}: {events:?}"
        );
    }
    let first_event = deliveries
        .iter()
        .find(|d| {
            d.event == "access.requested" && d.body["detail"]["request_id"] == first.id.as_str()
        })
        .unwrap();
    assert_eq!(first_event.body["detail"]["approvals_needed"], 2);
    // The notification links to the request in the web console, where approvers decide.
    assert_eq!(
        first_event.body["detail"]["console_url"],
        format!(
            "https://latch.example.com:8443/access/requests/{}",
            first.id
        )
        .as_str()
    );
}

both_stores!(approved_requests_are_provisioned_on_every_host_and_removed_at_the_end);
async fn approved_requests_are_provisioned_on_every_host_and_removed_at_the_end(db: TestDb) {
    use latch_common::job::JobSpec;
    use latch_control::access::requests::{NewRequest, Target};
    let dir = tempfile::tempdir().unwrap();
    let data = datadir::open(dir.path(), &db.options()).await.unwrap();
    let store = data.store.clone();
    let control = Arc::new(
        Control::new(data.store, ControlConfig::default(), data.signer)
            .with_master_key(data.master_key),
    );
    let sec = support::person(&*store, "sam", &[Role::SecurityAdmin]).await;
    let alice = support::person(&*store, "alice@example.com", &[Role::EndUser]).await;
    let carol = support::person(&*store, "carol", &[Role::EndUser]).await;
    group(&*store, "dbas").await;
    member(&*store, "dbas", "alice@example.com").await;
    member(&*store, "dbas", "carol").await;
    let db: Labels = [("env", "prod"), ("team", "db")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut hosts = Vec::new();
    for name in ["db1", "db2"] {
        let host = support::enrolled_host(&control, name).await;
        control
            .set_host_labels(&support::admin(), &host.id, db.clone())
            .await
            .unwrap();
        hosts.push(host);
    }
    let dev = support::enrolled_host(&control, "dev1").await;
    control
        .set_host_labels(
            &support::admin(),
            &dev.id,
            [("env".to_owned(), "dev".to_owned())].into_iter().collect(),
        )
        .await
        .unwrap();
    control
        .create_policy(
            &sec,
            &PolicyRequest {
                approval_required: false,
                approver_group: None,
                exclusive: false,
                mfa_at_approval: false,
                reauth_minutes: Some(5),
                ..dba_policy()
            },
        )
        .await
        .unwrap();
    let ask = |target: Target| NewRequest {
        target,
        access: AccessKind::Sudo,
        minutes: 30,
        reason: "CHG-7: schema migration".into(),
        ssh_public_key: Some(KEY.into()),
    };

    // Outside the policy's hosts, or a selector matching nothing: refused, nothing stored.
    let outside = control
        .request_access(&alice, &ask(Target::Host("dev1".into())))
        .await
        .unwrap_err();
    assert!(matches!(outside, ControlError::Forbidden(_)), "{outside}");
    let nothing = control
        .request_access(&alice, &ask(Target::Selector("team=web".into())))
        .await
        .unwrap_err();
    assert!(nothing.to_string().contains("no host matches"), "{nothing}");
    let mixed = control
        .request_access(&alice, &ask(Target::Selector("env in (prod,dev)".into())))
        .await
        .unwrap_err();
    assert!(mixed.to_string().contains("dev1"), "{mixed}");

    // Approved by the policy: provisioned at once on both hosts, active once both confirmed.
    let made = control
        .request_access(&alice, &ask(Target::Selector("team=db".into())))
        .await
        .unwrap()
        .request;
    assert_eq!(made.state, "provisioning");
    assert_eq!(made.account, "alice");
    assert_eq!(made.hosts.len(), 2);
    let spec = agent_answers(&control, &hosts[0], true).await;
    assert!(
        matches!(&spec, JobSpec::CreateAccount { user, sudo: true, expires_at: Some(_), .. } if user == "alice"),
        "{spec:?}"
    );
    control.advance_access_requests().await.unwrap();
    let half = control.show_access(&alice, &made.id).await.unwrap();
    assert_eq!(half.state, "provisioning");
    let states: Vec<&str> = half.hosts.iter().map(|h| h.state.as_str()).collect();
    assert!(
        states.contains(&"active") && states.contains(&"provisioning"),
        "{states:?}"
    );
    assert!(half.activated_at.is_none());
    agent_answers(&control, &hosts[1], true).await;
    control.advance_access_requests().await.unwrap();
    let active = control.show_access(&alice, &made.id).await.unwrap();
    assert_eq!(active.state, "active");
    let (from, to) = (active.activated_at.unwrap(), active.ends_at.unwrap());
    assert_eq!(
        (to - from).num_minutes(),
        30,
        "the window starts at activation"
    );
    let confirm_by = active.confirm_by.unwrap();
    assert_eq!((confirm_by - from).num_minutes(), 5);
    // Others may not see it; the holder re-confirms with a recent second factor.
    assert!(matches!(
        control.show_access(&carol, &made.id).await,
        Err(ControlError::NotFound { .. })
    ));
    let mut stale = alice.clone();
    stale.session.mfa_at = None;
    assert!(matches!(
        control.confirm_access(&stale, &made.id).await,
        Err(ControlError::StepUpRequired(_))
    ));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let confirmed = control.confirm_access(&alice, &made.id).await.unwrap();
    assert!(confirmed.confirm_by.unwrap() > confirm_by);

    // The window ends: removed on both hosts, then expired.
    let mut record = store.access_request(&made.id).await.unwrap().unwrap();
    record.ends_at = Some(Utc::now() - chrono::Duration::seconds(1));
    assert!(
        store
            .save_request(&record, Vec::new(), Utc::now())
            .await
            .unwrap()
    );
    control.advance_access_requests().await.unwrap();
    assert_eq!(
        control.show_access(&alice, &made.id).await.unwrap().state,
        "revoking"
    );
    for host in &hosts {
        assert_eq!(
            agent_answers(&control, host, true).await,
            JobSpec::DeleteAccount {
                user: "alice".into()
            }
        );
    }
    control.advance_access_requests().await.unwrap();
    let expired = control.show_access(&alice, &made.id).await.unwrap();
    assert_eq!(expired.state, "expired");
    assert!(expired.hosts.iter().all(|h| h.state == "revoked"));

    // One host fails: the request fails, the other host's account is removed.
    let failing = control
        .request_access(&carol, &ask(Target::Selector("team=db".into())))
        .await
        .unwrap()
        .request;
    agent_answers(&control, &hosts[0], true).await;
    agent_answers(&control, &hosts[1], false).await;
    control.advance_access_requests().await.unwrap();
    let revoking = control.show_access(&carol, &failing.id).await.unwrap();
    assert_eq!(revoking.state, "revoking");
    assert_eq!(revoking.end_reason.as_deref(), Some("failed"));
    assert_eq!(
        agent_answers(&control, &hosts[0], true).await,
        JobSpec::DeleteAccount {
            user: "carol".into()
        }
    );
    control.advance_access_requests().await.unwrap();
    let failed = control.show_access(&carol, &failing.id).await.unwrap();
    assert_eq!(failed.state, "failed");
    let db2 = failed.hosts.iter().find(|h| h.host == "db2").unwrap();
    assert_eq!(db2.state, "failed");
    assert!(
        db2.error.as_deref().unwrap().contains("account_exists"),
        "{db2:?}"
    );
    assert!(failed.decision_reason.unwrap().contains("db2"));

    // A missed re-confirmation ends the grant early.
    let late = control
        .request_access(&alice, &ask(Target::Host("db1".into())))
        .await
        .unwrap()
        .request;
    agent_answers(&control, &hosts[0], true).await;
    control.advance_access_requests().await.unwrap();
    let mut record = store.access_request(&late.id).await.unwrap().unwrap();
    assert_eq!(record.state, "active");
    record.confirm_by = Some(Utc::now() - chrono::Duration::seconds(1));
    assert!(
        store
            .save_request(&record, Vec::new(), Utc::now())
            .await
            .unwrap()
    );
    control.advance_access_requests().await.unwrap();
    let ending = control.show_access(&alice, &late.id).await.unwrap();
    assert_eq!(ending.state, "revoking");
    assert!(ending.decision_reason.unwrap().contains("re-confirm"));
    agent_answers(&control, &hosts[0], true).await;
    control.advance_access_requests().await.unwrap();
    assert_eq!(
        control.show_access(&alice, &late.id).await.unwrap().state,
        "revoked"
    );
    // A host fails for another reason (it may have applied part of it, or report late): the
    // account is removed there too; the request ends failed once both hosts confirmed.
    let broken = control
        .request_access(&alice, &ask(Target::Selector("team=db".into())))
        .await
        .unwrap()
        .request;
    agent_answers(&control, &hosts[0], true).await;
    agent_reports(
        &control,
        &hosts[1],
        Some(latch_common::job::JobErrorCode::ToolFailed),
    )
    .await;
    control.advance_access_requests().await.unwrap();
    let cleaning = control.show_access(&alice, &broken.id).await.unwrap();
    assert_eq!(cleaning.state, "revoking");
    assert!(
        cleaning.hosts.iter().all(|h| h.state == "revoking"),
        "{cleaning:?}"
    );
    let db2 = cleaning.hosts.iter().find(|h| h.host == "db2").unwrap();
    assert!(
        !db2.error.as_deref().unwrap().contains('\u{1b}'),
        "no terminal escapes from a host: {db2:?}"
    );
    for host in &hosts {
        assert_eq!(
            agent_answers(&control, host, true).await,
            JobSpec::DeleteAccount {
                user: "alice".into()
            }
        );
    }
    control.advance_access_requests().await.unwrap();
    let failed = control.show_access(&alice, &broken.id).await.unwrap();
    assert_eq!(failed.state, "failed");
    assert!(failed.hosts.iter().all(|h| h.state == "revoked"));
    assert_eq!(failed.hosts[0].revoke_status.as_deref(), Some("confirmed"));

    // An account Latch made on the host for something else is not taken over: the request
    // gets another name.
    let admin_grant = control
        .create_job(
            &support::admin(),
            latch_common::api::CreateJobRequest {
                host: "db1".into(),
                kind: Some(latch_common::job::JobKind::CreateAccount),
                user: "carol".into(),
                expires_in_ms: Some(3_600_000),
                ..latch_common::api::CreateJobRequest::default()
            },
        )
        .await
        .unwrap();
    agent_answers(&control, &hosts[0], true).await;
    assert_eq!(
        store
            .get_job(&admin_grant.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        latch_common::job::JobStatus::Confirmed
    );
    let renamed = control
        .request_access(&carol, &ask(Target::Host("db1".into())))
        .await
        .unwrap()
        .request;
    assert_eq!(renamed.account, "carol2");
    agent_answers(&control, &hosts[0], true).await;
    control.advance_access_requests().await.unwrap();
    assert_eq!(
        control
            .show_access(&carol, &renamed.id)
            .await
            .unwrap()
            .state,
        "active"
    );

    // Disabling the requester ends her active grant.
    control
        .set_disabled(&support::admin(), "carol", true)
        .await
        .unwrap();
    control.advance_access_requests().await.unwrap();
    let ending = store.access_request(&renamed.id).await.unwrap().unwrap();
    assert_eq!(ending.state, "revoking");
    assert_eq!(
        ending.decision_reason.as_deref(),
        Some("the requester was disabled")
    );
    agent_answers(&control, &hosts[0], true).await;
    control.advance_access_requests().await.unwrap();
    assert_eq!(
        store
            .access_request(&renamed.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        "revoked"
    );
}

both_stores!(a_request_without_a_key_gets_a_key_pair_whose_private_half_is_never_stored);
async fn a_request_without_a_key_gets_a_key_pair_whose_private_half_is_never_stored(db: TestDb) {
    use latch_control::access::requests::{NewRequest, Target};
    let dir = tempfile::tempdir().unwrap();
    let data = datadir::open(dir.path(), &db.options()).await.unwrap();
    let store = data.store.clone();
    let control = Arc::new(
        Control::new(data.store, ControlConfig::default(), data.signer)
            .with_master_key(data.master_key),
    );
    let sec = support::person(&*store, "sam", &[Role::SecurityAdmin]).await;
    let alice = support::person(&*store, "alice", &[Role::EndUser]).await;
    group(&*store, "dbas").await;
    group(&*store, "managers").await;
    member(&*store, "dbas", "alice").await;
    let host = support::enrolled_host(&control, "db1").await;
    control
        .set_host_labels(
            &support::admin(),
            &host.id,
            [("env", "prod"), ("team", "db")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .await
        .unwrap();
    control
        .create_policy(
            &sec,
            &PolicyRequest {
                mfa_at_request: true,
                ..dba_policy()
            },
        )
        .await
        .unwrap();
    let ask = NewRequest {
        target: Target::Host("db1".into()),
        access: AccessKind::EphemeralAccount,
        minutes: 30,
        reason: "look at the slow query log".into(),
        ssh_public_key: None,
    };
    // The policy asks for a second factor at request time: a session without a recent one is
    // sent to step up, and nothing is stored.
    let mut stale = alice.clone();
    stale.session.mfa_at = None;
    assert!(matches!(
        control.request_access(&stale, &ask).await,
        Err(ControlError::StepUpRequired(_))
    ));
    let made = control.request_access(&alice, &ask).await.unwrap();
    let private = made.private_key.expect("a generated private key");
    let key = ssh_key::PrivateKey::from_openssh(private.as_str()).unwrap();
    let public = key.public_key().to_openssh().unwrap();
    let stored = made.request.ssh_public_key.clone().unwrap();
    assert!(made.request.key_generated);
    assert!(
        stored.starts_with(&public),
        "the stored key is the pair's public half: {stored} / {public}"
    );
    // Shown once: the request as stored and as shown later has no private key.
    let shown = control.show_access(&alice, &made.request.id).await.unwrap();
    assert!(shown.private_key.is_none());
    assert!(shown.key_generated);
    let body: String = private
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    // The middle of the key (its start is the same header in every unencrypted key).
    let needle = &body[body.len() / 2..body.len() / 2 + 40];
    if db.url().is_some() {
        let dump = db.dump_all_text().await;
        assert!(!dump.contains(needle), "the private key is in the database");
    } else {
        // Every file of the data directory: the SQLite database, its WAL, the logs.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "the private key is in {}",
                    path.display()
                );
            }
        }
    }
}
