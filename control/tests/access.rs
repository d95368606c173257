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

both_stores!(requests_are_decided_by_other_approvers_exclusively_and_expire_undecided);
async fn requests_are_decided_by_other_approvers_exclusively_and_expire_undecided(db: TestDb) {
    use latch_control::access::requests::NewRequest;
    let dir = tempfile::tempdir().unwrap();
    let data = datadir::open(dir.path(), &db.options()).await.unwrap();
    let store = data.store.clone();
    let config = ControlConfig {
        access_pending_ttl: chrono::Duration::seconds(1),
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
    let bob = support::person(&*store, "bob", &[Role::EndUser]).await;
    let mark = support::person(&*store, "mark", &[Role::SecurityAdmin]).await;
    let mia = support::person(&*store, "mia", &[Role::SecurityAdmin]).await;
    group(&*store, "dbas").await;
    group(&*store, "managers").await;
    member(&*store, "dbas", "alice").await;
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
        host: "db1".into(),
        access: AccessKind::Sudo,
        minutes,
        reason: "INC-42: replication stuck".into(),
        ssh_public_key: None,
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

    let first = control.request_access(&alice, &ask(60)).await.unwrap();
    assert_eq!(first.state, "pending_approval");
    assert_eq!(first.approvals_needed, 2);
    // Never the requester, even in the approver group; never someone outside it.
    assert!(matches!(
        control.decide_access(&alice, &first.id, true, "").await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        control.decide_access(&sec, &first.id, true, "").await,
        Err(ControlError::Forbidden(_))
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
    let approved = control
        .decide_access(&mia, &first.id, true, "ok")
        .await
        .unwrap();
    assert_eq!(approved.state, "approved");
    assert_eq!(approved.decisions.len(), 2);

    // Exclusive: a second holder is not approved while the first holds it.
    let second = control.request_access(&alice, &ask(30)).await.unwrap();
    control
        .decide_access(&mark, &second.id, true, "")
        .await
        .unwrap();
    let held = control
        .decide_access(&mia, &second.id, true, "")
        .await
        .unwrap_err();
    assert!(held.to_string().contains(&first.id), "{held}");
    // Only the requester cancels; once the first is cancelled, the second may be approved.
    assert!(matches!(
        control.cancel_access(&mark, &first.id, "mine now").await,
        Err(ControlError::Forbidden(_))
    ));
    let cancelled = control
        .cancel_access(&alice, &first.id, "done early")
        .await
        .unwrap();
    assert_eq!(cancelled.state, "cancelled");
    let approved = control
        .decide_access(&mia, &second.id, true, "")
        .await
        .unwrap();
    assert_eq!(approved.state, "approved");

    // A denial ends a request; an undecided one expires.
    let third = control.request_access(&alice, &ask(10)).await.unwrap();
    let denied = control
        .decide_access(&mark, &third.id, false, "not during the freeze")
        .await
        .unwrap();
    assert_eq!(denied.state, "denied");
    assert!(matches!(
        control.decide_access(&mia, &third.id, true, "").await,
        Err(ControlError::Conflict(_))
    ));
    let fourth = control.request_access(&alice, &ask(10)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(control.expire_pending_requests().await.unwrap(), 1);
    let expired = store.access_request(&fourth.id).await.unwrap().unwrap();
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
        ("access.requested", 4),
        ("access.approved", 2),
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
}
