//! The schema's migrations: versioned (`NNNN_name.sql` in `migrations/sqlite` and
//! `migrations/postgres`, embedded in the binary) and forward only. A released migration is
//! never edited (sqlx refuses a database whose applied migration's checksum differs, and
//! `tests/fixtures/release-*/migrations.sha256` pins each release's files); a change goes in a
//! new file. There are no down migrations: going back means restoring the backup taken before
//! the upgrade. A database that a newer release has migrated is refused here, before anything
//! is applied, rather than run by a binary that does not know its schema.

use sqlx::migrate::{Migrate, Migrator};

use super::StoreError;

/// Refuses a database whose applied migrations go beyond the newest one `migrator` carries
/// ([`StoreError::SchemaNewer`]). Creates sqlx's migrations table when it is missing (the
/// migrator would, a moment later).
pub(crate) async fn refuse_newer_schema<C>(
    migrator: &Migrator,
    conn: &mut C,
) -> Result<(), StoreError>
where
    C: Migrate + Send + ?Sized,
{
    conn.ensure_migrations_table(&migrator.table_name).await?;
    let applied = conn.list_applied_migrations(&migrator.table_name).await?;
    let binary = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied.iter().map(|m| m.version).max() {
        Some(database) if database > binary => Err(StoreError::SchemaNewer { database, binary }),
        _ => Ok(()),
    }
}
