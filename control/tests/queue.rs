#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The job state machine and enrollment rules, exercised through the library API on each store
//! (in-memory SQLite, a PostgreSQL schema).

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as ChronoDuration;
use latch_common::api::{
    CreateEnrollTokenRequest, CreateJobRequest, EnrollRequest, GrantState, GrantView, GrantWindow,
    ReportRequest, RevokedBy,
};
use latch_common::job::{JobError, JobErrorCode, JobKind, JobOutcome, JobSpec, JobStatus};
use latch_control::audit::Actor;
use latch_control::store::{
    GrantFilter, HostRecord, JobRefusal, NewJob, Page, RetryBackoff, TokenRefusal,
};
use latch_control::{Control, ControlConfig, ControlError};
use support::TestDb;

async fn control(db: &TestDb, config: ControlConfig) -> Arc<Control> {
    Arc::new(Control::new(
        db.store().await,
        config,
        latch_control::signing::JobSigner::generate().unwrap(),
    ))
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

async fn tokens_are_single_use_and_expire(db: TestDb) {
    let control = control(&db, ControlConfig::default()).await;
    let token = control
        .create_enroll_token(
            &support::admin(),
            &CreateEnrollTokenRequest {
                ttl_seconds: Some(1),
                uses: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let request = EnrollRequest {
        token: token.token.clone(),
        facts: support::facts("db1"),
    };
    control.enroll(&request).await.unwrap();
    let again = control.enroll(&request).await.unwrap_err();
    assert!(
        matches!(again, ControlError::EnrollRefused(TokenRefusal::UsedUp)),
        "{again}"
    );

    let short = control
        .create_enroll_token(
            &support::admin(),
            &CreateEnrollTokenRequest {
                ttl_seconds: Some(1),
                uses: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = control
        .enroll(&EnrollRequest {
            token: short.token,
            facts: support::facts("db2"),
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
            facts: support::facts("db3"),
        })
        .await
        .unwrap_err();
    assert!(matches!(
        unknown,
        ControlError::EnrollRefused(TokenRefusal::Unknown)
    ));
    assert!(control.authenticate_host("latch_host_guess").await.is_err());
}
both_stores!(tokens_are_single_use_and_expire);

async fn jobs_are_delivered_in_order_one_at_a_time(db: TestDb) {
    let control = control(&db, ControlConfig::default()).await;
    let host = support::enrolled_host(&control, "db1").await;
    let first = control
        .create_job(&support::admin(), delete("db1", "alice"))
        .await
        .unwrap();
    let second = control
        .create_job(&support::admin(), delete(&host.id, "bob"))
        .await
        .unwrap();
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
    let job = control.get_job(&support::admin(), &first.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Confirmed);
    assert!(job.finished_at.is_some());
    let events: Vec<&str> = job.history.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["queued", "delivered", "confirmed"]);
}
both_stores!(jobs_are_delivered_in_order_one_at_a_time);

async fn an_expired_lease_is_delivered_again_and_the_old_lease_cannot_report(db: TestDb) {
    let config = ControlConfig {
        lease_ttl: ChronoDuration::milliseconds(100),
        ..ControlConfig::default()
    };
    let control = control(&db, config).await;
    let host = support::enrolled_host(&control, "db1").await;
    let job = control
        .create_job(&support::admin(), delete("db1", "alice"))
        .await
        .unwrap();
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
    let shown = control.get_job(&support::admin(), &job.id).await.unwrap();
    assert_eq!((shown.status, shown.attempts), (JobStatus::Confirmed, 2));
}
both_stores!(an_expired_lease_is_delivered_again_and_the_old_lease_cannot_report);

async fn a_job_never_reported_fails_with_agent_unresponsive(db: TestDb) {
    let config = ControlConfig {
        lease_ttl: ChronoDuration::milliseconds(50),
        max_attempts: 2,
        ..ControlConfig::default()
    };
    let control = control(&db, config).await;
    let host = support::enrolled_host(&control, "db1").await;
    let job = control
        .create_job(&support::admin(), delete("db1", "alice"))
        .await
        .unwrap();
    for _ in 0..2 {
        control
            .next_job(&host, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    control.sweep_abandoned_jobs().await.unwrap();
    let shown = control.get_job(&support::admin(), &job.id).await.unwrap();
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
both_stores!(a_job_never_reported_fails_with_agent_unresponsive);

async fn a_waiting_poll_is_woken_by_a_new_job(db: TestDb) {
    let control = control(&db, ControlConfig::default()).await;
    let host = support::enrolled_host(&control, "db1").await;
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
    let created = control
        .create_job(&support::admin(), delete("db1", "alice"))
        .await
        .unwrap();
    let (job, waited) = poller.await.unwrap();
    assert_eq!(job.unwrap().id, created.id);
    assert!(
        waited < Duration::from_secs(2),
        "long-poll waited {waited:?}"
    );
}
both_stores!(a_waiting_poll_is_woken_by_a_new_job);

/// Removing a host ends a long-poll in progress at once, with the same refusal a new poll gets
/// (the poll checks the host again when a wake-up finds nothing to deliver).
async fn removing_a_host_ends_its_long_poll_in_progress(db: TestDb) {
    let control = control(&db, ControlConfig::default()).await;
    let host = support::enrolled_host(&control, "db1").await;
    control
        .create_job(&support::admin(), delete("db1", "alice"))
        .await
        .unwrap();
    let poller = {
        let control = control.clone();
        let host = host.clone();
        tokio::spawn(async move {
            // The first poll gets the job; the second waits until the host is removed.
            let first = control.next_job(&host, Duration::from_secs(10)).await;
            let started = Instant::now();
            let second = control.next_job(&host, Duration::from_secs(10)).await;
            (first, second, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, cancelled) = control.remove_host(&support::admin(), "db1").await.unwrap();
    assert_eq!(cancelled, 1, "the delivered job is cancelled");
    let (first, second, waited) = poller.await.unwrap();
    assert!(first.unwrap().is_some());
    assert!(
        matches!(second, Err(ControlError::Unauthenticated(_))),
        "{second:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "the poll waited {waited:?}"
    );
}
both_stores!(removing_a_host_ends_its_long_poll_in_progress);

/// A polling host is online; its `last_seen` is written when a quarter of the online window
/// has passed since the last write, not at every poll (one row write per poll was the single
/// SQLite writer's largest avoidable load with a busy fleet).
async fn polling_keeps_a_host_online_without_a_write_per_poll(db: TestDb) {
    let control = control(
        &db,
        ControlConfig {
            // A quarter of the window (500 ms) between writes: wide enough for a loaded machine.
            online_window: ChronoDuration::milliseconds(2000),
            ..ControlConfig::default()
        },
    )
    .await;
    let host = support::enrolled_host(&control, "db1").await;
    let seen = |control: Arc<Control>| async move {
        let hosts = control
            .list_hosts(
                &support::admin(),
                &Default::default(),
                Page {
                    offset: 0,
                    count: 10,
                },
            )
            .await
            .unwrap();
        (hosts[0].last_seen, hosts[0].online)
    };
    assert_eq!(seen(control.clone()).await, (None, false));
    control.next_job(&host, Duration::ZERO).await.unwrap();
    let (first, online) = seen(control.clone()).await;
    assert!(first.is_some() && online);
    tokio::time::sleep(Duration::from_millis(20)).await;
    control.next_job(&host, Duration::ZERO).await.unwrap();
    assert_eq!(
        seen(control.clone()).await.0,
        first,
        "written again too soon"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    control.next_job(&host, Duration::ZERO).await.unwrap();
    let (later, online) = seen(control.clone()).await;
    assert!(later > first && online, "{later:?} after {first:?}");
}
both_stores!(polling_keeps_a_host_online_without_a_write_per_poll);

async fn hostile_jobs_are_refused_and_nothing_is_queued(db: TestDb) {
    let control = control(&db, ControlConfig::default()).await;
    support::enrolled_host(&control, "db1").await;
    for user in ["-oops", "root", "a:b", "a\nb", &"a".repeat(33), "../x", ""] {
        let err = control
            .create_job(&support::admin(), delete("db1", user))
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::Invalid(_)), "{user:?}: {err}");
    }
    let all = control
        .list_jobs(
            &support::admin(),
            &Default::default(),
            &Default::default(),
            Page {
                offset: 0,
                count: 100,
            },
        )
        .await
        .unwrap();
    assert!(all.is_empty());
    let missing = control
        .create_job(&support::admin(), delete("nosuchhost", "alice"))
        .await
        .unwrap_err();
    assert!(matches!(missing, ControlError::NotFound { .. }));
}
both_stores!(hostile_jobs_are_refused_and_nothing_is_queued);

async fn set_password_stores_only_a_hash(db: TestDb) {
    let control = control(&db, ControlConfig::default()).await;
    let host = support::enrolled_host(&control, "db1").await;
    let request = CreateJobRequest {
        host: "db1".into(),
        kind: Some(JobKind::SetPassword),
        user: "alice".into(),
        password: Some("correct horse battery".into()),
        ..CreateJobRequest::default()
    };
    let job = control
        .create_job(&support::admin(), request)
        .await
        .unwrap();
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
both_stores!(set_password_stores_only_a_hash);

/// adopt-account reaches a host only through `queue_adopt_account` (the jobs API refuses the
/// kind), signed like every job, with a deadline, and never for a hostile or reserved name.
async fn adopt_account_is_queued_by_the_library_only(db: TestDb) {
    let control = control(&db, ControlConfig::default()).await;
    let host = support::enrolled_host(&control, "db1").await;
    let through_api = control
        .create_job(
            &support::admin(),
            CreateJobRequest {
                host: "db1".into(),
                kind: Some(JobKind::AdoptAccount),
                user: "legacy".into(),
                ..CreateJobRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&through_api, ControlError::Invalid(e) if e.field == "kind"),
        "{through_api:?}"
    );
    for hostile in ["root", "-oops", "a:b", "x\ny"] {
        let refused = control
            .queue_adopt_account(&support::admin(), "db1", hostile)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, ControlError::Invalid(e) if e.field == "user"),
            "{hostile:?}: {refused:?}"
        );
    }
    let missing = control
        .queue_adopt_account(&support::admin(), "nosuchhost", "legacy")
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ControlError::NotFound { .. }),
        "{missing:?}"
    );
    assert!(
        control
            .next_job(&host, Duration::ZERO)
            .await
            .unwrap()
            .is_none(),
        "nothing refused was queued"
    );

    let view = control
        .queue_adopt_account(&support::admin(), "db1", "legacy")
        .await
        .unwrap();
    assert_eq!(view.kind, JobKind::AdoptAccount);
    assert_eq!(view.status, JobStatus::Pending);
    let delivered = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivered.id, view.id);
    let payload: latch_common::signing::SignedJob =
        serde_json::from_str(&delivered.payload).unwrap();
    assert_eq!(
        payload.spec,
        JobSpec::AdoptAccount {
            user: "legacy".into()
        }
    );
    assert!(payload.not_after.is_some(), "adoption has a deadline");
    assert!(!delivered.signature.is_empty(), "signed like every job");
}
both_stores!(adopt_account_is_queued_by_the_library_only);

fn account(host: &str, user: &str) -> CreateJobRequest {
    CreateJobRequest {
        host: host.into(),
        kind: Some(JobKind::CreateAccount),
        user: user.into(),
        ..CreateJobRequest::default()
    }
}

fn membership(host: &str, user: &str, group: &str) -> CreateJobRequest {
    CreateJobRequest {
        host: host.into(),
        kind: Some(JobKind::AddGroup),
        user: user.into(),
        group: Some(group.into()),
        ..CreateJobRequest::default()
    }
}

/// Delivers the host's next job, checks it is `want`, and reports `outcome` with its lease.
async fn apply(control: &Control, host: &HostRecord, want: &str, outcome: JobOutcome) {
    let delivered = control
        .next_job(host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("job {want} was not delivered"));
    assert_eq!(delivered.id, want);
    control
        .report(
            host,
            &delivered.id,
            &ReportRequest {
                lease: delivered.lease,
                outcome,
            },
        )
        .await
        .unwrap();
}

/// Queues `request` and has the host confirm it; returns the job id.
async fn confirmed(control: &Control, host: &HostRecord, request: CreateJobRequest) -> String {
    let job = control
        .create_job(&support::admin(), request)
        .await
        .unwrap();
    apply(control, host, &job.id, JobOutcome::confirmed()).await;
    job.id
}

async fn grants(control: &Control, filter: GrantFilter) -> Vec<GrantView> {
    control
        .list_grants(
            &support::admin(),
            &filter,
            &Default::default(),
            Page {
                offset: 0,
                count: 100,
            },
        )
        .await
        .unwrap()
}

async fn all_jobs(control: &Control) -> Vec<latch_common::api::JobView> {
    control
        .list_jobs(
            &support::admin(),
            &Default::default(),
            &Default::default(),
            Page {
                offset: 0,
                count: 1000,
            },
        )
        .await
        .unwrap()
}

/// Finding 7: a revocation job that fails — reported failed, or abandoned and failed by the
/// lease sweep — left the grant "revocation queued" for ever, so the access was never taken
/// away by the control plane. Now the grant gets another revocation job after a backoff that
/// doubles up to a cap, until a host confirms, and the grants view shows it stuck meanwhile.
async fn finding_7_failed_revocation_jobs_are_retried_with_backoff_until_confirmed(db: TestDb) {
    let retry = RetryBackoff {
        first: ChronoDuration::milliseconds(400),
        max: ChronoDuration::milliseconds(800),
    };
    let control = control(
        &db,
        ControlConfig {
            revocation_retry: retry,
            lease_ttl: ChronoDuration::milliseconds(300),
            max_attempts: 1,
            ..ControlConfig::default()
        },
    )
    .await;
    let host = support::enrolled_host(&control, "db1").await;
    let grant = confirmed(
        &control,
        &host,
        CreateJobRequest {
            expires_in_ms: Some(300),
            ..account("db1", "alice")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(350)).await;

    // The first revocation fails on the host.
    control.revoke_expired_grants().await.unwrap();
    let first = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        control
            .get_job(&support::admin(), &first.id)
            .await
            .unwrap()
            .revokes
            .as_deref(),
        Some(grant.as_str())
    );
    control
        .report(
            &host,
            &first.id,
            &ReportRequest {
                lease: first.lease,
                outcome: JobOutcome::Failed {
                    error: JobError::new(JobErrorCode::AccountInUse, "processes left"),
                },
            },
        )
        .await
        .unwrap();
    let shown = control.get_job(&support::admin(), &grant).await.unwrap();
    assert_eq!(shown.grant_state, Some(GrantState::RevocationStuck));
    let revocation = shown.revocation.unwrap();
    assert_eq!(revocation.failed_attempts, 1);
    assert!(
        revocation
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("account_in_use: processes left"),
        "{revocation:?}"
    );
    assert_eq!(
        revocation.next_retry_at.unwrap() - revocation.last_failed_at.unwrap(),
        retry.first
    );
    let listed = grants(
        &control,
        GrantFilter {
            state: Some(GrantState::RevocationStuck),
            ..GrantFilter::default()
        },
    )
    .await;
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].summary.contains("NOT revoked"),
        "{}",
        listed[0].summary
    );
    assert_eq!(listed[0].revocation.as_ref().unwrap().failed_attempts, 1);

    // Not before the backoff is over…
    control.revoke_expired_grants().await.unwrap();
    assert!(
        control
            .next_job(&host, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    // …then a second revocation job, which the agent never reports: the lease sweep fails it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    control.revoke_expired_grants().await.unwrap();
    let second = control
        .next_job(&host, Duration::ZERO)
        .await
        .unwrap()
        .expect("a failed revocation must be queued again after the backoff");
    assert_ne!(second.id, first.id);
    assert_eq!(
        control
            .get_job(&support::admin(), &second.id)
            .await
            .unwrap()
            .revokes
            .as_deref(),
        Some(grant.as_str())
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    control.sweep_abandoned_jobs().await.unwrap();
    let shown = control
        .get_job(&support::admin(), &second.id)
        .await
        .unwrap();
    assert_eq!(shown.error.unwrap().code, JobErrorCode::AgentUnresponsive);
    let revocation = control
        .get_job(&support::admin(), &grant)
        .await
        .unwrap()
        .revocation
        .unwrap();
    assert_eq!(revocation.failed_attempts, 2);
    assert!(
        revocation
            .last_error
            .unwrap()
            .starts_with("agent_unresponsive")
    );
    // The wait doubled, up to the cap.
    let wait_until = revocation.next_retry_at.unwrap();
    assert_eq!(wait_until - revocation.last_failed_at.unwrap(), retry.max);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let checked_at = chrono::Utc::now();
    control.revoke_expired_grants().await.unwrap();
    let early = control.next_job(&host, Duration::ZERO).await.unwrap();
    let third = match early {
        // A loaded machine may take longer than the doubled wait to get here: then the job
        // is due and queued rightly.
        Some(job) => {
            assert!(
                checked_at >= wait_until,
                "queued again before the doubled wait was over"
            );
            job
        }
        // The third one is confirmed: the grant is revoked and nothing more is queued.
        None => {
            tokio::time::sleep(Duration::from_millis(450)).await;
            control.revoke_expired_grants().await.unwrap();
            control
                .next_job(&host, Duration::ZERO)
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_ne!(third.id, second.id);
    control
        .report(
            &host,
            &third.id,
            &ReportRequest {
                lease: third.lease,
                outcome: JobOutcome::confirmed(),
            },
        )
        .await
        .unwrap();
    let shown = control.get_job(&support::admin(), &grant).await.unwrap();
    assert_eq!(shown.grant_state, Some(GrantState::Revoked));
    assert_eq!(shown.revoked_by, Some(RevokedBy::ControlPlane));
    let events: Vec<&str> = shown.history.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events.iter().filter(|e| **e == "revocation_failed").count(),
        2,
        "{events:?}"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    control.revoke_expired_grants().await.unwrap();
    assert!(
        control
            .next_job(&host, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
}
both_stores!(finding_7_failed_revocation_jobs_are_retried_with_backoff_until_confirmed);

/// Finding 14: `insert_job` did not look at `removed_at`, so a job — even an internal
/// revocation or key-rotation job — could be queued for a host being removed and stay pending
/// for ever. The store now refuses it in the insert transaction.
async fn finding_14_the_store_refuses_jobs_for_removed_hosts(db: TestDb) {
    let store = db.store().await;
    let control = Control::new(
        store.clone(),
        ControlConfig::default(),
        latch_control::signing::JobSigner::generate().unwrap(),
    );
    let host = support::enrolled_host(&control, "db1").await;
    control.remove_host(&support::admin(), "db1").await.unwrap();
    let spec = JobSpec::DeleteAccount {
        user: "alice".into(),
    };
    let sign =
        |_seq: i64| -> Result<(String, String), String> { Ok((String::new(), String::new())) };
    for (host_id, refusal) in [
        (host.id.as_str(), JobRefusal::HostRemoved),
        ("no-such-host", JobRefusal::NoSuchHost),
    ] {
        let refused = store
            .insert_job(
                &NewJob {
                    id: &uuid_like(host_id),
                    host_id,
                    spec: &spec,
                    revokes: None,
                    now: chrono::Utc::now(),
                    actor: &Actor::new("admin"),
                    window: GrantWindow::NotAGrant,
                },
                &sign,
            )
            .await
            .unwrap();
        assert_eq!(refused.unwrap_err(), refusal);
    }
    assert!(all_jobs(&control).await.is_empty());
}
both_stores!(finding_14_the_store_refuses_jobs_for_removed_hosts);

fn uuid_like(seed: &str) -> String {
    format!("00000000-0000-0000-0000-{:0>12}", seed.len())
}

/// Finding 14: `due_grants` included removed hosts, so every expired grant of a removed host
/// got a revocation job that could never be delivered. Now none is queued, and the grants view
/// says why the access may remain.
async fn finding_14_removed_hosts_get_no_revocation_jobs_and_show_as_host_removed(db: TestDb) {
    let store = db.store().await;
    let config = ControlConfig::default();
    let retry = config.revocation_retry;
    let control = Control::new(
        store.clone(),
        config,
        latch_control::signing::JobSigner::generate().unwrap(),
    );
    let host = support::enrolled_host(&control, "db1").await;
    let grant = confirmed(
        &control,
        &host,
        CreateJobRequest {
            expires_in_ms: Some(200),
            ..account("db1", "alice")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let due = store
        .due_grants(chrono::Utc::now(), retry, 100)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    control.remove_host(&support::admin(), "db1").await.unwrap();
    let due = store
        .due_grants(chrono::Utc::now(), retry, 100)
        .await
        .unwrap();
    assert!(
        due.is_empty(),
        "a removed host's grant is still due: {due:?}"
    );
    control.revoke_expired_grants().await.unwrap();
    let jobs = all_jobs(&control).await;
    assert_eq!(
        jobs.len(),
        1,
        "a job was queued for a removed host: {jobs:?}"
    );
    let listed = grants(
        &control,
        GrantFilter {
            host: Some("db1".into()),
            ..GrantFilter::default()
        },
    )
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].job_id, grant);
    assert_eq!(listed[0].state, GrantState::HostRemoved);
    assert!(
        listed[0]
            .summary
            .contains("host removed — revocation impossible from here"),
        "{}",
        listed[0].summary
    );
    assert_eq!(
        control
            .get_job(&support::admin(), &grant)
            .await
            .unwrap()
            .grant_state,
        Some(GrantState::HostRemoved)
    );
    // And nothing can be queued for it through the jobs API either.
    let refused = control
        .create_job(&support::admin(), delete(&host.id, "alice"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ControlError::NotFound { .. }),
        "{refused}"
    );
}
both_stores!(finding_14_removed_hosts_get_no_revocation_jobs_and_show_as_host_removed);

/// Finding 20: any duration was accepted — 0s (then failed on the host), 100000 days — and a
/// grant without an end was permanent. Now the end must be in the future and within the
/// maximum, refused with a message naming the limit, and nothing is queued.
async fn finding_20_grant_windows_outside_the_limit_are_refused_naming_it(db: TestDb) {
    let control = control(
        &db,
        ControlConfig {
            max_grant_duration: ChronoDuration::hours(8),
            ..ControlConfig::default()
        },
    )
    .await;
    support::enrolled_host(&control, "db1").await;
    let now = chrono::Utc::now();
    let refused = [
        CreateJobRequest {
            expires_in_ms: Some(0),
            ..account("db1", "alice")
        },
        CreateJobRequest {
            expires_at: Some(now),
            ..account("db1", "alice")
        },
        CreateJobRequest {
            expires_at: Some(now - ChronoDuration::minutes(5)),
            ..membership("db1", "alice", "sudo")
        },
        CreateJobRequest {
            expires_in_ms: Some(100_000 * 86_400 * 1000),
            ..account("db1", "alice")
        },
        CreateJobRequest {
            expires_in_ms: Some(8 * 3600 * 1000 + 1),
            ..membership("db1", "alice", "sudo")
        },
        CreateJobRequest {
            expires_at: Some(now + ChronoDuration::hours(9)),
            ..account("db1", "alice")
        },
    ];
    for request in refused {
        let error = control
            .create_job(&support::admin(), request.clone())
            .await
            .unwrap_err();
        let ControlError::Invalid(invalid) = &error else {
            panic!("{request:?}: {error}");
        };
        assert!(
            invalid.reason.contains("at most 8h")
                && invalid.reason.contains("--max-grant-duration"),
            "{error}"
        );
    }
    let both = control
        .create_job(
            &support::admin(),
            CreateJobRequest {
                permanent: true,
                expires_in_ms: Some(60_000),
                ..account("db1", "alice")
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&both, ControlError::Invalid(e) if e.field == "permanent"),
        "{both}"
    );
    assert!(all_jobs(&control).await.is_empty());
    // The maximum itself is fine.
    let job = control
        .create_job(
            &support::admin(),
            CreateJobRequest {
                expires_in_ms: Some(8 * 3600 * 1000),
                ..account("db1", "alice")
            },
        )
        .await
        .unwrap();
    let window = job.expires_at.unwrap() - job.created_at;
    assert!((window - ChronoDuration::hours(8)).abs() < ChronoDuration::seconds(5));
}
both_stores!(finding_20_grant_windows_outside_the_limit_are_refused_naming_it);

/// Finding 20: an account or membership without an end gets the default window; only an
/// explicit `permanent` has none, and that choice is in the audit trail.
async fn finding_20_no_end_means_the_default_window_and_permanent_is_audited(db: TestDb) {
    let control = control(
        &db,
        ControlConfig {
            default_grant_duration: ChronoDuration::minutes(90),
            ..ControlConfig::default()
        },
    )
    .await;
    support::enrolled_host(&control, "db1").await;
    for request in [account("db1", "alice"), membership("db1", "alice", "sudo")] {
        let job = control
            .create_job(&support::admin(), request)
            .await
            .unwrap();
        let window = job.expires_at.expect("the default window") - job.created_at;
        assert!(
            (window - ChronoDuration::minutes(90)).abs() < ChronoDuration::seconds(5),
            "{window}"
        );
    }
    let permanent = control
        .create_job(
            &support::admin(),
            CreateJobRequest {
                permanent: true,
                ..account("db1", "bob")
            },
        )
        .await
        .unwrap();
    assert_eq!(permanent.expires_at, None);
    let audit = control
        .list_audit(
            &latch_control::store::AuditFilter::default(),
            Page {
                offset: 0,
                count: 100,
            },
        )
        .await
        .unwrap();
    let created: Vec<serde_json::Value> = audit
        .iter()
        .filter(|e| e.action == "job.create")
        .map(|e| serde_json::from_str(&e.detail).unwrap())
        .collect();
    assert_eq!(created.len(), 3);
    assert_eq!(
        (
            created[0]["window"].as_str(),
            created[0]["permanent"].as_bool()
        ),
        (Some("default"), Some(false))
    );
    assert!(created[0]["expires_at"].is_string());
    assert_eq!(
        (
            created[2]["window"].as_str(),
            created[2]["permanent"].as_bool()
        ),
        (Some("permanent"), Some(true))
    );
    assert!(created[2]["expires_at"].is_null());
}
both_stores!(finding_20_no_end_means_the_default_window_and_permanent_is_audited);

/// Grant visibility: after `delete-account`, the earlier grants of that account said
/// `revoked: no`; after `remove-group`, the earlier membership did. Now they are revoked by
/// that job, and a later grant of the same access supersedes the earlier one.
async fn delete_account_and_remove_group_revoke_the_earlier_grants_by_job(db: TestDb) {
    let control = control(&db, ControlConfig::default()).await;
    let host = support::enrolled_host(&control, "db1").await;
    let account_grant = confirmed(&control, &host, account("db1", "alice")).await;
    let sudo_grant = confirmed(&control, &host, membership("db1", "alice", "sudo")).await;
    let bob = confirmed(&control, &host, account("db1", "bob")).await;
    let bob_sudo = confirmed(&control, &host, membership("db1", "bob", "sudo")).await;
    let bob_again = confirmed(
        &control,
        &host,
        CreateJobRequest {
            expires_in_ms: Some(7_200_000),
            ..account("db1", "bob")
        },
    )
    .await;
    let active = grants(
        &control,
        GrantFilter {
            state: Some(GrantState::Active),
            ..GrantFilter::default()
        },
    )
    .await;
    assert_eq!(active.len(), 4, "{active:?}");
    assert!(
        active
            .iter()
            .all(|g| g.host_name == "db1" && g.seconds_left.is_some())
    );
    let bob_first = control.get_job(&support::admin(), &bob).await.unwrap();
    assert_eq!(bob_first.grant_state, Some(GrantState::Superseded));
    assert_eq!(bob_first.superseded_by.as_deref(), Some(bob_again.as_str()));

    let delete = confirmed(&control, &host, delete("db1", "alice")).await;
    for grant in [&account_grant, &sudo_grant] {
        let shown = control.get_job(&support::admin(), grant).await.unwrap();
        assert_eq!(shown.grant_state, Some(GrantState::Revoked), "{grant}");
        assert_eq!(shown.revoked_by, Some(RevokedBy::Job));
        assert_eq!(shown.revoked_by_job.as_deref(), Some(delete.as_str()));
    }
    let remove = confirmed(
        &control,
        &host,
        CreateJobRequest {
            kind: Some(JobKind::RemoveGroup),
            ..membership("db1", "bob", "sudo")
        },
    )
    .await;
    let shown = control.get_job(&support::admin(), &bob_sudo).await.unwrap();
    assert_eq!(
        (shown.grant_state, shown.revoked_by, shown.revoked_by_job),
        (
            Some(GrantState::Revoked),
            Some(RevokedBy::Job),
            Some(remove.clone())
        )
    );
    // The account grant is untouched by a membership's removal.
    assert_eq!(
        control
            .get_job(&support::admin(), &bob_again)
            .await
            .unwrap()
            .grant_state,
        Some(GrantState::Active)
    );
    let alice = grants(
        &control,
        GrantFilter {
            user: Some("alice".into()),
            ..GrantFilter::default()
        },
    )
    .await;
    assert_eq!(alice.len(), 2);
    assert!(
        alice
            .iter()
            .all(|g| g.state == GrantState::Revoked && g.summary.contains(&delete)),
        "{alice:?}"
    );
    // Jobs carry the host's name and the grant state; non-grants have none.
    let jobs = all_jobs(&control).await;
    assert!(jobs.iter().all(|j| j.host_name == "db1"));
    let delete_view = jobs.iter().find(|j| j.id == delete).unwrap();
    assert_eq!(delete_view.grant_state, None);
}
both_stores!(delete_account_and_remove_group_revoke_the_earlier_grants_by_job);
