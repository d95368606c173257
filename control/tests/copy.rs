//! Moving a control plane from SQLite to PostgreSQL (`latch-control copy-to-postgres`): every
//! row carries over unchanged, the stale SQLite database is refused afterwards, and the copy's
//! table list cannot fall behind either schema. These tests need both engines at once; without
//! PostgreSQL they skip (or fail with `LATCH_E2E=required`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use latch_common::api::ReportRequest;
use latch_common::api::{CreateEnrollTokenRequest, CreateJobRequest, EnrollRequest};
use latch_common::job::{JobKind, JobOutcome};
use latch_control::audit::AuditKey;
use latch_control::datadir::{self, DataDirError, Options};
use latch_control::store::copy::{Kind, TABLES};
use latch_control::store::{GrantFilter, JobFilter, Page, PgStore, SqliteStore, Store};
use latch_control::{Control, ControlConfig};
use sqlx::Row as _;
use support::TestDb;

const ALL: Page = Page {
    offset: 0,
    count: 10_000,
};

fn account(host: &str, user: &str, expires_in_ms: Option<u64>) -> CreateJobRequest {
    CreateJobRequest {
        host: host.into(),
        kind: Some(JobKind::CreateAccount),
        user: user.into(),
        expires_in_ms,
        ..CreateJobRequest::default()
    }
}

async fn open(dir: &std::path::Path, options: &Options) -> Control {
    let data = datadir::open(dir, options).await.unwrap();
    Control::new(data.store, ControlConfig::default(), data.signer)
        .with_key_dir(dir.to_owned(), data.next_signer)
}

/// Everything a store holds, as the library reads it.
#[derive(Debug, PartialEq)]
struct Contents {
    hosts: Vec<latch_control::store::HostRecord>,
    jobs: Vec<latch_control::store::JobRecord>,
    histories: Vec<Vec<latch_common::api::JobEvent>>,
    grants: Vec<latch_control::store::GrantRecord>,
    audit: Vec<latch_control::audit::AuditEntry>,
    pins: Vec<Option<String>>,
}

async fn contents(store: &dyn Store, now: chrono::DateTime<chrono::Utc>) -> Contents {
    let jobs = store.list_jobs(&JobFilter::default(), ALL).await.unwrap();
    let mut histories = Vec::new();
    for job in &jobs {
        histories.push(store.job_history(&job.id).await.unwrap());
    }
    let mut pins = Vec::new();
    for key in [
        latch_control::store::PinnedKey::Signing,
        latch_control::store::PinnedKey::Audit,
        latch_control::store::PinnedKey::Ca,
    ] {
        pins.push(store.key_pin(key).await.unwrap());
    }
    Contents {
        hosts: store.list_hosts(&Default::default(), ALL).await.unwrap(),
        grants: store
            .list_grants(&GrantFilter::default(), now, ALL)
            .await
            .unwrap(),
        jobs,
        histories,
        audit: store.audit_chain().await.unwrap(),
        pins,
    }
}

/// A control plane that ran on SQLite — hosts, confirmed, failed, pending and revoked jobs,
/// grants, an audit chain — copied to PostgreSQL: the same records, the same chain (verified),
/// the same credentials; new work continues the sequence numbers and job histories; the SQLite
/// database is refused from then on, and a second copy is refused too.
#[tokio::test]
async fn a_sqlite_control_plane_moves_to_postgres_with_everything() {
    let Some(db) =
        TestDb::postgres("a_sqlite_control_plane_moves_to_postgres_with_everything").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Options::default();
    let control = open(dir.path(), &sqlite).await;
    let mut credentials = Vec::new();
    for name in ["db1", "db2"] {
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
                facts: support::facts(name),
            })
            .await
            .unwrap();
        credentials.push(enrolled.credential);
    }
    let host = control.authenticate_host(&credentials[0]).await.unwrap();
    let deliver = async |outcome: JobOutcome| {
        let job = control
            .next_job(&host, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        control
            .report(
                &host,
                &job.id,
                &ReportRequest {
                    lease: job.lease,
                    outcome,
                },
            )
            .await
            .unwrap();
    };
    control
        .create_job(&support::admin(), account("db1", "alice", Some(60_000)))
        .await
        .unwrap();
    deliver(JobOutcome::confirmed()).await;
    control
        .create_job(&support::admin(), account("db1", "bob", None))
        .await
        .unwrap();
    deliver(JobOutcome::Failed {
        error: latch_common::job::JobError::new(
            latch_common::job::JobErrorCode::AccountExists,
            "bob exists",
        ),
    })
    .await;
    control
        .create_job(
            &support::admin(),
            CreateJobRequest {
                kind: Some(JobKind::DeleteAccount),
                ..account("db1", "alice", None)
            },
        )
        .await
        .unwrap();
    deliver(JobOutcome::confirmed()).await;
    control
        .create_job(&support::admin(), account("db1", "carol", Some(60_000)))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    drop(control);

    let key = Arc::new(
        AuditKey::load(&dir.path().join(datadir::AUDIT_KEY_FILE))
            .unwrap()
            .unwrap(),
    );
    let before = {
        let store = SqliteStore::open(&dir.path().join(datadir::DATABASE_FILE), key.clone())
            .await
            .unwrap();
        contents(&store, now).await
    };
    assert!(before.grants.iter().any(|g| g.job.revoked_at.is_some()));

    let url = match db.database() {
        datadir::Database::Postgres(url) => url,
        datadir::Database::Sqlite => unreachable!(),
    };
    let copied = datadir::copy_to_postgres(dir.path(), &url).await.unwrap();
    let audit_len = i64::try_from(before.audit.len()).unwrap();
    assert_eq!(copied.audit_head, Some(audit_len));
    assert!(copied.rows.contains(&("jobs", 4)), "{:?}", copied.rows);

    let after = contents(&PgStore::open(&url, key).await.unwrap(), now).await;
    assert_eq!(after, before, "the copy differs");

    // The same data directory serves from PostgreSQL: keys match their records, the chain
    // verifies, agents' credentials work, and new work follows on.
    let control = open(dir.path(), &db.options()).await;
    assert!(control.verify_audit().await.unwrap().ok);
    let host = control.authenticate_host(&credentials[0]).await.unwrap();
    control.authenticate_host(&credentials[1]).await.unwrap();
    let pending = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let next = control
        .create_job(&support::admin(), account("db1", "dave", None))
        .await
        .unwrap();
    assert_eq!(next.seq, 5, "sequence numbers go on");
    control
        .report(
            &host,
            &pending.id,
            &ReportRequest {
                lease: pending.lease,
                outcome: JobOutcome::confirmed(),
            },
        )
        .await
        .unwrap();
    let history = control
        .get_job(&support::admin(), &pending.id)
        .await
        .unwrap()
        .history;
    let events: Vec<&str> = history.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["queued", "delivered", "confirmed"]);
    assert!(control.verify_audit().await.unwrap().ok);
    drop(control);

    match datadir::open(dir.path(), &sqlite).await {
        Err(DataDirError::MovedToPostgres { .. }) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the stale SQLite database was opened"),
    }
    match datadir::copy_to_postgres(dir.path(), &url).await {
        Err(DataDirError::AlreadyCopied { .. }) => {}
        other => panic!("copied twice: {other:?}"),
    }
    std::fs::remove_file(dir.path().join(datadir::MOVED_FILE)).unwrap();
    match datadir::copy_to_postgres(dir.path(), &url).await {
        Err(DataDirError::Copy(error)) => {
            assert!(error.to_string().contains("already holds data"), "{error}")
        }
        other => panic!("copied into a database that holds data: {other:?}"),
    }
}

/// A data directory with an SQLite database, started on an empty PostgreSQL database, is refused
/// (it would start a second, empty control plane with the same keys).
#[tokio::test]
async fn an_uncopied_sqlite_database_is_not_left_behind_silently() {
    let Some(db) =
        TestDb::postgres("an_uncopied_sqlite_database_is_not_left_behind_silently").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), &Options::default()).await);
    match datadir::open(dir.path(), &db.options()).await {
        Err(error @ DataDirError::SqliteNotCopied { .. }) => {
            assert!(error.to_string().contains("copy-to-postgres"), "{error}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("started on an empty PostgreSQL next to an SQLite database"),
    }
}

/// The copy names every column of every table of both schemas, with the same kind: a migration
/// that adds a table or column to one engine only, or that the copy does not know, fails here.
#[tokio::test]
async fn the_copy_knows_every_column_of_both_schemas() {
    let Some(db) = TestDb::postgres("the_copy_knows_every_column_of_both_schemas").await else {
        return;
    };
    let expected: BTreeSet<(String, String, Kind)> = TABLES
        .iter()
        .flat_map(|t| {
            t.columns
                .iter()
                .map(|(c, k)| (t.name.to_owned(), (*c).to_owned(), *k))
        })
        .collect();

    let sqlite = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    sqlx::migrate!("./migrations/sqlite")
        .run(&sqlite)
        .await
        .unwrap();
    let mut found = BTreeSet::new();
    let tables = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name != '_sqlx_migrations'",
    )
    .fetch_all(&sqlite)
    .await
    .unwrap();
    for table in tables {
        let table: String = table.get(0);
        let columns = sqlx::query("SELECT name, type FROM pragma_table_info(?)")
            .bind(&table)
            .fetch_all(&sqlite)
            .await
            .unwrap();
        for column in columns {
            let kind = match column.get::<String, _>(1).as_str() {
                "INTEGER" => Kind::Int,
                "TEXT" => Kind::Text,
                other => panic!("{table}: unexpected SQLite type {other}"),
            };
            found.insert((table.clone(), column.get(0), kind));
        }
    }
    assert_eq!(found, expected, "SQLite's schema and the copy differ");

    let url = match db.database() {
        datadir::Database::Postgres(url) => url,
        datadir::Database::Sqlite => unreachable!(),
    };
    let store = PgStore::open(&url, Arc::new(AuditKey::generate().unwrap()))
        .await
        .unwrap();
    let columns = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name != '_sqlx_migrations'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let found: BTreeSet<(String, String, Kind)> = columns
        .iter()
        .map(|row| {
            let kind = match row.get::<String, _>(2).as_str() {
                "bigint" => Kind::Int,
                "text" => Kind::Text,
                other => panic!("unexpected PostgreSQL type {other}"),
            };
            (row.get(0), row.get(1), kind)
        })
        .collect();
    assert_eq!(found, expected, "PostgreSQL's schema and the copy differ");
}
