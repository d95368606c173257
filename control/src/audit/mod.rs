//! The audit trail: every security-relevant action, written by the store in the same
//! transaction as the change it records, into an append-only table where each entry commits to
//! the previous one (SHA-256 over the entry's fields and the previous hash) and carries a MAC
//! (HMAC-SHA256 under the audit key, kept outside the database — [`key`]). Signed checkpoints of
//! the head ([`checkpoint`]), kept outside the database too, reveal a removed tail. Secrets are
//! never part of an entry: tokens appear as a short prefix of their hash at most.
//!
//! [`verify_chain`] checks ids, links, hashes and MACs; [`check_checkpoint`] checks that the
//! chain still holds a checkpoint's entry with that hash.

pub mod checkpoint;
pub mod head;
pub mod key;

use chrono::{DateTime, Utc};
use ring::digest;
use serde::{Deserialize, Serialize};

use crate::secret::hex;

pub use checkpoint::Checkpoint;
pub use key::AuditKey;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An action to record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Who did it: `admin`, `host:<id>`, `enroll_token:<hash prefix>`, `control_plane`, `anonymous`.
    pub actor: String,
    /// What: `host.enroll`, `job.create`, `job.deliver`, `job.outcome`, `job.rejected`, …
    pub action: &'static str,
    /// The host concerned.
    pub host_id: Option<String>,
    /// The job concerned.
    pub job_id: Option<String>,
    /// Details (JSON object; never a secret).
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event with no host, job or detail.
    pub fn new(actor: impl Into<String>, action: &'static str) -> Self {
        AuditEvent {
            actor: actor.into(),
            action,
            host_id: None,
            job_id: None,
            detail: serde_json::json!({}),
        }
    }

    /// Names the host.
    pub fn host(mut self, host_id: &str) -> Self {
        self.host_id = Some(host_id.to_owned());
        self
    }

    /// Names the job.
    pub fn job(mut self, job_id: &str) -> Self {
        self.job_id = Some(job_id.to_owned());
        self
    }

    /// Adds details: the keys of an object join those already set (the request's address
    /// set by [`Actor::event`] stays); anything else replaces them.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        match (&mut self.detail, detail) {
            (serde_json::Value::Object(current), serde_json::Value::Object(more)) => {
                current.extend(more);
            }
            (current, detail) => *current = detail,
        }
        self
    }
}

/// Who asked for a change, and from which network address: what every audit entry of a
/// request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The audit actor: `user:<name>`, `service:<name>`, `host:<id>`, `control_plane`.
    pub name: String,
    /// The address the request came from (`None` for work the control plane does itself).
    pub address: Option<String>,
}

impl Actor {
    /// An actor with no request address (the control plane's own work, tests).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            address: None,
        }
    }

    /// An event by this actor, with the request's address in its details.
    pub fn event(&self, action: &'static str) -> AuditEvent {
        let event = AuditEvent::new(&self.name, action);
        match &self.address {
            Some(address) => event.detail(serde_json::json!({"address": address})),
            None => event,
        }
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// The host concerned.
    pub host_id: Option<String>,
    /// The job concerned.
    pub job_id: Option<String>,
    /// Details, JSON text exactly as hashed.
    pub detail: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
    /// HMAC-SHA256 of the hash under the current audit key (absent if it has none).
    #[serde(default)]
    pub mac: Option<String>,
}

/// The hash of an entry: SHA-256 over its fields, length-prefixed so no two field lists collide.
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    id: i64,
    at_millis: i64,
    actor: &str,
    action: &str,
    host_id: Option<&str>,
    job_id: Option<&str>,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let id = id.to_string();
    let at = at_millis.to_string();
    for field in [
        id.as_str(),
        at.as_str(),
        actor,
        action,
        host_id.unwrap_or("\u{0}"),
        job_id.unwrap_or("\u{0}"),
        detail,
        prev_hash,
    ] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    hex(ctx.finish().as_ref())
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChainBreak {
    /// The first entry that does not verify.
    pub id: i64,
    /// Why.
    pub reason: String,
}

/// Checks a chain given in id order: ids without gaps, each entry committing to the previous
/// one, each hash matching its entry and each MAC valid under `key`. `Ok(n)` with the number of
/// entries, or the first break.
pub fn verify_chain(entries: &[AuditEntry], key: &AuditKey) -> Result<usize, ChainBreak> {
    check_entries(entries, Some(key))
}

/// Checks ids, links and hashes only — what the chain proved before entries were keyed (used once,
/// when existing entries are keyed).
pub fn verify_unkeyed_chain(entries: &[AuditEntry]) -> Result<usize, ChainBreak> {
    check_entries(entries, None)
}

fn check_entries(entries: &[AuditEntry], key: Option<&AuditKey>) -> Result<usize, ChainBreak> {
    let mut prev_hash = GENESIS.to_owned();
    let mut prev_id = 0;
    for entry in entries {
        let fail = |reason: &str| ChainBreak {
            id: entry.id,
            reason: reason.to_owned(),
        };
        if entry.id != prev_id + 1 {
            return Err(fail(&format!(
                "entry {} follows entry {prev_id}: entries are missing",
                entry.id
            )));
        }
        if entry.prev_hash != prev_hash {
            return Err(fail(
                "it does not commit to the previous entry (an entry before it was changed or removed)",
            ));
        }
        let expected = entry_hash(
            entry.id,
            entry.at.timestamp_millis(),
            &entry.actor,
            &entry.action,
            entry.host_id.as_deref(),
            entry.job_id.as_deref(),
            &entry.detail,
            &entry.prev_hash,
        );
        if entry.hash != expected {
            return Err(fail(
                "its content does not match its hash (the entry was edited)",
            ));
        }
        if let Some(key) = key {
            match &entry.mac {
                None => {
                    return Err(fail(&format!(
                        "it has no MAC under the audit key {} (it was written without the key, or its MAC was removed)",
                        key.key_id()
                    )));
                }
                Some(mac) if !key.entry_mac_is_valid(&entry.hash, mac) => {
                    return Err(fail(
                        "its MAC does not verify: the entry was written or rewritten by someone without the audit key",
                    ));
                }
                Some(_) => {}
            }
        }
        prev_hash = entry.hash.clone();
        prev_id = entry.id;
    }
    Ok(entries.len())
}

/// Checks that `checkpoint` was signed by `key` and that the chain (in id order) still holds its
/// entry with its hash: a removed tail or rewritten history up to that entry is a break.
pub fn check_checkpoint(
    entries: &[AuditEntry],
    key: &AuditKey,
    checkpoint: &Checkpoint,
) -> Result<(), ChainBreak> {
    let at = checkpoint
        .at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let fail = |id: i64, reason: String| Err(ChainBreak { id, reason });
    if let Err(problem) = checkpoint.check_signature(key) {
        return fail(checkpoint.id, problem);
    }
    if checkpoint.id == 0 {
        return if checkpoint.hash == GENESIS {
            Ok(())
        } else {
            fail(0, "the checkpoint of an empty chain names a hash".into())
        };
    }
    let last = entries.last().map_or(0, |e| e.id);
    let found = usize::try_from(checkpoint.id - 1)
        .ok()
        .and_then(|i| entries.get(i))
        .filter(|e| e.id == checkpoint.id);
    match found {
        None if checkpoint.id > last => fail(
            last + 1,
            format!(
                "the chain ends at entry {last}, but the checkpoint of {at} holds entry {}: entries {}..={} were removed from the end",
                checkpoint.id,
                last + 1,
                checkpoint.id
            ),
        ),
        None => fail(
            checkpoint.id,
            format!("the checkpoint of {at} holds this entry, but it is missing"),
        ),
        Some(entry) if entry.hash != checkpoint.hash => fail(
            checkpoint.id,
            format!(
                "it differs from the checkpoint of {at}: the chain up to this entry was rewritten"
            ),
        ),
        Some(_) => Ok(()),
    }
}

/// One checkpoint checked against the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointCheck {
    /// Where it came from: `audit.head` (kept by the server) or `supplied` (exported earlier).
    pub source: String,
    /// The entry it holds.
    pub id: i64,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// Whether the chain still holds it.
    pub ok: bool,
    /// Why not.
    pub problem: Option<ChainBreak>,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verification {
    /// The chain is intact and holds every checkpoint checked.
    pub ok: bool,
    /// Entries in the chain.
    pub entries: usize,
    /// The first entry that breaks the chain, or where a checkpoint is not held.
    pub first_bad: Option<ChainBreak>,
    /// The checkpoints checked.
    pub checkpoints: Vec<CheckpointCheck>,
    /// The audit key's id.
    pub key_id: String,
    /// The checkpoint-signing public key (base64).
    pub public_key: String,
}

/// Verifies `entries` and checks each `(source, checkpoint)` against them.
pub fn verify(
    entries: &[AuditEntry],
    key: &AuditKey,
    checkpoints: &[(&str, &Checkpoint)],
) -> Verification {
    let chain = verify_chain(entries, key);
    let checks: Vec<CheckpointCheck> = checkpoints
        .iter()
        .map(|(source, checkpoint)| {
            let problem = check_checkpoint(entries, key, checkpoint).err();
            CheckpointCheck {
                source: (*source).to_owned(),
                id: checkpoint.id,
                at: checkpoint.at,
                ok: problem.is_none(),
                problem,
            }
        })
        .collect();
    let first_bad = chain
        .clone()
        .err()
        .or_else(|| checks.iter().find_map(|c| c.problem.clone()));
    Verification {
        ok: first_bad.is_none(),
        entries: entries.len(),
        first_bad,
        checkpoints: checks,
        key_id: key.key_id().to_owned(),
        public_key: key.public_key().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key() -> AuditKey {
        AuditKey::from_seed([1; key::SEED_LEN]).unwrap()
    }

    fn entry(id: i64, detail: &str, prev: &str, key: &AuditKey) -> AuditEntry {
        let at = Utc.timestamp_millis_opt(1_000 * id).unwrap();
        let hash = entry_hash(
            id,
            at.timestamp_millis(),
            "admin",
            "job.create",
            Some("h"),
            None,
            detail,
            prev,
        );
        AuditEntry {
            id,
            at,
            actor: "admin".into(),
            action: "job.create".into(),
            host_id: Some("h".into()),
            job_id: None,
            detail: detail.into(),
            prev_hash: prev.into(),
            mac: Some(key.entry_mac(&hash)),
            hash,
        }
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        let key = key();
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|id| {
                let entry = entry(id, &format!("{{\"n\":{id}}}"), &prev, &key);
                prev = entry.hash.clone();
                entry
            })
            .collect()
    }

    #[test]
    fn a_whole_chain_verifies() {
        assert_eq!(verify_chain(&chain(5), &key()), Ok(5));
        assert_eq!(verify_chain(&[], &key()), Ok(0));
    }

    #[test]
    fn any_single_change_is_found_at_its_entry() {
        let key = key();
        let mut edited = chain(5);
        edited[2].detail = "{\"n\":99}".into();
        assert_eq!(verify_chain(&edited, &key).unwrap_err().id, 3);
        let mut actor = chain(5);
        actor[0].actor = "host:x".into();
        assert_eq!(verify_chain(&actor, &key).unwrap_err().id, 1);
        let mut removed = chain(5);
        removed.remove(3);
        assert_eq!(verify_chain(&removed, &key).unwrap_err().id, 5);
        let mut rehashed = chain(5);
        rehashed[1].detail = "{}".into();
        rehashed[1].hash = entry_hash(
            2,
            rehashed[1].at.timestamp_millis(),
            "admin",
            "job.create",
            Some("h"),
            None,
            "{}",
            &rehashed[1].prev_hash,
        );
        assert_eq!(
            verify_chain(&rehashed, &key).unwrap_err().id,
            2,
            "re-hashing one entry without the key leaves its MAC wrong"
        );
    }

    #[test]
    fn finding_8_a_suffix_rehashed_without_the_key_is_found() {
        let key = key();
        let mut forged = chain(5);
        // An attacker without the key rewrites entry 3 and re-hashes everything after it with
        // plain SHA-256: ids, links and hashes are all consistent again.
        let mut prev = forged[1].hash.clone();
        for entry in forged.iter_mut().skip(2) {
            if entry.id == 3 {
                entry.detail = "{\"n\":\"forged\"}".into();
            }
            entry.prev_hash = prev.clone();
            entry.hash = entry_hash(
                entry.id,
                entry.at.timestamp_millis(),
                &entry.actor,
                &entry.action,
                entry.host_id.as_deref(),
                entry.job_id.as_deref(),
                &entry.detail,
                &entry.prev_hash,
            );
            prev = entry.hash.clone();
        }
        assert_eq!(
            verify_unkeyed_chain(&forged),
            Ok(5),
            "the unkeyed chain is fooled"
        );
        let broken = verify_chain(&forged, &key).unwrap_err();
        assert_eq!(broken.id, 3);
        assert!(broken.reason.contains("MAC"), "{}", broken.reason);
        // Entries signed with another key do not pass either, nor entries without a MAC.
        let other = AuditKey::from_seed([2; key::SEED_LEN]).unwrap();
        assert_eq!(verify_chain(&chain(5), &other).unwrap_err().id, 1);
        let mut unkeyed = chain(5);
        unkeyed[4].mac = None;
        assert_eq!(verify_chain(&unkeyed, &key).unwrap_err().id, 5);
    }

    #[test]
    fn finding_8_a_checkpoint_reveals_a_removed_tail_and_rewritten_history() {
        let key = key();
        let full = chain(6);
        let checkpoint = Checkpoint::sign(&key, 4, &full[3].hash, Utc::now());
        assert_eq!(check_checkpoint(&full, &key, &checkpoint), Ok(()));
        let report = verify(&full, &key, &[("supplied", &checkpoint)]);
        assert!(report.ok && report.checkpoints[0].ok, "{report:?}");

        // Tail truncation: the remaining chain is perfectly valid on its own.
        let truncated = &full[..3];
        assert_eq!(verify_chain(truncated, &key), Ok(3));
        let gone = check_checkpoint(truncated, &key, &checkpoint).unwrap_err();
        assert_eq!(gone.id, 4);
        assert!(
            gone.reason.contains("removed from the end"),
            "{}",
            gone.reason
        );
        let report = verify(truncated, &key, &[("audit.head", &checkpoint)]);
        assert!(!report.ok);
        assert_eq!(report.first_bad.unwrap().id, 4);

        // A checkpoint whose entry now has another hash.
        let mut rewritten = full.clone();
        rewritten[3].hash = "00".repeat(32);
        assert_eq!(
            check_checkpoint(&rewritten, &key, &checkpoint)
                .unwrap_err()
                .id,
            4
        );

        // An edited checkpoint, or one signed by another key, proves nothing.
        let mut edited = checkpoint.clone();
        edited.id = 2;
        edited.hash = full[1].hash.clone();
        assert!(check_checkpoint(&full, &key, &edited).is_err());
        let other = AuditKey::from_seed([3; key::SEED_LEN]).unwrap();
        let foreign = Checkpoint::sign(&other, 4, &full[3].hash, Utc::now());
        assert!(foreign.signature_is_valid());
        assert!(check_checkpoint(&full, &key, &foreign).is_err());

        // The empty chain's checkpoint.
        let empty = Checkpoint::sign(&key, 0, GENESIS, Utc::now());
        assert_eq!(check_checkpoint(&[], &key, &empty), Ok(()));
    }
}
