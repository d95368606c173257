//! MFA step-up: a TOTP factor per user (RFC 6238: SHA-1, 6 digits, 30-second steps, one step of
//! clock skew either way), and the check that a sensitive action was preceded by a recent second
//! factor in the same session.
//!
//! A code is accepted once: the step it belongs to must be later than every step accepted
//! before, decided by one conditional update in the store, so two requests racing with the same
//! code cannot both pass. The secret is sealed in the database under a key derived from the
//! audit key ([`crate::audit::AuditKey::seal`]), bound to the user's id.

use chrono::{DateTime, Duration, Utc};
use totp_rs::{Algorithm, TOTP};

use crate::Control;
use crate::error::ControlError;
use crate::people::Authority;
use crate::store::people::{PrincipalKind, TotpUse};

const DIGITS: usize = 6;
const STEP_SECONDS: u64 = 30;
const ISSUER: &str = "Latch";
/// Wrong codes after which a factor refuses every code for [`LOCK_FOR`].
pub const LOCK_AFTER: i64 = 5;
/// How long a factor stays locked after too many wrong codes.
pub const LOCK_FOR: Duration = Duration::minutes(5);

/// The associated data a TOTP secret is sealed under: purpose and owner.
fn seal_label(principal_id: &str) -> String {
    format!("totp\0{principal_id}")
}

/// An action that may need a recent second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SensitiveAction {
    /// Approving or denying an access request.
    Approve,
    /// Revealing a vault credential.
    Reveal,
    /// Break-glass access.
    BreakGlass,
    /// Changing access policies.
    ChangePolicy,
    /// Changing users, groups, service users or role bindings.
    ChangeRoles,
}

impl SensitiveAction {
    /// Whether a service user (which has no second factor) may do this without one: changing
    /// roles and policies may be automated (configuration as code); approving, revealing and
    /// break-glass are for people.
    pub fn allowed_to_service_users(self) -> bool {
        matches!(self, Self::ChangePolicy | Self::ChangeRoles)
    }

    /// Every sensitive action.
    pub const ALL: [SensitiveAction; 5] = [
        Self::Approve,
        Self::Reveal,
        Self::BreakGlass,
        Self::ChangePolicy,
        Self::ChangeRoles,
    ];

    /// Its name in configuration and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reveal => "reveal",
            Self::BreakGlass => "break_glass",
            Self::ChangePolicy => "change_policy",
            Self::ChangeRoles => "change_roles",
        }
    }
}

/// The actions `--mfa-required` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredActions(pub Vec<SensitiveAction>);

/// Parses `--mfa-required`: `all`, `none`, or a comma-separated list of action names (each
/// once).
pub fn parse_required_actions(text: &str) -> Result<RequiredActions, String> {
    match text.trim() {
        "all" => return Ok(RequiredActions(SensitiveAction::ALL.to_vec())),
        "none" => return Ok(RequiredActions(Vec::new())),
        _ => {}
    }
    let mut actions = Vec::new();
    for name in text.split(',').map(str::trim) {
        let action = SensitiveAction::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = SensitiveAction::ALL.iter().map(|a| a.as_str()).collect();
                format!(
                    "unknown action {name:?}: use all, none, or a comma-separated list of {}",
                    names.join(", ")
                )
            })?;
        if actions.contains(&action) {
            return Err(format!("{name} is listed twice"));
        }
        actions.push(action);
    }
    Ok(RequiredActions(actions))
}

/// Which actions need a recent second factor, and how recent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaPolicy {
    /// The actions that need one.
    pub required: Vec<SensitiveAction>,
    /// How long a second factor counts after it was shown.
    pub window: Duration,
}

impl Default for MfaPolicy {
    /// Every sensitive action needs a second factor from the last 10 minutes.
    fn default() -> Self {
        Self {
            required: SensitiveAction::ALL.to_vec(),
            window: Duration::minutes(10),
        }
    }
}

/// A new TOTP factor to add to an authenticator app.
#[derive(Debug)]
pub struct TotpEnrollment {
    /// The secret, base32 (shown once).
    pub secret_base32: String,
    /// The `otpauth://` URI (for a QR code).
    pub otpauth_uri: String,
}

fn totp(secret: Vec<u8>, account: &str) -> Result<TOTP, ControlError> {
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECONDS,
        secret,
        Some(ISSUER.to_owned()),
        account.replace(':', "_"),
    )
    .map_err(|e| ControlError::Internal(format!("cannot build the TOTP factor: {e}")))
}

/// The time step of `at`.
fn step_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(STEP_SECONDS as i64)
}

impl Authority {
    /// Refuses `action` unless this session showed a second factor within the policy's window
    /// (when the policy requires one for it). Service users authenticate with keys and have no
    /// second factor: they may change roles and policies without one (automation), and are
    /// refused the actions meant for people ([`SensitiveAction::allowed_to_service_users`]).
    pub fn require_mfa(
        &self,
        policy: &MfaPolicy,
        action: SensitiveAction,
        now: DateTime<Utc>,
    ) -> Result<(), ControlError> {
        if !policy.required.contains(&action) {
            return Ok(());
        }
        if self.principal.kind == PrincipalKind::Service {
            if action.allowed_to_service_users() {
                return Ok(());
            }
            return Err(ControlError::StepUpRequired(format!(
                "{} needs a second factor, which a service user cannot show; a person must do this",
                action.as_str()
            )));
        }
        // A factor "shown" in the future (a clock step back, a bad row) counts as none.
        match self.session.mfa_at {
            Some(at) if at <= now + Duration::seconds(5) && now - at <= policy.window => Ok(()),
            _ => Err(ControlError::StepUpRequired(format!(
                "{} needs a second factor shown in the last {} minutes: run `latchctl mfa verify` (or sign in again with MFA at the identity provider) and retry",
                action.as_str(),
                policy.window.num_minutes()
            ))),
        }
    }
}

/// Where a person's second factor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpStatus {
    /// A factor is confirmed (its first code was shown).
    pub confirmed: bool,
    /// A new factor (the first, or a replacement) waits for its first code.
    pub pending: bool,
}

impl Control {
    /// The caller's second factor, for a user interface (no secret).
    pub async fn totp_status(&self, by: &Authority) -> Result<TotpStatus, ControlError> {
        let factor = self.store.totp(&by.principal.id).await?;
        Ok(TotpStatus {
            confirmed: factor.as_ref().is_some_and(|f| f.confirmed_at.is_some()),
            pending: factor
                .as_ref()
                .is_some_and(|f| f.confirmed_at.is_none() || f.pending.is_some()),
        })
    }

    /// Starts a TOTP enrollment for the caller (a user). Replacing a confirmed factor needs a
    /// second factor shown in this session first, so a stolen session cannot swap the factor;
    /// a first factor is enrolled only in a fresh sign-in, so an old stolen session cannot add one.
    pub async fn enroll_totp(&self, by: &Authority) -> Result<TotpEnrollment, ControlError> {
        if by.principal.kind != PrincipalKind::User {
            return Err(ControlError::Forbidden(
                "service users have no second factor; only people enroll TOTP".to_owned(),
            ));
        }
        let now = Utc::now();
        let existing = self.store.totp(&by.principal.id).await?;
        let confirmed = existing.is_some_and(|f| f.confirmed_at.is_some());
        if !confirmed && now - by.session.created_at > MfaPolicy::default().window {
            return Err(ControlError::StepUpRequired(format!(
                "a first second factor is enrolled only within {} minutes of signing in: sign in again (`latchctl login`), then run `latchctl mfa enroll`",
                MfaPolicy::default().window.num_minutes()
            )));
        }
        if confirmed {
            let recent = MfaPolicy {
                required: vec![SensitiveAction::ChangeRoles],
                ..MfaPolicy::default()
            };
            by.require_mfa(&recent, SensitiveAction::ChangeRoles, now)
                .map_err(|_| {
                    ControlError::StepUpRequired(
                        "replacing a TOTP factor needs a code from the current one first: run `latchctl mfa verify`".to_owned(),
                    )
                })?;
        }
        let secret = crate::secret::random_bytes::<20>()?.to_vec();
        let factor = totp(secret.clone(), &by.principal.name)?;
        let key = self.store.audit_key();
        let sealed = key
            .seal(&seal_label(&by.principal.id), &secret)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let event = by.event("mfa.totp_enroll");
        self.store
            .set_totp(&by.principal.id, &sealed, event, now)
            .await?;
        Ok(TotpEnrollment {
            secret_base32: factor.get_secret_base32(),
            otpauth_uri: factor.get_url(),
        })
    }

    /// Checks a TOTP code for the caller: the first good code confirms the enrollment, and every
    /// good code marks this session as having shown a second factor now. Each code counts once.
    pub async fn verify_totp(
        &self,
        by: &Authority,
        code: &str,
    ) -> Result<DateTime<Utc>, ControlError> {
        self.verify_totp_at(by, code, Utc::now()).await
    }

    /// [`Control::verify_totp`] at a given time (tests).
    pub async fn verify_totp_at(
        &self,
        by: &Authority,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, ControlError> {
        const WRONG: &str = "the code is not valid (wrong, expired, or already used); wait for the next code and retry";
        if by.principal.kind != PrincipalKind::User {
            return Err(ControlError::Forbidden(
                "service users have no second factor; only people show TOTP codes".to_owned(),
            ));
        }
        let code = code.trim();
        if code.len() != DIGITS || !code.chars().all(|c| c.is_ascii_digit()) {
            return Err(ControlError::StepUpRequired(format!(
                "a TOTP code is {DIGITS} digits"
            )));
        }
        let Some(record) = self.store.totp(&by.principal.id).await? else {
            return Err(ControlError::StepUpRequired(
                "no TOTP factor is enrolled; run `latchctl mfa enroll` first".to_owned(),
            ));
        };
        if let Some(until) = record.locked_until
            && until > now
        {
            return Err(ControlError::StepUpRequired(format!(
                "too many wrong codes: the factor accepts codes again at {}",
                until.to_rfc3339()
            )));
        }
        let key = self.store.audit_key();
        let label = seal_label(&by.principal.id);
        let open = |sealed: &str| {
            key.open(&label, sealed).ok_or_else(|| {
                ControlError::Internal(format!(
                    "the TOTP secret of {} does not open with this server's audit key; enroll the factor again",
                    by.principal.name
                ))
            })
        };
        // The secret in force, then a replacement being enrolled.
        let mut candidates = vec![(record.sealed_secret.clone(), false)];
        if let Some(pending) = &record.pending {
            candidates.push((pending.clone(), true));
        }
        let current = step_of(now);
        let mut matched = None;
        for (sealed, pending) in candidates {
            let factor = totp(open(&sealed)?, &by.principal.name)?;
            // The newest matching step first: a code is tied to exactly one step.
            let step = [current + 1, current, current - 1]
                .into_iter()
                .filter(|step| *step >= 0)
                .find(|step| {
                    let time = u64::try_from(*step).unwrap_or(0) * STEP_SECONDS;
                    crate::secret::same_secret(&factor.generate(time), code)
                });
            if let Some(step) = step {
                matched = Some((step, sealed, pending));
                break;
            }
        }
        let failed = |reason: &'static str| async move {
            let event = by
                .event("mfa.failure")
                .detail(serde_json::json!({"reason": reason}));
            let failures = self
                .store
                .record_totp_failure(&by.principal.id, LOCK_AFTER, now + LOCK_FOR, event, now)
                .await?;
            Err::<DateTime<Utc>, ControlError>(ControlError::StepUpRequired(
                if failures >= LOCK_AFTER {
                    format!(
                        "{WRONG} — after {LOCK_AFTER} wrong codes the factor is locked for {} minutes",
                        LOCK_FOR.num_minutes()
                    )
                } else {
                    WRONG.to_owned()
                },
            ))
        };
        let Some((step, sealed, pending)) = matched else {
            return failed("wrong code").await;
        };
        let event = by.event("mfa.verify").detail(serde_json::json!({
            "session_id": by.session.id,
            "first": record.confirmed_at.is_none(),
            "replacement_confirmed": pending,
        }));
        if self
            .store
            .use_totp_step(
                &TotpUse {
                    principal_id: &by.principal.id,
                    session_id: &by.session.id,
                    step,
                    matched: &sealed,
                    pending,
                },
                event,
                now,
            )
            .await?
        {
            Ok(now)
        } else {
            failed("code replayed, or the factor changed meanwhile").await
        }
    }
}

/// The code of `secret_base32` at `at` — what an authenticator app would show (tests and
/// `latchctl` self-checks).
pub fn code_at(secret_base32: &str, at: DateTime<Utc>) -> Option<String> {
    let secret = totp_rs::Secret::Encoded(secret_base32.to_owned())
        .to_bytes()
        .ok()?;
    let factor = TOTP::new_unchecked(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECONDS,
        secret,
        None,
        String::new(),
    );
    Some(factor.generate(u64::try_from(at.timestamp()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_actions_parse_from_all_none_or_a_list() {
        assert_eq!(
            parse_required_actions("all").unwrap().0,
            SensitiveAction::ALL.to_vec()
        );
        assert!(parse_required_actions("none").unwrap().0.is_empty());
        assert_eq!(
            parse_required_actions("approve, reveal").unwrap().0,
            [SensitiveAction::Approve, SensitiveAction::Reveal]
        );
        assert!(parse_required_actions("approve,approve").is_err());
        assert!(parse_required_actions("approve,everything").is_err());
        assert!(parse_required_actions("").is_err());
    }
}
