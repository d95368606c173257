//! A person's own sessions: which are live (where and how they began, when they end) and
//! ending one, or every one but the current, at once — for a person who signed in somewhere
//! they no longer trust. Each session is its owner's only: another's is "not found".
//!
//! A service user's sessions are the tokens its API keys were exchanged for, usually held by
//! separate pipelines: a service token sees and ends only itself. Ending the others is
//! `users.manage`'s (revoking the API key, or disabling the service user).

use chrono::Utc;
use latch_common::people::SessionView;

use super::Authority;
use crate::store::people::{EndSessions, PrincipalKind, SessionRecord};
use crate::{Control, ControlError};

/// At most this many sessions are listed (the newest, and always the one in use).
pub const MAX_LISTED_SESSIONS: u32 = 100;

impl Control {
    /// The caller's live sessions, newest first: at most [`MAX_LISTED_SESSIONS`], always with
    /// the one in use. A service token's list is itself.
    pub async fn own_sessions(&self, by: &Authority) -> Result<Vec<SessionRecord>, ControlError> {
        let mut sessions = self
            .store
            .live_sessions(&by.principal.id, Utc::now(), MAX_LISTED_SESSIONS)
            .await?;
        if by.principal.kind == PrincipalKind::Service {
            sessions.retain(|s| s.id == by.session.id);
        }
        if !sessions.iter().any(|s| s.id == by.session.id) {
            sessions.push(by.session.clone());
        }
        Ok(sessions)
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

    /// Ends the caller's live session `id` at once (audited as `session.end`, with the session
    /// that ended it); its token stops working. Another person's session, one already over, or
    /// for a service token any but itself, is not found.
    pub async fn end_own_session(&self, by: &Authority, id: &str) -> Result<(), ControlError> {
        let not_found = || ControlError::NotFound {
            what: "session",
            key: id.to_owned(),
        };
        if by.principal.kind == PrincipalKind::Service && id != by.session.id {
            return Err(not_found());
        }
        let event = by.event("session.end").detail(serde_json::json!({
            "by_session": by.session.id,
        }));
        let ended = self
            .store
            .end_sessions(&by.principal.id, EndSessions::One(id), event, Utc::now())
            .await?;
        if ended.is_empty() {
            Err(not_found())
        } else {
            Ok(())
        }
    }

    /// Ends every live session of the caller except the one it is using, in one step (one
    /// `session.end` entry naming them); returns how many. Refused to a service token.
    pub async fn end_other_sessions(&self, by: &Authority) -> Result<u64, ControlError> {
        if by.principal.kind == PrincipalKind::Service {
            return Err(ControlError::Forbidden(format!(
                "{} is a service token: it cannot end the service user's other tokens; an admin with users.manage revokes the API key they came from (latchctl service-users keys revoke) or disables the service user",
                by.actor()
            )));
        }
        let event = by.event("session.end").detail(serde_json::json!({
            "by_session": by.session.id,
            "others": true,
        }));
        let ended = self
            .store
            .end_sessions(
                &by.principal.id,
                EndSessions::AllBut(&by.session.id),
                event,
                Utc::now(),
            )
            .await?;
        Ok(ended.len() as u64)
    }
}
