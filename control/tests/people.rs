//! The people store (principals, groups, role bindings, API keys, sessions, host labels) on both
//! engines: one behaviour, every change audited, nothing changed by a refused request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::Arc;

use chrono::{Duration, Utc};
use latch_common::api::{CreateEnrollTokenRequest, EnrollRequest, HostFacts};
use latch_common::authz::{Permission, Role};
use latch_common::labels::Labels;
use latch_control::audit::AuditEvent;
use latch_control::error::ControlError;
use latch_control::mfa::{MfaPolicy, SensitiveAction, code_at};
use latch_control::people::{API_KEY_PREFIX, Authority, Scope, TOKEN_PREFIX};
use latch_control::store::Store;
use latch_control::store::people::{
    ApiKeyRecord, BindingSubject, GroupRecord, PeopleRefusal, PrincipalKind, PrincipalRecord,
    RoleBinding, SessionKind, SessionRecord,
};
use latch_control::users::NewUser;
use latch_control::{Control, ControlConfig};
use support::TestDb;

fn principal(id: &str, name: &str, kind: PrincipalKind) -> PrincipalRecord {
    PrincipalRecord {
        id: id.into(),
        kind,
        name: name.into(),
        display_name: name.to_uppercase(),
        email: None,
        idp: None,
        password_hash: None,
        disabled_at: None,
        created_at: Utc::now(),
        last_seen_at: None,
    }
}

fn group(id: &str, name: &str, idp: Option<&str>) -> GroupRecord {
    GroupRecord {
        id: id.into(),
        name: name.into(),
        description: String::new(),
        idp_group: idp.map(Into::into),
        created_at: Utc::now(),
    }
}

fn binding(id: &str, role: Role, subject: BindingSubject, selector: Option<&str>) -> RoleBinding {
    RoleBinding {
        id: id.into(),
        role,
        subject,
        selector: selector.map(Into::into),
        created_at: Utc::now(),
    }
}

fn event(action: &'static str) -> AuditEvent {
    AuditEvent::new("test", action)
}

async fn audit_actions(store: &dyn Store) -> Vec<String> {
    store
        .audit_chain()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

async fn principals_groups_and_bindings(db: TestDb) {
    let store = db.store().await;
    let now = Utc::now();
    let alice = principal("usr_alice", "alice", PrincipalKind::User);
    let bot = principal("svc_ci", "ci-pipeline", PrincipalKind::Service);
    store
        .insert_principal(&alice, event("user.create"), now)
        .await
        .unwrap()
        .unwrap();
    store
        .insert_principal(&bot, event("service_user.create"), now)
        .await
        .unwrap()
        .unwrap();
    let taken = principal("usr_other", "alice", PrincipalKind::User);
    assert_eq!(
        store
            .insert_principal(&taken, event("user.create"), now)
            .await
            .unwrap(),
        Err(PeopleRefusal::AlreadyExists("principal"))
    );
    assert_eq!(
        store.principal("alice").await.unwrap().unwrap().id,
        "usr_alice"
    );
    assert_eq!(
        store.principal("usr_alice").await.unwrap().unwrap().name,
        "alice"
    );
    assert!(
        store.principal("usr_other").await.unwrap().is_none(),
        "a refused insert left nothing"
    );
    let services = store
        .principals(Some(PrincipalKind::Service))
        .await
        .unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(store.principals(None).await.unwrap().len(), 2);

    let dbas = group("grp_dbas", "dbas", Some("idp-dbas"));
    let oncall = group("grp_oncall", "oncall", None);
    for g in [&dbas, &oncall] {
        store
            .insert_group(g, event("group.create"), now)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        store
            .insert_group(&group("grp_x", "dbas", None), event("group.create"), now)
            .await
            .unwrap(),
        Err(PeopleRefusal::AlreadyExists("group"))
    );
    store
        .set_member(
            "grp_oncall",
            "usr_alice",
            true,
            event("group.member_add"),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .set_member(
                "grp_nope",
                "usr_alice",
                true,
                event("group.member_add"),
                now
            )
            .await
            .unwrap(),
        Err(PeopleRefusal::NotFound("group"))
    );

    // Roles: one direct, one through a group, one through an identity-provider group.
    let bindings = [
        binding(
            "rb_1",
            Role::EndUser,
            BindingSubject::Principal("usr_alice".into()),
            None,
        ),
        binding(
            "rb_2",
            Role::SecurityAdmin,
            BindingSubject::Group("grp_oncall".into()),
            None,
        ),
        binding(
            "rb_3",
            Role::DelegatedResourceAdmin,
            BindingSubject::Group("grp_dbas".into()),
            Some("team=db"),
        ),
    ];
    for b in &bindings {
        store
            .insert_role_binding(b, event("role.bind"), now)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        store
            .insert_role_binding(
                &binding(
                    "rb_4",
                    Role::PamAdmin,
                    BindingSubject::Group("grp_ghost".into()),
                    None
                ),
                event("role.bind"),
                now
            )
            .await
            .unwrap(),
        Err(PeopleRefusal::NotFound("group"))
    );
    let roles = |bs: Vec<RoleBinding>| bs.into_iter().map(|b| b.role).collect::<Vec<_>>();
    assert_eq!(
        roles(store.effective_bindings("usr_alice").await.unwrap()),
        [Role::EndUser, Role::SecurityAdmin]
    );
    store
        .sync_idp_memberships("usr_alice", &["grp_dbas".into()], now)
        .await
        .unwrap();
    assert_eq!(
        roles(store.effective_bindings("usr_alice").await.unwrap()),
        [
            Role::EndUser,
            Role::SecurityAdmin,
            Role::DelegatedResourceAdmin
        ]
    );
    let scoped = store.effective_bindings("usr_alice").await.unwrap();
    assert_eq!(scoped[2].selector.as_deref(), Some("team=db"));
    // The identity provider drops the group: its membership goes, the hand-made one stays.
    store
        .sync_idp_memberships("usr_alice", &[], now)
        .await
        .unwrap();
    assert_eq!(
        roles(store.effective_bindings("usr_alice").await.unwrap()),
        [Role::EndUser, Role::SecurityAdmin]
    );
    let groups: Vec<String> = store
        .groups_of("usr_alice")
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(groups, ["oncall"]);
    assert_eq!(
        store.members("grp_oncall").await.unwrap()[0].id,
        "usr_alice"
    );

    // Deleting a group takes its memberships and bindings with it.
    assert!(
        store
            .delete_group("grp_oncall", event("group.delete"), now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_group("grp_oncall", event("group.delete"), now)
            .await
            .unwrap()
    );
    assert_eq!(
        roles(store.effective_bindings("usr_alice").await.unwrap()),
        [Role::EndUser]
    );
    assert!(
        store
            .delete_role_binding("rb_1", event("role.unbind"), now)
            .await
            .unwrap()
    );
    assert!(
        store
            .effective_bindings("usr_alice")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.role_bindings().await.unwrap().len(),
        1,
        "rb_3 remains"
    );

    let actions = audit_actions(store.as_ref()).await;
    for action in [
        "user.create",
        "service_user.create",
        "group.create",
        "group.member_add",
        "role.bind",
        "user.groups_synced",
        "group.delete",
        "role.unbind",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} audited: {actions:?}"
        );
    }
    assert_eq!(
        actions.iter().filter(|a| *a == "user.create").count(),
        1,
        "the refused duplicate was not audited"
    );
}
both_stores!(principals_groups_and_bindings);

async fn api_keys_and_sessions(db: TestDb) {
    let store = db.store().await;
    // Stored times are whole milliseconds.
    let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    store
        .insert_principal(
            &principal("svc_ci", "ci", PrincipalKind::Service),
            event("service_user.create"),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    let key = ApiKeyRecord {
        id: "key_1".into(),
        principal_id: "svc_ci".into(),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    store
        .insert_api_key(&key, "hash-of-key-1", event("service_user.key_create"), now)
        .await
        .unwrap();
    let (found, who) = store
        .use_api_key("hash-of-key-1", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.id.as_str(), who.name.as_str()), ("key_1", "ci"));
    assert!(
        store
            .use_api_key("another-hash", now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store.api_keys("svc_ci").await.unwrap()[0]
            .last_used_at
            .is_some()
    );

    let session = SessionRecord {
        id: "ses_1".into(),
        principal_id: "svc_ci".into(),
        kind: SessionKind::Service,
        api_key_id: Some("key_1".into()),
        created_at: now,
        expires_at: now + Duration::hours(1),
        revoked_at: None,
        mfa_at: None,
        address: Some("127.0.0.1".into()),
    };
    store
        .insert_session(
            &session,
            "hash-of-token-1",
            event("service_token.issue"),
            now,
        )
        .await
        .unwrap();
    let (live, _) = store.session("hash-of-token-1").await.unwrap().unwrap();
    assert_eq!(live, session);

    // Revoking the key ends its token at once, and the key no longer exchanges.
    assert!(
        !store
            .revoke_api_key("svc_other", "key_1", event("service_user.key_revoke"), now)
            .await
            .unwrap(),
        "another principal cannot revoke it"
    );
    assert!(
        store
            .revoke_api_key("svc_ci", "key_1", event("service_user.key_revoke"), now)
            .await
            .unwrap()
    );
    assert!(
        store
            .use_api_key("hash-of-key-1", now)
            .await
            .unwrap()
            .is_none()
    );
    let (ended, _) = store.session("hash-of-token-1").await.unwrap().unwrap();
    assert!(ended.revoked_at.is_some());
    assert!(
        !store
            .revoke_session("ses_1", event("session.revoke"), now)
            .await
            .unwrap()
    );

    // Disabling a principal ends its sessions too.
    let second = SessionRecord {
        id: "ses_2".into(),
        api_key_id: None,
        ..session
    };
    store
        .insert_session(&second, "hash-of-token-2", event("session.start"), now)
        .await
        .unwrap();
    assert!(
        store
            .set_principal_disabled("svc_ci", true, event("service_user.disable"), now)
            .await
            .unwrap()
    );
    let (ended, who) = store.session("hash-of-token-2").await.unwrap().unwrap();
    assert!(ended.revoked_at.is_some() && who.disabled_at.is_some());
    assert!(
        !store
            .set_principal_disabled("svc_none", true, event("service_user.disable"), now)
            .await
            .unwrap()
    );
}
both_stores!(api_keys_and_sessions);

async fn host_labels_are_stored_and_refused_for_removed_hosts(db: TestDb) {
    let store: Arc<dyn Store> = db.store().await;
    let control = Control::new(
        store.clone(),
        ControlConfig::default(),
        latch_control::signing::JobSigner::generate().unwrap(),
    );
    let token = control
        .create_enroll_token(
            &support::admin(),
            &CreateEnrollTokenRequest {
                ttl_seconds: Some(60),
                uses: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let facts = HostFacts {
        hostname: "db-01".into(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1".into(),
        arch: "x86_64".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        machine_id: "0123456789abcdef0123456789abcdef".into(),
    };
    let enrolled = control
        .enroll(&EnrollRequest {
            token: token.token,
            facts,
        })
        .await
        .unwrap();
    let host = control
        .authenticate_host(&enrolled.credential)
        .await
        .unwrap();
    assert_eq!(store.host_labels().await.unwrap()[&host.id], Labels::new());
    let labels: Labels = [("env", "prod"), ("team", "db")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let now = Utc::now();
    assert!(
        store
            .set_host_labels(&host.id, &labels, event("host.labels"), now)
            .await
            .unwrap()
    );
    assert_eq!(store.host_labels().await.unwrap()[&host.id], labels);
    assert!(
        !store
            .set_host_labels("no-such-host", &labels, event("host.labels"), now)
            .await
            .unwrap()
    );
}
both_stores!(host_labels_are_stored_and_refused_for_removed_hosts);

/// A pam_admin service user made directly in the store (as the bootstrap will), signed in.
async fn bootstrap_admin(control: &Control, store: &Arc<dyn Store>) -> Authority {
    let now = Utc::now();
    store
        .insert_principal(
            &principal("svc_root", "root-admin", PrincipalKind::Service),
            event("service_user.create"),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    store
        .insert_role_binding(
            &binding(
                "rb_root",
                Role::PamAdmin,
                BindingSubject::Principal("svc_root".into()),
                None,
            ),
            event("role.bind"),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    let key = "latch_key_bootstrap-for-test";
    let record = ApiKeyRecord {
        id: "key_root".into(),
        principal_id: "svc_root".into(),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    let hash = store.audit_key().credential_hash(key);
    store
        .insert_api_key(&record, &hash, event("service_user.key_create"), now)
        .await
        .unwrap();
    signed_in(control, key).await
}

async fn signed_in(control: &Control, api_key: &str) -> Authority {
    let token = control
        .issue_service_token(api_key, Duration::hours(1), Some("127.0.0.1".into()))
        .await
        .unwrap();
    control.authenticate(&token.token).await.unwrap()
}

fn control_over(store: &Arc<dyn Store>) -> Control {
    Control::new(
        store.clone(),
        ControlConfig::default(),
        latch_control::signing::JobSigner::generate().unwrap(),
    )
}

async fn service_users_exchange_keys_for_tokens_that_revoking_ends(db: TestDb) {
    let store = db.store().await;
    let control = control_over(&store);
    let admin = bootstrap_admin(&control, &store).await;
    assert_eq!(admin.actor(), "service:root-admin");
    assert!(admin.roles().contains(&Role::PamAdmin));

    let ci = control
        .create_service_user(&admin, "ci-pipeline", &[Role::EndUser])
        .await
        .unwrap();
    assert!(ci.api_key.starts_with(API_KEY_PREFIX));
    // Only a keyed hash is stored: neither the key nor its plain SHA-256 finds it.
    let now = Utc::now();
    for unkeyed in [
        ci.api_key.clone(),
        latch_control::secret::hash_token(&ci.api_key),
    ] {
        assert!(store.use_api_key(&unkeyed, now).await.unwrap().is_none());
    }
    let keyed = store.audit_key().credential_hash(&ci.api_key);
    assert!(store.use_api_key(&keyed, now).await.unwrap().is_some());
    let again = control
        .create_service_user(&admin, "ci-pipeline", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(again, ControlError::AlreadyExists { .. }),
        "{again}"
    );
    assert!(matches!(
        control.create_service_user(&admin, "Bad Name", &[]).await,
        Err(ControlError::Invalid(_))
    ));

    let token = control
        .issue_service_token(&ci.api_key, Duration::hours(1), None)
        .await
        .unwrap();
    assert!(token.token.starts_with(TOKEN_PREFIX));
    let caller = control.authenticate(&token.token).await.unwrap();
    assert_eq!(caller.actor(), "service:ci-pipeline");
    assert_eq!(
        caller.roles().into_iter().collect::<Vec<_>>(),
        [Role::EndUser]
    );
    assert!(caller.scope(Permission::AccessRequest).is_some());
    let refused = control
        .create_service_user(&caller, "escalate", &[Role::PamAdmin])
        .await
        .unwrap_err();
    assert!(matches!(refused, ControlError::Forbidden(_)), "{refused}");
    assert!(refused.to_string().contains("users.manage"), "{refused}");
    assert!(store.principal("escalate").await.unwrap().is_none());

    // Wrong, malformed and expired credentials.
    for bad in ["latch_key_nope", "latch_tok_x", "", "latch_admin_abc"] {
        assert!(matches!(
            control
                .issue_service_token(bad, Duration::hours(1), None)
                .await,
            Err(ControlError::Unauthenticated(_))
        ));
        assert!(matches!(
            control.authenticate(bad).await,
            Err(ControlError::Unauthenticated(_))
        ));
    }
    for ttl in [
        Duration::milliseconds(-1),
        Duration::seconds(59),
        Duration::days(365),
    ] {
        assert!(
            matches!(
                control.issue_service_token(&ci.api_key, ttl, None).await,
                Err(ControlError::Invalid(_))
            ),
            "{ttl}"
        );
    }
    // A token past its end (made directly in the store, an hour old).
    let past = Utc::now() - Duration::hours(2);
    let expired = SessionRecord {
        id: "ses_expired".into(),
        principal_id: ci.principal.id.clone(),
        kind: SessionKind::Service,
        api_key_id: Some(ci.key_id.clone()),
        created_at: past,
        expires_at: past + Duration::hours(1),
        revoked_at: None,
        mfa_at: None,
        address: None,
    };
    let expired_token = "latch_tok_expired-for-test";
    let hash = store.audit_key().credential_hash(expired_token);
    store
        .insert_session(&expired, &hash, event("service_token.issue"), past)
        .await
        .unwrap();
    assert!(matches!(
        control.authenticate(expired_token).await,
        Err(ControlError::Unauthenticated(m)) if m.contains("expired")
    ));

    // Rotation: a second key works; revoking the first ends its token at once.
    let (second_id, second) = control.create_api_key(&admin, "ci-pipeline").await.unwrap();
    control
        .revoke_api_key(&admin, "ci-pipeline", &ci.key_id)
        .await
        .unwrap();
    let revoked = control.authenticate(&token.token).await.unwrap_err();
    assert!(
        matches!(revoked, ControlError::AuthorizationRevoked(_)),
        "{revoked}"
    );
    assert!(matches!(
        control
            .issue_service_token(&ci.api_key, Duration::hours(1), None)
            .await,
        Err(ControlError::Unauthenticated(_))
    ));
    signed_in(&control, &second).await;
    let keys = control.api_keys(&admin, "ci-pipeline").await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .any(|k| k.id == second_id && k.revoked_at.is_none())
    );
    assert!(matches!(
        control
            .revoke_api_key(&admin, "ci-pipeline", &ci.key_id)
            .await,
        Err(ControlError::NotFound { .. })
    ));

    let actions = audit_actions(store.as_ref()).await;
    for action in [
        "service_token.issue",
        "service_user.key_revoke",
        "auth.failure",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
}
both_stores!(service_users_exchange_keys_for_tokens_that_revoking_ends);

async fn a_delegated_admin_stays_within_its_labels(db: TestDb) {
    let store = db.store().await;
    let control = control_over(&store);
    let admin = bootstrap_admin(&control, &store).await;
    let db_host = enrolled(&control, "db-01").await;
    let web_host = enrolled(&control, "web-01").await;
    let labels = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    control
        .set_host_labels(&admin, "db-01", labels(&[("team", "db")]))
        .await
        .unwrap();
    control
        .set_host_labels(&admin, "web-01", labels(&[("team", "web")]))
        .await
        .unwrap();

    let dba = control
        .create_service_user(&admin, "dba-bot", &[])
        .await
        .unwrap();
    let subject = BindingSubject::Principal(dba.principal.id.clone());
    for (role, selector) in [
        (Role::DelegatedResourceAdmin, None),
        (Role::DelegatedResourceAdmin, Some("")),
        (Role::DelegatedResourceAdmin, Some("team in ()")),
        (Role::DelegatedResourceAdmin, Some("!pci")),
        (Role::DelegatedResourceAdmin, Some("env!=prod")),
        (Role::DelegatedResourceAdmin, Some("team notin (web)")),
        (Role::DelegatedResourceAdmin, Some("team!=")),
        (Role::ResourceAdmin, Some("team=db")),
    ] {
        let refused = control.bind_role(&admin, role, &subject, selector).await;
        assert!(
            matches!(refused, Err(ControlError::Invalid(_))),
            "{role} {selector:?}: {refused:?}"
        );
    }
    control
        .bind_role(
            &admin,
            Role::DelegatedResourceAdmin,
            &subject,
            Some("team = db"),
        )
        .await
        .unwrap();
    let dba = signed_in(&control, &dba.api_key).await;
    let Some(Scope::Within(selectors)) = dba.scope(Permission::HostsManage) else {
        panic!("a delegation is scoped");
    };
    assert_eq!(selectors[0].to_string(), "team=db");
    assert!(dba.scope(Permission::UsersManage).is_none());

    // Labels decide delegations (and policies): a delegated admin sets none, not even on its
    // own hosts, so it cannot move a host into anyone's reach or out of a stricter rule.
    for (host, new) in [
        ("db-01", labels(&[("team", "db"), ("env", "prod")])),
        ("db-01", labels(&[("team", "web")])),
        ("web-01", labels(&[("team", "db")])),
    ] {
        let refused = control.set_host_labels(&dba, host, new).await.unwrap_err();
        assert!(
            matches!(refused, ControlError::Forbidden(_)),
            "{host}: {refused}"
        );
    }
    // It sees and removes only hosts within its labels; others do not exist for it.
    let seen: Vec<String> = control
        .list_hosts(
            &dba,
            &Default::default(),
            latch_control::store::Page {
                offset: 0,
                count: 100,
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.facts.hostname)
        .collect();
    assert_eq!(seen, ["db-01"]);
    assert!(matches!(
        control.show_host(&dba, "web-01").await,
        Err(ControlError::NotFound { .. })
    ));
    assert!(matches!(
        control.remove_host(&dba, "web-01").await,
        Err(ControlError::NotFound { .. })
    ));
    // A second host named web-01, within its labels: for it the name is that one host, not an
    // ambiguity whose count would reveal the host it may not see.
    let twin = enrolled(&control, "web-01").await;
    control
        .set_host_labels(&admin, &twin, labels(&[("team", "db")]))
        .await
        .unwrap();
    assert!(matches!(
        control.show_host(&admin, "web-01").await,
        Err(ControlError::AmbiguousHost(_, 2))
    ));
    assert_eq!(control.show_host(&dba, "web-01").await.unwrap().id, twin);
    control.remove_host(&admin, &twin).await.unwrap();
    control
        .set_host_labels(&admin, "db-01", labels(&[("team", "db"), ("env", "prod")]))
        .await
        .unwrap();
    let now = store.host_labels().await.unwrap();
    assert_eq!(now[&db_host], labels(&[("team", "db"), ("env", "prod")]));
    assert_eq!(now[&web_host], labels(&[("team", "web")]));
    assert!(matches!(
        control
            .bind_role(
                &dba,
                Role::PamAdmin,
                &BindingSubject::Principal(dba.principal.id.clone()),
                None
            )
            .await,
        Err(ControlError::Forbidden(_))
    ));
}
both_stores!(a_delegated_admin_stays_within_its_labels);

async fn enrolled(control: &Control, hostname: &str) -> String {
    let token = control
        .create_enroll_token(
            &support::admin(),
            &CreateEnrollTokenRequest {
                ttl_seconds: Some(60),
                uses: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let enrolled = control
        .enroll(&EnrollRequest {
            token: token.token,
            facts: HostFacts {
                hostname: hostname.into(),
                os: "Debian GNU/Linux 12".into(),
                kernel: "6.1".into(),
                arch: "x86_64".into(),
                cpus: 2,
                memory_bytes: 1 << 30,
                machine_id: format!("{:0>32}", hostname.len()),
            },
        })
        .await
        .unwrap();
    control
        .authenticate_host(&enrolled.credential)
        .await
        .unwrap()
        .id
}

/// A user with a live session, made directly in the store (as a sign-in will).
async fn signed_in_user(control: &Control, store: &Arc<dyn Store>, name: &str) -> Authority {
    let now = Utc::now();
    let id = format!("usr_{name}");
    store
        .insert_principal(
            &principal(&id, name, PrincipalKind::User),
            event("user.create"),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    let token = format!("latch_tok_session-of-{name}");
    let session = SessionRecord {
        id: format!("ses_{name}"),
        principal_id: id,
        kind: SessionKind::Local,
        api_key_id: None,
        created_at: now,
        expires_at: now + Duration::hours(8),
        revoked_at: None,
        mfa_at: None,
        address: None,
    };
    let hash = store.audit_key().credential_hash(&token);
    store
        .insert_session(&session, &hash, event("session.start"), now)
        .await
        .unwrap();
    control.authenticate(&token).await.unwrap()
}

async fn totp_step_up_accepts_each_code_once(db: TestDb) {
    let store = db.store().await;
    let control = control_over(&store);
    let alice = signed_in_user(&control, &store, "alice").await;
    let policy = MfaPolicy::default();
    let now = Utc::now();

    let missing = control.verify_totp(&alice, "123456").await.unwrap_err();
    assert!(missing.to_string().contains("mfa enroll"), "{missing}");
    let refused = alice
        .require_mfa(&policy, SensitiveAction::Approve, now)
        .unwrap_err();
    assert!(
        matches!(refused, ControlError::StepUpRequired(_)),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("latchctl mfa verify"),
        "{refused}"
    );

    let factor = control.enroll_totp(&alice).await.unwrap();
    assert!(
        factor
            .otpauth_uri
            .starts_with("otpauth://totp/Latch:alice?"),
        "{}",
        factor.otpauth_uri
    );
    assert!(factor.otpauth_uri.contains(&factor.secret_base32));
    // The secret is sealed in the database, not stored as given.
    let record = store.totp("usr_alice").await.unwrap().unwrap();
    assert!(!record.sealed_secret.contains(&factor.secret_base32));
    assert!(record.confirmed_at.is_none());

    let code = code_at(&factor.secret_base32, now).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for bad in ["12345", "abcdef", "1234567"] {
        assert!(
            matches!(
                control.verify_totp_at(&alice, bad, now).await,
                Err(ControlError::StepUpRequired(_))
            ),
            "{bad}"
        );
    }
    assert!(control.verify_totp_at(&alice, wrong, now).await.is_err());
    control.verify_totp_at(&alice, &code, now).await.unwrap();
    let record = store.totp("usr_alice").await.unwrap().unwrap();
    assert_eq!(record.failures, 0, "a good code clears the failures");
    let replayed = control
        .verify_totp_at(&alice, &code, now)
        .await
        .unwrap_err();
    assert!(replayed.to_string().contains("already used"), "{replayed}");
    let record = store.totp("usr_alice").await.unwrap().unwrap();
    assert!(record.confirmed_at.is_some());
    assert_eq!(record.failures, 1, "a replayed code counts as a wrong one");

    // The step-up is on the session: a fresh look-up of the same token sees it, for a while.
    let token_alice = control
        .authenticate("latch_tok_session-of-alice")
        .await
        .unwrap();
    token_alice
        .require_mfa(&policy, SensitiveAction::Approve, now)
        .unwrap();
    let later = now + policy.window + Duration::seconds(1);
    assert!(
        token_alice
            .require_mfa(&policy, SensitiveAction::Approve, later)
            .is_err()
    );
    assert!(
        token_alice
            .require_mfa(
                &policy,
                SensitiveAction::Approve,
                now - Duration::minutes(1)
            )
            .is_err(),
        "a factor shown in the future counts as none"
    );
    let relaxed = MfaPolicy {
        required: vec![],
        ..MfaPolicy::default()
    };
    alice
        .require_mfa(&relaxed, SensitiveAction::Approve, now)
        .unwrap();

    // Replacing the factor needs the step-up; the old factor stays in force until the new one
    // shows a code.
    let mut stale = token_alice.clone();
    stale.session.mfa_at = None;
    assert!(matches!(
        control.enroll_totp(&stale).await,
        Err(ControlError::StepUpRequired(_))
    ));
    let replacement = control.enroll_totp(&token_alice).await.unwrap();
    let record = store.totp("usr_alice").await.unwrap().unwrap();
    assert!(record.confirmed_at.is_some() && record.pending.is_some());
    let next = now + Duration::seconds(30);
    control
        .verify_totp_at(&alice, &code_at(&factor.secret_base32, next).unwrap(), next)
        .await
        .unwrap();
    let after = next + Duration::seconds(30);
    control
        .verify_totp_at(
            &alice,
            &code_at(&replacement.secret_base32, after).unwrap(),
            after,
        )
        .await
        .unwrap();
    let record = store.totp("usr_alice").await.unwrap().unwrap();
    assert!(
        record.pending.is_none(),
        "the replacement is now the factor"
    );
    let later = after + Duration::seconds(30);
    assert!(
        control
            .verify_totp_at(
                &alice,
                &code_at(&factor.secret_base32, later).unwrap(),
                later
            )
            .await
            .is_err(),
        "the old factor no longer counts"
    );

    // A first factor is enrolled only in a fresh sign-in (a stolen old session cannot add one).
    let bob = signed_in_user(&control, &store, "bob").await;
    let mut old_session = bob.clone();
    old_session.session.created_at = now - Duration::hours(1);
    let refused = control.enroll_totp(&old_session).await.unwrap_err();
    assert!(refused.to_string().contains("sign in again"), "{refused}");

    // Guessing: after five wrong codes the factor refuses even the right one for a while.
    let bobs = control.enroll_totp(&bob).await.unwrap();
    let right = code_at(&bobs.secret_base32, now).unwrap();
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..latch_control::mfa::LOCK_AFTER {
        assert!(control.verify_totp_at(&bob, wrong, now).await.is_err());
    }
    let locked = control.verify_totp_at(&bob, &right, now).await.unwrap_err();
    assert!(
        locked.to_string().contains("too many wrong codes"),
        "{locked}"
    );
    let unlocked = now + latch_control::mfa::LOCK_FOR + Duration::seconds(1);
    control
        .verify_totp_at(
            &bob,
            &code_at(&bobs.secret_base32, unlocked).unwrap(),
            unlocked,
        )
        .await
        .unwrap();

    // Service users have no second factor: they may change roles (automation), not approve.
    let admin = bootstrap_admin(&control, &store).await;
    admin
        .require_mfa(&policy, SensitiveAction::ChangeRoles, now)
        .unwrap();
    assert!(matches!(
        admin.require_mfa(&policy, SensitiveAction::Approve, now),
        Err(ControlError::StepUpRequired(_))
    ));
    assert!(matches!(
        control.enroll_totp(&admin).await,
        Err(ControlError::Forbidden(_))
    ));
    let actions = audit_actions(store.as_ref()).await;
    for action in ["mfa.totp_enroll", "mfa.verify", "mfa.failure"] {
        assert!(actions.iter().any(|a| a == action), "{action}");
    }
}
both_stores!(totp_step_up_accepts_each_code_once);

async fn local_users_sign_in_and_get_their_groups_roles(db: TestDb) {
    let store = db.store().await;
    let control = control_over(&store);
    let admin = bootstrap_admin(&control, &store).await;
    let password = "correct horse battery staple";
    let carol = control
        .create_user(
            &admin,
            &NewUser {
                name: "carol".into(),
                display_name: "Carol".into(),
                email: Some("carol@example.com".into()),
                password: Some(password.into()),
            },
        )
        .await
        .unwrap();
    assert!(
        carol
            .password_hash
            .as_deref()
            .unwrap()
            .starts_with("$argon2id$")
    );
    for bad in [
        NewUser {
            name: "Carol".into(),
            ..NewUser::default()
        },
        NewUser {
            name: "dave".into(),
            password: Some("short".into()),
            ..NewUser::default()
        },
        NewUser {
            name: "dave".into(),
            email: Some("not-an-address".into()),
            ..NewUser::default()
        },
        NewUser {
            name: "dave".into(),
            display_name: "a\nb".into(),
            ..NewUser::default()
        },
    ] {
        assert!(
            matches!(
                control.create_user(&admin, &bad).await,
                Err(ControlError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(store.principal("dave").await.unwrap().is_none());
    let sso_only = control
        .create_user(
            &admin,
            &NewUser {
                name: "erin".into(),
                ..NewUser::default()
            },
        )
        .await
        .unwrap();
    assert!(sso_only.password_hash.is_none());

    // Wrong password, unknown user, a user without a local password: one refusal for all.
    for (name, pass) in [
        ("carol", "wrong password here"),
        ("nobody", password),
        ("erin", password),
        ("root-admin", password),
    ] {
        let refused = control.sign_in_local(name, pass, None).await.unwrap_err();
        assert!(
            matches!(refused, ControlError::Unauthenticated(_)),
            "{name}: {refused}"
        );
    }
    let token = control
        .sign_in_local("carol", password, Some("192.0.2.10".into()))
        .await
        .unwrap();
    let carol = control.authenticate(&token.token).await.unwrap();
    assert_eq!(carol.actor(), "user:carol");
    assert!(carol.roles().is_empty(), "no role until one is bound");
    assert!(matches!(
        carol.require(Permission::AccessRequest),
        Err(ControlError::Forbidden(_))
    ));

    // A group's role reaches its members, and leaves with them.
    control
        .create_group(&admin, "engineers", "", Some("eng"))
        .await
        .unwrap();
    assert!(matches!(
        control.create_group(&admin, "engineers", "", None).await,
        Err(ControlError::AlreadyExists { .. })
    ));
    assert!(
        matches!(
            control.create_group(&admin, "other", "", Some("eng")).await,
            Err(ControlError::AlreadyExists { .. })
        ),
        "one identity-provider group maps to one Latch group"
    );
    let group = store.group("engineers").await.unwrap().unwrap();
    control
        .bind_role(
            &admin,
            Role::EndUser,
            &BindingSubject::Group(group.id.clone()),
            None,
        )
        .await
        .unwrap();
    control
        .set_group_member(&admin, "engineers", "carol", true)
        .await
        .unwrap();
    let carol = control.authenticate(&token.token).await.unwrap();
    assert_eq!(
        carol.roles().into_iter().collect::<Vec<_>>(),
        [Role::EndUser]
    );
    assert!(matches!(
        control
            .set_group_member(&carol, "engineers", "erin", true)
            .await,
        Err(ControlError::Forbidden(_))
    ));
    control
        .set_group_member(&admin, "engineers", "carol", false)
        .await
        .unwrap();
    assert!(
        control
            .authenticate(&token.token)
            .await
            .unwrap()
            .roles()
            .is_empty()
    );

    // Signing out ends the session; disabling ends every session and refuses sign-in.
    control.logout(&carol).await.unwrap();
    assert!(matches!(
        control.authenticate(&token.token).await,
        Err(ControlError::AuthorizationRevoked(_))
    ));
    // A new password ends every session; the old one stops working, the new one works; removing
    // it leaves sign-in to the identity provider.
    let before = control
        .sign_in_local("carol", password, None)
        .await
        .unwrap();
    let new_password = "a different long passphrase";
    assert!(matches!(
        control
            .set_user_password(&admin, "carol", Some("short"))
            .await,
        Err(ControlError::Invalid(_))
    ));
    control
        .set_user_password(&admin, "carol", Some(new_password))
        .await
        .unwrap();
    assert!(matches!(
        control.authenticate(&before.token).await,
        Err(ControlError::AuthorizationRevoked(_))
    ));
    assert!(matches!(
        control.sign_in_local("carol", password, None).await,
        Err(ControlError::Unauthenticated(_))
    ));
    control
        .sign_in_local("carol", new_password, None)
        .await
        .unwrap();
    assert!(
        matches!(
            control
                .set_user_password(&admin, "root-admin", Some(new_password))
                .await,
            Err(ControlError::NotFound { .. })
        ),
        "a service user has no password"
    );
    control
        .set_user_password(&admin, "carol", None)
        .await
        .unwrap();
    assert!(matches!(
        control.sign_in_local("carol", new_password, None).await,
        Err(ControlError::Unauthenticated(_))
    ));
    control
        .set_user_password(&admin, "carol", Some(password))
        .await
        .unwrap();
    let again = control
        .sign_in_local("carol", password, None)
        .await
        .unwrap();
    control.set_disabled(&admin, "carol", true).await.unwrap();
    assert!(matches!(
        control.authenticate(&again.token).await,
        Err(ControlError::AuthorizationRevoked(_))
    ));
    assert!(matches!(
        control.sign_in_local("carol", password, None).await,
        Err(ControlError::AuthorizationRevoked(_))
    ));
    assert!(
        matches!(
            control.set_disabled(&admin, "root-admin", true).await,
            Err(ControlError::Conflict(_))
        ),
        "nobody disables themselves"
    );
    let actions = audit_actions(store.as_ref()).await;
    for action in [
        "user.create",
        "session.start",
        "session.logout",
        "principal.disable",
        "group.member_remove",
        "user.password_set",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}");
    }
}
both_stores!(local_users_sign_in_and_get_their_groups_roles);

async fn review_people_changes_need_a_recent_factor_and_guessing_is_bounded(db: TestDb) {
    let store = db.store().await;
    let control = control_over(&store);
    let admin = bootstrap_admin(&control, &store).await;
    // A person with pam_admin: people changes need a recent second factor.
    let root = signed_in_user(&control, &store, "rooty").await;
    control
        .bind_role(
            &admin,
            Role::PamAdmin,
            &BindingSubject::Principal(root.principal.id.clone()),
            None,
        )
        .await
        .unwrap();
    let root = control
        .authenticate("latch_tok_session-of-rooty")
        .await
        .unwrap();
    let refused = control
        .create_service_user(&root, "backdoor", &[Role::PamAdmin])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ControlError::StepUpRequired(_)),
        "{refused}"
    );
    assert!(store.principal("backdoor").await.unwrap().is_none());
    for result in [
        control
            .create_user(
                &root,
                &NewUser {
                    name: "x".into(),
                    ..NewUser::default()
                },
            )
            .await
            .map(|_| ()),
        control.set_disabled(&root, "root-admin", true).await,
        control
            .bind_role(
                &root,
                Role::EndUser,
                &BindingSubject::Principal(root.principal.id.clone()),
                None,
            )
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(result, Err(ControlError::StepUpRequired(_))));
    }
    let factor = control.enroll_totp(&root).await.unwrap();
    control
        .verify_totp(&root, &code_at(&factor.secret_base32, Utc::now()).unwrap())
        .await
        .unwrap();
    let root = control
        .authenticate("latch_tok_session-of-rooty")
        .await
        .unwrap();
    control
        .create_service_user(&root, "deploy-bot", &[Role::EndUser])
        .await
        .unwrap();

    // Names never look like ids, and sign-in takes a name, never an id.
    for name in ["svc_admin", "usr_x", "grp_a", "key_1", "ses_1", "rb_1"] {
        assert!(matches!(
            control
                .create_user(
                    &admin,
                    &NewUser {
                        name: name.into(),
                        ..NewUser::default()
                    }
                )
                .await,
            Err(ControlError::Invalid(_))
        ));
    }
    let password = "correct horse battery staple";
    let dora = control
        .create_user(
            &admin,
            &NewUser {
                name: "dora".into(),
                password: Some(password.into()),
                ..NewUser::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        control.sign_in_local(&dora.id, password, None).await,
        Err(ControlError::Unauthenticated(_))
    ));
    // Guessing a password: after ten wrong ones even the right one is refused for a while.
    for _ in 0..latch_control::users::SIGN_IN_LOCK_AFTER {
        assert!(
            control
                .sign_in_local("dora", "wrong password!", None)
                .await
                .is_err()
        );
    }
    let locked = control
        .sign_in_local("dora", password, None)
        .await
        .unwrap_err();
    assert!(locked.to_string().contains("locked"), "{locked}");

    // A disabled service user's key exchanges for nothing; a token made for a key revoked
    // meanwhile is refused (the exchange racing the revocation).
    let bot = control
        .create_service_user(&admin, "bot", &[Role::EndUser])
        .await
        .unwrap();
    control.set_disabled(&admin, "bot", true).await.unwrap();
    assert!(matches!(
        control
            .issue_service_token(&bot.api_key, Duration::hours(1), None)
            .await,
        Err(ControlError::AuthorizationRevoked(_))
    ));
    control.set_disabled(&admin, "bot", false).await.unwrap();
    control
        .revoke_api_key(&admin, "bot", &bot.key_id)
        .await
        .unwrap();
    let now = Utc::now();
    let late = SessionRecord {
        id: "ses_late".into(),
        principal_id: bot.principal.id.clone(),
        kind: SessionKind::Service,
        api_key_id: Some(bot.key_id.clone()),
        created_at: now,
        expires_at: now + Duration::hours(1),
        revoked_at: None,
        mfa_at: None,
        address: None,
    };
    let late_token = "latch_tok_issued-after-revocation";
    let hash = store.audit_key().credential_hash(late_token);
    store
        .insert_session(&late, &hash, event("service_token.issue"), now)
        .await
        .unwrap();
    assert!(matches!(
        control.authenticate(late_token).await,
        Err(ControlError::AuthorizationRevoked(_))
    ));
}
both_stores!(review_people_changes_need_a_recent_factor_and_guessing_is_bounded);

async fn a_person_lists_only_their_live_sessions_and_ends_only_their_own(db: TestDb) {
    let store = db.store().await;
    let control = control_over(&store);
    let admin = bootstrap_admin(&control, &store).await;
    let alice = signed_in_user(&control, &store, "alice").await;
    let bob = signed_in_user(&control, &store, "bob").await;
    let now = Utc::now();
    let session = |id: &str, created: chrono::DateTime<Utc>, expires| SessionRecord {
        id: id.into(),
        principal_id: "usr_alice".into(),
        kind: SessionKind::Sso,
        api_key_id: None,
        created_at: created,
        expires_at: expires,
        revoked_at: None,
        mfa_at: None,
        address: Some("192.0.2.7".into()),
    };
    let second_token = "latch_tok_second-of-alice";
    for (record, token) in [
        (
            session(
                "ses_alice_2",
                now + Duration::seconds(1),
                now + Duration::hours(1),
            ),
            second_token,
        ),
        (
            session(
                "ses_alice_old",
                now - Duration::hours(2),
                now - Duration::hours(1),
            ),
            "latch_tok_expired-of-alice",
        ),
        (
            session("ses_alice_out", now, now + Duration::hours(1)),
            "latch_tok_ended-of-alice",
        ),
    ] {
        let hash = store.audit_key().credential_hash(token);
        store
            .insert_session(&record, &hash, event("session.start"), now)
            .await
            .unwrap();
    }
    assert!(
        store
            .revoke_session("ses_alice_out", event("session.logout"), now)
            .await
            .unwrap()
    );
    let ids = |sessions: Vec<SessionRecord>| -> Vec<String> {
        sessions.into_iter().map(|s| s.id).collect()
    };
    // Live ones only, newest first; each person sees their own.
    assert_eq!(
        ids(control.own_sessions(&alice).await.unwrap()),
        ["ses_alice_2", "ses_alice"]
    );
    assert_eq!(ids(control.own_sessions(&bob).await.unwrap()), ["ses_bob"]);

    // Another person's session, or one already over, is not found, and nothing changes.
    for (by, id) in [
        (&bob, "ses_alice_2"),
        (&alice, "ses_alice_old"),
        (&alice, "ses_alice_out"),
        (&alice, "ses_nonexistent"),
    ] {
        assert!(
            matches!(
                control.end_own_session(by, id).await,
                Err(ControlError::NotFound { .. })
            ),
            "{id}"
        );
    }
    assert!(control.authenticate(second_token).await.is_ok());
    assert!(
        !audit_actions(&*store)
            .await
            .contains(&"session.end".to_owned())
    );

    control
        .end_own_session(&alice, "ses_alice_2")
        .await
        .unwrap();
    assert!(control.authenticate(second_token).await.is_err());
    let ends = |entries: Vec<latch_control::audit::AuditEntry>| -> Vec<serde_json::Value> {
        entries
            .into_iter()
            .filter(|e| e.action == "session.end")
            .map(|e| serde_json::from_str(&e.detail).unwrap())
            .collect()
    };
    let recorded = ends(store.audit_chain().await.unwrap());
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["ended"], serde_json::json!(["ses_alice_2"]));
    assert_eq!(recorded[0]["by_session"], "ses_alice");
    // Nothing else live: nothing ended, nothing audited.
    assert_eq!(control.end_other_sessions(&alice).await.unwrap(), 0);
    assert_eq!(ends(store.audit_chain().await.unwrap()).len(), 1);
    assert!(
        control
            .authenticate("latch_tok_session-of-alice")
            .await
            .is_ok()
    );

    // A service token sees and ends only itself: its siblings are other pipelines'. Its
    // session ends with its API key.
    let ci = control
        .create_service_user(&admin, "ci-pipeline", &[Role::EndUser])
        .await
        .unwrap();
    let token = control
        .issue_service_token(&ci.api_key, Duration::hours(1), None)
        .await
        .unwrap();
    let caller = control.authenticate(&token.token).await.unwrap();
    let sibling = control
        .issue_service_token(&ci.api_key, Duration::hours(1), None)
        .await
        .unwrap();
    let sibling_id = control
        .authenticate(&sibling.token)
        .await
        .unwrap()
        .session
        .id;
    assert_eq!(
        ids(control.own_sessions(&caller).await.unwrap()),
        std::slice::from_ref(&caller.session.id)
    );
    assert!(matches!(
        control.end_own_session(&caller, &sibling_id).await,
        Err(ControlError::NotFound { .. })
    ));
    assert!(matches!(
        control.end_other_sessions(&caller).await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(control.authenticate(&sibling.token).await.is_ok());
    control
        .revoke_api_key(&admin, "ci-pipeline", &ci.key_id)
        .await
        .unwrap();
    assert!(
        store
            .live_sessions(&caller.principal.id, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}
both_stores!(a_person_lists_only_their_live_sessions_and_ends_only_their_own);
