//! The server's data directory: what lives in it, how it is written, and how it is opened.
//!
//! ```text
//! latch-data/            0700
//!   latch.db             SQLite (WAL): everything else, including the *public* halves of the
//!                        keys below (table key_pins), recorded when each key is made — or,
//!                        with `--database-url postgres://…`, the same tables in PostgreSQL
//!                        (then there is no latch.db; every file below stays here)
//!   latch.db.moved       latch.db was copied to PostgreSQL ([`copy_to_postgres`]): refused now
//!   admin.token          0600  the first admin token (its hash is in the database)
//!   audit.key            0600  32-byte seed: HMAC key of audit entries + checkpoint-signing key
//!   audit.head           latest signed checkpoint of the audit chain (refreshed by the server)
//!   signing.key          0600  Ed25519 job-signing key (PKCS#8); agents pin its public key
//!   signing.next.key     0600  the next signing key, during a rotation
//!   signing.key.old      0600  the previous signing key, after a promotion
//!   ca.crt  ca.key       private CA (ca.key 0600); agents pin the CA's fingerprint
//!   master.key           0600  the vault's master key (unless --master-key-file names another
//!                        file): wraps each organization's data key; back it up apart from
//!                        the database ([`crate::vault::master`])
//!   master.key.next      0600  the new master key, during a rotation
//!   user_ca.key          0600  SSH user CA (Ed25519, OpenSSH format): signs user certificates;
//!                        hosts enrolled with --ssh-ca trust its public key in sshd
//! ```
//!
//! **Keys are made once, at initialisation, and never silently again.** Each key's public half
//! is recorded in the database when the key is made (`key_pins`). A later start that finds the
//! file missing, or holding another key, refuses with the cause and the fix (restore the file
//! from a backup; or, if it is lost for good, start once with `--new-signing-key`,
//! `--new-audit-key` or `--new-ca`, which is audited). A database initialised before keys were
//! recorded (it has an admin token but no key record) counts as initialised: its keys are
//! recorded as found, and a missing one is refused the same way — except the audit key, which
//! did not exist then and is made on that first start (the existing entries are keyed after
//! their hash chain is checked).
//!
//! Every file is written through [`write_file`] ([`crate::files`]): a temporary file (mode set at
//! creation, fsynced), then an atomic rename (replace) or hard link (never replace), then an
//! fsync of the directory — a crash leaves the old file or the whole new one, never a partial one.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::audit::key::AuditKeyError;
use crate::audit::{AuditEvent, AuditKey};
use crate::secret::RandomError;
use crate::signing::{JobSigner, SigningError};
use crate::store::{Page, PgStore, PinnedKey, SqliteStore, Store, StoreError};
use crate::tls::{TlsError, TlsIdentity};
use crate::vault::{MasterKeyFiles, Rotated, SecretKey};

use crate::access::certificates::{CertificateError, UserCa};
pub use crate::files::{
    ADMIN_TOKEN_FILE, AUDIT_HEAD_FILE, AUDIT_KEY_FILE, AUDIT_KEY_PENDING_FILE, CA_CERT_FILE,
    CA_KEY_FILE, DATABASE_FILE, Existing, MOVED_FILE, NEXT_KEY_FILE, OLD_KEY_FILE,
    SIGNING_KEY_FILE, USER_CA_KEY_FILE, sync_parent, write_file,
};
use crate::store::copy::CopyError;

/// Why the data directory could not be opened.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// The directory could not be created or secured.
    #[error(
        "cannot prepare data directory {path}: {source}; choose another with --data-dir or fix its permissions"
    )]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file in it could not be written or renamed.
    #[error(
        "cannot {action} {path}: {source}; check the data directory's permissions and free space"
    )]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job-signing key could not be read or made.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// The audit key could not be read or made.
    #[error(transparent)]
    AuditKey(#[from] AuditKeyError),
    /// The private CA could not be read or made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The system random generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The bootstrap admin could not be made.
    #[error(transparent)]
    Bootstrap(#[from] crate::people::BootstrapError),
    /// The vault's master key could not be opened, made or rotated.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// The SSH user CA key could not be read or made.
    #[error(transparent)]
    UserCa(#[from] CertificateError),
    /// Copying the SQLite database to PostgreSQL failed (nothing was committed).
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// The SQLite database was copied to PostgreSQL; it is stale now.
    #[error(
        "the SQLite database of {dir} was copied to PostgreSQL ({moved}); start with --database-url (or LATCH_DATABASE_URL) naming that database. Only to go back to the SQLite copy, which misses every change made since, delete {marker}",
        dir = .dir.display(), marker = .marker.display()
    )]
    MovedToPostgres {
        /// The data directory.
        dir: PathBuf,
        /// The marker file.
        marker: PathBuf,
        /// What it says (where to, when).
        moved: String,
    },
    /// A new, empty PostgreSQL database next to a data directory that has an SQLite database.
    #[error(
        "{path} holds this data directory's SQLite database, but PostgreSQL at {location} is empty: copy the database there first (latch-control copy-to-postgres --data-dir {dir}), or give the new PostgreSQL control plane a data directory of its own",
        path = .path.display(), dir = .dir.display()
    )]
    SqliteNotCopied {
        /// The SQLite database file.
        path: PathBuf,
        /// The data directory.
        dir: PathBuf,
        /// The PostgreSQL database.
        location: String,
    },
    /// There is no SQLite database to copy.
    #[error(
        "there is no SQLite database to copy at {path}; check --data-dir (the directory the SQLite control plane ran with)",
        path = .path.display()
    )]
    NoSqliteDatabase {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The SQLite database was copied before.
    #[error(
        "{path} was already copied to PostgreSQL ({moved}); to copy it again, into an empty database, delete {marker} first",
        path = .path.display(), marker = .marker.display()
    )]
    AlreadyCopied {
        /// The SQLite database file.
        path: PathBuf,
        /// The marker file.
        marker: PathBuf,
        /// What it says.
        moved: String,
    },
    /// A key the data directory was initialised with is gone.
    #[error(
        "{what} {path} is missing, but this data directory was initialised with it ({pinned}); refusing to make a new one, because {why}. Restore {path} from a backup of the data directory. Only if it is lost for good, start once with {flag}: {consequence}",
        what = .0.text.what, path = .0.path.display(), pinned = .0.pinned, why = .0.text.why,
        flag = .0.text.flag, consequence = .0.text.consequence
    )]
    KeyMissing(Box<KeyProblem>),
    /// A key file holds another key than the one the data directory was initialised with.
    #[error(
        "{what} {path} is not the key this data directory was initialised with: it holds {found}, the database records {pinned}; refusing to use it, because {why}. Put the original file back from a backup of the data directory. Only if that is lost for good, move this file away and start once with {flag}: {consequence}",
        what = .0.text.what, path = .0.path.display(), found = .0.found, pinned = .0.pinned,
        why = .0.text.why, flag = .0.text.flag, consequence = .0.text.consequence
    )]
    KeyMismatch(Box<KeyProblem>),
}

/// A missing or different key file.
#[derive(Debug)]
pub struct KeyProblem {
    /// Which key, why it matters, and the way out.
    pub text: &'static KeyText,
    /// Its file.
    pub path: PathBuf,
    /// What the database records for it.
    pub pinned: String,
    /// What the file holds (a different key), if it exists.
    pub found: String,
}

/// How a key is named in errors, why it must not change, and the flag that replaces it.
#[derive(Debug)]
pub struct KeyText {
    /// Which key.
    pub what: &'static str,
    /// Why a new or different one is wrong.
    pub why: &'static str,
    /// The start-up flag that makes a new one anyway.
    pub flag: &'static str,
    /// What that flag costs.
    pub consequence: &'static str,
}

static SIGNING_TEXT: KeyText = KeyText {
    what: "the job-signing key",
    why: "every enrolled agent pinned its public key and refuses jobs signed with another",
    flag: "--new-signing-key",
    consequence: "a new key is made and recorded in the audit log; every enrolled host must then be enrolled again (jobs queued before keep their old signatures and are still delivered)",
};
static AUDIT_TEXT: KeyText = KeyText {
    what: "the audit key",
    why: "every audit entry is authenticated with it and a new key cannot check them",
    flag: "--new-audit-key",
    consequence: "the chain's hash links are checked and its entries keyed again under a new key, recorded in the audit log; edits made before that are then no longer detectable, and checkpoints exported before can no longer be checked",
};
static USER_CA_TEXT: KeyText = KeyText {
    what: "the SSH user CA key",
    why: "hosts enrolled with --ssh-ca trust its public key in sshd and refuse certificates signed by another",
    flag: "--new-user-ca",
    consequence: "a new CA key is made and recorded in the audit log; every host enrolled with --ssh-ca must then be enrolled again (until then it refuses the new certificates)",
};
static CA_TEXT: KeyText = KeyText {
    what: "the private CA",
    why: "every enrolled agent pinned its fingerprint and refuses any other certificate",
    flag: "--new-ca",
    consequence: "a new CA is made and recorded in the audit log; every enrolled host must then be enrolled again",
};

impl KeyText {
    fn missing(&'static self, path: PathBuf, pinned: Option<&str>) -> DataDirError {
        DataDirError::KeyMissing(Box::new(KeyProblem {
            text: self,
            path,
            pinned: match pinned {
                Some(pin) => format!("recorded {pin}"),
                None => "the database predates key records but was already initialised".into(),
            },
            found: String::new(),
        }))
    }

    fn mismatch(&'static self, path: PathBuf, pinned: &str, found: &str) -> DataDirError {
        DataDirError::KeyMismatch(Box::new(KeyProblem {
            text: self,
            path,
            pinned: pinned.to_owned(),
            found: found.to_owned(),
        }))
    }
}

/// Where the database is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Database {
    /// SQLite, in the data directory ([`DATABASE_FILE`]).
    #[default]
    Sqlite,
    /// PostgreSQL at this URL (`postgres://USER@HOST:PORT/DATABASE`; see [`PgStore::open`]).
    Postgres(String),
}

/// Where the database is, and the start-up choices that replace a lost key (each audited; see
/// the module docs).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The database: SQLite in the data directory (the default) or PostgreSQL.
    pub database: Database,
    /// Make a new job-signing key if `signing.key` is missing (hosts must enroll again).
    pub new_signing_key: bool,
    /// Make a new audit key if `audit.key` is missing (the chain is re-keyed).
    pub new_audit_key: bool,
    /// Make a new private CA if `ca.crt`/`ca.key` are missing (hosts must enroll again).
    pub new_ca: bool,
    /// Make a new SSH user CA key if `user_ca.key` is missing (hosts enrolled with `--ssh-ca`
    /// must enroll again).
    pub new_user_ca: bool,
    /// The vault's master key file (`--master-key-file`); `master.key` in the data directory
    /// if `None`.
    pub master_key_file: Option<PathBuf>,
}

/// What [`open`] found or created.
pub struct DataDir {
    /// The opened store.
    pub store: Arc<dyn Store>,
    /// Which database it is, for people: the SQLite file, or `PostgreSQL user@host:port/db`.
    pub database: String,
    /// Where the admin token is.
    pub admin_token_path: PathBuf,
    /// Whether a new admin token was created now.
    pub admin_token_created: bool,
    /// The job-signing key (`signing.key`, made at initialisation).
    pub signer: JobSigner,
    /// The next signing key, while a rotation is under way (`signing.next.key`).
    pub next_signer: Option<JobSigner>,
    /// The vault's master key, proven to open every organization's data key.
    pub master_key: Arc<SecretKey>,
    /// Where the master key file is.
    pub master_key_files: MasterKeyFiles,
    /// The SSH user CA (`user_ca.key`, made on the first start that has none recorded).
    pub user_ca: UserCa,
    dir: PathBuf,
    initialised_before_pins: bool,
    new_ca: bool,
}

async fn host_count(store: &dyn Store) -> Result<usize, StoreError> {
    Ok(store
        .list_hosts(
            &crate::store::HostFilter::default(),
            Page {
                offset: 0,
                count: 1_000_000,
            },
        )
        .await?
        .len())
}

/// Creates `dir` (mode 0700) and the SQLite database in it if needed (or connects to the
/// PostgreSQL database of [`Options::database`] and migrates it); makes the keys on first start
/// (and only then); refuses a missing or different key afterwards; on first start creates an
/// admin token, stores its hash and writes it to `dir/admin.token` (mode 0600). The keys and
/// the admin token are files of `dir` with either database.
pub async fn open(dir: &Path, options: &Options) -> Result<DataDir, DataDirError> {
    let dir_error = |source| DataDirError::Dir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;

    // The audit key comes first: the store authenticates every entry it writes with it.
    let (audit_key, audit_key_is_new) = match AuditKey::load(&dir.join(AUDIT_KEY_FILE))? {
        Some(key) => (key, false),
        None => match AuditKey::load(&dir.join(AUDIT_KEY_PENDING_FILE))? {
            Some(key) => (key, true),
            None => (AuditKey::generate()?, true),
        },
    };
    let audit_key = Arc::new(audit_key);
    let sqlite_path = dir.join(DATABASE_FILE);
    let marker = dir.join(MOVED_FILE);
    let (store_handle, database): (Arc<dyn Store>, String) = match &options.database {
        Database::Sqlite => {
            if let Some(moved) = read_marker(&marker) {
                return Err(DataDirError::MovedToPostgres {
                    dir: dir.to_owned(),
                    marker,
                    moved,
                });
            }
            let store = SqliteStore::open(&sqlite_path, audit_key.clone()).await?;
            (Arc::new(store), format!("SQLite {}", sqlite_path.display()))
        }
        Database::Postgres(url) => {
            let store = PgStore::open(url, audit_key.clone()).await?;
            if sqlite_path.exists() && !marker.exists() && !initialised(&store).await? {
                return Err(DataDirError::SqliteNotCopied {
                    path: sqlite_path,
                    dir: dir.to_owned(),
                    location: store.location().to_owned(),
                });
            }
            let database = format!("PostgreSQL {}", store.location());
            (Arc::new(store), database)
        }
    };
    let store = store_handle.as_ref();
    let initialised_before_pins = initialised(store).await?
        && store.key_pin(PinnedKey::Signing).await?.is_none()
        && store.key_pin(PinnedKey::Audit).await?.is_none()
        && store.key_pin(PinnedKey::Ca).await?.is_none();
    let now = Utc::now();

    settle_audit_key(
        dir,
        store,
        &audit_key,
        audit_key_is_new,
        initialised_before_pins,
        options,
        now,
    )
    .await?;
    let (signer, next_signer) =
        settle_signing_key(dir, store, initialised_before_pins, options, now).await?;
    let user_ca = settle_user_ca(dir, store, options, now).await?;

    // Record the CA as soon as it exists, also when this start does not serve TLS with it.
    if store.key_pin(PinnedKey::Ca).await?.is_none()
        && let Some(fingerprint) = crate::tls::ca_fingerprint(dir)?
    {
        let event = AuditEvent::new("control_plane", "tls.ca_recorded")
            .detail(serde_json::json!({"fingerprint": fingerprint}));
        store
            .set_key_pin(PinnedKey::Ca, &fingerprint, &event, now)
            .await?;
    }

    let admin_token_path = dir.join(ADMIN_TOKEN_FILE);
    let made = crate::people::bootstrap(store, |api_key| {
        write_file(
            &admin_token_path,
            format!("{api_key}\n").as_bytes(),
            0o600,
            Existing::Replace,
        )
    })
    .await?;
    let admin_token_created = matches!(made, crate::people::Bootstrap::Created(_));
    let master_key_files = MasterKeyFiles::new(dir, options.master_key_file.as_deref());
    let master_key = Arc::new(crate::vault::open_master_key(store, &master_key_files, now).await?);
    if let crate::people::Bootstrap::Migrated(keys) = made {
        tracing::info!(
            keys,
            "the admin token is now an API key of the pam_admin service user 'admin'"
        );
    }
    Ok(DataDir {
        store: store_handle,
        database,
        admin_token_path,
        admin_token_created,
        signer,
        next_signer,
        master_key,
        master_key_files,
        user_ca,
        dir: dir.to_owned(),
        initialised_before_pins,
        new_ca: options.new_ca,
    })
}

/// Whether the database was initialised: it has people (or, made before people and roles, an
/// admin token).
async fn initialised(store: &dyn Store) -> Result<bool, StoreError> {
    Ok(store.has_admin_token().await? || store.has_principals().await?)
}

/// What the marker of a database copied to PostgreSQL says, if there is one.
fn read_marker(marker: &Path) -> Option<String> {
    std::fs::read_to_string(marker)
        .ok()
        .map(|text| text.trim().to_owned())
}

/// What [`copy_to_postgres`] copied.
#[derive(Debug)]
pub struct Copied {
    /// The PostgreSQL database (`user@host:port/database`).
    pub location: String,
    /// Rows per table.
    pub rows: Vec<(&'static str, i64)>,
    /// The audit chain's last entry, the same on both.
    pub audit_head: Option<i64>,
}

/// Copies the SQLite database of the data directory `dir` into the empty PostgreSQL database at
/// `url` (migrated first), in one transaction, and marks the SQLite database as moved
/// ([`MOVED_FILE`]) so it is refused from then on. The keys and the other files stay in `dir`:
/// start the server with the same `--data-dir` and `--database-url url`. Stop the server first;
/// one still running cannot write during the copy, and its later writes would be lost.
pub async fn copy_to_postgres(dir: &Path, url: &str) -> Result<Copied, DataDirError> {
    let path = dir.join(DATABASE_FILE);
    let marker = dir.join(MOVED_FILE);
    if let Some(moved) = read_marker(&marker) {
        return Err(DataDirError::AlreadyCopied {
            path,
            marker,
            moved,
        });
    }
    if !path.is_file() {
        return Err(DataDirError::NoSqliteDatabase { path });
    }
    let key = match AuditKey::load(&dir.join(AUDIT_KEY_FILE))? {
        Some(key) => Arc::new(key),
        None => return Err(AUDIT_TEXT.missing(dir.join(AUDIT_KEY_FILE), None)),
    };
    let from = SqliteStore::open(&path, key.clone()).await?;
    let to = PgStore::open(url, key).await?;
    let rows = crate::store::copy::copy_sqlite_to_postgres(&from, &to).await?;
    let head = from.audit_head().await?;
    if to.audit_head().await? != head {
        return Err(DataDirError::Copy(CopyError::Mismatch {
            table: "audit_log",
            from: head.map_or(0, |(id, _)| id),
            to: to.audit_head().await?.map_or(0, |(id, _)| id),
        }));
    }
    let note = format!(
        "to PostgreSQL {} at {}\n",
        to.location(),
        Utc::now().to_rfc3339()
    );
    write_file(&marker, note.as_bytes(), 0o600, Existing::Replace).map_err(|source| {
        DataDirError::Io {
            action: "write the moved-database marker",
            path: marker.clone(),
            source,
        }
    })?;
    Ok(Copied {
        location: to.location().to_owned(),
        rows,
        audit_head: head.map(|(id, _)| id),
    })
}

/// Checks the audit key against its record; introduces a new one (`is_new`: no `audit.key`)
/// only in a new data directory, on the first start after an upgrade, or with
/// `--new-audit-key` — keying the existing entries, then renaming `audit.key.new` into place.
async fn settle_audit_key(
    dir: &Path,
    store: &dyn Store,
    audit_key: &AuditKey,
    is_new: bool,
    initialised_before_pins: bool,
    options: &Options,
    now: DateTime<Utc>,
) -> Result<(), DataDirError> {
    let audit_path = dir.join(AUDIT_KEY_FILE);
    let pending_path = dir.join(AUDIT_KEY_PENDING_FILE);
    let audit_pin = store.key_pin(PinnedKey::Audit).await?;
    match (is_new, audit_pin.as_deref()) {
        (false, Some(pin)) if pin == audit_key.public_key() => {}
        (false, Some(pin)) => {
            return Err(AUDIT_TEXT.mismatch(audit_path, pin, audit_key.public_key()));
        }
        (false, None) => {
            // The key file exists but the database has no record of it (the row was deleted,
            // or the database restored from before it was written): record it. Entries are
            // not keyed again, so a chain stripped of its MACs stays broken.
            let event = AuditEvent::new("control_plane", "audit.key_recorded")
                .detail(serde_json::json!({"public_key": audit_key.public_key()}));
            store
                .set_key_pin(PinnedKey::Audit, audit_key.public_key(), &event, now)
                .await?;
        }
        (true, Some(pin)) if pin == audit_key.public_key() => {
            // An earlier start keyed the chain with the pending key and stopped before
            // renaming it into place.
            finish_audit_key(&pending_path, &audit_path)?;
        }
        (true, pin) => {
            let reason = match pin {
                Some(pin) if options.new_audit_key => {
                    format!("--new-audit-key: the audit key {pin} was lost")
                }
                Some(pin) => return Err(AUDIT_TEXT.missing(audit_path, Some(pin))),
                None if initialised_before_pins => {
                    "upgrade: entries written before they were keyed".to_owned()
                }
                None => "new data directory".to_owned(),
            };
            if !pending_path.exists() {
                audit_key.write_new(&pending_path)?;
            }
            key_existing_entries(store, &reason, now).await?;
            finish_audit_key(&pending_path, &audit_path)?;
        }
    }

    Ok(())
}

/// Loads the signing key (and the next one) and checks it against its record: finishes an
/// interrupted promotion, follows a database restored from before the last promotion, makes
/// the key only in a new data directory or with `--new-signing-key`, refuses otherwise.
async fn settle_signing_key(
    dir: &Path,
    store: &dyn Store,
    initialised_before_pins: bool,
    options: &Options,
    now: DateTime<Utc>,
) -> Result<(JobSigner, Option<JobSigner>), DataDirError> {
    let signing_path = dir.join(SIGNING_KEY_FILE);
    let next_path = dir.join(NEXT_KEY_FILE);
    let mut next_signer = JobSigner::load(&next_path)?;
    let signing_pin = store.key_pin(PinnedKey::Signing).await?;
    let signer = match (JobSigner::load(&signing_path)?, signing_pin.as_deref()) {
        (Some(current), Some(pin)) if current.public_key() == pin => current,
        (Some(current), Some(pin)) => {
            if next_signer
                .as_ref()
                .is_some_and(|next| next.public_key() == pin)
            {
                // A promotion was recorded, then the server stopped before switching files.
                crate::keys::switch_signing_key_files(dir).map_err(|source| DataDirError::Io {
                    action: "finish the signing-key promotion in",
                    path: dir.to_owned(),
                    source,
                })?;
                tracing::warn!("finished a job-signing key promotion interrupted by a restart");
                next_signer = None;
                match JobSigner::load(&signing_path)? {
                    Some(promoted) => promoted,
                    None => return Err(SIGNING_TEXT.missing(signing_path, Some(pin))),
                }
            } else if JobSigner::load(&dir.join(OLD_KEY_FILE))?
                .is_some_and(|old| old.public_key() == pin)
            {
                // The database is older than the last promotion (restored from a backup): the
                // files are newer and agents follow them, so record the current key again.
                tracing::warn!(
                    "the database records the signing key used before the last promotion (restored from a backup?); recording the current key"
                );
                let event = AuditEvent::new("control_plane", "signing_key.recorded").detail(
                    serde_json::json!({
                        "key": current.public_key(),
                        "previous": pin,
                        "reason": "the database was older than the last promotion",
                    }),
                );
                store
                    .set_key_pin(PinnedKey::Signing, &current.public_key(), &event, now)
                    .await?;
                current
            } else {
                return Err(SIGNING_TEXT.mismatch(signing_path, pin, &current.public_key()));
            }
        }
        (Some(current), None) => {
            let event = AuditEvent::new("control_plane", "signing_key.recorded")
                .detail(serde_json::json!({"key": current.public_key()}));
            store
                .set_key_pin(PinnedKey::Signing, &current.public_key(), &event, now)
                .await?;
            current
        }
        (None, pin) => {
            let event = match pin {
                None if !initialised_before_pins => {
                    AuditEvent::new("control_plane", "signing_key.created")
                }
                _ if options.new_signing_key => {
                    let hosts = host_count(store).await?;
                    tracing::warn!(
                        hosts,
                        "made a new job-signing key (--new-signing-key): every enrolled host must be enrolled again"
                    );
                    AuditEvent::new(crate::enroll::CONTROL_PLANE, "signing_key.replaced").detail(
                        serde_json::json!({"previous": pin, "hosts_to_enroll_again": hosts}),
                    )
                }
                _ => return Err(SIGNING_TEXT.missing(signing_path, pin)),
            };
            let signer = JobSigner::create(&signing_path)?;
            let key = signer.public_key();
            let mut detail = event.detail.clone();
            if let Some(object) = detail.as_object_mut() {
                object.insert("key".into(), serde_json::json!(key));
            }
            store
                .set_key_pin(PinnedKey::Signing, &key, &event.detail(detail), now)
                .await?;
            signer
        }
    };

    Ok((signer, next_signer))
}

/// Loads the SSH user CA key and checks it against its record; makes it when none is recorded
/// (a new data directory, or the first start of a version that has it) or with
/// `--new-user-ca`; refuses a missing or different key otherwise.
async fn settle_user_ca(
    dir: &Path,
    store: &dyn Store,
    options: &Options,
    now: DateTime<Utc>,
) -> Result<UserCa, DataDirError> {
    let path = dir.join(USER_CA_KEY_FILE);
    let pin = store.key_pin(PinnedKey::UserCa).await?;
    if let Some(ca) = UserCa::load(&path)? {
        let public = ca.public_key()?;
        match pin.as_deref() {
            Some(pin) if pin == public => {}
            Some(pin) => return Err(USER_CA_TEXT.mismatch(path, pin, &public)),
            None => {
                let event = AuditEvent::new("control_plane", "ssh_user_ca.recorded")
                    .detail(serde_json::json!({"public_key": public}));
                store
                    .set_key_pin(PinnedKey::UserCa, &public, &event, now)
                    .await?;
            }
        }
        return Ok(ca);
    }
    let event = match pin.as_deref() {
        None => AuditEvent::new("control_plane", "ssh_user_ca.created"),
        Some(previous) if options.new_user_ca => {
            tracing::warn!(
                "made a new SSH user CA key (--new-user-ca): every host enrolled with --ssh-ca must be enrolled again"
            );
            AuditEvent::new(crate::enroll::CONTROL_PLANE, "ssh_user_ca.replaced")
                .detail(serde_json::json!({"previous": previous}))
        }
        Some(_) => return Err(USER_CA_TEXT.missing(path, pin.as_deref())),
    };
    let ca = UserCa::create(&path)?;
    let public = ca.public_key()?;
    let mut detail = event.detail.clone();
    if let Some(object) = detail.as_object_mut() {
        object.insert("public_key".into(), serde_json::json!(public));
    }
    store
        .set_key_pin(PinnedKey::UserCa, &public, &event.detail(detail), now)
        .await?;
    Ok(ca)
}

/// Keys the entries already in the chain (on the first start after an upgrade from unkeyed
/// entries, or with a replaced audit key): their hash chain is checked first, and only the
/// intact prefix is keyed, so keying never vouches for an earlier edit. Appends an
/// `audit.keyed` entry saying up to which entry keys were added afterwards. Returns that entry
/// number (0 for an empty chain).
async fn key_existing_entries(
    store: &dyn Store,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let entries = store.audit_chain().await?;
    let key = store.audit_key();
    let (through, broken) = match crate::audit::verify_unkeyed_chain(&entries) {
        Ok(n) => (i64::try_from(n).unwrap_or(i64::MAX), None),
        Err(broken) => (broken.id - 1, Some(broken)),
    };
    if let Some(broken) = &broken {
        tracing::error!(
            entry = broken.id,
            reason = %broken.reason,
            "the audit chain was already broken before it was keyed; entries from there on stay unkeyed and `latchctl audit verify` keeps reporting the break"
        );
    }
    let event = AuditEvent::new("control_plane", "audit.keyed").detail(serde_json::json!({
        "reason": reason,
        "key_id": key.key_id(),
        "public_key": key.public_key(),
        "keyed_afterwards_through": through,
        "unkeyed_chain_break": broken,
    }));
    store.key_audit_entries(through, &event, now).await?;
    Ok(through)
}

fn finish_audit_key(pending: &Path, path: &Path) -> Result<(), DataDirError> {
    std::fs::rename(pending, path)
        .and_then(|()| sync_parent(path))
        .map_err(|source| DataDirError::Io {
            action: "rename the new audit key to",
            path: path.to_owned(),
            source,
        })
}

impl DataDir {
    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Rotates the vault's master key ([`crate::vault::rotate_master_key`]: every data key
    /// re-wrapped in one audited transaction, then the key file replaced). Run it with the
    /// server stopped; from then on only the new key opens the database.
    pub async fn rotate_master_key(&mut self) -> Result<Rotated, DataDirError> {
        let (new, rotated) = crate::vault::rotate_master_key(
            self.store.as_ref(),
            &self.master_key_files,
            &self.master_key,
            crate::vault::CONTROL_PLANE,
            Utc::now(),
        )
        .await?;
        self.master_key = Arc::new(new);
        Ok(rotated)
    }

    /// The private CA's TLS identity, with a server certificate for the loopback names plus
    /// `names`. The CA is made on first use in a new data directory only; a missing or
    /// different CA afterwards is refused unless [`Options::new_ca`] (agents pinned it).
    pub async fn private_ca(&self, names: &[String]) -> Result<TlsIdentity, DataDirError> {
        let pin = self.store.key_pin(PinnedKey::Ca).await?;
        let cert_path = self.dir.join(CA_CERT_FILE);
        if let Some(identity) = crate::tls::load(&self.dir, names)? {
            match pin.as_deref() {
                Some(pin) if pin == identity.ca_fingerprint => {}
                Some(pin) => {
                    return Err(CA_TEXT.mismatch(cert_path, pin, &identity.ca_fingerprint));
                }
                None => {
                    let event = AuditEvent::new("control_plane", "tls.ca_recorded")
                        .detail(serde_json::json!({"fingerprint": identity.ca_fingerprint}));
                    self.store
                        .set_key_pin(PinnedKey::Ca, &identity.ca_fingerprint, &event, Utc::now())
                        .await?;
                }
            }
            return Ok(identity);
        }
        let event = match pin.as_deref() {
            None if !self.initialised_before_pins => {
                AuditEvent::new("control_plane", "tls.ca_created")
            }
            _ if self.new_ca => {
                let hosts = host_count(self.store.as_ref()).await?;
                tracing::warn!(
                    hosts,
                    "made a new private CA (--new-ca): every enrolled host must be enrolled again"
                );
                AuditEvent::new(crate::enroll::CONTROL_PLANE, "tls.ca_replaced")
                    .detail(serde_json::json!({"previous": pin, "hosts_to_enroll_again": hosts}))
            }
            _ => return Err(CA_TEXT.missing(cert_path, pin.as_deref())),
        };
        crate::tls::create_ca(&self.dir)?;
        let identity = crate::tls::load(&self.dir, names)?.ok_or_else(|| DataDirError::Io {
            action: "read back the new CA",
            path: cert_path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let mut detail = event.detail.clone();
        if let Some(object) = detail.as_object_mut() {
            object.insert(
                "fingerprint".into(),
                serde_json::json!(identity.ca_fingerprint),
            );
        }
        self.store
            .set_key_pin(
                PinnedKey::Ca,
                &identity.ca_fingerprint,
                &event.detail(detail),
                Utc::now(),
            )
            .await?;
        Ok(identity)
    }
}
