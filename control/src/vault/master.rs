//! The master key: 32 random bytes in a file outside the database (`master.key` in the data
//! directory, 0600, or the file given with `--master-key-file` / `LATCH_MASTER_KEY_FILE`),
//! written as 64 hex digits. It only wraps the organizations' data keys. Its id (`mk_…`, from
//! a hash of the key) is written in front of every data key it wraps, so a start can tell which
//! key the database needs.
//!
//! **At start** ([`open_master_key`]) every organization's data key is unwrapped and its
//! canary opened: with another key, or without the file while organizations exist, the server
//! refuses to run and says which organization and what to do. A new key is made only while
//! there is no organization (the first start, which then makes the `default` organization).
//!
//! **Rotation** ([`rotate_master_key`]) is crash-safe in three steps: (1) the new key is
//! written durably to `master.key.next`; (2) one transaction re-wraps every data key under it
//! (audited); (3) `master.key.next` is renamed over `master.key`. Between (1) and (3) both
//! files exist, and the next start keeps the one the database's data keys name: after a crash
//! before the commit it drops the unused `master.key.next`; after the commit it finishes the
//! rename. The previous master key is not kept: back up the new one at once.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ring::digest;

use super::envelope::{EnvelopeError, KEY_LEN, SecretKey, key_id_of};
use super::organizations::{DEFAULT_ORGANIZATION, create_organization, open_data_key};
use super::{CONTROL_PLANE, VaultError};
use crate::audit::AuditEvent;
use crate::files::{Existing, MASTER_KEY_FILE, sync_parent, write_file};
use crate::secret::random_bytes;
use crate::store::Store;

/// Where the master key is, and its rotation's next key beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyFiles {
    path: PathBuf,
}

impl MasterKeyFiles {
    /// `explicit` (`--master-key-file`) if given, else `master.key` in the data directory `dir`.
    pub fn new(dir: &Path, explicit: Option<&Path>) -> MasterKeyFiles {
        MasterKeyFiles {
            path: explicit.map_or_else(|| dir.join(MASTER_KEY_FILE), Path::to_path_buf),
        }
    }

    /// The master key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The new key during a rotation: the master key file's name followed by `.next`.
    pub fn next_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".next");
        self.path.with_file_name(name)
    }
}

/// What a master-key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The id of the master key replaced.
    pub from: String,
    /// The id of the new master key.
    pub to: String,
    /// How many organizations' data keys were re-wrapped.
    pub organizations: u64,
}

/// The id of the master key `raw`: `mk_` and 16 hex digits of a SHA-256 of it.
fn master_key_id(raw: &[u8; KEY_LEN]) -> String {
    let mut input = b"latch master key id\0".to_vec();
    input.extend_from_slice(raw);
    let hash = digest::digest(&digest::SHA256, &input);
    format!("mk_{}", hex::encode(&hash.as_ref()[..8]))
}

fn master_key(raw: [u8; KEY_LEN]) -> Result<SecretKey, EnvelopeError> {
    SecretKey::from_bytes(master_key_id(&raw), raw)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VaultError {
    let path = path.to_owned();
    move |source| VaultError::Io {
        action,
        path,
        source,
    }
}

/// The master key in `path`, or `None` if there is no such file.
fn load(path: &Path) -> Result<Option<SecretKey>, VaultError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read the master key", path)(e)),
    };
    let bad = |detail: &'static str| VaultError::BadKeyFile {
        path: path.to_owned(),
        detail,
    };
    let bytes = hex::decode(text.trim()).map_err(|_| bad("it is not hex"))?;
    let raw: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|_| bad("it does not hold 32 bytes"))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the master key file can be read by other users: chmod 600 it"
        );
    }
    Ok(Some(master_key(raw)?))
}

/// Makes a new master key in `path` (0600; never over an existing file).
fn create(path: &Path, existing: Existing) -> Result<SecretKey, VaultError> {
    let raw = random_bytes::<KEY_LEN>().map_err(EnvelopeError::from)?;
    let text = format!("{}\n", hex::encode(raw));
    write_file(path, text.as_bytes(), 0o600, existing)
        .map_err(io_error("write the master key", path))?;
    Ok(master_key(raw)?)
}

/// Renames the rotation's next key over the master key file (step 3 of a rotation).
fn finish_rotation_files(files: &MasterKeyFiles) -> Result<(), VaultError> {
    std::fs::rename(files.next_path(), files.path())
        .and_then(|()| sync_parent(files.path()))
        .map_err(io_error("rename the new master key to", files.path()))
}

/// Removes the next key of a rotation that never committed (no data key is wrapped under it).
fn drop_unused_next(files: &MasterKeyFiles) -> Result<(), VaultError> {
    let next = files.next_path();
    tracing::warn!(
        path = %next.display(),
        "removing the new master key of a rotation interrupted before it was recorded; run the rotation again"
    );
    std::fs::remove_file(&next)
        .and_then(|()| sync_parent(&next))
        .map_err(io_error("remove the unused new master key", &next))
}

/// Loads the master key and proves it opens every organization's data key and canary (see the
/// module docs): finishes or drops an interrupted rotation, makes the key and the `default`
/// organization only while there is no organization, refuses a missing or different key.
pub async fn open_master_key(
    store: &dyn Store,
    files: &MasterKeyFiles,
    now: DateTime<Utc>,
) -> Result<SecretKey, VaultError> {
    let organizations = store.organizations().await?;
    let current = load(files.path())?;
    let next = load(&files.next_path())?;

    let Some(first) = organizations.first() else {
        let key = match (current, next) {
            (Some(current), next) => {
                if next.is_some() {
                    drop_unused_next(files)?;
                }
                current
            }
            (None, Some(next)) => {
                finish_rotation_files(files)?;
                next
            }
            (None, None) => create(files.path(), Existing::Refuse)?,
        };
        create_organization(store, &key, DEFAULT_ORGANIZATION, CONTROL_PLANE, now).await?;
        return Ok(key);
    };

    let wanted = key_id_of(&first.wrapped_data_key)
        .map_err(|source| VaultError::Unreadable {
            organization: first.name.clone(),
            source,
        })?
        .to_owned();
    let key = match (current, next) {
        (Some(current), next) if current.id() == wanted => {
            if next.is_some() {
                drop_unused_next(files)?;
            }
            current
        }
        (_, Some(next)) if next.id() == wanted => {
            finish_rotation_files(files)?;
            tracing::warn!("finished a master-key rotation interrupted after it was recorded");
            next
        }
        (None, _) => {
            return Err(VaultError::MasterKeyMissing {
                path: files.path().to_owned(),
                organizations: organizations.iter().map(|o| o.name.clone()).collect(),
                wanted,
            });
        }
        (Some(current), _) => {
            return Err(VaultError::WrongMasterKey {
                path: files.path().to_owned(),
                organization: first.name.clone(),
                found: current.id().to_owned(),
                wanted,
            });
        }
    };
    for organization in &organizations {
        match open_data_key(&key, organization) {
            Ok(_) => {}
            Err(EnvelopeError::WrongKey { found, .. }) => {
                return Err(VaultError::WrongMasterKey {
                    path: files.path().to_owned(),
                    organization: organization.name.clone(),
                    found: key.id().to_owned(),
                    wanted: found,
                });
            }
            Err(source) => {
                return Err(VaultError::Unreadable {
                    organization: organization.name.clone(),
                    source,
                });
            }
        }
    }
    Ok(key)
}

/// Steps 1 and 2 of a rotation (see the module docs): writes a new key to the next-key file,
/// then re-wraps every organization's data key under it in one audited transaction. The new
/// key is in use only after [`finish_rotation`] (or the next start) renames its file into
/// place. `current` must be the key [`open_master_key`] returned.
pub async fn rewrap_under_new_key(
    store: &dyn Store,
    files: &MasterKeyFiles,
    current: &SecretKey,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(SecretKey, Rotated), VaultError> {
    let organizations = store.organizations().await?;
    let mut rewrapped = Vec::with_capacity(organizations.len());
    let new = create(&files.next_path(), Existing::Replace)?;
    for organization in &organizations {
        let data_key =
            open_data_key(current, organization).map_err(|source| VaultError::Unreadable {
                organization: organization.name.clone(),
                source,
            })?;
        rewrapped.push((
            organization.id.clone(),
            new.seal(&organization.id, data_key.expose_secret_bytes())?,
        ));
    }
    let event = AuditEvent::new(actor, "master_key.rotated").detail(serde_json::json!({
        "from": current.id(),
        "to": new.id(),
        "organizations": rewrapped.len(),
    }));
    let count = store.rewrap_data_keys(&rewrapped, event, now).await?;
    let rotated = Rotated {
        from: current.id().to_owned(),
        to: new.id().to_owned(),
        organizations: count,
    };
    Ok((new, rotated))
}

/// Step 3 of a rotation: the new key's file replaces the master key file (atomic rename).
pub fn finish_rotation(files: &MasterKeyFiles) -> Result<(), VaultError> {
    finish_rotation_files(files)
}

/// Rotates the master key: a new key re-wraps every organization's data key (one audited
/// transaction), then replaces the master key file. Run it with the server stopped. Returns the
/// new key. The old key no longer opens anything in the database.
pub async fn rotate_master_key(
    store: &dyn Store,
    files: &MasterKeyFiles,
    current: &SecretKey,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(SecretKey, Rotated), VaultError> {
    let (new, rotated) = rewrap_under_new_key(store, files, current, actor, now).await?;
    finish_rotation(files)?;
    Ok((new, rotated))
}
