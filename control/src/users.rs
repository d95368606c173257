//! Users and groups: local users for bootstrap and small installs (an Argon2id password hash),
//! groups whose roles apply to their members, and sign-in with a local password.
//!
//! Users who sign in through the identity provider are made at their first sign-in (see the
//! OIDC module); the functions here are for people an admin creates by hand.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use chrono::{Duration, Utc};
use latch_common::names::ValidationError;

use crate::Control;
use crate::audit::AuditEvent;
use crate::error::ControlError;
use crate::people::{
    Authority, IssuedToken, TOKEN_PREFIX, looks_like_id, new_id, validate_principal_name,
};
use crate::secret::new_token;
use crate::store::people::{
    GroupRecord, PrincipalKind, PrincipalRecord, SessionKind, SessionRecord,
};

/// Shortest local password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest local password accepted (Argon2 hashes any length; this bounds the work per request).
pub const MAX_PASSWORD_LEN: usize = 1024;
/// How long a session from a local sign-in lives.
pub const LOCAL_SESSION_TTL: Duration = Duration::hours(8);

/// A hash verified when the user does not exist (or has no local password), so a wrong name
/// costs as long as a wrong password and sign-in does not reveal which names exist: a fixed,
/// valid Argon2id hash with the same parameters as every real one, of no password anyone has
/// (its output was made up; no input is known to produce it).
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$bGF0Y2hkdW1teXNhbHQ$Zm9ydGltaW5nb25seW5vcGFzc3dvcmRtYXRjaGVzdGhpcyE";

/// Whether `text` holds a control or format character (bidi overrides, zero-width joiners) that
/// could make one name look like another in a list or the audit trail.
fn has_hidden_characters(text: &str) -> bool {
    text.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{FEFF}')
            || ('\u{200B}'..='\u{200F}').contains(&c)
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2060}'..='\u{206F}').contains(&c)
    })
}

fn check_password(password: &str) -> Result<(), ValidationError> {
    let len = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&len) {
        return Err(ValidationError::new(
            "password",
            format!("a password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// Argon2id with the default parameters, peppered with a key derived from the audit key (kept
/// outside the database), so a hash written into the database by someone without that key
/// matches no password.
fn argon2(pepper: &[u8]) -> Result<Argon2<'_>, ControlError> {
    Argon2::new_with_secret(
        pepper,
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::default(),
    )
    .map_err(|e| ControlError::Internal(format!("cannot set up Argon2: {e}")))
}

fn hash_password(password: &str, pepper: &[u8]) -> Result<String, ControlError> {
    let salt_bytes = crate::secret::random_bytes::<16>()?;
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| ControlError::Internal(format!("cannot encode a salt: {e}")))?;
    argon2(pepper)?
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| ControlError::Internal(format!("cannot hash the password: {e}")))
}

fn password_matches(password: &str, stored: &str, pepper: &[u8]) -> bool {
    let Ok(argon2) = argon2(pepper) else {
        return false;
    };
    PasswordHash::new(stored)
        .map(|hash| argon2.verify_password(password.as_bytes(), &hash).is_ok())
        .unwrap_or(false)
}

/// At most this many Argon2 runs at once (each takes ~19 MiB and tens of milliseconds of a
/// core); more wait, off the async runtime, so agents' long-polls are never starved.
const PARALLEL_HASHES: usize = 2;

async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ControlError> {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PARALLEL_HASHES);
    let _permit = PERMITS
        .acquire()
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ControlError::Internal(format!("password hashing failed: {e}")))
}

/// Wrong passwords after which local sign-in is refused for [`SIGN_IN_LOCK_FOR`].
pub const SIGN_IN_LOCK_AFTER: i64 = 10;
/// How long local sign-in stays locked after too many wrong passwords.
pub const SIGN_IN_LOCK_FOR: Duration = Duration::minutes(5);

/// What a new local user is given.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// Login name.
    pub name: String,
    /// Name to show.
    pub display_name: String,
    /// E-mail address.
    pub email: Option<String>,
    /// A local password (none: the user can only sign in through the identity provider).
    pub password: Option<String>,
}

impl Control {
    /// Creates a user.
    pub async fn create_user(
        &self,
        by: &Authority,
        user: &NewUser,
    ) -> Result<PrincipalRecord, ControlError> {
        self.require_people_change(by)?;
        validate_principal_name("name", &user.name)?;
        if user.display_name.len() > 128 || has_hidden_characters(&user.display_name) {
            return Err(ValidationError::new(
                "display_name",
                "must be at most 128 characters without control or format characters",
            )
            .into());
        }
        if let Some(email) = &user.email {
            let ok = email.len() <= 254
                && email
                    .split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                && !email.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(ValidationError::new("email", "is not an e-mail address").into());
            }
        }
        let password_hash = match &user.password {
            Some(password) => Some(self.hash_new_password(password).await?),
            None => None,
        };
        let now = Utc::now();
        let record = PrincipalRecord {
            id: new_id("usr_")?,
            kind: PrincipalKind::User,
            name: user.name.clone(),
            display_name: user.display_name.clone(),
            email: user.email.clone(),
            idp: None,
            password_hash,
            disabled_at: None,
            created_at: now,
            last_seen_at: None,
        };
        let event = by.event("user.create").detail(serde_json::json!({
            "user": record.name,
            "id": record.id,
            "local_password": record.password_hash.is_some(),
        }));
        self.store
            .insert_principal(&record, event, now)
            .await?
            .map_err(|_| ControlError::AlreadyExists {
                what: "user",
                key: user.name.clone(),
            })?;
        Ok(record)
    }

    /// Checks a new local password and hashes it (Argon2id, peppered, off the runtime).
    async fn hash_new_password(&self, password: &str) -> Result<String, ControlError> {
        check_password(password)?;
        let pepper = self.store.audit_key().password_pepper();
        let password = password.to_owned();
        off_runtime(move || hash_password(&password, &pepper)).await?
    }

    /// Sets a local user's password, or with `None` removes local sign-in (the user then signs
    /// in through the identity provider only). Every session of the user ends at once.
    pub async fn set_user_password(
        &self,
        by: &Authority,
        name: &str,
        password: Option<&str>,
    ) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        let not_found = || ControlError::NotFound {
            what: "user",
            key: name.to_owned(),
        };
        let user = self
            .principal_named(name)
            .await?
            .filter(|p| p.kind == PrincipalKind::User)
            .ok_or_else(not_found)?;
        let hash = match password {
            Some(password) => Some(self.hash_new_password(password).await?),
            None => None,
        };
        let event = by.event("user.password_set").detail(serde_json::json!({
            "user": user.name,
            "id": user.id,
            "local_password": hash.is_some(),
        }));
        if self
            .store
            .set_password_hash(&user.id, hash.as_deref(), event, Utc::now())
            .await?
        {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    /// Disables (ending every session and token at once) or enables a user or service user.
    pub async fn set_disabled(
        &self,
        by: &Authority,
        name: &str,
        disabled: bool,
    ) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        let principal =
            self.store
                .principal(name)
                .await?
                .ok_or_else(|| ControlError::NotFound {
                    what: "user or service user",
                    key: name.to_owned(),
                })?;
        if principal.id == by.principal.id && disabled {
            return Err(ControlError::Conflict(
                "you cannot disable yourself; ask another pam_admin".to_owned(),
            ));
        }
        let action = if disabled {
            "principal.disable"
        } else {
            "principal.enable"
        };
        let event = by
            .event(action)
            .detail(serde_json::json!({"principal": principal.name, "id": principal.id}));
        self.store
            .set_principal_disabled(&principal.id, disabled, event, Utc::now())
            .await?;
        Ok(())
    }

    /// Creates a group; `idp_group` names the identity provider's group whose members join it
    /// at sign-in.
    pub async fn create_group(
        &self,
        by: &Authority,
        name: &str,
        description: &str,
        idp_group: Option<&str>,
    ) -> Result<GroupRecord, ControlError> {
        self.require_people_change(by)?;
        validate_principal_name("name", name)?;
        if description.len() > 500 || has_hidden_characters(description) {
            return Err(ValidationError::new(
                "description",
                "must be at most 500 characters without control or format characters",
            )
            .into());
        }
        if let Some(idp) = idp_group
            && (idp.is_empty() || idp.len() > 256 || has_hidden_characters(idp))
        {
            return Err(ValidationError::new(
                "idp_group",
                "must be 1 to 256 characters without control characters",
            )
            .into());
        }
        let now = Utc::now();
        let group = GroupRecord {
            id: new_id("grp_")?,
            name: name.to_owned(),
            description: description.to_owned(),
            idp_group: idp_group.map(str::to_owned),
            created_at: now,
        };
        let event = by.event("group.create").detail(serde_json::json!({
            "group": group.name,
            "id": group.id,
            "idp_group": group.idp_group,
        }));
        self.store
            .insert_group(&group, event, now)
            .await?
            .map_err(|_| ControlError::AlreadyExists {
                what: "group (or identity-provider group mapping)",
                key: name.to_owned(),
            })?;
        Ok(group)
    }

    /// Adds a user or service user to a group, or removes them.
    pub async fn set_group_member(
        &self,
        by: &Authority,
        group: &str,
        member: &str,
        add: bool,
    ) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        let group = self
            .store
            .group(group)
            .await?
            .ok_or_else(|| ControlError::NotFound {
                what: "group",
                key: group.to_owned(),
            })?;
        let principal =
            self.store
                .principal(member)
                .await?
                .ok_or_else(|| ControlError::NotFound {
                    what: "user or service user",
                    key: member.to_owned(),
                })?;
        let action = if add {
            "group.member_add"
        } else {
            "group.member_remove"
        };
        let event = by.event(action).detail(serde_json::json!({
            "group": group.name,
            "principal": principal.name,
        }));
        self.store
            .set_member(&group.id, &principal.id, add, event, Utc::now())
            .await?
            .map_err(|_| ControlError::NotFound {
                what: "group or member",
                key: format!("{}/{}", group.name, principal.name),
            })
    }

    /// Signs a local user in with their password.
    pub async fn sign_in_local(
        &self,
        name: &str,
        password: &str,
        address: Option<String>,
    ) -> Result<IssuedToken, ControlError> {
        const REFUSED: &str = "the user name or password is wrong (or the user has no local password: sign in through the identity provider with `latchctl login`)";
        let now = Utc::now();
        // By name only: an id is not a login name.
        let principal = if password.len() <= MAX_PASSWORD_LEN * 4 && !looks_like_id(name) {
            self.store
                .principal(name)
                .await?
                .filter(|p| p.kind == PrincipalKind::User && p.name == name)
        } else {
            None
        };
        if let Some(p) = &principal
            && let Some(until) = self.store.sign_in_locked_until(&p.id).await?
            && until > now
        {
            return Err(ControlError::Unauthenticated(
                "too many wrong passwords: local sign-in for this user is locked for a few minutes",
            ));
        }
        let stored = principal
            .as_ref()
            .and_then(|p| p.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.to_owned());
        let pepper = self.store.audit_key().password_pepper();
        let given = password.to_owned();
        let matches = off_runtime(move || password_matches(&given, &stored, &pepper)).await?;
        let principal = match principal {
            Some(p) if matches && p.password_hash.is_some() => p,
            other => {
                if let Some(p) = &other {
                    self.store
                        .record_sign_in(&p.id, false, SIGN_IN_LOCK_AFTER, now + SIGN_IN_LOCK_FOR)
                        .await?;
                }
                let event =
                    AuditEvent::new("anonymous", "auth.failure").detail(serde_json::json!({
                        "credential": "local_password",
                        "principal_id": other.as_ref().map(|p| p.id.clone()),
                        "address": address,
                    }));
                self.store.append_audit(&event, now).await?;
                return Err(ControlError::Unauthenticated(REFUSED));
            }
        };
        self.store
            .record_sign_in(&principal.id, true, SIGN_IN_LOCK_AFTER, now)
            .await?;
        if principal.disabled_at.is_some() {
            return Err(ControlError::AuthorizationRevoked(format!(
                "user {} is disabled; ask a pam_admin",
                principal.name
            )));
        }
        let token = new_token(TOKEN_PREFIX)?;
        let session = SessionRecord {
            id: new_id("ses_")?,
            principal_id: principal.id.clone(),
            kind: SessionKind::Local,
            api_key_id: None,
            created_at: now,
            expires_at: now + LOCAL_SESSION_TTL,
            revoked_at: None,
            mfa_at: None,
            address: address.clone(),
        };
        let event = AuditEvent::new(format!("user:{}", principal.name), "session.start").detail(
            serde_json::json!({"session_id": session.id, "kind": "local", "address": address}),
        );
        let hash = self.store.audit_key().credential_hash(&token);
        self.store
            .insert_session(&session, &hash, event, now)
            .await?;
        Ok(IssuedToken {
            token,
            expires_at: session.expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_is_a_valid_argon2id_hash_that_matches_nothing_usual() {
        let hash = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(hash.algorithm.as_str(), "argon2id");
        for pepper in [&[0u8; 32][..], &[7u8; 32][..]] {
            assert!(!password_matches("", DUMMY_HASH, pepper));
            assert!(!password_matches(
                "correct horse battery staple",
                DUMMY_HASH,
                pepper
            ));
        }
    }

    #[test]
    fn passwords_hash_with_fresh_salts_and_verify_only_with_the_pepper() {
        let pepper = [7u8; 32];
        let a = hash_password("correct horse battery", &pepper).unwrap();
        let b = hash_password("correct horse battery", &pepper).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(password_matches("correct horse battery", &a, &pepper));
        assert!(!password_matches("correct horse batterY", &a, &pepper));
        assert!(!password_matches("correct horse battery", &a, &[8u8; 32]));
        // A hash made without the pepper (as a database writer could) matches nothing.
        let unpeppered = Argon2::default()
            .hash_password(
                b"correct horse battery",
                &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
            )
            .unwrap()
            .to_string();
        assert!(!password_matches(
            "correct horse battery",
            &unpeppered,
            &pepper
        ));
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
        assert!(has_hidden_characters("ad\u{202E}nimda"));
        assert!(has_hidden_characters("a\u{200B}b"));
        assert!(!has_hidden_characters("Zoë Ångström"));
    }
}
