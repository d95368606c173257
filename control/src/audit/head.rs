//! The head the control plane keeps outside the database: the latest signed checkpoint, in
//! `audit.head` in the data directory (in memory only for a control plane without one). The
//! server's periodic sweep refreshes it when the chain grew — but only if the chain still holds
//! the recorded head, so a removed tail stays visible to `audit verify` instead of being
//! overwritten. Verification and checkpoints are [`Control`] operations.

use std::path::PathBuf;

use chrono::Utc;
use tokio::sync::Mutex;

use super::{Checkpoint, GENESIS, Verification};
use crate::files::{Existing, write_file};
use crate::{Control, ControlError};

/// Where the recorded head is kept.
pub(crate) struct AuditHead {
    path: Option<PathBuf>,
    state: Mutex<HeadState>,
}

#[derive(Default)]
struct HeadState {
    /// The head last written (or read).
    last: Option<Checkpoint>,
    /// The chain head at which a missing recorded head was last reported (reported once).
    reported: Option<(i64, String)>,
}

/// `source` of the server's own checkpoint in a [`Verification`].
pub const HEAD_SOURCE: &str = "audit.head";
/// `source` of a checkpoint supplied to a verification.
pub const SUPPLIED_SOURCE: &str = "supplied";

impl AuditHead {
    pub(crate) fn in_memory() -> Self {
        AuditHead {
            path: None,
            state: Mutex::new(HeadState::default()),
        }
    }

    pub(crate) fn in_file(path: PathBuf) -> Self {
        AuditHead {
            path: Some(path),
            state: Mutex::new(HeadState::default()),
        }
    }

    /// The recorded head: the file when there is one (it survives restarts), else memory.
    async fn recorded(&self) -> Result<Option<Checkpoint>, ControlError> {
        let state = self.state.lock().await;
        self.recorded_in(&state)
    }

    /// [`AuditHead::recorded`] for a caller that already holds the state.
    fn recorded_in(&self, state: &HeadState) -> Result<Option<Checkpoint>, ControlError> {
        let Some(path) = &self.path else {
            return Ok(state.last.clone());
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ControlError::Conflict(format!(
                    "{} is not a checkpoint ({e}); it was damaged or edited — move it away (keep it for review) and the server writes a new one",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ControlError::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    fn write(&self, checkpoint: &Checkpoint) -> Result<(), ControlError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(checkpoint)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        write_file(path, &json, 0o600, Existing::Replace)
            .map_err(|e| ControlError::Internal(format!("cannot write {}: {e}", path.display())))
    }
}

impl Control {
    /// Verifies the whole audit chain (ids, links, hashes, MACs) and that it still holds the
    /// head recorded outside the database.
    pub async fn verify_audit(&self) -> Result<Verification, ControlError> {
        self.verify_audit_with(&[]).await
    }

    /// [`Control::verify_audit`], also checking checkpoints exported earlier: each must be
    /// signed by this control plane's audit key, and the chain must still hold its entry with
    /// its hash.
    pub async fn verify_audit_with(
        &self,
        supplied: &[Checkpoint],
    ) -> Result<Verification, ControlError> {
        // The head first: it is written only after its entries, so a head read before the
        // chain is always held by an intact chain.
        let recorded = self.audit_head.recorded().await?;
        let entries = self.store.audit_chain().await?;
        let key = self.store.audit_key();
        let mut checkpoints: Vec<(&str, &Checkpoint)> = Vec::new();
        if let Some(head) = &recorded {
            checkpoints.push((HEAD_SOURCE, head));
        }
        checkpoints.extend(supplied.iter().map(|c| (SUPPLIED_SOURCE, c)));
        Ok(super::verify(&entries, &key, &checkpoints))
    }

    /// A signed checkpoint of the chain's head, to keep outside the control plane. Refused
    /// (conflict) if the chain does not verify: a checkpoint must not vouch for a broken
    /// chain. It also becomes the recorded head.
    pub async fn audit_checkpoint(&self) -> Result<Checkpoint, ControlError> {
        let mut state = self.audit_head.state.lock().await;
        let recorded = self.audit_head.recorded_in(&state)?;
        let entries = self.store.audit_chain().await?;
        let key = self.store.audit_key();
        let checks: Vec<(&str, &Checkpoint)> =
            recorded.iter().map(|head| (HEAD_SOURCE, head)).collect();
        let report = super::verify(&entries, &key, &checks);
        if let Some(bad) = report.first_bad {
            return Err(ControlError::Conflict(format!(
                "the audit chain does not verify (entry {}: {}), so no checkpoint is signed; see `latchctl audit verify`",
                bad.id, bad.reason
            )));
        }
        let (id, hash) = entries
            .last()
            .map_or((0, GENESIS.to_owned()), |e| (e.id, e.hash.clone()));
        let checkpoint = Checkpoint::sign(&key, id, &hash, Utc::now());
        if recorded.as_ref().is_none_or(|head| head.id <= id) {
            self.audit_head.write(&checkpoint)?;
            state.last = Some(checkpoint.clone());
            state.reported = None;
        }
        Ok(checkpoint)
    }

    /// Records the chain's current head outside the database if it moved (the server calls this
    /// every second). Refuses, once per head, when the chain no longer holds the recorded head
    /// (entries were removed or rewritten): the recorded head is kept as evidence. Returns the
    /// new head, if one was written.
    pub async fn refresh_audit_head(&self) -> Result<Option<Checkpoint>, ControlError> {
        let mut state = self.audit_head.state.lock().await;
        let Some((id, hash)) = self.store.audit_head().await? else {
            return Ok(None);
        };
        let unchanged = |head: &Checkpoint| head.id == id && head.hash == hash;
        if state.reported.is_none() && state.last.as_ref().is_some_and(unchanged) {
            return Ok(None);
        }
        let recorded = self.audit_head.recorded_in(&state)?;
        if let Some(head) = &recorded {
            if unchanged(head) {
                state.last = recorded;
                state.reported = None;
                return Ok(None);
            }
            let held = head.id == 0
                || (head.id <= id
                    && self.store.audit_hash(head.id).await?.as_deref() == Some(&head.hash));
            if !held {
                let current = (id, hash);
                if state.reported.as_ref() == Some(&current) {
                    return Ok(None);
                }
                state.reported = Some(current);
                return Err(ControlError::Conflict(format!(
                    "the audit chain (now ending at entry {id}) no longer holds entry {} recorded in the head of {}: entries were removed or rewritten. The recorded head is kept; run `latchctl audit verify`. After restoring the database from a backup this is expected: review, then move {} away",
                    head.id,
                    head.at,
                    crate::files::AUDIT_HEAD_FILE
                )));
            }
        }
        let checkpoint = Checkpoint::sign(&self.store.audit_key(), id, &hash, Utc::now());
        self.audit_head.write(&checkpoint)?;
        state.last = Some(checkpoint.clone());
        state.reported = None;
        Ok(Some(checkpoint))
    }
}
