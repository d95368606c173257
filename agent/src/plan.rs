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
        /// Shadow account expiry, in days since the epoch (defence in depth: the day after the
        /// grant ends, rounded up).
        expire_day: Option<i64>,
    },
    /// `usermod --lock --expiredate 1`: no password login, account expired.
    LockAccount {
        /// Name.
        user: String,
    },
    /// Empty `authorized_keys`.
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

/// Steps that remove every access of a managed account and then the account itself, in the
/// order that shrinks access first: lock, sudo groups, keys, sudo's cache, NSS caches, sessions
/// and processes, `userdel`, the agent's record.
fn removal_steps(user: &str, uid: u32, snapshot: &Snapshot, policy: &Policy) -> Vec<Step> {
    let mut steps = vec![Step::LockAccount {
        user: user.to_owned(),
    }];
    for group in &policy.allowed_groups {
        if snapshot.is_member(user, group) {
            steps.push(Step::RemoveFromGroup {
                user: user.to_owned(),
                group: group.clone(),
            });
        }
    }
    steps.extend([
        Step::RemoveKeys {
            user: user.to_owned(),
        },
        Step::ClearSudoTimestamps {
            user: user.to_owned(),
        },
        Step::InvalidateNameCaches,
        Step::EndProcesses { uid },
        Step::DeleteUser {
            user: user.to_owned(),
        },
        Step::ForgetAccount {
            user: user.to_owned(),
        },
    ]);
    steps
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

/// The steps that revoke one expired grant.
pub fn plan_expiry(
    expired: &Expired,
    snapshot: &Snapshot,
    accounts: &Accounts,
    policy: &Policy,
) -> Result<Vec<Step>, JobError> {
    match expired {
        Expired::Account { user, .. } => plan(
            &JobSpec::DeleteAccount { user: user.clone() },
            "",
            snapshot,
            accounts,
            policy,
        ),
        Expired::Group { user, group, .. } => plan(
            &JobSpec::RemoveGroup {
                user: user.clone(),
                group: group.clone(),
            },
            "",
            snapshot,
            accounts,
            policy,
        ),
    }
}

/// Plans `spec` for `host_id`'s agent. `Ok(vec![])` means the host is already in the requested
/// state.
pub fn plan(
    spec: &JobSpec,
    job_id: &str,
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
        }
        JobSpec::DeleteAccount { user } => {
            if snapshot.user(user).is_none() {
                if accounts.accounts.contains_key(user) {
                    steps.push(Step::ForgetAccount { user: user.clone() });
                }
                return Ok(steps);
            }
            let entry = managed_account(user, snapshot, accounts, policy)?;
            steps.extend(removal_steps(user, entry.uid, snapshot, policy));
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
                job_id: job_id.to_owned(),
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
            // With sudo's group_source dynamic (set by the agent), open sessions lose sudo at
            // once; cached credentials must go too.
            steps.push(Step::ClearSudoTimestamps { user: user.clone() });
            steps.push(Step::InvalidateNameCaches);
            steps.push(Step::ForgetGroupGrant {
                user: user.clone(),
                group: group.clone(),
            });
        }
        // Handled by the worker: it changes the agent's identity, not the host.
        JobSpec::RotateSigningKey { .. } => {}
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
            let Some(shadow) = snapshot.shadow(user) else {
                return Err(failed("/etc/shadow has no entry for the account".into()));
            };
            if let Some(end) = spec.expires_at()
                && shadow
                    .expire_days
                    .is_none_or(|day| day > shadow_expire_day(end))
            {
                return Err(failed(format!(
                    "the shadow expiry of '{user}' is not set to the grant's end"
                )));
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
        JobSpec::RotateSigningKey { .. } => {}
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
        let got = plan(&spec, "job-1", &snapshot(), &accounts(), &policy()).map_err(|e| e.code);
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
                job_id: "job-1".into(),
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
                Step::ClearSudoTimestamps { user: "eph".into() },
                Step::InvalidateNameCaches,
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
                Step::LockAccount { user: "eph".into() },
                Step::RemoveFromGroup {
                    user: "eph".into(),
                    group: "sudo".into(),
                },
                Step::RemoveKeys { user: "eph".into() },
                Step::ClearSudoTimestamps { user: "eph".into() },
                Step::InvalidateNameCaches,
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
        let err = plan(&create("alice", &[]), "j", &snapshot(), &accounts(), &tight).unwrap_err();
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
            crate::state::GroupGrant {
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
        let steps = plan_expiry(&due[0], &snapshot(), &records, &policy()).unwrap();
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
        let steps = plan_expiry(&due[0], &snapshot(), &records, &policy()).unwrap();
        assert_eq!(steps[0], Step::LockAccount { user: "eph".into() });
        assert!(steps.contains(&Step::EndProcesses { uid: 60000 }));
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
            crate::state::GroupGrant {
                job_id: "g1".into(),
                expires_at: None,
            },
        );
        account.group_grants.insert(
            "sudo".into(),
            crate::state::GroupGrant {
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
