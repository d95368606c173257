//! Grants and their end: which grants have ended, when the next one ends, how an end is
//! written into the account files (shadow expiry day, `expiry-time=` on keys) as defence in
//! depth, and the revocation plan of an ended grant.

use chrono::{DateTime, Utc};
use latch_common::job::{JobError, JobSpec};

use super::{Facts, Plan, plan};
use crate::state::Accounts;

/// The shadow expiry day for access ending at `expires_at`: days since the epoch, rounded up,
/// so the account is disabled from the first midnight (UTC) after the grant ends.
pub fn shadow_expire_day(expires_at: DateTime<Utc>) -> i64 {
    let seconds = expires_at.timestamp();
    seconds.div_euclid(86_400) + i64::from(seconds.rem_euclid(86_400) != 0)
}

/// The `authorized_keys` lines for `keys`: with `expiry-time="YYYYMMDDHHMMSSZ"` (UTC, as
/// OpenSSH reads a trailing `Z`) when the access ends, so sshd refuses the key after its end even
/// if the agent is gone.
pub fn authorized_key_lines(keys: &[String], expires_at: Option<DateTime<Utc>>) -> Vec<String> {
    keys.iter()
        .map(|key| match expires_at {
            Some(end) => format!("expiry-time=\"{}\" {key}", end.format("%Y%m%d%H%M%SZ")),
            None => key.clone(),
        })
        .collect()
}

/// A grant whose time is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// An ephemeral account: remove it entirely.
    Account {
        /// Name.
        user: String,
        /// Every job whose grant ends with it (the creating job and group grants).
        job_ids: Vec<String>,
    },
    /// A group membership.
    Group {
        /// Name.
        user: String,
        /// Group.
        group: String,
        /// The granting job.
        job_id: String,
    },
}

impl Expired {
    /// The account concerned.
    pub fn user(&self) -> &str {
        match self {
            Expired::Account { user, .. } | Expired::Group { user, .. } => user,
        }
    }

    /// The group concerned, for a membership.
    pub fn group(&self) -> Option<&str> {
        match self {
            Expired::Account { .. } => None,
            Expired::Group { group, .. } => Some(group),
        }
    }

    /// The jobs whose grants end with this revocation.
    pub fn job_ids(&self) -> Vec<String> {
        match self {
            Expired::Account { job_ids, .. } => job_ids.clone(),
            Expired::Group { job_id, .. } => vec![job_id.clone()],
        }
    }

    /// The revocation job this amounts to.
    pub fn spec(&self) -> JobSpec {
        match self {
            Expired::Account { user, .. } => JobSpec::DeleteAccount { user: user.clone() },
            Expired::Group { user, group, .. } => JobSpec::RemoveGroup {
                user: user.clone(),
                group: group.clone(),
            },
        }
    }
}

/// The grants in `accounts` that have ended at `now`.
pub fn expired(accounts: &Accounts, now: DateTime<Utc>) -> Vec<Expired> {
    let mut due = Vec::new();
    for (user, account) in &accounts.accounts {
        if account.expires_at.is_some_and(|end| end <= now) {
            let mut job_ids = vec![account.created_by_job.clone()];
            for grant in account.group_grants.values() {
                if !job_ids.contains(&grant.job_id) {
                    job_ids.push(grant.job_id.clone());
                }
            }
            due.push(Expired::Account {
                user: user.clone(),
                job_ids,
            });
            continue;
        }
        for (group, grant) in &account.group_grants {
            if grant.expires_at.is_some_and(|end| end <= now) {
                due.push(Expired::Group {
                    user: user.clone(),
                    group: group.clone(),
                    job_id: grant.job_id.clone(),
                });
            }
        }
    }
    due
}

/// The earliest end of any grant in `accounts`.
pub fn next_expiry(accounts: &Accounts) -> Option<DateTime<Utc>> {
    accounts
        .accounts
        .values()
        .flat_map(|a| {
            std::iter::once(a.expires_at).chain(a.group_grants.values().map(|g| g.expires_at))
        })
        .flatten()
        .min()
}

/// The steps that revoke one expired grant (no policy is consulted: only granting checks it).
pub fn plan_expiry(expired: &Expired, facts: &Facts<'_>) -> Result<Plan, JobError> {
    plan(&expired.spec(), "", facts)
}
