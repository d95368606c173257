//! The credential vault through the library, on both stores: vaults and grants, reveal,
//! checkout/checkin, rotation across hosts (the agents' answers simulated through the real
//! job queue), failure and roll-back, reuse refusal, rotate-after-use, break-glass with its
//! limit, expiry and webhook, enrollment, and no plaintext secret in the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use latch_common::api::ReportRequest;
use latch_common::authz::Role;
use latch_common::job::{JobError, JobErrorCode, JobOutcome, JobSpec};
use latch_common::vault::{
    AccessLevel, BreakGlassRequest, CheckinRequest, CheckoutRequest, CreateIdentityRequest,
    CreateVaultGrantRequest, CreateVaultRequest, EnrollAccountRequest, RotateRequest,
    UpdateIdentityRequest,
};
use latch_control::audit::AuditEvent;
use latch_control::datadir::{self, DataDir};
use latch_control::error::ControlError;
use latch_control::store::HostRecord;
use latch_control::store::people::GroupRecord;
use latch_control::vault::VaultConfig;
use latch_control::{Control, ControlConfig};
use sha_crypt::{PasswordVerifier as _, ShaCrypt};
use support::{TestDb, audit_actions as actions};

/// A control plane over a fresh data directory (its master key opens the vault).
struct Setup {
    control: Arc<Control>,
    store: Arc<dyn latch_control::store::Store>,
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
}

async fn setup(db: &TestDb, vault: VaultConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data: DataDir = datadir::open(dir.path(), &db.options()).await.unwrap();
    let store = data.store.clone();
    let config = ControlConfig {
        vault,
        ..ControlConfig::default()
    };
    let control = Control::new(data.store, config, data.signer).with_master_key(data.master_key);
    Setup {
        control: Arc::new(control),
        store,
        dir: dir.path().to_owned(),
        _dir: dir,
    }
}

/// Plays the host's agent for one job: takes the next one and reports `outcome`. Returns
/// the job's parameters (`None` if no job waits).
async fn answer(control: &Control, host: &HostRecord, outcome: JobOutcome) -> Option<JobSpec> {
    let job = control.next_job(host, StdDuration::ZERO).await.unwrap()?;
    let payload: latch_common::signing::SignedJob = serde_json::from_str(&job.payload).unwrap();
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
    Some(payload.spec)
}

fn failure(code: JobErrorCode) -> JobOutcome {
    JobOutcome::Failed {
        error: JobError::new(code, "simulated failure"),
    }
}

fn vault_request(name: &str) -> CreateVaultRequest {
    CreateVaultRequest {
        name: name.into(),
        description: "shared accounts".into(),
        organization: None,
    }
}

fn identity_request(name: &str, secret: Option<&str>, hosts: &[&str]) -> CreateIdentityRequest {
    CreateIdentityRequest {
        name: name.into(),
        username: "appsvc".into(),
        secret: secret.map(Into::into),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        ..Default::default()
    }
}

fn checkout(reason: &str, minutes: u32) -> CheckoutRequest {
    CheckoutRequest {
        reason: reason.into(),
        duration_minutes: minutes,
        host: None,
    }
}

fn message(error: ControlError) -> String {
    error.to_string()
}

/// A group `name` with `member` in it.
async fn group_with(store: &dyn latch_control::store::Store, name: &str, member: &str) {
    let now = Utc::now();
    let id = format!("grp_{}", name.replace('-', "_"));
    let group = GroupRecord {
        id: id.clone(),
        name: name.into(),
        description: String::new(),
        idp_group: None,
        created_at: now,
    };
    store
        .insert_group(&group, AuditEvent::new("test", "group.create"), now)
        .await
        .unwrap()
        .unwrap();
    store
        .set_member(
            &id,
            member,
            true,
            AuditEvent::new("test", "group.member"),
            now,
        )
        .await
        .unwrap()
        .unwrap();
}

both_stores!(vault_access_follows_permissions_grants_and_ownership);
async fn vault_access_follows_permissions_grants_and_ownership(db: TestDb) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let owner = support::person(&*s.store, "olivia", &[Role::ResourceAdmin]).await;
    let bob = support::person(&*s.store, "bob", &[Role::EndUser]).await;
    let auditor = support::person(&*s.store, "sam", &[Role::SecurityAdmin]).await;
    let vault = c
        .create_vault(&owner, &vault_request("prod-db"))
        .await
        .unwrap();
    assert_eq!(vault.owner.as_deref(), Some("olivia"));
    assert_eq!(vault.my_access, Some(AccessLevel::Checkout));
    // An end user cannot create vaults and does not see this one.
    assert!(matches!(
        c.create_vault(&bob, &vault_request("mine")).await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(c.list_vaults(&bob).await.unwrap().is_empty());
    assert!(matches!(
        c.show_vault(&bob, "prod-db").await,
        Err(ControlError::NotFound { .. })
    ));
    // A name taken in the organization is refused.
    assert!(matches!(
        c.create_vault(&owner, &vault_request("prod-db")).await,
        Err(ControlError::AlreadyExists { .. })
    ));
    let identity = c
        .create_identity(
            &owner,
            "prod-db",
            &identity_request("app", Some("Old-Secret-2026!"), &[]),
        )
        .await
        .unwrap();
    // The owner reveals without a grant; pam_vaults.view lets the auditor see, not reveal.
    assert_eq!(
        c.reveal_identity(&owner, &identity.id)
            .await
            .unwrap()
            .secret,
        "Old-Secret-2026!"
    );
    assert_eq!(
        c.list_identities(&auditor, "prod-db").await.unwrap().len(),
        1
    );
    let refused = c.reveal_identity(&auditor, &identity.id).await.unwrap_err();
    assert!(message(refused).contains("view_credentials"));

    // A group grant of view_vault lets bob see, not reveal.
    group_with(&*s.store, "dbas", "usr_bob").await;
    c.grant_vault_access(
        &owner,
        "prod-db",
        &CreateVaultGrantRequest {
            user: None,
            group: Some("dbas".into()),
            level: AccessLevel::ViewVault,
            expires_at: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(c.list_vaults(&bob).await.unwrap().len(), 1);
    assert!(matches!(
        c.reveal_identity(&bob, &identity.id).await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        c.checkout_identity(&bob, &identity.id, &checkout("fix", 30))
            .await,
        Err(ControlError::Forbidden(_))
    ));
    // A direct grant of view_credentials, with an expiry, opens reveal until it ends.
    let grant = c
        .grant_vault_access(
            &owner,
            "prod-db",
            &CreateVaultGrantRequest {
                user: Some("bob".into()),
                group: None,
                level: AccessLevel::ViewCredentials,
                expires_at: Some(Utc::now() + Duration::seconds(2)),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        c.reveal_identity(&bob, &identity.id).await.unwrap().secret,
        "Old-Secret-2026!"
    );
    // Without a recent second factor, the reveal needs a step-up.
    let mut stale = bob.clone();
    stale.session.mfa_at = None;
    assert!(matches!(
        c.reveal_identity(&stale, &identity.id).await,
        Err(ControlError::StepUpRequired(_))
    ));
    tokio::time::sleep(StdDuration::from_millis(2100)).await;
    assert!(matches!(
        c.reveal_identity(&bob, &identity.id).await,
        Err(ControlError::Forbidden(_))
    ));
    // Only managers list and remove grants.
    assert!(matches!(
        c.list_vault_grants(&bob, "prod-db").await,
        Err(ControlError::Forbidden(_))
    ));
    c.revoke_vault_access(&owner, "prod-db", &grant.id)
        .await
        .unwrap();
    assert_eq!(
        c.list_vault_grants(&owner, "prod-db").await.unwrap().len(),
        1
    );

    // A vault with identities is not deleted.
    let refused = c.delete_vault(&owner, "prod-db").await.unwrap_err();
    assert_eq!(
        message(refused).split(':').next().unwrap(),
        "Cannot delete vault with 1 identities"
    );
    c.delete_identity(&owner, &identity.id).await.unwrap();
    c.delete_vault(&owner, "prod-db").await.unwrap();
    assert!(c.list_vaults(&owner).await.unwrap().is_empty());

    // Every step is audited, reveals included, never with the secret.
    let trail = actions(&*s.store).await;
    let names: Vec<&str> = trail.iter().map(|(a, _)| a.as_str()).collect();
    for wanted in [
        "vault.created",
        "vault.identity_created",
        "vault.revealed",
        "vault.access_granted",
        "vault.access_revoked",
        "vault.identity_deleted",
        "vault.deleted",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    let revealed = trail.iter().find(|(a, _)| a == "vault.revealed").unwrap();
    assert_eq!(revealed.1["identity_id"], identity.id.as_str());
    assert!(!format!("{trail:?}").contains("Old-Secret-2026!"));
}

both_stores!(checkouts_are_bounded_exclusive_or_limited_and_checked_in_by_their_holder);
async fn checkouts_are_bounded_exclusive_or_limited_and_checked_in_by_their_holder(db: TestDb) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let bob = support::person(&*s.store, "bob", &[Role::EndUser]).await;
    let carol = support::person(&*s.store, "carol", &[Role::EndUser]).await;
    c.create_vault(&admin, &vault_request("ops")).await.unwrap();
    for user in ["bob", "carol"] {
        c.grant_vault_access(
            &admin,
            "ops",
            &CreateVaultGrantRequest {
                user: Some(user.into()),
                group: None,
                level: AccessLevel::Checkout,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    }
    let solo = c
        .create_identity(
            &admin,
            "ops",
            &identity_request("solo", Some("Solo-Secret-2026!"), &[]),
        )
        .await
        .unwrap();

    // Reason and duration are checked.
    for (reason, minutes) in [("", 30), (&*"x".repeat(501), 30), ("ok", 4), ("ok", 1441)] {
        assert!(matches!(
            c.checkout_identity(&bob, &solo.id, &checkout(reason, minutes))
                .await,
            Err(ControlError::Invalid(_))
        ));
    }
    let granted = c
        .checkout_identity(&bob, &solo.id, &checkout("rotate the logs", 30))
        .await
        .unwrap();
    assert_eq!(granted.credential.secret, "Solo-Secret-2026!");
    assert_eq!(granted.checkout.holder, "bob");
    assert!(granted.checkout.expires_at > Utc::now() + Duration::minutes(29));
    let busy = c
        .checkout_identity(&carol, &solo.id, &checkout("me too", 30))
        .await
        .unwrap_err();
    assert!(message(busy).starts_with("Identity is already checked out"));
    // A manual rotation waits for the check-in.
    let refused = c
        .rotate_identity(&admin, &solo.id, &RotateRequest::default())
        .await
        .unwrap_err();
    let refused = message(refused);
    assert!(refused.contains("checked out"), "{refused}");
    // Only the holder checks in; an admin may force it.
    assert!(matches!(
        c.checkin(&carol, &granted.checkout.id, &CheckinRequest::default())
            .await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        c.checkin(
            &carol,
            &granted.checkout.id,
            &CheckinRequest { force: true }
        )
        .await,
        Err(ControlError::Forbidden(_))
    ));
    let forced = c
        .checkin(
            &admin,
            &granted.checkout.id,
            &CheckinRequest { force: true },
        )
        .await
        .unwrap();
    assert_eq!(forced.checked_in_how.as_deref(), Some("forced"));
    assert!(matches!(
        c.checkin(&bob, &granted.checkout.id, &CheckinRequest::default())
            .await,
        Err(ControlError::Conflict(_))
    ));

    // Concurrent checkouts up to the maximum.
    let shared = c
        .create_identity(
            &admin,
            "ops",
            &CreateIdentityRequest {
                concurrent_checkout: true,
                max_concurrent_checkouts: Some(2),
                ..identity_request("shared", Some("Shared-Secret-2026!"), &[])
            },
        )
        .await
        .unwrap();
    let first = c
        .checkout_identity(&bob, &shared.id, &checkout("one", 5))
        .await
        .unwrap();
    c.checkout_identity(&carol, &shared.id, &checkout("two", 5))
        .await
        .unwrap();
    let full = c
        .checkout_identity(&admin, &shared.id, &checkout("three", 5))
        .await
        .unwrap_err();
    assert!(message(full).starts_with("Maximum concurrent sessions reached"));
    let back = c
        .checkin(&bob, &first.checkout.id, &CheckinRequest::default())
        .await
        .unwrap();
    assert_eq!(back.checked_in_how.as_deref(), Some("holder"));
    c.checkout_identity(&admin, &shared.id, &checkout("three", 5))
        .await
        .unwrap();
    // Others' checkouts are visible to managers only.
    assert_eq!(c.list_checkouts(&admin, &shared.id).await.unwrap().len(), 3);
    let mine = c.list_checkouts(&carol, &shared.id).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].holder, "carol");
    // An identity checked out is not deleted.
    assert!(matches!(
        c.delete_identity(&admin, &shared.id).await,
        Err(ControlError::Conflict(_))
    ));
}

both_stores!(a_rotation_is_pending_until_every_host_confirms_and_names_the_host_it_waits_for);
async fn a_rotation_is_pending_until_every_host_confirms_and_names_the_host_it_waits_for(
    db: TestDb,
) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let hosts = [
        support::enrolled_host(c, "web1").await,
        support::enrolled_host(c, "web2").await,
        support::enrolled_host(c, "web3").await,
    ];
    c.create_vault(&admin, &vault_request("web")).await.unwrap();
    let identity = c
        .create_identity(
            &admin,
            "web",
            &identity_request("app", Some("First-Secret-2026!"), &["web1", "web2", "web3"]),
        )
        .await
        .unwrap();
    assert_eq!(identity.hosts.len(), 3);
    for h in &hosts {
        let spec = answer(c, h, JobOutcome::confirmed()).await.unwrap();
        assert_eq!(
            spec,
            JobSpec::AdoptAccount {
                user: "appsvc".into()
            }
        );
        // Then the vault's password, so it works on every linked host.
        match answer(c, h, JobOutcome::confirmed()).await.unwrap() {
            JobSpec::SetPassword { password_hash, .. } => assert!(
                ShaCrypt::default()
                    .verify_password(b"First-Secret-2026!", password_hash.as_str())
                    .is_ok()
            ),
            other => panic!("expected set-password, got {other:?}"),
        }
    }
    let shown = c.show_identity(&admin, &identity.id).await.unwrap();
    assert!(
        shown
            .hosts
            .iter()
            .all(|h| h.adopt_status.as_deref() == Some("confirmed"))
    );

    let rotation = c
        .rotate_identity(&admin, &identity.id, &RotateRequest::default())
        .await
        .unwrap();
    assert_eq!(rotation.state, "pending");
    assert_eq!(rotation.trigger, "manual");
    assert_eq!(rotation.hosts.len(), 3);
    let mut hashes = Vec::new();
    for h in &hosts[..2] {
        match answer(c, h, JobOutcome::confirmed()).await.unwrap() {
            JobSpec::SetPassword {
                user,
                password_hash,
            } => {
                assert_eq!(user, "appsvc");
                assert!(password_hash.starts_with("$6$"), "{password_hash}");
                hashes.push(password_hash);
            }
            other => panic!("expected set-password, got {other:?}"),
        }
    }
    assert_ne!(hashes[0], hashes[1], "each job has its own salt");
    c.settle_rotations().await.unwrap();
    let waiting = c.show_rotation(&admin, &rotation.id).await.unwrap();
    assert_eq!(waiting.state, "pending");
    assert_eq!(waiting.waiting_for, vec!["web3".to_owned()]);
    // Until confirmed, the previous secret is the one revealed.
    assert_eq!(
        c.reveal_identity(&admin, &identity.id)
            .await
            .unwrap()
            .secret,
        "First-Secret-2026!"
    );
    answer(c, &hosts[2], JobOutcome::confirmed()).await.unwrap();
    c.settle_rotations().await.unwrap();
    let done = c.show_rotation(&admin, &rotation.id).await.unwrap();
    assert_eq!(done.state, "confirmed");
    assert!(done.waiting_for.is_empty());
    assert!(done.hosts.iter().all(|h| h.status == "confirmed"));
    let new = c
        .reveal_identity(&admin, &identity.id)
        .await
        .unwrap()
        .secret;
    assert_ne!(new, "First-Secret-2026!");
    assert_eq!(new.len(), 24);
    for hash in &hashes {
        assert!(
            ShaCrypt::default()
                .verify_password(new.as_bytes(), hash.as_str())
                .is_ok(),
            "the job's hash is of the new password"
        );
    }
    let shown = c.show_identity(&admin, &identity.id).await.unwrap();
    assert_eq!(shown.rotation_state.as_deref(), Some("confirmed"));
    assert!(shown.last_rotated_at.is_some());
}

both_stores!(a_failed_host_fails_the_rotation_and_keeps_the_previous_secret_everywhere);
async fn a_failed_host_fails_the_rotation_and_keeps_the_previous_secret_everywhere(db: TestDb) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let good = support::enrolled_host(c, "db1").await;
    let bad = support::enrolled_host(c, "db2").await;
    c.create_vault(&admin, &vault_request("db")).await.unwrap();
    let identity = c
        .create_identity(
            &admin,
            "db",
            &identity_request("dba", Some("Kept-Secret-2026!"), &["db1", "db2"]),
        )
        .await
        .unwrap();
    for h in [&good, &bad] {
        // The adoption and the current password.
        answer(c, h, JobOutcome::confirmed()).await.unwrap();
        answer(c, h, JobOutcome::confirmed()).await.unwrap();
    }
    let rotation = c
        .rotate_identity(&admin, &identity.id, &RotateRequest::default())
        .await
        .unwrap();
    answer(c, &good, JobOutcome::confirmed()).await.unwrap();
    answer(c, &bad, failure(JobErrorCode::AccountNotManaged))
        .await
        .unwrap();
    c.settle_rotations().await.unwrap();
    let failed = c.show_rotation(&admin, &rotation.id).await.unwrap();
    assert_eq!(failed.state, "failed");
    let db2 = failed.hosts.iter().find(|h| h.hostname == "db2").unwrap();
    assert_eq!(db2.status, "failed");
    assert_eq!(db2.error_code.as_deref(), Some("account_not_managed"));
    assert_eq!(
        c.reveal_identity(&admin, &identity.id)
            .await
            .unwrap()
            .secret,
        "Kept-Secret-2026!",
        "the previous secret stays current"
    );
    // The host that took the new password gets the previous one back.
    match answer(c, &good, JobOutcome::confirmed()).await.unwrap() {
        JobSpec::SetPassword { password_hash, .. } => {
            assert!(
                ShaCrypt::default()
                    .verify_password(b"Kept-Secret-2026!", password_hash.as_str())
                    .is_ok()
            );
        }
        other => panic!("expected the roll-back, got {other:?}"),
    }
    // The failed host too: it may have applied the new password before its job failed.
    match answer(c, &bad, JobOutcome::confirmed()).await.unwrap() {
        JobSpec::SetPassword { password_hash, .. } => assert!(
            ShaCrypt::default()
                .verify_password(b"Kept-Secret-2026!", password_hash.as_str())
                .is_ok()
        ),
        other => panic!("expected the roll-back, got {other:?}"),
    }
    let rolled = actions(&*s.store).await;
    let rolled = rolled
        .iter()
        .find(|(a, _)| a == "vault.rotation_rolled_back")
        .unwrap();
    assert_eq!(rolled.1["jobs"].as_array().unwrap().len(), 2, "{rolled:?}");
    let trail = actions(&*s.store).await;
    let settled = trail
        .iter()
        .find(|(a, _)| a == "vault.rotation_failed")
        .unwrap();
    assert!(settled.1["note"].as_str().unwrap().contains("db2"));
}

both_stores!(recent_passwords_are_refused_and_rotate_after_use_rotates_at_checkin);
async fn recent_passwords_are_refused_and_rotate_after_use_rotates_at_checkin(db: TestDb) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    c.create_vault(&admin, &vault_request("apps"))
        .await
        .unwrap();
    let identity = c
        .create_identity(
            &admin,
            "apps",
            &CreateIdentityRequest {
                rotate_after_use: true,
                ..identity_request("app", Some("Start-Secret-2026!"), &[])
            },
        )
        .await
        .unwrap();
    let to = |p: &str| RotateRequest {
        password: Some(p.into()),
    };
    // With no linked host, a rotation confirms at once.
    let first = c
        .rotate_identity(&admin, &identity.id, &to("Second-Secret-2026!"))
        .await
        .unwrap();
    assert_eq!(first.state, "confirmed");
    for reused in ["Start-Secret-2026!", "Second-Secret-2026!"] {
        let refused = c
            .rotate_identity(&admin, &identity.id, &to(reused))
            .await
            .unwrap_err();
        assert!(message(refused).contains("used recently"), "{reused}");
    }
    assert!(matches!(
        c.rotate_identity(&admin, &identity.id, &to("short")).await,
        Err(ControlError::Invalid(_))
    ));
    // Ten later passwords push the first out of the history.
    for n in 0..10 {
        c.rotate_identity(&admin, &identity.id, &to(&format!("Later-Secret-{n:02}!")))
            .await
            .unwrap();
    }
    c.rotate_identity(&admin, &identity.id, &to("Start-Secret-2026!"))
        .await
        .unwrap();

    // Check-in of a rotate-after-use identity queues its rotation with the check-in.
    let out = c
        .checkout_identity(&admin, &identity.id, &checkout("deploy", 15))
        .await
        .unwrap();
    assert_eq!(out.credential.secret, "Start-Secret-2026!");
    let back = c
        .checkin(&admin, &out.checkout.id, &CheckinRequest::default())
        .await
        .unwrap();
    let rotation_id = back.rotation_id.expect("the check-in names its rotation");
    let rotation = c.show_rotation(&admin, &rotation_id).await.unwrap();
    assert_eq!(rotation.trigger, "after_use");
    assert_eq!(rotation.state, "confirmed");
    assert_ne!(
        c.reveal_identity(&admin, &identity.id)
            .await
            .unwrap()
            .secret,
        "Start-Secret-2026!"
    );
}

both_stores!(break_glass_is_limited_loud_and_rotates_when_it_ends);
async fn break_glass_is_limited_loud_and_rotates_when_it_ends(db: TestDb) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A webhook receiver on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, String)>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        let head = text[..end].to_ascii_lowercase();
                        let header = |name: &str| {
                            head.lines()
                                .find_map(|l| {
                                    l.strip_prefix(&format!("{name}: ")).map(str::to_owned)
                                })
                                .unwrap_or_default()
                        };
                        let body = text[end + 4..end + 4 + length].to_owned();
                        tx.send((
                            header("x-latch-timestamp"),
                            header("x-latch-signature"),
                            body,
                        ))
                        .unwrap();
                        socket
                            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                            .await
                            .unwrap();
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
        }
    });
    let secret = b"webhook-secret-for-tests".to_vec();
    let s = setup(
        &db,
        VaultConfig {
            break_glass_duration: Duration::seconds(2),
            break_glass_webhook: Some(latch_control::vault::notify::Webhook {
                url,
                secret: Some(secret.clone()),
            }),
            ..VaultConfig::default()
        },
    )
    .await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let bob = support::person(&*s.store, "bob", &[Role::EndUser]).await;
    c.create_vault(&admin, &vault_request("core"))
        .await
        .unwrap();
    let identity = c
        .create_identity(
            &admin,
            "core",
            &identity_request("root-ish", Some("Glass-Secret-2026!"), &[]),
        )
        .await
        .unwrap();
    let request = BreakGlassRequest {
        reason: "database down, on-call cannot reach the DBA".into(),
    };
    assert!(matches!(
        c.break_glass(&bob, &identity.id, &request).await,
        Err(ControlError::Forbidden(_))
    ));
    let mut stale = admin.clone();
    stale.session.mfa_at = None;
    assert!(matches!(
        c.break_glass(&stale, &identity.id, &request).await,
        Err(ControlError::StepUpRequired(_))
    ));
    // Security admins subscribe to break-glass on the signed webhooks too.
    let hook = c
        .create_webhook(
            &support::admin(),
            &latch_common::webhooks::CreateWebhookRequest {
                url: "http://127.0.0.1:9/security".into(),
                events: vec!["break_glass".into()],
                secret: "security-team-secret-0123".into(),
            },
        )
        .await
        .unwrap();
    let glass = c.break_glass(&admin, &identity.id, &request).await.unwrap();
    assert!(glass.checkout.break_glass);
    let queued = c
        .list_webhook_deliveries(&support::admin(), &hook.id)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].event, "break_glass");
    assert_eq!(queued[0].body["detail"]["severity"], "critical");
    assert_eq!(queued[0].body["detail"]["actor"], "user:ada");
    assert!(!queued[0].body.to_string().contains("Glass-Secret-2026!"));
    assert_eq!(glass.credential.secret, "Glass-Secret-2026!");
    assert!(glass.checkout.expires_at <= Utc::now() + Duration::seconds(2));
    // Critical audit event and a signed webhook, without the secret.
    let (timestamp, signature, body) = tokio::time::timeout(StdDuration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        signature,
        latch_control::vault::notify::signature(
            &secret,
            timestamp.parse().unwrap(),
            body.as_bytes()
        )
    );
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sent["event"], "break_glass");
    assert_eq!(sent["detail"]["identity_id"], identity.id.as_str());
    assert!(!body.contains("Glass-Secret-2026!"));
    let trail = actions(&*s.store).await;
    let event = trail
        .iter()
        .find(|(a, _)| a == "vault.break_glass")
        .unwrap();
    assert_eq!(event.1["severity"], "critical");
    assert_eq!(event.1["reason"], request.reason.as_str());
    // Three a minute per person; the fourth is refused with 429.
    c.break_glass(&admin, &identity.id, &request).await.unwrap();
    c.break_glass(&admin, &identity.id, &request).await.unwrap();
    assert!(matches!(
        c.break_glass(&admin, &identity.id, &request).await,
        Err(ControlError::TooManyRequests(_))
    ));
    // At its end the sweep checks it in and rotates the password.
    tokio::time::sleep(StdDuration::from_millis(2200)).await;
    assert_eq!(c.check_in_expired(None).await.unwrap(), 3);
    let ended = c.list_checkouts(&admin, &identity.id).await.unwrap();
    assert!(
        ended
            .iter()
            .all(|co| co.checked_in_how.as_deref() == Some("expired"))
    );
    let rotations = c.list_rotations(&admin, &identity.id).await.unwrap();
    assert!(rotations.iter().all(|r| r.trigger == "break_glass"));
    assert_eq!(rotations[0].state, "confirmed");
    assert_ne!(
        c.reveal_identity(&admin, &identity.id)
            .await
            .unwrap()
            .secret,
        "Glass-Secret-2026!"
    );
}

both_stores!(enrollment_adopts_the_account_then_sets_a_generated_password);
async fn enrollment_adopts_the_account_then_sets_a_generated_password(db: TestDb) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let bob = support::person(&*s.store, "bob", &[Role::EndUser]).await;
    let online = support::enrolled_host(c, "app1").await;
    c.create_vault(&admin, &vault_request("legacy"))
        .await
        .unwrap();
    let request = EnrollAccountRequest {
        user: "deploy".into(),
        vault: "legacy".into(),
        name: None,
    };
    assert!(matches!(
        c.enroll_account(&bob, "app1", &request).await,
        Err(ControlError::Forbidden(_))
    ));
    // A host never seen polling is offline.
    let refused = c
        .enroll_account(&admin, "app1", &request)
        .await
        .unwrap_err();
    assert!(message(refused).contains("offline"));
    assert!(
        c.next_job(&online, StdDuration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    let enrolled = c.enroll_account(&admin, "app1", &request).await.unwrap();
    assert_eq!(enrolled.identity.name, "deploy@app1");
    assert!(
        !enrolled.identity.has_secret,
        "no password before the host confirms"
    );
    assert_eq!(enrolled.rotation.trigger, "enrollment");
    assert_eq!(enrolled.rotation.state, "pending");
    // The agent adopts first, then sets the password.
    assert_eq!(
        answer(c, &online, JobOutcome::confirmed()).await.unwrap(),
        JobSpec::AdoptAccount {
            user: "deploy".into()
        }
    );
    assert!(matches!(
        answer(c, &online, JobOutcome::confirmed()).await.unwrap(),
        JobSpec::SetPassword { .. }
    ));
    assert!(matches!(
        c.reveal_identity(&admin, &enrolled.identity.id).await,
        Err(ControlError::Conflict(_))
    ));
    c.settle_rotations().await.unwrap();
    let shown = c
        .show_identity(&admin, &enrolled.identity.id)
        .await
        .unwrap();
    assert!(shown.has_secret);
    assert_eq!(shown.rotation_state.as_deref(), Some("confirmed"));
    assert_eq!(shown.hosts[0].adopt_status.as_deref(), Some("confirmed"));
    let password = c
        .reveal_identity(&admin, &enrolled.identity.id)
        .await
        .unwrap()
        .secret;
    assert_eq!(password.len(), 24);
}

both_stores!(no_secret_is_stored_in_plain_text);
async fn no_secret_is_stored_in_plain_text(db: TestDb) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let h = support::enrolled_host(c, "plain1").await;
    c.create_vault(&admin, &vault_request("scan"))
        .await
        .unwrap();
    let given = "Given-Plaintext-Marker-7f3a!";
    let identity = c
        .create_identity(
            &admin,
            "scan",
            &identity_request("app", Some(given), &["plain1"]),
        )
        .await
        .unwrap();
    answer(c, &h, JobOutcome::confirmed()).await.unwrap();
    answer(c, &h, JobOutcome::confirmed()).await.unwrap();
    let rotated = "Rotated-Plaintext-Marker-9c1e!";
    c.rotate_identity(
        &admin,
        &identity.id,
        &RotateRequest {
            password: Some(rotated.into()),
        },
    )
    .await
    .unwrap();
    answer(c, &h, JobOutcome::confirmed()).await.unwrap();
    c.settle_rotations().await.unwrap();
    let generated = {
        c.rotate_identity(&admin, &identity.id, &RotateRequest::default())
            .await
            .unwrap();
        answer(c, &h, JobOutcome::confirmed()).await.unwrap();
        c.settle_rotations().await.unwrap();
        c.reveal_identity(&admin, &identity.id)
            .await
            .unwrap()
            .secret
    };
    let out = c
        .checkout_identity(&admin, &identity.id, &checkout("scan test", 5))
        .await
        .unwrap();
    assert_eq!(out.credential.secret, generated);
    c.checkin(&admin, &out.checkout.id, &CheckinRequest::default())
        .await
        .unwrap();
    c.update_identity(&admin, &identity.id, &UpdateIdentityRequest::default())
        .await
        .unwrap();
    let secrets = [given, rotated, generated.as_str()];
    match db.url() {
        None => {
            // Every byte of the database file and its write-ahead log.
            let mut bytes = Vec::new();
            for name in ["latch.db", "latch.db-wal"] {
                if let Ok(b) = std::fs::read(s.dir.join(name)) {
                    bytes.extend(b);
                }
            }
            assert!(!bytes.is_empty(), "the database file was not found");
            for secret in secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "a secret is in the database file"
                );
            }
        }
        Some(_) => {
            // Every text column of every table, as PostgreSQL returns it.
            let dump = db.dump_all_text().await;
            assert!(dump.len() > 1000, "the dump is too small to mean anything");
            for secret in secrets {
                assert!(!dump.contains(secret), "a secret is in a PostgreSQL table");
            }
        }
    }
}

both_stores!(support_access_shows_metadata_only_while_enabled_and_emergency_disable_ends_it);
async fn support_access_shows_metadata_only_while_enabled_and_emergency_disable_ends_it(
    db: TestDb,
) {
    use latch_common::vault::{EmergencyDisableRequest, EnableSupportAccessRequest};
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let vendor = support::person(&*s.store, "vera", &[]).await;
    group_with(
        &*s.store,
        latch_control::vault::support::SUPPORT_GROUP,
        "usr_vera",
    )
    .await;
    c.create_vault(&admin, &vault_request("ops")).await.unwrap();
    let identity = c
        .create_identity(
            &admin,
            "ops",
            &identity_request("app", Some("Support-Secret-2026!"), &[]),
        )
        .await
        .unwrap();
    assert!(
        c.list_vaults(&vendor).await.unwrap().is_empty(),
        "not before it is enabled"
    );

    let enable = |reason: &str, days: Option<u32>| EnableSupportAccessRequest {
        reason: reason.into(),
        days,
        organization: None,
    };
    for (reason, days) in [
        ("", Some(3)),
        ("ticket 7", Some(0)),
        ("ticket 7", Some(366)),
    ] {
        assert!(matches!(
            c.enable_support_access(&admin, &enable(reason, days)).await,
            Err(ControlError::Invalid(_))
        ));
    }
    assert!(matches!(
        c.enable_support_access(&vendor, &enable("let me in", Some(1)))
            .await,
        Err(ControlError::Forbidden(_))
    ));
    let mut stale = admin.clone();
    stale.session.mfa_at = None;
    assert!(matches!(
        c.enable_support_access(&stale, &enable("ticket 7", Some(3)))
            .await,
        Err(ControlError::StepUpRequired(_))
    ));
    let first = c
        .enable_support_access(&admin, &enable("ticket 7: rotation stuck", Some(3)))
        .await
        .unwrap();
    assert!(first.active);
    assert!(first.expires_at.unwrap() > Utc::now() + Duration::days(2));
    // The support engineer sees metadata, never the secret.
    assert_eq!(c.list_vaults(&vendor).await.unwrap().len(), 1);
    assert_eq!(
        c.show_identity(&vendor, &identity.id).await.unwrap().name,
        "app"
    );
    assert!(matches!(
        c.reveal_identity(&vendor, &identity.id).await,
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        c.checkout_identity(&vendor, &identity.id, &checkout("look", 5))
            .await,
        Err(ControlError::Forbidden(_))
    ));
    // Disabling one ends it; disabling it again finds none in force.
    c.disable_support_access(&admin, &first.id).await.unwrap();
    assert!(c.list_vaults(&vendor).await.unwrap().is_empty());
    assert!(matches!(
        c.disable_support_access(&admin, &first.id).await,
        Err(ControlError::NotFound { .. })
    ));
    // Emergency: every period ends at once, without a step-up.
    c.enable_support_access(&admin, &enable("ticket 8", Some(30)))
        .await
        .unwrap();
    c.enable_support_access(&admin, &enable("ticket 9", None))
        .await
        .unwrap();
    assert_eq!(c.list_vaults(&vendor).await.unwrap().len(), 1);
    let ended = c
        .emergency_disable_support_access(
            &stale,
            &EmergencyDisableRequest {
                reason: "the vendor reported a breach".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ended.disabled, 2);
    assert!(c.list_vaults(&vendor).await.unwrap().is_empty());
    let listed = c.list_support_access(&admin).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|a| !a.active));
    assert_eq!(
        listed
            .iter()
            .filter(|a| a.disabled_how.as_deref() == Some("emergency"))
            .count(),
        2
    );
    let trail = actions(&*s.store).await;
    let emergency = trail
        .iter()
        .find(|(a, _)| a == "support_access.emergency_disabled")
        .unwrap();
    assert_eq!(emergency.1["severity"], "critical");
    assert_eq!(
        trail
            .iter()
            .filter(|(a, _)| a == "support_access.enabled")
            .count(),
        3
    );
}

both_stores!(links_a_crash_left_unqueued_are_queued_by_the_sweep);
async fn links_a_crash_left_unqueued_are_queued_by_the_sweep(db: TestDb) {
    use latch_control::store::vault::{HostLink, IdentityRecord};
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let h = support::enrolled_host(c, "crash1").await;
    let gone = support::enrolled_host(c, "crash2").await;
    let vault = c
        .create_vault(&admin, &vault_request("crash"))
        .await
        .unwrap();
    // A password identity whose links were recorded, then the process died before queueing.
    let seeded = c
        .create_identity(
            &admin,
            "crash",
            &identity_request("seed", Some("Crash-Secret-2026!"), &[]),
        )
        .await
        .unwrap();
    let mut identity: IdentityRecord = s.store.identity(&seeded.id).await.unwrap().unwrap();
    identity.id = "idn_crashed".into();
    identity.name = "crashed".into();
    identity.created_at = Utc::now() - Duration::minutes(5);
    identity.vault_id = vault.id.clone();
    identity.secret = None;
    let links = [
        HostLink {
            host_id: h.id.clone(),
            adopt_job_id: Some("11111111-1111-4111-8111-111111111111".into()),
            password_job_id: None,
        },
        HostLink {
            host_id: gone.id.clone(),
            adopt_job_id: Some("22222222-2222-4222-8222-222222222222".into()),
            password_job_id: None,
        },
    ];
    s.store
        .insert_identity(
            &identity,
            &links,
            None,
            AuditEvent::new("test", "crash"),
            Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
    c.remove_host(&support::admin(), &gone.id).await.unwrap();
    assert!(
        c.next_job(&h, StdDuration::ZERO).await.unwrap().is_none(),
        "nothing queued yet"
    );
    c.settle_rotations().await.unwrap();
    let job = c.next_job(&h, StdDuration::ZERO).await.unwrap().unwrap();
    assert_eq!(job.id, "11111111-1111-4111-8111-111111111111");
    let shown = c.show_identity(&admin, "idn_crashed").await.unwrap();
    assert_eq!(
        shown.hosts.len(),
        1,
        "a removed host is no linked host any more"
    );
    // Once queued, the sweep leaves it alone.
    c.settle_rotations().await.unwrap();
    assert!(
        s.store
            .undispatched_links(Utc::now())
            .await
            .unwrap()
            .is_empty()
    );
}

both_stores!(due_identities_are_rotated_by_the_schedule_unless_checked_out);
async fn due_identities_are_rotated_by_the_schedule_unless_checked_out(db: TestDb) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    c.create_vault(&admin, &vault_request("sched"))
        .await
        .unwrap();
    let request = |name: &str| CreateIdentityRequest {
        rotation_interval_days: Some(30),
        ..identity_request(name, Some("Scheduled-Secret-2026!"), &[])
    };
    let due = c
        .create_identity(&admin, "sched", &request("due"))
        .await
        .unwrap();
    let held = c
        .create_identity(&admin, "sched", &request("held"))
        .await
        .unwrap();
    let later = c
        .create_identity(&admin, "sched", &request("later"))
        .await
        .unwrap();
    assert!(later.next_rotation_at.unwrap() > Utc::now() + Duration::days(29));
    assert_eq!(
        c.rotate_due_identities().await.unwrap(),
        0,
        "nothing is due yet"
    );
    // Two come due; one of them is checked out.
    for id in [&due.id, &held.id] {
        let mut record = s.store.identity(id).await.unwrap().unwrap();
        record.next_rotation_at = Some(Utc::now() - Duration::minutes(1));
        s.store
            .update_identity(&record, None, AuditEvent::new("test", "due"), Utc::now())
            .await
            .unwrap()
            .unwrap();
    }
    let out = c
        .checkout_identity(&admin, &held.id, &checkout("in use", 30))
        .await
        .unwrap();
    assert_eq!(c.rotate_due_identities().await.unwrap(), 1);
    let rotations = c.list_rotations(&admin, &due.id).await.unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].trigger, "scheduled");
    assert_eq!(rotations[0].state, "confirmed");
    assert!(c.list_rotations(&admin, &held.id).await.unwrap().is_empty());
    let after = c.show_identity(&admin, &due.id).await.unwrap();
    assert!(after.next_rotation_at.unwrap() > Utc::now() + Duration::days(29));
    assert_ne!(
        c.reveal_identity(&admin, &due.id).await.unwrap().secret,
        "Scheduled-Secret-2026!"
    );
    assert_eq!(c.rotate_due_identities().await.unwrap(), 0, "once");
    // The one skipped while checked out rotates at its check-in.
    let back = c
        .checkin(&admin, &out.checkout.id, &CheckinRequest::default())
        .await
        .unwrap();
    let rotation = c
        .show_rotation(&admin, &back.rotation_id.expect("a rotation at check-in"))
        .await
        .unwrap();
    assert_eq!(rotation.trigger, "scheduled");
    assert_eq!(rotation.state, "confirmed");
}

both_stores!(rotations_are_serialized_per_identity_and_skip_removed_hosts);
async fn rotations_are_serialized_per_identity_and_skip_removed_hosts(db: TestDb) {
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let kept = support::enrolled_host(c, "ser1").await;
    let removed = support::enrolled_host(c, "ser2").await;
    c.create_vault(&admin, &vault_request("ser")).await.unwrap();
    let identity = c
        .create_identity(
            &admin,
            "ser",
            &identity_request("app", Some("Serial-Secret-2026!"), &["ser1", "ser2"]),
        )
        .await
        .unwrap();
    for h in [&kept, &removed] {
        answer(c, h, JobOutcome::confirmed()).await.unwrap();
        answer(c, h, JobOutcome::confirmed()).await.unwrap();
    }
    // A removed host is not part of later rotations.
    c.remove_host(&support::admin(), &removed.id).await.unwrap();
    // Two rotations at once: one supersedes the other, and on the host every job of the older
    // one comes before the newer one's.
    let generated = RotateRequest::default();
    let (a, b) = tokio::join!(
        c.rotate_identity(&admin, &identity.id, &generated),
        c.rotate_identity(&admin, &identity.id, &generated),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.hosts.len(), 1, "{a:?}");
    let mut hashes = Vec::new();
    while let Some(spec) = answer(c, &kept, JobOutcome::confirmed()).await {
        if let JobSpec::SetPassword { password_hash, .. } = spec {
            hashes.push(password_hash);
        }
    }
    c.settle_rotations().await.unwrap();
    let states = [
        c.show_rotation(&admin, &a.id).await.unwrap().state,
        c.show_rotation(&admin, &b.id).await.unwrap().state,
    ];
    assert!(states.contains(&"confirmed".to_owned()), "{states:?}");
    assert!(states.contains(&"failed".to_owned()), "{states:?}");
    let current = c
        .reveal_identity(&admin, &identity.id)
        .await
        .unwrap()
        .secret;
    let last = hashes.last().expect("set-password jobs");
    assert!(
        ShaCrypt::default()
            .verify_password(current.as_bytes(), last.as_str())
            .is_ok(),
        "the host's last password is the vault's"
    );
}

both_stores!(organizations_have_their_own_keys_and_break_glass_duration);
async fn organizations_have_their_own_keys_and_break_glass_duration(db: TestDb) {
    use latch_common::vault::{CreateOrganizationRequest, UpdateOrganizationRequest};
    let s = setup(&db, VaultConfig::default()).await;
    let c = &s.control;
    let admin = support::person(&*s.store, "ada", &[Role::PamAdmin]).await;
    let rex = support::person(&*s.store, "rex", &[Role::ResourceAdmin]).await;
    let acme = CreateOrganizationRequest {
        name: "acme".into(),
    };
    assert!(matches!(
        c.create_organization_from(&rex, &acme).await,
        Err(ControlError::Forbidden(_))
    ));
    let made = c.create_organization_from(&admin, &acme).await.unwrap();
    assert_eq!(made.break_glass_minutes, 60);
    assert!(made.break_glass_default);
    assert!(matches!(
        c.create_organization_from(&admin, &acme).await,
        Err(ControlError::AlreadyExists { .. })
    ));
    let vault = c
        .create_vault(
            &admin,
            &CreateVaultRequest {
                organization: Some("acme".into()),
                ..vault_request("acme-prod")
            },
        )
        .await
        .unwrap();
    assert_eq!(vault.organization, "acme");
    let identity = c
        .create_identity(
            &admin,
            "acme-prod",
            &identity_request("app", Some("Acme-Secret-2026!"), &[]),
        )
        .await
        .unwrap();
    // Sealed under acme's own data key: the default organization's does not open it.
    let orgs = s.store.organizations().await.unwrap();
    let acme_key = orgs.iter().find(|o| o.name == "acme").unwrap();
    let stored = s.store.identity(&identity.id).await.unwrap().unwrap();
    assert!(
        stored
            .secret
            .as_ref()
            .unwrap()
            .contains(&format!(":{}:", acme_key.data_key_id)),
        "sealed under acme's key"
    );
    for minutes in [1441] {
        assert!(matches!(
            c.update_organization(
                &admin,
                "acme",
                &UpdateOrganizationRequest {
                    break_glass_minutes: Some(minutes)
                }
            )
            .await,
            Err(ControlError::Invalid(_))
        ));
    }
    let updated = c
        .update_organization(
            &admin,
            "acme",
            &UpdateOrganizationRequest {
                break_glass_minutes: Some(5),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.break_glass_minutes, updated.break_glass_default),
        (5, false)
    );
    let glass = c
        .break_glass(
            &admin,
            &identity.id,
            &BreakGlassRequest {
                reason: "acme outage".into(),
            },
        )
        .await
        .unwrap();
    let lasts = glass.checkout.expires_at - glass.checkout.started_at;
    assert_eq!(lasts, Duration::minutes(5), "the organization's duration");
    let listed = c.list_organizations(&rex).await.unwrap();
    let names: Vec<(&str, u64)> = listed.iter().map(|o| (o.name.as_str(), o.vaults)).collect();
    assert_eq!(names, [("acme", 1), ("default", 0)]);
    let back = c
        .update_organization(
            &admin,
            "acme",
            &UpdateOrganizationRequest {
                break_glass_minutes: Some(0),
            },
        )
        .await
        .unwrap();
    assert!(back.break_glass_default);
    assert_eq!(back.break_glass_minutes, 60);
}
