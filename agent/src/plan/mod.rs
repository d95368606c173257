//! The planner: a job, a snapshot of the account files, the agent's own records and the host's
//! policy go in; the steps to take (or a refusal with a stable error code) come out. Pure: no
//! I/O, so every rule of DESIGN.md §3 is tested here from data.
//!
//! - [`ownership`]: which accounts are Latch's (to revoke, to grant more), free UIDs;
//! - [`expiry`]: which grants have ended and how an end is written into the files;
//! - [`verify`]: the post-condition of each job on the files read back.
//!
//! Granting is strict: policy (allowed groups, UID range, well-formed account files) is checked
//! and any failure refuses the job. Revoking (`delete-account`, `remove-group`, local expiry)
//! never consults policy, and its steps are run best-effort by the worker: each is tried, the
//! result is verified as a whole.

mod expiry;
mod ownership;
mod verify;

use chrono::{DateTime, Utc};
use latch_common::job::{JobError, JobErrorCode, JobSpec};

#[cfg(test)]
pub use expiry::Expired;
pub use expiry::{authorized_key_lines, expired, next_expiry, plan_expiry, shadow_expire_day};
#[cfg(test)]
pub use ownership::FilesOnly;
use ownership::not_for_adopted;
pub use ownership::{
    GECOS_TAG, MARKER_GROUP, NameService, Ownership, adoptable_uid, adopted_account, choose_uid,
    managed_account, owned_account,
};
pub use verify::verify;

use crate::state::Accounts;
use crate::system::etc::Snapshot;

/// What the host allows, from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Groups jobs may grant.
    pub allowed_groups: Vec<String>,
    /// UID range for new accounts.
    pub uid_min: u32,
    /// UID range for new accounts.
    pub uid_max: u32,
    /// Shell when the job names none.
    pub default_shell: String,
    /// Groups whose only power is sudo, which checks membership at each use (`group_source
    /// dynamic`): revoking one leaves the user's sessions alone. Revoking any other group ends
    /// the user's processes that still hold it (a process keeps its groups until it exits).
    pub sudo_checked_groups: Vec<String>,
    /// Whether system accounts (UID 1–999) may be adopted (root never is).
    pub allow_adopt_system_accounts: bool,
}

/// Everything the planner decides from.
pub struct Facts<'a> {
    /// The account files.
    pub snapshot: &'a Snapshot,
    /// The agent's records.
    pub accounts: &'a Accounts,
    /// The host's policy.
    pub policy: &'a Policy,
    /// Users and groups known beyond the files (LDAP, SSSD, …).
    pub names: &'a dyn NameService,
}

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
    fn steps(steps: Vec<Step>) -> Plan {
        Plan {
            steps,
            notes: Vec::new(),
        }
    }

    fn note(note: String) -> Plan {
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

/// Whether `spec` takes access away (run best-effort, never refused by policy).
pub fn is_revocation(spec: &JobSpec) -> bool {
    matches!(
        spec,
        JobSpec::DeleteAccount { .. } | JobSpec::RemoveGroup { .. }
    )
}

pub(crate) fn refuse(code: JobErrorCode, message: impl Into<String>) -> JobError {
    JobError::new(code, message)
}

/// Groups no job may ever grant, whatever the configuration says.
fn never_granted(group: &str) -> bool {
    group == "root" || group == MARKER_GROUP
}

fn allowed_group(group: &str, facts: &Facts<'_>) -> Result<(), JobError> {
    if never_granted(group) {
        return Err(refuse(
            JobErrorCode::GroupNotAllowed,
            format!("group '{group}' may never be granted by Latch"),
        ));
    }
    let allowed = &facts.policy.allowed_groups;
    if !allowed.iter().any(|g| g == group) {
        return Err(refuse(
            JobErrorCode::GroupNotAllowed,
            format!(
                "group '{group}' may not be granted on this host (allowed: {}); if it should be, add it to allowed_groups in the agent's configuration",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            ),
        ));
    }
    if facts.snapshot.group(group).is_none() {
        return Err(refuse(
            JobErrorCode::NoSuchGroup,
            format!("group '{group}' does not exist on this host"),
        ));
    }
    Ok(())
}

/// The host's sudo group: the first group the host allows granting that exists on it (by
/// default the distribution's `sudo` or `wheel`).
pub fn sudo_group<'a>(facts: &Facts<'a>) -> Result<&'a str, JobError> {
    let allowed = &facts.policy.allowed_groups;
    allowed
        .iter()
        .find(|g| !never_granted(g) && facts.snapshot.group(g).is_some())
        .map(String::as_str)
        .ok_or_else(|| {
            refuse(
                JobErrorCode::NoSudoGroup,
                format!(
                    "the job asks for sudo, but none of the groups this host allows granting exists on it (allowed: {}); create the sudo group or set allowed_groups in the agent's configuration, its first existing group being the one that gives sudo",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            )
        })
}

/// The groups a create-account job grants: the ones it names, then the host's sudo group when
/// it asks for `sudo` (once, if it also named it).
pub fn granted_groups(
    groups: &[String],
    sudo: bool,
    facts: &Facts<'_>,
) -> Result<Vec<String>, JobError> {
    let mut granted = groups.to_vec();
    if sudo {
        let group = sudo_group(facts)?;
        if !granted.iter().any(|g| g == group) {
            granted.push(group.to_owned());
        }
    }
    Ok(granted)
}

/// Granting refuses while an account file has a line that does not parse: shadow-utils would
/// work around it, but the agent could not check what it changes.
fn files_well_formed(snapshot: &Snapshot) -> Result<(), JobError> {
    match snapshot.malformed.as_slice() {
        [] => Ok(()),
        lines => Err(refuse(
            JobErrorCode::AccountFilesMalformed,
            format!(
                "{}; nothing is granted until the file is repaired (`pwck` / `grpck`), revocations still run",
                lines.join("; ")
            ),
        )),
    }
}

/// Steps that remove every access of account `user` (UID `uid`, primary GID `gid`) and then
/// the account itself. Each step is independent: the worker tries them all. Steps that need no
/// account-file lock come first, so a lock held by another program (`vipw`) delays nothing that
/// ends access: sudo's cache, then every process (sessions, a FUSE daemon under the home, root
/// shells from sudo) before anything under the home is touched, then the keys; then the files:
/// lock, every supplementary group but the marker, NSS caches; then processes again (a login in
/// between) and `userdel`; the record goes last, once the result is verified. `home` is `None`
/// when the passwd line cannot be read (keys are then left to `userdel`).
fn removal_steps(
    user: &str,
    uid: u32,
    gid: u32,
    home: Option<&str>,
    snapshot: &Snapshot,
) -> Vec<Step> {
    let mut steps = vec![
        Step::ClearSudoTimestamps {
            user: user.to_owned(),
        },
        Step::EndProcesses { uid, gid },
    ];
    if home.is_some() {
        steps.push(Step::RemoveKeys {
            user: user.to_owned(),
        });
    }
    steps.push(Step::RemovePrincipals {
        user: user.to_owned(),
    });
    steps.push(Step::LockAccount {
        user: user.to_owned(),
    });
    for group in &snapshot.group {
        if group.name != MARKER_GROUP && group.members.iter().any(|m| m == user) {
            steps.push(Step::RemoveFromGroup {
                user: user.to_owned(),
                group: group.name.clone(),
            });
        }
    }
    steps.extend([
        Step::InvalidateNameCaches,
        Step::EndProcesses { uid, gid },
        Step::DeleteUser {
            user: user.to_owned(),
        },
        Step::ForgetAccount {
            user: user.to_owned(),
        },
    ]);
    steps
}

/// What is left of an account Latch created that is no longer in `/etc/passwd` (deleted by
/// hand, or a `useradd` that failed half-way): its processes (unless another account now has
/// its UID), its certificate principals, a private group, then the record.
fn leftover_steps(user: &str, uid: u32, snapshot: &Snapshot) -> Vec<Step> {
    let mut steps = Vec::new();
    if !snapshot.passwd.iter().any(|u| u.uid == uid) {
        steps.push(Step::EndProcesses { uid, gid: uid });
    }
    steps.push(Step::RemovePrincipals {
        user: user.to_owned(),
    });
    if snapshot.group(user).is_some_and(|g| g.gid == uid) {
        steps.push(Step::DeleteGroup {
            group: user.to_owned(),
        });
    }
    steps.push(Step::ForgetAccount {
        user: user.to_owned(),
    });
    steps
}

/// Whose password a set-password job may set: an account Latch created and may still grant to
/// ([`managed_account`]), or an adopted one whose UID is still the adopted one
/// ([`adopted_account`]).
fn password_account(user: &str, facts: &Facts<'_>) -> Result<(), JobError> {
    if facts.accounts.adopted.contains_key(user) && !facts.accounts.accounts.contains_key(user) {
        adopted_account(user, facts).map(|_| ())
    } else {
        managed_account(user, facts).map(|_| ())
    }
}

/// adopt-account: an existing local account that Latch did not create (no record, no marker
/// group), neither root nor — unless the host allows it — a system account, is recorded as
/// adopted. Adopting it again with the same UID changes nothing.
fn plan_adoption(user: &str, job_id: &str, facts: &Facts<'_>) -> Result<Plan, JobError> {
    let snapshot = facts.snapshot;
    files_well_formed(snapshot)?;
    if !matches!(
        owned_account(user, snapshot, facts.accounts),
        Ownership::NotOurs
    ) {
        return Err(refuse(
            JobErrorCode::EphemeralAccount,
            format!(
                "account '{user}' is one Latch created for a grant (ephemeral): it is removed when its grant ends and is never adopted. To adopt an ordinary account of that name, delete the ephemeral one first (delete-account)"
            ),
        ));
    }
    let Some(entry) = snapshot.user(user) else {
        let why = if facts.names.user_exists(user) {
            " (it resolves through the name service — LDAP, SSSD, … —, whose accounts Latch does not change)"
        } else {
            ""
        };
        return Err(refuse(
            JobErrorCode::NoSuchAccount,
            format!(
                "account '{user}' does not exist in /etc/passwd on this host{why}; only an existing local account can be adopted"
            ),
        ));
    };
    if snapshot.is_member(user, MARKER_GROUP) {
        return Err(refuse(
            JobErrorCode::EphemeralAccount,
            format!(
                "account '{user}' is in the {MARKER_GROUP} group, the mark of accounts Latch creates for grants, but this agent has no record of it; an ephemeral account is never adopted. If it is an ordinary account, take it out of {MARKER_GROUP} (gpasswd -d {user} {MARKER_GROUP}) and adopt it again"
            ),
        ));
    }
    adoptable_uid(user, entry.uid, facts.policy)?;
    let record = Step::RecordAdoption {
        user: user.to_owned(),
        uid: entry.uid,
    };
    Ok(match facts.accounts.adopted.get(user) {
        Some(adopted) if adopted.uid == entry.uid && adopted.adopted_by_job == job_id => {
            Plan::default()
        }
        Some(adopted) if adopted.uid == entry.uid => Plan::note(format!(
            "account '{user}' (UID {}) was already adopted by job {}; nothing to do",
            entry.uid, adopted.adopted_by_job
        )),
        Some(adopted) => Plan {
            steps: vec![record],
            notes: vec![format!(
                "'{user}' had been adopted with UID {}, which it no longer has; the account that now has the name (UID {}) is adopted in its place",
                adopted.uid, entry.uid
            )],
        },
        None => Plan::steps(vec![record]),
    })
}

/// Plans `spec`. An empty plan means the host is already in the requested state.
pub fn plan(spec: &JobSpec, job_id: &str, facts: &Facts<'_>) -> Result<Plan, JobError> {
    spec.validate().map_err(|e| {
        refuse(
            JobErrorCode::InvalidJob,
            format!("the job is not valid: {e}"),
        )
    })?;
    let snapshot = facts.snapshot;
    match spec {
        JobSpec::CreateAccount {
            user,
            groups,
            shell,
            ssh_keys,
            expires_at,
            sudo,
            principals,
        } => {
            files_well_formed(snapshot)?;
            let groups = &granted_groups(groups, *sudo, facts)?;
            for group in groups {
                allowed_group(group, facts)?;
            }
            let shell = shell
                .clone()
                .unwrap_or_else(|| facts.policy.default_shell.clone());
            if !snapshot.shells.contains(&shell) {
                return Err(refuse(
                    JobErrorCode::ShellNotAllowed,
                    format!("shell '{shell}' is not listed in /etc/shells on this host"),
                ));
            }
            let mut steps = Vec::new();
            if snapshot.user(user).is_some() {
                // Re-delivery of our own create converges; anything else is someone else's account.
                managed_account(user, facts).map_err(|e| match e.code {
                    JobErrorCode::AccountNotManaged
                        if !matches!(
                            owned_account(user, snapshot, facts.accounts),
                            Ownership::Ours(_)
                        ) =>
                    {
                        refuse(
                            JobErrorCode::AccountExists,
                            format!("account '{user}' already exists and Latch did not create it; choose another name"),
                        )
                    }
                    _ => e,
                })?;
                for group in groups {
                    if !snapshot.is_member(user, group) {
                        steps.push(Step::AddToGroup {
                            user: user.clone(),
                            group: group.clone(),
                        });
                    }
                }
                let recorded = facts.accounts.accounts.get(user).and_then(|a| a.expires_at);
                let shadow_day = snapshot.shadow(user).and_then(|s| s.expire_days);
                if recorded != *expires_at || shadow_day != expires_at.map(shadow_expire_day) {
                    steps.push(Step::SetAccountExpiry {
                        user: user.clone(),
                        expires_at: *expires_at,
                    });
                }
            } else {
                if snapshot.group(user).is_some() || facts.names.group_exists(user) {
                    return Err(refuse(
                        JobErrorCode::GroupExists,
                        format!(
                            "a group named '{user}' already exists; Latch will not adopt it as the account's private group. Choose another name or remove the group"
                        ),
                    ));
                }
                if facts.names.user_exists(user) {
                    return Err(refuse(
                        JobErrorCode::AccountExists,
                        format!(
                            "'{user}' already resolves as a user through the name service (NSS: LDAP, SSSD, …); choose another name"
                        ),
                    ));
                }
                let uid = choose_uid(snapshot, facts.accounts, facts.policy, facts.names)?;
                if snapshot.group(MARKER_GROUP).is_none() {
                    steps.push(Step::CreateMarkerGroup);
                }
                steps.push(Step::RecordAccount {
                    user: user.clone(),
                    uid,
                    expires_at: *expires_at,
                });
                let mut all_groups = vec![MARKER_GROUP.to_owned()];
                all_groups.extend(groups.iter().cloned());
                steps.push(Step::AddUser {
                    user: user.clone(),
                    uid,
                    shell,
                    groups: all_groups,
                    expire_day: expires_at.map(shadow_expire_day),
                });
            }
            for group in groups {
                steps.push(Step::RecordGroupGrant {
                    user: user.clone(),
                    group: group.clone(),
                    job_id: job_id.to_owned(),
                    expires_at: *expires_at,
                });
            }
            if !ssh_keys.is_empty() {
                steps.push(Step::WriteKeys {
                    user: user.clone(),
                    lines: authorized_key_lines(ssh_keys, *expires_at),
                });
            }
            if !principals.is_empty() {
                steps.push(Step::WritePrincipals {
                    user: user.clone(),
                    principals: principals.clone(),
                });
            }
            Ok(Plan::steps(steps))
        }
        JobSpec::DeleteAccount { user } => match owned_account(user, snapshot, facts.accounts) {
            Ownership::Ours(entry) => Ok(Plan::steps(removal_steps(
                user,
                entry.uid,
                entry.gid,
                Some(&entry.home),
                snapshot,
            ))),
            Ownership::Unreadable { uid } => Ok(Plan {
                steps: removal_steps(user, uid, uid, None, snapshot),
                notes: vec![format!(
                    "the /etc/passwd line of '{user}' does not parse; its SSH keys were left for userdel to remove with the home"
                )],
            }),
            Ownership::Gone { uid } => Ok(Plan {
                steps: leftover_steps(user, uid, snapshot),
                notes: vec![format!(
                    "account '{user}' was already gone from /etc/passwd; the agent's record was dropped"
                )],
            }),
            // The principals file is Latch's own: certificates must not log in as the new
            // owner of the name.
            Ownership::Replaced { ours, now } => Ok(Plan {
                steps: vec![
                    Step::RemovePrincipals { user: user.clone() },
                    Step::ForgetAccount { user: user.clone() },
                ],
                notes: vec![format!(
                    "the account Latch created as '{user}' (UID {ours}) is gone; the name now has UID {now} and belongs to someone else, who was left alone"
                )],
            }),
            Ownership::NotOurs
                if snapshot.user(user).is_some() && facts.accounts.adopted.contains_key(user) =>
            {
                Err(not_for_adopted(user, "it is never deleted"))
            }
            Ownership::NotOurs if snapshot.user(user).is_some() => Err(refuse(
                JobErrorCode::AccountNotManaged,
                format!(
                    "account '{user}' was not created by Latch on this host; Latch deletes only accounts it created"
                ),
            )),
            Ownership::NotOurs => Ok(Plan::note(format!(
                "account '{user}' does not exist on this host; nothing to do"
            ))),
        },
        JobSpec::AddGroup {
            user,
            group,
            expires_at,
        } => {
            files_well_formed(snapshot)?;
            allowed_group(group, facts)?;
            managed_account(user, facts)?;
            let mut steps = Vec::new();
            if !snapshot.is_member(user, group) {
                steps.push(Step::AddToGroup {
                    user: user.clone(),
                    group: group.clone(),
                });
            }
            steps.push(Step::RecordGroupGrant {
                user: user.clone(),
                group: group.clone(),
                job_id: job_id.to_owned(),
                expires_at: *expires_at,
            });
            Ok(Plan::steps(steps))
        }
        JobSpec::RemoveGroup { user, group } => {
            if group == MARKER_GROUP {
                return Err(refuse(
                    JobErrorCode::InvalidJob,
                    format!(
                        "the {MARKER_GROUP} group is removed only with the account (delete-account)"
                    ),
                ));
            }
            let forget = Step::ForgetGroupGrant {
                user: user.clone(),
                group: group.clone(),
            };
            match owned_account(user, snapshot, facts.accounts) {
                Ownership::Ours(entry) => {
                    let mut steps = Vec::new();
                    if snapshot.is_member(user, group) {
                        steps.push(Step::RemoveFromGroup {
                            user: user.clone(),
                            group: group.clone(),
                        });
                    }
                    // With sudo's group_source dynamic (set by the agent), open sessions lose
                    // sudo at once; cached credentials and what was started through sudo go too.
                    // Any other group is held by every process started while a member: those
                    // end.
                    let holding = if facts.policy.sudo_checked_groups.contains(group) {
                        None
                    } else {
                        snapshot.group(group).map(|g| g.gid)
                    };
                    steps.extend([
                        Step::ClearSudoTimestamps { user: user.clone() },
                        Step::InvalidateNameCaches,
                        Step::EndPrivilegedProcesses {
                            uid: entry.uid,
                            holding,
                        },
                        forget,
                    ]);
                    Ok(Plan::steps(steps))
                }
                Ownership::Unreadable { uid } => Ok(Plan {
                    steps: vec![
                        Step::RemoveFromGroup {
                            user: user.clone(),
                            group: group.clone(),
                        },
                        Step::ClearSudoTimestamps { user: user.clone() },
                        Step::EndPrivilegedProcesses {
                            uid,
                            holding: snapshot.group(group).map(|g| g.gid),
                        },
                        forget,
                    ],
                    notes: vec![format!("the /etc/passwd line of '{user}' does not parse")],
                }),
                Ownership::Gone { .. } | Ownership::Replaced { .. } => Ok(Plan {
                    steps: vec![forget],
                    notes: vec![format!(
                        "the account Latch created as '{user}' is gone; nothing to remove"
                    )],
                }),
                Ownership::NotOurs
                    if snapshot.user(user).is_some()
                        && facts.accounts.adopted.contains_key(user) =>
                {
                    Err(not_for_adopted(user, "its groups are never changed"))
                }
                Ownership::NotOurs if snapshot.user(user).is_some() => Err(refuse(
                    JobErrorCode::AccountNotManaged,
                    format!(
                        "account '{user}' was not created by Latch on this host; Latch changes only accounts it created"
                    ),
                )),
                Ownership::NotOurs => Ok(Plan::note(format!(
                    "account '{user}' does not exist on this host; nothing to do"
                ))),
            }
        }
        // Handled by the worker: it changes the agent's identity, not the host.
        JobSpec::RotateSigningKey { .. } => Ok(Plan::default()),
        JobSpec::AdoptAccount { user } => plan_adoption(user, job_id, facts),
        JobSpec::SetPassword {
            user,
            password_hash,
        } => {
            files_well_formed(snapshot)?;
            password_account(user, facts)?;
            let mut steps = Vec::new();
            if snapshot
                .shadow(user)
                .is_none_or(|s| s.hash != *password_hash)
            {
                steps.push(Step::SetPasswordHash {
                    user: user.clone(),
                    hash: password_hash.clone(),
                });
            }
            Ok(Plan::steps(steps))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AdoptedAccount, GroupGrant, ManagedAccount};
    use crate::system::etc::{parse_group, parse_passwd, parse_shadow};
    use latch_common::job::JobErrorCode as Code;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          legacy:x:1001:1001:Legacy:/home/legacy:/bin/bash\n\
                          eph:x:60000:60000:latch-managed account:/home/eph:/bin/bash\n\
                          fake:x:60001:60001:latch-managed account:/home/fake:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:eph\nadm:x:4:eph\nlatch-managed:x:999:eph,fake\n\
                         legacy:x:1001:\neph:x:60000:\nfake:x:60001:\ntaken:x:60002:\n";
    const SHADOW: &str = "root:*:1::::::\nlegacy:$6$a$b:1::::::\neph:!:1::::::\nfake:!:1::::::\n";

    fn snapshot() -> Snapshot {
        Snapshot {
            passwd: parse_passwd(PASSWD).unwrap(),
            group: parse_group(GROUP).unwrap(),
            shadow: parse_shadow(SHADOW).unwrap(),
            shells: vec!["/bin/bash".into(), "/bin/sh".into()],
            malformed: Vec::new(),
            malformed_users: Vec::new(),
        }
    }

    fn accounts() -> Accounts {
        let mut accounts = Accounts {
            uid_high_water: 60001,
            ..Accounts::default()
        };
        // "fake" carries the marker and tag but the agent never recorded it.
        accounts.accounts.insert(
            "eph".into(),
            ManagedAccount {
                uid: 60000,
                created_by_job: "j".into(),
                created_at: Utc::now(),
                expires_at: None,
                group_grants: Default::default(),
            },
        );
        accounts
    }

    fn policy() -> Policy {
        Policy {
            allowed_groups: vec!["sudo".into()],
            uid_min: 60000,
            uid_max: 60999,
            default_shell: "/bin/bash".into(),
            sudo_checked_groups: vec!["sudo".into()],
            allow_adopt_system_accounts: false,
        }
    }

    fn plan_with(
        spec: &JobSpec,
        snapshot: &Snapshot,
        accounts: &Accounts,
        policy: &Policy,
    ) -> Result<Plan, JobError> {
        let facts = Facts {
            snapshot,
            accounts,
            policy,
            names: &FilesOnly,
        };
        plan(spec, "job-1", &facts)
    }

    fn check(spec: JobSpec, expected: Result<Vec<Step>, Code>) {
        let got = plan_with(&spec, &snapshot(), &accounts(), &policy())
            .map(|p| p.steps)
            .map_err(|e| e.code);
        assert_eq!(got, expected, "{spec:?}");
    }

    fn create(user: &str, groups: &[&str]) -> JobSpec {
        JobSpec::CreateAccount {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            shell: None,
            ssh_keys: vec![],
            expires_at: None,
            sudo: false,
            principals: vec![],
        }
    }

    fn delete(user: &str) -> JobSpec {
        JobSpec::DeleteAccount { user: user.into() }
    }

    fn remove_sudo(user: &str) -> JobSpec {
        JobSpec::RemoveGroup {
            user: user.into(),
            group: "sudo".into(),
        }
    }

    fn eph_removal() -> Vec<Step> {
        let end = Step::EndProcesses {
            uid: 60000,
            gid: 60000,
        };
        vec![
            Step::ClearSudoTimestamps { user: "eph".into() },
            end.clone(),
            Step::RemoveKeys { user: "eph".into() },
            Step::RemovePrincipals { user: "eph".into() },
            Step::LockAccount { user: "eph".into() },
            Step::RemoveFromGroup {
                user: "eph".into(),
                group: "sudo".into(),
            },
            Step::RemoveFromGroup {
                user: "eph".into(),
                group: "adm".into(),
            },
            Step::InvalidateNameCaches,
            end,
            Step::DeleteUser { user: "eph".into() },
            Step::ForgetAccount { user: "eph".into() },
        ]
    }

    #[test]
    fn create_picks_an_unused_uid_above_the_high_water_mark() {
        check(
            create("alice", &["sudo"]),
            Ok(vec![
                Step::RecordAccount {
                    user: "alice".into(),
                    uid: 60003,
                    expires_at: None,
                },
                Step::AddUser {
                    user: "alice".into(),
                    uid: 60003,
                    shell: "/bin/bash".into(),
                    groups: vec!["latch-managed".into(), "sudo".into()],
                    expire_day: None,
                },
                Step::RecordGroupGrant {
                    user: "alice".into(),
                    group: "sudo".into(),
                    job_id: "job-1".into(),
                    expires_at: None,
                },
            ]),
        );
    }

    /// A directory (LDAP, SSSD) behind NSS that knows a user, a group, a UID and a GID the files
    /// do not.
    struct Directory;

    impl NameService for Directory {
        fn user_exists(&self, name: &str) -> bool {
            name == "ldapuser"
        }
        fn group_exists(&self, name: &str) -> bool {
            name == "ldapgroup"
        }
        fn uid_taken(&self, uid: u32) -> bool {
            uid == 60003
        }
        fn gid_taken(&self, gid: u32) -> bool {
            gid == 60004
        }
    }

    /// Finding 13 (second half): a UID or name known only to the name service (LDAP, SSSD,
    /// extrausers) is never handed out.
    #[test]
    fn finding_13_uids_and_names_known_to_nss_are_skipped() {
        let (snapshot, accounts, policy) = (snapshot(), accounts(), policy());
        let facts = Facts {
            snapshot: &snapshot,
            accounts: &accounts,
            policy: &policy,
            names: &Directory,
        };
        let steps = plan(&create("alice", &[]), "j", &facts).unwrap().steps;
        assert!(
            steps.contains(&Step::RecordAccount {
                user: "alice".into(),
                uid: 60005,
                expires_at: None
            }),
            "{steps:?}"
        );
        let refused = |user: &str| plan(&create(user, &[]), "j", &facts).unwrap_err().code;
        assert_eq!(refused("ldapuser"), Code::AccountExists);
        assert_eq!(refused("ldapgroup"), Code::GroupExists);
    }

    #[test]
    fn create_refusals() {
        check(create("legacy", &[]), Err(Code::AccountExists));
        check(create("fake", &[]), Err(Code::AccountExists));
        check(create("taken", &[]), Err(Code::GroupExists));
        check(create("alice", &["root"]), Err(Code::GroupNotAllowed));
        check(create("alice", &["adm"]), Err(Code::GroupNotAllowed));
        check(
            JobSpec::CreateAccount {
                user: "alice".into(),
                groups: vec![],
                shell: Some("/usr/bin/evil".into()),
                ssh_keys: vec![],
                expires_at: None,
                sudo: false,
                principals: vec![],
            },
            Err(Code::ShellNotAllowed),
        );
        check(create("root", &[]), Err(Code::InvalidJob));
        check(create("-oops", &[]), Err(Code::InvalidJob));
    }

    #[test]
    fn root_and_the_marker_are_never_granted_whatever_the_configuration() {
        let generous = Policy {
            allowed_groups: vec!["root".into(), MARKER_GROUP.into(), "sudo".into()],
            ..policy()
        };
        for group in ["root", MARKER_GROUP] {
            let err = plan_with(
                &JobSpec::AddGroup {
                    user: "eph".into(),
                    group: group.into(),
                    expires_at: None,
                },
                &snapshot(),
                &accounts(),
                &generous,
            )
            .unwrap_err();
            assert_eq!(err.code, Code::GroupNotAllowed);
            assert!(err.message.contains("may never be granted"), "{err}");
        }
    }

    fn create_with(user: &str, groups: &[&str], sudo: bool, principals: &[&str]) -> JobSpec {
        JobSpec::CreateAccount {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            shell: None,
            ssh_keys: vec![],
            expires_at: None,
            sudo,
            principals: principals.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// `sudo` joins the host's sudo group (the first allowed group that exists), once, recorded
    /// as a grant like a named group; principals are written after the account exists.
    #[test]
    fn sudo_joins_the_first_existing_allowed_group_and_principals_are_written() {
        let steps = plan_with(
            &create_with("alice", &[], true, &["p-test", "ops"]),
            &snapshot(),
            &accounts(),
            &Policy {
                allowed_groups: vec!["wheel".into(), "sudo".into(), "adm".into()],
                ..policy()
            },
        )
        .unwrap()
        .steps;
        let add = steps
            .iter()
            .find_map(|s| match s {
                Step::AddUser { groups, .. } => Some(groups.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(add, vec![MARKER_GROUP.to_owned(), "sudo".to_owned()]);
        assert!(steps.contains(&Step::RecordGroupGrant {
            user: "alice".into(),
            group: "sudo".into(),
            job_id: "job-1".into(),
            expires_at: None,
        }));
        assert_eq!(
            steps.last(),
            Some(&Step::WritePrincipals {
                user: "alice".into(),
                principals: vec!["p-test".into(), "ops".into()],
            })
        );
        // Naming the group as well as asking for sudo joins it once.
        let steps = plan_with(
            &create_with("alice", &["sudo"], true, &[]),
            &snapshot(),
            &accounts(),
            &policy(),
        )
        .unwrap()
        .steps;
        let grants = steps
            .iter()
            .filter(|s| matches!(s, Step::RecordGroupGrant { .. }))
            .count();
        assert_eq!(grants, 1, "{steps:?}");
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::WritePrincipals { .. }))
        );
        // Re-delivered to the existing account: the membership is already there.
        check(
            create_with("eph", &[], true, &["p-test"]),
            Ok(vec![
                Step::RecordGroupGrant {
                    user: "eph".into(),
                    group: "sudo".into(),
                    job_id: "job-1".into(),
                    expires_at: None,
                },
                Step::WritePrincipals {
                    user: "eph".into(),
                    principals: vec!["p-test".into()],
                },
            ]),
        );
    }

    #[test]
    fn sudo_without_a_sudo_group_on_the_host_is_refused_clearly() {
        for allowed in [vec![], vec!["wheel".to_owned()], vec!["root".to_owned()]] {
            let err = plan_with(
                &create_with("alice", &[], true, &[]),
                &snapshot(),
                &accounts(),
                &Policy {
                    allowed_groups: allowed.clone(),
                    ..policy()
                },
            )
            .unwrap_err();
            assert_eq!(err.code, Code::NoSudoGroup, "{allowed:?}");
            assert!(err.message.contains("allowed_groups"), "{err}");
        }
        // Without sudo the same host creates the account.
        assert!(
            plan_with(
                &create_with("alice", &[], false, &[]),
                &snapshot(),
                &accounts(),
                &Policy {
                    allowed_groups: vec![],
                    ..policy()
                },
            )
            .is_ok()
        );
    }

    #[test]
    fn create_redelivered_converges() {
        check(
            create("eph", &["sudo"]),
            Ok(vec![Step::RecordGroupGrant {
                user: "eph".into(),
                group: "sudo".into(),
                job_id: "job-1".into(),
                expires_at: None,
            }]),
        );
    }

    /// Finding 10: re-creating a managed account with another end applies the new end.
    #[test]
    fn finding_10_recreating_an_account_applies_the_new_expiry() {
        let end = Utc::now() + chrono::Duration::minutes(5);
        let spec = JobSpec::CreateAccount {
            user: "eph".into(),
            groups: vec![],
            shell: None,
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBu2K6/pB0pY+4p2eGZq1jWbA5i6RzkmVfO2hXmLHqXh k".into()],
            expires_at: Some(end),
            sudo: false,
            principals: vec![],
        };
        let steps = plan_with(&spec, &snapshot(), &accounts(), &policy())
            .unwrap()
            .steps;
        assert!(
            steps.contains(&Step::SetAccountExpiry {
                user: "eph".into(),
                expires_at: Some(end)
            }),
            "{steps:?}"
        );
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::WriteKeys { lines, .. } if lines[0].starts_with("expiry-time="))),
            "{steps:?}"
        );
    }

    #[test]
    fn group_changes() {
        check(
            JobSpec::AddGroup {
                user: "eph".into(),
                group: "root".into(),
                expires_at: None,
            },
            Err(Code::GroupNotAllowed),
        );
        check(
            JobSpec::AddGroup {
                user: "legacy".into(),
                group: "sudo".into(),
                expires_at: None,
            },
            Err(Code::AccountNotManaged),
        );
        check(
            remove_sudo("eph"),
            Ok(vec![
                Step::RemoveFromGroup {
                    user: "eph".into(),
                    group: "sudo".into(),
                },
                Step::ClearSudoTimestamps { user: "eph".into() },
                Step::InvalidateNameCaches,
                Step::EndPrivilegedProcesses {
                    uid: 60000,
                    holding: None,
                },
                Step::ForgetGroupGrant {
                    user: "eph".into(),
                    group: "sudo".into(),
                },
            ]),
        );
        check(
            JobSpec::RemoveGroup {
                user: "eph".into(),
                group: "latch-managed".into(),
            },
            Err(Code::InvalidJob),
        );
        check(remove_sudo("legacy"), Err(Code::AccountNotManaged));
    }

    /// A revoked group other than sudo ends the user's processes that still hold it (sudo
    /// checks membership at each use; `adm` or `docker` is held by the process itself).
    #[test]
    fn revoking_a_held_group_ends_the_processes_holding_it() {
        let steps = plan_with(
            &JobSpec::RemoveGroup {
                user: "eph".into(),
                group: "adm".into(),
            },
            &snapshot(),
            &accounts(),
            &policy(),
        )
        .unwrap()
        .steps;
        assert!(
            steps.contains(&Step::EndPrivilegedProcesses {
                uid: 60000,
                holding: Some(4)
            }),
            "{steps:?}"
        );
    }

    /// A Latch account whose own passwd line does not parse is still revoked (by name, its
    /// processes by the recorded UID), never taken for gone.
    #[test]
    fn an_account_with_a_malformed_line_is_revoked_not_forgotten() {
        let mut files = snapshot();
        files.passwd.retain(|u| u.name != "eph");
        files.malformed_users = vec!["eph".into()];
        let plan = plan_with(&delete("eph"), &files, &accounts(), &policy()).unwrap();
        assert!(
            plan.steps
                .contains(&Step::DeleteUser { user: "eph".into() })
        );
        assert!(plan.steps.contains(&Step::EndProcesses {
            uid: 60000,
            gid: 60000
        }));
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::RemoveKeys { .. }))
        );
        let (records, policy) = (accounts(), policy());
        let facts = Facts {
            snapshot: &files,
            accounts: &records,
            policy: &policy,
            names: &FilesOnly,
        };
        assert_eq!(
            verify(&delete("eph"), &facts).unwrap_err().code,
            Code::VerifyFailed
        );
    }

    /// Finding 2: tightening `allowed_groups` must not stop the revocation of memberships
    /// granted before: only granting checks policy.
    #[test]
    fn finding_2_tightened_allowed_groups_still_revoke() {
        let tightened = Policy {
            allowed_groups: vec![],
            uid_min: 61000,
            uid_max: 61999,
            ..policy()
        };
        let steps = plan_with(&remove_sudo("eph"), &snapshot(), &accounts(), &tightened)
            .unwrap()
            .steps;
        assert_eq!(
            steps[0],
            Step::RemoveFromGroup {
                user: "eph".into(),
                group: "sudo".into()
            }
        );
        // Deletion removes every supplementary group (adm was never in allowed_groups).
        let steps = plan_with(&delete("eph"), &snapshot(), &accounts(), &tightened)
            .unwrap()
            .steps;
        assert_eq!(steps, eph_removal());
        // Granting does check it.
        let err = plan_with(
            &JobSpec::AddGroup {
                user: "eph".into(),
                group: "sudo".into(),
                expires_at: None,
            },
            &snapshot(),
            &accounts(),
            &tightened,
        )
        .unwrap_err();
        assert_eq!(err.code, Code::GroupNotAllowed);
    }

    /// Finding 5: ownership must not hang on GECOS, which the user can rewrite with `chfn`.
    #[test]
    fn finding_5_a_rewritten_gecos_does_not_stop_revocation() {
        let mut snapshot = snapshot();
        for entry in &mut snapshot.passwd {
            if entry.name == "eph" {
                entry.gecos = "Eve,Room 1,555,555".into();
            }
        }
        let steps = plan_with(&delete("eph"), &snapshot, &accounts(), &policy())
            .unwrap()
            .steps;
        assert_eq!(steps, eph_removal());
        // ... and an operator's `usermod -G` that dropped the marker group does not either.
        for group in &mut snapshot.group {
            group.members.retain(|m| m != "eph");
        }
        let plan = plan_with(&delete("eph"), &snapshot, &accounts(), &policy()).unwrap();
        assert!(
            plan.steps
                .contains(&Step::DeleteUser { user: "eph".into() })
        );
    }

    #[test]
    fn only_accounts_latch_created_are_deleted_or_changed() {
        check(delete("legacy"), Err(Code::AccountNotManaged));
        check(delete("fake"), Err(Code::AccountNotManaged));
        check(set_password("legacy"), Err(Code::AccountNotManaged));
        check(delete("eph"), Ok(eph_removal()));
        check(
            set_password("eph"),
            Ok(vec![Step::SetPasswordHash {
                user: "eph".into(),
                hash: "$6$x$y".into(),
            }]),
        );
    }

    fn adopt(user: &str) -> JobSpec {
        JobSpec::AdoptAccount { user: user.into() }
    }

    fn set_password(user: &str) -> JobSpec {
        JobSpec::SetPassword {
            user: user.into(),
            password_hash: "$6$x$y".into(),
        }
    }

    /// The fixture's records with `legacy` (UID 1001) adopted by job `a1`.
    fn with_legacy_adopted() -> Accounts {
        let mut records = accounts();
        records.adopted.insert(
            "legacy".into(),
            AdoptedAccount {
                uid: 1001,
                adopted_by_job: "a1".into(),
                adopted_at: Utc::now(),
            },
        );
        records
    }

    /// The fixture's files with `legacy` deleted and re-created with another UID.
    fn legacy_recreated() -> Snapshot {
        let mut files = snapshot();
        for entry in &mut files.passwd {
            if entry.name == "legacy" {
                entry.uid = 1500;
            }
        }
        files
    }

    /// The fixture's files plus a system account (`svc`, UID 998) and a root alias (`toor`).
    fn with_system_accounts() -> Snapshot {
        let mut files = snapshot();
        files.passwd.extend(
            parse_passwd(
                "svc:x:998:998::/var/lib/svc:/usr/sbin/nologin\ntoor:x:0:0::/root:/bin/bash\n",
            )
            .unwrap(),
        );
        files
            .shadow
            .extend(parse_shadow("svc:!:1::::::\ntoor:*:1::::::\n").unwrap());
        files
    }

    #[test]
    fn adopting_an_existing_ordinary_account_records_it() {
        check(
            adopt("legacy"),
            Ok(vec![Step::RecordAdoption {
                user: "legacy".into(),
                uid: 1001,
            }]),
        );
        // Re-delivery of the adopting job: nothing to do, nothing to say.
        let records = with_legacy_adopted();
        let facts = Facts {
            snapshot: &snapshot(),
            accounts: &records,
            policy: &policy(),
            names: &FilesOnly,
        };
        assert_eq!(plan(&adopt("legacy"), "a1", &facts), Ok(Plan::default()));
        // Another adopt of the same account changes nothing either, and says so.
        let again = plan(&adopt("legacy"), "a2", &facts).unwrap();
        assert!(again.steps.is_empty());
        assert!(
            again.notes[0].contains("already adopted by job a1"),
            "{again:?}"
        );
        // Deleted and re-created under the same name: an explicit adopt takes the new account.
        let files = legacy_recreated();
        let replaced = plan_with(&adopt("legacy"), &files, &records, &policy()).unwrap();
        assert_eq!(
            replaced.steps,
            vec![Step::RecordAdoption {
                user: "legacy".into(),
                uid: 1500
            }]
        );
        assert!(replaced.notes[0].contains("UID 1001"), "{replaced:?}");
    }

    #[test]
    fn adopting_what_is_missing_or_latchs_own_is_refused() {
        check(adopt("alice"), Err(Code::NoSuchAccount));
        check(adopt("eph"), Err(Code::EphemeralAccount));
        // Marker group and GECOS tag but no record: an ephemeral account whose record is lost.
        check(adopt("fake"), Err(Code::EphemeralAccount));
        // A name whose Latch account is gone and now belongs to someone else: delete-account
        // drops the record first.
        let mut records = accounts();
        records.accounts.get_mut("eph").unwrap().uid = 60005;
        let err = plan_with(&adopt("eph"), &snapshot(), &records, &policy()).unwrap_err();
        assert_eq!(err.code, Code::EphemeralAccount);
        assert!(err.message.contains("delete-account"), "{err}");
        check(adopt("root"), Err(Code::InvalidJob));
        check(adopt("-oops"), Err(Code::InvalidJob));
        let mut files = snapshot();
        files.malformed = vec!["/etc/passwd line 9: expected 7 fields, found 1".into()];
        let err = plan_with(&adopt("legacy"), &files, &accounts(), &policy()).unwrap_err();
        assert_eq!(err.code, Code::AccountFilesMalformed);
        // Known only to the name service (LDAP, SSSD): not a local account to adopt.
        let (files, records, policy) = (snapshot(), accounts(), policy());
        let facts = Facts {
            snapshot: &files,
            accounts: &records,
            policy: &policy,
            names: &Directory,
        };
        let err = plan(&adopt("ldapuser"), "j", &facts).unwrap_err();
        assert_eq!(err.code, Code::NoSuchAccount);
        assert!(err.message.contains("name service"), "{err}");
    }

    /// DESIGN.md §3 rule 1: root and system accounts are refused unless the host allows them;
    /// root (UID 0, under any name) always.
    #[test]
    fn root_and_system_accounts_are_adopted_only_as_the_host_allows() {
        let files = with_system_accounts();
        let strict = policy();
        let allowing = Policy {
            allow_adopt_system_accounts: true,
            ..policy()
        };
        let refused = |user: &str, policy: &Policy| {
            plan_with(&adopt(user), &files, &accounts(), policy).unwrap_err()
        };
        let err = refused("svc", &strict);
        assert_eq!(err.code, Code::SystemAccount);
        assert!(err.message.contains("allow_adopt_system_accounts"), "{err}");
        assert_eq!(
            plan_with(&adopt("svc"), &files, &accounts(), &allowing)
                .unwrap()
                .steps,
            vec![Step::RecordAdoption {
                user: "svc".into(),
                uid: 998
            }]
        );
        for policy in [&strict, &allowing] {
            let err = refused("toor", policy);
            assert_eq!(err.code, Code::SystemAccount);
            assert!(err.message.contains("UID 0"), "{err}");
        }
        // A system account adopted while allowed gets no password once the host stops
        // allowing it.
        let mut records = accounts();
        records.adopted.insert(
            "svc".into(),
            AdoptedAccount {
                uid: 998,
                adopted_by_job: "a1".into(),
                adopted_at: Utc::now(),
            },
        );
        assert!(plan_with(&set_password("svc"), &files, &records, &allowing).is_ok());
        let err = plan_with(&set_password("svc"), &files, &records, &strict).unwrap_err();
        assert_eq!(err.code, Code::SystemAccount);
    }

    #[test]
    fn set_password_reaches_adopted_accounts_with_their_uid_only() {
        let records = with_legacy_adopted();
        let set = |files: &Snapshot| {
            plan_with(&set_password("legacy"), files, &records, &policy()).map(|p| p.steps)
        };
        assert_eq!(
            set(&snapshot()),
            Ok(vec![Step::SetPasswordHash {
                user: "legacy".into(),
                hash: "$6$x$y".into(),
            }])
        );
        // Not adopted: refused as before.
        check(set_password("legacy"), Err(Code::AccountNotManaged));
        // Deleted and re-created with another UID: someone else's account now.
        let err = set(&legacy_recreated()).unwrap_err();
        assert_eq!(err.code, JobErrorCode::AccountNotManaged);
        assert!(
            err.message.contains("UID 1001") && err.message.contains("UID 1500"),
            "{err}"
        );
        // Deleted.
        let mut gone = snapshot();
        gone.passwd.retain(|u| u.name != "legacy");
        assert_eq!(set(&gone).unwrap_err().code, Code::NoSuchAccount);
    }

    /// Adopted accounts are never deleted, locked, expired or given groups: only their password
    /// is set.
    #[test]
    fn adopted_accounts_are_never_revoked() {
        let records = with_legacy_adopted();
        for spec in [
            delete("legacy"),
            remove_sudo("legacy"),
            JobSpec::AddGroup {
                user: "legacy".into(),
                group: "sudo".into(),
                expires_at: None,
            },
            create("legacy", &[]),
        ] {
            let err = plan_with(&spec, &snapshot(), &records, &policy()).unwrap_err();
            assert!(
                matches!(err.code, Code::AccountNotManaged | Code::AccountExists),
                "{spec:?}: {err}"
            );
            assert!(
                err.code == Code::AccountExists || err.message.contains("adopted"),
                "{spec:?}: {err}"
            );
        }
        let far = Utc::now() + chrono::Duration::days(365 * 100);
        assert!(expired(&records, far).is_empty());
        assert_eq!(next_expiry(&records), None);
    }

    #[test]
    fn adoption_is_verified_on_the_files_and_the_record() {
        let files = snapshot();
        let verify_with = |files: &Snapshot, records: &Accounts| {
            let policy = policy();
            let facts = Facts {
                snapshot: files,
                accounts: records,
                policy: &policy,
                names: &FilesOnly,
            };
            verify(&adopt("legacy"), &facts).map_err(|e| e.code)
        };
        assert_eq!(verify_with(&files, &with_legacy_adopted()), Ok(()));
        assert_eq!(
            verify_with(&files, &accounts()),
            Err(Code::VerifyFailed),
            "no record"
        );
        assert_eq!(
            verify_with(&legacy_recreated(), &with_legacy_adopted()),
            Err(Code::VerifyFailed),
            "the record names another UID"
        );
    }

    #[test]
    fn deleting_what_is_not_there_says_so() {
        let plan = plan_with(&delete("gone"), &snapshot(), &accounts(), &policy()).unwrap();
        assert!(plan.steps.is_empty());
        assert_eq!(
            plan.notes,
            vec!["account 'gone' does not exist on this host; nothing to do"]
        );
        // Recorded but gone, with its private group left behind by a failed useradd.
        let mut records = accounts();
        records.accounts.insert(
            "half".into(),
            ManagedAccount {
                uid: 60002,
                created_by_job: "j2".into(),
                created_at: Utc::now(),
                expires_at: None,
                group_grants: Default::default(),
            },
        );
        let mut files = snapshot();
        files
            .group
            .push(parse_group("half:x:60002:\n").unwrap().remove(0));
        let plan = plan_with(&delete("half"), &files, &records, &policy()).unwrap();
        assert_eq!(
            plan.steps,
            vec![
                Step::EndProcesses {
                    uid: 60002,
                    gid: 60002
                },
                Step::RemovePrincipals {
                    user: "half".into()
                },
                Step::DeleteGroup {
                    group: "half".into()
                },
                Step::ForgetAccount {
                    user: "half".into()
                }
            ]
        );
        // The name now belongs to another UID: left alone, record dropped.
        records.accounts.get_mut("half").unwrap().uid = 60005;
        let mut files = snapshot();
        files.passwd.push(
            parse_passwd("half:x:1500:1500::/home/half:/bin/sh\n")
                .unwrap()
                .remove(0),
        );
        let plan = plan_with(&delete("half"), &files, &records, &policy()).unwrap();
        assert_eq!(
            plan.steps,
            vec![
                Step::RemovePrincipals {
                    user: "half".into()
                },
                Step::ForgetAccount {
                    user: "half".into()
                }
            ]
        );
        assert!(plan.notes[0].contains("belongs to someone else"));
    }

    /// Finding 16: a malformed account-file line refuses granting, not revoking.
    #[test]
    fn finding_16_malformed_files_refuse_grants_only() {
        let mut files = snapshot();
        files.malformed = vec!["/etc/passwd line 9: expected 7 fields, found 1".into()];
        let err = plan_with(&create("alice", &[]), &files, &accounts(), &policy()).unwrap_err();
        assert_eq!(err.code, Code::AccountFilesMalformed);
        assert!(err.message.contains("/etc/passwd line 9"), "{err}");
        let plan = plan_with(&delete("eph"), &files, &accounts(), &policy()).unwrap();
        assert_eq!(plan.steps, eph_removal());
    }

    #[test]
    fn uid_range_exhaustion() {
        let tight = Policy {
            uid_min: 60000,
            uid_max: 60001,
            ..policy()
        };
        let err = plan_with(&create("alice", &[]), &snapshot(), &accounts(), &tight).unwrap_err();
        assert_eq!(err.code, Code::UidRangeExhausted);
    }

    #[test]
    fn expiry_rounds_up_to_the_next_midnight_and_keys_carry_it() {
        let end = chrono::DateTime::parse_from_rfc3339("2026-11-23T15:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let midnight = chrono::DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(shadow_expire_day(end), midnight.timestamp() / 86_400);
        assert_eq!(shadow_expire_day(midnight), midnight.timestamp() / 86_400);
        let lines = authorized_key_lines(&["ssh-ed25519 AAAA k".into()], Some(end));
        assert_eq!(
            lines,
            vec!["expiry-time=\"20261123150000Z\" ssh-ed25519 AAAA k"]
        );
        assert_eq!(
            authorized_key_lines(&["ssh-ed25519 AAAA k".into()], None),
            vec!["ssh-ed25519 AAAA k"]
        );
    }

    #[test]
    fn expired_grants_are_found_and_planned() {
        let now = Utc::now();
        let mut records = accounts();
        assert!(expired(&records, now).is_empty());
        assert_eq!(next_expiry(&records), None);
        let account = records.accounts.get_mut("eph").unwrap();
        account.group_grants.insert(
            "sudo".into(),
            GroupGrant {
                job_id: "g1".into(),
                expires_at: Some(now - chrono::Duration::seconds(1)),
            },
        );
        account.expires_at = Some(now + chrono::Duration::hours(1));
        assert_eq!(
            next_expiry(&records),
            Some(now - chrono::Duration::seconds(1))
        );
        let due = expired(&records, now);
        assert_eq!(
            due,
            vec![Expired::Group {
                user: "eph".into(),
                group: "sudo".into(),
                job_id: "g1".into()
            }]
        );
        let (files, policy) = (snapshot(), policy());
        let facts = Facts {
            snapshot: &files,
            accounts: &records,
            policy: &policy,
            names: &FilesOnly,
        };
        let steps = plan_expiry(&due[0], &facts).unwrap().steps;
        assert_eq!(
            steps[0],
            Step::RemoveFromGroup {
                user: "eph".into(),
                group: "sudo".into()
            }
        );

        let later = now + chrono::Duration::hours(2);
        let due = expired(&records, later);
        assert_eq!(
            due,
            vec![Expired::Account {
                user: "eph".into(),
                job_ids: vec!["j".into(), "g1".into()]
            }]
        );
        let steps = plan_expiry(&due[0], &facts).unwrap().steps;
        assert_eq!(steps[0], Step::ClearSudoTimestamps { user: "eph".into() });
        assert!(steps.contains(&Step::EndProcesses {
            uid: 60000,
            gid: 60000
        }));
        assert_eq!(
            steps.last(),
            Some(&Step::ForgetAccount { user: "eph".into() })
        );
    }

    #[test]
    fn an_expired_account_reports_each_granting_job_once() {
        let mut records = accounts();
        let account = records.accounts.get_mut("eph").unwrap();
        account.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        // "adm" sorts before "sudo": the creating job's own grant is not next to it.
        account.group_grants.insert(
            "adm".into(),
            GroupGrant {
                job_id: "g1".into(),
                expires_at: None,
            },
        );
        account.group_grants.insert(
            "sudo".into(),
            GroupGrant {
                job_id: "j".into(),
                expires_at: None,
            },
        );
        let due = expired(&records, Utc::now());
        assert_eq!(
            due,
            vec![Expired::Account {
                user: "eph".into(),
                job_ids: vec!["j".into(), "g1".into()]
            }]
        );
    }

    #[test]
    fn verify_reads_the_post_condition() {
        let (files, records, policy) = (snapshot(), accounts(), policy());
        let facts = Facts {
            snapshot: &files,
            accounts: &records,
            policy: &policy,
            names: &FilesOnly,
        };
        assert_eq!(
            verify(&remove_sudo("eph"), &facts).unwrap_err().code,
            Code::VerifyFailed
        );
        let spec = JobSpec::AddGroup {
            user: "eph".into(),
            group: "sudo".into(),
            expires_at: None,
        };
        assert_eq!(verify(&spec, &facts), Ok(()));
        assert_eq!(
            verify(&delete("eph"), &facts).unwrap_err().code,
            Code::VerifyFailed
        );
        assert_eq!(verify(&delete("nobody-here"), &facts), Ok(()));
    }

    /// A create-account with `sudo` is confirmed only once the account is in the host's sudo
    /// group.
    #[test]
    fn verify_checks_the_sudo_membership() {
        let (records, policy) = (accounts(), policy());
        let spec = create_with("eph", &[], true, &["p-test"]);
        let files = snapshot();
        let facts = Facts {
            snapshot: &files,
            accounts: &records,
            policy: &policy,
            names: &FilesOnly,
        };
        assert_eq!(verify(&spec, &facts), Ok(()));
        let mut without = snapshot();
        without.group = parse_group(&GROUP.replace("sudo:x:27:eph", "sudo:x:27:")).unwrap();
        let facts = Facts {
            snapshot: &without,
            ..facts
        };
        let err = verify(&spec, &facts).unwrap_err();
        assert_eq!(err.code, Code::VerifyFailed);
        assert!(err.message.contains("'sudo'"), "{err}");
    }
}
