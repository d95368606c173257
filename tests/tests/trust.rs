//! Issue 4, end to end: who may make an agent act. Host removal, and (as they land) signed
//! jobs, pinned transport and the audit trail.

use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, TestHost, e2e_enabled};
use serde_json::Value;

fn credential(host: &TestHost) -> String {
    let identity: Value =
        serde_json::from_str(&host.read("/var/lib/latch/identity.json")).expect("identity.json");
    identity["credential"]
        .as_str()
        .expect("credential")
        .to_owned()
}

/// Test 4: removing a host stops its credential within one request, cancels its queued jobs,
/// and stops its agent — also one that is in the middle of a long-poll.
#[test]
fn a_removed_host_is_locked_out_and_its_jobs_cancelled() {
    if !e2e_enabled("a_removed_host_is_locked_out_and_its_jobs_cancelled") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let idle = TestHost::start("e2e-rm1");
    let stopped = TestHost::start("e2e-rm2");
    idle.enroll_ok(&cp);
    stopped.enroll_ok(&cp);
    let mut idle_agent = idle.start_agent();
    let id = cp.create_job(&[
        "--host",
        "e2e-rm1",
        "--kind",
        "create-account",
        "--user",
        "ivy",
    ]);
    cp.expect_confirmed(&id);

    // A host whose agent is down, with work queued.
    let queued: Vec<String> = ["jo", "kim"]
        .iter()
        .map(|user| {
            cp.create_job(&[
                "--host",
                "e2e-rm2",
                "--kind",
                "create-account",
                "--user",
                user,
            ])
        })
        .collect();
    let stopped_credential = credential(&stopped);
    assert_eq!(
        cp.api_as(&stopped_credential, "GET", "/v1/agent/jobs?wait=0")
            .0,
        200
    );
    let removed = cp.json(&["hosts", "remove", "e2e-rm2"]);
    assert_eq!(removed["cancelled_jobs"], 2, "{removed}");
    for id in &queued {
        cp.expect_failed(id, "host_removed");
    }
    let (status, error) = cp.api_as(&stopped_credential, "GET", "/v1/agent/jobs?wait=0");
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("authentication_error")),
        "{error}"
    );
    let mut agent = stopped.start_agent();
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)),
        Some(78),
        "the agent of a removed host must stop with status 78"
    );
    assert!(
        stopped.agent_log().contains("re-enrolled"),
        "{}",
        stopped.agent_log()
    );
    assert!(stopped.passwd_line("jo").is_none() && stopped.passwd_line("kim").is_none());

    // An agent in the middle of a long-poll stops within that request.
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    cp.latchctl(&["hosts", "remove", "e2e-rm1"])
        .ok("hosts remove");
    assert_eq!(idle_agent.wait_exit(Duration::from_secs(10)), Some(78));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long-polling agent took {:?} to stop",
        started.elapsed()
    );
    let hosts = cp.json(&["hosts", "list"]);
    assert_eq!(
        hosts["list"],
        serde_json::json!([]),
        "removed hosts are no longer listed"
    );
    assert!(
        idle.passwd_line("ivy").is_some(),
        "removal does not touch accounts already on the host"
    );
    let missing = cp.latchctl(&["hosts", "remove", "e2e-rm1"]);
    assert_ne!(missing.code, 0);
    real.assert_unchanged();
}
