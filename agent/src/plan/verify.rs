//! Post-conditions: after a job, the account files read back must show what the job asked for.
//! Home directories, `authorized_keys`, SSH certificate principals files and processes need I/O
//! and are checked by the worker.

use latch_common::job::{JobError, JobErrorCode, JobSpec};

use super::expiry::shadow_expire_day;
use super::ownership::{Ownership, adopted_account, managed_account, owned_account};
use super::{Facts, refuse};

/// Checks, on files read back after applying, that `spec`'s post-condition holds.
pub fn verify(spec: &JobSpec, facts: &Facts<'_>) -> Result<(), JobError> {
    let snapshot = facts.snapshot;
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
            sudo,
            ..
        } => {
            let entry = managed_account(user, facts)
                .map_err(|e| failed(format!("the account is not in place ({})", e.message)))?;
            let shell = shell.as_deref().unwrap_or(&facts.policy.default_shell);
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
            let recorded_end = facts.accounts.accounts.get(user).and_then(|a| a.expires_at);
            if recorded_end != spec.expires_at() {
                return Err(failed(format!(
                    "the agent's record of '{user}' does not end with the job's expiry"
                )));
            }
            // With `sudo`, the host's sudo group is among them.
            let groups = super::granted_groups(groups, *sudo, facts)
                .map_err(|e| failed(format!("the sudo group cannot be found ({})", e.message)))?;
            if let Some(group) = groups.iter().find(|g| !snapshot.is_member(user, g)) {
                return Err(failed(format!("'{user}' is not a member of '{group}'")));
            }
        }
        JobSpec::DeleteAccount { user } => {
            match owned_account(user, snapshot, facts.accounts) {
                Ownership::Ours(_) => {
                    return Err(failed(format!("'{user}' is still in /etc/passwd")));
                }
                Ownership::Unreadable { .. } => {
                    return Err(failed(format!(
                        "'{user}' is still in /etc/passwd (on a line that does not parse)"
                    )));
                }
                _ => {}
            }
            if facts.accounts.accounts.contains_key(user) {
                return Err(failed(format!(
                    "the agent still records '{user}' (it was not removed)"
                )));
            }
            if snapshot.user(user).is_none() {
                if snapshot.shadow(user).is_some() {
                    return Err(failed(format!("'{user}' is still in /etc/shadow")));
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
            }
        }
        JobSpec::AddGroup { user, group, .. } => {
            if !snapshot.is_member(user, group) {
                return Err(failed(format!("'{user}' is not a member of '{group}'")));
            }
        }
        JobSpec::RemoveGroup { user, group } => {
            if snapshot.is_member(user, group)
                && matches!(
                    owned_account(user, snapshot, facts.accounts),
                    Ownership::Ours(_) | Ownership::Gone { .. }
                )
            {
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
        JobSpec::AdoptAccount { user } => {
            // The record exists and names the UID the account has now.
            adopted_account(user, facts)
                .map_err(|e| failed(format!("'{user}' is not adopted ({})", e.message)))?;
        }
        JobSpec::RotateSigningKey { .. } => {}
    }
    Ok(())
}
