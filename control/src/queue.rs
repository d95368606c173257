//! The job queue: create jobs, deliver them to agents by long-poll with leases, record outcomes,
//! and fail jobs whose agent never answered.
//!
//! State machine of a job (status as administrators see it in brackets):
//!
//! ```text
//! queued [pending] --poll--> delivered [pending] --report confirmed--> [confirmed]
//!                                 |   \--report failed------------> [failed]
//!                                 | lease runs out, attempts < max: delivered again
//!                                 \ lease runs out, attempts = max --> [failed: agent_unresponsive]
//! ```
//!
//! Jobs of one host are delivered strictly in sequence order: while the head job is leased,
//! nothing behind it is delivered. An outcome is accepted only with the lease token of the
//! current delivery and only once (compare-and-set), so a rescued delivery can never overwrite
//! a result.
//!
//! Grants (confirmed create-account and add-group jobs) have a window: requested (in the future,
//! at most `max_grant_duration`), the default one, or none when explicitly `permanent`. Past its
//! end a grant gets a revocation job; if that job fails in any way, the grant gets another one
//! after a backoff, until a host confirms (or the host is removed):
//!
//! ```text
//! active --end--> revoking --revocation confirmed / agent report--> revoked
//!                    |  ^ backoff over: new revocation job
//!                    v  |
//!              revocation_stuck (failed attempts, last error, next retry)
//! active|revoking --later confirmed grant of the same access--> superseded
//! any not revoked --host removed--> host_removed      any --delete-account / remove-group--> revoked (job)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use latch_common::api::{
    AgentJob, CreateJobRequest, GrantLimits, GrantState, GrantView, GrantWindow, JobView,
    ReportRequest, RevocationReport, RevocationView, RevokedBy, format_window,
};
use latch_common::job::JobSpec;
use latch_common::labels::Selector;
use latch_common::names::ValidationError;
use latch_common::signing::{PAYLOAD_VERSION, SignedJob};
use tokio::sync::Notify;

use latch_common::authz::Permission;

use crate::audit::Actor;
use crate::password::hash_password;
use crate::people::Authority;
use crate::store::{
    Finish, GrantFilter, GrantRecord, HostRecord, JobContext, JobFilter, JobRecord, JobRefusal,
    Lease, NewJob, Page, PinnedKey, RetryBackoff, Revoke,
};
use crate::{Control, ControlError};

/// Per-host state of long-polls: the wake-up signal waiting polls listen on, and when this
/// process last wrote the host's `last_seen`.
#[derive(Default)]
pub struct Wakeups {
    hosts: Mutex<HashMap<String, HostPolls>>,
}

#[derive(Default)]
struct HostPolls {
    notify: Arc<Notify>,
    touched: Option<tokio::time::Instant>,
}

impl Wakeups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostPolls>> {
        self.hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn for_host(&self, host_id: &str) -> Arc<Notify> {
        self.lock()
            .entry(host_id.to_owned())
            .or_default()
            .notify
            .clone()
    }

    pub(crate) fn wake(&self, host_id: &str) {
        // Only a host with polls waiting here has an entry worth waking (a notification from
        // another replica names hosts this process may never have seen).
        if let Some(host) = self.lock().get(host_id) {
            host.notify.notify_waiters();
        }
    }

    /// Wakes every waiting poll (after wake-ups from other replicas may have been missed).
    pub(crate) fn wake_all(&self) {
        for host in self.lock().values() {
            host.notify.notify_waiters();
        }
    }

    /// Whether the host's `last_seen` was last written `every` or longer ago (or never, by
    /// this process).
    fn touch_due(&self, host_id: &str, every: StdDuration) -> bool {
        self.lock()
            .get(host_id)
            .and_then(|host| host.touched)
            .is_none_or(|at| at.elapsed() >= every)
    }

    fn touched(&self, host_id: &str) {
        self.lock().entry(host_id.to_owned()).or_default().touched =
            Some(tokio::time::Instant::now());
    }
}

/// The hosts in both lists (`None` standing for every host).
fn narrow(a: Option<Vec<String>>, b: Option<Vec<String>>) -> Option<Vec<String>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.into_iter().filter(|id| b.contains(id)).collect()),
        (a, None) => a,
        (None, b) => b,
    }
}

/// How a grant's revocation is going, when it is past its end and not revoked (or when
/// revocation jobs for it failed).
fn revocation_view(
    job: &JobRecord,
    state: GrantState,
    retry: RetryBackoff,
) -> Option<RevocationView> {
    let revocation = &job.revocation;
    let unfinished = matches!(
        state,
        GrantState::Revoking | GrantState::RevocationStuck | GrantState::HostRemoved
    );
    if !unfinished && revocation.attempts == 0 {
        return None;
    }
    let next_retry_at = match (&revocation.job_id, revocation.failed_at) {
        (None, Some(failed_at)) if unfinished && state != GrantState::HostRemoved => {
            Some(failed_at + retry.delay(revocation.attempts))
        }
        _ => None,
    };
    Some(RevocationView {
        job_id: revocation.job_id.clone(),
        failed_attempts: revocation.attempts,
        last_error: revocation.last_error.clone(),
        last_failed_at: revocation.failed_at,
        next_retry_at,
    })
}

/// The grant's state in words.
fn grant_summary(
    job: &JobRecord,
    state: GrantState,
    superseded_by: Option<&str>,
    revocation: Option<&RevocationView>,
    now: DateTime<Utc>,
) -> String {
    let time = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    match state {
        GrantState::Active => match job.spec.expires_at() {
            Some(end) => format!(
                "active, {} left (ends {})",
                format_window((end - now).max(chrono::Duration::zero())),
                time(end)
            ),
            None => "active, permanent (no end)".to_owned(),
        },
        GrantState::Revoking => match revocation.and_then(|r| r.job_id.as_deref()) {
            Some(id) => format!("past its end; revocation job {id} is on its way to the host"),
            None => "past its end; its revocation job is being queued".to_owned(),
        },
        GrantState::RevocationStuck => {
            let (attempts, last, next) = revocation.map_or((0, "", None), |r| {
                (
                    r.failed_attempts,
                    r.last_error.as_deref().unwrap_or(""),
                    r.next_retry_at,
                )
            });
            let next = match (revocation.and_then(|r| r.job_id.as_deref()), next) {
                (Some(id), _) => format!("retrying now (job {id})"),
                (None, Some(at)) if at > now => format!("next attempt {}", time(at)),
                (None, _) => "next attempt now".to_owned(),
            };
            format!(
                "past its end and NOT revoked: {attempts} revocation job(s) failed (last: {last}); {next}"
            )
        }
        GrantState::Revoked => {
            let at = job.revoked_at.map(time).unwrap_or_default();
            match job.revoked_by {
                Some(RevokedBy::AgentExpiry) => {
                    format!("expired; revoked by the host's agent at its end ({at})")
                }
                Some(RevokedBy::ControlPlane) => format!(
                    "expired; revoked by the control plane's revocation job {} ({at})",
                    job.revocation.job_id.as_deref().unwrap_or("?")
                ),
                Some(RevokedBy::Job) => format!(
                    "revoked by job {} ({at})",
                    job.revoked_by_job.as_deref().unwrap_or("?")
                ),
                None => format!("revoked ({at})"),
            }
        }
        GrantState::Superseded => format!(
            "superseded by grant {}, which decides when this access ends",
            superseded_by.unwrap_or("?")
        ),
        GrantState::HostRemoved => "host removed — revocation impossible from here; if the \
             host still runs, remove the access on it by hand"
            .to_owned(),
    }
}

/// Turns a stored grant into the administrator's view.
pub fn grant_view(grant: GrantRecord, now: DateTime<Utc>, retry: RetryBackoff) -> GrantView {
    let GrantRecord { job, context } = grant;
    let state = context.grant_state.unwrap_or(GrantState::Active);
    let revocation = revocation_view(&job, state, retry);
    let summary = grant_summary(
        &job,
        state,
        context.superseded_by.as_deref(),
        revocation.as_ref(),
        now,
    );
    let expires_at = job.spec.expires_at();
    let (group, groups) = match &job.spec {
        JobSpec::AddGroup { group, .. } => (Some(group.clone()), Vec::new()),
        JobSpec::CreateAccount { groups, .. } => (None, groups.clone()),
        _ => (None, Vec::new()),
    };
    GrantView {
        host_id: job.host_id.clone(),
        host_name: context.host_name,
        kind: job.spec.kind(),
        user: job.spec.user().to_owned(),
        group,
        groups,
        state,
        granted_at: job.finished_at,
        expires_at,
        seconds_left: match (state, expires_at) {
            (GrantState::Active, Some(end)) => Some((end - now).num_seconds().max(0)),
            _ => None,
        },
        revoked_at: job.revoked_at,
        revoked_by: job.revoked_by,
        revoked_by_job: job.revoked_by_job.clone(),
        superseded_by: context.superseded_by,
        revocation,
        summary,
        job_id: job.id,
    }
}

/// Turns a stored job into the administrator's view (history left empty). `context` adds the
/// host's name and, for a grant, where it stands.
pub fn job_view(job: JobRecord, context: Option<&JobContext>, retry: RetryBackoff) -> JobView {
    let grant_state = context.and_then(|c| c.grant_state);
    let revocation = grant_state.and_then(|state| revocation_view(&job, state, retry));
    JobView {
        host_name: context.map(|c| c.host_name.clone()).unwrap_or_default(),
        grant_state,
        superseded_by: context.and_then(|c| c.superseded_by.clone()),
        revocation,
        revoked_by_job: job.revoked_by_job,
        id: job.id,
        host_id: job.host_id,
        seq: job.seq,
        kind: job.spec.kind(),
        params: job.spec.redacted(),
        status: job.status,
        error: job.error,
        notes: job.notes,
        created_at: job.created_at,
        finished_at: job.finished_at,
        attempts: job.attempts,
        expires_at: job.spec.expires_at(),
        revoked_at: job.revoked_at,
        revoked_by: job.revoked_by,
        revokes: job.revokes,
        history: Vec::new(),
    }
}

impl Control {
    /// Stores a job signed for `host_id`: the payload binds host, id, sequence, deadline and
    /// every parameter. Grants (and password changes) may be applied until `job_ttl` after
    /// creation, and never after a grant's own end; revocations never expire.
    async fn queue_signed(
        &self,
        host_id: &str,
        spec: &JobSpec,
        revokes: Option<&str>,
        actor: &Actor,
        window: GrantWindow,
    ) -> Result<JobRecord, ControlError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.queue_signed_as(&id, host_id, spec, revokes, actor, window, None)
            .await
    }

    /// [`Control::queue_signed`] with the job id chosen by the caller (recorded before the job
    /// is queued, as a rotation does).
    // Each argument is one fact of the job; a struct for them would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn queue_signed_as(
        &self,
        id: &str,
        host_id: &str,
        spec: &JobSpec,
        revokes: Option<&str>,
        actor: &Actor,
        window: GrantWindow,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<JobRecord, ControlError> {
        let id = id.to_owned();
        let now = Utc::now();
        let not_after = match spec {
            JobSpec::DeleteAccount { .. }
            | JobSpec::RemoveGroup { .. }
            | JobSpec::RotateSigningKey { .. } => None,
            _ => Some(
                spec.expires_at()
                    .map_or(now + self.config.job_ttl, |end| {
                        end.min(now + self.config.job_ttl)
                    })
                    .min(deadline.unwrap_or(DateTime::<Utc>::MAX_UTC)),
            ),
        };
        let signer = self.keys.current();
        if self.shared_store {
            self.check_signing_key_pinned(&signer.public_key()).await?;
        }
        let sign = |seq: i64| -> Result<(String, String), String> {
            let payload = SignedJob {
                v: PAYLOAD_VERSION,
                host_id: host_id.to_owned(),
                job_id: id.clone(),
                seq,
                not_after,
                spec: spec.clone(),
            };
            let payload = serde_json::to_string(&payload).map_err(|e| e.to_string())?;
            let signature = signer.sign(payload.as_bytes());
            Ok((payload, signature))
        };
        match self
            .store
            .insert_job(
                &NewJob {
                    id: &id,
                    host_id,
                    spec,
                    revokes,
                    now,
                    actor,
                    window,
                },
                &sign,
            )
            .await?
        {
            Ok(job) => Ok(job),
            Err(JobRefusal::HostRemoved) => Err(ControlError::HostRemoved(host_id.to_owned())),
            Err(JobRefusal::NoSuchHost) => Err(ControlError::NotFound {
                what: "host",
                key: host_id.to_owned(),
            }),
            Err(JobRefusal::RevocationUnderway) => Err(ControlError::Conflict(
                "this grant's revocation is already queued".into(),
            )),
        }
    }

    /// Refuses to sign with `public_key` when the database pins another signing key: on a
    /// database shared by several replicas, another replica promoted a new key (agents drop the
    /// old one on their first job signed with the new), and this one still holds the old file.
    async fn check_signing_key_pinned(&self, public_key: &str) -> Result<(), ControlError> {
        match self.store.key_pin(PinnedKey::Signing).await? {
            Some(pinned) if pinned != public_key => Err(ControlError::Internal(format!(
                "this replica's job-signing key ({public_key}) is no longer the one in use ({pinned}): another replica promoted a new key. Copy signing.key from that replica's data directory into this one's and restart this replica; until then it queues no jobs"
            ))),
            _ => Ok(()),
        }
    }

    /// Queues an internal job with the id `job_id` (chosen and recorded beforehand) for
    /// `host_id`, and wakes the host.
    pub(crate) async fn queue_internal_job(
        &self,
        host_id: &str,
        job_id: &str,
        spec: &JobSpec,
    ) -> Result<(), ControlError> {
        self.queue_signed_as(
            job_id,
            host_id,
            spec,
            None,
            &Actor::new(crate::enroll::CONTROL_PLANE),
            GrantWindow::NotAGrant,
            None,
        )
        .await?;
        self.wakeups.wake(host_id);
        Ok(())
    }

    /// Queues a job of an access request with the id `job_id` (recorded beforehand) for
    /// `host_id`: a grant (`window` requested) that the agent must not apply after `deadline`,
    /// or a revocation of grant `revokes`. Wakes the host.
    pub(crate) async fn queue_access_job(
        &self,
        host_id: &str,
        job_id: &str,
        spec: &JobSpec,
        revokes: Option<&str>,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<(), ControlError> {
        let window = if spec.expires_at().is_some() {
            GrantWindow::Requested
        } else {
            GrantWindow::NotAGrant
        };
        self.queue_signed_as(
            job_id,
            host_id,
            spec,
            revokes,
            &Actor::new(crate::enroll::CONTROL_PLANE),
            window,
            deadline,
        )
        .await?;
        self.wakeups.wake(host_id);
        Ok(())
    }

    /// Queues an internal job (not from the jobs API) for `host_id`; returns its id.
    pub(crate) async fn queue_job_for(
        &self,
        host_id: &str,
        spec: &JobSpec,
    ) -> Result<String, ControlError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.queue_internal_job(host_id, &id, spec).await?;
        Ok(id)
    }

    /// The grant windows this control plane allows.
    pub fn grant_limits(&self) -> GrantLimits {
        GrantLimits {
            max: self.config.max_grant_duration,
            default: self.config.default_grant_duration,
        }
    }

    /// Validates and queues a job; an idle agent of that host is woken at once. A grant's end
    /// must be in the future and within `max_grant_duration`; without one it gets
    /// `default_grant_duration`, unless the request says `permanent` (audited).
    pub async fn create_job(
        &self,
        by: &Authority,
        request: CreateJobRequest,
    ) -> Result<JobView, ControlError> {
        by.require(Permission::HostsManageUsers)?;
        let host_key = request.host.clone();
        if host_key.is_empty() || host_key.len() > 253 || host_key.chars().any(char::is_control) {
            return Err(ValidationError::new("host", "must be a host id or host name").into());
        }
        let (spec, window) = request.into_spec(Utc::now(), &self.grant_limits(), hash_password)?;
        self.queue_for_caller(by, &host_key, &spec, window).await
    }

    /// Queues the validated `spec` for the host `host_key` (id or name) on behalf of `by`, who
    /// needs `hosts.manage_users` on it, and wakes an idle agent of that host.
    async fn queue_for_caller(
        &self,
        by: &Authority,
        host_key: &str,
        spec: &JobSpec,
        window: GrantWindow,
    ) -> Result<JobView, ControlError> {
        let (host, _) = self
            .host_for(by, Permission::HostsManageUsers, host_key)
            .await?;
        let job = self
            .queue_signed(&host.id, spec, None, &by.audit_actor(), window)
            .await?;
        tracing::info!(job_id = %job.id, host_id = %job.host_id, kind = %spec.kind(), window = window.as_str(), "job queued");
        self.wakeups.wake(&host.id);
        // A job just queued is pending, so it is no grant yet: its context is the host's name
        // (no query needed on the hot path).
        let context = JobContext {
            host_name: host.facts.hostname,
            host_removed_at: None,
            grant_state: None,
            superseded_by: None,
        };
        Ok(job_view(job, Some(&context), self.config.revocation_retry))
    }

    /// Queues an `adopt-account` job: host `host` (id or name) is to record its existing
    /// account `user` as adopted, so that later `set-password` jobs may reset its password
    /// (Latch never deletes, locks or expires an adopted account). This is the one door for
    /// adopt-account jobs — the jobs API refuses the kind — meant for the control plane's own
    /// account enrollment; it needs `hosts.manage_users` on the host. The agent decides
    /// whether the account may be adopted: it must exist, not be one Latch created, and not be
    /// root or (unless the host's configuration allows it) a system account.
    pub async fn queue_adopt_account(
        &self,
        by: &Authority,
        host: &str,
        user: &str,
    ) -> Result<JobView, ControlError> {
        by.require(Permission::HostsManageUsers)?;
        let spec = JobSpec::AdoptAccount {
            user: user.to_owned(),
        };
        spec.validate()?;
        self.queue_for_caller(by, host, &spec, GrantWindow::NotAGrant)
            .await
    }

    fn view(&self, job: JobRecord, context: &HashMap<String, JobContext>) -> JobView {
        let found = context.get(&job.id);
        job_view(job, found, self.config.revocation_retry)
    }

    /// A page of jobs, newest first: those of hosts the caller may see (a delegated admin's
    /// are within its labels) that match `selector` (an empty one matches every host). The
    /// page counts matching jobs only, so `offset` and `count` walk them without gaps.
    pub async fn list_jobs(
        &self,
        by: &Authority,
        filter: &JobFilter,
        selector: &Selector,
        page: Page,
    ) -> Result<Vec<JobView>, ControlError> {
        let scope = by.require(Permission::JobsView)?;
        let filter = JobFilter {
            host_ids: narrow(
                filter.host_ids.clone(),
                self.host_ids_within(&scope, selector).await?,
            ),
            ..filter.clone()
        };
        let jobs = self.store.list_jobs(&filter, page).await?;
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let context = self.store.job_context(&ids, Utc::now()).await?;
        Ok(jobs
            .into_iter()
            .map(|job| self.view(job, &context))
            .collect())
    }

    /// A page of grants (confirmed create-account and add-group jobs), newest first, with
    /// where each stands: those of hosts the caller may see that match `selector` (an empty one
    /// matches every host). The page counts matching grants only.
    pub async fn list_grants(
        &self,
        by: &Authority,
        filter: &GrantFilter,
        selector: &Selector,
        page: Page,
    ) -> Result<Vec<GrantView>, ControlError> {
        let scope = by.require(Permission::JobsView)?;
        let filter = GrantFilter {
            host_ids: narrow(
                filter.host_ids.clone(),
                self.host_ids_within(&scope, selector).await?,
            ),
            ..filter.clone()
        };
        let now = Utc::now();
        Ok(self
            .store
            .list_grants(&filter, now, page)
            .await?
            .into_iter()
            .map(|grant| grant_view(grant, now, self.config.revocation_retry))
            .collect())
    }

    /// One job with its history.
    pub async fn get_job(&self, by: &Authority, id: &str) -> Result<JobView, ControlError> {
        let scope = by.require(Permission::JobsView)?;
        let not_found = || ControlError::NotFound {
            what: "job",
            key: id.to_owned(),
        };
        let job = self.store.get_job(id).await?.ok_or_else(not_found)?;
        if !scope.covers(&self.labels_of(&job.host_id).await?) {
            return Err(not_found());
        }
        let history = self.store.job_history(id).await?;
        let context = self
            .store
            .job_context(std::slice::from_ref(&job.id), Utc::now())
            .await?;
        Ok(JobView {
            history,
            ..self.view(job, &context)
        })
    }

    /// Writes the host's `last_seen` when the last write is a quarter of the online window old
    /// (or was never made by this process): a polling host stays `online`, and a busy fleet
    /// does not write one row per poll (the single SQLite writer is the bottleneck at load).
    async fn touch(&self, host_id: &str) -> Result<(), ControlError> {
        let every = (self.config.online_window / 4).to_std().unwrap_or_default();
        if self.wakeups.touch_due(host_id, every) {
            self.store.touch_host(host_id, Utc::now()).await?;
            self.wakeups.touched(host_id);
        }
        Ok(())
    }

    /// Raises `host`'s job sequence above `applied`, the highest sequence its agent reports
    /// having applied — after the database was restored from an older backup, new jobs (revocations
    /// included) would otherwise carry sequences the agent refuses as replayed or stale.
    pub async fn catch_up_sequence(
        &self,
        host: &HostRecord,
        applied: i64,
    ) -> Result<(), ControlError> {
        // 2^53: far above any real sequence, far below overflow.
        if !(0..(1_i64 << 53)).contains(&applied) {
            return Err(ValidationError::new(
                "applied",
                "must be a job sequence number (0 or more)",
            )
            .into());
        }
        if self
            .store
            .raise_next_seq(&host.id, applied, Utc::now())
            .await?
        {
            tracing::warn!(host_id = %host.id, applied, "the host had applied jobs this database does not know (restored from a backup?): its job sequence was raised");
        }
        Ok(())
    }

    /// Long-poll: the host's next job, waiting up to `wait` for one to be queued. `None` when the
    /// wait ends with nothing to do. `host` was authenticated for this request (so it was
    /// active); after a wake-up that finds nothing to deliver the host is checked again, so
    /// removing it (which cancels its jobs and wakes the poll) ends the poll with 401. A job
    /// delivered needs no check: jobs are queued only for active hosts, and removal cancels
    /// them in the same transaction.
    pub async fn next_job(
        &self,
        host: &HostRecord,
        wait: StdDuration,
    ) -> Result<Option<AgentJob>, ControlError> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.wakeups.for_host(&host.id);
        self.touch(&host.id).await?;
        let mut woken = false;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            // Register interest before looking, so a job queued in between still wakes us.
            notified.as_mut().enable();
            let lease = uuid::Uuid::new_v4().to_string();
            let now = Utc::now();
            let wake_at = match self
                .store
                .lease_next_job(
                    &host.id,
                    &lease,
                    now,
                    self.config.lease_ttl,
                    self.config.max_attempts,
                )
                .await?
            {
                Lease::Delivered(job) => {
                    tracing::info!(job_id = %job.id, host_id = %host.id, attempt = job.attempts, "job delivered");
                    return Ok(Some(AgentJob {
                        id: job.id,
                        lease,
                        attempt: job.attempts,
                        payload: job.payload,
                        signature: job.signature,
                    }));
                }
                Lease::InFlight { until } => {
                    let left = (until - now).to_std().unwrap_or_default();
                    deadline.min(tokio::time::Instant::now() + left)
                }
                Lease::Idle => deadline,
            };
            // A wake-up from another replica can be lost (its listener reconnecting): look
            // again now and then on a shared database.
            let wake_at = if self.shared_store {
                wake_at.min(tokio::time::Instant::now() + self.config.poll_recheck)
            } else {
                wake_at
            };
            if woken && !self.store.host_is_active(&host.id).await? {
                return Err(ControlError::Unauthenticated(
                    "this host was removed; enroll it again with `latch-agent enroll --replace` if it should be managed again",
                ));
            }
            woken = true;
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                self.touch(&host.id).await?;
                return Ok(None);
            }
        }
    }

    /// Records an agent's outcome for the delivery holding `report.lease`. A resent identical
    /// outcome is accepted without change; anything else for a finished job, or for a lease that
    /// is no longer current, is a conflict.
    pub async fn report(
        &self,
        host: &HostRecord,
        job_id: &str,
        report: &ReportRequest,
    ) -> Result<(), ControlError> {
        report.outcome.validate()?;
        match self
            .store
            .finish_job(&host.id, job_id, &report.lease, &report.outcome, Utc::now())
            .await?
        {
            Finish::Recorded => {
                tracing::info!(job_id, host_id = %host.id, status = %report.outcome.status(), "job finished");
                self.wakeups.wake(&host.id);
                Ok(())
            }
            Finish::Duplicate => Ok(()),
            Finish::Conflict => Err(ControlError::Conflict(
                "this delivery is no longer current: the job already has an outcome or was delivered again".into(),
            )),
            Finish::NotFound => Err(ControlError::NotFound {
                what: "job",
                key: job_id.to_owned(),
            }),
        }
    }

    /// Fails jobs whose last allowed delivery expired unreported; run periodically.
    pub async fn sweep_abandoned_jobs(&self) -> Result<(), ControlError> {
        for host_id in self
            .store
            .fail_abandoned_jobs(Utc::now(), self.config.max_attempts)
            .await?
        {
            tracing::warn!(host_id, "job failed: agent_unresponsive");
            self.wakeups.wake(&host_id);
        }
        Ok(())
    }

    /// Queues a revocation job for every grant whose expiry has passed (belt and braces: the
    /// agent revokes on its own timer too; both are idempotent), and again, after a backoff,
    /// for every grant whose revocation job failed. Run periodically.
    pub async fn revoke_expired_grants(&self) -> Result<(), ControlError> {
        let due = self
            .store
            .due_grants(Utc::now(), self.config.revocation_retry, 100)
            .await?;
        for grant in due {
            let spec = match &grant.spec {
                JobSpec::CreateAccount { user, .. } => {
                    JobSpec::DeleteAccount { user: user.clone() }
                }
                JobSpec::AddGroup { user, group, .. } => JobSpec::RemoveGroup {
                    user: user.clone(),
                    group: group.clone(),
                },
                _ => continue,
            };
            let queued = self
                .queue_signed(
                    &grant.host_id,
                    &spec,
                    Some(&grant.id),
                    &Actor::new(crate::enroll::CONTROL_PLANE),
                    GrantWindow::NotAGrant,
                )
                .await;
            let id = match queued {
                Ok(job) => job.id,
                // Removed since `due_grants` looked: nothing can reach it any more.
                Err(ControlError::HostRemoved(_)) => continue,
                // Queued meanwhile by another sweep (another control-plane process).
                Err(ControlError::Conflict(_)) => continue,
                // One grant that cannot be queued (a corrupt row, a sequence clash) must not
                // keep every other grant from being revoked: log it, go on.
                Err(error) => {
                    tracing::error!(grant = %grant.id, host_id = %grant.host_id, %error, "cannot queue the revocation of an expired grant; the sweep goes on with the others");
                    continue;
                }
            };
            if grant.revocation.attempts == 0 {
                tracing::info!(grant = %grant.id, job_id = %id, host_id = %grant.host_id, "grant expired: revocation queued");
            } else {
                tracing::warn!(
                    grant = %grant.id,
                    job_id = %id,
                    host_id = %grant.host_id,
                    failed_attempts = grant.revocation.attempts,
                    last_error = grant.revocation.last_error.as_deref().unwrap_or(""),
                    "revocation failed before: queued again"
                );
            }
            self.wakeups.wake(&grant.host_id);
        }
        Ok(())
    }

    /// Records that the host's agent revoked a grant on its own at its expiry.
    pub async fn record_agent_revocation(
        &self,
        host: &HostRecord,
        report: &RevocationReport,
    ) -> Result<(), ControlError> {
        let now = Utc::now();
        if report.revoked_at > now + chrono::Duration::minutes(5) {
            return Err(ValidationError::new(
                "revoked_at",
                "is in the future; check the host's clock",
            )
            .into());
        }
        match self
            .store
            .record_revocation(
                &host.id,
                &report.job_id,
                report.revoked_at,
                RevokedBy::AgentExpiry,
            )
            .await?
        {
            Revoke::Recorded => {
                tracing::info!(job_id = %report.job_id, host_id = %host.id, "grant revoked by agent expiry");
                Ok(())
            }
            Revoke::AlreadyRevoked => Ok(()),
            Revoke::NotAGrant => Err(ControlError::NotFound {
                what: "confirmed grant",
                key: report.job_id.clone(),
            }),
        }
    }
}
