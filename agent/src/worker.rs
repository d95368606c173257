//! The worker: applies one job at a time, and revokes expired grants, under one lock so the two
//! never interleave. Reads the account files, asks the planner, runs the steps through `system`,
//! reads everything back and verifies before saying `confirmed`.
//!
//! Granting is strict: the first step that fails fails the job, and an account the job was
//! creating is removed again. Revoking is best-effort per step: every step is tried whatever
//! happened to the one before, then the result is verified as a whole; steps that could not be
//! done are named in the outcome.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use latch_common::api::RevocationReport;
use latch_common::job::{JobError, JobErrorCode, JobOutcome, JobSpec};
use latch_common::signing::SignedJob;

use crate::config::Config;
use crate::crash_hook;
use crate::plan::{self, Facts, GECOS_TAG, MARKER_GROUP, Ownership, Policy, Step};
use crate::state::{Accounts, AdoptedAccount, GroupGrant, ManagedAccount, StateDir, StateError};
use crate::system::accounts::ShadowUtils;
use crate::system::cmd::CmdError;
use crate::system::etc::Snapshot;
use crate::system::nss::Nss;
use crate::system::{keys, procs, sshd, sudo};

/// Above this size of `/etc/group` (about 2,000 groups) an account is created in three calls
/// instead of one `useradd` (see [`ShadowUtils::add_user`]).
const MANY_GROUPS_BYTES: u64 = 64 * 1024;

/// Applies jobs and revokes expired grants on this host.
pub struct Worker {
    config: Config,
    state: StateDir,
    host_id: String,
    etc: PathBuf,
    ssh: sshd::SshPaths,
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

/// Joins the notes of steps that could not be done into one sentence.
fn failed_steps(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!("; steps that could not be done: {}", failures.join("; "))
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
            ssh: sshd::SshPaths::default(),
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

    /// On a host enrolled with `--ssh-ca`: installs the control plane's SSH user CA for sshd
    /// (the key file, the principals directory, the `sshd_config.d` drop-in) and, if a file
    /// changed, tells sshd to reload. Run at every start, so files removed or edited by hand are
    /// put back. Returns what a person should know (sshd may not read the drop-in, or was not
    /// reloaded); an error means the files could not be written.
    pub fn prepare_sshd(&self) -> Result<Vec<String>, sshd::SshdError> {
        let Some(ca_key) = self
            .state
            .identity()
            .ok()
            .and_then(|identity| identity.user_ca_key)
        else {
            return Ok(Vec::new());
        };
        let _busy = self.lock();
        let installed = sshd::install_user_ca(&self.ssh, &ca_key)?;
        let mut warnings = installed.warnings;
        if installed.changed {
            match sshd::reload(&self.config.sshd_reload) {
                Ok(how) => {
                    tracing::info!(%how, "installed the Latch SSH user CA for sshd and reloaded it")
                }
                Err(error) => warnings.push(error.to_string()),
            }
        }
        Ok(warnings)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a verified job and says how it ended. Never panics; every failure is an outcome.
    ///
    /// A job already applied here is not applied again. If this host had `started` it (the
    /// agent died after applying, before journaling the outcome), its result is verified again
    /// and reported `confirmed` if it holds; otherwise it is refused as `replayed_job`. One older than a job already applied to the same
    /// account is refused (`stale_job`). The deadline (`not_after`) applies only to a job that
    /// has not `started` on this host: a job a crash interrupted is finished whatever the time.
    pub fn execute(&self, job: &SignedJob, started: bool) -> JobOutcome {
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
            return if started {
                self.verify_again(job)
            } else {
                JobOutcome::Failed {
                    error: JobError::new(
                        JobErrorCode::ReplayedJob,
                        format!(
                            "job {} (sequence {}) was already applied on this host; a job is never applied twice",
                            job.job_id, job.seq
                        ),
                    ),
                }
            };
        }
        if !started && let Err(error) = latch_common::signing::check_deadline(job, Utc::now()) {
            return JobOutcome::Failed { error };
        }
        let outcome = match self.apply(job) {
            Ok(notes) => JobOutcome::Confirmed { notes },
            Err(error) => JobOutcome::Failed { error },
        };
        let stale = matches!(&outcome, JobOutcome::Failed { error } if error.code == JobErrorCode::StaleJob);
        if !stale && let Err(error) = self.record_applied(job) {
            tracing::error!(%error, "cannot record the job as applied");
        }
        crash_hook::pause_blocking("recorded");
        outcome.bounded()
    }

    /// The outcome of a job that was already applied: `confirmed` if its result still holds.
    fn verify_again(&self, job: &SignedJob) -> JobOutcome {
        let replayed = || JobOutcome::Failed {
            error: JobError::new(
                JobErrorCode::ReplayedJob,
                format!(
                    "job {} (sequence {}) was already applied on this host and its result no longer holds; a job is never applied twice",
                    job.job_id, job.seq
                ),
            ),
        };
        if let JobSpec::RotateSigningKey { next_key } = &job.spec {
            let known = self.state.identity().is_ok_and(|identity| {
                identity.signing_key.as_deref() == Some(next_key)
                    || identity.next_signing_key.as_deref() == Some(next_key)
            });
            return if known {
                JobOutcome::Confirmed {
                    notes: vec![
                        "applied before the agent restarted; the next key is recorded".into(),
                    ],
                }
            } else {
                replayed()
            };
        }
        let verified = self.read_files().and_then(|snapshot| {
            let accounts = self.state.accounts().map_err(state_error)?;
            let policy = self.policy(&snapshot);
            let facts = self.facts(&snapshot, &accounts, &policy);
            plan::verify(&job.spec, &facts)?;
            self.verify_host(&job.spec, &snapshot)
        });
        match verified {
            Ok(_) => {
                tracing::info!(job_id = %job.job_id, "job was applied before a restart; its result verified again");
                JobOutcome::Confirmed {
                    notes: vec![
                        "applied before the agent restarted; the result was verified again".into(),
                    ],
                }
            }
            Err(_) => replayed(),
        }
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

    /// The highest job sequence applied on this host (0 if none or the records cannot be read).
    pub fn applied_high_water(&self) -> i64 {
        self.state.accounts().map_or(0, |accounts| {
            let newest = accounts
                .applied_jobs
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0);
            let per_user = accounts.applied_seq.values().copied().max().unwrap_or(0);
            accounts.applied_floor.max(newest).max(per_user)
        })
    }

    /// The earliest end of any active grant.
    pub fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StateError> {
        Ok(plan::next_expiry(&self.state.accounts()?))
    }

    /// Revokes every grant that has ended by `now` and queues a report for each in the outbox.
    /// Returns how many grants were revoked; a grant whose revocation could not be verified
    /// stays recorded and is retried by the caller.
    /// `progress` is called before each grant (the watchdog's sign that the pass advances).
    pub fn revoke_expired(
        &self,
        now: DateTime<Utc>,
        progress: &dyn Fn(),
    ) -> Result<usize, JobError> {
        let _busy = self.lock();
        let mut accounts = self.state.accounts().map_err(state_error)?;
        let mut revoked = 0;
        for expired in plan::expired(&accounts, now) {
            progress();
            let snapshot = self.read_files()?;
            let policy = self.policy(&snapshot);
            let planned = plan::plan_expiry(&expired, &self.facts(&snapshot, &accounts, &policy));
            let (user, group, jobs) = (
                expired.user().to_owned(),
                expired.group().unwrap_or("-").to_owned(),
                expired.job_ids().join(","),
            );
            let plan = match planned {
                Ok(plan) => plan,
                Err(error) => {
                    tracing::error!(%user, %group, %jobs, code = %error.code, error = %error.message, "cannot plan the revocation of an expired grant; will retry");
                    continue;
                }
            };
            let revoked_at = Utc::now();
            let reports: Vec<RevocationReport> = expired
                .job_ids()
                .into_iter()
                .map(|job_id| RevocationReport { job_id, revoked_at })
                .collect();
            match self.revoke_verified(&expired.spec(), plan, &snapshot, &mut accounts, reports) {
                Ok(notes) => {
                    tracing::info!(host_id = %self.host_id, %user, %group, job_id = %jobs, kind = "expiry", outcome = "revoked", notes = %notes.join("; "), "grant expired: access revoked");
                    revoked += 1;
                }
                Err(error) => {
                    tracing::error!(host_id = %self.host_id, %user, %group, job_id = %jobs, kind = "expiry", outcome = "incomplete", code = %error.code, error = %error.message, "revoking an expired grant is not complete; will retry");
                }
            }
            accounts = self.state.accounts().map_err(state_error)?;
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
            sudo_checked_groups: if self.config.sudo_dynamic_groups {
                vec!["sudo".to_owned(), "wheel".to_owned()]
            } else {
                Vec::new()
            },
            allow_adopt_system_accounts: self.config.allow_adopt_system_accounts,
        }
    }

    fn facts<'a>(
        &self,
        snapshot: &'a Snapshot,
        accounts: &'a Accounts,
        policy: &'a Policy,
    ) -> Facts<'a> {
        Facts {
            snapshot,
            accounts,
            policy,
            names: &Nss,
        }
    }

    /// The account files. A malformed line does not fail the read (see [`Snapshot::read`]).
    fn read_files(&self) -> Result<Snapshot, JobError> {
        Snapshot::read(&self.etc).map_err(|e| {
            JobError::new(
                JobErrorCode::ToolFailed,
                format!("{e}; check that /etc/passwd, /etc/group and /etc/shadow are readable"),
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

    /// Applies `job`; returns the notes of a confirmed outcome.
    fn apply(&self, job: &SignedJob) -> Result<Vec<String>, JobError> {
        if let JobSpec::RotateSigningKey { next_key } = &job.spec {
            self.record_next_signing_key(job, next_key)?;
            return Ok(Vec::new());
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
        let plan = plan::plan(
            &job.spec,
            &job.job_id,
            &self.facts(&snapshot, &accounts, &policy),
        )?;
        if plan::is_revocation(&job.spec) {
            return self.revoke_verified(&job.spec, plan, &snapshot, &mut accounts, Vec::new());
        }
        self.grant(&plan.steps, &job.job_id, &mut accounts)?;
        let after = self.read_files()?;
        let accounts = self.state.accounts().map_err(state_error)?;
        plan::verify(&job.spec, &self.facts(&after, &accounts, &policy))?;
        self.verify_host(&job.spec, &after)?;
        Ok(plan.notes)
    }

    /// Runs a grant's steps; the first failure stops it. An account this job was creating is
    /// removed again (or, failing that, left recorded and expired so local expiry removes it).
    fn grant(&self, steps: &[Step], job_id: &str, accounts: &mut Accounts) -> Result<(), JobError> {
        let creating = steps.iter().find_map(|s| match s {
            Step::AddUser { user, uid, .. } => Some((user.clone(), *uid)),
            _ => None,
        });
        for step in steps {
            if let Err(error) = self.run_step(step.clone(), job_id, accounts) {
                return Err(match &creating {
                    Some((user, uid)) if accounts.accounts.contains_key(user) => {
                        let undone = self.undo_create(user, *uid, accounts);
                        JobError::new(error.code, format!("{}; {undone}", error.message))
                    }
                    _ => error,
                });
            }
            if matches!(step, Step::AddUser { .. }) {
                crash_hook::pause_blocking("half-applied");
            }
        }
        Ok(())
    }

    /// Removes whatever a failed create-account left (a `useradd` can commit the passwd and
    /// group entries, `--groups sudo` included, before creating the home fails). Says what
    /// happened, for the job's error.
    fn undo_create(&self, user: &str, uid: u32, accounts: &mut Accounts) -> String {
        let keep_for_expiry = |accounts: &mut Accounts| {
            if let Some(record) = accounts.accounts.get_mut(user) {
                record.expires_at = Some(Utc::now());
                record.group_grants.clear();
            }
            if let Err(error) = self.state.save_accounts(accounts) {
                tracing::error!(%error, "cannot keep the record of a half-created account");
            }
        };
        let snapshot = match self.read_files() {
            Ok(snapshot) => snapshot,
            Err(error) => {
                keep_for_expiry(accounts);
                return format!(
                    "the account files could not be read back ({}); the agent keeps '{user}' recorded and removes whatever was created at its expiry timer",
                    error.message
                );
            }
        };
        let leftover = snapshot.user(user).is_some_and(|u| u.uid == uid)
            || snapshot.group(user).is_some_and(|g| g.gid == uid);
        if !leftover {
            accounts.accounts.remove(user);
            if let Err(error) = self.state.save_accounts(accounts) {
                tracing::error!(%error, "cannot drop the record of an account that was never made");
            }
            return "nothing was left behind".to_owned();
        }
        // Keep the claim, expired now: if removing fails here, local expiry finishes it.
        keep_for_expiry(accounts);
        let spec = JobSpec::DeleteAccount {
            user: user.to_owned(),
        };
        let policy = self.policy(&snapshot);
        let plan = match plan::plan(&spec, "", &self.facts(&snapshot, accounts, &policy)) {
            Ok(plan) => plan,
            Err(error) => {
                return format!(
                    "what was created could not be removed yet ({}); the agent retries at its expiry timer",
                    error.message
                );
            }
        };
        match self.revoke_verified(&spec, plan, &snapshot, accounts, Vec::new()) {
            Ok(_) => "what was created was removed again; nothing is left behind".to_owned(),
            Err(error) => format!(
                "what was created could not all be removed yet ({}); the agent retries at its expiry timer",
                error.message
            ),
        }
    }

    /// Runs a revocation to its end and checks it: every step but the records is tried whatever
    /// happens to the others; then the account files are read back, and no process that any
    /// process-ending step had to end may be left. Only then are the agent's records dropped
    /// (and, for local expiry, `reports` queued) in one write, so a revocation that is not
    /// complete stays recorded and is retried. Returns the notes of a confirmed outcome; the
    /// error names what could not be done.
    fn revoke_verified(
        &self,
        spec: &JobSpec,
        plan: plan::Plan,
        before: &Snapshot,
        accounts: &mut Accounts,
        reports: Vec<RevocationReport>,
    ) -> Result<Vec<String>, JobError> {
        let (forget, act): (Vec<Step>, Vec<Step>) =
            plan.steps.into_iter().partition(Step::is_forget);
        let failures = self.revoke(&act, accounts, before);
        let incomplete = |error: JobError| {
            JobError::new(
                error.code,
                format!("{}{}", error.message, failed_steps(&failures)),
            )
        };
        let after = self.read_files()?;
        let mut records = self.state.accounts().map_err(state_error)?;
        for step in &forget {
            match step {
                Step::ForgetAccount { user } => {
                    records.accounts.remove(user);
                }
                Step::ForgetGroupGrant { user, group } => {
                    if let Some(account) = records.accounts.get_mut(user) {
                        account.group_grants.remove(group);
                    }
                }
                _ => {}
            }
        }
        let policy = self.policy(&after);
        plan::verify(spec, &self.facts(&after, &records, &policy)).map_err(incomplete)?;
        for step in &act {
            if let Step::RemovePrincipals { user } = step
                && sshd::principals_present(&self.ssh, user)
            {
                return Err(incomplete(JobError::new(
                    JobErrorCode::VerifyFailed,
                    format!(
                        "after applying, {} is still there: certificates with its principals could still log in as '{user}'",
                        self.ssh.principals_file(user).display()
                    ),
                )));
            }
        }
        for step in &act {
            let (uid, left) = match step {
                Step::EndProcesses { uid, .. } => (*uid, procs::processes_of(*uid)),
                Step::EndPrivilegedProcesses { uid, holding } => {
                    (*uid, procs::privileged_of(*uid, *holding))
                }
                _ => continue,
            };
            if !left.is_empty() {
                return Err(incomplete(still_running(uid, &left)));
            }
        }
        let mut notes = plan.notes;
        notes.extend(failures);
        if let JobSpec::DeleteAccount { user } = spec
            && let Some(entry) = before.user(user)
            && after.user(user).is_none()
            && std::fs::symlink_metadata(&entry.home).is_ok()
        {
            notes.push(format!(
                "the home directory {} could not be removed; remove it by hand",
                entry.home
            ));
        }
        records.outbox.extend(reports);
        self.state.save_accounts(&records).map_err(state_error)?;
        *accounts = records;
        Ok(notes)
    }

    /// Runs every step whatever happens to the others; returns what could not be done. Once the
    /// account files turn out to be locked by another program, the steps that need that lock
    /// are skipped for this attempt (each would wait again); the revocation is then retried.
    ///
    /// Locking the account and leaving its groups are tried first as one `usermod` call (see
    /// [`Worker::lock_and_leave_groups`]); only if that fails do they run one by one.
    fn revoke(&self, steps: &[Step], accounts: &mut Accounts, before: &Snapshot) -> Vec<String> {
        let mut failures = Vec::new();
        let mut files_locked = false;
        let mut done = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            if done.contains(&index) {
                continue;
            }
            if !files_locked && matches!(step, Step::LockAccount { .. }) {
                match self.lock_and_leave_groups(steps, before) {
                    Ok(combined) => done = combined,
                    Err(error) => {
                        files_locked |= error.code == JobErrorCode::HostBusy;
                        tracing::debug!(code = %error.code, error = %error.message, "locking and leaving the groups in one call failed; one step at a time");
                    }
                }
                if done.contains(&index) {
                    continue;
                }
            }
            if files_locked && step.needs_file_lock() {
                failures.push(format!(
                    "skipped: {} (the account files are locked by another program)",
                    step.describe()
                ));
                continue;
            }
            let result = match step {
                Step::RemoveKeys { user } => self.remove_keys(user),
                Step::DeleteUser { user } => self.delete_user(user),
                other => self.run_step(other.clone(), "", accounts),
            };
            if let Err(error) = result {
                files_locked |= error.code == JobErrorCode::HostBusy;
                tracing::warn!(step = %step.describe(), code = %error.code, error = %error.message, "a revocation step failed; going on with the others");
                failures.push(format!("could not {}: {}", step.describe(), error.message));
            }
        }
        failures
    }

    /// Does the `LockAccount` step of `steps` and its user's `RemoveFromGroup` steps in one
    /// `usermod --lock --expiredate 1 --groups KEEP` call, KEEP being the groups `before` shows
    /// the user in that no step removes. Returns the indices of the steps done (none when
    /// there are no group steps to combine with). On failure the caller runs the steps one by
    /// one, so each keeps its own best-effort chance.
    fn lock_and_leave_groups(
        &self,
        steps: &[Step],
        before: &Snapshot,
    ) -> Result<Vec<usize>, JobError> {
        let Some((lock, user)) = steps.iter().enumerate().find_map(|(i, s)| match s {
            Step::LockAccount { user } => Some((i, user)),
            _ => None,
        }) else {
            return Ok(Vec::new());
        };
        let leaving: Vec<(usize, &str)> = steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Step::RemoveFromGroup { user: u, group } if u == user => Some((i, group.as_str())),
                _ => None,
            })
            .collect();
        if leaving.is_empty() {
            return Ok(Vec::new());
        }
        let keep: Vec<String> = before
            .group
            .iter()
            .filter(|g| g.members.iter().any(|m| m == user))
            .filter(|g| !leaving.iter().any(|(_, name)| *name == g.name))
            .map(|g| g.name.clone())
            .collect();
        self.tools
            .lock_user_keeping_groups(user, &keep)
            .map_err(tool_error)?;
        Ok(std::iter::once(lock)
            .chain(leaving.iter().map(|(i, _)| *i))
            .collect())
    }

    fn remove_keys(&self, user: &str) -> Result<(), JobError> {
        let snapshot = self.read_files()?;
        let Some(entry) = snapshot.user(user) else {
            return Ok(());
        };
        let home = Path::new(&entry.home);
        refuse_mounts_under(home)?;
        keys::revoke_authorized_keys(home)
            .map_err(|e| JobError::new(JobErrorCode::ToolFailed, e.to_string()))
    }

    /// `userdel --remove`, again with `--force` if the user still had processes. An account
    /// that is gone from `/etc/passwd` counts as deleted even if its home could not be removed.
    fn delete_user(&self, user: &str) -> Result<(), JobError> {
        let first = self.tools.delete_user(user, false).map_err(tool_error);
        let result = match first {
            // `--force` also removes a home the user does not own: only for the account's own.
            Err(error) if error.code == JobErrorCode::AccountInUse && self.owns_home(user) => {
                self.tools.delete_user(user, true).map_err(tool_error)
            }
            other => other,
        };
        match result {
            Ok(()) => Ok(()),
            Err(error) => {
                let gone = self
                    .read_files()
                    .is_ok_and(|snapshot| snapshot.user(user).is_none());
                if gone {
                    tracing::warn!(user, error = %error.message, "userdel reported an error but the account is gone");
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Whether `user`'s home directory is a directory owned by `user` (not a link).
    fn owns_home(&self, user: &str) -> bool {
        self.read_files().is_ok_and(|snapshot| {
            snapshot.user(user).is_some_and(|entry| {
                std::fs::symlink_metadata(&entry.home).is_ok_and(|meta| {
                    meta.is_dir() && std::os::unix::fs::MetadataExt::uid(&meta) == entry.uid
                })
            })
        })
    }

    /// Drops the record of `user` once its account is gone; keeps it (so revocation is retried)
    /// while it is not.
    fn forget_if_gone(&self, user: &str, accounts: &mut Accounts) -> Result<(), JobError> {
        let snapshot = self.read_files()?;
        if let Ownership::Ours(_) = plan::owned_account(user, &snapshot, accounts) {
            return Err(JobError::new(
                JobErrorCode::VerifyFailed,
                format!("'{user}' is still in /etc/passwd; the agent keeps its record and retries"),
            ));
        }
        accounts.accounts.remove(user);
        self.state.save_accounts(accounts).map_err(state_error)
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
                // A name Latch now creates is no longer the adopted account it may once have
                // been (that one is gone from /etc/passwd, or create-account was refused).
                accounts.adopted.remove(&user);
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
            } => self
                .tools
                .add_user(
                    &user,
                    uid,
                    &shell,
                    GECOS_TAG,
                    &groups,
                    expire_day,
                    self.many_groups(),
                )
                .map_err(tool_error)?,
            Step::SetAccountExpiry { user, expires_at } => {
                self.tools
                    .set_expiry(&user, expires_at.map(plan::shadow_expire_day))
                    .map_err(tool_error)?;
                if let Some(account) = accounts.accounts.get_mut(&user) {
                    account.expires_at = expires_at;
                    self.state.save_accounts(accounts).map_err(state_error)?;
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
            Step::WritePrincipals { user, principals } => {
                sshd::write_principals(&self.ssh, &user, &principals)
                    .map_err(|e| JobError::new(JobErrorCode::ToolFailed, e.to_string()))?
            }
            Step::RemovePrincipals { user } => sshd::remove_principals(&self.ssh, &user)
                .map_err(|e| JobError::new(JobErrorCode::ToolFailed, e.to_string()))?,
            Step::RemoveKeys { user } => self.remove_keys(&user)?,
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
            Step::RecordAdoption { user, uid } => {
                accounts.adopted.insert(
                    user,
                    AdoptedAccount {
                        uid,
                        adopted_by_job: job_id.to_owned(),
                        adopted_at: Utc::now(),
                    },
                );
                self.state.save_accounts(accounts).map_err(state_error)?;
            }
            Step::ForgetGroupGrant { user, group } => {
                if let Some(account) = accounts.accounts.get_mut(&user)
                    && account.group_grants.remove(&group).is_some()
                {
                    self.state.save_accounts(accounts).map_err(state_error)?;
                }
            }
            Step::EndProcesses { uid, gid } => {
                let left = procs::end_all(uid, gid, self.config.kill_grace);
                if !left.is_empty() {
                    return Err(still_running(uid, &left));
                }
            }
            Step::EndPrivilegedProcesses { uid, holding } => {
                let left = procs::end_privileged(uid, holding, self.config.kill_grace);
                if !left.is_empty() {
                    return Err(still_running(uid, &left));
                }
            }
            Step::DeleteUser { user } => self.delete_user(&user)?,
            Step::DeleteGroup { group } => self.tools.delete_group(&group).map_err(tool_error)?,
            Step::ForgetAccount { user } => self.forget_if_gone(&user, accounts)?,
        }
        Ok(())
    }

    /// Whether `/etc/group` is large enough (over [`MANY_GROUPS_BYTES`]) for useradd's own
    /// group handling to be slow (see [`ShadowUtils::add_user`]).
    fn many_groups(&self) -> bool {
        std::fs::metadata(self.etc.join("group")).is_ok_and(|m| m.len() > MANY_GROUPS_BYTES)
    }

    fn write_keys(&self, user: &str, lines: &[String]) -> Result<(), JobError> {
        let snapshot = self.read_files()?;
        let entry = snapshot.user(user).ok_or_else(|| {
            JobError::new(
                JobErrorCode::VerifyFailed,
                format!("account '{user}' vanished before its keys were written"),
            )
        })?;
        refuse_mounts_under(Path::new(&entry.home))?;
        keys::write_authorized_keys(Path::new(&entry.home), entry.uid, entry.gid, lines)
            .map_err(|e| JobError::new(JobErrorCode::ToolFailed, e.to_string()))
    }

    /// Checks what the account files do not show for a grant: the home directory and
    /// `authorized_keys` of a new account. (A revocation's processes and home are checked by
    /// `revoke_verified`.)
    fn verify_host(&self, spec: &JobSpec, after: &Snapshot) -> Result<(), JobError> {
        let failed = |what: String| {
            JobError::new(
                JobErrorCode::VerifyFailed,
                format!("after applying, {what}"),
            )
        };
        if let JobSpec::CreateAccount {
            user,
            ssh_keys,
            expires_at,
            principals,
            ..
        } = spec
        {
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
            if !principals.is_empty() {
                let me = nix::unistd::geteuid().as_raw();
                match sshd::read_principals(&self.ssh, user) {
                    Ok(Some((text, owner, mode)))
                        if text == sshd::principals_text(principals)
                            && owner == me
                            && mode == 0o644 => {}
                    Ok(_) => {
                        return Err(failed(format!(
                            "{} does not hold exactly the job's principals, owned by root with mode 0644",
                            self.ssh.principals_file(user).display()
                        )));
                    }
                    Err(e) => return Err(failed(e.to_string())),
                }
            }
        }
        Ok(())
    }
}

/// Refuses to work under `home` when a file system is mounted at or below it: a user's FUSE
/// mount could block every access for ever (and the agent would stop revoking). Read from
/// mountinfo, without touching the mount.
fn refuse_mounts_under(home: &Path) -> Result<(), JobError> {
    let mounts = crate::system::mounts::mounts_under(home);
    if mounts.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
    Err(JobError::new(
        JobErrorCode::ToolFailed,
        format!(
            "a file system is mounted under {} ({}); Latch does not touch files under a mount point — unmount it",
            home.display(),
            shown.join(", ")
        ),
    ))
}

fn still_running(uid: u32, left: &[procs::ProcessInfo]) -> JobError {
    let pids: Vec<String> = left.iter().take(10).map(|p| p.pid.to_string()).collect();
    JobError::new(
        JobErrorCode::AccountInUse,
        format!(
            "{} process(es) of UID {uid} or started from its logins could not be ended (PIDs {}); check them with `ps -o pid,user,cmd -p PID`",
            left.len(),
            pids.join(" ")
        ),
    )
}
