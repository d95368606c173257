//! Which accounts are Latch's, and which UIDs and names are free.
//!
//! Two questions with two strictness levels:
//! - **may Latch take this account away?** ([`owned_account`]): the agent's own record names it
//!   with the UID that is in `/etc/passwd` under that name. Nothing the account's user can edit
//!   (GECOS via `chfn`, dotfiles) and nothing an operator may change by accident (the UID range
//!   or the allowed groups in the configuration, a supplementary-group list rewritten by
//!   `usermod -G`) takes part, so revocation always reaches the end.
//! - **may Latch grant more to it?** ([`managed_account`]): in addition, it is still in the
//!   `latch-managed` marker group and its UID is in the configured range.
//!
//! Adopted accounts (`adopt-account`) are a third kind, recorded apart (`Accounts::adopted`):
//! existing accounts whose password Latch may set ([`adopted_account`]: the record's UID is
//! still the account's), and that no revocation ever reaches — [`owned_account`] does not know
//! them, so they are never deleted, locked or expired.

use latch_common::job::{JobError, JobErrorCode};

use super::{Facts, Policy, refuse};
use crate::state::Accounts;
use crate::system::etc::{PasswdEntry, Snapshot};

/// UIDs below this are system accounts: adopted only when the host's configuration allows it
/// (`allow_adopt_system_accounts`); UID 0 never.
pub const SYSTEM_UID_LIMIT: u32 = 1000;

/// The group every account Latch creates belongs to (the on-host marker).
pub const MARKER_GROUP: &str = "latch-managed";
/// The GECOS field of every account Latch creates: a label for people, never a proof (the
/// account's user can rewrite GECOS subfields with `chfn`).
pub const GECOS_TAG: &str = "latch-managed account";

/// What the name service (NSS: files, LDAP, SSSD, …) knows beyond the local files.
pub trait NameService {
    /// Whether a user of this name resolves.
    fn user_exists(&self, name: &str) -> bool;
    /// Whether a group of this name resolves.
    fn group_exists(&self, name: &str) -> bool;
    /// Whether this UID belongs to a user.
    fn uid_taken(&self, uid: u32) -> bool;
    /// Whether this GID belongs to a group.
    fn gid_taken(&self, gid: u32) -> bool;
}

/// A name service that knows nothing beyond the files (tests).
#[cfg(test)]
pub struct FilesOnly;

#[cfg(test)]
impl NameService for FilesOnly {
    fn user_exists(&self, _: &str) -> bool {
        false
    }
    fn group_exists(&self, _: &str) -> bool {
        false
    }
    fn uid_taken(&self, _: u32) -> bool {
        false
    }
    fn gid_taken(&self, _: u32) -> bool {
        false
    }
}

/// How an account name relates to the agent's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership<'a> {
    /// Latch created it: the record's UID is the UID in `/etc/passwd`.
    Ours(&'a PasswdEntry),
    /// Latch created an account of this name, and `/etc/passwd` still names it, on a line that
    /// does not parse: revoked by name, processes by the recorded UID.
    Unreadable {
        /// The UID Latch gave it.
        uid: u32,
    },
    /// Latch created an account of this name, but it is no longer in `/etc/passwd`.
    Gone {
        /// The UID Latch gave it.
        uid: u32,
    },
    /// Latch created an account of this name, but the name now has another UID: someone else's.
    Replaced {
        /// The UID Latch gave it.
        ours: u32,
        /// The UID the name has now.
        now: u32,
    },
    /// Latch never created an account of this name (it may or may not exist).
    NotOurs,
}

/// Whether `user` is an account Latch created, from the agent's record, the name and the UID.
pub fn owned_account<'a>(user: &str, snapshot: &'a Snapshot, accounts: &Accounts) -> Ownership<'a> {
    let Some(record) = accounts.accounts.get(user) else {
        return Ownership::NotOurs;
    };
    match snapshot.user(user) {
        Some(entry) if entry.uid == record.uid => Ownership::Ours(entry),
        Some(entry) => Ownership::Replaced {
            ours: record.uid,
            now: entry.uid,
        },
        None if snapshot.malformed_users.iter().any(|name| name == user) => {
            Ownership::Unreadable { uid: record.uid }
        }
        None => Ownership::Gone { uid: record.uid },
    }
}

/// The passwd entry of `user` if Latch may grant it more: created by Latch
/// ([`owned_account`]), still in the marker group and in the configured UID range.
pub fn managed_account<'a>(user: &str, facts: &Facts<'a>) -> Result<&'a PasswdEntry, JobError> {
    let snapshot = facts.snapshot;
    let entry = match owned_account(user, snapshot, facts.accounts) {
        Ownership::Ours(entry) => entry,
        Ownership::Unreadable { .. } => {
            return Err(refuse(
                JobErrorCode::AccountFilesMalformed,
                format!("the /etc/passwd line of '{user}' does not parse; repair it (`pwck`)"),
            ));
        }
        Ownership::NotOurs
            if facts.accounts.adopted.contains_key(user) && snapshot.user(user).is_some() =>
        {
            return Err(not_for_adopted(user, "only its password is set"));
        }
        Ownership::NotOurs | Ownership::Replaced { .. } if snapshot.user(user).is_some() => {
            return Err(refuse(
                JobErrorCode::AccountNotManaged,
                format!(
                    "account '{user}' was not created by Latch on this host; Latch changes only accounts it created"
                ),
            ));
        }
        _ => {
            return Err(refuse(
                JobErrorCode::NoSuchAccount,
                format!("account '{user}' does not exist on this host"),
            ));
        }
    };
    let marked = snapshot.is_member(user, MARKER_GROUP);
    let in_range = (facts.policy.uid_min..=facts.policy.uid_max).contains(&entry.uid);
    if marked && in_range {
        Ok(entry)
    } else {
        Err(refuse(
            JobErrorCode::AccountNotManaged,
            format!(
                "account '{user}' was created by Latch but {}; nothing more is granted to it (it is still revoked at its end)",
                if marked {
                    format!(
                        "its UID {} is outside uid_min..uid_max of the agent's configuration",
                        entry.uid
                    )
                } else {
                    format!("it is no longer in the {MARKER_GROUP} group")
                }
            ),
        ))
    }
}

/// The refusal of anything but a password change for an adopted account (`what` says what
/// Latch does to it instead).
pub(crate) fn not_for_adopted(user: &str, what: &str) -> JobError {
    refuse(
        JobErrorCode::AccountNotManaged,
        format!(
            "account '{user}' was adopted, not created by Latch: {what}; Latch never deletes, locks, expires or grants groups to an adopted account — do that by hand on the host"
        ),
    )
}

/// Whether an account with `uid` may be adopted (or keep getting its password set) under
/// `policy`: never root (UID 0, whatever its name), a system account (UID below
/// [`SYSTEM_UID_LIMIT`]) only with `allow_adopt_system_accounts`.
pub fn adoptable_uid(user: &str, uid: u32, policy: &Policy) -> Result<(), JobError> {
    if uid == 0 {
        return Err(refuse(
            JobErrorCode::SystemAccount,
            format!(
                "account '{user}' has UID 0 (root); Latch never adopts root or an alias of it, whatever the host's configuration says"
            ),
        ));
    }
    if uid < SYSTEM_UID_LIMIT && !policy.allow_adopt_system_accounts {
        return Err(refuse(
            JobErrorCode::SystemAccount,
            format!(
                "account '{user}' has UID {uid}, a system account (below {SYSTEM_UID_LIMIT}); set allow_adopt_system_accounts = true in the agent's configuration if Latch should manage its password"
            ),
        ));
    }
    Ok(())
}

/// The passwd entry of `user` if it is an adopted account whose password Latch may set: the
/// adoption record's UID is the UID `/etc/passwd` has for the name now (an account deleted and
/// re-created under the same name is someone else's), and the policy still allows its UID.
pub fn adopted_account<'a>(user: &str, facts: &Facts<'a>) -> Result<&'a PasswdEntry, JobError> {
    let snapshot = facts.snapshot;
    let Some(record) = facts.accounts.adopted.get(user) else {
        return Err(refuse(
            JobErrorCode::AccountNotManaged,
            format!("account '{user}' was not adopted by Latch on this host"),
        ));
    };
    let Some(entry) = snapshot.user(user) else {
        if snapshot.malformed_users.iter().any(|name| name == user) {
            return Err(refuse(
                JobErrorCode::AccountFilesMalformed,
                format!("the /etc/passwd line of '{user}' does not parse; repair it (`pwck`)"),
            ));
        }
        return Err(refuse(
            JobErrorCode::NoSuchAccount,
            format!(
                "account '{user}' was adopted (UID {}) but no longer exists on this host",
                record.uid
            ),
        ));
    };
    if entry.uid != record.uid {
        return Err(refuse(
            JobErrorCode::AccountNotManaged,
            format!(
                "account '{user}' was adopted with UID {} but now has UID {}: it was deleted and re-created, and the new account is not adopted; adopt it again if Latch should manage it",
                record.uid, entry.uid
            ),
        ));
    }
    adoptable_uid(user, entry.uid, facts.policy)?;
    Ok(entry)
}

/// The lowest UID of the policy's range that is above the high-water mark and known neither to
/// the files nor to the name service, as a user or as a group (so the private group gets the
/// same number).
pub fn choose_uid(
    snapshot: &Snapshot,
    accounts: &Accounts,
    policy: &Policy,
    names: &dyn NameService,
) -> Result<u32, JobError> {
    let start = policy
        .uid_min
        .max(accounts.uid_high_water.saturating_add(1));
    (start..=policy.uid_max)
        .find(|&uid| {
            !snapshot.passwd.iter().any(|u| u.uid == uid)
                && !snapshot.group.iter().any(|g| g.gid == uid)
                && !names.uid_taken(uid)
                && !names.gid_taken(uid)
        })
        .ok_or_else(|| {
            refuse(
                JobErrorCode::UidRangeExhausted,
                format!(
                    "no unused UID is left in {}..={} (UIDs are never reused); widen uid_min/uid_max in the agent's configuration",
                    policy.uid_min, policy.uid_max
                ),
            )
        })
}
