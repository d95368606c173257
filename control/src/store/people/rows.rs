//! Decoding people rows, the same way on both engines, and the SQL the store's methods share.

use super::super::StoreError;
use super::super::rows::{Columns, corrupt, from_millis};
use super::records::*;

/// The columns [`principal_from_row`] reads.
macro_rules! principal_columns {
    ($p:literal) => {
        concat!(
            $p,
            ".id, ",
            $p,
            ".kind, ",
            $p,
            ".name, ",
            $p,
            ".display_name, ",
            $p,
            ".email, ",
            $p,
            ".idp_issuer, ",
            $p,
            ".idp_subject, ",
            $p,
            ".password_hash, ",
            $p,
            ".disabled_at, ",
            $p,
            ".created_at, ",
            $p,
            ".last_seen_at"
        )
    };
}

pub(super) fn principal_from_row(row: &impl Columns) -> Result<PrincipalRecord, StoreError> {
    let issuer = row.opt_text("idp_issuer")?;
    let subject = row.opt_text("idp_subject")?;
    Ok(PrincipalRecord {
        id: row.text("id")?,
        kind: PrincipalKind::parse(&row.text("kind")?)?,
        name: row.text("name")?,
        display_name: row.text("display_name")?,
        email: row.opt_text("email")?,
        idp: issuer.zip(subject),
        password_hash: row.opt_text("password_hash")?,
        disabled_at: row.opt_int("disabled_at")?.map(from_millis),
        created_at: from_millis(row.int("created_at")?),
        last_seen_at: row.opt_int("last_seen_at")?.map(from_millis),
    })
}

/// A principal's columns selected after a session's or key's own, under distinct names.
macro_rules! principal_as {
    () => {
        "p.id AS p_id, p.kind AS p_kind, p.name AS p_name, p.display_name AS p_display_name, \
         p.email AS p_email, p.idp_issuer AS p_idp_issuer, p.idp_subject AS p_idp_subject, \
         p.password_hash AS p_password_hash, p.disabled_at AS p_disabled_at, \
         p.created_at AS p_created_at, p.last_seen_at AS p_last_seen_at"
    };
}

/// Reads the `p_`-prefixed principal columns of [`principal_as!`].
pub(super) struct Prefixed<'r, R>(pub(super) &'r R);

impl<R: Columns> Columns for Prefixed<'_, R> {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
        self.0.int(&format!("p_{column}"))
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.0.opt_int(&format!("p_{column}"))
    }
    fn text(&self, column: &str) -> Result<String, sqlx::Error> {
        self.0.text(&format!("p_{column}"))
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.0.opt_text(&format!("p_{column}"))
    }
}

pub(super) fn group_from_row(row: &impl Columns) -> Result<GroupRecord, StoreError> {
    Ok(GroupRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        description: row.text("description")?,
        idp_group: row.opt_text("idp_group")?,
        created_at: from_millis(row.int("created_at")?),
    })
}

pub(super) fn binding_from_row(row: &impl Columns) -> Result<RoleBinding, StoreError> {
    let role = row.text("role")?;
    let subject = match (row.opt_text("principal_id")?, row.opt_text("group_id")?) {
        (Some(principal), None) => BindingSubject::Principal(principal),
        (None, Some(group)) => BindingSubject::Group(group),
        _ => return Err(corrupt("role binding", "neither or both subjects set")),
    };
    Ok(RoleBinding {
        id: row.text("id")?,
        role: role.parse().map_err(|e| corrupt("role binding", e))?,
        subject,
        selector: row.opt_text("selector")?,
        created_at: from_millis(row.int("created_at")?),
    })
}

pub(super) fn api_key_from_row(row: &impl Columns) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: row.text("id")?,
        principal_id: row.text("principal_id")?,
        created_at: from_millis(row.int("created_at")?),
        last_used_at: row.opt_int("last_used_at")?.map(from_millis),
        revoked_at: row.opt_int("revoked_at")?.map(from_millis),
    })
}

pub(super) fn session_from_row(row: &impl Columns) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id: row.text("id")?,
        principal_id: row.text("principal_id")?,
        kind: SessionKind::parse(&row.text("kind")?)?,
        api_key_id: row.opt_text("api_key_id")?,
        created_at: from_millis(row.int("created_at")?),
        expires_at: from_millis(row.int("expires_at")?),
        revoked_at: row.opt_int("revoked_at")?.map(from_millis),
        mfa_at: row.opt_int("mfa_at")?.map(from_millis),
        address: row.opt_text("address")?,
    })
}

pub(super) fn sso_login_from_row(row: &impl Columns) -> Result<SsoLoginRecord, StoreError> {
    Ok(SsoLoginRecord {
        id: row.text("id")?,
        flow: SsoFlow::parse(&row.text("kind")?)?,
        nonce: row.opt_text("nonce")?,
        sealed_pkce_verifier: row.opt_text("pkce_verifier")?,
        redirect_uri: row.opt_text("redirect_uri")?,
        sealed_device_code: row.opt_text("device_code")?,
        created_at: from_millis(row.int("created_at")?),
        expires_at: from_millis(row.int("expires_at")?),
        used_at: row.opt_int("used_at")?.map(from_millis),
    })
}

pub(super) const SSO_LOGIN_COLUMNS: &str = "SELECT id, kind, nonce, pkce_verifier, redirect_uri, device_code, \
     created_at, expires_at, used_at FROM sso_logins WHERE id = $1 AND used_at IS NULL \
     AND expires_at > $2";

pub(super) use crate::store::rows::labels_from_text;

/// Whether `error` is a uniqueness violation (a name taken by a concurrent writer).
pub(super) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

pub(super) const PRINCIPAL_EXISTS: &str = "SELECT 1 AS one FROM principals WHERE id = $1";
pub(super) const GROUP_EXISTS: &str = "SELECT 1 AS one FROM groups WHERE id = $1";
