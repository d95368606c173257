//! Signed checkpoints of the audit chain's head: `{id, hash, at, public_key, signature}`, signed
//! with the Ed25519 key derived from the audit key. An operator exports one
//! (`latchctl audit checkpoint`) and keeps it outside the control plane; the server keeps the
//! latest in `audit.head`. A later `audit verify` with it reveals a removed tail or a rewritten
//! history up to its entry.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::AuditKey;

/// A signed statement "the chain had `id` entries, the last with hash `hash`, at `at`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The id of the chain's last entry (0 for an empty chain).
    pub id: i64,
    /// That entry's hash (the genesis hash for an empty chain).
    pub hash: String,
    /// When the checkpoint was made (millisecond precision).
    pub at: DateTime<Utc>,
    /// The checkpoint-signing public key (Ed25519, base64).
    pub public_key: String,
    /// The signature (base64) over the id, hash and time.
    pub signature: String,
}

fn message(id: i64, hash: &str, at: DateTime<Utc>) -> Vec<u8> {
    format!(
        "latch-audit-checkpoint-v1\n{id}\n{hash}\n{}",
        at.timestamp_millis()
    )
    .into_bytes()
}

impl Checkpoint {
    /// Signs the head `(id, hash)` at time `at` with `key`.
    pub fn sign(key: &AuditKey, id: i64, hash: &str, at: DateTime<Utc>) -> Checkpoint {
        let at = DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at);
        Checkpoint {
            id,
            hash: hash.to_owned(),
            at,
            public_key: key.public_key().to_owned(),
            signature: key.sign(&message(id, hash, at)),
        }
    }

    /// Whether the signature verifies with the public key the checkpoint names. (That says the
    /// document is unchanged; whether that key is this control plane's is
    /// [`Checkpoint::check_signature`].)
    pub fn signature_is_valid(&self) -> bool {
        let engine = base64::engine::general_purpose::STANDARD;
        let (Ok(public), Ok(signature)) = (
            engine.decode(&self.public_key),
            engine.decode(&self.signature),
        ) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&message(self.id, &self.hash, self.at), &signature)
            .is_ok()
    }

    /// Checks that the checkpoint was signed by `key` and not changed since.
    pub fn check_signature(&self, key: &AuditKey) -> Result<(), String> {
        if self.public_key != key.public_key() {
            return Err(format!(
                "the checkpoint was signed by audit key {}, not by this control plane's audit key {}",
                self.public_key,
                key.public_key()
            ));
        }
        if !self.signature_is_valid() {
            return Err(
                "the checkpoint's signature does not verify: the document was changed after it was signed"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_survives_json_and_any_edit_breaks_it() {
        let key = AuditKey::generate().unwrap();
        let checkpoint = Checkpoint::sign(&key, 7, &"ab".repeat(32), Utc::now());
        let json = serde_json::to_string(&checkpoint).unwrap();
        let back: Checkpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, checkpoint);
        assert_eq!(back.check_signature(&key), Ok(()));
        let mut later = back.clone();
        later.id = 6;
        assert!(later.check_signature(&key).is_err());
        let mut moved = back.clone();
        moved.at += chrono::Duration::seconds(1);
        assert!(!moved.signature_is_valid());
        let mut garbage = back;
        garbage.signature = "not base64!".into();
        assert!(!garbage.signature_is_valid());
        assert!(
            serde_json::from_str::<Checkpoint>(&json.replace("\"id\"", "\"extra\":1,\"id\""))
                .is_err()
        );
    }
}
