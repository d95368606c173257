//! The database of a test control plane. `LATCH_TEST_STORE` chooses it for the whole run:
//! `sqlite` (the default: `latch.db` in the data directory) or `postgres` — a schema of its own
//! per control plane (`latch_e2e_<time>_<pid>_<n>`) on `LATCH_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped when the last user of it ends, so tests
//! run in parallel. With `postgres`, a PostgreSQL that cannot be reached fails the test.
//!
//! Tests that play an attacker with write access to the database go through
//! [`TestDatabase::sql`] and friends: `sqlite3` on the file, or `psql` on the schema.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::{Ran, run};

/// The PostgreSQL the tests use unless `LATCH_TEST_DATABASE_URL` names another.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Schemas of killed runs are dropped once they are this old.
const STALE_SCHEMA_SECONDS: u64 = 3600;

/// Where a test control plane keeps its database.
#[derive(Debug)]
pub enum TestDatabase {
    /// SQLite, `latch.db` in the data directory.
    Sqlite,
    /// PostgreSQL: a schema of its own.
    Postgres {
        /// The server (without a schema).
        admin_url: String,
        /// The schema.
        schema: String,
        /// The URL the control plane uses (`options=-c search_path=SCHEMA`).
        url: String,
    },
}

static SCHEMAS: AtomicU32 = AtomicU32::new(0);

impl TestDatabase {
    /// The database `LATCH_TEST_STORE` asks for (a new PostgreSQL schema each time).
    pub fn from_env() -> TestDatabase {
        match std::env::var("LATCH_TEST_STORE").as_deref() {
            Err(_) | Ok("" | "sqlite") => TestDatabase::Sqlite,
            Ok("postgres" | "postgresql") => TestDatabase::postgres(),
            Ok(other) => panic!("LATCH_TEST_STORE={other}: use sqlite or postgres"),
        }
    }

    /// A new, empty PostgreSQL schema.
    pub fn postgres() -> TestDatabase {
        let admin_url = std::env::var("LATCH_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let schema = format!(
            "latch_e2e_{now}_{}_{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::Relaxed)
        );
        let created = psql(
            &admin_url,
            &format!(
                "{}; CREATE SCHEMA {schema}",
                drop_stale_schemas(now.saturating_sub(STALE_SCHEMA_SECONDS))
            ),
        );
        assert_eq!(
            created.code, 0,
            "LATCH_TEST_STORE=postgres, but a schema cannot be made on {admin_url}: {} — is PostgreSQL running (pg_ctlcluster … start), and LATCH_TEST_DATABASE_URL right?",
            created.stderr
        );
        // Percent-encoded the way libpq (psql) reads it too: `%20`, not `+`, for the space.
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options=-c%20search_path%3D{schema}");
        TestDatabase::Postgres {
            admin_url,
            schema,
            url,
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, TestDatabase::Postgres { .. })
    }

    /// Points a `latch-control serve` command at this database (through `LATCH_DATABASE_URL`,
    /// which keeps it out of argv; removed for SQLite so an outer one cannot leak in).
    pub fn configure<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        match self {
            TestDatabase::Sqlite => command.env_remove("LATCH_DATABASE_URL"),
            TestDatabase::Postgres { url, .. } => command.env("LATCH_DATABASE_URL", url),
        }
    }

    /// Runs SQL (several statements allowed) as someone with write access to the database:
    /// `sqlite3` on `data_dir/latch.db`, or `psql` in the schema.
    pub fn try_sql(&self, data_dir: &Path, sql: &str) -> Ran {
        match self {
            TestDatabase::Sqlite => run(
                Command::new("sqlite3")
                    .args(["-cmd", ".timeout 5000"])
                    .arg(data_dir.join("latch.db"))
                    .arg(sql),
                None,
            ),
            TestDatabase::Postgres { url, .. } => psql(url, sql),
        }
    }

    /// [`TestDatabase::try_sql`], asserting success; returns the output (`|` between columns,
    /// one row a line, NULL as nothing — the same from both tools).
    pub fn sql(&self, data_dir: &Path, sql: &str) -> String {
        let ran = self.try_sql(data_dir, sql);
        assert_eq!(ran.code, 0, "{sql}: {}", ran.stderr);
        ran.stdout
    }

    /// A query's rows as JSON objects.
    pub fn rows(&self, data_dir: &Path, sql: &str) -> Vec<Value> {
        let text = match self {
            TestDatabase::Sqlite => {
                let out = Command::new("sqlite3")
                    .args(["-json", "-cmd", ".timeout 5000"])
                    .arg(data_dir.join("latch.db"))
                    .arg(sql)
                    .output()
                    .expect("sqlite3");
                assert!(out.status.success(), "sqlite3 {sql}: {out:?}");
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            TestDatabase::Postgres { .. } => self.sql(
                data_dir,
                &format!("SELECT coalesce(json_agg(r), '[]') FROM ({sql}) AS r"),
            ),
        };
        if text.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str(&text).expect("rows as JSON")
    }

    /// Drops one of the audit tables' append-only triggers (`audit_log_no_update`, …).
    pub fn drop_trigger(&self, data_dir: &Path, name: &str) {
        let sql = match self {
            TestDatabase::Sqlite => format!("DROP TRIGGER {name}"),
            TestDatabase::Postgres { .. } => {
                let table = if name.starts_with("audit_macs") {
                    "audit_macs"
                } else {
                    "audit_log"
                };
                format!("DROP TRIGGER {name} ON {table}")
            }
        };
        self.sql(data_dir, &sql);
    }

    /// An SQL expression giving `column` as a literal to put back with `UPDATE … SET column =`.
    pub fn quote(&self, column: &str) -> String {
        match self {
            TestDatabase::Sqlite => format!("quote({column})"),
            TestDatabase::Postgres { .. } => format!("quote_nullable({column})"),
        }
    }

    /// Everything stored, as text (to look for what must never be stored).
    pub fn dump(&self, data_dir: &Path) -> String {
        match self {
            TestDatabase::Sqlite => String::from_utf8_lossy(
                &std::fs::read(data_dir.join("latch.db")).unwrap_or_default(),
            )
            .into_owned(),
            TestDatabase::Postgres { url, schema, .. } => {
                let dumped = run(
                    Command::new("pg_dump")
                        .args(["--data-only", "--schema", schema, "--dbname"])
                        .arg(url),
                    None,
                );
                assert_eq!(dumped.code, 0, "pg_dump: {}", dumped.stderr);
                dumped.stdout
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres {
            admin_url, schema, ..
        } = self
        {
            let dropped = psql(
                admin_url,
                &format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {schema} CASCADE"),
            );
            if dropped.code != 0 {
                eprintln!(
                    "could not drop the test schema {schema} (a later run will): {}",
                    dropped.stderr
                );
            }
        }
    }
}

/// SQL that drops the test schemas made before `before` (Unix seconds) by runs that were killed.
fn drop_stale_schemas(before: u64) -> String {
    format!(
        "DO $$ DECLARE s text; BEGIN \
         FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^latch_(test|e2e)_[0-9]+_' \
             AND split_part(nspname, '_', 3)::bigint < {before} LOOP \
           BEGIN EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s); \
           EXCEPTION WHEN others THEN NULL; END; \
         END LOOP; END $$"
    )
}

fn psql(url: &str, sql: &str) -> Ran {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "--dbname"])
        .arg(url)
        .args(["-c", sql]);
    match command.output() {
        Ok(output) => output.into(),
        Err(error) => panic!(
            "cannot run psql ({error}): install postgresql-client to run the tests on PostgreSQL"
        ),
    }
}
