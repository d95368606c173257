//! Organizations and their data keys: each organization has its own random AES-256 data key,
//! stored only wrapped by the master key (bound to the organization's id), and a canary — a
//! known text sealed under the data key — that proves at start that the master key opens it.

use chrono::{DateTime, Utc};

use super::envelope::{EnvelopeError, KEY_LEN, SecretKey};
use super::{VaultError, random_id};
use crate::audit::AuditEvent;
use crate::store::Store;
use crate::store::vault::{OrganizationRecord, OrganizationRefusal};

/// The organization made at first start.
pub const DEFAULT_ORGANIZATION: &str = "default";

/// The text sealed as every organization's canary.
const CANARY: &[u8] = b"latch organization canary v1";

/// The associated data of an organization's canary (its data key is bound to the bare id).
fn canary_record(organization_id: &str) -> String {
    format!("{organization_id}/canary")
}

/// A new organization `name` with a fresh data key wrapped under `master` (nothing stored).
pub fn new_organization(
    master: &SecretKey,
    name: &str,
    now: DateTime<Utc>,
) -> Result<OrganizationRecord, EnvelopeError> {
    let id = random_id("org_")?;
    let data_key = SecretKey::generate(random_id("dk_")?)?;
    Ok(OrganizationRecord {
        wrapped_data_key: master.seal(&id, data_key.expose_secret_bytes())?,
        canary: data_key.seal(&canary_record(&id), CANARY)?,
        data_key_id: data_key.id().to_owned(),
        id,
        name: name.to_owned(),
        created_at: now,
    })
}

/// Makes and stores organization `name` (audited as `organization.created` by `actor`).
pub async fn create_organization(
    store: &dyn Store,
    master: &SecretKey,
    name: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<OrganizationRecord, VaultError> {
    let organization = new_organization(master, name, now)?;
    let event = AuditEvent::new(actor, "organization.created").detail(serde_json::json!({
        "organization_id": organization.id,
        "name": organization.name,
        "data_key_id": organization.data_key_id,
        "master_key_id": master.id(),
    }));
    match store.insert_organization(&organization, event, now).await? {
        Ok(()) => Ok(organization),
        Err(OrganizationRefusal::NameTaken) => Err(VaultError::OrganizationExists {
            name: name.to_owned(),
        }),
    }
}

/// The data key of `organization`, unwrapped with `master`, after its canary was opened with it.
pub fn open_data_key(
    master: &SecretKey,
    organization: &OrganizationRecord,
) -> Result<SecretKey, EnvelopeError> {
    let raw = master.open(&organization.id, &organization.wrapped_data_key)?;
    let raw: [u8; KEY_LEN] = raw.try_into().map_err(|_| EnvelopeError::Malformed {
        detail: "a wrapped data key is not 32 bytes long",
    })?;
    let key = SecretKey::from_bytes(organization.data_key_id.clone(), raw)?;
    let record = canary_record(&organization.id);
    if key.open(&record, &organization.canary)? != CANARY {
        return Err(EnvelopeError::Rejected {
            key_id: key.id().to_owned(),
            record,
        });
    }
    Ok(key)
}
