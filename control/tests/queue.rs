#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The job state machine and enrollment rules, exercised through the library API on an
//! in-memory SQLite store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as ChronoDuration;
use latch_common::api::{
    CreateEnrollTokenRequest, CreateJobRequest, EnrollRequest, HostFacts, ReportRequest,
};
use latch_common::job::{JobError, JobErrorCode, JobKind, JobOutcome, JobStatus};
use latch_control::store::{HostRecord, SqliteStore, TokenRefusal};
use latch_control::{Control, ControlConfig, ControlError};

fn facts(hostname: &str) -> HostFacts {
    HostFacts {
        hostname: hostname.into(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1.0".into(),
        arch: "x86_64".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        machine_id: "0123456789abcdef0123456789abcdef".into(),
    }
}

async fn control(config: ControlConfig) -> Arc<Control> {
    Arc::new(Control::new(
        Arc::new(SqliteStore::open_in_memory().await.unwrap()),
        config,
        latch_control::signing::JobSigner::generate().unwrap(),
    ))
}

async fn enrolled_host(control: &Control, hostname: &str) -> HostRecord {
    let token = control
        .create_enroll_token(&CreateEnrollTokenRequest {
            ttl_seconds: Some(60),
            uses: Some(1),
        })
        .await
        .unwrap();
    let enrolled = control
        .enroll(&EnrollRequest {
            token: token.token,
            facts: facts(hostname),
        })
        .await
        .unwrap();
    control
        .authenticate_host(&enrolled.credential)
        .await
        .unwrap()
}

fn delete(host: &str, user: &str) -> CreateJobRequest {
    CreateJobRequest {
        host: host.into(),
        kind: Some(JobKind::DeleteAccount),
        user: user.into(),
        ..CreateJobRequest::default()
    }
}

fn failed(code: JobErrorCode) -> JobOutcome {
    JobOutcome::Failed {
        error: JobError::new(code, "test"),
    }
}

#[tokio::test]
async fn tokens_are_single_use_and_expire() {
    let control = control(ControlConfig::default()).await;
    let token = control
        .create_enroll_token(&CreateEnrollTokenRequest {
            ttl_seconds: Some(1),
            uses: Some(1),
        })
        .await
        .unwrap();
    let request = EnrollRequest {
        token: token.token.clone(),
        facts: facts("db1"),
    };
    control.enroll(&request).await.unwrap();
    let again = control.enroll(&request).await.unwrap_err();
    assert!(
        matches!(again, ControlError::EnrollRefused(TokenRefusal::UsedUp)),
        "{again}"
    );

    let short = control
        .create_enroll_token(&CreateEnrollTokenRequest {
            ttl_seconds: Some(1),
            uses: Some(5),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = control
        .enroll(&EnrollRequest {
            token: short.token,
            facts: facts("db2"),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(expired, ControlError::EnrollRefused(TokenRefusal::Expired)),
        "{expired}"
    );
    let unknown = control
        .enroll(&EnrollRequest {
            token: "latch_enroll_guess".into(),
            facts: facts("db3"),
        })
        .await
        .unwrap_err();
    assert!(matches!(
        unknown,
        ControlError::EnrollRefused(TokenRefusal::Unknown)
    ));
    assert!(control.authenticate_host("latch_host_guess").await.is_err());
}

#[tokio::test]
async fn jobs_are_delivered_in_order_one_at_a_time() {
    let control = control(ControlConfig::default()).await;
    let host = enrolled_host(&control, "db1").await;
    let first = control.create_job(delete("db1", "alice")).await.unwrap();
    let second = control.create_job(delete(&host.id, "bob")).await.unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));

    let delivered = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivered.id, first.id);
    assert_eq!(delivered.attempt, 1);
    // While the first is leased, the second waits.
    assert!(
        control
            .next_job(&host, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );

    let report = ReportRequest {
        lease: delivered.lease.clone(),
        outcome: JobOutcome::confirmed(),
    };
    control.report(&host, &first.id, &report).await.unwrap();
    // A resent identical report is accepted and changes nothing.
    control.report(&host, &first.id, &report).await.unwrap();
    // A different outcome for a finished job is a conflict.
    let other = ReportRequest {
        lease: delivered.lease,
        outcome: failed(JobErrorCode::ToolFailed),
    };
    assert!(matches!(
        control.report(&host, &first.id, &other).await,
        Err(ControlError::Conflict(_))
    ));

    let next = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, second.id);
    let job = control.get_job(&first.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Confirmed);
    assert!(job.finished_at.is_some());
    let events: Vec<&str> = job.history.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["queued", "delivered", "confirmed"]);
}

#[tokio::test]
async fn an_expired_lease_is_delivered_again_and_the_old_lease_cannot_report() {
    let config = ControlConfig {
        lease_ttl: ChronoDuration::milliseconds(100),
        ..ControlConfig::default()
    };
    let control = control(config).await;
    let host = enrolled_host(&control, "db1").await;
    let job = control.create_job(delete("db1", "alice")).await.unwrap();
    let first = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id, job.id);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease, first.lease);

    let stale = ReportRequest {
        lease: first.lease,
        outcome: JobOutcome::confirmed(),
    };
    assert!(matches!(
        control.report(&host, &job.id, &stale).await,
        Err(ControlError::Conflict(_))
    ));
    let current = ReportRequest {
        lease: second.lease,
        outcome: JobOutcome::confirmed(),
    };
    control.report(&host, &job.id, &current).await.unwrap();
    let shown = control.get_job(&job.id).await.unwrap();
    assert_eq!((shown.status, shown.attempts), (JobStatus::Confirmed, 2));
}

#[tokio::test]
async fn a_job_never_reported_fails_with_agent_unresponsive() {
    let config = ControlConfig {
        lease_ttl: ChronoDuration::milliseconds(50),
        max_attempts: 2,
        ..ControlConfig::default()
    };
    let control = control(config).await;
    let host = enrolled_host(&control, "db1").await;
    let job = control.create_job(delete("db1", "alice")).await.unwrap();
    for _ in 0..2 {
        control
            .next_job(&host, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    control.sweep_abandoned_jobs().await.unwrap();
    let shown = control.get_job(&job.id).await.unwrap();
    assert_eq!(shown.status, JobStatus::Failed);
    assert_eq!(shown.error.unwrap().code, JobErrorCode::AgentUnresponsive);
    assert!(
        control
            .next_job(&host, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_waiting_poll_is_woken_by_a_new_job() {
    let control = control(ControlConfig::default()).await;
    let host = enrolled_host(&control, "db1").await;
    let poller = {
        let control = control.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let job = control
                .next_job(&host, Duration::from_secs(10))
                .await
                .unwrap();
            (job, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let created = control.create_job(delete("db1", "alice")).await.unwrap();
    let (job, waited) = poller.await.unwrap();
    assert_eq!(job.unwrap().id, created.id);
    assert!(
        waited < Duration::from_secs(2),
        "long-poll waited {waited:?}"
    );
}

#[tokio::test]
async fn hostile_jobs_are_refused_and_nothing_is_queued() {
    let control = control(ControlConfig::default()).await;
    enrolled_host(&control, "db1").await;
    for user in ["-oops", "root", "a:b", "a\nb", &"a".repeat(33), "../x", ""] {
        let err = control.create_job(delete("db1", user)).await.unwrap_err();
        assert!(matches!(err, ControlError::Invalid(_)), "{user:?}: {err}");
    }
    let all = control
        .list_jobs(
            &Default::default(),
            latch_control::store::Page {
                offset: 0,
                count: 100,
            },
        )
        .await
        .unwrap();
    assert!(all.is_empty());
    let missing = control
        .create_job(delete("nosuchhost", "alice"))
        .await
        .unwrap_err();
    assert!(matches!(missing, ControlError::NotFound { .. }));
}

#[tokio::test]
async fn set_password_stores_only_a_hash() {
    let control = control(ControlConfig::default()).await;
    let host = enrolled_host(&control, "db1").await;
    let request = CreateJobRequest {
        host: "db1".into(),
        kind: Some(JobKind::SetPassword),
        user: "alice".into(),
        password: Some("correct horse battery".into()),
        ..CreateJobRequest::default()
    };
    let job = control.create_job(request).await.unwrap();
    assert_eq!(job.params["password_hash"], "<redacted>");
    let delivered = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let wire = serde_json::to_string(&delivered).unwrap();
    assert!(!wire.contains("correct horse"));
    assert!(wire.contains("$6$"));
}
