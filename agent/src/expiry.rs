//! Local expiry: grants end on the agent's own clock, also when the control plane is
//! unreachable and across restarts (a grant that ended while the agent was down is revoked as
//! soon as it starts). What was revoked goes to the outbox, which is sent to the control plane
//! whenever it is reachable. The agent never extends a grant on its own.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::client::{AgentClient, ClientError};
use crate::watchdog::Heartbeat;
use crate::worker::Worker;

/// Longest sleep between checks, so a changed system clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Revokes grants at their end, forever. `changed` is signalled when a job may have added or
/// removed a grant; `outbox_ready` is signalled after a revocation.
/// A revocation that could not be completed is retried after 1 s, then less and less often
/// (up to every 30 s) until it is; a new or changed grant wakes the timer at once.
pub async fn run(
    worker: Arc<Worker>,
    changed: Arc<Notify>,
    outbox_ready: Arc<Notify>,
    heartbeat: Arc<Heartbeat>,
) {
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        heartbeat.beat();
        let next = match worker.next_expiry() {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "cannot read the grants; retrying");
                tokio::time::sleep(retry.delay()).await;
                continue;
            }
        };
        let wait = match next {
            Some(at) => (at - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(MAX_SLEEP),
            None => MAX_SLEEP,
        };
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = changed.notified() => {}
            }
            continue;
        }
        let revoking = worker.clone();
        heartbeat.revoking();
        let progress_beat = heartbeat.clone();
        let revoked = tokio::task::spawn_blocking(move || {
            revoking.revoke_expired(Utc::now(), &|| progress_beat.revoking())
        })
        .await;
        heartbeat.revoked();
        let progress = match revoked {
            Ok(Ok(count)) if count > 0 => {
                outbox_ready.notify_one();
                true
            }
            Ok(Ok(_)) => false,
            Ok(Err(error)) => {
                tracing::error!(code = %error.code, error = %error.message, "revoking expired grants failed; retrying");
                false
            }
            Err(error) => {
                tracing::error!(%error, "the revocation task failed; retrying");
                false
            }
        };
        if progress {
            retry.reset();
        } else {
            // Something that ended could not be revoked completely yet: try again, less often.
            tokio::select! {
                () = tokio::time::sleep(retry.delay()) => {}
                () = changed.notified() => {}
            }
        }
    }
}

/// Sends the outbox to the control plane; keeps what could not be sent.
pub async fn flush_outbox(client: &AgentClient, worker: &Worker) -> Result<(), ClientError> {
    let reports = match worker.outbox() {
        Ok(reports) => reports,
        Err(error) => {
            tracing::error!(%error, "cannot read the revocation outbox");
            return Ok(());
        }
    };
    for report in reports {
        match client.report_revocation(&report).await {
            Ok(()) => {
                tracing::info!(job_id = %report.job_id, "control plane acknowledged the revocation")
            }
            Err(error @ (ClientError::Transport(_) | ClientError::Unauthorized(_))) => {
                return Err(error);
            }
            Err(error) if error.is_transient() => return Err(error),
            // Refused for good (e.g. the grant was removed): keeping it would resend forever.
            Err(error) => {
                tracing::warn!(job_id = %report.job_id, %error, "control plane refused the revocation report; dropping it")
            }
        }
        // The worker's lock may be held by a revocation for seconds: never on the async thread.
        if let Err(error) = tokio::task::block_in_place(|| worker.ack_outbox(&report)) {
            tracing::error!(%error, "cannot update the revocation outbox");
        }
    }
    Ok(())
}

/// Flushes the outbox whenever a revocation happened, and every few seconds while something is
/// still waiting to be sent.
pub async fn flush_loop(client: AgentClient, worker: Arc<Worker>, outbox_ready: Arc<Notify>) {
    loop {
        if let Err(error) = flush_outbox(&client, &worker).await {
            tracing::debug!(%error, "cannot send revocations yet");
        }
        tokio::select! {
            () = outbox_ready.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::client::Transport;
    use crate::client::test_server::answer_with;
    use crate::state::{Accounts, StateDir};
    use latch_common::api::RevocationReport;

    /// During a protocol mismatch (the control plane answers 426), the revocation reports stay
    /// in the outbox until one side is upgraded: none is dropped.
    #[tokio::test]
    async fn a_refused_protocol_keeps_the_revocation_reports() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let report = RevocationReport {
            job_id: "job-1".into(),
            revoked_at: Utc::now(),
        };
        state
            .save_accounts(&Accounts {
                outbox: vec![report.clone()],
                ..Accounts::default()
            })
            .unwrap();
        let worker = Worker::new(crate::config::Config::defaults(), state, "host-1".into());
        let (url, _) = answer_with(
            426,
            "latch-protocol: 9\r\n",
            r#"{"code": "agent_protocol_unsupported", "message": "upgrade latch-agent"}"#,
        )
        .await;
        let client = AgentClient::new(&url, &Transport::InsecureHttp, Some("c".into())).unwrap();
        let sent = flush_outbox(&client, &worker).await;
        assert!(matches!(sent, Err(ClientError::Protocol(_))), "{sent:?}");
        assert_eq!(worker.outbox().unwrap(), vec![report]);
    }
}
