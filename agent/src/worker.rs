//! The worker: applies one job at a time, and revokes expired grants, under one lock so the two
//! never interleave. Reads the account files, asks the planner, runs the steps through `system`,
//! reads everything back and verifies before saying `confirmed`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use latch_common::api::RevocationReport;
use latch_common::job::{JobError, JobErrorCode, JobOutcome, JobSpec};
use latch_common::signing::SignedJob;

use crate::config::Config;
use crate::plan::{self, Expired, GECOS_TAG, MARKER_GROUP, Policy, Step};
use crate::state::{Accounts, GroupGrant, ManagedAccount, StateDir, StateError};
use crate::system::accounts::ShadowUtils;
use crate::system::cmd::CmdError;
use crate::system::etc::Snapshot;
use crate::system::{keys, procs, sudo};

/// Applies jobs and revokes expired grants on this host.
pub struct Worker {
    config: Config,
    state: StateDir,
    host_id: String,
    etc: PathBuf,
    tools: ShadowUtils,
    /// Held while a job or a revocation runs.
    busy: Mutex<()>,
}

fn state_error(e: impl std::fmt::Display) -> JobError {
    JobError::new(
        JobErrorCode::AgentStateError,
        format!("{e}; check the agent's state directory and the host's disk"),
    )
}

/// Maps a shadow-utils failure to a job error code.
fn tool_error(e: CmdError) -> JobError {
    let code = match &e {
        CmdError::Locked { .. } => JobErrorCode::HostBusy,
        CmdError::Failed {
            program, status: 8, ..
        } if program.ends_with("userdel") => JobErrorCode::AccountInUse,
        CmdError::Failed {
            program, status: 9, ..
        } if program.ends_with("useradd") => JobErrorCode::AccountExists,
        _ => JobErrorCode::ToolFailed,
    };
    let hint = match code {
        JobErrorCode::HostBusy => {
            "; another program kept the account files locked — queue the job again when it is done"
        }
        JobErrorCode::AccountInUse => {
            "; the user still had processes after they were ended — queue the job again"
        }
        JobErrorCode::AccountExists => "; choose another name",
        _ => "",
    };
    JobError::new(code, format!("{e}{hint}"))
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
            busy: Mutex::new(()),
        }
    }

    /// Prepares the host: makes sudo read group membership at each use (unless configured off),
    /// so revoking a sudo membership also ends sudo in sessions that are already open.
    pub fn prepare_host(&self) -> Result<(), sudo::SudoError> {
        if self.config.sudo_dynamic_groups
            && sudo::ensure_dynamic_group_source(&self.etc.join("sudo.conf"))?
        {
            tracing::info!("set 'group_source dynamic' in /etc/sudo.conf");
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a verified job and says how it ended. Never panics; every failure is an outcome.
    /// A job already applied here is refused (`replayed_job`), as is one older than a job
    /// already applied to the same account (`stale_job`).
    pub fn execute(&self, job: &SignedJob) -> JobOutcome {
        let _busy = self.lock();
        let replayed = match self.state.accounts() {
            Ok(accounts) => accounts.was_applied(job.seq, &job.job_id),
            Err(error) => {
                return JobOutcome::Failed {
                    error: state_error(error),
                };
            }
        };
        if replayed {
            let error = JobError::new(
                JobErrorCode::ReplayedJob,
                format!(
                    "job {} (sequence {}) was already applied on this host; a job is never applied twice",
                    job.job_id, job.seq
                ),
            );
            return JobOutcome::Failed { error };
        }
        if let Err(error) = latch_common::signing::check_deadline(job, Utc::now()) {
            return JobOutcome::Failed { error };
        }
        let outcome = match self.apply(job) {
            Ok(()) => JobOutcome::Confirmed,
            Err(error) => JobOutcome::Failed { error },
        };
        let stale = matches!(&outcome, JobOutcome::Failed { error } if error.code == JobErrorCode::StaleJob);
        if !stale && let Err(error) = self.record_applied(job) {
            tracing::error!(%error, "cannot record the job as applied");
        }
        outcome
    }

    fn record_applied(&self, job: &SignedJob) -> Result<(), StateError> {
        let mut accounts = self.state.accounts()?;
        let last = accounts
            .applied_seq
            .entry(job.spec.user().to_owned())
            .or_insert(job.seq);
        *last = (*last).max(job.seq);
        accounts.mark_applied(job.seq, &job.job_id);
        self.state.save_accounts(&accounts)
    }

    /// The earliest end of any active grant.
    pub fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StateError> {
        Ok(plan::next_expiry(&self.state.accounts()?))
    }

    /// Revokes every grant that has ended by `now` and queues a report for each in the outbox.
    /// Returns how many grants were revoked; a grant that could not be revoked stays and is
    /// retried by the caller.
    pub fn revoke_expired(&self, now: DateTime<Utc>) -> Result<usize, JobError> {
        let _busy = self.lock();
        let mut accounts = self.state.accounts().map_err(state_error)?;
        let mut revoked = 0;
        for expired in plan::expired(&accounts, now) {
            let snapshot = self.read_files()?;
            let policy = self.policy(&snapshot);
            let result =
                plan::plan_expiry(&expired, &snapshot, &accounts, &policy).and_then(|steps| {
                    steps
                        .into_iter()
                        .try_for_each(|step| self.run_step(step, "", &mut accounts))
                });
            let job_ids = match &expired {
                Expired::Account { job_ids, .. } => job_ids.clone(),
                Expired::Group { job_id, .. } => vec![job_id.clone()],
            };
            match result {
                Ok(()) => {
                    let revoked_at = Utc::now();
                    tracing::info!(grant = ?expired, "grant expired: access revoked");
                    accounts.outbox.extend(
                        job_ids
                            .into_iter()
                            .map(|job_id| RevocationReport { job_id, revoked_at }),
                    );
                    self.state.save_accounts(&accounts).map_err(state_error)?;
                    revoked += 1;
                }
                Err(error) => {
                    tracing::error!(grant = ?expired, code = %error.code, message = %error.message, "revoking an expired grant failed; will retry");
                    // Steps that succeeded may have saved records: start again from the file.
                    accounts = self.state.accounts().map_err(state_error)?;
                }
            }
        }
        Ok(revoked)
    }

    /// Revocations done locally that the control plane has not acknowledged.
    pub fn outbox(&self) -> Result<Vec<RevocationReport>, StateError> {
        Ok(self.state.accounts()?.outbox)
    }

    /// Drops an acknowledged revocation report from the outbox.
    pub fn ack_outbox(&self, report: &RevocationReport) -> Result<(), StateError> {
        let _busy = self.lock();
        let mut accounts = self.state.accounts()?;
        accounts.outbox.retain(|r| r != report);
        self.state.save_accounts(&accounts)
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

    /// The pinned signing key and, during a rotation, the next one (decoded).
    pub fn signing_keys(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), JobError> {
        let identity = self.state.identity().map_err(state_error)?;
        let current = identity
            .signing_key
            .as_deref()
            .and_then(latch_common::signing::decode_public_key)
            .ok_or_else(|| {
                state_error("the identity holds no valid job-signing key; re-enroll this host")
            })?;
        let next = identity
            .next_signing_key
            .as_deref()
            .and_then(latch_common::signing::decode_public_key);
        Ok((current, next))
    }

    /// Makes the next signing key the pinned one (the control plane switched to it).
    pub fn promote_next_signing_key(&self) -> Result<(), JobError> {
        let _busy = self.lock();
        let mut identity = self.state.identity().map_err(state_error)?;
        if let Some(next) = identity.next_signing_key.take() {
            identity.signing_key = Some(next);
            self.state.save_identity(&identity).map_err(state_error)?;
            tracing::info!(
                "the control plane's new job-signing key is now pinned; the old one is no longer accepted"
            );
        }
        Ok(())
    }

    fn apply(&self, job: &SignedJob) -> Result<(), JobError> {
        if let JobSpec::RotateSigningKey { next_key } = &job.spec {
            return self.record_next_signing_key(job, next_key);
        }
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
        if let Some(last) = accounts.applied_seq.get(job.spec.user())
            && job.seq < *last
        {
            return Err(JobError::new(
                JobErrorCode::StaleJob,
                format!(
                    "job sequence {} is older than sequence {last}, already applied to '{}'; an older job never undoes a newer one",
                    job.seq,
                    job.spec.user()
                ),
            ));
        }
        let policy = self.policy(&snapshot);
        let steps = plan::plan(&job.spec, &job.job_id, &snapshot, &accounts, &policy)?;
        if steps.iter().any(|s| matches!(s, Step::AddUser { .. })) {
            check_name_service(job.spec.user())?;
        }
        for step in steps {
            self.run_step(step, &job.job_id, &mut accounts)?;
        }
        let after = self.read_files()?;
        let accounts = self.state.accounts().map_err(state_error)?;
        plan::verify(&job.spec, &after, &accounts, &policy)?;
        self.verify_home(&job.spec, &snapshot, &after)
    }

    /// Records the control plane's next signing key (the job itself was verified with the
    /// current one).
    fn record_next_signing_key(&self, job: &SignedJob, next_key: &str) -> Result<(), JobError> {
        if job.host_id != self.host_id {
            return Err(JobError::new(
                JobErrorCode::InvalidJob,
                "the job is for another host",
            ));
        }
        job.spec.validate().map_err(|e| {
            JobError::new(
                JobErrorCode::InvalidJob,
                format!("the job is not valid: {e}"),
            )
        })?;
        let mut identity = self.state.identity().map_err(state_error)?;
        if identity.signing_key.as_deref() != Some(next_key) {
            identity.next_signing_key = Some(next_key.to_owned());
            self.state.save_identity(&identity).map_err(state_error)?;
        }
        tracing::info!("learned the control plane's next job-signing key");
        Ok(())
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
                expire_day,
            } => {
                if let Err(e) = self
                    .tools
                    .add_user(&user, uid, &shell, GECOS_TAG, &groups, expire_day)
                {
                    // Do not keep a claim on an account that was never made.
                    accounts.accounts.remove(&user);
                    self.state.save_accounts(accounts).map_err(state_error)?;
                    return Err(tool_error(e));
                }
            }
            Step::LockAccount { user } => self.tools.lock_user(&user).map_err(tool_error)?,
            Step::AddToGroup { user, group } => {
                self.tools.add_to_group(&user, &group).map_err(tool_error)?
            }
            Step::RemoveFromGroup { user, group } => self
                .tools
                .remove_from_group(&user, &group)
                .map_err(tool_error)?,
            Step::WriteKeys { user, lines } => self.write_keys(&user, &lines)?,
            Step::RemoveKeys { user } => self.write_keys(&user, &[])?,
            Step::ClearSudoTimestamps { user } => sudo::clear_timestamps(&user)
                .map_err(|e| JobError::new(JobErrorCode::ToolFailed, e.to_string()))?,
            Step::InvalidateNameCaches => self.tools.invalidate_name_caches(),
            Step::SetPasswordHash { user, hash } => self
                .tools
                .set_password_hash(&user, &hash)
                .map_err(tool_error)?,
            Step::RecordGroupGrant {
                user,
                group,
                job_id,
                expires_at,
            } => {
                if let Some(account) = accounts.accounts.get_mut(&user) {
                    account
                        .group_grants
                        .insert(group, GroupGrant { job_id, expires_at });
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
                        JobErrorCode::AccountInUse,
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

    fn write_keys(&self, user: &str, lines: &[String]) -> Result<(), JobError> {
        let snapshot = self.read_files()?;
        let entry = snapshot.user(user).ok_or_else(|| {
            JobError::new(
                JobErrorCode::VerifyFailed,
                format!("account '{user}' vanished before its keys were written"),
            )
        })?;
        match keys::write_authorized_keys(Path::new(&entry.home), entry.uid, entry.gid, lines) {
            Ok(()) => Ok(()),
            // No home left means no keys left: nothing to remove.
            Err(_) if lines.is_empty() && std::fs::symlink_metadata(&entry.home).is_err() => Ok(()),
            Err(e) => Err(JobError::new(JobErrorCode::ToolFailed, e.to_string())),
        }
    }

    /// Checks what the account files do not show: the home directory, `authorized_keys`, and
    /// that no process of a deleted account is left.
    fn verify_home(
        &self,
        spec: &JobSpec,
        before: &Snapshot,
        after: &Snapshot,
    ) -> Result<(), JobError> {
        let failed = |what: String| {
            JobError::new(
                JobErrorCode::VerifyFailed,
                format!("after applying, {what}"),
            )
        };
        match spec {
            JobSpec::CreateAccount {
                user,
                ssh_keys,
                expires_at,
                ..
            } => {
                let entry = after
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
                    let expected = format!(
                        "{}\n",
                        plan::authorized_key_lines(ssh_keys, *expires_at).join("\n")
                    );
                    match keys::read_authorized_keys(home) {
                        Ok(Some((text, owner, mode)))
                            if text == expected && owner == entry.uid && mode == 0o600 => {}
                        Ok(_) => {
                            return Err(failed(
                                "authorized_keys does not hold exactly the job's keys with owner and mode 0600".into(),
                            ));
                        }
                        Err(e) => return Err(failed(e.to_string())),
                    }
                }
            }
            JobSpec::DeleteAccount { user } => {
                if let Some(entry) = before.user(user) {
                    if std::fs::symlink_metadata(&entry.home).is_ok() {
                        return Err(failed(format!("home {} still exists", entry.home)));
                    }
                    let left = procs::processes_of(entry.uid);
                    if !left.is_empty() {
                        return Err(failed(format!(
                            "{} process(es) of UID {} still run",
                            left.len(),
                            entry.uid
                        )));
                    }
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
