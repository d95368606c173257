//! The audit trail: every security-relevant action, written by the store in the same
//! transaction as the change it records, into an append-only table where each entry commits to
//! the previous one (SHA-256 over the entry's fields and the previous hash). Secrets are never
//! part of an entry: tokens appear as a short prefix of their hash at most.

use chrono::{DateTime, Utc};
use ring::digest;
use serde::{Deserialize, Serialize};

use crate::secret::hex;

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

    /// Sets the details.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The first entry that does not verify.
    pub id: i64,
    /// Why.
    pub reason: String,
}

/// Checks a chain given in id order. `Ok(n)` with the number of entries, or the first break.
pub fn verify_chain(entries: &[AuditEntry]) -> Result<usize, ChainBreak> {
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
        prev_hash = entry.hash.clone();
        prev_id = entry.id;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|id| {
                let at = Utc.timestamp_millis_opt(1_000 * id).unwrap();
                let detail = format!("{{\"n\":{id}}}");
                let hash = entry_hash(
                    id,
                    at.timestamp_millis(),
                    "admin",
                    "job.create",
                    Some("h"),
                    None,
                    &detail,
                    &prev,
                );
                let entry = AuditEntry {
                    id,
                    at,
                    actor: "admin".into(),
                    action: "job.create".into(),
                    host_id: Some("h".into()),
                    job_id: None,
                    detail,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                entry
            })
            .collect()
    }

    #[test]
    fn a_whole_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
        assert_eq!(verify_chain(&[]), Ok(0));
    }

    #[test]
    fn any_single_change_is_found_at_its_entry() {
        let mut edited = chain(5);
        edited[2].detail = "{\"n\":99}".into();
        assert_eq!(verify_chain(&edited).unwrap_err().id, 3);
        let mut actor = chain(5);
        actor[0].actor = "host:x".into();
        assert_eq!(verify_chain(&actor).unwrap_err().id, 1);
        let mut removed = chain(5);
        removed.remove(3);
        assert_eq!(verify_chain(&removed).unwrap_err().id, 5);
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
            verify_chain(&rehashed).unwrap_err().id,
            3,
            "re-hashing one entry breaks the next"
        );
    }
}
