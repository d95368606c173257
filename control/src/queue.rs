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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::Utc;
use latch_common::api::{
    AgentJob, CreateJobRequest, JobView, ReportRequest, RevocationReport, RevokedBy,
};
use latch_common::job::JobSpec;
use latch_common::names::ValidationError;
use latch_common::signing::{PAYLOAD_VERSION, SignedJob};
use tokio::sync::Notify;

use crate::password::hash_password;
use crate::store::{Finish, HostRecord, JobFilter, JobRecord, Lease, NewJob, Page, Revoke};
use crate::{Control, ControlError};

/// Per-host wake-up signals for waiting long-polls.
#[derive(Default)]
pub struct Wakeups {
    hosts: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakeups {
    fn for_host(&self, host_id: &str) -> Arc<Notify> {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        hosts.entry(host_id.to_owned()).or_default().clone()
    }

    pub(crate) fn wake(&self, host_id: &str) {
        self.for_host(host_id).notify_waiters();
    }
}

/// Turns a stored job into the administrator's view (history left empty).
pub fn job_view(job: JobRecord) -> JobView {
    JobView {
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
        actor: &str,
    ) -> Result<JobRecord, ControlError> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = Utc::now();
        let not_after = match spec {
            JobSpec::DeleteAccount { .. }
            | JobSpec::RemoveGroup { .. }
            | JobSpec::RotateSigningKey { .. } => None,
            _ => Some(spec.expires_at().map_or(now + self.config.job_ttl, |end| {
                end.min(now + self.config.job_ttl)
            })),
        };
        let signer = self.keys.current();
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
        Ok(self
            .store
            .insert_job(
                &NewJob {
                    id: &id,
                    host_id,
                    spec,
                    revokes,
                    now,
                    actor,
                },
                &sign,
            )
            .await?)
    }

    /// Queues an internal job (not from the jobs API) for `host_id`; returns its id.
    pub(crate) async fn queue_job_for(
        &self,
        host_id: &str,
        spec: &JobSpec,
    ) -> Result<String, ControlError> {
        let job = self
            .queue_signed(host_id, spec, None, crate::enroll::ADMIN)
            .await?;
        self.wakeups.wake(host_id);
        Ok(job.id)
    }

    /// Validates and queues a job; an idle agent of that host is woken at once.
    pub async fn create_job(&self, request: CreateJobRequest) -> Result<JobView, ControlError> {
        let host_key = request.host.clone();
        if host_key.is_empty() || host_key.len() > 253 || host_key.chars().any(char::is_control) {
            return Err(ValidationError::new("host", "must be a host id or host name").into());
        }
        let spec = request.into_spec(hash_password)?;
        let host = self.find_host(&host_key).await?;
        let job = self
            .queue_signed(&host.id, &spec, None, crate::enroll::ADMIN)
            .await?;
        tracing::info!(job_id = %job.id, host_id = %job.host_id, kind = %spec.kind(), "job queued");
        self.wakeups.wake(&host.id);
        Ok(job_view(job))
    }

    /// A page of jobs, newest first.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: Page,
    ) -> Result<Vec<JobView>, ControlError> {
        Ok(self
            .store
            .list_jobs(filter, page)
            .await?
            .into_iter()
            .map(job_view)
            .collect())
    }

    /// One job with its history.
    pub async fn get_job(&self, id: &str) -> Result<JobView, ControlError> {
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| ControlError::NotFound {
                what: "job",
                key: id.to_owned(),
            })?;
        let history = self.store.job_history(id).await?;
        Ok(JobView {
            history,
            ..job_view(job)
        })
    }

    /// Long-poll: the host's next job, waiting up to `wait` for one to be queued. `None` when the
    /// wait ends with nothing to do.
    pub async fn next_job(
        &self,
        host: &HostRecord,
        wait: StdDuration,
    ) -> Result<Option<AgentJob>, ControlError> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.wakeups.for_host(&host.id);
        self.store.touch_host(&host.id, Utc::now()).await?;
        loop {
            if !self.store.host_is_active(&host.id).await? {
                return Err(ControlError::Unauthenticated(
                    "this host was removed; re-enroll it with `latch-agent enroll` if it should be managed again",
                ));
            }
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
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                self.store.touch_host(&host.id, Utc::now()).await?;
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
    /// agent revokes on its own timer too; both are idempotent). Run periodically.
    pub async fn revoke_expired_grants(&self) -> Result<(), ControlError> {
        for grant in self.store.due_grants(Utc::now(), 100).await? {
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
            let id = self
                .queue_signed(&grant.host_id, &spec, Some(&grant.id), "control_plane")
                .await?
                .id;
            tracing::info!(grant = %grant.id, job_id = %id, host_id = %grant.host_id, "grant expired: revocation queued");
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
