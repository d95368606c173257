//! The keyed audit chain and its checkpoints (finding 8), and keys made once and refused when
//! lost (finding 9), through the library on a real data directory. The attacker writes the
//! database file directly, as anyone with write access to it could.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::path::Path;

use latch_common::api::CreateEnrollTokenRequest;
use latch_control::audit::{AuditEntry, Checkpoint, entry_hash};
use latch_control::datadir::{self, DataDirError, Options};
use latch_control::signing::JobSigner;
use latch_control::store::Page;
use latch_control::{Control, ControlConfig};
use support::{Attacker, TestDb};

async fn open_with(db: &TestDb, dir: &Path, options: Options) -> Result<Control, DataDirError> {
    let options = Options {
        database: db.database(),
        ..options
    };
    let data = datadir::open(dir, &options).await?;
    Ok(
        Control::new(data.store, ControlConfig::default(), data.signer)
            .with_key_dir(dir.to_owned(), data.next_signer),
    )
}

async fn open(db: &TestDb, dir: &Path) -> Control {
    open_with(db, dir, Options::default()).await.unwrap()
}

/// `n` audited actions.
async fn activity(control: &Control, n: usize) {
    for _ in 0..n {
        control
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
    }
}

/// Rewrites entry `id`'s detail and re-hashes it and every later entry with plain SHA-256 —
/// what someone without the audit key can do. Ids, links and hashes are consistent afterwards.
async fn rewrite_and_rehash(attacker: &Attacker, id: i64, detail: &str) {
    attacker.drop_trigger("audit_log_no_update").await;
    let rows = attacker.entries_from(id).await;
    let mut prev = rows[0].prev_hash.clone();
    for row in rows {
        let detail = if row.id == id {
            detail.to_owned()
        } else {
            row.detail.clone()
        };
        let hash = entry_hash(
            row.id,
            row.at,
            &row.actor,
            &row.action,
            row.host_id.as_deref(),
            row.job_id.as_deref(),
            &detail,
            &prev,
        );
        attacker.update_entry(row.id, &detail, &prev, &hash).await;
        prev = hash;
    }
}

async fn entries(control: &Control) -> Vec<AuditEntry> {
    control
        .list_audit(
            &Default::default(),
            Page {
                offset: 0,
                count: 10_000,
            },
        )
        .await
        .unwrap()
}

async fn finding_8_an_intact_chain_verifies_with_the_recorded_head_and_a_checkpoint(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    activity(&control, 5).await;
    let head = control.refresh_audit_head().await.unwrap().unwrap();
    assert!(dir.path().join(datadir::AUDIT_HEAD_FILE).exists());
    assert_eq!(
        control.refresh_audit_head().await.unwrap(),
        None,
        "unchanged"
    );
    let checkpoint = control.audit_checkpoint().await.unwrap();
    assert_eq!((checkpoint.id, &checkpoint.hash), (head.id, &head.hash));
    activity(&control, 2).await;
    let report = control
        .verify_audit_with(std::slice::from_ref(&checkpoint))
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(
        report.checkpoints.len(),
        2,
        "audit.head and the supplied one"
    );
    assert!(report.checkpoints.iter().all(|c| c.ok));
    assert!(entries(&control).await.iter().all(|e| e.mac.is_some()));
    // The chain survives a restart with the same keys.
    drop(control);
    let again = open(&db, dir.path()).await;
    assert!(again.verify_audit_with(&[checkpoint]).await.unwrap().ok);
}
both_stores!(finding_8_an_intact_chain_verifies_with_the_recorded_head_and_a_checkpoint);

async fn finding_8_an_entry_rewritten_and_rehashed_without_the_key_is_detected(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    activity(&control, 6).await;
    let target = entries(&control).await[4].id;
    let attacker = db.attacker(dir.path()).await;
    rewrite_and_rehash(&attacker, target, r#"{"ttl_seconds":1,"uses":1}"#).await;

    // Every link and hash is consistent again: only the MAC can tell.
    let report = control.verify_audit().await.unwrap();
    assert!(!report.ok);
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.id, target, "{bad:?}");
    assert!(bad.reason.contains("MAC"), "{}", bad.reason);
    // Nor can the attacker launder it by deleting the MACs: entries without one are refused,
    // and a restart does not key them again.
    attacker.drop_trigger("audit_macs_no_delete").await;
    attacker
        .exec("DELETE FROM audit_macs; DELETE FROM key_pins;")
        .await;
    drop(control);
    let restarted = open(&db, dir.path()).await;
    let report = restarted.verify_audit().await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad.unwrap().id, 1, "no entry has a MAC now");
}
both_stores!(finding_8_an_entry_rewritten_and_rehashed_without_the_key_is_detected);

async fn finding_8_a_deleted_tail_is_detected_against_the_recorded_head(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    activity(&control, 6).await;
    let head = control.refresh_audit_head().await.unwrap().unwrap();
    let attacker = db.attacker(dir.path()).await;
    attacker.drop_trigger("audit_log_no_delete").await;
    attacker.drop_trigger("audit_macs_no_delete").await;
    attacker
        .exec(&format!(
            "DELETE FROM audit_macs WHERE entry_id > {0}; DELETE FROM audit_log WHERE id > {0};",
            head.id - 3
        ))
        .await;

    let report = control.verify_audit().await.unwrap();
    assert!(!report.ok, "{report:#?}");
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.id, head.id - 2);
    assert!(
        bad.reason.contains("removed from the end"),
        "{}",
        bad.reason
    );
    assert_eq!(report.checkpoints[0].source, "audit.head");

    // New entries after the cut do not cover it up: the server refuses to move the recorded
    // head (once), keeps the file, and verification still fails — also after a restart.
    activity(&control, 5).await;
    assert!(control.refresh_audit_head().await.is_err());
    assert_eq!(
        control.refresh_audit_head().await.unwrap(),
        None,
        "reported once"
    );
    let kept: Checkpoint =
        serde_json::from_slice(&std::fs::read(dir.path().join(datadir::AUDIT_HEAD_FILE)).unwrap())
            .unwrap();
    assert_eq!(kept, head);
    assert!(!control.verify_audit().await.unwrap().ok);
    assert!(
        control.audit_checkpoint().await.is_err(),
        "no checkpoint of a broken chain"
    );
    drop(control);
    assert!(!open(&db, dir.path()).await.verify_audit().await.unwrap().ok);
}
both_stores!(finding_8_a_deleted_tail_is_detected_against_the_recorded_head);

async fn finding_8_an_exported_checkpoint_reveals_a_truncated_tail(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    activity(&control, 4).await;
    let checkpoint = control.audit_checkpoint().await.unwrap();
    activity(&control, 2).await;
    let attacker = db.attacker(dir.path()).await;
    attacker.drop_trigger("audit_log_no_delete").await;
    attacker.drop_trigger("audit_macs_no_delete").await;
    attacker
        .exec(&format!(
            "DELETE FROM audit_macs WHERE entry_id >= {0}; DELETE FROM audit_log WHERE id >= {0};",
            checkpoint.id - 1
        ))
        .await;
    // Even without the server's own head (say it was lost with the machine), the checkpoint
    // kept outside shows the cut.
    std::fs::remove_file(dir.path().join(datadir::AUDIT_HEAD_FILE)).unwrap();
    drop(control);
    let control = open(&db, dir.path()).await;
    assert!(
        control.verify_audit().await.unwrap().ok,
        "the remaining chain is valid on its own"
    );
    let report = control
        .verify_audit_with(std::slice::from_ref(&checkpoint))
        .await
        .unwrap();
    assert!(!report.ok);
    let problem = report.checkpoints[0].problem.clone().unwrap();
    assert!(
        problem.reason.contains("removed from the end"),
        "{}",
        problem.reason
    );

    // A checkpoint edited to match the shorter chain no longer verifies.
    let entries = entries(&control).await;
    let mut forged = checkpoint.clone();
    forged.id = entries.last().unwrap().id;
    forged.hash = entries.last().unwrap().hash.clone();
    let report = control.verify_audit_with(&[forged]).await.unwrap();
    assert!(!report.ok);
    assert!(
        report.first_bad.unwrap().reason.contains("signature"),
        "an edited checkpoint is refused"
    );
}
both_stores!(finding_8_an_exported_checkpoint_reveals_a_truncated_tail);

/// Turns a data directory into one written before audit keys existed: no MACs, no key records,
/// no audit.key.
async fn make_legacy(db: &TestDb, dir: &Path) {
    let attacker = db.attacker(dir).await;
    attacker.drop_trigger("audit_macs_no_delete").await;
    attacker
        .exec("DELETE FROM audit_macs; DELETE FROM key_pins;")
        .await;
    attacker.restore_trigger("audit_macs_no_delete").await;
    attacker.close().await;
    std::fs::remove_file(dir.join(datadir::AUDIT_KEY_FILE)).unwrap();
    let _ = std::fs::remove_file(dir.join(datadir::AUDIT_HEAD_FILE));
}

async fn an_upgraded_chain_is_keyed_once_after_its_hash_chain_is_checked(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    activity(&control, 4).await;
    let before = entries(&control).await.len() as i64;
    drop(control);
    make_legacy(&db, dir.path()).await;

    let control = open(&db, dir.path()).await;
    let report = control.verify_audit().await.unwrap();
    assert!(report.ok, "{report:#?}");
    let all = entries(&control).await;
    let keyed = all
        .iter()
        .find(|e| e.action == "audit.keyed" && e.id > before)
        .unwrap();
    let detail: serde_json::Value = serde_json::from_str(&keyed.detail).unwrap();
    assert_eq!(detail["keyed_afterwards_through"], before);
    assert!(detail["reason"].as_str().unwrap().starts_with("upgrade"));
    assert!(
        all.iter().any(|e| e.action == "signing_key.recorded"),
        "the existing signing key is recorded, not replaced"
    );
}
both_stores!(an_upgraded_chain_is_keyed_once_after_its_hash_chain_is_checked);

async fn an_upgraded_chain_that_was_already_broken_is_not_laundered(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    activity(&control, 5).await;
    drop(control);
    make_legacy(&db, dir.path()).await;
    let attacker = db.attacker(dir.path()).await;
    attacker.drop_trigger("audit_log_no_update").await;
    attacker
        .exec("UPDATE audit_log SET detail = '{}' WHERE id = 3;")
        .await;
    let control = open(&db, dir.path()).await;
    let report = control.verify_audit().await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad.unwrap().id, 3);
}
both_stores!(an_upgraded_chain_that_was_already_broken_is_not_laundered);

async fn finding_9_a_missing_signing_key_is_refused_not_made_again(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    let original = control.signing_key();
    drop(control);
    let key_file = dir.path().join(datadir::SIGNING_KEY_FILE);
    let saved = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();

    let refused = open_with(&db, dir.path(), Options::default())
        .await
        .err()
        .expect("a missing signing key must stop the start");
    let message = refused.to_string();
    for needed in [
        "signing.key is missing",
        &original,
        "Restore",
        "--new-signing-key",
    ] {
        assert!(message.contains(needed), "{needed:?} not in: {message}");
    }
    assert!(!key_file.exists(), "no key was made");

    // Restored from backup: it starts with the same key.
    std::fs::write(&key_file, &saved).unwrap();
    assert_eq!(open(&db, dir.path()).await.signing_key(), original);

    // Lost for good: the explicit flag makes a new key, and says so in the audit log.
    std::fs::remove_file(&key_file).unwrap();
    let replaced = open_with(
        &db,
        dir.path(),
        Options {
            new_signing_key: true,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    assert_ne!(replaced.signing_key(), original);
    let entry = entries(&replaced)
        .await
        .into_iter()
        .find(|e| e.action == "signing_key.replaced")
        .unwrap();
    assert!(entry.detail.contains(&original) && entry.detail.contains(&replaced.signing_key()));
    assert!(replaced.verify_audit().await.unwrap().ok);
    drop(replaced);
    assert!(open_with(&db, dir.path(), Options::default()).await.is_ok());
}
both_stores!(finding_9_a_missing_signing_key_is_refused_not_made_again);

async fn finding_9_a_different_signing_key_is_refused(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&db, dir.path()).await);
    let key_file = dir.path().join(datadir::SIGNING_KEY_FILE);
    std::fs::remove_file(&key_file).unwrap();
    let stranger = JobSigner::create(&key_file).unwrap();
    let message = open_with(&db, dir.path(), Options::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("not the key this data directory was initialised with")
            && message.contains(&stranger.public_key()),
        "{message}"
    );
}
both_stores!(finding_9_a_different_signing_key_is_refused);

async fn finding_9_a_database_initialised_before_key_records_refuses_a_missing_signing_key(
    db: TestDb,
) {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&db, dir.path()).await);
    make_legacy(&db, dir.path()).await;
    std::fs::remove_file(dir.path().join(datadir::SIGNING_KEY_FILE)).unwrap();
    let message = open_with(&db, dir.path(), Options::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("predates key records") && message.contains("--new-signing-key"),
        "{message}"
    );
}
both_stores!(finding_9_a_database_initialised_before_key_records_refuses_a_missing_signing_key);

async fn finding_9_a_missing_audit_key_is_refused_and_replacing_it_rekeys_the_chain(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    activity(&control, 3).await;
    let old_checkpoint = control.audit_checkpoint().await.unwrap();
    drop(control);
    std::fs::remove_file(dir.path().join(datadir::AUDIT_KEY_FILE)).unwrap();
    let message = open_with(&db, dir.path(), Options::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("audit.key is missing") && message.contains("--new-audit-key"),
        "{message}"
    );
    assert!(!dir.path().join(datadir::AUDIT_KEY_FILE).exists());

    let control = open_with(
        &db,
        dir.path(),
        Options {
            new_audit_key: true,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let report = control.verify_audit().await.unwrap();
    // The head recorded under the old key no longer verifies; the chain itself does.
    assert!(report.checkpoints.iter().all(|c| !c.ok));
    assert_eq!(report.first_bad.unwrap().id, old_checkpoint.id);
    std::fs::remove_file(dir.path().join(datadir::AUDIT_HEAD_FILE)).unwrap();
    assert!(control.verify_audit().await.unwrap().ok);
    assert!(
        entries(&control)
            .await
            .iter()
            .any(|e| e.action == "audit.keyed" && e.detail.contains("--new-audit-key"))
    );
    drop(control);
    assert!(open_with(&db, dir.path(), Options::default()).await.is_ok());
}
both_stores!(finding_9_a_missing_audit_key_is_refused_and_replacing_it_rekeys_the_chain);

async fn finding_9_a_missing_ca_is_refused_not_made_again(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let data = datadir::open(dir.path(), &db.options()).await.unwrap();
    let first = data.private_ca(&[]).await.unwrap().ca_fingerprint;
    assert_eq!(data.private_ca(&[]).await.unwrap().ca_fingerprint, first);
    drop(data);
    for file in [datadir::CA_CERT_FILE, datadir::CA_KEY_FILE] {
        std::fs::remove_file(dir.path().join(file)).unwrap();
    }
    let data = datadir::open(dir.path(), &db.options()).await.unwrap();
    let message = data.private_ca(&[]).await.err().unwrap().to_string();
    assert!(
        message.contains("ca.crt is missing")
            && message.contains(&first)
            && message.contains("--new-ca"),
        "{message}"
    );
    assert!(!dir.path().join(datadir::CA_CERT_FILE).exists());
    drop(data);
    let data = datadir::open(
        dir.path(),
        &Options {
            new_ca: true,
            ..db.options()
        },
    )
    .await
    .unwrap();
    assert_ne!(data.private_ca(&[]).await.unwrap().ca_fingerprint, first);
}
both_stores!(finding_9_a_missing_ca_is_refused_not_made_again);

/// Files to put in the data directory: name and content.
type Files<'a> = &'a [(&'a str, &'a [u8])];

async fn finding_9_signing_key_promotion_survives_a_crash_at_every_step(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let control = open(&db, dir.path()).await;
    let old = control.signing_key();
    let next = control
        .start_key_rotation(&support::admin())
        .await
        .unwrap()
        .next_key;
    control
        .promote_signing_key(&support::admin(), true)
        .await
        .unwrap();
    assert_eq!(control.signing_key(), next);
    drop(control);
    let path = |name: &str| dir.path().join(name);
    let public = |name: &str| {
        JobSigner::load(&path(name))
            .unwrap()
            .map(|k| k.public_key())
    };
    assert_eq!(
        public(datadir::SIGNING_KEY_FILE).as_deref(),
        Some(next.as_str())
    );
    assert_eq!(public(datadir::OLD_KEY_FILE).as_deref(), Some(old.as_str()));
    assert_eq!(public(datadir::NEXT_KEY_FILE), None);
    let done = std::fs::read(path(datadir::SIGNING_KEY_FILE)).unwrap();
    let previous = std::fs::read(path(datadir::OLD_KEY_FILE)).unwrap();

    // The database records the new key first; then the files switch in three steps. Rebuild
    // the files as a crash after each step leaves them, and restart.
    let crashes: [(&str, Files); 3] = [
        (
            "recorded, files untouched (no older key kept)",
            &[
                (datadir::SIGNING_KEY_FILE, &previous),
                (datadir::NEXT_KEY_FILE, &done),
            ],
        ),
        (
            "recorded, current key linked to a temporary name",
            &[
                (datadir::SIGNING_KEY_FILE, &previous),
                (datadir::NEXT_KEY_FILE, &done),
                ("signing.key.old.tmp", &previous),
            ],
        ),
        (
            "recorded, previous key kept, next not yet renamed",
            &[
                (datadir::SIGNING_KEY_FILE, &previous),
                (datadir::NEXT_KEY_FILE, &done),
                (datadir::OLD_KEY_FILE, &previous),
            ],
        ),
    ];
    for (step, files) in crashes {
        for name in [
            datadir::SIGNING_KEY_FILE,
            datadir::NEXT_KEY_FILE,
            datadir::OLD_KEY_FILE,
            "signing.key.old.tmp",
        ] {
            let _ = std::fs::remove_file(path(name));
        }
        for (name, bytes) in files {
            std::fs::write(path(name), bytes).unwrap();
        }
        let control = open_with(&db, dir.path(), Options::default())
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        assert_eq!(control.signing_key(), next, "{step}");
        assert_eq!(
            public(datadir::SIGNING_KEY_FILE).as_deref(),
            Some(next.as_str()),
            "{step}"
        );
        assert_eq!(
            public(datadir::OLD_KEY_FILE).as_deref(),
            Some(old.as_str()),
            "{step}"
        );
        assert_eq!(public(datadir::NEXT_KEY_FILE), None, "{step}");
        assert!(!path("signing.key.old.tmp").exists(), "{step}");
    }

    // A database restored from before the promotion records the old key: the files are newer
    // (the old key is the kept one), so the server follows them instead of refusing to start.
    let attacker = db.attacker(dir.path()).await;
    attacker.set_signing_pin(&old).await;
    attacker.close().await;
    let control = open(&db, dir.path()).await;
    assert_eq!(control.signing_key(), next);
    assert!(
        entries(&control)
            .await
            .iter()
            .any(|e| e.action == "signing_key.recorded" && e.detail.contains(&old))
    );
    drop(control);

    // A crash before the record: the rotation is simply still under way.
    let control = open(&db, dir.path()).await;
    let third = control
        .start_key_rotation(&support::admin())
        .await
        .unwrap()
        .next_key;
    drop(control);
    let control = open(&db, dir.path()).await;
    assert_eq!(control.signing_key(), next);
    assert_eq!(
        public(datadir::NEXT_KEY_FILE).as_deref(),
        Some(third.as_str())
    );
}
both_stores!(finding_9_signing_key_promotion_survives_a_crash_at_every_step);

async fn a_control_plane_without_a_data_directory_keeps_its_head_in_memory(db: TestDb) {
    let control = Control::new(
        db.store().await,
        ControlConfig::default(),
        JobSigner::generate().unwrap(),
    );
    let within = std::time::Duration::from_secs(5);
    activity(&control, 3).await;
    let head = tokio::time::timeout(within, control.refresh_audit_head())
        .await
        .expect("refresh must not block")
        .unwrap()
        .unwrap();
    activity(&control, 1).await;
    let checkpoint = tokio::time::timeout(within, control.audit_checkpoint())
        .await
        .expect("a checkpoint must not block")
        .unwrap();
    assert_eq!(checkpoint.id, head.id + 1);
    let report = control.verify_audit().await.unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(
        report.checkpoints[0].id, checkpoint.id,
        "the head in memory"
    );
}
both_stores!(a_control_plane_without_a_data_directory_keeps_its_head_in_memory);
