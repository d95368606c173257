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
/// and puts its agent in revoke-only mode (polling stopped) — also one that is in the middle
/// of a long-poll.
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
    stopped.wait(
        "the agent of a removed host to enter revoke-only mode",
        Duration::from_secs(10),
        || {
            stopped
                .agent_log()
                .contains("revoke-only mode")
                .then_some(())
        },
    );
    assert_eq!(
        agent.wait_exit(Duration::from_millis(500)),
        None,
        "the agent keeps running to revoke expiring grants"
    );
    assert!(stopped.passwd_line("jo").is_none() && stopped.passwd_line("kim").is_none());

    // An agent in the middle of a long-poll stops within that request.
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    cp.latchctl(&["hosts", "remove", "e2e-rm1"])
        .ok("hosts remove");
    idle.wait(
        "the long-polling agent to stop polling",
        Duration::from_secs(10),
        || idle.agent_log().contains("revoke-only mode").then_some(()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long-polling agent took {:?} to stop polling",
        started.elapsed()
    );
    assert_eq!(idle_agent.wait_exit(Duration::from_millis(200)), None);
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

/// Adds a job row for `host_id` straight into the database, the way an attacker with write
/// access to it would, at the end of the host's queue.
fn insert_forged_job(cp: &ControlPlane, host_id: &str, id: &str, payload: &str, signature: &str) {
    let seq: i64 = cp
        .sql(&format!(
            "SELECT next_seq FROM hosts WHERE id = '{host_id}'"
        ))
        .trim()
        .parse()
        .expect("next_seq");
    let spec = serde_json::json!({"kind": "create-account", "user": "mallory", "groups": ["sudo"]})
        .to_string();
    cp.sql(&format!(
        "UPDATE hosts SET next_seq = next_seq + 1 WHERE id = '{host_id}'; \
         INSERT INTO jobs (id, host_id, seq, kind, spec, status, created_at, subject_user, payload, signature) \
         VALUES ('{id}', '{host_id}', {seq}, 'create-account', '{spec}', 'pending', 0, 'mallory', '{payload}', '{signature}');"
    ));
}

fn forged_payload(host_id: &str, id: &str) -> String {
    serde_json::json!({
        "v": 1, "host_id": host_id, "job_id": id, "seq": 99, "not_after": null,
        "spec": {"kind": "create-account", "user": "mallory", "groups": ["sudo"]}
    })
    .to_string()
}

/// Test 3: jobs forged in the database — unsigned, signed with another key, signed for another
/// host, replayed, past their deadline — are refused by the agent with their codes, and the test
/// host's account files do not change.
#[test]
fn forged_and_replayed_jobs_are_refused() {
    if !e2e_enabled("forged_and_replayed_jobs_are_refused") {
        return;
    }
    use base64::Engine as _;
    use ring::signature::Ed25519KeyPair;
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--job-ttl", "3s"]);
    let host = TestHost::start("e2e-forge1");
    let other = TestHost::start("e2e-forge2");
    let host_id = host.enroll_ok(&cp);
    other.enroll_ok(&cp);
    let agent = host.start_agent();
    let legit = cp.create_job(&[
        "--host",
        "e2e-forge1",
        "--kind",
        "create-account",
        "--user",
        "legit",
    ]);
    cp.expect_confirmed(&legit);
    agent.stop();
    let files = || {
        (
            host.read("/etc/passwd"),
            host.read("/etc/group"),
            host.read("/etc/shadow"),
        )
    };
    let before = files();

    // Unsigned.
    insert_forged_job(
        &cp,
        &host_id,
        "forged-unsigned",
        &forged_payload(&host_id, "forged-unsigned"),
        "",
    );
    // Signed, but with a key that is not the control plane's.
    let rogue = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("key")
            .as_ref(),
    )
    .expect("key");
    let payload = forged_payload(&host_id, "forged-rogue-key");
    let signature =
        base64::engine::general_purpose::STANDARD.encode(rogue.sign(payload.as_bytes()).as_ref());
    insert_forged_job(&cp, &host_id, "forged-rogue-key", &payload, &signature);
    // A genuine job for the other host, moved into this host's queue.
    let foreign = cp.create_job(&[
        "--host",
        "e2e-forge2",
        "--kind",
        "create-account",
        "--user",
        "mallory",
        "--group",
        "sudo",
    ]);
    cp.sql(&format!(
        "UPDATE jobs SET host_id = '{host_id}', seq = (SELECT next_seq FROM hosts WHERE id = '{host_id}') WHERE id = '{foreign}'; \
         UPDATE hosts SET next_seq = next_seq + 1 WHERE id = '{host_id}';"
    ));
    // The job this host already applied, put back in its queue.
    cp.sql(&format!(
        "UPDATE jobs SET status = 'pending', finished_at = NULL, lease = NULL, lease_expires_at = NULL, \
         seq = (SELECT next_seq FROM hosts WHERE id = '{host_id}') WHERE id = '{legit}'; \
         UPDATE hosts SET next_seq = next_seq + 1 WHERE id = '{host_id}';"
    ));
    // A genuine grant that reaches the host after its deadline (--job-ttl 3s).
    let late = cp.create_job(&[
        "--host",
        "e2e-forge1",
        "--kind",
        "create-account",
        "--user",
        "late",
    ]);
    std::thread::sleep(Duration::from_secs(4));

    let _agent = host.start_agent();
    for (id, code) in [
        ("forged-unsigned", "unsigned_job"),
        ("forged-rogue-key", "bad_signature"),
        (foreign.as_str(), "wrong_host"),
        (legit.as_str(), "replayed_job"),
        (late.as_str(), "job_expired"),
    ] {
        cp.expect_failed(id, code);
    }
    assert_eq!(
        files(),
        before,
        "a refused job changed the test host's account files"
    );
    assert!(host.passwd_line("mallory").is_none() && host.passwd_line("late").is_none());
    assert!(host.agent_log().contains("refused a job before acting"));
    real.assert_unchanged();
}

/// Test 9: a real history verifies; the trail holds no secret; the table refuses changes; and
/// editing any single row (after dropping that guard, as an attacker with the database file
/// would) makes `latchctl audit verify` exit 1 naming that row.
#[test]
fn the_audit_trail_is_complete_secret_free_and_tamper_evident() {
    if !e2e_enabled("the_audit_trail_is_complete_secret_free_and_tamper_evident") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-audit1");
    let enroll_token = cp.enroll_token("10m", 1);
    host.enroll(&cp, &enroll_token).ok("enroll");
    let _agent = host.start_agent();
    cp.expect_confirmed(&cp.create_job(&[
        "--host",
        "e2e-audit1",
        "--kind",
        "create-account",
        "--user",
        "lena",
    ]));
    let password = "audit trail password";
    let job = cp.create_password_job("e2e-audit1", "lena", password);
    cp.expect_confirmed(job["id"].as_str().expect("id"));
    cp.expect_failed(
        &cp.create_job(&[
            "--host",
            "e2e-audit1",
            "--kind",
            "add-group",
            "--user",
            "lena",
            "--group",
            "root",
        ]),
        "group_not_allowed",
    );
    assert_eq!(cp.api_as("latch_admin_guess", "GET", "/v1/hosts").0, 401);

    let verify = cp.latchctl(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{} {}", verify.stdout, verify.stderr);
    assert!(verify.stdout.contains("intact"));
    let entries = cp.json(&["audit", "list"]);
    let actions: Vec<&str> = entries["list"]
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    for action in [
        "enroll_token.create",
        "host.enroll",
        "job.create",
        "job.deliver",
        "job.outcome",
        "auth.failure",
    ] {
        assert!(actions.contains(&action), "no {action} in {actions:?}");
    }
    let by_host = cp.json(&[
        "audit",
        "list",
        "--host",
        "e2e-audit1",
        "--actor",
        "service:admin",
    ]);
    assert!(
        by_host["list"]
            .as_array()
            .expect("list")
            .iter()
            .all(|e| e["actor"] == "service:admin")
    );
    let hashes = host.shadow_line("lena").expect("shadow");
    let hash = hashes.split(':').nth(1).expect("hash");
    let dump = cp.sql("SELECT * FROM audit_log");
    for secret in [
        cp.token(),
        cp.api_key.as_str(),
        enroll_token.as_str(),
        credential(&host).as_str(),
        password,
        hash,
    ] {
        assert!(!dump.contains(secret), "a secret is in the audit log");
    }

    // Append-only.
    let refused = cp.try_sql("UPDATE audit_log SET actor = 'x' WHERE id = 1");
    assert!(refused.code != 0 && refused.stderr.contains("append-only"));

    // Any single edited row is found.
    cp.drop_trigger("audit_log_no_update");
    cp.drop_trigger("audit_log_no_delete");
    let last: i64 = cp
        .sql("SELECT max(id) FROM audit_log")
        .trim()
        .parse()
        .expect("max id");
    for (id, column) in [(1, "actor"), (last / 2, "detail"), (last, "at")] {
        let original = cp.sql(&format!(
            "SELECT {} FROM audit_log WHERE id = {id}",
            cp.database.quote(column)
        ));
        let tampered = if column == "at" {
            "at + 1".to_owned()
        } else {
            "'{}'".to_owned()
        };
        cp.sql(&format!(
            "UPDATE audit_log SET {column} = {tampered} WHERE id = {id}"
        ));
        let broken = cp.latchctl(&["audit", "verify"]);
        assert_eq!(
            broken.code, 1,
            "editing {column} of entry {id} went unnoticed: {}",
            broken.stdout
        );
        assert!(
            broken.stdout.contains(&format!("entry {id}:")),
            "{}",
            broken.stdout
        );
        cp.sql(&format!(
            "UPDATE audit_log SET {column} = {} WHERE id = {id}",
            original.trim()
        ));
        assert_eq!(
            cp.latchctl(&["audit", "verify"]).code,
            0,
            "restoring entry {id} must restore the chain"
        );
    }
    cp.sql(&format!("DELETE FROM audit_log WHERE id = {}", last / 2));
    let removed = cp.latchctl(&["audit", "verify"]);
    assert_eq!(removed.code, 1, "a deleted entry went unnoticed");
    real.assert_unchanged();
}

/// Test 5: a state directory copied to a host with another machine-id (a cloned image) never
/// talks to the control plane with the old identity (the agent stays in revoke-only mode).
#[test]
fn a_cloned_identity_refuses_to_run() {
    if !e2e_enabled("a_cloned_identity_refuses_to_run") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let original = TestHost::start("e2e-clone1");
    original.enroll_ok(&cp);
    let clone = TestHost::start("e2e-clone2");
    let identity = original.read("/var/lib/latch/identity.json");
    clone.write("/var/lib/latch/identity.json", &identity);
    clone
        .exec(&["chmod", "0600", "/var/lib/latch/identity.json"])
        .ok("chmod");
    let mut agent = clone.start_agent();
    clone.wait(
        "the clone to enter revoke-only mode",
        Duration::from_secs(10),
        || {
            clone
                .agent_log()
                .contains("machine-id changed")
                .then_some(())
        },
    );
    assert_eq!(agent.wait_exit(Duration::from_secs(1)), None);
    let status = clone.exec(&["/mnt/bin/latch-agent", "status"]);
    assert!(status.stdout.contains("REVOKE-ONLY"), "{}", status.stdout);
    assert_eq!(
        clone.read("/var/lib/latch/identity.json"),
        identity,
        "the identity is left for the operator"
    );
    let hosts = cp.json(&["hosts", "list"]);
    assert_eq!(
        hosts["list"][0]["last_seen"],
        Value::Null,
        "the clone never talked to the control plane"
    );
    real.assert_unchanged();
}

/// Test 1: enrollment with a wrong CA fingerprint fails and writes nothing (the token is not
/// even spent); with the right one it succeeds. Plain HTTP is refused on both sides without
/// `--insecure-http`, and the server refuses `--insecure-http` off loopback.
#[test]
fn enrollment_pins_the_control_plane_ca() {
    if !e2e_enabled("enrollment_pins_the_control_plane_ca") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-pin1");
    let token = cp.enroll_token("10m", 1);
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let refused = host.enroll_via(&cp.url, &wrong, &token);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("does not match the pinned fingerprint"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        host.exec(&["test", "-e", "/var/lib/latch/identity.json"])
            .code,
        1,
        "a refused enrollment wrote state"
    );
    let plain = host.exec_stdin(
        &[
            latch_e2e::AGENT,
            "enroll",
            "--server",
            &cp.url.replace("https://", "http://"),
            "--ca-fingerprint",
            &cp.fingerprint,
            "--token-file",
            "-",
        ],
        token.as_bytes(),
    );
    assert_ne!(plain.code, 0);
    assert!(
        plain.stderr.contains("plain http:// is refused"),
        "{}",
        plain.stderr
    );
    host.enroll_via(&cp.url, &cp.fingerprint, &token)
        .ok("enroll with the right fingerprint and the same token");
    let identity: Value =
        serde_json::from_str(&host.read("/var/lib/latch/identity.json")).expect("identity");
    assert_eq!(identity["ca_fingerprint"], cp.fingerprint.as_str());
    let listing = cp
        .latchctl(&["enroll-token", "create"])
        .ok("enroll-token create");
    assert!(
        listing.contains(&format!("--ca-fingerprint {}", cp.fingerprint)),
        "{listing}"
    );

    let insecure = std::process::Command::new(latch_e2e::binary("latch-control"))
        .args([
            "serve",
            "--insecure-http",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(cp.data_dir.path().join("other"))
        .output()
        .expect("latch-control");
    assert!(!insecure.status.success());
    assert!(String::from_utf8_lossy(&insecure.stderr).contains("loopback only"));
    real.assert_unchanged();
}

/// Test 2: a man in the middle — a TLS proxy that terminates the connection with a certificate
/// of its own and forwards to the real control plane — is refused, at enrollment and by a
/// running agent.
#[test]
fn a_tls_man_in_the_middle_is_refused() {
    if !e2e_enabled("a_tls_man_in_the_middle_is_refused") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, cert, pem) = (
        dir.path().join("mitm.key"),
        dir.path().join("mitm.crt"),
        dir.path().join("mitm.pem"),
    );
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::write(
        &pem,
        [
            std::fs::read(&cert).expect("cert"),
            std::fs::read(&key).expect("key"),
        ]
        .concat(),
    )
    .expect("pem");
    let port = latch_e2e::free_port();
    let server_port = cp.url.rsplit(':').next().expect("port");
    let mut proxy = std::process::Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},verify=0",
            pem.display()
        ))
        .arg(format!("OPENSSL:127.0.0.1:{server_port},verify=0"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("socat");
    latch_e2e::wait_for("the proxy", Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(drop)
    });
    let proxy_url = format!("https://127.0.0.1:{port}");

    let host = TestHost::start("e2e-mitm1");
    let token = cp.enroll_token("10m", 1);
    let refused = host.enroll_via(&proxy_url, &cp.fingerprint, &token);
    assert_ne!(refused.code, 0, "enrollment through the proxy succeeded");
    assert!(
        refused
            .stderr
            .contains("does not match the pinned fingerprint"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        host.exec(&["test", "-e", "/var/lib/latch/identity.json"])
            .code,
        1
    );

    // An enrolled agent whose traffic is redirected to the proxy stops talking, and applies nothing.
    host.enroll_via(&cp.url, &cp.fingerprint, &token)
        .ok("enroll directly");
    let mut identity: Value =
        serde_json::from_str(&host.read("/var/lib/latch/identity.json")).expect("identity");
    identity["server"] = Value::String(proxy_url);
    host.write("/var/lib/latch/identity.json", &identity.to_string());
    let _agent = host.start_agent();
    let id = cp.create_job(&[
        "--host",
        "e2e-mitm1",
        "--kind",
        "create-account",
        "--user",
        "nina",
    ]);
    host.wait(
        "the agent to refuse the proxy",
        Duration::from_secs(20),
        || {
            host.agent_log()
                .contains("does not match the pinned fingerprint")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let job = cp.job(&id);
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_u64()),
        (Some("pending"), Some(0)),
        "{job:#}"
    );
    assert!(host.passwd_line("nina").is_none());
    let _ = proxy.kill();
    let _ = proxy.wait();
    real.assert_unchanged();
}

/// The capability bounding set of the shipped unit, as `setpriv --bounding-set` wants it.
fn unit_capabilities(except: &str) -> String {
    let unit = include_str!("../../packaging/systemd/latch-agent.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|cap| cap.trim_start_matches("CAP_").to_ascii_lowercase())
        .filter(|cap| cap != except)
        .map(|cap| format!("+{cap}"))
        .collect();
    format!("-all,{}", caps.join(","))
}

/// Least privilege: every job kind works with only the unit's capabilities and no_new_privs
/// (applied with setpriv, as the unit would); without CAP_CHOWN the same work fails, which shows
/// the restriction is in force.
#[test]
fn the_agent_works_with_the_units_capabilities_only() {
    if !e2e_enabled("the_agent_works_with_the_units_capabilities_only") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-caps1");
    host.enroll_ok(&cp);
    let agent = host.start_agent_with(&format!(
        "setpriv --no-new-privs --bounding-set {} --",
        unit_capabilities("")
    ));
    host.wait(
        "the agent to run under setpriv",
        Duration::from_secs(10),
        || {
            (host.read(&format!("/proc/{}/comm", agent.ns_pid)).trim() == "latch-agent")
                .then_some(())
        },
    );
    let status = host.read(&format!("/proc/{}/status", agent.ns_pid));
    let bounding = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .expect("CapBnd");
    assert_ne!(
        bounding.split_whitespace().nth(1),
        Some("000001ffffffffff"),
        "the bounding set was not reduced: {bounding}"
    );
    assert!(
        status.lines().any(|l| l == "NoNewPrivs:\t1"),
        "no_new_privs is not set"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (_key, public) = latch_e2e::ssh_keypair(dir.path(), "olga");
    let keys = dir.path().join("keys.pub");
    std::fs::write(&keys, &public).expect("keys");
    let h = ["--host", "e2e-caps1", "--user", "olga"];
    cp.expect_confirmed(
        &cp.create_job(
            &[
                &h[..],
                &[
                    "--kind",
                    "create-account",
                    "--group",
                    "sudo",
                    "--ssh-key-file",
                    keys.to_str().expect("path"),
                ],
            ]
            .concat(),
        ),
    );
    cp.expect_confirmed(
        &cp.create_job(&[&h[..], &["--kind", "remove-group", "--group", "sudo"]].concat()),
    );
    cp.expect_confirmed(
        &cp.create_job(&[&h[..], &["--kind", "add-group", "--group", "sudo"]].concat()),
    );
    let out = cp.latchctl_stdin(
        &[
            "--output",
            "json",
            "jobs",
            "create",
            "--host",
            "e2e-caps1",
            "--user",
            "olga",
            "--kind",
            "set-password",
            "--password-stdin",
        ],
        Some(b"least privilege password\n"),
    );
    let job: Value = serde_json::from_str(&out.ok("set-password")).expect("json");
    cp.expect_confirmed(job["id"].as_str().expect("id"));
    host.exec(&[
        "su",
        "-s",
        "/bin/sh",
        "olga",
        "-c",
        "nohup sleep 1000 >/dev/null 2>&1 &",
    ])
    .ok("a user process");
    cp.expect_confirmed(&cp.create_job(&[&h[..], &["--kind", "delete-account"]].concat()));
    assert!(host.passwd_line("olga").is_none());
    agent.stop();

    let _weak = host.start_agent_with(&format!(
        "setpriv --no-new-privs --bounding-set {} --",
        unit_capabilities("chown")
    ));
    let id = cp.create_job(&[
        "--host",
        "e2e-caps1",
        "--kind",
        "create-account",
        "--user",
        "pete",
        "--ssh-key-file",
        keys.to_str().expect("path"),
    ]);
    let job = cp.wait_job(&id);
    assert_eq!(
        job["status"], "failed",
        "without CAP_CHOWN the account's home and keys cannot be handed over: {job:#}"
    );
    real.assert_unchanged();
}

/// Host credential rotation: the old credential stops working, the agent goes on with the new
/// one, and a rotation interrupted after the control plane switched is completed at start.
#[test]
fn host_credentials_rotate_without_locking_the_host_out() {
    if !e2e_enabled("host_credentials_rotate_without_locking_the_host_out") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-rot1");
    host.enroll_ok(&cp);
    let old = credential(&host);
    host.exec(&[
        latch_e2e::AGENT,
        "rotate-credential",
        "--state-dir",
        "/var/lib/latch",
    ])
    .ok("rotate-credential");
    let new = credential(&host);
    assert_ne!(old, new);
    assert_eq!(
        cp.api_as(&old, "GET", "/v1/agent/self").0,
        401,
        "the old credential still works"
    );
    assert_eq!(cp.api_as(&new, "GET", "/v1/agent/self").0, 200);
    let agent = host.start_agent();
    cp.expect_confirmed(&cp.create_job(&[
        "--host",
        "e2e-rot1",
        "--kind",
        "create-account",
        "--user",
        "quinn",
    ]));
    agent.stop();

    // Interrupted: the control plane switched to the pending credential, the agent never
    // promoted it. The next start settles it.
    let pending = format!("latch_host_{}", "5a".repeat(32));
    let mut identity: Value =
        serde_json::from_str(&host.read("/var/lib/latch/identity.json")).expect("identity");
    identity["pending_credential"] = Value::String(pending.clone());
    host.write("/var/lib/latch/identity.json", &identity.to_string());
    let (status, _) = cp.post_as(
        &new,
        "/v1/agent/credential",
        &serde_json::json!({"new_credential": pending}),
    );
    assert_eq!(status, 204);
    let _agent = host.start_agent();
    cp.expect_confirmed(&cp.create_job(&[
        "--host",
        "e2e-rot1",
        "--kind",
        "add-group",
        "--user",
        "quinn",
        "--group",
        "sudo",
    ]));
    assert_eq!(
        credential(&host),
        pending,
        "the pending credential was not promoted"
    );
    let audit = cp.json(&["audit", "list", "--host", "e2e-rot1"]);
    let rotations = audit["list"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["action"] == "host.credential_rotated")
        .count();
    assert_eq!(rotations, 2);
    let (status, _) = cp.post_as(
        &pending,
        "/v1/agent/credential",
        &serde_json::json!({"new_credential": "latch_host_short"}),
    );
    assert_eq!(status, 400, "a malformed new credential must be refused");
    real.assert_unchanged();
}

/// Signing-key rotation: every host learns the next key through a job signed with the current
/// one; promotion waits for all of them; after it, jobs signed with the old key are refused.
#[test]
fn the_signing_key_rotates_and_the_old_key_stops_working() {
    if !e2e_enabled("the_signing_key_rotates_and_the_old_key_stops_working") {
        return;
    }
    use base64::Engine as _;
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let online = TestHost::start("e2e-key1");
    let offline = TestHost::start("e2e-key2");
    let online_id = online.enroll_ok(&cp);
    offline.enroll_ok(&cp);
    let online_agent = online.start_agent();

    let rotation = cp.json(&["signing-key", "rotate"]);
    let next_key = rotation["next_key"].as_str().expect("next_key").to_owned();
    let jobs = rotation["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 2);
    let job_of = |host_id: &str| {
        jobs.iter()
            .find(|j| j["host_id"] == host_id)
            .and_then(|j| j["job_id"].as_str())
            .expect("job")
            .to_owned()
    };
    cp.expect_confirmed(&job_of(&online_id));
    let identity: Value =
        serde_json::from_str(&online.read("/var/lib/latch/identity.json")).expect("identity");
    assert_eq!(identity["next_signing_key"], next_key.as_str());

    let early = cp.latchctl(&["signing-key", "promote"]);
    assert_ne!(early.code, 0, "promotion must wait for every host");
    assert!(
        early.stderr.contains("have not confirmed"),
        "{}",
        early.stderr
    );
    let _offline_agent = offline.start_agent();
    let offline_job = jobs
        .iter()
        .find(|j| j["host_id"] != online_id.as_str())
        .and_then(|j| j["job_id"].as_str())
        .expect("job")
        .to_owned();
    cp.expect_confirmed(&offline_job);
    let promoted = cp.json(&["signing-key", "promote"]);
    assert_eq!(promoted["signing_key"], next_key.as_str());

    // Jobs signed with the new key are applied, and each agent switches to it.
    cp.expect_confirmed(&cp.create_job(&[
        "--host",
        "e2e-key1",
        "--kind",
        "create-account",
        "--user",
        "rita",
    ]));
    cp.expect_confirmed(&cp.create_job(&[
        "--host",
        "e2e-key2",
        "--kind",
        "create-account",
        "--user",
        "sam",
    ]));
    let identity: Value =
        serde_json::from_str(&online.read("/var/lib/latch/identity.json")).expect("identity");
    assert_eq!(identity["signing_key"], next_key.as_str());
    assert!(identity.get("next_signing_key").is_none_or(Value::is_null));

    // The old key no longer makes a job the agent accepts.
    online_agent.stop();
    let old =
        std::fs::read(cp.data_dir.path().join("data/signing.key.old")).expect("signing.key.old");
    let old = ring::signature::Ed25519KeyPair::from_pkcs8(&old).expect("old key");
    let payload = forged_payload(&online_id, "signed-with-old-key");
    let signature =
        base64::engine::general_purpose::STANDARD.encode(old.sign(payload.as_bytes()).as_ref());
    insert_forged_job(&cp, &online_id, "signed-with-old-key", &payload, &signature);
    let _online_agent = online.start_agent();
    cp.expect_failed("signed-with-old-key", "bad_signature");
    assert!(online.passwd_line("mallory").is_none());
    let audit = cp.json(&["audit", "list", "--actor", "service:admin"]);
    assert!(
        audit["list"]
            .as_array()
            .expect("list")
            .iter()
            .any(|e| e["action"] == "signing_key.promoted")
    );
    real.assert_unchanged();
}
