//! A person's own sessions: which are live (where and how they began, when they end) and
//! ending one, or every one but the current, at once — for a person who signed in somewhere
//! they no longer trust. Each session is its owner's only: another's is "not found".

use chrono::Utc;
use latch_common::people::SessionView;

use super::Authority;
use crate::store::people::SessionRecord;
use crate::{Control, ControlError};

/// At most this many sessions are listed (the newest).
pub const MAX_LISTED_SESSIONS: u32 = 100;

impl Control {
    /// The caller's live sessions, newest first (at most [`MAX_LISTED_SESSIONS`]).
    pub async fn own_sessions(&self, by: &Authority) -> Result<Vec<SessionRecord>, ControlError> {
        Ok(self
            .store
            .live_sessions(&by.principal.id, Utc::now(), MAX_LISTED_SESSIONS)
            .await?)
    }

    /// The caller's live sessions as shown ([`SessionView`], the one in use marked `current`).
    pub async fn session_views(&self, by: &Authority) -> Result<Vec<SessionView>, ControlError> {
        Ok(self
            .own_sessions(by)
            .await?
            .into_iter()
            .map(|s| SessionView {
                current: s.id == by.session.id,
                id: s.id,
                kind: s.kind.as_str().to_owned(),
                created_at: s.created_at,
                expires_at: s.expires_at,
                mfa_at: s.mfa_at,
                address: s.address,
            })
            .collect())
    }

    /// Ends the caller's live session `id` at once (audited as `session.end`); its token stops
    /// working. Another person's session, or one already ended, is not found.
    pub async fn end_own_session(&self, by: &Authority, id: &str) -> Result<(), ControlError> {
        let now = Utc::now();
        let own = self
            .store
            .live_sessions(&by.principal.id, now, u32::MAX)
            .await?
            .into_iter()
            .any(|s| s.id == id);
        let not_found = || ControlError::NotFound {
            what: "session",
            key: id.to_owned(),
        };
        if !own {
            return Err(not_found());
        }
        let event = by
            .event("session.end")
            .detail(serde_json::json!({"session_id": id}));
        if self.store.revoke_session(id, event, now).await? {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    /// Ends every live session of the caller except the one it is using; returns how many.
    pub async fn end_other_sessions(&self, by: &Authority) -> Result<u64, ControlError> {
        let now = Utc::now();
        let mut ended = 0;
        for session in self
            .store
            .live_sessions(&by.principal.id, now, u32::MAX)
            .await?
        {
            if session.id == by.session.id {
                continue;
            }
            let event = by
                .event("session.end")
                .detail(serde_json::json!({"session_id": session.id, "others": true}));
            if self.store.revoke_session(&session.id, event, now).await? {
                ended += 1;
            }
        }
        Ok(ended)
    }
}
