//! The agent's main loop: long-poll for a job, hand it to the worker (one at a time, in order),
//! report the outcome until the control plane acknowledges it; back off with jitter while the
//! control plane is away. A refused credential stops the agent: it must be re-enrolled, and
//! spinning would only fill logs.

use std::sync::Arc;
use std::time::Duration;

use latch_common::api::{AgentJob, MAX_POLL_WAIT_SECS, ReportRequest};
use latch_common::job::{JobError, JobErrorCode, JobOutcome};
use thiserror::Error;

use crate::client::{AgentClient, ClientError, Delivered};
use crate::worker::Worker;

/// Why the loop stopped.
#[derive(Debug, Error)]
pub enum PollError {
    /// The control plane refused the credential.
    #[error(
        "{0}; this host must be re-enrolled (`latch-agent enroll`) — the agent stops instead of retrying"
    )]
    Unauthorized(String),
    /// The worker thread failed to run.
    #[error("the job worker stopped unexpectedly: {0}")]
    Worker(String),
}

/// Exponential backoff with full jitter, from 500 ms up to 30 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    /// The delay to wait now: uniformly random in [next/2, next]; doubles `next`.
    pub fn delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Runs until the credential is refused or the worker dies.
pub async fn run(client: AgentClient, worker: Arc<Worker>) -> Result<(), PollError> {
    let mut backoff = Backoff::default();
    let mut was_offline = false;
    loop {
        match client.poll(Duration::from_secs(MAX_POLL_WAIT_SECS)).await {
            Ok(delivered) => {
                if was_offline {
                    tracing::info!("control plane reachable again");
                    was_offline = false;
                }
                backoff.reset();
                for item in delivered {
                    handle(&client, &worker, item).await?;
                }
            }
            Err(ClientError::Unauthorized(message)) => {
                return Err(PollError::Unauthorized(message));
            }
            Err(error) => {
                let delay = backoff.delay();
                if !was_offline {
                    tracing::warn!(%error, "cannot poll the control plane; retrying with backoff");
                    was_offline = true;
                } else {
                    tracing::debug!(%error, ?delay, "still cannot poll the control plane");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn handle(
    client: &AgentClient,
    worker: &Arc<Worker>,
    item: Delivered,
) -> Result<(), PollError> {
    match item {
        Delivered::Job(job) => {
            tracing::info!(job_id = %job.id, kind = %job.spec.kind(), user = %job.spec.user(), attempt = job.attempt, "job received");
            let outcome = {
                let worker = worker.clone();
                let job: AgentJob = job.clone();
                tokio::task::spawn_blocking(move || worker.execute(&job))
                    .await
                    .map_err(|e| PollError::Worker(e.to_string()))?
            };
            match &outcome {
                JobOutcome::Confirmed => tracing::info!(job_id = %job.id, "job confirmed"),
                JobOutcome::Failed { error } => {
                    tracing::warn!(job_id = %job.id, code = %error.code, message = %error.message, "job failed")
                }
            }
            report(
                client,
                &job.id,
                ReportRequest {
                    lease: job.lease.clone(),
                    outcome,
                },
            )
            .await
        }
        Delivered::Malformed { id, lease, reason } => {
            tracing::warn!(job_id = ?id, %reason, "refused a job that does not decode");
            match (id, lease) {
                (Some(id), Some(lease)) if id.len() <= 64 && lease.len() <= 64 => {
                    let error = JobError::new(
                        JobErrorCode::InvalidJob,
                        format!("the agent cannot decode this job: {reason}"),
                    );
                    report(
                        client,
                        &id,
                        ReportRequest {
                            lease,
                            outcome: JobOutcome::Failed { error },
                        },
                    )
                    .await
                }
                _ => Ok(()),
            }
        }
    }
}

/// Sends the outcome until the control plane takes it (or says it is no longer wanted).
async fn report(
    client: &AgentClient,
    job_id: &str,
    report: ReportRequest,
) -> Result<(), PollError> {
    let mut backoff = Backoff::default();
    loop {
        match client.report(job_id, &report).await {
            Ok(()) => return Ok(()),
            Err(ClientError::Unauthorized(message)) => {
                return Err(PollError::Unauthorized(message));
            }
            Err(error) if error.is_transient() => {
                let delay = backoff.delay();
                tracing::warn!(job_id, %error, ?delay, "cannot report the outcome yet; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => {
                // 409: the job was delivered again or already has an outcome; 404: gone.
                tracing::warn!(job_id, %error, "the control plane did not take the outcome; dropping it");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::default();
        let first = backoff.delay();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        for _ in 0..20 {
            let delay = backoff.delay();
            assert!(delay <= Duration::from_secs(30));
        }
        assert!(backoff.delay() >= Duration::from_secs(15));
        backoff.reset();
        assert!(backoff.delay() <= Duration::from_millis(500));
    }
}
