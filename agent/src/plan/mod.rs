//! The planner: a job, a snapshot of the account files, the agent's own records and the host's
//! policy go in; the steps to take (or a refusal with a stable error code) come out. Pure: no
//! I/O, so every rule of DESIGN.md §3 is tested here from data.
//!
//! - [`ownership`]: which accounts are Latch's (to revoke, to grant more), free UIDs;
//! - [`expiry`]: which grants have ended and how an end is written into the files;
//! - [`step`]: the steps a plan is made of;
//! - [`verify`]: the post-condition of each job on the files read back.
//!
//! Granting is strict: policy (allowed groups, UID range, well-formed account files) is checked
//! and any failure refuses the job. Revoking (`delete-account`, `remove-group`, local expiry)
//! never consults policy, and its steps are run best-effort by the worker: each is tried, the
//! result is verified as a whole.

mod expiry;
mod ownership;
mod step;
mod verify;

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
pub use step::{Plan, Step};
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
mod tests;
