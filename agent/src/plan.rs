//! The planner: a job, a snapshot of the account files and the agent's own records go in; the
//! steps to take (or a refusal with a stable error code) come out. Pure: no I/O, so every rule
//! of DESIGN.md §3 is tested here from data. [`verify`] checks the post-condition the same way.

use chrono::{DateTime, Utc};
use latch_common::job::{JobError, JobErrorCode, JobSpec};

use crate::state::Accounts;
use crate::system::etc::{PasswdEntry, Snapshot};

/// The group every account Latch creates belongs to (one of the three ownership proofs).
pub const MARKER_GROUP: &str = "latch-managed";
/// The GECOS field of every account Latch creates (another ownership proof).
pub const GECOS_TAG: &str = "latch-managed account";

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
    /// `useradd`.
    AddUser {
        /// Name.
        user: String,
        /// UID.
        uid: u32,
        /// Shell.
        shell: String,
        /// Supplementary groups, marker first.
        groups: Vec<String>,
    },
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
    /// Replace `authorized_keys`.
    WriteKeys {
        /// Name.
        user: String,
        /// Key lines.
        keys: Vec<String>,
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
        /// End.
        expires_at: Option<DateTime<Utc>>,
    },
    /// Forget a group grant.
    ForgetGroupGrant {
        /// Name.
        user: String,
        /// Group.
        group: String,
    },
    /// End every process of the UID.
    EndProcesses {
        /// UID.
        uid: u32,
    },
    /// `userdel --remove`.
    DeleteUser {
        /// Name.
        user: String,
    },
    /// Drop the account from `accounts.json` (the UID high-water mark stays).
    ForgetAccount {
        /// Name.
        user: String,
    },
}

fn refuse(code: JobErrorCode, message: impl Into<String>) -> JobError {
    JobError::new(code, message)
}

/// The passwd entry of `user` if Latch manages it: the agent's record, the marker group, the
/// GECOS tag and the UID range must all agree.
pub fn managed_account<'a>(
    user: &str,
    snapshot: &'a Snapshot,
    accounts: &Accounts,
    policy: &Policy,
) -> Result<&'a PasswdEntry, JobError> {
    let entry = snapshot.user(user).ok_or_else(|| {
        refuse(
            JobErrorCode::NoSuchAccount,
            format!("account '{user}' does not exist on this host"),
        )
    })?;
    let recorded = accounts
        .accounts
        .get(user)
        .is_some_and(|a| a.uid == entry.uid);
    let marked = snapshot.is_member(user, MARKER_GROUP);
    let tagged = entry.gecos == GECOS_TAG;
    let in_range = (policy.uid_min..=policy.uid_max).contains(&entry.uid);
    if recorded && marked && tagged && in_range {
        Ok(entry)
    } else {
        Err(refuse(
            JobErrorCode::AccountNotManaged,
            format!(
                "account '{user}' was not created by Latch on this host (agent record: {recorded}, \
                 {MARKER_GROUP} group: {marked}, GECOS tag: {tagged}, UID in range: {in_range}); \
                 Latch changes only accounts it created"
            ),
        ))
    }
}

fn ensure_allowed(group: &str, policy: &Policy) -> Result<(), JobError> {
    if !policy.allowed_groups.iter().any(|g| g == group) {
        return Err(refuse(
            JobErrorCode::GroupNotAllowed,
            format!(
                "group '{group}' may not be granted on this host (allowed: {}); change allowed_groups in the agent's configuration to allow it",
                if policy.allowed_groups.is_empty() {
                    "none".to_owned()
                } else {
                    policy.allowed_groups.join(", ")
                }
            ),
        ));
    }
    Ok(())
}

fn allowed_group(group: &str, snapshot: &Snapshot, policy: &Policy) -> Result<(), JobError> {
    ensure_allowed(group, policy)?;
    if snapshot.group(group).is_none() {
        return Err(refuse(
            JobErrorCode::NoSuchGroup,
            format!("group '{group}' does not exist on this host"),
        ));
    }
    Ok(())
}

/// The lowest UID of the policy's range that is above the high-water mark and used by no user
/// and no group (so the private group gets the same number).
pub fn choose_uid(
    snapshot: &Snapshot,
    accounts: &Accounts,
    policy: &Policy,
) -> Result<u32, JobError> {
    let start = policy
        .uid_min
        .max(accounts.uid_high_water.saturating_add(1));
    (start..=policy.uid_max)
        .find(|uid| {
            !snapshot.passwd.iter().any(|u| u.uid == *uid) && !snapshot.group.iter().any(|g| g.gid == *uid)
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

/// Plans `spec` for `host_id`'s agent. `Ok(vec![])` means the host is already in the requested
/// state.
pub fn plan(
    spec: &JobSpec,
    snapshot: &Snapshot,
    accounts: &Accounts,
    policy: &Policy,
) -> Result<Vec<Step>, JobError> {
    spec.validate().map_err(|e| {
        refuse(
            JobErrorCode::InvalidJob,
            format!("the job is not valid: {e}"),
        )
    })?;
    let mut steps = Vec::new();
    match spec {
        JobSpec::CreateAccount {
            user,
            groups,
            shell,
            ssh_keys,
            expires_at,
        } => {
            for group in groups {
                allowed_group(group, snapshot, policy)?;
            }
            let shell = shell
                .clone()
                .unwrap_or_else(|| policy.default_shell.clone());
            if !snapshot.shells.contains(&shell) {
                return Err(refuse(
                    JobErrorCode::ShellNotAllowed,
                    format!("shell '{shell}' is not listed in /etc/shells on this host"),
                ));
            }
            if snapshot.user(user).is_some() {
                // Re-delivery of our own create converges; anything else is someone else's account.
                managed_account(user, snapshot, accounts, policy).map_err(|_| {
                    refuse(
                        JobErrorCode::AccountExists,
                        format!("account '{user}' already exists and Latch did not create it; choose another name"),
                    )
                })?;
                for group in groups {
                    if !snapshot.is_member(user, group) {
                        steps.push(Step::AddToGroup {
                            user: user.clone(),
                            group: group.clone(),
                        });
                    }
                }
            } else {
                if snapshot.group(user).is_some() {
                    return Err(refuse(
                        JobErrorCode::GroupExists,
                        format!(
                            "a group named '{user}' already exists; Latch will not adopt it as the account's private group. Choose another name or remove the group"
                        ),
                    ));
                }
                let uid = choose_uid(snapshot, accounts, policy)?;
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
                });
            }
            for group in groups {
                steps.push(Step::RecordGroupGrant {
                    user: user.clone(),
                    group: group.clone(),
                    expires_at: *expires_at,
                });
            }
            if !ssh_keys.is_empty() {
                steps.push(Step::WriteKeys {
                    user: user.clone(),
                    keys: ssh_keys.clone(),
                });
            }
        }
        JobSpec::DeleteAccount { user } => {
            if snapshot.user(user).is_none() {
                if accounts.accounts.contains_key(user) {
                    steps.push(Step::ForgetAccount { user: user.clone() });
                }
                return Ok(steps);
            }
            let entry = managed_account(user, snapshot, accounts, policy)?;
            steps.push(Step::EndProcesses { uid: entry.uid });
            steps.push(Step::DeleteUser { user: user.clone() });
            steps.push(Step::ForgetAccount { user: user.clone() });
        }
        JobSpec::AddGroup {
            user,
            group,
            expires_at,
        } => {
            allowed_group(group, snapshot, policy)?;
            managed_account(user, snapshot, accounts, policy)?;
            if !snapshot.is_member(user, group) {
                steps.push(Step::AddToGroup {
                    user: user.clone(),
                    group: group.clone(),
                });
            }
            steps.push(Step::RecordGroupGrant {
                user: user.clone(),
                group: group.clone(),
                expires_at: *expires_at,
            });
        }
        JobSpec::RemoveGroup { user, group } => {
            ensure_allowed(group, policy)?;
            managed_account(user, snapshot, accounts, policy)?;
            if snapshot.is_member(user, group) {
                steps.push(Step::RemoveFromGroup {
                    user: user.clone(),
                    group: group.clone(),
                });
            }
            steps.push(Step::ForgetGroupGrant {
                user: user.clone(),
                group: group.clone(),
            });
        }
        JobSpec::SetPassword {
            user,
            password_hash,
        } => {
            managed_account(user, snapshot, accounts, policy)?;
            if snapshot
                .shadow(user)
                .is_none_or(|s| s.hash != *password_hash)
            {
                steps.push(Step::SetPasswordHash {
                    user: user.clone(),
                    hash: password_hash.clone(),
                });
            }
        }
    }
    Ok(steps)
}

/// Checks, on files read back after applying, that `spec`'s post-condition holds. Home
/// directory and `authorized_keys` are checked by the worker (they need I/O).
pub fn verify(
    spec: &JobSpec,
    snapshot: &Snapshot,
    accounts: &Accounts,
    policy: &Policy,
) -> Result<(), JobError> {
    let failed = |what: String| {
        refuse(
            JobErrorCode::VerifyFailed,
            format!("after applying, {what}; inspect the host's account files"),
        )
    };
    match spec {
        JobSpec::CreateAccount {
            user,
            groups,
            shell,
            ..
        } => {
            let entry = managed_account(user, snapshot, accounts, policy)
                .map_err(|e| failed(format!("the account is not in place ({})", e.message)))?;
            let shell = shell.as_deref().unwrap_or(&policy.default_shell);
            if entry.shell != shell {
                return Err(failed(format!(
                    "the shell is {} instead of {shell}",
                    entry.shell
                )));
            }
            if snapshot.shadow(user).is_none() {
                return Err(failed("/etc/shadow has no entry for the account".into()));
            }
            if let Some(group) = groups.iter().find(|g| !snapshot.is_member(user, g)) {
                return Err(failed(format!("'{user}' is not a member of '{group}'")));
            }
        }
        JobSpec::DeleteAccount { user } => {
            if snapshot.user(user).is_some() || snapshot.shadow(user).is_some() {
                return Err(failed(format!(
                    "'{user}' is still in /etc/passwd or /etc/shadow"
                )));
            }
            if let Some(group) = snapshot
                .group
                .iter()
                .find(|g| g.members.iter().any(|m| m == user))
            {
                return Err(failed(format!(
                    "'{user}' is still listed in group '{}'",
                    group.name
                )));
            }
            if accounts.accounts.contains_key(user) {
                return Err(failed("the agent still records the account".into()));
            }
        }
        JobSpec::AddGroup { user, group, .. } => {
            if !snapshot.is_member(user, group) {
                return Err(failed(format!("'{user}' is not a member of '{group}'")));
            }
        }
        JobSpec::RemoveGroup { user, group } => {
            if snapshot.is_member(user, group) {
                return Err(failed(format!("'{user}' is still a member of '{group}'")));
            }
        }
        JobSpec::SetPassword {
            user,
            password_hash,
        } => {
            if snapshot
                .shadow(user)
                .is_none_or(|s| s.hash != *password_hash)
            {
                return Err(failed(format!(
                    "the password hash of '{user}' in /etc/shadow is not the new one"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ManagedAccount;
    use crate::system::etc::{parse_group, parse_passwd, parse_shadow};
    use latch_common::job::JobErrorCode as Code;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          legacy:x:1001:1001:Legacy:/home/legacy:/bin/bash\n\
                          eph:x:60000:60000:latch-managed account:/home/eph:/bin/bash\n\
                          fake:x:60001:60001:latch-managed account:/home/fake:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:eph\nlatch-managed:x:999:eph,fake\nlegacy:x:1001:\n\
                         eph:x:60000:\nfake:x:60001:\ntaken:x:60002:\n";
    const SHADOW: &str = "root:*:1::::::\nlegacy:$6$a$b:1::::::\neph:!:1::::::\nfake:!:1::::::\n";

    fn snapshot() -> Snapshot {
        Snapshot {
            passwd: parse_passwd(PASSWD).unwrap(),
            group: parse_group(GROUP).unwrap(),
            shadow: parse_shadow(SHADOW).unwrap(),
            shells: vec!["/bin/bash".into(), "/bin/sh".into()],
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
        }
    }

    fn check(spec: JobSpec, expected: Result<Vec<Step>, Code>) {
        let got = plan(&spec, &snapshot(), &accounts(), &policy()).map_err(|e| e.code);
        assert_eq!(got, expected, "{spec:?}");
    }

    fn create(user: &str, groups: &[&str]) -> JobSpec {
        JobSpec::CreateAccount {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            shell: None,
            ssh_keys: vec![],
            expires_at: None,
        }
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
                },
                Step::RecordGroupGrant {
                    user: "alice".into(),
                    group: "sudo".into(),
                    expires_at: None,
                },
            ]),
        );
    }

    #[test]
    fn create_refusals() {
        check(create("legacy", &[]), Err(Code::AccountExists));
        check(create("fake", &[]), Err(Code::AccountExists));
        check(create("taken", &[]), Err(Code::GroupExists));
        check(create("alice", &["root"]), Err(Code::GroupNotAllowed));
        check(
            JobSpec::CreateAccount {
                user: "alice".into(),
                groups: vec![],
                shell: Some("/usr/bin/evil".into()),
                ssh_keys: vec![],
                expires_at: None,
            },
            Err(Code::ShellNotAllowed),
        );
        check(create("root", &[]), Err(Code::InvalidJob));
        check(create("-oops", &[]), Err(Code::InvalidJob));
    }

    #[test]
    fn create_redelivered_converges() {
        check(
            create("eph", &["sudo"]),
            Ok(vec![Step::RecordGroupGrant {
                user: "eph".into(),
                group: "sudo".into(),
                expires_at: None,
            }]),
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
            JobSpec::RemoveGroup {
                user: "eph".into(),
                group: "sudo".into(),
            },
            Ok(vec![
                Step::RemoveFromGroup {
                    user: "eph".into(),
                    group: "sudo".into(),
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
            Err(Code::GroupNotAllowed),
        );
    }

    #[test]
    fn only_managed_accounts_are_deleted_or_changed() {
        check(
            JobSpec::DeleteAccount {
                user: "legacy".into(),
            },
            Err(Code::AccountNotManaged),
        );
        check(
            JobSpec::DeleteAccount {
                user: "fake".into(),
            },
            Err(Code::AccountNotManaged),
        );
        check(
            JobSpec::SetPassword {
                user: "legacy".into(),
                password_hash: "$6$x$y".into(),
            },
            Err(Code::AccountNotManaged),
        );
        check(
            JobSpec::DeleteAccount { user: "eph".into() },
            Ok(vec![
                Step::EndProcesses { uid: 60000 },
                Step::DeleteUser { user: "eph".into() },
                Step::ForgetAccount { user: "eph".into() },
            ]),
        );
        check(
            JobSpec::DeleteAccount {
                user: "gone".into(),
            },
            Ok(vec![]),
        );
        check(
            JobSpec::SetPassword {
                user: "eph".into(),
                password_hash: "$6$x$y".into(),
            },
            Ok(vec![Step::SetPasswordHash {
                user: "eph".into(),
                hash: "$6$x$y".into(),
            }]),
        );
    }

    #[test]
    fn uid_range_exhaustion() {
        let tight = Policy {
            uid_min: 60000,
            uid_max: 60001,
            ..policy()
        };
        let err = plan(&create("alice", &[]), &snapshot(), &accounts(), &tight).unwrap_err();
        assert_eq!(err.code, Code::UidRangeExhausted);
    }

    #[test]
    fn verify_reads_the_post_condition() {
        let spec = JobSpec::RemoveGroup {
            user: "eph".into(),
            group: "sudo".into(),
        };
        assert_eq!(
            verify(&spec, &snapshot(), &accounts(), &policy())
                .unwrap_err()
                .code,
            Code::VerifyFailed
        );
        let spec = JobSpec::AddGroup {
            user: "eph".into(),
            group: "sudo".into(),
            expires_at: None,
        };
        assert_eq!(verify(&spec, &snapshot(), &accounts(), &policy()), Ok(()));
    }
}
