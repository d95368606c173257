//! Many writers racing on one token, job, grant or host, through several stores on one database
//! (on PostgreSQL: separate connection pools, as separate control-plane replicas have). SQLite
//! serializes writers in its process; on PostgreSQL the row locks, conditional updates and the
//! audit chain's advisory lock must do it (ARCHITECTURE.md, "Stores"). Without them each of these
//! tests double-spends, double-delivers, records twice or forks the chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::future::Future;
use std::sync::Arc;

use chrono::{Duration, Utc};
use latch_common::api::{
    CreateEnrollTokenRequest, CreateJobRequest, EnrollRequest, GrantWindow, ReportRequest,
    RevokedBy,
};
use latch_common::job::{JobErrorCode, JobKind, JobOutcome, JobSpec, JobStatus};
use latch_control::audit::Actor;
use latch_control::signing::JobSigner;
use latch_control::store::{
    Finish, HostRecord, JobFilter, JobRecord, JobRefusal, Lease, NewJob, Page, Revoke, Store,
    TokenRefusal,
};
use latch_control::{Control, ControlConfig};
use support::TestDb;
use tokio::sync::Barrier;

/// Writers per race.
const RACERS: usize = 24;
/// Stores ("replicas") the racers are spread over.
const REPLICAS: usize = 3;

/// Runs `n` copies of `task` at once (released together) and returns their results in order.
async fn race<T, F, Fut>(n: usize, task: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let start = start.clone();
            let run = task(i);
            tokio::spawn(async move {
                start.wait().await;
                run.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    results
}

fn host_record(hostname: &str) -> HostRecord {
    HostRecord {
        id: uuid::Uuid::new_v4().to_string(),
        facts: support::facts(hostname),
        enrolled_at: Utc::now(),
        last_seen: None,
        ssh_ca: false,
        agent: None,
    }
}

fn token_hash() -> String {
    format!("{:064x}", fastrand::u128(..))
}

async fn enrolled(store: &dyn Store, hostname: &str) -> HostRecord {
    let token = token_hash();
    let now = Utc::now();
    store
        .insert_enroll_token(
            &token,
            now,
            now + Duration::minutes(5),
            1,
            &Default::default(),
            false,
            &Actor::new("admin"),
        )
        .await
        .unwrap();
    let host = host_record(hostname);
    store
        .enroll_host(&token, &host, &token_hash())
        .await
        .unwrap()
        .unwrap();
    host
}

fn unsigned(_seq: i64) -> Result<(String, String), String> {
    Ok((String::new(), String::new()))
}

async fn queue(store: &dyn Store, host_id: &str, spec: &JobSpec) -> Result<JobRecord, JobRefusal> {
    store
        .insert_job(
            &NewJob {
                id: &uuid::Uuid::new_v4().to_string(),
                host_id,
                spec,
                revokes: None,
                now: Utc::now(),
                actor: &Actor::new("admin"),
                window: GrantWindow::NotAGrant,
            },
            &unsigned,
        )
        .await
        .unwrap()
}

fn create(user: &str) -> JobSpec {
    JobSpec::CreateAccount {
        user: user.into(),
        groups: Vec::new(),
        ssh_keys: Vec::new(),
        shell: None,
        expires_at: None,
        sudo: false,
        principals: Vec::new(),
    }
}

/// The audit chain is one line: ids 1..=n without gaps, every link and MAC intact.
async fn assert_one_chain(store: &Arc<dyn Store>) {
    let chain = store.audit_chain().await.unwrap();
    let ids: Vec<i64> = chain.iter().map(|e| e.id).collect();
    let expected: Vec<i64> = (1..=i64::try_from(chain.len()).unwrap()).collect();
    assert_eq!(ids, expected, "the audit chain has gaps");
    let control = Control::new(
        store.clone(),
        ControlConfig::default(),
        JobSigner::generate().unwrap(),
    );
    let report = control.verify_audit().await.unwrap();
    assert!(report.ok, "the audit chain forked: {report:#?}");
}

fn count(chain: &[latch_control::audit::AuditEntry], action: &str, job: &str) -> usize {
    chain
        .iter()
        .filter(|e| e.action == action && e.job_id.as_deref() == Some(job))
        .count()
}

async fn events(store: &dyn Store, job: &str, event: &str) -> usize {
    store
        .job_history(job)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event == event)
        .count()
}

/// An enrollment token with 3 uses, spent by 24 enrollments at once: exactly 3 hosts, 21 clean
/// `used_up` refusals (not database errors), no use left, one audit chain.
async fn racing_enrollments_never_spend_a_token_twice(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    let token = token_hash();
    let now = Utc::now();
    stores[0]
        .insert_enroll_token(
            &token,
            now,
            now + Duration::minutes(5),
            3,
            &Default::default(),
            false,
            &Actor::new("admin"),
        )
        .await
        .unwrap();
    let results = race(RACERS, |i| {
        let store = stores[i % REPLICAS].clone();
        let token = token.clone();
        async move {
            store
                .enroll_host(&token, &host_record(&format!("h{i}")), &token_hash())
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let enrolled = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    let used_up = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(TokenRefusal::UsedUp))))
        .count();
    assert_eq!(
        (enrolled, used_up),
        (3, RACERS - 3),
        "a 3-use token enrolled {enrolled} hosts: {results:?}"
    );
    let hosts = stores[0]
        .list_hosts(
            &Default::default(),
            Page {
                offset: 0,
                count: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(hosts.len(), 3);
    assert_one_chain(&stores[0]).await;
}
both_stores!(racing_enrollments_never_spend_a_token_twice, multi_thread);

/// 24 polls of one host at once: its first job is delivered once, to one lease; the others see
/// it in flight. Nothing later is delivered before it.
async fn racing_polls_deliver_the_head_job_once(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    for round in 0..4 {
        polls_race_for_the_head_job(&stores, &format!("db{round}")).await;
    }
    assert_one_chain(&stores[0]).await;
}
both_stores!(racing_polls_deliver_the_head_job_once, multi_thread);

async fn polls_race_for_the_head_job(stores: &[Arc<dyn Store>], hostname: &str) {
    let host = enrolled(stores[0].as_ref(), hostname).await;
    let first = queue(stores[0].as_ref(), &host.id, &create("alice"))
        .await
        .unwrap();
    queue(stores[0].as_ref(), &host.id, &create("bob"))
        .await
        .unwrap();
    let results = race(RACERS, |i| {
        let store = stores[i % REPLICAS].clone();
        let host_id = host.id.clone();
        async move {
            store
                .lease_next_job(
                    &host_id,
                    &format!("lease-{i}"),
                    Utc::now(),
                    Duration::seconds(60),
                    5,
                )
                .await
                .unwrap()
        }
    })
    .await;
    let delivered: Vec<&JobRecord> = results
        .iter()
        .filter_map(|r| match r {
            Lease::Delivered(job) => Some(job.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 1, "delivered {} times", delivered.len());
    assert_eq!(delivered[0].id, first.id, "a later job overtook the first");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Lease::Delivered(_) | Lease::InFlight { .. })),
        "{results:?}"
    );
    let stored = stores[0].get_job(&first.id).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 1);
    assert_eq!(
        stored.lease, delivered[0].lease,
        "the winner's lease is kept"
    );
    assert_eq!(events(stores[0].as_ref(), &first.id, "delivered").await, 1);
}

/// A head job out of deliveries, polled by 24 at once: it fails once (one event, one audit
/// entry), and the next job is delivered once.
async fn racing_polls_fail_an_abandoned_head_once_and_deliver_the_next_once(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    let host = enrolled(stores[0].as_ref(), "db1").await;
    let stuck = queue(stores[0].as_ref(), &host.id, &create("alice"))
        .await
        .unwrap();
    let next = queue(stores[0].as_ref(), &host.id, &create("bob"))
        .await
        .unwrap();
    let long_ago = Utc::now() - Duration::minutes(10);
    let leased = stores[0]
        .lease_next_job(&host.id, "first", long_ago, Duration::seconds(1), 1)
        .await
        .unwrap();
    assert!(matches!(leased, Lease::Delivered(_)));
    let results = race(RACERS, |i| {
        let store = stores[i % REPLICAS].clone();
        let host_id = host.id.clone();
        async move {
            store
                .lease_next_job(
                    &host_id,
                    &format!("lease-{i}"),
                    Utc::now(),
                    Duration::seconds(60),
                    1,
                )
                .await
                .unwrap()
        }
    })
    .await;
    let delivered: Vec<&str> = results
        .iter()
        .filter_map(|r| match r {
            Lease::Delivered(job) => Some(job.id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [next.id.as_str()], "{results:?}");
    let failed = stores[0].get_job(&stuck.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.unwrap().code, JobErrorCode::AgentUnresponsive);
    assert_eq!(events(stores[0].as_ref(), &stuck.id, "failed").await, 1);
    let chain = stores[0].audit_chain().await.unwrap();
    assert_eq!(count(&chain, "job.fail", &stuck.id), 1);
    assert_eq!(count(&chain, "job.deliver", &next.id), 1);
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    racing_polls_fail_an_abandoned_head_once_and_deliver_the_next_once,
    multi_thread
);

/// One delivery reported 24 times at once (an agent resending, through several replicas): one
/// outcome is recorded, the copies are duplicates; a different outcome is a conflict.
async fn racing_reports_of_one_delivery_record_one_outcome(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    let host = enrolled(stores[0].as_ref(), "db1").await;
    let job = queue(stores[0].as_ref(), &host.id, &create("alice"))
        .await
        .unwrap();
    let Lease::Delivered(_) = stores[0]
        .lease_next_job(&host.id, "the-lease", Utc::now(), Duration::seconds(60), 5)
        .await
        .unwrap()
    else {
        panic!("not delivered")
    };
    let results = race(RACERS, |i| {
        let store = stores[i % REPLICAS].clone();
        let (host_id, job_id) = (host.id.clone(), job.id.clone());
        async move {
            let outcome = if i % 6 == 5 {
                JobOutcome::Failed {
                    error: latch_common::job::JobError::new(JobErrorCode::ToolFailed, "x"),
                }
            } else {
                JobOutcome::Confirmed { notes: Vec::new() }
            };
            let finish = store
                .finish_job(&host_id, &job_id, "the-lease", &outcome, Utc::now())
                .await
                .unwrap();
            (matches!(outcome, JobOutcome::Confirmed { .. }), finish)
        }
    })
    .await;
    let recorded: Vec<bool> = results
        .iter()
        .filter(|(_, f)| *f == Finish::Recorded)
        .map(|(confirmed, _)| *confirmed)
        .collect();
    assert_eq!(recorded.len(), 1, "{results:?}");
    let winner_confirmed = recorded[0];
    for (confirmed, finish) in &results {
        if *finish != Finish::Recorded {
            let want = if *confirmed == winner_confirmed {
                Finish::Duplicate
            } else {
                Finish::Conflict
            };
            assert_eq!(*finish, want, "{results:?}");
        }
    }
    let stored = stores[0].get_job(&job.id).await.unwrap().unwrap();
    let finals = events(stores[0].as_ref(), &job.id, "confirmed").await
        + events(stores[0].as_ref(), &job.id, "failed").await;
    assert_eq!(finals, 1, "{stored:?}");
    let chain = stores[0].audit_chain().await.unwrap();
    assert_eq!(
        count(&chain, "job.outcome", &job.id) + count(&chain, "job.rejected", &job.id),
        1
    );
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    racing_reports_of_one_delivery_record_one_outcome,
    multi_thread
);

/// A report with an expired lease racing a new delivery of the same job, many times over: either
/// the report wins (the job is final, nothing is delivered) or the delivery does (the report is
/// a conflict) — never both.
async fn a_late_report_and_a_new_delivery_never_both_win(db: TestDb) {
    let stores = db.replicas(2).await;
    let host = enrolled(stores[0].as_ref(), "db1").await;
    for round in 0..12 {
        let job = queue(stores[0].as_ref(), &host.id, &create(&format!("u{round}")))
            .await
            .unwrap();
        let old = format!("old-{round}");
        let long_ago = Utc::now() - Duration::minutes(10);
        let Lease::Delivered(_) = stores[0]
            .lease_next_job(&host.id, &old, long_ago, Duration::seconds(1), 5)
            .await
            .unwrap()
        else {
            panic!("not delivered")
        };
        let (reporter, poller) = (stores[0].clone(), stores[1].clone());
        let (host_a, job_a, host_b) = (host.id.clone(), job.id.clone(), host.id.clone());
        let results = race(2, move |i| {
            let (reporter, poller) = (reporter.clone(), poller.clone());
            let (host_a, job_a, host_b, old) =
                (host_a.clone(), job_a.clone(), host_b.clone(), old.clone());
            async move {
                if i == 0 {
                    let finish = reporter
                        .finish_job(
                            &host_a,
                            &job_a,
                            &old,
                            &JobOutcome::Confirmed { notes: Vec::new() },
                            Utc::now(),
                        )
                        .await
                        .unwrap();
                    (Some(finish), None)
                } else {
                    let lease = poller
                        .lease_next_job(&host_b, "new", Utc::now(), Duration::seconds(60), 5)
                        .await
                        .unwrap();
                    (None, Some(lease))
                }
            }
        })
        .await;
        let finish = results[0].0.clone().unwrap();
        let lease = results[1].1.clone().unwrap();
        match (&finish, &lease) {
            (Finish::Recorded, Lease::Idle) => {}
            (Finish::Conflict, Lease::Delivered(again)) if again.id == job.id => {
                // Finish this round's job with its new lease.
                let done = stores[1]
                    .finish_job(
                        &host.id,
                        &job.id,
                        "new",
                        &JobOutcome::Confirmed { notes: Vec::new() },
                        Utc::now(),
                    )
                    .await
                    .unwrap();
                assert_eq!(done, Finish::Recorded);
            }
            other => panic!("round {round}: both or neither won: {other:?}"),
        }
    }
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    a_late_report_and_a_new_delivery_never_both_win,
    multi_thread
);

/// A grant reported revoked 24 times at once (agent expiry reports, the revocation job): it is
/// recorded revoked once — one event, one audit entry.
async fn racing_revocation_reports_record_a_grant_revoked_once(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    let host = enrolled(stores[0].as_ref(), "db1").await;
    let grant = queue(stores[0].as_ref(), &host.id, &create("alice"))
        .await
        .unwrap();
    stores[0]
        .lease_next_job(&host.id, "l", Utc::now(), Duration::seconds(60), 5)
        .await
        .unwrap();
    let finish = stores[0]
        .finish_job(
            &host.id,
            &grant.id,
            "l",
            &JobOutcome::Confirmed { notes: Vec::new() },
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(finish, Finish::Recorded);
    let results = race(RACERS, |i| {
        let store = stores[i % REPLICAS].clone();
        let (host_id, job_id) = (host.id.clone(), grant.id.clone());
        async move {
            store
                .record_revocation(&host_id, &job_id, Utc::now(), RevokedBy::AgentExpiry)
                .await
                .unwrap()
        }
    })
    .await;
    let recorded = results.iter().filter(|r| **r == Revoke::Recorded).count();
    let already = results
        .iter()
        .filter(|r| **r == Revoke::AlreadyRevoked)
        .count();
    assert_eq!((recorded, already), (1, RACERS - 1), "{results:?}");
    assert_eq!(events(stores[0].as_ref(), &grant.id, "revoked").await, 1);
    let chain = stores[0].audit_chain().await.unwrap();
    assert_eq!(count(&chain, "grant.revoked", &grant.id), 1);
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    racing_revocation_reports_record_a_grant_revoked_once,
    multi_thread
);

/// The lease sweep running on every replica at once, with polls of the same host mixed in:
/// each abandoned job fails once.
async fn racing_lease_sweeps_fail_each_abandoned_job_once(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    let mut abandoned = Vec::new();
    let long_ago = Utc::now() - Duration::minutes(10);
    for h in 0..4 {
        let host = enrolled(stores[0].as_ref(), &format!("db{h}")).await;
        let job = queue(stores[0].as_ref(), &host.id, &create("alice"))
            .await
            .unwrap();
        stores[0]
            .lease_next_job(&host.id, "gone", long_ago, Duration::seconds(1), 1)
            .await
            .unwrap();
        abandoned.push((host.id, job.id));
    }
    let hosts: Vec<String> = abandoned.iter().map(|(h, _)| h.clone()).collect();
    race(RACERS, |i| {
        let store = stores[i % REPLICAS].clone();
        let host = hosts[i % hosts.len()].clone();
        async move {
            if i % 3 == 0 {
                store
                    .lease_next_job(
                        &host,
                        &format!("l{i}"),
                        Utc::now(),
                        Duration::seconds(60),
                        1,
                    )
                    .await
                    .unwrap();
            } else {
                store.fail_abandoned_jobs(Utc::now(), 1).await.unwrap();
            }
        }
    })
    .await;
    let chain = stores[0].audit_chain().await.unwrap();
    for (_, job) in &abandoned {
        let stored = stores[0].get_job(job).await.unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Failed);
        assert_eq!(events(stores[0].as_ref(), job, "failed").await, 1, "{job}");
        assert_eq!(count(&chain, "job.fail", job), 1, "{job}");
    }
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    racing_lease_sweeps_fail_each_abandoned_job_once,
    multi_thread
);

/// Jobs queued for one host from many connections at once get sequence numbers 1..=n, each
/// once.
async fn racing_inserts_get_consecutive_sequence_numbers(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    let host = enrolled(stores[0].as_ref(), "db1").await;
    let results = race(RACERS, |i| {
        let store = stores[i % REPLICAS].clone();
        let host_id = host.id.clone();
        async move {
            queue(store.as_ref(), &host_id, &create(&format!("u{i}")))
                .await
                .unwrap()
                .seq
        }
    })
    .await;
    let mut seqs = results;
    seqs.sort_unstable();
    let expected: Vec<i64> = (1..=i64::try_from(RACERS).unwrap()).collect();
    assert_eq!(seqs, expected);
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    racing_inserts_get_consecutive_sequence_numbers,
    multi_thread
);

/// A host removed while jobs are being queued for it, many times over: each job is either
/// refused (`host_removed`) or queued before the removal and then failed by it — none stays
/// pending for a host that will never poll again.
async fn removing_a_host_while_jobs_are_queued_leaves_nothing_pending(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    for round in 0..6 {
        let host = enrolled(stores[0].as_ref(), &format!("db{round}")).await;
        let results = race(RACERS, |i| {
            let store = stores[i % REPLICAS].clone();
            let host_id = host.id.clone();
            async move {
                if i == RACERS / 2 {
                    store
                        .remove_host(&host_id, Utc::now(), &Actor::new("admin"))
                        .await
                        .unwrap();
                    None
                } else {
                    Some(queue(store.as_ref(), &host_id, &create(&format!("u{i}"))).await)
                }
            }
        })
        .await;
        let jobs = stores[0]
            .list_jobs(
                &JobFilter {
                    host_id: Some(host.id.clone()),
                    ..JobFilter::default()
                },
                Page {
                    offset: 0,
                    count: 1000,
                },
            )
            .await
            .unwrap();
        let queued = results.iter().flatten().filter(|r| r.is_ok()).count();
        assert_eq!(jobs.len(), queued, "round {round}");
        for job in &jobs {
            assert_eq!(
                job.status,
                JobStatus::Failed,
                "round {round}: a job stayed pending for a removed host"
            );
            assert_eq!(job.error.as_ref().unwrap().code, JobErrorCode::HostRemoved);
        }
        for refused in results.iter().flatten().filter_map(|r| r.as_ref().err()) {
            assert_eq!(*refused, JobRefusal::HostRemoved);
        }
    }
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    removing_a_host_while_jobs_are_queued_leaves_nothing_pending,
    multi_thread
);

/// A host removed while its agent reports the job it was delivered, many times over: the
/// outcome is either recorded (the job stays confirmed) or refused because the removal failed
/// the job first — never recorded and then overwritten.
async fn removing_a_host_while_its_job_is_reported_keeps_one_outcome(db: TestDb) {
    let stores = db.replicas(2).await;
    for round in 0..12 {
        let host = enrolled(stores[0].as_ref(), &format!("db{round}")).await;
        let job = queue(stores[0].as_ref(), &host.id, &create("alice"))
            .await
            .unwrap();
        stores[0]
            .lease_next_job(&host.id, "l", Utc::now(), Duration::seconds(60), 5)
            .await
            .unwrap();
        let (reporter, remover) = (stores[0].clone(), stores[1].clone());
        let (host_id, job_id) = (host.id.clone(), job.id.clone());
        let results = race(2, move |i| {
            let (reporter, remover) = (reporter.clone(), remover.clone());
            let (host_id, job_id) = (host_id.clone(), job_id.clone());
            async move {
                if i == 0 {
                    Some(
                        reporter
                            .finish_job(
                                &host_id,
                                &job_id,
                                "l",
                                &JobOutcome::Confirmed { notes: Vec::new() },
                                Utc::now(),
                            )
                            .await
                            .unwrap(),
                    )
                } else {
                    remover
                        .remove_host(&host_id, Utc::now(), &Actor::new("admin"))
                        .await
                        .unwrap();
                    None
                }
            }
        })
        .await;
        let stored = stores[0].get_job(&job.id).await.unwrap().unwrap();
        match results[0] {
            Some(Finish::Recorded) => assert_eq!(
                stored.status,
                JobStatus::Confirmed,
                "round {round}: a recorded outcome was overwritten"
            ),
            Some(Finish::Conflict) => {
                assert_eq!(stored.error.unwrap().code, JobErrorCode::HostRemoved)
            }
            ref other => panic!("round {round}: {other:?}"),
        }
    }
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    removing_a_host_while_its_job_is_reported_keeps_one_outcome,
    multi_thread
);

/// The expiry sweep running on every replica at once: each expired grant gets one revocation
/// job, not one per sweep.
async fn racing_sweeps_queue_one_revocation_per_expired_grant(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    let controls: Vec<Arc<Control>> = stores
        .iter()
        .map(|store| {
            Arc::new(Control::new(
                store.clone(),
                ControlConfig::default(),
                JobSigner::generate().unwrap(),
            ))
        })
        .collect();
    let control = &controls[0];
    let token = control
        .create_enroll_token(
            &support::admin(),
            &CreateEnrollTokenRequest {
                ttl_seconds: Some(60),
                uses: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let enrolled = control
        .enroll(&EnrollRequest {
            token: token.token,
            facts: support::facts("db1"),
        })
        .await
        .unwrap();
    let host = control
        .authenticate_host(&enrolled.credential)
        .await
        .unwrap();
    let mut grants = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let job = control
            .create_job(
                &support::admin(),
                CreateJobRequest {
                    host: "db1".into(),
                    kind: Some(JobKind::CreateAccount),
                    user: user.into(),
                    expires_in_ms: Some(300),
                    ..CreateJobRequest::default()
                },
            )
            .await
            .unwrap();
        let delivered = control
            .next_job(&host, std::time::Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        control
            .report(
                &host,
                &delivered.id,
                &ReportRequest {
                    lease: delivered.lease,
                    outcome: JobOutcome::confirmed(),
                },
            )
            .await
            .unwrap();
        grants.push(job.id);
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    race(RACERS, |i| {
        let control = controls[i % REPLICAS].clone();
        async move { control.revoke_expired_grants().await.unwrap() }
    })
    .await;
    let jobs = stores[0]
        .list_jobs(
            &JobFilter::default(),
            Page {
                offset: 0,
                count: 1000,
            },
        )
        .await
        .unwrap();
    for grant in &grants {
        let revocations = jobs
            .iter()
            .filter(|j| j.revokes.as_deref() == Some(grant.as_str()))
            .count();
        assert_eq!(
            revocations, 1,
            "grant {grant}: {revocations} revocation jobs"
        );
    }
    assert_one_chain(&stores[0]).await;
}
both_stores!(
    racing_sweeps_queue_one_revocation_per_expired_grant,
    multi_thread
);

/// Audit entries appended from many connections at once form one chain: consecutive ids, each
/// linked to the one before, every MAC valid.
async fn racing_writers_keep_one_audit_chain(db: TestDb) {
    let stores = db.replicas(REPLICAS).await;
    race(RACERS * 2, |i| {
        let store = stores[i % REPLICAS].clone();
        async move {
            let now = Utc::now();
            for _ in 0..3 {
                store
                    .insert_enroll_token(
                        &token_hash(),
                        now,
                        now + Duration::minutes(1),
                        1,
                        &Default::default(),
                        false,
                        &Actor::new("admin"),
                    )
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let chain = stores[0].audit_chain().await.unwrap();
    assert_eq!(chain.len(), RACERS * 2 * 3);
    assert_one_chain(&stores[0]).await;
}
both_stores!(racing_writers_keep_one_audit_chain, multi_thread);

/// 24 sessions of one person each end "all the others" at once (24 devices pressing the button
/// together): the first to act ends the rest, whose own requests then end nothing — one
/// session stays live, not none.
async fn racing_end_others_leaves_exactly_one_session(db: TestDb) {
    use latch_control::audit::AuditEvent;
    use latch_control::store::people::{EndSessions, SessionKind, SessionRecord};
    let stores = db.replicas(REPLICAS).await;
    let now = Utc::now();
    // Inserts the principal `usr_mark`.
    support::person(&*stores[0], "mark", &[]).await;
    for i in 0..RACERS {
        let session = SessionRecord {
            id: format!("ses_mark_{i}"),
            principal_id: "usr_mark".into(),
            kind: SessionKind::Local,
            api_key_id: None,
            created_at: now,
            expires_at: now + Duration::hours(1),
            revoked_at: None,
            mfa_at: None,
            address: None,
        };
        stores[0]
            .insert_session(
                &session,
                &token_hash(),
                AuditEvent::new("user:mark", "session.start"),
                now,
            )
            .await
            .unwrap();
    }
    let results = race(RACERS, |i| {
        let store = stores[i % REPLICAS].clone();
        async move {
            let keep = format!("ses_mark_{i}");
            store
                .end_sessions(
                    "usr_mark",
                    EndSessions::AllBut(&keep),
                    AuditEvent::new("user:mark", "session.end"),
                    Utc::now(),
                )
                .await
                .unwrap()
                .len()
        }
    })
    .await;
    let live = stores[0]
        .live_sessions("usr_mark", Utc::now(), 100)
        .await
        .unwrap();
    assert_eq!(live.len(), 1, "ended: {results:?}");
    assert_eq!(
        results.iter().filter(|&&n| n > 0).collect::<Vec<_>>(),
        [&(RACERS - 1)],
        "one request ended all the others: {results:?}"
    );
    assert_one_chain(&stores[0]).await;
}
both_stores!(racing_end_others_leaves_exactly_one_session, multi_thread);
