//! The agent's main loop: long-poll for a job, journal it, hand it to the worker (one at a time,
//! in order), report the outcome until the control plane acknowledges it; back off with jitter
//! while the control plane is away. A refused credential ends the loop: the caller switches to
//! revoke-only mode (local expiry goes on, polling stops).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use latch_common::api::{AgentJob, MAX_POLL_WAIT_SECS, ReportRequest};
use latch_common::job::{JobError, JobErrorCode, JobOutcome};
use thiserror::Error;
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::client::{AgentClient, ClientError, Delivered};
use crate::crash_hook;
use crate::journal::{self, Entry, Journal, Stage};
use crate::worker::Worker;
use latch_common::signing;

/// Why the loop stopped.
#[derive(Debug, Error)]
pub enum PollError {
    /// The control plane refused the credential.
    #[error(
        "{0}; the agent stops polling and only revokes expiring grants until the host is enrolled again (`latch-agent enroll --replace …`)"
    )]
    Unauthorized(String),
    /// The worker thread failed to run.
    #[error("the job worker stopped unexpectedly: {0}")]
    Worker(String),
}

/// What the loop works with.
pub struct Agent {
    /// The control plane.
    pub client: AgentClient,
    /// Applies jobs.
    pub worker: Arc<Worker>,
    /// Job journal.
    pub journal: Journal,
    /// Signalled after every job (grants may have changed).
    pub grants_changed: Arc<Notify>,
    /// This host's id.
    pub host_id: String,
    /// Tell the control plane, with the next poll, the highest job sequence applied here (at
    /// start, and after a job was refused as replayed or stale: a database restored from an older
    /// backup hands out sequences the agent has seen; the control plane then raises them).
    pub catch_up: std::sync::atomic::AtomicBool,
    /// Records the last successful poll for `latch-agent status`.
    pub recorder: crate::status::PollRecorder,
    /// The state directory (to clear a revoke-only marker once polling works again).
    pub state: crate::state::StateDir,
    /// The watchdog's view of a job being applied.
    pub heartbeat: Arc<crate::watchdog::Heartbeat>,
}

impl Agent {
    /// Runs until the credential is refused or the worker dies.
    pub async fn run(&self) -> Result<(), PollError> {
        self.resend_journaled_outcomes().await?;
        let mut backoff = Backoff::default();
        let mut was_offline = false;
        loop {
            // Revocations done locally reach the control plane before anything else does, so a
            // grant that ended during an outage is recorded as revoked by the agent's expiry.
            let polled = match crate::expiry::flush_outbox(&self.client, &self.worker).await {
                Ok(()) => {
                    let applied = self
                        .catch_up
                        .swap(false, std::sync::atomic::Ordering::Relaxed)
                        .then(|| self.worker.applied_high_water());
                    self.client
                        .poll(Duration::from_secs(MAX_POLL_WAIT_SECS), applied)
                        .await
                }
                Err(error) => Err(error),
            };
            match polled {
                Ok(delivered) => {
                    self.polled();
                    if was_offline {
                        tracing::info!("control plane reachable again");
                        was_offline = false;
                    }
                    backoff.reset();
                    // Each report can carry the next job: those are handled before polling again.
                    let mut queue = std::collections::VecDeque::from(delivered);
                    while let Some(item) = queue.pop_front() {
                        queue.extend(self.handle(item).await?);
                    }
                }
                Err(ClientError::Unauthorized(message)) => {
                    return Err(PollError::Unauthorized(message));
                }
                Err(error) => {
                    self.recorder.failed(&error.to_string());
                    let delay = backoff.delay();
                    if was_offline {
                        tracing::debug!(%error, ?delay, "still cannot poll the control plane");
                    } else {
                        if matches!(error, ClientError::Protocol(_)) {
                            tracing::error!(%error, "the agent and the control plane cannot work together; retrying until one of them is upgraded");
                        } else {
                            tracing::warn!(%error, "cannot poll the control plane; retrying with backoff");
                        }
                        was_offline = true;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A poll (or a report) went through: recorded for `status`; a revoke-only marker left by
    /// an earlier run (the agent tried the credential again at start) is cleared.
    fn polled(&self) {
        if self.recorder.succeeded() && matches!(self.state.revoke_only(), Ok(Some(_))) {
            match self.state.clear_revoke_only() {
                Ok(()) => tracing::warn!(
                    "the control plane accepts this host again; left revoke-only mode"
                ),
                Err(error) => tracing::error!(%error, "cannot clear the revoke-only marker"),
            }
        }
    }

    /// Outcomes journaled before a crash are sent again (the control plane takes each once).
    async fn resend_journaled_outcomes(&self) -> Result<(), PollError> {
        if let Err(error) = self.journal.prune(chrono::Duration::days(7)) {
            tracing::warn!(%error, "cannot prune the job journal");
        }
        let entries = match self.journal.unacknowledged() {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, "cannot read the job journal");
                return Ok(());
            }
        };
        for entry in entries {
            if let Some(outcome) = entry.outcome {
                tracing::info!(job_id = %entry.job_id, "resending a journaled outcome");
                self.report(
                    &entry.job_id,
                    ReportRequest {
                        lease: entry.lease,
                        outcome,
                    },
                    false,
                )
                .await?;
            }
        }
        Ok(())
    }

    fn journal(
        &self,
        job: &AgentJob,
        stage: Stage,
        outcome: Option<JobOutcome>,
    ) -> Result<(), JobError> {
        let entry = Entry {
            job_id: job.id.clone(),
            lease: job.lease.clone(),
            stage,
            outcome,
            updated_at: Utc::now(),
        };
        self.journal.record(&entry).map_err(|e| {
            JobError::new(
                JobErrorCode::AgentStateError,
                format!("cannot write the job journal: {e}"),
            )
        })
    }

    /// Applies (or refuses) one delivered job and reports it; returns the next job(s) the
    /// control plane sent with its answer to the report.
    async fn handle(&self, item: Delivered) -> Result<Vec<Delivered>, PollError> {
        match item {
            Delivered::Job(job) if journal::is_safe_id(&job.id) => {
                let outcome = self.apply(&job).await?;
                // The expiry timer learns of a new grant now, not once the report is through:
                // a link that drops right after applying must not delay the grant's end.
                self.grants_changed.notify_one();
                crash_hook::pause("applied").await;
                self.report(
                    &job.id,
                    ReportRequest {
                        lease: job.lease.clone(),
                        outcome,
                    },
                    true,
                )
                .await
            }
            Delivered::Job(job) => {
                self.refuse(
                    Some(job.id),
                    Some(job.lease),
                    "the job id is not a plain identifier".into(),
                )
                .await
            }
            Delivered::Malformed { id, lease, reason } => self.refuse(id, lease, reason).await,
        }
    }

    /// Verifies the job's signature, then journals and applies it, or returns the outcome
    /// journaled by an earlier delivery.
    async fn apply(&self, job: &AgentJob) -> Result<JobOutcome, PollError> {
        let signed = match self.verify(job) {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(job_id = %job.id, host_id = %self.host_id, outcome = "failed", code = %error.code, error = %error.message, "refused a job before acting");
                return Ok(JobOutcome::Failed { error });
            }
        };
        let earlier = self.journal.get(&job.id).ok().flatten();
        if let Some(Entry {
            stage: Stage::Done,
            outcome: Some(outcome),
            ..
        }) = earlier
        {
            tracing::info!(job_id = %job.id, attempt = job.attempt, "job already applied before a restart; reporting the journaled outcome");
            return Ok(outcome);
        }
        // A job an earlier delivery started applying (then the agent died) is finished now,
        // whatever its deadline: its changes may be half made.
        let started = earlier.is_some_and(|entry| entry.stage == Stage::Applying);
        let (kind, user) = (
            signed.spec.kind().to_string(),
            signed.spec.user().to_owned(),
        );
        tracing::info!(job_id = %job.id, host_id = %self.host_id, kind = %kind, user = %user, seq = signed.seq, attempt = job.attempt, started, "job received");
        if !started {
            if let Err(error) = self.journal(job, Stage::Received, None) {
                return Ok(JobOutcome::Failed { error });
            }
            crash_hook::pause("received").await;
        }
        if let Err(error) = self.journal(job, Stage::Applying, None) {
            return Ok(JobOutcome::Failed { error });
        }
        crash_hook::pause("applying").await;
        let outcome = {
            let worker = self.worker.clone();
            self.heartbeat.job_started();
            let applied =
                tokio::task::spawn_blocking(move || worker.execute(&signed, started)).await;
            self.heartbeat.job_done();
            applied.map_err(|e| PollError::Worker(e.to_string()))?
        };
        if let JobOutcome::Failed { error } = &outcome
            && matches!(
                error.code,
                JobErrorCode::ReplayedJob | JobErrorCode::StaleJob
            )
        {
            self.catch_up
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match &outcome {
            JobOutcome::Confirmed { notes } => {
                tracing::info!(job_id = %job.id, host_id = %self.host_id, kind = %kind, user = %user, outcome = "confirmed", notes = %notes.join("; "), "job confirmed")
            }
            JobOutcome::Failed { error } => {
                tracing::warn!(job_id = %job.id, host_id = %self.host_id, kind = %kind, user = %user, outcome = "failed", code = %error.code, error = %error.message, "job failed")
            }
        }
        if let Err(error) = self.journal(job, Stage::Done, Some(outcome.clone())) {
            tracing::error!(job_id = %job.id, code = %error.code, error = %error.message, "cannot journal the outcome");
        }
        Ok(outcome)
    }

    /// Verifies with the pinned key; during a key rotation, a job that verifies with the next
    /// key promotes it (the control plane has switched).
    fn verify(&self, job: &AgentJob) -> Result<signing::SignedJob, JobError> {
        let (current, next) = self.worker.signing_keys()?;
        match signing::verify(job, &current, &self.host_id) {
            Err(error) if error.code == JobErrorCode::BadSignature => {
                let Some(next) = next else { return Err(error) };
                let signed = signing::verify(job, &next, &self.host_id).map_err(|_| error)?;
                tokio::task::block_in_place(|| self.worker.promote_next_signing_key())?;
                Ok(signed)
            }
            other => other,
        }
    }

    /// Reports a job that cannot be decoded or named safely as `invalid_job`.
    async fn refuse(
        &self,
        id: Option<String>,
        lease: Option<String>,
        reason: String,
    ) -> Result<Vec<Delivered>, PollError> {
        tracing::warn!(job_id = ?id, %reason, "refused a malformed job");
        match (id, lease) {
            (Some(id), Some(lease)) if id.len() <= 64 && lease.len() <= 64 && !id.contains('/') => {
                let error = JobError::new(
                    JobErrorCode::InvalidJob,
                    format!("the agent refused this job: {reason}"),
                );
                self.report(
                    &id,
                    ReportRequest {
                        lease,
                        outcome: JobOutcome::Failed { error },
                    },
                    true,
                )
                .await
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Sends the outcome until the control plane takes it (or says it is no longer wanted).
    /// Pending revocation reports always go first: a grant the agent revoked on its own is then
    /// recorded as such before the outcome of a control-plane revocation job for the same grant.
    ///
    /// With `want_next`, asks for the next job with the report — unless the next poll must tell the control plane
    /// the applied sequence (catch-up after a stale or replayed job); returns what came back.
    async fn report(
        &self,
        job_id: &str,
        report: ReportRequest,
        want_next: bool,
    ) -> Result<Vec<Delivered>, PollError> {
        let mut backoff = Backoff::default();
        loop {
            let next = want_next && !self.catch_up.load(std::sync::atomic::Ordering::Relaxed);
            let sent = match crate::expiry::flush_outbox(&self.client, &self.worker).await {
                Ok(()) => self.client.report(job_id, &report, next).await,
                Err(error) => Err(error),
            };
            match sent {
                Ok(delivered) => {
                    self.polled();
                    if let Err(error) = self.journal.remove(job_id) {
                        tracing::warn!(job_id, %error, "cannot remove the job's journal entry");
                    }
                    return Ok(delivered);
                }
                Err(ClientError::Unauthorized(message)) => {
                    return Err(PollError::Unauthorized(message));
                }
                Err(error) if error.is_transient() => {
                    let delay = backoff.delay();
                    tracing::warn!(job_id, %error, ?delay, "cannot report the outcome yet; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    // 409: delivered again or already final; 404: gone. The journal entry stays, so
                    // a later delivery of this job gets the same outcome.
                    tracing::warn!(job_id, %error, "the control plane did not take the outcome");
                    return Ok(Vec::new());
                }
            }
        }
    }
}
