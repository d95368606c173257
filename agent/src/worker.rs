//! The worker: applies one job at a time. Reads the account files, asks the planner, runs the
//! steps through `system`, reads everything back and verifies before saying `confirmed`.

use std::path::{Path, PathBuf};

use chrono::Utc;
use latch_common::api::AgentJob;
use latch_common::job::{JobError, JobErrorCode, JobOutcome, JobSpec};

use crate::config::Config;
use crate::plan::{self, GECOS_TAG, MARKER_GROUP, Policy, Step};
use crate::state::{Accounts, ManagedAccount, StateDir};
use crate::system::accounts::ShadowUtils;
use crate::system::cmd::CmdError;
use crate::system::etc::Snapshot;
use crate::system::{keys, procs};

/// Applies jobs on this host.
pub struct Worker {
    config: Config,
    state: StateDir,
    host_id: String,
    etc: PathBuf,
    tools: ShadowUtils,
}

fn state_error(e: impl std::fmt::Display) -> JobError {
    JobError::new(
        JobErrorCode::AgentStateError,
        format!("{e}; check the agent's state directory and the host's disk"),
    )
}

fn tool_error(e: CmdError) -> JobError {
    match e {
        CmdError::Locked { .. } => JobError::new(
            JobErrorCode::HostBusy,
            format!(
                "{e}; another program kept the account files locked — queue the job again when it is done"
            ),
        ),
        CmdError::Failed { status: 8, .. } if e.to_string().contains("userdel") => JobError::new(
            JobErrorCode::ToolFailed,
            format!(
                "{e}; the user still had processes after they were ended — queue the job again"
            ),
        ),
        other => JobError::new(JobErrorCode::ToolFailed, other.to_string()),
    }
}

impl Worker {
    /// A worker for host `host_id` with `config`, keeping records in `state`.
    pub fn new(config: Config, state: StateDir, host_id: String) -> Worker {
        let tools = ShadowUtils {
            lock_wait: config.lock_wait,
        };
        Worker {
            config,
            state,
            host_id,
            etc: PathBuf::from("/etc"),
            tools,
        }
    }

    /// Applies `job` and says how it ended. Never panics; every failure is an outcome.
    pub fn execute(&self, job: &AgentJob) -> JobOutcome {
        match self.apply(job) {
            Ok(()) => JobOutcome::Confirmed,
            Err(error) => JobOutcome::Failed { error },
        }
    }

    fn policy(&self, snapshot: &Snapshot) -> Policy {
        Policy {
            allowed_groups: self.config.allowed_groups(snapshot),
            uid_min: self.config.uid_min,
            uid_max: self.config.uid_max,
            default_shell: self.config.default_shell.clone(),
        }
    }

    fn read_files(&self) -> Result<Snapshot, JobError> {
        Snapshot::read(&self.etc).map_err(|e| {
            JobError::new(
                JobErrorCode::ToolFailed,
                format!("{e}; run `pwck -r` and `grpck -r` on the host"),
            )
        })
    }

    fn apply(&self, job: &AgentJob) -> Result<(), JobError> {
        if job.host_id != self.host_id {
            return Err(JobError::new(
                JobErrorCode::InvalidJob,
                format!(
                    "the job is for host {}, not this host ({})",
                    job.host_id, self.host_id
                ),
            ));
        }
        let snapshot = self.read_files()?;
        let mut accounts = self.state.accounts().map_err(state_error)?;
        let policy = self.policy(&snapshot);
        let steps = plan::plan(&job.spec, &snapshot, &accounts, &policy)?;
        if steps.iter().any(|s| matches!(s, Step::AddUser { .. })) {
            check_name_service(job.spec.user())?;
        }
        for step in steps {
            self.run_step(step, &job.id, &mut accounts)?;
        }
        let after = self.read_files()?;
        let accounts = self.state.accounts().map_err(state_error)?;
        plan::verify(&job.spec, &after, &accounts, &policy)?;
        self.verify_home(&job.spec, &snapshot, &after)
    }

    fn run_step(&self, step: Step, job_id: &str, accounts: &mut Accounts) -> Result<(), JobError> {
        match step {
            Step::CreateMarkerGroup => self
                .tools
                .add_system_group(MARKER_GROUP)
                .map_err(tool_error)?,
            Step::RecordAccount {
                user,
                uid,
                expires_at,
            } => {
                accounts.uid_high_water = accounts.uid_high_water.max(uid);
                accounts.accounts.insert(
                    user,
                    ManagedAccount {
                        uid,
                        created_by_job: job_id.to_owned(),
                        created_at: Utc::now(),
                        expires_at,
                        group_grants: Default::default(),
                    },
                );
                self.state.save_accounts(accounts).map_err(state_error)?;
            }
            Step::AddUser {
                user,
                uid,
                shell,
                groups,
            } => {
                if let Err(e) = self.tools.add_user(&user, uid, &shell, GECOS_TAG, &groups) {
                    // Do not keep a claim on an account that was never made.
                    accounts.accounts.remove(&user);
                    self.state.save_accounts(accounts).map_err(state_error)?;
                    return Err(tool_error(e));
                }
            }
            Step::AddToGroup { user, group } => {
                self.tools.add_to_group(&user, &group).map_err(tool_error)?
            }
            Step::RemoveFromGroup { user, group } => self
                .tools
                .remove_from_group(&user, &group)
                .map_err(tool_error)?,
            Step::WriteKeys { user, keys: lines } => {
                let snapshot = self.read_files()?;
                let entry = snapshot.user(&user).ok_or_else(|| {
                    JobError::new(
                        JobErrorCode::VerifyFailed,
                        format!("account '{user}' vanished before its keys were written"),
                    )
                })?;
                keys::write_authorized_keys(Path::new(&entry.home), entry.uid, entry.gid, &lines)
                    .map_err(|e| JobError::new(JobErrorCode::ToolFailed, e.to_string()))?;
            }
            Step::SetPasswordHash { user, hash } => self
                .tools
                .set_password_hash(&user, &hash)
                .map_err(tool_error)?,
            Step::RecordGroupGrant {
                user,
                group,
                expires_at,
            } => {
                if let Some(account) = accounts.accounts.get_mut(&user) {
                    account.group_grants.insert(group, expires_at);
                    self.state.save_accounts(accounts).map_err(state_error)?;
                }
            }
            Step::ForgetGroupGrant { user, group } => {
                if let Some(account) = accounts.accounts.get_mut(&user)
                    && account.group_grants.remove(&group).is_some()
                {
                    self.state.save_accounts(accounts).map_err(state_error)?;
                }
            }
            Step::EndProcesses { uid } => {
                let left = procs::terminate_user(uid, self.config.kill_grace);
                if left > 0 {
                    return Err(JobError::new(
                        JobErrorCode::ToolFailed,
                        format!(
                            "{left} process(es) of UID {uid} survived SIGKILL; the account was not deleted"
                        ),
                    ));
                }
            }
            Step::DeleteUser { user } => self.tools.delete_user(&user).map_err(tool_error)?,
            Step::ForgetAccount { user } => {
                accounts.accounts.remove(&user);
                self.state.save_accounts(accounts).map_err(state_error)?;
            }
        }
        Ok(())
    }

    /// Checks what the account files do not show: the home directory and `authorized_keys`.
    fn verify_home(
        &self,
        spec: &JobSpec,
        before: &Snapshot,
        snapshot: &Snapshot,
    ) -> Result<(), JobError> {
        let failed = |what: String| {
            JobError::new(
                JobErrorCode::VerifyFailed,
                format!("after applying, {what}"),
            )
        };
        match spec {
            JobSpec::CreateAccount { user, ssh_keys, .. } => {
                let entry = snapshot
                    .user(user)
                    .ok_or_else(|| failed(format!("'{user}' is missing")))?;
                let home = Path::new(&entry.home);
                let meta = std::fs::symlink_metadata(home)
                    .map_err(|e| failed(format!("home {} is missing: {e}", entry.home)))?;
                if !meta.is_dir() || std::os::unix::fs::MetadataExt::uid(&meta) != entry.uid {
                    return Err(failed(format!(
                        "home {} is not a directory owned by '{user}'",
                        entry.home
                    )));
                }
                if !ssh_keys.is_empty() {
                    let expected = format!("{}\n", ssh_keys.join("\n"));
                    match keys::read_authorized_keys(home) {
                        Ok(Some((text, owner, mode))) if text == expected && owner == entry.uid && mode == 0o600 => {}
                        Ok(_) => return Err(failed("authorized_keys does not hold exactly the job's keys with owner and mode 0600".into())),
                        Err(e) => return Err(failed(e.to_string())),
                    }
                }
            }
            JobSpec::DeleteAccount { user } => {
                if let Some(entry) = before.user(user)
                    && std::fs::symlink_metadata(&entry.home).is_ok()
                {
                    return Err(failed(format!("home {} still exists", entry.home)));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Refuses a new account whose name already resolves through NSS (LDAP, SSSD, …) even though the
/// local files do not list it.
fn check_name_service(user: &str) -> Result<(), JobError> {
    if let Ok(Some(_)) = nix::unistd::User::from_name(user) {
        return Err(JobError::new(
            JobErrorCode::AccountExists,
            format!(
                "'{user}' already resolves as a user through the name service (NSS); choose another name"
            ),
        ));
    }
    if let Ok(Some(_)) = nix::unistd::Group::from_name(user) {
        return Err(JobError::new(
            JobErrorCode::GroupExists,
            format!(
                "'{user}' already resolves as a group through the name service (NSS); choose another name"
            ),
        ));
    }
    Ok(())
}
