//! What the planner produces: the [`Step`]s to take for a job, in order, and the [`Plan`] that
//! holds them with notes for the outcome.

use chrono::{DateTime, Utc};

use super::MARKER_GROUP;

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `groupadd --system latch-managed`.
    CreateMarkerGroup,
    /// Record the account in `accounts.json` (before `useradd`, so a crash in between still
    /// leaves our claim on it) and raise the UID high-water mark.
    RecordAccount {
        /// Name.
        user: String,
        /// UID chosen.
        uid: u32,
        /// Access end.
        expires_at: Option<DateTime<Utc>>,
    },
    /// `useradd`, with a private group of the same number.
    AddUser {
        /// Name.
        user: String,
        /// UID (and GID of the private group).
        uid: u32,
        /// Shell.
        shell: String,
        /// Supplementary groups, marker first.
        groups: Vec<String>,
        /// Shadow account expiry, in days since the epoch (defence in depth: the day after the
        /// grant ends, rounded up).
        expire_day: Option<i64>,
    },
    /// A grant re-created with another end: the record and the shadow expiry follow it.
    SetAccountExpiry {
        /// Name.
        user: String,
        /// The new end.
        expires_at: Option<DateTime<Utc>>,
    },
    /// `usermod --lock --expiredate 1`: no password login, account expired.
    LockAccount {
        /// Name.
        user: String,
    },
    /// Remove every key sshd could read (`authorized_keys`, `authorized_keys2`), whatever the
    /// user turned them into.
    RemoveKeys {
        /// Name.
        user: String,
    },
    /// Remove sudo's cached credentials of the user (`/run/sudo/ts/USER`).
    ClearSudoTimestamps {
        /// Name.
        user: String,
    },
    /// Tell `nscd` / `sssd` to forget cached users and groups, where they run.
    InvalidateNameCaches,
    /// `gpasswd --add`.
    AddToGroup {
        /// Name.
        user: String,
        /// Group.
        group: String,
    },
    /// `gpasswd --delete`.
    RemoveFromGroup {
        /// Name.
        user: String,
        /// Group.
        group: String,
    },
    /// Replace `authorized_keys` with these lines (options included).
    WriteKeys {
        /// Name.
        user: String,
        /// Complete `authorized_keys` lines.
        lines: Vec<String>,
    },
    /// Replace the account's SSH certificate principals file
    /// (`/etc/ssh/latch/principals/USER`, root-owned) with these principals, one per line.
    WritePrincipals {
        /// Name.
        user: String,
        /// The principals (validated).
        principals: Vec<String>,
    },
    /// Remove the account's SSH certificate principals file, so no certificate logs in as it.
    RemovePrincipals {
        /// Name.
        user: String,
    },
    /// `chpasswd --encrypted`.
    SetPasswordHash {
        /// Name.
        user: String,
        /// The hash.
        hash: String,
    },
    /// Record a group grant and its end.
    RecordGroupGrant {
        /// Name.
        user: String,
        /// Group.
        group: String,
        /// The granting job.
        job_id: String,
        /// End.
        expires_at: Option<DateTime<Utc>>,
    },
    /// Record an existing account as adopted (`accounts.json`): its password may be set from
    /// then on; it is never deleted, locked or expired.
    RecordAdoption {
        /// Name.
        user: String,
        /// Its UID now (a later account of that name with another UID is not adopted).
        uid: u32,
    },
    /// Forget a group grant.
    ForgetGroupGrant {
        /// Name.
        user: String,
        /// Group.
        group: String,
    },
    /// End every process of the UID and every process descending from its logins, root shells
    /// from sudo included.
    EndProcesses {
        /// UID.
        uid: u32,
        /// Primary GID (the signalling helper runs as UID:GID).
        gid: u32,
    },
    /// End the processes descending from the UID's logins that run as someone else (what the
    /// user started through sudo) and, with `holding`, the user's own processes that still
    /// carry that GID among their groups; the user's other processes stay.
    EndPrivilegedProcesses {
        /// UID.
        uid: u32,
        /// The revoked group's GID, when holding it is itself the power.
        holding: Option<u32>,
    },
    /// `userdel --remove` (again with `--force` if the user still had processes).
    DeleteUser {
        /// Name.
        user: String,
    },
    /// `groupdel` of the account's private group left without its account.
    DeleteGroup {
        /// Group (the account's name).
        group: String,
    },
    /// Drop the account from `accounts.json` once it is gone (the UID high-water mark stays).
    ForgetAccount {
        /// Name.
        user: String,
    },
}

impl Step {
    /// A short description for outcome notes and logs.
    pub fn describe(&self) -> String {
        match self {
            Step::CreateMarkerGroup => format!("create the {MARKER_GROUP} group"),
            Step::RecordAccount { user, .. } => format!("record '{user}'"),
            Step::AddUser { user, .. } => format!("create '{user}'"),
            Step::SetAccountExpiry { user, .. } => format!("set the expiry of '{user}'"),
            Step::LockAccount { user } => format!("lock '{user}'"),
            Step::RemoveKeys { user } => format!("remove the SSH keys of '{user}'"),
            Step::ClearSudoTimestamps { user } => {
                format!("clear sudo's cached credentials of '{user}'")
            }
            Step::InvalidateNameCaches => "invalidate the nscd/sssd caches".to_owned(),
            Step::AddToGroup { user, group } => format!("add '{user}' to '{group}'"),
            Step::RemoveFromGroup { user, group } => format!("remove '{user}' from '{group}'"),
            Step::WriteKeys { user, .. } => format!("write the SSH keys of '{user}'"),
            Step::WritePrincipals { user, .. } => {
                format!("write the SSH certificate principals of '{user}'")
            }
            Step::RemovePrincipals { user } => {
                format!("remove the SSH certificate principals of '{user}'")
            }
            Step::SetPasswordHash { user, .. } => format!("set the password of '{user}'"),
            Step::RecordGroupGrant { user, group, .. } => {
                format!("record the '{group}' grant of '{user}'")
            }
            Step::ForgetGroupGrant { user, group } => {
                format!("forget the '{group}' grant of '{user}'")
            }
            Step::RecordAdoption { user, uid } => {
                format!("record '{user}' (UID {uid}) as adopted")
            }
            Step::EndProcesses { uid, .. } => format!("end the processes of UID {uid}"),
            Step::EndPrivilegedProcesses { uid, holding: None } => {
                format!("end the processes UID {uid} started through sudo")
            }
            Step::EndPrivilegedProcesses {
                uid,
                holding: Some(gid),
            } => format!(
                "end the processes UID {uid} started through sudo or that still hold GID {gid}"
            ),
            Step::DeleteUser { user } => format!("delete '{user}'"),
            Step::DeleteGroup { group } => format!("delete the group '{group}'"),
            Step::ForgetAccount { user } => format!("forget '{user}'"),
        }
    }
}

/// What to do for a job, and what a person should know about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// Notes for the outcome (e.g. "nothing to do").
    pub notes: Vec<String>,
}

impl Plan {
    pub(super) fn steps(steps: Vec<Step>) -> Plan {
        Plan {
            steps,
            notes: Vec::new(),
        }
    }

    pub(super) fn note(note: String) -> Plan {
        Plan {
            steps: Vec::new(),
            notes: vec![note],
        }
    }
}

impl Step {
    /// Whether the step changes the account files (and so waits for their lock).
    pub fn needs_file_lock(&self) -> bool {
        matches!(
            self,
            Step::CreateMarkerGroup
                | Step::AddUser { .. }
                | Step::SetAccountExpiry { .. }
                | Step::LockAccount { .. }
                | Step::AddToGroup { .. }
                | Step::RemoveFromGroup { .. }
                | Step::SetPasswordHash { .. }
                | Step::DeleteUser { .. }
                | Step::DeleteGroup { .. }
        )
    }

    /// Whether the step only drops the agent's own record: in a revocation it runs after the
    /// result was verified, so a revocation that is not complete is retried.
    pub fn is_forget(&self) -> bool {
        matches!(
            self,
            Step::ForgetAccount { .. } | Step::ForgetGroupGrant { .. }
        )
    }
}
