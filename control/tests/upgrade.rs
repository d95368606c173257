//! Upgrading an installation made before people and roles. The fixture in
//! `tests/fixtures/pre-people` was written by that release itself (commit 85d0637, schema 0008;
//! `make.py` there says how): two hosts, a confirmed, a failed and a pending job, and the old
//! `latch_admin_` token in `admin.token`. After the upgrade the hosts and jobs are all there, the
//! old token is an API key of the `pam_admin` service user `admin`, and the audit chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use latch_common::job::JobStatus;
use latch_control::client::AdminClient;
use latch_control::datadir::{self, Options};
use latch_control::{Control, ControlConfig};
use support::{Engine, TestDb};

/// The schema the fixture's PostgreSQL dump was taken from (renamed to the test's own).
const FIXTURE_SCHEMA: &str = "latch_fixture_pre_people";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pre-people")
}

/// Copies the fixture's files, 0600 as the control plane made them (git keeps no such modes).
fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Puts the old installation in place: its data directory, and for PostgreSQL its schema
/// loaded from the dump into the test's schema.
async fn old_installation(db: &TestDb, dir: &Path) {
    match db.engine {
        Engine::Sqlite => copy_dir(&fixture().join("sqlite-datadir"), dir),
        Engine::Postgres => {
            copy_dir(&fixture().join("postgres-datadir"), dir);
            let dump = std::fs::read_to_string(fixture().join("postgres.sql")).unwrap();
            let sql: String = dump
                .lines()
                .filter(|line| {
                    !line.starts_with("CREATE SCHEMA")
                        && !line.starts_with('\\')
                        && !line.contains("set_config('search_path'")
                })
                .map(|line| line.replace(&format!("{FIXTURE_SCHEMA}."), "") + "\n")
                .collect();
            let attacker = db.attacker(dir).await;
            attacker.exec(&sql).await;
            attacker.close().await;
        }
    }
    for file in ["admin.token", "audit.key", "signing.key"] {
        assert!(dir.join(file).exists(), "the fixture holds {file}");
    }
}

async fn serve(control: Control) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = latch_control::server::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(latch_control::server::run(
        Arc::new(control),
        listener,
        None,
        std::future::pending(),
    ));
    url
}

async fn an_old_installation_keeps_its_hosts_jobs_and_admin_token(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    old_installation(&db, dir.path()).await;
    let old_token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let old_token = old_token.trim().to_owned();
    assert!(old_token.starts_with("latch_admin_"));

    let options = Options {
        database: db.database(),
        ..Options::default()
    };
    let data = datadir::open(dir.path(), &options).await.unwrap();
    assert!(
        !data.admin_token_created,
        "the old token is kept, not replaced"
    );
    let store = data.store.clone();
    let control = Control::new(data.store, ControlConfig::default(), data.signer);
    let url = serve(control).await;

    // The old token still works, now as the pam_admin service user `admin`.
    let client = AdminClient::new(&url, &old_token, None).unwrap();
    let me = client.whoami().await.unwrap();
    assert_eq!((me.name.as_str(), me.kind.as_str()), ("admin", "service"));
    assert_eq!(me.roles, ["pam_admin"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim(),
        old_token,
        "admin.token is unchanged"
    );

    // Its hosts and jobs are all there, in the states the old release left them in.
    let mut hosts: Vec<String> = client
        .list_hosts(None)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.facts.hostname)
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["db-01", "web-01"]);
    let jobs = client.list_jobs(None, None, None).await.unwrap();
    let mut states: Vec<(String, String, JobStatus)> = jobs
        .iter()
        .map(|j| {
            let user = j.params["user"].as_str().unwrap_or_default().to_owned();
            (j.host_name.clone(), user, j.status)
        })
        .collect();
    states.sort_by(|a, b| (&a.0, &a.1, a.2.as_str()).cmp(&(&b.0, &b.1, b.2.as_str())));
    assert_eq!(
        states,
        [
            ("db-01".to_owned(), "alice".to_owned(), JobStatus::Confirmed),
            ("db-01".to_owned(), "alice".to_owned(), JobStatus::Failed),
            ("web-01".to_owned(), "bob".to_owned(), JobStatus::Pending),
        ]
    );
    let failed = jobs.iter().find(|j| j.status == JobStatus::Failed).unwrap();
    assert_eq!(
        failed.error.as_ref().unwrap().code.as_str(),
        "no_such_group"
    );

    // The migration is in the audit trail, and the chain (old entries and new) verifies.
    let migrated = client
        .list_audit(None, None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "admin_token.migrated")
        .count();
    assert_eq!(migrated, 1);
    let report = client.verify_audit().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // A second start changes nothing more: still one migration, the same key.
    drop(store);
    let data = datadir::open(dir.path(), &options).await.unwrap();
    let control = Control::new(data.store, ControlConfig::default(), data.signer);
    let url = serve(control).await;
    let client = AdminClient::new(&url, &old_token, None).unwrap();
    assert_eq!(client.whoami().await.unwrap().roles, ["pam_admin"]);
    let migrations = client
        .list_audit(None, None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "admin_token.migrated")
        .count();
    assert_eq!(migrations, 1, "the token is migrated once");
}
both_stores!(an_old_installation_keeps_its_hosts_jobs_and_admin_token);
