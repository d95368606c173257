//! What only the PostgreSQL store has: a URL and a server to reach. Each way of getting them
//! wrong stops the start with the cause and what to check, and never shows a password.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::Arc;

use latch_control::audit::AuditKey;
use latch_control::store::{PgStore, StoreError};
use support::TestDb;

async fn open(url: &str) -> StoreError {
    match PgStore::open(url, Arc::new(AuditKey::generate().unwrap())).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(error) => error,
    }
}

fn assert_says(error: &StoreError, needed: &[&str]) {
    let message = error.to_string();
    for text in needed {
        assert!(message.contains(text), "{text:?} not in: {message}");
    }
    assert!(
        !message.contains("s3cret"),
        "the password is shown: {message}"
    );
}

#[tokio::test]
async fn a_url_that_is_not_postgresql_is_refused_before_connecting() {
    for url in [
        "sqlite://latch.db",
        "mysql://latch@db/latch",
        "db.example.com:5432",
    ] {
        let error = open(url).await;
        assert!(matches!(error, StoreError::BadUrl { .. }), "{url}: {error}");
        assert_says(&error, &["postgres://USER@HOST:PORT/DATABASE"]);
    }
    let error = open("postgres://latch:s3cret@127.0.0.1:notaport/latch").await;
    assert!(matches!(error, StoreError::BadUrl { .. }), "{error}");
    assert_says(&error, &["port"]);
}

#[tokio::test]
async fn an_unreachable_server_names_the_address_and_what_to_check() {
    // Port 1 on loopback: nothing listens there.
    let error = open("postgres://latch:s3cret@127.0.0.1:1/latch").await;
    assert!(matches!(error, StoreError::Connect { .. }), "{error}");
    assert_says(
        &error,
        &[
            "latch@127.0.0.1:1/latch",
            "Connection refused",
            "listening on that host and port",
        ],
    );
}

/// A database that does not exist, and a search_path naming no schema, against the test
/// PostgreSQL.
#[tokio::test]
async fn a_missing_database_or_schema_says_how_to_create_it() {
    let Some(db) = TestDb::postgres("a_missing_database_or_schema_says_how_to_create_it").await
    else {
        return;
    };
    let url = match db.database() {
        latch_control::datadir::Database::Postgres(url) => url,
        latch_control::datadir::Database::Sqlite => unreachable!(),
    };
    let server = url.split('?').next().unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    let error = open(&format!("{base}/latch_no_such_database")).await;
    assert!(matches!(error, StoreError::Connect { .. }), "{error}");
    assert_says(&error, &["does not exist", "createdb"]);

    let error = open(&support::schema_url(server, "latch_no_such_schema")).await;
    assert!(matches!(error, StoreError::NoSchema { .. }), "{error}");
    assert_says(&error, &["latch_no_such_schema", "CREATE SCHEMA"]);

    // The test's own schema works, and says where it is.
    let store = PgStore::open(&url, Arc::new(AuditKey::generate().unwrap()))
        .await
        .unwrap();
    assert!(
        store.location().contains("search_path"),
        "{}",
        store.location()
    );
}
