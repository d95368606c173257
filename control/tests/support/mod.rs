//! Every library test runs on both stores. [`both_stores!`] builds a test written once twice,
//! as `NAME::sqlite` and `NAME::postgres`; the test gets a fresh [`TestDb`]: an in-memory
//! (or data-directory) SQLite database, or a PostgreSQL schema of its own —
//! `latch_test_<time>_<random>`, reached through the connection's `search_path` and dropped at
//! the end — so tests run in parallel on one PostgreSQL.
//!
//! PostgreSQL is `LATCH_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! When it cannot be reached the PostgreSQL half of each test is skipped with a message, or
//! fails with `LATCH_E2E=required` (CI).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use latch_control::audit::AuditKey;
use latch_control::datadir::{Database, Options};
use latch_control::store::{PgStore, SqliteStore, Store};
use sqlx::{Connection as _, Row as _};

/// The PostgreSQL the tests use unless `LATCH_TEST_DATABASE_URL` names another.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Schemas left behind by a test that was killed are dropped once they are this old.
const STALE_SCHEMA_SECONDS: u64 = 3600;

/// Builds the test `async fn NAME(db: TestDb)` once per store, as `NAME::sqlite` and
/// `NAME::postgres` (`both_stores!(NAME, multi_thread)` for a multi-threaded runtime). A test
/// function left out is dead code, which the lints refuse.
#[allow(unused_macros)]
macro_rules! both_stores {
    ($name:ident) => {
        both_stores!(@ $name, tokio::test);
    };
    ($name:ident, multi_thread) => {
        both_stores!(@ $name, tokio::test(flavor = "multi_thread", worker_threads = 4));
    };
    (@ $name:ident, $($test:tt)*) => {
        mod $name {
            #[$($test)*]
            async fn sqlite() {
                super::$name(crate::support::TestDb::sqlite()).await
            }
            #[$($test)*]
            async fn postgres() {
                if let Some(db) = crate::support::TestDb::postgres(stringify!($name)).await {
                    super::$name(db).await
                }
            }
        }
    };
}

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// One test's database.
pub struct TestDb {
    /// The store.
    pub engine: Engine,
    /// PostgreSQL: the URL of the test's schema.
    url: Option<String>,
    /// PostgreSQL: the server and the schema (dropped at the end).
    schema: Option<(String, String)>,
}

fn admin_url() -> String {
    std::env::var("LATCH_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `url` with the connection option `-c search_path=SCHEMA`, its connections named after the
/// schema (`application_name`), so the end of the test can find them.
pub fn schema_url(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}&application_name={schema}")
}

impl TestDb {
    /// SQLite: in memory for [`TestDb::store`], `latch.db` in the data directory otherwise.
    pub fn sqlite() -> TestDb {
        TestDb {
            engine: Engine::Sqlite,
            url: None,
            schema: None,
        }
    }

    /// A fresh PostgreSQL schema, or `None` (skip) when PostgreSQL cannot be reached and
    /// `LATCH_E2E` is not `required`.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let admin = admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(error) => {
                let required = std::env::var("LATCH_E2E").is_ok_and(|v| v == "required");
                let why = format!(
                    "{test}::postgres: cannot reach PostgreSQL at {admin} ({error}); start it or set LATCH_TEST_DATABASE_URL"
                );
                assert!(!required, "{why} (LATCH_E2E=required)");
                eprintln!("SKIPPED {why}; LATCH_E2E=required makes this a failure");
                return None;
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        drop_stale_schemas(&mut conn, now).await;
        let schema = format!("latch_test_{now}_{:016x}", fastrand::u64(..));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .expect("create the test schema");
        conn.close().await.ok();
        Some(TestDb {
            engine: Engine::Postgres,
            url: Some(schema_url(&admin, &schema)),
            schema: Some((admin, schema)),
        })
    }

    /// PostgreSQL: the URL of the test's schema (`None` for SQLite).
    #[allow(dead_code)]
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// PostgreSQL: every row of every table of the test's schema as text, one per line.
    #[allow(dead_code)]
    pub async fn dump_all_text(&self) -> String {
        let url = self.url.as_deref().expect("a PostgreSQL test database");
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query(
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("name"))
        .collect();
        assert!(tables.len() > 10, "only {tables:?}");
        let mut dump = String::new();
        for table in tables {
            let sql = format!("SELECT t::text AS row FROM \"{table}\" t");
            for row in sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await
                .unwrap()
            {
                dump.push_str(&row.get::<String, _>("row"));
                dump.push('\n');
            }
        }
        dump
    }

    /// Another fresh database on the same engine.
    pub async fn another(&self) -> TestDb {
        match self.engine {
            Engine::Sqlite => TestDb::sqlite(),
            Engine::Postgres => TestDb::postgres("another")
                .await
                .expect("PostgreSQL was reachable a moment ago"),
        }
    }

    /// Where [`latch_control::datadir::open`] keeps the database.
    pub fn database(&self) -> Database {
        match &self.url {
            None => Database::Sqlite,
            Some(url) => Database::Postgres(url.clone()),
        }
    }

    /// Data-directory options with this database.
    pub fn options(&self) -> Options {
        Options {
            database: self.database(),
            ..Options::default()
        }
    }

    /// A store without a data directory, with a random audit key.
    pub async fn store(&self) -> Arc<dyn Store> {
        match &self.url {
            None => Arc::new(SqliteStore::open_in_memory().await.unwrap()),
            Some(url) => Arc::new(
                PgStore::open(url, Arc::new(AuditKey::generate().unwrap()))
                    .await
                    .unwrap(),
            ),
        }
    }

    /// `n` stores on this database, as `n` control-plane processes would open it (one audit
    /// key, a connection pool each). SQLite serves one process: its `n` are one store.
    pub async fn replicas(&self, n: usize) -> Vec<Arc<dyn Store>> {
        match &self.url {
            None => {
                let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
                vec![store; n]
            }
            Some(url) => {
                let key = Arc::new(AuditKey::generate().unwrap());
                let mut stores: Vec<Arc<dyn Store>> = Vec::new();
                for _ in 0..n {
                    let options = PgStore::options(url).unwrap();
                    stores.push(Arc::new(
                        PgStore::connect(options, 8, key.clone()).await.unwrap(),
                    ));
                }
                stores
            }
        }
    }

    /// A raw connection to the database of the data directory `dir`, as anyone with write
    /// access to the database has.
    pub async fn attacker(&self, dir: &Path) -> Attacker {
        match &self.url {
            None => Attacker::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(
                        sqlx::sqlite::SqliteConnectOptions::new()
                            .filename(dir.join(latch_control::datadir::DATABASE_FILE)),
                    )
                    .await
                    .unwrap(),
            ),
            Some(url) => Attacker::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// Drops the schemas of earlier runs that were killed before they could clean up.
async fn drop_stale_schemas(conn: &mut sqlx::PgConnection, now: u64) {
    let Ok(rows) = sqlx::query(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'latch\\_test\\_%' \
         OR nspname LIKE 'latch\\_e2e\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let born = name
            .split('_')
            .nth(2)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(now);
        if born + STALE_SCHEMA_SECONDS < now {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE"
            )))
            .execute(&mut *conn)
            .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, schema)) = self.schema.take() else {
            return;
        };
        // Dropped from a thread of its own with its own runtime: this runs inside the test's
        // runtime, which is blocked meanwhile — so connections of the test still open (a pool
        // whose closing would need that runtime, a transaction left open by a failed step) are
        // ended first; they would hold locks the drop waits for. Should it fail anyway, a later
        // run removes the schema.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = '{schema}' AND pid <> pg_backend_pid(); \
                     SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop the test schema (a later run will): {error}");
        }
    }
}

/// A raw connection to a test's database.
pub enum Attacker {
    /// The SQLite file.
    Sqlite(sqlx::SqlitePool),
    /// The PostgreSQL schema.
    Postgres(sqlx::PgPool),
}

/// An audit entry's columns, as an attacker reads them.
pub struct RawEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub host_id: Option<String>,
    pub job_id: Option<String>,
    pub detail: String,
    pub prev_hash: String,
}

impl Attacker {
    /// Runs SQL (several statements allowed) that both engines understand.
    pub async fn exec(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Attacker::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
            Attacker::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Drops one of the audit tables' append-only triggers (`audit_log_no_update`, …).
    pub async fn drop_trigger(&self, name: &str) {
        match self {
            Attacker::Sqlite(_) => self.exec(&format!("DROP TRIGGER {name}")).await,
            Attacker::Postgres(_) => {
                let table = trigger_table(name);
                self.exec(&format!("DROP TRIGGER {name} ON {table}")).await
            }
        }
    }

    /// Puts an append-only trigger (`audit_macs_no_delete`, …) back.
    pub async fn restore_trigger(&self, name: &str) {
        let table = trigger_table(name);
        let event = if name.ends_with("_no_delete") {
            "DELETE"
        } else {
            "UPDATE"
        };
        match self {
            Attacker::Sqlite(_) => {
                self.exec(&format!(
                    "CREATE TRIGGER {name} BEFORE {event} ON {table} \
                     BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
                ))
                .await
            }
            Attacker::Postgres(_) => {
                self.exec(&format!(
                    "CREATE TRIGGER {name} BEFORE {event} ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION latch_append_only()"
                ))
                .await
            }
        }
    }

    /// Audit entries from `id` on, in order.
    pub async fn entries_from(&self, id: i64) -> Vec<RawEntry> {
        macro_rules! read {
            ($pool:expr, $sql:literal) => {
                sqlx::query($sql)
                    .bind(id)
                    .fetch_all($pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| RawEntry {
                        id: row.get("id"),
                        at: row.get("at"),
                        actor: row.get("actor"),
                        action: row.get("action"),
                        host_id: row.get("host_id"),
                        job_id: row.get("job_id"),
                        detail: row.get("detail"),
                        prev_hash: row.get("prev_hash"),
                    })
                    .collect()
            };
        }
        match self {
            Attacker::Sqlite(pool) => read!(
                pool,
                "SELECT id, at, actor, action, host_id, job_id, detail, prev_hash FROM audit_log \
                 WHERE id >= ? ORDER BY id"
            ),
            Attacker::Postgres(pool) => read!(
                pool,
                "SELECT id, at, actor, action, host_id, job_id, detail, prev_hash FROM audit_log \
                 WHERE id >= $1 ORDER BY id"
            ),
        }
    }

    /// Rewrites entry `id`'s detail and links.
    pub async fn update_entry(&self, id: i64, detail: &str, prev_hash: &str, hash: &str) {
        match self {
            Attacker::Sqlite(pool) => {
                sqlx::query("UPDATE audit_log SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?")
                    .bind(detail)
                    .bind(prev_hash)
                    .bind(hash)
                    .bind(id)
                    .execute(pool)
                    .await
                    .map(drop)
            }
            Attacker::Postgres(pool) => sqlx::query(
                "UPDATE audit_log SET detail = $1, prev_hash = $2, hash = $3 WHERE id = $4",
            )
            .bind(detail)
            .bind(prev_hash)
            .bind(hash)
            .bind(id)
            .execute(pool)
            .await
            .map(drop),
        }
        .unwrap();
    }

    /// Records `public` as the signing key, as a database restored from a backup would.
    pub async fn set_signing_pin(&self, public: &str) {
        match self {
            Attacker::Sqlite(pool) => {
                sqlx::query("UPDATE key_pins SET public = ? WHERE name = 'signing'")
                    .bind(public)
                    .execute(pool)
                    .await
                    .map(drop)
            }
            Attacker::Postgres(pool) => {
                sqlx::query("UPDATE key_pins SET public = $1 WHERE name = 'signing'")
                    .bind(public)
                    .execute(pool)
                    .await
                    .map(drop)
            }
        }
        .unwrap();
    }

    /// Closes the connection.
    pub async fn close(self) {
        match self {
            Attacker::Sqlite(pool) => pool.close().await,
            Attacker::Postgres(pool) => pool.close().await,
        }
    }
}

fn trigger_table(name: &str) -> &'static str {
    if name.starts_with("audit_macs") {
        "audit_macs"
    } else {
        "audit_log"
    }
}

/// A `pam_admin` caller for library calls (the library trusts its in-process callers; the HTTP
/// API authenticates before it builds one).
pub fn admin() -> latch_control::people::Authority {
    use latch_control::store::people::{
        PrincipalKind, PrincipalRecord, SessionKind, SessionRecord,
    };
    let now = chrono::Utc::now();
    latch_control::people::Authority::new(
        PrincipalRecord {
            id: "svc_test_admin".into(),
            kind: PrincipalKind::Service,
            name: "test-admin".into(),
            display_name: "test admin".into(),
            email: None,
            idp: None,
            password_hash: None,
            disabled_at: None,
            created_at: now,
            last_seen_at: None,
        },
        SessionRecord {
            id: "ses_test_admin".into(),
            principal_id: "svc_test_admin".into(),
            kind: SessionKind::Service,
            api_key_id: None,
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            revoked_at: None,
            mfa_at: None,
            address: None,
        },
        vec![(latch_common::authz::Role::PamAdmin, None)],
    )
}

/// `(action, detail)` of every audit entry, oldest first.
#[allow(dead_code)]
pub async fn audit_actions(store: &dyn Store) -> Vec<(String, serde_json::Value)> {
    store
        .audit_chain()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, serde_json::from_str(&e.detail).unwrap()))
        .collect()
}

/// A test host's facts.
#[allow(dead_code)]
pub fn facts(hostname: &str) -> latch_common::api::HostFacts {
    latch_common::api::HostFacts {
        hostname: hostname.into(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1.0".into(),
        arch: "x86_64".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        machine_id: "0123456789abcdef0123456789abcdef".into(),
    }
}

/// A host enrolled with a single-use token, as its agent sees itself.
#[allow(dead_code)]
pub async fn enrolled_host(
    control: &latch_control::Control,
    hostname: &str,
) -> latch_control::store::HostRecord {
    let token = control
        .create_enroll_token(
            &admin(),
            &latch_common::api::CreateEnrollTokenRequest {
                ttl_seconds: Some(60),
                uses: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let enrolled = control
        .enroll(&latch_common::api::EnrollRequest {
            token: token.token,
            facts: facts(hostname),
        })
        .await
        .unwrap();
    control
        .authenticate_host(&enrolled.credential)
        .await
        .unwrap()
}

/// A stored user (made if missing) with `roles`, signed in with a second factor shown just now.
#[allow(dead_code)]
pub async fn person(
    store: &dyn Store,
    name: &str,
    roles: &[latch_common::authz::Role],
) -> latch_control::people::Authority {
    use latch_control::store::people::{
        PrincipalKind, PrincipalRecord, SessionKind, SessionRecord,
    };
    let now = chrono::Utc::now();
    let principal = PrincipalRecord {
        id: format!("usr_{name}"),
        kind: PrincipalKind::User,
        name: name.into(),
        display_name: name.into(),
        email: None,
        idp: None,
        password_hash: None,
        disabled_at: None,
        created_at: now,
        last_seen_at: None,
    };
    if store.principal(&principal.id).await.unwrap().is_none() {
        store
            .insert_principal(
                &principal,
                latch_control::audit::AuditEvent::new("test", "user.create"),
                now,
            )
            .await
            .unwrap()
            .unwrap();
    }
    latch_control::people::Authority::new(
        principal,
        SessionRecord {
            id: format!("ses_{name}"),
            principal_id: format!("usr_{name}"),
            kind: SessionKind::Local,
            api_key_id: None,
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            revoked_at: None,
            mfa_at: Some(now),
            address: None,
        },
        roles.iter().map(|r| (*r, None)).collect(),
    )
}

/// The routes `mod.rs` declares: `METHOD PATH` for every `.route("PATH", METHOD(…).METHOD(…))`.
pub fn declared_routes(source: &str) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    let mut rest = source;
    while let Some(start) = rest.find(".route(") {
        let after = &rest[start + ".route(".len()..];
        // The call's text: up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &after[..end.expect("a .route( call is closed")];
        let open = call.find('"').expect("a route's path is a string literal");
        let close = open + 1 + call[open + 1..].find('"').expect("the path literal ends");
        let path = &call[open + 1..close];
        let handlers = &call[close + 1..];
        let mut methods = Vec::new();
        for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
            let needle = format!("{method}(");
            let mut from = 0;
            while let Some(at) = handlers[from..].find(&needle) {
                let at = from + at;
                let before = handlers[..at].chars().next_back();
                // A method router (`get(` or `.get(`), not part of a longer name (`list_get(`,
                // `handlers::get(`).
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    methods.push(method.to_uppercase());
                }
                from = at + needle.len();
            }
        }
        assert!(
            !methods.is_empty(),
            "cannot find the method of the route {path:?} in mod.rs: {call}"
        );
        for method in methods {
            routes.insert(format!("{method} {path}"));
        }
        rest = &after[end.unwrap_or(0)..];
    }
    routes
}
