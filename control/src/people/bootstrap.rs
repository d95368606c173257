//! The bootstrap admin: the `pam_admin` service user made at the first start (its API key is
//! `admin.token`), and the migration of an older installation's admin tokens to its keys.

use chrono::Utc;
use latch_common::authz::Role;

use super::{API_KEY_PREFIX, BOOTSTRAP_ADMIN, BOOTSTRAP_ADMIN_ID};
use crate::audit::AuditEvent;
use crate::secret::new_token;
use crate::store::Store;
use crate::store::people::{
    ApiKeyRecord, BindingSubject, PrincipalKind, PrincipalRecord, RoleBinding,
};

/// Why the bootstrap admin could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The random generator failed.
    #[error(transparent)]
    Random(#[from] crate::secret::RandomError),
    /// The admin token file could not be written.
    #[error(
        "cannot write the admin token: {0}; check the data directory's permissions and free space"
    )]
    Save(std::io::Error),
}

fn new_key_id() -> Result<String, crate::secret::RandomError> {
    let bytes = crate::secret::random_bytes::<10>()?;
    Ok(format!("key_{}", crate::secret::hex(&bytes)))
}

/// What [`bootstrap`] found or did.
#[derive(Debug)]
pub enum Bootstrap {
    /// People exist already: nothing to do.
    Existing,
    /// The admin tokens of an older installation became API keys of the bootstrap admin (the
    /// `admin.token` file keeps working).
    Migrated(usize),
    /// A new installation: the bootstrap admin was made with this API key (to be written to
    /// `admin.token`, and shown nowhere else).
    Created(String),
}

/// Makes sure the bootstrap admin exists: at the first start a `pam_admin` service user with a
/// new API key; on a database made before people and roles, its admin tokens become that
/// user's API keys (their stored SHA-256 converted to keyed hashes), all in one transaction.
///
/// A new key is handed to `save_key` (which writes `admin.token`) before it is stored, so a
/// crash in between leaves a file whose key is not yet valid and the next start makes another,
/// never a stored key that no file holds.
pub async fn bootstrap(
    store: &dyn Store,
    save_key: impl FnOnce(&str) -> std::io::Result<()>,
) -> Result<Bootstrap, BootstrapError> {
    let now = Utc::now();
    let legacy = store.legacy_admin_tokens().await?;
    if legacy.is_empty() && store.has_principals().await? {
        return Ok(Bootstrap::Existing);
    }
    let principal = PrincipalRecord {
        id: BOOTSTRAP_ADMIN_ID.to_owned(),
        kind: PrincipalKind::Service,
        name: BOOTSTRAP_ADMIN.to_owned(),
        display_name: "bootstrap admin".to_owned(),
        email: None,
        idp: None,
        password_hash: None,
        disabled_at: None,
        created_at: now,
        last_seen_at: None,
    };
    let binding = RoleBinding {
        id: "rb_bootstrap_admin".to_owned(),
        role: Role::PamAdmin,
        subject: BindingSubject::Principal(BOOTSTRAP_ADMIN_ID.to_owned()),
        selector: None,
        created_at: now,
    };
    let key = store.audit_key();
    let record = |id: String| ApiKeyRecord {
        id,
        principal_id: BOOTSTRAP_ADMIN_ID.to_owned(),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    if legacy.is_empty() {
        let api_key = new_token(API_KEY_PREFIX)?;
        let keys = [(record(new_key_id()?), key.credential_hash(&api_key))];
        save_key(&api_key).map_err(BootstrapError::Save)?;
        let event = AuditEvent::new("control_plane", "service_user.bootstrap")
            .detail(serde_json::json!({"service_user": BOOTSTRAP_ADMIN, "role": "pam_admin"}));
        store
            .bootstrap_admin(&principal, &binding, &keys, event, now)
            .await?;
        return Ok(Bootstrap::Created(api_key));
    }
    let mut keys = Vec::with_capacity(legacy.len());
    for sha256 in &legacy {
        keys.push((record(new_key_id()?), key.credential_hash_of_sha256(sha256)));
    }
    let event =
        AuditEvent::new("control_plane", "admin_token.migrated").detail(serde_json::json!({
            "service_user": BOOTSTRAP_ADMIN,
            "role": "pam_admin",
            "keys": keys.len(),
        }));
    store
        .bootstrap_admin(&principal, &binding, &keys, event, now)
        .await?;
    Ok(Bootstrap::Migrated(keys.len()))
}
