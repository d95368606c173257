//! Upgrades: a database written by an earlier release, opened by today's code, keeps its data;
//! migrations are versioned and forward only.
//!
//! - `tests/fixtures/pre-people` was written by the release before people and roles (commit
//!   85d0637, schema 0008; `make.py` there says how): two hosts, a confirmed, a failed and a
//!   pending job, and the old `latch_admin_` token in `admin.token`. After the upgrade the hosts
//!   and jobs are all there, the old token is an API key of the `pam_admin` service user `admin`,
//!   and the audit chain verifies.
//! - `tests/fixtures/release-0.1` was written by release 0.1.0 (commit a56ea5c, schema 0017),
//!   driven over its API with something in every table family (its `make.py` lists them; what
//!   each run made is in `sqlite.json` / `postgres.json`). After the upgrade people sign in with
//!   their passwords and TOTP, the service user's API key works, the vault's secret opens, the
//!   hosts, jobs, access requests, webhooks and checkouts are as 0.1 left them, the audit chain
//!   verifies against 0.1's own checkpoint, and a second start changes nothing.
//! - The migrations 0.1 shipped (`release-0.1/migrations.sha256`) are unchanged, each engine's
//!   are numbered without gaps, and a database a newer release migrated is refused at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use latch_common::api::GrantState;
use latch_common::job::JobStatus;
use latch_common::people::LocalLoginRequest;
use latch_common::webhooks::DeliveryStatus;
use latch_control::client::{AdminClient, ClientError};
use latch_control::datadir::{self, DataDirError, Options};
use latch_control::store::StoreError;
use latch_control::{Control, ControlConfig};
use sqlx::Row as _;
use support::{Attacker, Engine, TestDb};

/// An earlier release's installation, kept in `tests/fixtures/NAME`.
struct Fixture {
    /// The folder under `tests/fixtures`.
    name: &'static str,
    /// The schema its PostgreSQL dump was taken from (renamed to the test's own).
    schema: &'static str,
    /// The data directory's files the test expects.
    files: &'static [&'static str],
}

const PRE_PEOPLE: Fixture = Fixture {
    name: "pre-people",
    schema: "latch_fixture_pre_people",
    files: &["admin.token", "audit.key", "signing.key"],
};

const RELEASE_0_1: Fixture = Fixture {
    name: "release-0.1",
    schema: "latch_fixture_release_0_1",
    files: &[
        "admin.token",
        "audit.key",
        "audit.head",
        "signing.key",
        "master.key",
        "user_ca.key",
    ],
};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Fixture {
    fn dir(&self) -> PathBuf {
        repository().join("tests/fixtures").join(self.name)
    }

    /// Puts the old installation in `dir`: its data directory, and for PostgreSQL its schema
    /// loaded from the dump into the test's schema.
    async fn install(&self, db: &TestDb, dir: &Path) {
        match db.engine {
            Engine::Sqlite => copy_dir(&self.dir().join("sqlite-datadir"), dir),
            Engine::Postgres => {
                copy_dir(&self.dir().join("postgres-datadir"), dir);
                let dump = std::fs::read_to_string(self.dir().join("postgres.sql")).unwrap();
                let sql: String = dump
                    .lines()
                    .filter(|line| {
                        !line.starts_with("CREATE SCHEMA")
                            && !line.starts_with('\\')
                            && !line.contains("set_config('search_path'")
                    })
                    .map(|line| line.replace(&format!("{}.", self.schema), "") + "\n")
                    .collect();
                let attacker = db.attacker(dir).await;
                attacker.exec(&sql).await;
                attacker.close().await;
            }
        }
        for file in self.files {
            assert!(dir.join(file).exists(), "the fixture holds {file}");
        }
    }
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
    PRE_PEOPLE.install(&db, dir.path()).await;
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

/// The passwords, the vault secret and the TOTP secret `release-0.1/make.py` used.
const PASSWORDS: [(&str, &str); 3] = [
    ("alice", "fixture alice password 0.1"),
    ("bob", "fixture bob password 0.1"),
    ("mark", "fixture mark password 0.1"),
];
const VAULT_SECRET: &str = "Fixture-app-db-secret-0.1!";

/// A migration file's version and name (`0012_vaults.sql` → 12).
fn migrations(engine: &str) -> BTreeMap<i64, String> {
    let dir = repository().join("control/migrations").join(engine);
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let version = name
                .split_once('_')
                .and_then(|(number, rest)| {
                    (number.len() == 4 && rest.ends_with(".sql")).then_some(number)
                })
                .and_then(|number| number.parse().ok())
                .unwrap_or_else(|| panic!("{engine}/{name}: name it NNNN_what.sql"));
            (version, name)
        })
        .collect()
}

fn engine_dir(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => "sqlite",
        Engine::Postgres => "postgres",
    }
}

/// The migrations recorded in the database (version, when applied), as anyone with access
/// to it reads them, and the number of audit entries.
async fn database_state(db: &TestDb, dir: &Path) -> (Vec<(i64, String)>, i64) {
    let attacker = db.attacker(dir).await;
    let migrations = "SELECT version, CAST(installed_on AS TEXT) AS at FROM _sqlx_migrations \
                      WHERE success ORDER BY version";
    let audit = "SELECT COUNT(*) AS n FROM audit_log";
    // The same statements on either engine's pool.
    macro_rules! read {
        ($pool:expr) => {
            (
                sqlx::query(migrations)
                    .fetch_all($pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get("version"), r.get("at")))
                    .collect(),
                sqlx::query(audit).fetch_one($pool).await.unwrap().get("n"),
            )
        };
    }
    let state = match &attacker {
        Attacker::Sqlite(pool) => read!(pool),
        Attacker::Postgres(pool) => read!(pool),
    };
    attacker.close().await;
    state
}

/// Serves the API alone — not the periodic sweeps, which would move time-bound states on
/// (windows and pending requests of the fixture ended long ago) before the test looks.
async fn serve_api(control: Arc<Control>) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = latch_control::api::router(control);
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    url
}

/// The control plane as `latch-control serve` builds it from the data directory.
async fn open_control(dir: &Path, options: &Options) -> Arc<Control> {
    let data = datadir::open(dir, options).await.unwrap();
    assert!(!data.admin_token_created, "the admin token is kept");
    Arc::new(
        Control::new(data.store, ControlConfig::default(), data.signer)
            .with_key_dir(dir.to_path_buf(), data.next_signer)
            .with_master_key(data.master_key.clone())
            .with_user_ca(data.user_ca),
    )
}

async fn sign_in(url: &str, name: &str, password: &str) -> Result<AdminClient, ClientError> {
    let anonymous = AdminClient::new(url, "", None).unwrap();
    let request = LocalLoginRequest {
        name: name.to_owned(),
        password: password.to_owned(),
    };
    let session = anonymous.login_local(&request).await?;
    Ok(AdminClient::new(url, &session.token, None).unwrap())
}

fn sorted(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut items: Vec<String> = items.into_iter().collect();
    items.sort();
    items
}

async fn release_0_1_keeps_its_data(db: TestDb) {
    let engine = engine_dir(db.engine);
    let made: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(RELEASE_0_1.dir().join(format!("{engine}.json"))).unwrap(),
    )
    .unwrap();
    let text = |path: &str| -> String {
        made.pointer(path)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("{engine}.json has no {path}"))
            .to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    RELEASE_0_1.install(&db, dir.path()).await;
    let (before, _) = database_state(&db, dir.path()).await;
    let released: Vec<i64> = before.iter().map(|(v, _)| *v).collect();
    assert_eq!(released.last(), Some(&17), "0.1 is at migration 0017");

    // Today's code opens it: the migrations 0.1 lacks are applied, and only those.
    let options = Options {
        database: db.database(),
        ..Options::default()
    };
    let control = open_control(dir.path(), &options).await;
    let (after, _) = database_state(&db, dir.path()).await;
    let today: Vec<i64> = migrations(engine).into_keys().collect();
    assert_eq!(after.iter().map(|(v, _)| *v).collect::<Vec<_>>(), today);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "0.1's migrations stay as applied"
    );
    let url = serve_api(control.clone()).await;

    // The bootstrap admin's API key (admin.token) and the service user's key still work.
    let admin_key = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    assert_eq!(admin_key.trim(), text("/admin_key"));
    let admin = AdminClient::new(&url, admin_key.trim(), None).unwrap();
    assert_eq!(admin.whoami().await.unwrap().roles, ["pam_admin"]);
    let ci = AdminClient::new(&url, &text("/ci_key"), None).unwrap();
    let me = ci.whoami().await.unwrap();
    assert_eq!(
        (me.name.as_str(), me.kind.as_str(), me.roles.as_slice()),
        ("ci-deploy", "service", &["resource_admin".to_owned()][..])
    );

    // People sign in with their passwords (and not with a wrong one); groups and roles stay.
    for (name, password) in PASSWORDS {
        let session = sign_in(&url, name, password).await.unwrap();
        assert_eq!(session.whoami().await.unwrap().name, name);
        match sign_in(&url, name, "not the password").await {
            Err(ClientError::Api { status: 401, .. }) => {}
            Err(other) => panic!("{name} with a wrong password: {other}"),
            Ok(_) => panic!("{name} signed in with a wrong password"),
        }
    }
    assert_eq!(
        admin.show_group("dbas").await.unwrap().members,
        ["alice", "bob"]
    );
    assert_eq!(
        admin.show_group("managers").await.unwrap().members,
        ["mark"]
    );
    let mark_roles = admin.show_user("mark").await.unwrap().roles;
    assert_eq!(sorted(mark_roles), ["pam_admin", "security_admin"]);
    let bindings = admin.list_role_bindings().await.unwrap();
    let delegated = serde_json::to_value(&bindings).unwrap();
    assert!(
        delegated
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["role"] == "delegated_resource_admin" && b["selector"] == "team=db"),
        "{delegated}"
    );

    // Hosts: labels, the SSH CA choice, a removed host gone; their credentials still work.
    let hosts: BTreeMap<String, (bool, String)> = admin
        .list_hosts(None)
        .await
        .unwrap()
        .into_iter()
        .map(|h| {
            let labels = serde_json::to_string(&h.labels).unwrap();
            (h.facts.hostname, (h.ssh_ca, labels))
        })
        .collect();
    let expected: BTreeMap<String, (bool, String)> = [
        ("app-01", false, r#"{"env":"prod","team":"db"}"#),
        ("ca-01", true, r#"{"env":"prod"}"#),
        ("db-01", false, r#"{"env":"prod","team":"db"}"#),
        ("web-01", false, r#"{"env":"prod","team":"web"}"#),
    ]
    .into_iter()
    .map(|(name, ca, labels)| (name.to_owned(), (ca, labels.to_owned())))
    .collect();
    assert_eq!(hosts, expected);
    let http = reqwest::Client::new();
    for (host, works) in [("db-01", true), ("ca-01", true), ("gone-01", false)] {
        let answer = http
            .get(format!("{url}/v1/agent/self"))
            .bearer_auth(text(&format!("/credentials/{host}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().is_success(), works, "{host}: {answer:?}");
    }

    // Jobs in the states 0.1 left them in: (status, error code, grant state, deliveries).
    let jobs = [
        (
            "confirmed",
            JobStatus::Confirmed,
            None,
            Some(GrantState::Active),
            1,
        ),
        ("failed", JobStatus::Failed, Some("no_such_group"), None, 1),
        ("delivered", JobStatus::Pending, None, None, 1),
        ("pending", JobStatus::Pending, None, None, 0),
        (
            "cancelled",
            JobStatus::Failed,
            Some("host_removed"),
            None,
            0,
        ),
        (
            "expired_grant",
            JobStatus::Confirmed,
            None,
            Some(GrantState::Revoked),
            1,
        ),
    ];
    for (name, status, error, grant, attempts) in jobs {
        let job = admin
            .show_job(&text(&format!("/jobs/{name}")))
            .await
            .unwrap();
        let code = job.error.as_ref().map(|e| e.code.as_str());
        assert_eq!(
            (job.status, code, job.grant_state, job.attempts),
            (status, error, grant, attempts),
            "job {name}"
        );
    }

    // mark: TOTP still opens his step-up; the vault's secret decrypts to what was stored.
    let mark = sign_in(&url, "mark", PASSWORDS[2].1).await.unwrap();
    let code = latch_control::mfa::code_at(&text("/totp_secret"), chrono::Utc::now()).unwrap();
    mark.verify_totp(&code).await.unwrap();
    let app_db = text("/identities/app-db");
    assert_eq!(
        mark.reveal_identity(&app_db).await.unwrap().secret,
        VAULT_SECRET
    );
    let vaults = admin.list_vaults().await.unwrap();
    assert_eq!(
        sorted(vaults.into_iter().map(|v| v.name)),
        ["acme-ops", "prod-db"]
    );
    let organizations = admin.list_organizations().await.unwrap();
    assert_eq!(
        sorted(organizations.into_iter().map(|o| o.name)),
        ["acme", "default"]
    );
    assert_eq!(admin.list_vault_grants("prod-db").await.unwrap().len(), 2);
    let open = admin.list_checkouts(&app_db).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, text("/checkout"));
    assert!(open[0].checked_in_at.is_none(), "0.1 left it checked out");
    let dbadmin = text("/identities/dbadmin@db-01");
    let glass = admin.list_checkouts(&dbadmin).await.unwrap();
    assert!(glass.len() == 1 && glass[0].break_glass && glass[0].checked_in_at.is_some());
    let rotations = admin.list_rotations(&dbadmin).await.unwrap();
    assert_eq!(
        sorted(
            rotations
                .into_iter()
                .map(|r| format!("{} {}", r.trigger, r.state))
        ),
        ["break_glass confirmed", "manual confirmed"]
    );
    let support = admin.list_support_access().await.unwrap();
    assert_eq!(support.len(), 1);
    assert_eq!(support[0].reason, "FIX-4: vendor ticket");

    // Access: the policy and every request, in the state 0.1 left it in.
    assert_eq!(admin.list_policies().await.unwrap()[0].name, "dba-prod");
    let states: BTreeMap<String, String> = mark
        .list_access_requests(false, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    let expected: BTreeMap<String, String> = made["requests"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(state, id)| (id.as_str().unwrap().to_owned(), state.clone()))
        .collect();
    assert_eq!(states, expected);
    let show = |name: &str| {
        let id = text(&format!("/requests/{name}"));
        let mark = &mark;
        async move { mark.show_access_request(&id).await.unwrap() }
    };
    let active = show("active").await;
    assert_eq!(active.account.as_deref(), Some("alice"));
    assert_eq!(active.hosts[0].state, "active");
    let revoked = show("revoked").await;
    assert!(revoked.certificate.is_some(), "its certificate is kept");

    // Webhooks: both, one's deliveries done, the other's still retried.
    let hooks = admin.list_webhooks().await.unwrap();
    assert_eq!(hooks.len(), 2);
    let answered = admin
        .list_webhook_deliveries(&text("/webhooks/answered"))
        .await
        .unwrap();
    assert!(!answered.is_empty());
    assert!(
        answered
            .iter()
            .all(|d| d.status == DeliveryStatus::Delivered)
    );
    let silent = admin
        .list_webhook_deliveries(&text("/webhooks/silent"))
        .await
        .unwrap();
    assert!(
        silent
            .iter()
            .any(|d| d.status == DeliveryStatus::Pending && d.attempts > 0)
    );

    // The audit chain verifies, also against the checkpoint 0.1 exported.
    let report = admin
        .verify_audit_with(&[made["checkpoint"].clone()])
        .await
        .unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // Today's sweeps take the old rows on: an undecided request past its deadline expires, a
    // window that is over starts its revocation (the fixture's are, unless it was just made).
    let deadlines = [
        (
            "pending_approval",
            show("pending_approval").await.pending_until.unwrap(),
            "expired",
        ),
        ("active", show("active").await.ends_at.unwrap(), "revoking"),
    ];
    control.sweep_abandoned_jobs().await.unwrap();
    control.revoke_expired_grants().await.unwrap();
    control.settle_rotations().await.unwrap();
    control.expire_pending_requests().await.unwrap();
    control.advance_access_requests().await.unwrap();
    for (name, deadline, then) in deadlines {
        if deadline < chrono::Utc::now() {
            assert_eq!(show(name).await.state, then, "request {name}");
        }
    }
    let report = admin.verify_audit().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // A second start is a no-op: no migration, no audit entry, the same keys.
    drop(control);
    let key_files = || -> Vec<Vec<u8>> {
        RELEASE_0_1
            .files
            .iter()
            .filter(|f| **f != "audit.head")
            .map(|f| std::fs::read(dir.path().join(f)).unwrap())
            .collect()
    };
    let keys = key_files();
    let first = database_state(&db, dir.path()).await;
    let control = open_control(dir.path(), &options).await;
    assert_eq!(database_state(&db, dir.path()).await, first);
    let again = key_files();
    assert!(keys == again, "the keys and the admin token are unchanged");
    let url = serve_api(control).await;
    let admin = AdminClient::new(&url, admin_key.trim(), None).unwrap();
    assert_eq!(admin.verify_audit().await.unwrap()["ok"], true);
}
both_stores!(release_0_1_keeps_its_data);

/// sha256 of a file, in hex.
fn sha256(path: &Path) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &std::fs::read(path).unwrap(),
    ))
}

/// A released migration may never change: every file 0.1 shipped is still there, byte for
/// byte, and no file was added among them (a change goes in a new, higher-numbered file).
#[test]
fn released_migrations_are_unchanged() {
    let manifest = std::fs::read_to_string(RELEASE_0_1.dir().join("migrations.sha256")).unwrap();
    let mut shipped: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for line in manifest.lines() {
        let (hash, file) = line.split_once("  ").unwrap();
        let path = repository().join("control/migrations").join(file);
        assert!(
            path.exists(),
            "{file} shipped in 0.1 and is gone; restore it"
        );
        assert_eq!(
            sha256(&path),
            hash,
            "{file} shipped in 0.1 and was edited: restore it and put the change in a new migration"
        );
        let (engine, name) = file.split_once('/').unwrap();
        shipped.entry(engine).or_default().insert(name.to_owned());
    }
    for engine in ["sqlite", "postgres"] {
        let released = &shipped[engine];
        let newest_released = released.iter().max().unwrap().clone();
        for name in migrations(engine).into_values() {
            assert!(
                name > newest_released || released.contains(&name),
                "{engine}/{name} is numbered among 0.1's migrations but did not ship in it: give it the next free number"
            );
        }
    }
}

/// Both engines' migrations are numbered without gaps (SQLite from 0001, PostgreSQL from its
/// first, 0008, which made the schema SQLite had then) and end at the same number, each change
/// under the same number and name on both.
#[test]
fn migrations_are_numbered_without_gaps_on_both_engines() {
    let sqlite = migrations("sqlite");
    let postgres = migrations("postgres");
    for (engine, files) in [("sqlite", &sqlite), ("postgres", &postgres)] {
        let first = *files.keys().next().unwrap();
        for (expected, (version, name)) in (first..).zip(files) {
            assert_eq!(
                *version, expected,
                "{engine}/{name}: migration {expected} is missing"
            );
        }
    }
    assert_eq!(sqlite.keys().next(), Some(&1));
    assert_eq!(postgres.keys().next(), Some(&8));
    assert_eq!(
        sqlite.keys().last(),
        postgres.keys().last(),
        "each migration needs its counterpart on the other engine"
    );
    for (version, name) in postgres.iter().skip(1) {
        assert_eq!(
            &sqlite[version], name,
            "migration {version} differs between the engines"
        );
    }
}

/// A database a newer release migrated — a migration this binary does not carry — is refused
/// at start, naming both versions and the fix, and left as it was.
async fn a_database_from_a_newer_release_is_refused(db: TestDb) {
    let engine = engine_dir(db.engine);
    let newest = *migrations(engine).keys().last().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = db.options();
    drop(datadir::open(dir.path(), &options).await.unwrap());
    let checksum = match db.engine {
        Engine::Sqlite => "X'00'",
        Engine::Postgres => "'\\x00'::bytea",
    };
    let attacker = db.attacker(dir.path()).await;
    attacker
        .exec(&format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({}, 'from a newer release', TRUE, {checksum}, 0)",
            newest + 1
        ))
        .await;
    attacker.close().await;
    let before = database_state(&db, dir.path()).await;

    let refused = datadir::open(dir.path(), &options).await.err().unwrap();
    match &refused {
        DataDirError::Store(StoreError::SchemaNewer { database, binary }) => {
            assert_eq!((*database, *binary), (newest + 1, newest));
        }
        other => panic!("not refused as newer: {other}"),
    }
    let message = refused.to_string();
    for part in [
        format!("migration {}", newest + 1),
        format!("migration {newest}"),
        "upgrade latch-control".to_owned(),
    ] {
        assert!(message.contains(&part), "{message}");
    }
    assert_eq!(database_state(&db, dir.path()).await, before);

    // The server says so and stops.
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_latch-control"));
    serve
        .args([
            "serve",
            "--insecure-http",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("LATCH_DATABASE_URL")
        .kill_on_drop(true);
    if let Some(url) = db.url() {
        serve.env("LATCH_DATABASE_URL", url);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), serve.output())
        .await
        .expect("the server stops by itself")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("upgrade latch-control"), "{stderr}");
    assert_eq!(database_state(&db, dir.path()).await, before);
}
both_stores!(a_database_from_a_newer_release_is_refused);
