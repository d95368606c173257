//! Moving a control plane from SQLite to PostgreSQL: every row of every table, copied into an
//! empty PostgreSQL schema in one transaction, values unchanged (both engines store the same
//! values: Unix milliseconds, JSON text, the audit chain byte for byte), so keys, credentials,
//! sequence numbers and the audit chain carry over. The SQLite database is held with a write
//! transaction for the whole copy, so no server can change it meanwhile.
//!
//! [`TABLES`] names every column of both schemas; a test compares it with both engines' schemas,
//! so a migration that adds a column to one of them must add it here as well.

use sqlx::{Row as _, SqliteConnection};
use thiserror::Error;

use super::{PgStore, SqliteStore, StoreError};

/// How a column is stored on both engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// INTEGER / BIGINT.
    Int,
    /// TEXT.
    Text,
}

/// A table to copy.
#[derive(Debug)]
pub struct Table {
    /// Its name.
    pub name: &'static str,
    /// Its primary key (the copy reads in this order, in batches).
    pub key: &'static [&'static str],
    /// Every column.
    pub columns: &'static [(&'static str, Kind)],
    /// Whether PostgreSQL generates its key (an identity column whose counter must follow).
    pub identity: bool,
}

use Kind::{Int, Text};

/// Every table, parents before children.
pub const TABLES: &[Table] = &[
    Table {
        name: "admin_tokens",
        key: &["hash"],
        columns: &[("hash", Text), ("created_at", Int)],
        identity: false,
    },
    Table {
        name: "enroll_tokens",
        key: &["hash"],
        columns: &[
            ("hash", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("uses_total", Int),
            ("uses_left", Int),
            ("labels", Text),
            ("ssh_ca", Int),
        ],
        identity: false,
    },
    Table {
        name: "hosts",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("hostname", Text),
            ("os", Text),
            ("kernel", Text),
            ("arch", Text),
            ("cpus", Int),
            ("memory_bytes", Int),
            ("machine_id", Text),
            ("credential_hash", Text),
            ("enrolled_at", Int),
            ("last_seen", Int),
            ("next_seq", Int),
            ("removed_at", Int),
            ("labels", Text),
            ("ssh_ca", Int),
            ("agent_version", Text),
            ("agent_protocol", Int),
        ],
        identity: false,
    },
    Table {
        name: "jobs",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("host_id", Text),
            ("seq", Int),
            ("kind", Text),
            ("spec", Text),
            ("status", Text),
            ("error_code", Text),
            ("error_message", Text),
            ("created_at", Int),
            ("finished_at", Int),
            ("attempts", Int),
            ("lease", Text),
            ("lease_expires_at", Int),
            ("subject_user", Text),
            ("subject_group", Text),
            ("expires_at", Int),
            ("revoked_at", Int),
            ("revoked_by", Text),
            ("revoked_by_job_id", Text),
            ("revocation_job_id", Text),
            ("revocation_attempts", Int),
            ("revocation_failed_at", Int),
            ("revocation_error", Text),
            ("revokes_job_id", Text),
            ("payload", Text),
            ("signature", Text),
            ("outcome_notes", Text),
        ],
        identity: false,
    },
    Table {
        name: "job_events",
        key: &["id"],
        columns: &[
            ("id", Int),
            ("job_id", Text),
            ("at", Int),
            ("event", Text),
            ("detail", Text),
        ],
        identity: true,
    },
    Table {
        name: "audit_log",
        key: &["id"],
        columns: &[
            ("id", Int),
            ("at", Int),
            ("actor", Text),
            ("action", Text),
            ("host_id", Text),
            ("job_id", Text),
            ("detail", Text),
            ("prev_hash", Text),
            ("hash", Text),
        ],
        identity: false,
    },
    Table {
        name: "audit_macs",
        key: &["key_id", "entry_id"],
        columns: &[("key_id", Text), ("entry_id", Int), ("mac", Text)],
        identity: false,
    },
    Table {
        name: "key_pins",
        key: &["name"],
        columns: &[("name", Text), ("public", Text), ("updated_at", Int)],
        identity: false,
    },
    Table {
        name: "principals",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("kind", Text),
            ("name", Text),
            ("display_name", Text),
            ("email", Text),
            ("idp_issuer", Text),
            ("idp_subject", Text),
            ("password_hash", Text),
            ("disabled_at", Int),
            ("created_at", Int),
            ("last_seen_at", Int),
            ("failed_logins", Int),
            ("locked_until", Int),
        ],
        identity: false,
    },
    Table {
        name: "groups",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("name", Text),
            ("description", Text),
            ("idp_group", Text),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "group_members",
        key: &["group_id", "principal_id"],
        columns: &[("group_id", Text), ("principal_id", Text), ("source", Text)],
        identity: false,
    },
    Table {
        name: "role_bindings",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("role", Text),
            ("principal_id", Text),
            ("group_id", Text),
            ("selector", Text),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "api_keys",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("principal_id", Text),
            ("hash", Text),
            ("created_at", Int),
            ("last_used_at", Int),
            ("revoked_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "sessions",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("principal_id", Text),
            ("hash", Text),
            ("kind", Text),
            ("api_key_id", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("revoked_at", Int),
            ("mfa_at", Int),
            ("address", Text),
        ],
        identity: false,
    },
    Table {
        name: "totp",
        key: &["principal_id"],
        columns: &[
            ("principal_id", Text),
            ("secret", Text),
            ("confirmed_at", Int),
            ("pending", Text),
            ("last_step", Int),
            ("failures", Int),
            ("locked_until", Int),
        ],
        identity: false,
    },
    Table {
        name: "sso_logins",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("kind", Text),
            ("nonce", Text),
            ("pkce_verifier", Text),
            ("redirect_uri", Text),
            ("device_code", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("used_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "organizations",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("name", Text),
            ("data_key_id", Text),
            ("wrapped_data_key", Text),
            ("canary", Text),
            ("created_at", Int),
            ("break_glass_minutes", Int),
        ],
        identity: false,
    },
    Table {
        name: "vaults",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("organization_id", Text),
            ("name", Text),
            ("description", Text),
            ("owner_id", Text),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "vault_grants",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("vault_id", Text),
            ("principal_id", Text),
            ("group_id", Text),
            ("level", Text),
            ("expires_at", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "identities",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("vault_id", Text),
            ("name", Text),
            ("username", Text),
            ("credential_type", Text),
            ("secret", Text),
            ("rotation_interval_days", Int),
            ("rotate_after_use", Int),
            ("concurrent_checkout", Int),
            ("max_concurrent", Int),
            ("last_rotated_at", Int),
            ("next_rotation_at", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "identity_hosts",
        key: &["identity_id", "host_id"],
        columns: &[
            ("identity_id", Text),
            ("host_id", Text),
            ("adopt_job_id", Text),
            ("password_job_id", Text),
        ],
        identity: false,
    },
    Table {
        name: "password_history",
        key: &["identity_id", "hash"],
        columns: &[("identity_id", Text), ("hash", Text), ("created_at", Int)],
        identity: false,
    },
    Table {
        name: "checkouts",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("identity_id", Text),
            ("principal_id", Text),
            ("reason", Text),
            ("host_id", Text),
            ("break_glass", Int),
            ("started_at", Int),
            ("expires_at", Int),
            ("checked_in_at", Int),
            ("checked_in_how", Text),
            ("checked_in_by", Text),
            ("rotation_id", Text),
        ],
        identity: false,
    },
    Table {
        name: "rotations",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("identity_id", Text),
            ("cause", Text),
            ("state", Text),
            ("secret", Text),
            ("secret_hash", Text),
            ("started_by", Text),
            ("created_at", Int),
            ("finished_at", Int),
            ("note", Text),
        ],
        identity: false,
    },
    Table {
        name: "rotation_hosts",
        key: &["rotation_id", "host_id"],
        columns: &[("rotation_id", Text), ("host_id", Text), ("job_id", Text)],
        identity: false,
    },
    Table {
        name: "support_access",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("organization_id", Text),
            ("reason", Text),
            ("enabled_by", Text),
            ("enabled_at", Int),
            ("expires_at", Int),
            ("disabled_at", Int),
            ("disabled_by", Text),
            ("disabled_how", Text),
        ],
        identity: false,
    },
    Table {
        name: "access_policies",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("name", Text),
            ("description", Text),
            ("group_id", Text),
            ("access", Text),
            ("hosts", Text),
            ("max_minutes", Int),
            ("approval_required", Int),
            ("approver_group_id", Text),
            ("approvals", Int),
            ("auto_approve_service_minutes", Int),
            ("windows", Text),
            ("exclusive", Int),
            ("mfa_at_request", Int),
            ("mfa_at_approval", Int),
            ("reauth_minutes", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "access_requests",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("requester_id", Text),
            ("target", Text),
            ("access", Text),
            ("minutes", Int),
            ("reason", Text),
            ("ssh_public_key", Text),
            ("policy_id", Text),
            ("policy_name", Text),
            ("approver_group_id", Text),
            ("approvals_needed", Int),
            ("exclusive", Int),
            ("state", Text),
            ("created_at", Int),
            ("pending_until", Int),
            ("decided_at", Int),
            ("decision_reason", Text),
            ("key_generated", Int),
            ("account", Text),
            ("activated_at", Int),
            ("ends_at", Int),
            ("end_reason", Text),
            ("ended_at", Int),
            ("confirm_by", Int),
            ("certificate", Text),
            ("version", Int),
        ],
        identity: false,
    },
    Table {
        name: "access_request_hosts",
        key: &["request_id", "host_id"],
        columns: &[
            ("request_id", Text),
            ("host_id", Text),
            ("state", Text),
            ("provision_job_id", Text),
            ("revoke_job_id", Text),
            ("error", Text),
            ("updated_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "access_decisions",
        key: &["request_id", "principal_id"],
        columns: &[
            ("request_id", Text),
            ("principal_id", Text),
            ("decision", Text),
            ("reason", Text),
            ("at", Int),
        ],
        identity: false,
    },
    Table {
        name: "break_glass_uses",
        key: &["id"],
        columns: &[("id", Text), ("principal_id", Text), ("at", Int)],
        identity: false,
    },
    Table {
        name: "webhooks",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("organization_id", Text),
            ("url", Text),
            ("secret", Text),
            ("events", Text),
            ("created_by", Text),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "webhook_deliveries",
        key: &["id"],
        columns: &[
            ("id", Text),
            ("webhook_id", Text),
            ("event", Text),
            ("body", Text),
            ("status", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("last_status", Int),
            ("last_error", Text),
            ("created_at", Int),
            ("delivered_at", Int),
        ],
        identity: false,
    },
];

/// Rows read from SQLite per batch.
const BATCH: i64 = 2000;

/// Why the copy did not happen.
#[derive(Debug, Error)]
pub enum CopyError {
    /// A database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The PostgreSQL schema already holds data.
    #[error(
        "PostgreSQL at {location} already holds data (table {table} is not empty); copy only into an empty database or schema — create a new one, or drop this one if it is a failed earlier attempt"
    )]
    NotEmpty {
        /// The target.
        location: String,
        /// The first table found with rows.
        table: &'static str,
    },
    /// The rows arrived incompletely (nothing was committed).
    #[error(
        "the copy of table {table} does not match ({from} rows in SQLite, {to} in PostgreSQL); nothing was committed"
    )]
    Mismatch {
        /// The table.
        table: &'static str,
        /// Rows in SQLite.
        from: i64,
        /// Rows in PostgreSQL.
        to: i64,
    },
}

impl From<sqlx::Error> for CopyError {
    fn from(error: sqlx::Error) -> Self {
        CopyError::Store(StoreError::Query(error))
    }
}

/// One column's values of a batch.
enum Values {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

/// Copies every row of `from` into `to`, which must be empty (freshly migrated), in one
/// PostgreSQL transaction. Returns the rows copied per table.
pub async fn copy_sqlite_to_postgres(
    from: &SqliteStore,
    to: &PgStore,
) -> Result<Vec<(&'static str, i64)>, CopyError> {
    let mut source = from.pool().acquire().await?;
    // A write transaction: a server still running on this file cannot change it during the
    // copy (its writes wait, then fail), and every table is read from one snapshot.
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *source).await?;
    let copied = copy_tables(&mut source, to).await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *source).await;
    copied
}

async fn copy_tables(
    source: &mut SqliteConnection,
    to: &PgStore,
) -> Result<Vec<(&'static str, i64)>, CopyError> {
    let mut tx = to.pool().begin().await?;
    match fill(source, &mut tx, to).await {
        Ok(counts) => {
            tx.commit().await?;
            Ok(counts)
        }
        Err(error) => {
            // At once, rather than when the connection goes back to the pool.
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

async fn fill(
    source: &mut SqliteConnection,
    tx: &mut sqlx::PgConnection,
    to: &PgStore,
) -> Result<Vec<(&'static str, i64)>, CopyError> {
    for table in TABLES {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {}) AS any", table.name);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await?;
        if row.try_get::<bool, _>("any")? {
            return Err(CopyError::NotEmpty {
                location: to.location().to_owned(),
                table: table.name,
            });
        }
    }
    let mut counts = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let columns: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
        let key = table.key.join(", ");
        let first = format!(
            "SELECT {} FROM {} ORDER BY {key} LIMIT {BATCH}",
            columns.join(", "),
            table.name
        );
        let next = format!(
            "SELECT {} FROM {} WHERE ({key}) > ({}) ORDER BY {key} LIMIT {BATCH}",
            columns.join(", "),
            table.name,
            vec!["?"; table.key.len()].join(", ")
        );
        let arrays: Vec<String> = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| match kind {
                Int => format!("${}::bigint[]", i + 1),
                Text => format!("${}::text[]", i + 1),
            })
            .collect();
        let insert = format!(
            "INSERT INTO {} ({}) {} SELECT * FROM UNNEST({})",
            table.name,
            columns.join(", "),
            if table.identity {
                "OVERRIDING SYSTEM VALUE"
            } else {
                ""
            },
            arrays.join(", ")
        );
        let mut last: Option<Vec<Values>> = None;
        let mut count: i64 = 0;
        loop {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(if last.is_some() {
                next.clone()
            } else {
                first.clone()
            }));
            if let Some(last) = &last {
                for key in table.key {
                    let index = columns.iter().position(|c| c == key).unwrap_or_default();
                    query = match &last[index] {
                        Values::Int(values) => query.bind(values.last().copied().flatten()),
                        Values::Text(values) => query.bind(values.last().cloned().flatten()),
                    };
                }
            }
            let rows = query.fetch_all(&mut *source).await?;
            if rows.is_empty() {
                break;
            }
            let mut batch: Vec<Values> = table
                .columns
                .iter()
                .map(|(_, kind)| match kind {
                    Int => Values::Int(Vec::with_capacity(rows.len())),
                    Text => Values::Text(Vec::with_capacity(rows.len())),
                })
                .collect();
            for row in &rows {
                for (i, values) in batch.iter_mut().enumerate() {
                    match values {
                        Values::Int(values) => values.push(row.try_get(i)?),
                        Values::Text(values) => values.push(row.try_get(i)?),
                    }
                }
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for values in &batch {
                query = match values {
                    Values::Int(values) => query.bind(values),
                    Values::Text(values) => query.bind(values),
                };
            }
            query.execute(&mut *tx).await?;
            count += i64::try_from(rows.len()).unwrap_or(i64::MAX);
            last = Some(batch);
        }
        if table.identity {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('{0}', 'id'), max(id)) FROM {0} HAVING max(id) IS NOT NULL",
                table.name
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?;
        }
        let sql = format!("SELECT count(*) AS n FROM {}", table.name);
        let to_rows: i64 = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let from_rows: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *source)
            .await?
            .try_get("n")?;
        if from_rows != count || to_rows != count {
            return Err(CopyError::Mismatch {
                table: table.name,
                from: from_rows,
                to: to_rows,
            });
        }
        counts.push((table.name, count));
    }
    Ok(counts)
}
