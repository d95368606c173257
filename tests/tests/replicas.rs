//! Issue 9, "Several replicas": two `latch-control serve` processes on one PostgreSQL schema
//! (same key files, each its own address and data directory), real agents given both URLs.
//!
//! PostgreSQL only — several replicas are a PostgreSQL feature. These tests run in the
//! PostgreSQL pass of `scripts/test` (`LATCH_TEST_STORE=postgres`); in the SQLite pass they say
//! so and return.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, TestHost, e2e_enabled, wait_for};
use serde_json::{Value, json};

/// Whether this run is the PostgreSQL pass (and the end-to-end tests can run at all).
fn postgres_pass(test: &str) -> bool {
    if !e2e_enabled(test) {
        return false;
    }
    let postgres = matches!(
        std::env::var("LATCH_TEST_STORE").as_deref(),
        Ok("postgres" | "postgresql")
    );
    if !postgres {
        eprintln!(
            "{test}: replicas need PostgreSQL; this test runs in the LATCH_TEST_STORE=postgres pass of scripts/test"
        );
    }
    postgres
}

/// Queues a create-account job through `cp`'s API; the job id when acknowledged (201).
fn queue_account(cp: &ControlPlane, host: &str, user: &str) -> Option<String> {
    let body =
        json!({"host": host, "kind": "create-account", "user": user, "expires_in_ms": 3_600_000});
    match cp.try_api("POST", "/v1/jobs", Some(&body.to_string())) {
        Ok((201, job)) => Some(job["id"].as_str().expect("job id").to_owned()),
        _ => None,
    }
}

/// When the job's history recorded `event` (Unix milliseconds), read straight from the
/// database.
fn event_at(cp: &ControlPlane, job: &str, event: &str) -> Option<i64> {
    cp.sql_rows(&format!(
        "SELECT at FROM job_events WHERE job_id = '{job}' AND event = '{event}' ORDER BY id"
    ))
    .first()
    .and_then(|row| row["at"].as_i64())
}

/// Whether the replica's log says it took the lead.
fn leads(cp: &ControlPlane) -> bool {
    lead_taken_at(cp).is_some()
}

/// When the replica's log says it took the lead.
fn lead_taken_at(cp: &ControlPlane) -> Option<chrono::DateTime<chrono::Utc>> {
    let log = cp.log();
    let line = log
        .lines()
        .find(|line| line.contains("this replica now leads the periodic work"))?;
    let stamp = line.split_whitespace().next()?;
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Two replicas of one control plane and a test host whose agent long-polls replica B.
struct AgentOnB {
    a: ControlPlane,
    b: ControlPlane,
    host: TestHost,
    _agent: latch_e2e::Agent,
}

impl AgentOnB {
    fn start(name: &str) -> AgentOnB {
        let a = ControlPlane::start(&[]);
        let b = a.replica(&[]);
        assert_eq!(a.fingerprint, b.fingerprint, "the replicas share the CA");
        let host = TestHost::start(name);
        host.enroll_via(&b.url, &b.fingerprint, &a.enroll_token("10m", 1))
            .ok("enroll with replica B");
        let agent = host.start_agent();
        // The agent is polling B (its first job goes through B to be sure).
        let first = queue_account(&b, name, "first").expect("queued on B");
        a.expect_confirmed(&first);
        AgentOnB {
            a,
            b,
            host,
            _agent: agent,
        }
    }

    /// Queues a job for `user` through replica A once the agent waits in a poll on B, right
    /// after `just_before`; returns how long after its `queued` event it was `delivered` (ms).
    fn queue_on_a(&self, user: &str, just_before: impl FnOnce()) -> i64 {
        std::thread::sleep(Duration::from_millis(700));
        just_before();
        let job = queue_account(&self.a, &self.host.name, user).expect("queued on A");
        self.a.expect_confirmed(&job);
        let queued = event_at(&self.a, &job, "queued").expect("queued event");
        let delivered = event_at(&self.a, &job, "delivered").expect("delivered event");
        delivered - queued
    }
}

/// An agent long-polling replica B gets a job queued through replica A within milliseconds
/// (LISTEN/NOTIFY), not at B's periodic re-check (5 s): three jobs in a row, each delivered
/// within 200 ms of being queued.
#[test]
fn a_job_queued_on_one_replica_wakes_a_poll_on_the_other() {
    if !postgres_pass("a_job_queued_on_one_replica_wakes_a_poll_on_the_other") {
        return;
    }
    let real = RealEtc::snapshot();
    let replicas = AgentOnB::start("e2e-wake1");
    for n in 0..3 {
        let latency = replicas.queue_on_a(&format!("wake{n}"), || ());
        eprintln!("job {n}: queued on A, delivered by B after {latency} ms");
        assert!(
            latency < 200,
            "a job queued on A reached the agent polling B only after {latency} ms\nB's log:\n{}",
            replicas.b.log()
        );
    }
    real.assert_unchanged();
}

/// A replica whose wake-up listener loses its connection (terminated by the server) connects
/// again and wakes its waiting polls, so a job queued on the other replica meanwhile is not left
/// for the periodic re-check: delivered within a second, every time.
#[test]
fn a_replica_whose_listener_connection_drops_still_wakes_its_polls() {
    if !postgres_pass("a_replica_whose_listener_connection_drops_still_wakes_its_polls") {
        return;
    }
    let real = RealEtc::snapshot();
    let replicas = AgentOnB::start("e2e-wake2");
    // Both replicas' listeners of this schema (they connect as
    // `latch-control listener latch_wake_<hash of the schema>`).
    let terminate = "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE application_name = 'latch-control listener latch_wake_' || \
         lpad(to_hex(hashtext(current_schema())), 8, '0')";
    for n in 0..3 {
        let latency = replicas.queue_on_a(&format!("drop{n}"), || {
            let terminated = replicas.a.sql_rows(terminate);
            assert_eq!(
                terminated[0]["n"],
                Value::from(2),
                "two listeners (one per replica) were expected: {terminated:?}"
            );
        });
        eprintln!("listeners dropped; job {n} delivered after {latency} ms");
        assert!(
            latency < 1000,
            "a job queued while B's listener was down waited {latency} ms (the re-check, not the reconnect's wake-up)\nB's log:\n{}",
            replicas.b.log()
        );
    }
    assert!(
        replicas
            .b
            .log()
            .contains("the wake-up listener lost PostgreSQL"),
        "B never noticed its listener was cut"
    );
    real.assert_unchanged();
}

/// Two replicas under load, two real agents given both URLs (one enrolled with each); jobs are
/// queued continuously through both, and replica A — the leader — is killed with SIGKILL in the
/// middle. The agents move to B; every job acknowledged (201) is confirmed exactly once (one
/// `confirmed` event each, no failure, each account exists once on its host); B takes over the
/// periodic work within a few seconds; `latchctl audit verify` is clean afterwards.
#[test]
fn killing_a_replica_under_load_loses_no_acknowledged_job() {
    if !postgres_pass("killing_a_replica_under_load_loses_no_acknowledged_job") {
        return;
    }
    let real = RealEtc::snapshot();
    // Short leases: a job A delivered just before it died is delivered again soon.
    let extra = ["--lease-timeout", "5s"];
    let a = ControlPlane::start(&extra);
    wait_for("replica A to lead", Duration::from_secs(10), || {
        leads(&a).then_some(())
    });
    let b = a.replica(&extra);
    let hosts = ["e2e-rep1", "e2e-rep2"];
    let mut agents = Vec::new();
    let mut test_hosts = Vec::new();
    for (name, (enrolled, other)) in hosts.into_iter().zip([(&a, &b), (&b, &a)]) {
        let host = TestHost::start(name);
        host.enroll_via(&enrolled.url, &a.fingerprint, &a.enroll_token("10m", 1))
            .ok("enroll");
        host.write_agent_config(&format!("servers = [{:?}]\n", other.url));
        agents.push(host.start_agent());
        test_hosts.push(host);
    }
    assert!(!leads(&b), "only one replica leads");

    // Queue through both replicas, alternating, until told to stop; record every 201.
    let acknowledged: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let a_url = a.url.clone();
    let killed_at = std::thread::scope(|scope| {
        let producer = {
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            let (a, b) = (&a, &b);
            scope.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let host = hosts[n % 2];
                    let through = if n % 3 == 0 { b } else { a };
                    let user = format!("load{n}");
                    if let Some(id) = queue_account(through, host, &user) {
                        acknowledged
                            .lock()
                            .expect("lock")
                            .push((id, host.to_owned(), user));
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_millis(40));
                }
            })
        };
        wait_for("30 acknowledged jobs", Duration::from_secs(60), || {
            (acknowledged.lock().expect("lock").len() >= 30).then_some(())
        });
        a.kill9();
        let killed_at = chrono::Utc::now();
        // Keep queueing (A's share now fails: not acknowledged, not counted).
        let before = acknowledged.lock().expect("lock").len();
        wait_for(
            "20 more acknowledged jobs after the kill",
            Duration::from_secs(60),
            || (acknowledged.lock().expect("lock").len() >= before + 20).then_some(()),
        );
        stop.store(true, Ordering::Relaxed);
        producer.join().expect("producer");
        killed_at
    });

    // B takes over the periodic work.
    let took_over = wait_for("replica B to lead", Duration::from_secs(15), || {
        lead_taken_at(&b).map(|at| at - killed_at)
    });
    eprintln!("replica B leads {took_over:?} after A was killed");
    assert!(
        took_over < chrono::Duration::seconds(5),
        "takeover took {took_over:?}"
    );

    // Every acknowledged job is confirmed, once.
    let acknowledged = acknowledged.lock().expect("lock").clone();
    eprintln!(
        "{} jobs acknowledged; A killed under load at {a_url}",
        acknowledged.len()
    );
    for (id, _, _) in &acknowledged {
        b.expect_confirmed(id);
    }
    let ids: Vec<String> = acknowledged
        .iter()
        .map(|(id, _, _)| format!("'{id}'"))
        .collect();
    let events = b.sql_rows(&format!(
        "SELECT job_id, count(*) FILTER (WHERE event = 'confirmed') AS confirmed, \
         count(*) FILTER (WHERE event = 'failed') AS failed \
         FROM job_events WHERE job_id IN ({}) GROUP BY job_id",
        ids.join(",")
    ));
    assert_eq!(events.len(), acknowledged.len(), "{events:?}");
    for row in &events {
        assert_eq!(row["confirmed"], Value::from(1), "{row}");
        assert_eq!(row["failed"], Value::from(0), "{row}");
    }
    for host in &test_hosts {
        let passwd = host.read("/etc/passwd");
        let users: Vec<&str> = passwd
            .lines()
            .filter_map(|line| line.split(':').next())
            .filter(|user| user.starts_with("load"))
            .collect();
        let unique: BTreeSet<&str> = users.iter().copied().collect();
        assert_eq!(users.len(), unique.len(), "an account twice: {passwd}");
        for (_, on, user) in acknowledged.iter().filter(|(_, on, _)| on == &host.name) {
            assert!(unique.contains(user.as_str()), "{user} missing on {on}");
        }
        assert!(
            !host.agent_log().contains("replay"),
            "a job was refused as replayed: {}",
            host.agent_log()
        );
        // The agent enrolled with A moved to B, and says so.
        let status = host.exec(&[latch_e2e::AGENT, "status"]);
        assert!(
            status.stdout.contains(&b.url),
            "status does not show replica B in use: {}",
            status.stdout
        );
    }
    let verify = b.latchctl(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "audit verify: {verify:?}");
    drop(agents);
    real.assert_unchanged();
}

/// A signing key promoted through replica A is pinned in the shared database; replica B, still
/// holding the old key file, refuses to queue jobs (agents drop the old key on their first job
/// signed with the new one) until it is given the new `signing.key` and restarted — then its
/// jobs are applied again.
#[test]
fn a_replica_with_a_signing_key_promoted_elsewhere_queues_nothing_until_it_gets_the_new_key() {
    if !postgres_pass(
        "a_replica_with_a_signing_key_promoted_elsewhere_queues_nothing_until_it_gets_the_new_key",
    ) {
        return;
    }
    let real = RealEtc::snapshot();
    let a = ControlPlane::start(&[]);
    let b = a.replica(&[]);
    let host = TestHost::start("e2e-repkey");
    host.enroll_ok(&a);
    let _agent = host.start_agent();
    let rotation = a.json(&["signing-key", "rotate"]);
    for job in rotation["jobs"].as_array().expect("jobs") {
        a.expect_confirmed(job["job_id"].as_str().expect("job id"));
    }
    let promoted = a.json(&["signing-key", "promote"]);
    assert_eq!(promoted["signing_key"], rotation["next_key"]);

    assert_eq!(
        queue_account(&b, "e2e-repkey", "stale"),
        None,
        "replica B queued a job signed with the old key"
    );
    assert!(
        b.log().contains("is no longer the one in use"),
        "B's log does not name the cause: {}",
        b.log()
    );
    let on_a = queue_account(&a, "e2e-repkey", "fresh").expect("queued on A");
    a.expect_confirmed(&on_a);

    // The operator copies the new key to B and restarts it.
    std::fs::copy(
        a.data_dir.path().join("data/signing.key"),
        b.data_dir.path().join("data/signing.key"),
    )
    .expect("copy signing.key");
    let b = b.restart_after(Duration::ZERO);
    let on_b = queue_account(&b, "e2e-repkey", "again").expect("queued on B after the restart");
    b.expect_confirmed(&on_b);
    assert!(host.passwd_line("stale").is_none());
    real.assert_unchanged();
}
