//! A simulated agent: it enrolls like `latch-agent enroll`, then long-polls
//! `/v1/agent/jobs?wait=…` on its own keep-alive connection, verifies every job's Ed25519
//! signature with the key it got at enrollment (`latch_common::signing::verify`), its deadline
//! and its sequence (replays), "applies" it by waiting the configured fake work time — no
//! account is touched — and reports `confirmed`, or `failed` with the refusal's code.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use hyper::{Method, StatusCode};
use latch_common::api::{
    AgentJob, EnrollRequest, EnrollResponse, HostFacts, ListResponse, ReportRequest,
};
use latch_common::job::{JobError, JobErrorCode, JobOutcome, JobSpec};
use latch_common::signing::{self, SignedJob};
use thiserror::Error;

use crate::http::{Connection, HttpError};
use crate::run::Shared;
use crate::stats::JobKindSim;

/// Longest a non-polling request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Reports are retried (the real agent retries until acknowledged) this many times.
const REPORT_ATTEMPTS: u32 = 5;

/// Why an agent could not enroll.
#[derive(Debug, Error)]
pub enum EnrollError {
    /// No answer.
    #[error("enrollment request failed: {0}")]
    Http(#[from] HttpError),
    /// The control plane refused.
    #[error("the control plane refused enrollment ({code}): {body}")]
    Refused {
        /// API error code.
        code: String,
        /// The answer.
        body: String,
    },
    /// The answer does not decode.
    #[error("the enrollment answer does not decode: {0}")]
    Decode(String),
}

impl EnrollError {
    /// A short name for the error table.
    pub fn kind(&self) -> String {
        match self {
            EnrollError::Http(e) => format!("enroll:{}", e.kind()),
            EnrollError::Refused { code, .. } => format!("enroll:{code}"),
            EnrollError::Decode(_) => "enroll:decode".to_owned(),
        }
    }
}

/// What an agent keeps after enrolling.
pub struct Identity {
    /// Index in the fleet (0-based).
    pub index: usize,
    /// Host id given by the control plane.
    pub host_id: String,
    credential: String,
    signing_key: Vec<u8>,
}

/// Facts of simulated host `index` of run `tag`: a unique host name and machine-id.
pub fn facts(tag: &str, index: usize) -> HostFacts {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("latch-fleet-sim/{tag}/{index}").as_bytes(),
    );
    HostFacts {
        hostname: format!("sim-{tag}-{index:05}"),
        os: "Linux simulated (latch-fleet-sim)".to_owned(),
        kernel: "sim".to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: 1,
        memory_bytes: 1 << 30,
        machine_id: hex::encode(&digest.as_ref()[..16]),
    }
}

/// Enrolls simulated host `index` with `token` over `conn` (which it then keeps for polling).
pub async fn enroll(
    conn: &mut Connection,
    token: &str,
    tag: &str,
    index: usize,
) -> Result<Identity, EnrollError> {
    let request = EnrollRequest {
        token: token.to_owned(),
        facts: facts(tag, index),
    };
    let body = serde_json::to_vec(&request).map_err(|e| EnrollError::Decode(e.to_string()))?;
    let answer = conn
        .request(
            Method::POST,
            "/v1/enroll",
            None,
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await?;
    if answer.status != StatusCode::CREATED {
        return Err(EnrollError::Refused {
            code: answer.error_code(),
            body: String::from_utf8_lossy(&answer.body).into_owned(),
        });
    }
    let enrolled: EnrollResponse =
        serde_json::from_slice(&answer.body).map_err(|e| EnrollError::Decode(e.to_string()))?;
    let signing_key = signing::decode_public_key(&enrolled.signing_key).ok_or_else(|| {
        EnrollError::Decode("the signing key is not a base64 Ed25519 public key".to_owned())
    })?;
    Ok(Identity {
        index,
        host_id: enrolled.host_id,
        credential: enrolled.credential,
        signing_key,
    })
}

/// The job this simulator queued: its kind and number (from the account name `sim<number>`).
pub fn job_key(spec: &JobSpec) -> Option<(JobKindSim, u64)> {
    let (kind, user) = match spec {
        JobSpec::CreateAccount { user, .. } => (JobKindSim::CreateAccount, user),
        JobSpec::DeleteAccount { user } => (JobKindSim::DeleteAccount, user),
        _ => return None,
    };
    let number = user.strip_prefix("sim")?.parse().ok()?;
    Some((kind, number))
}

/// The account name of job number `number`.
pub fn user_name(number: u64) -> String {
    format!("sim{number}")
}

/// What the agent remembers between jobs, to refuse replays as the real agent does.
#[derive(Default)]
pub struct Applied {
    last_job: Option<String>,
    last_seq: i64,
}

/// What to do with a delivered job.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Verified: apply it.
    Apply(Box<SignedJob>),
    /// The job last applied, delivered again (its report was lost): report it again.
    Again,
    /// Refused: report `failed` with this error.
    Refuse(JobError),
}

impl Applied {
    /// Checks a delivered job the way `latch-agent` does before touching anything: signature by
    /// the pinned key, for this host and this job id; not a replay of an older job; not past its
    /// deadline; parameters valid.
    pub fn check(&self, job: &AgentJob, key: &[u8], host_id: &str) -> Verdict {
        let signed = match signing::verify(job, key, host_id) {
            Ok(signed) => signed,
            Err(error) => return Verdict::Refuse(error),
        };
        if self.last_job.as_deref() == Some(signed.job_id.as_str()) {
            return Verdict::Again;
        }
        if signed.seq <= self.last_seq {
            return Verdict::Refuse(JobError::new(
                JobErrorCode::ReplayedJob,
                format!(
                    "job sequence {} is not after the last applied ({})",
                    signed.seq, self.last_seq
                ),
            ));
        }
        if let Err(error) = signing::check_deadline(&signed, Utc::now()) {
            return Verdict::Refuse(error);
        }
        if let Err(error) = signed.spec.validate() {
            return Verdict::Refuse(JobError::new(JobErrorCode::InvalidJob, error.to_string()));
        }
        Verdict::Apply(Box::new(signed))
    }

    /// Records that `signed` was applied.
    pub fn applied(&mut self, signed: &SignedJob) {
        self.last_job = Some(signed.job_id.clone());
        self.last_seq = signed.seq;
    }
}

/// Polls, checks, applies (waits) and reports until the task is aborted or the credential is
/// refused.
pub async fn run(identity: Identity, mut conn: Connection, shared: Arc<Shared>) {
    let stats = &shared.stats;
    let path = format!("/v1/agent/jobs?wait={}", shared.poll_wait.as_secs());
    let poll_timeout = shared.poll_wait + Duration::from_secs(15);
    let mut applied = Applied::default();
    let mut connects = conn.connects;
    loop {
        stats.polling.fetch_add(1, Ordering::Relaxed);
        let answer = conn
            .request(
                Method::GET,
                &path,
                Some(&identity.credential),
                None,
                poll_timeout,
            )
            .await;
        stats.polling.fetch_sub(1, Ordering::Relaxed);
        if conn.connects > connects {
            stats
                .reconnects
                .fetch_add(conn.connects - connects, Ordering::Relaxed);
            connects = conn.connects;
        }
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                stats.error(format!("poll:{}", error.kind()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match answer.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                // The host was removed (or the database restored): the real agent switches to
                // revoke-only mode and stops polling.
                stats.error("poll:authentication_error");
                return;
            }
            _ => {
                stats.error(format!("poll:{}", answer.error_code()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        stats.polls.fetch_add(1, Ordering::Relaxed);
        let jobs: ListResponse<AgentJob> = match serde_json::from_slice(&answer.body) {
            Ok(jobs) => jobs,
            Err(_) => {
                stats.error("poll:decode");
                continue;
            }
        };
        for job in jobs.list {
            handle(&identity, &mut conn, &shared, &mut applied, job).await;
        }
    }
}

async fn handle(
    identity: &Identity,
    conn: &mut Connection,
    shared: &Shared,
    applied: &mut Applied,
    job: AgentJob,
) {
    let stats = &shared.stats;
    let (outcome, key) = match applied.check(&job, &identity.signing_key, &identity.host_id) {
        Verdict::Apply(signed) => {
            if !shared.work_time.is_zero() {
                tokio::time::sleep(shared.work_time).await;
            }
            applied.applied(&signed);
            (JobOutcome::confirmed(), job_key(&signed.spec))
        }
        Verdict::Again => (JobOutcome::confirmed(), None),
        Verdict::Refuse(error) => {
            stats.error(format!("refused:{}", error.code.as_str()));
            // Only to close the run's books on this job (nothing is acted on): its number from
            // the unverified payload.
            let key = serde_json::from_str::<SignedJob>(&job.payload)
                .ok()
                .and_then(|signed| job_key(&signed.spec));
            (JobOutcome::Failed { error }, key)
        }
    };
    let confirmed = matches!(outcome, JobOutcome::Confirmed { .. });
    let report = ReportRequest {
        lease: job.lease.clone(),
        outcome,
    };
    let Ok(body) = serde_json::to_vec(&report) else {
        stats.error("report:encode");
        return;
    };
    let path = format!("/v1/agent/jobs/{}/report", job.id);
    for attempt in 1..=REPORT_ATTEMPTS {
        let answer = conn
            .request(
                Method::POST,
                &path,
                Some(&identity.credential),
                Some(body.clone()),
                REQUEST_TIMEOUT,
            )
            .await;
        match answer {
            Ok(answer) if answer.status == StatusCode::NO_CONTENT => {
                let done = Instant::now();
                if !confirmed {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                if let Some((kind, number)) = key {
                    shared.finished(kind, number, identity.index, done, confirmed);
                }
                return;
            }
            Ok(answer) => {
                stats.error(format!("report:{}", answer.error_code()));
                return;
            }
            Err(error) => {
                stats.error(format!("report:{}", error.kind()));
                if attempt < REPORT_ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn signed(seq: i64, id: &str) -> SignedJob {
        SignedJob {
            v: signing::PAYLOAD_VERSION,
            host_id: "h1".into(),
            job_id: id.into(),
            seq,
            not_after: None,
            spec: JobSpec::DeleteAccount { user: user_name(7) },
        }
    }

    fn deliver(key: &Ed25519KeyPair, payload: &SignedJob) -> AgentJob {
        let payload_text = serde_json::to_string(payload).unwrap();
        AgentJob {
            id: payload.job_id.clone(),
            lease: "lease".into(),
            attempt: 1,
            signature: base64::engine::general_purpose::STANDARD
                .encode(key.sign(payload_text.as_bytes()).as_ref()),
            payload: payload_text,
        }
    }

    fn refused(verdict: Verdict) -> JobErrorCode {
        match verdict {
            Verdict::Refuse(error) => error.code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn applies_a_signed_job_and_refuses_forgeries_and_replays() {
        let key = key();
        let public = key.public_key().as_ref().to_vec();
        let mut applied = Applied::default();
        let first = signed(1, "j1");
        let Verdict::Apply(ok) = applied.check(&deliver(&key, &first), &public, "h1") else {
            panic!("a job signed with the pinned key must be applied");
        };
        assert_eq!(job_key(&ok.spec), Some((JobKindSim::DeleteAccount, 7)));
        applied.applied(&ok);
        // Delivered again (lost report): confirmed again, not applied twice.
        assert_eq!(
            applied.check(&deliver(&key, &first), &public, "h1"),
            Verdict::Again
        );
        // Signed by another key.
        assert_eq!(
            refused(applied.check(&deliver(&self::key(), &signed(2, "j2")), &public, "h1")),
            JobErrorCode::BadSignature
        );
        // Tampered with after signing.
        let mut tampered = deliver(&key, &signed(2, "j2"));
        tampered.payload = tampered.payload.replace("sim7", "sim8");
        assert_eq!(
            refused(applied.check(&tampered, &public, "h1")),
            JobErrorCode::BadSignature
        );
        // For another host.
        assert_eq!(
            refused(applied.check(&deliver(&key, &signed(2, "j2")), &public, "h2")),
            JobErrorCode::WrongHost
        );
        // An older sequence number under a new id: a replay.
        assert_eq!(
            refused(applied.check(&deliver(&key, &signed(1, "j3")), &public, "h1")),
            JobErrorCode::ReplayedJob
        );
        // Past its deadline.
        let late = SignedJob {
            not_after: Some(Utc::now() - chrono::Duration::seconds(5)),
            ..signed(5, "j5")
        };
        assert_eq!(
            refused(applied.check(&deliver(&key, &late), &public, "h1")),
            JobErrorCode::JobExpired
        );
    }

    #[test]
    fn facts_are_valid_and_unique() {
        let a = facts("ab12", 1);
        let b = facts("ab12", 2);
        a.validate().unwrap();
        assert_ne!(a.hostname, b.hostname);
        assert_ne!(a.machine_id, b.machine_id);
        assert_eq!(
            job_key(&JobSpec::DeleteAccount {
                user: "alice".into()
            }),
            None
        );
    }
}
