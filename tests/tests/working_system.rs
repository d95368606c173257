//! Issue 2, end to end: enroll test hosts, queue the core account jobs through `latchctl` and
//! the HTTP API, and check the real account files, homes and keys inside the test hosts.

use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, TestHost, e2e_enabled, wait_for};
use serde_json::Value;

fn host_entry<'a>(hosts: &'a Value, name: &str) -> &'a Value {
    hosts["list"]
        .as_array()
        .expect("list")
        .iter()
        .find(|h| h["hostname"] == name)
        .unwrap_or_else(|| panic!("host {name} not listed: {hosts:#}"))
}

fn ssh_key() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("id_ed25519");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e@latch", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let file = dir.path().join("keys");
    std::fs::write(&file, &public).expect("write key file");
    (dir, file, public.trim().to_owned())
}

/// Test 1: two hosts enroll; both listed online with their facts; used-up and expired tokens
/// are refused and write nothing.
#[test]
fn hosts_enroll_and_bad_tokens_are_refused() {
    if !e2e_enabled("hosts_enroll_and_bad_tokens_are_refused") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let (h1, h2, h3) = (
        TestHost::start("e2e-web1"),
        TestHost::start("e2e-web2"),
        TestHost::start("e2e-web3"),
    );
    let token = cp.enroll_token("10m", 2);
    h1.enroll(&cp, &token).ok("enroll web1");
    h2.enroll(&cp, &token).ok("enroll web2");
    let used_up = h3.enroll(&cp, &token);
    assert_ne!(used_up.code, 0);
    assert!(
        used_up.stderr.contains("no uses left"),
        "{}",
        used_up.stderr
    );
    assert_eq!(
        h3.exec(&["test", "-e", "/var/lib/latch/identity.json"])
            .code,
        1,
        "a refused enrollment wrote state"
    );

    let short = cp.enroll_token("1s", 5);
    std::thread::sleep(Duration::from_millis(1500));
    let expired = h3.enroll(&cp, &short);
    assert_ne!(expired.code, 0);
    assert!(expired.stderr.contains("expired"), "{}", expired.stderr);
    assert_eq!(
        h3.exec(&["test", "-e", "/var/lib/latch/identity.json"])
            .code,
        1
    );

    let a1 = h1.start_agent();
    let a2 = h2.start_agent();
    let hosts = wait_for("both hosts online", Duration::from_secs(20), || {
        let hosts = cp.json(&["hosts", "list"]);
        let online = |name| host_entry(&hosts, name)["online"] == true;
        (online("e2e-web1") && online("e2e-web2")).then_some(hosts)
    });
    assert_eq!(hosts["list"].as_array().expect("list").len(), 2);
    for host in [&h1, &h2] {
        let entry = host_entry(&hosts, &host.name);
        assert_eq!(entry["machine_id"], host.machine_id.as_str());
        assert!(entry["cpus"].as_u64().expect("cpus") >= 1);
        assert!(entry["memory_bytes"].as_u64().expect("memory") > 0);
        assert_eq!(entry["arch"], std::env::consts::ARCH);
        assert!(!entry["kernel"].as_str().expect("kernel").is_empty());
        assert!(entry["last_seen"].is_string());
        // hosts show works by name and by id.
        let by_name = cp.json(&["hosts", "show", &host.name]);
        let by_id = cp.json(&["hosts", "show", entry["id"].as_str().expect("id")]);
        assert_eq!(by_name["id"], by_id["id"]);
    }
    let table = cp.latchctl(&["hosts", "list"]).ok("hosts list table");
    assert!(
        table.starts_with("ID") && table.contains("e2e-web1") && table.contains("yes"),
        "{table}"
    );
    let status = h1
        .exec(&[latch_e2e::AGENT, "status", "--state-dir", "/var/lib/latch"])
        .ok("agent status");
    assert!(
        status.contains("reachable") && status.contains("running"),
        "{status}"
    );
    a1.stop();
    a2.stop();
    real.assert_unchanged();
}

/// Test 2: create-account with sudo, an SSH key and an expiry on host 1 only.
#[test]
fn create_account_on_one_host_only() {
    if !e2e_enabled("create_account_on_one_host_only") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let (h1, h2) = (TestHost::start("e2e-db1"), TestHost::start("e2e-db2"));
    h1.enroll_ok(&cp);
    h2.enroll_ok(&cp);
    let _a1 = h1.start_agent();
    let _a2 = h2.start_agent();
    let (_dir, key_file, public_key) = ssh_key();
    let id = cp.create_job(&[
        "--host",
        "e2e-db1",
        "--kind",
        "create-account",
        "--user",
        "alice",
        "--group",
        "sudo",
        "--ssh-key-file",
        key_file.to_str().expect("path"),
        "--expires-in",
        "2h",
    ]);
    let job = cp.expect_confirmed(&id);
    assert_eq!(job["attempts"], 1);
    assert!(job["finished_at"].is_string());
    assert!(job["error"].is_null());

    let passwd = h1
        .passwd_line("alice")
        .expect("alice in host 1's /etc/passwd");
    let fields: Vec<&str> = passwd.split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!((60000..=60999).contains(&uid), "{passwd}");
    assert_eq!(fields[4], "latch-managed account");
    assert_eq!(fields[5], "/home/alice");
    assert_eq!(fields[6], "/bin/bash");
    assert!(h1.group_members("sudo").contains(&"alice".to_owned()));
    assert!(
        h1.group_members("latch-managed")
            .contains(&"alice".to_owned())
    );
    let home = h1
        .exec(&["stat", "-c", "%u %F", "/home/alice"])
        .ok("stat home");
    assert_eq!(home.trim(), format!("{uid} directory"));
    // The key carries its end, so sshd refuses it after expiry even without the agent.
    let key_line = h1.read("/home/alice/.ssh/authorized_keys");
    assert!(
        key_line.starts_with("expiry-time=\"") && key_line.trim().ends_with(&public_key),
        "{key_line}"
    );
    // And the shadow account expiry is set (day granularity, rounded up).
    let shadow = h1.shadow_line("alice").expect("shadow");
    let expire_day: i64 = shadow
        .split(':')
        .nth(7)
        .expect("expire field")
        .parse()
        .expect("expiry day set");
    // The grant ends 2 h after the control plane took the job: the account expires on that day
    // or the next (rounded up) — two days from today late in the evening (UTC).
    let ends =
        chrono::DateTime::parse_from_rfc3339(job["expires_at"].as_str().expect("expires_at"))
            .expect("an RFC 3339 end")
            .timestamp();
    let end_day = ends.div_euclid(86_400);
    assert!(
        (end_day..=end_day + 1).contains(&expire_day),
        "{shadow} (grant ends at {ends})"
    );
    let modes = h1
        .exec(&[
            "stat",
            "-c",
            "%a %u",
            "/home/alice/.ssh",
            "/home/alice/.ssh/authorized_keys",
        ])
        .ok("stat keys");
    assert_eq!(modes, format!("700 {uid}\n600 {uid}\n"));
    let records: Value =
        serde_json::from_str(&h1.read("/var/lib/latch/accounts.json")).expect("accounts.json");
    assert!(
        records["accounts"]["alice"]["expires_at"].is_string(),
        "{records:#}"
    );
    assert_eq!(records["uid_high_water"], uid);

    assert!(
        h2.passwd_line("alice").is_none(),
        "alice leaked onto host 2"
    );
    assert!(!h2.group_members("sudo").contains(&"alice".to_owned()));
    assert_eq!(h2.exec(&["test", "-e", "/home/alice"]).code, 1);
    h1.assert_account_files_clean();
    h2.assert_account_files_clean();
    real.assert_unchanged();
}

/// Test 3: remove-group, set-password (checked through PAM), delete-account.
#[test]
fn remove_group_set_password_and_delete() {
    if !e2e_enabled("remove_group_set_password_and_delete") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-app1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    let h = ["--host", "e2e-app1", "--user", "bob"];
    let create =
        cp.create_job(&[&h[..], &["--kind", "create-account", "--group", "sudo"]].concat());
    cp.expect_confirmed(&create);
    assert!(host.group_members("sudo").contains(&"bob".to_owned()));

    let remove = cp.create_job(&[&h[..], &["--kind", "remove-group", "--group", "sudo"]].concat());
    cp.expect_confirmed(&remove);
    assert!(!host.group_members("sudo").contains(&"bob".to_owned()));
    assert!(
        host.group_members("latch-managed")
            .contains(&"bob".to_owned()),
        "the marker must stay"
    );

    let password = "correct horse battery staple";
    let job = cp.create_password_job("e2e-app1", "bob", password);
    assert_eq!(job["params"]["password_hash"], "<redacted>");
    cp.expect_confirmed(job["id"].as_str().expect("id"));
    let shadow = host.shadow_line("bob").expect("shadow");
    let hash = shadow.split(':').nth(1).expect("hash");
    assert!(hash.starts_with("$6$"), "{shadow}");
    let good = host.exec_stdin(
        &["pamtester", "login", "bob", "authenticate"],
        format!("{password}\n").as_bytes(),
    );
    assert_eq!(
        good.code, 0,
        "PAM refused the new password: {} {}",
        good.stdout, good.stderr
    );
    let bad = host.exec_stdin(
        &["pamtester", "login", "bob", "authenticate"],
        b"wrong password\n",
    );
    assert_ne!(bad.code, 0, "PAM accepted a wrong password");
    assert!(
        !cp.log().contains(password),
        "the password reached the server log"
    );
    assert!(
        !host.agent_log().contains(password) && !host.agent_log().contains(hash),
        "a secret reached the agent log"
    );
    assert!(
        !cp.database_dump().contains(password),
        "the plaintext password was stored"
    );

    let delete = cp.create_job(&[&h[..], &["--kind", "delete-account"]].concat());
    cp.expect_confirmed(&delete);
    assert!(host.passwd_line("bob").is_none());
    assert!(host.shadow_line("bob").is_none());
    assert_eq!(
        host.exec(&["test", "-e", "/home/bob"]).code,
        1,
        "home still exists"
    );
    let records: Value =
        serde_json::from_str(&host.read("/var/lib/latch/accounts.json")).expect("accounts.json");
    assert!(records["accounts"].get("bob").is_none());
    // A new account of the same name never gets the old UID (it could own leftover files).
    let old_uid = records["uid_high_water"].as_u64().expect("high-water mark");
    let again = cp.create_job(&[&h[..], &["--kind", "create-account"]].concat());
    cp.expect_confirmed(&again);
    let new_uid: u64 = host
        .passwd_line("bob")
        .expect("bob again")
        .split(':')
        .nth(2)
        .expect("uid")
        .parse()
        .expect("uid");
    assert!(
        new_uid > old_uid,
        "UID {new_uid} reused (high-water mark {old_uid})"
    );
    host.assert_account_files_clean();
    real.assert_unchanged();
}

/// Test 4: accounts Latch does not manage are never changed; groups the host does not allow are
/// never granted.
#[test]
fn unmanaged_accounts_and_disallowed_groups_are_refused() {
    if !e2e_enabled("unmanaged_accounts_and_disallowed_groups_are_refused") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-legacy1");
    host.exec(&["useradd", "--create-home", "legacy"])
        .ok("useradd legacy");
    let before = (
        host.passwd_line("legacy"),
        host.shadow_line("legacy"),
        host.read("/etc/group"),
    );
    host.enroll_ok(&cp);
    let _agent = host.start_agent();

    let delete = cp.create_job(&[
        "--host",
        "e2e-legacy1",
        "--kind",
        "delete-account",
        "--user",
        "legacy",
    ]);
    let job = cp.expect_failed(&delete, "account_not_managed");
    assert!(
        job["error"]["message"]
            .as_str()
            .expect("message")
            .contains("not created by Latch")
    );
    let out = cp.latchctl_stdin(
        &[
            "--output",
            "json",
            "jobs",
            "create",
            "--host",
            "e2e-legacy1",
            "--user",
            "legacy",
            "--kind",
            "set-password",
            "--password-stdin",
        ],
        Some(b"a new password\n"),
    );
    let job: Value = serde_json::from_str(&out.ok("set-password")).expect("json");
    cp.expect_failed(job["id"].as_str().expect("id"), "account_not_managed");
    let sudo = cp.create_job(&[
        "--host",
        "e2e-legacy1",
        "--kind",
        "add-group",
        "--user",
        "legacy",
        "--group",
        "sudo",
    ]);
    cp.expect_failed(&sudo, "account_not_managed");
    assert_eq!(
        (
            host.passwd_line("legacy"),
            host.shadow_line("legacy"),
            host.read("/etc/group")
        ),
        before
    );
    assert_eq!(host.exec(&["test", "-d", "/home/legacy"]).code, 0);

    let create = cp.create_job(&[
        "--host",
        "e2e-legacy1",
        "--kind",
        "create-account",
        "--user",
        "carol",
    ]);
    cp.expect_confirmed(&create);
    let root = cp.create_job(&[
        "--host",
        "e2e-legacy1",
        "--kind",
        "add-group",
        "--user",
        "carol",
        "--group",
        "root",
    ]);
    let job = cp.expect_failed(&root, "group_not_allowed");
    let message = job["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("may never be granted") && !message.contains("allowed_groups"),
        "root is never grantable, whatever the configuration: {message}"
    );
    assert!(!host.group_members("root").contains(&"carol".to_owned()));
    // A group with the new user's name is never adopted.
    host.exec(&["groupadd", "dave"]).ok("groupadd dave");
    let dave = cp.create_job(&[
        "--host",
        "e2e-legacy1",
        "--kind",
        "create-account",
        "--user",
        "dave",
    ]);
    cp.expect_failed(&dave, "group_exists");
    assert!(host.passwd_line("dave").is_none());
    let exists = cp.create_job(&[
        "--host",
        "e2e-legacy1",
        "--kind",
        "create-account",
        "--user",
        "legacy",
    ]);
    cp.expect_failed(&exists, "account_exists");
    host.assert_account_files_clean();
    real.assert_unchanged();
}

/// Test 5: hostile names are refused by the API with 400 and nothing is queued.
#[test]
fn hostile_names_are_refused_by_the_api() {
    if !e2e_enabled("hostile_names_are_refused_by_the_api") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-hostile1");
    host.enroll_ok(&cp);
    let long = "a".repeat(33);
    for name in ["-oops", "root", "a:b", "a\nb", long.as_str(), "../x", ""] {
        for kind in ["create-account", "delete-account"] {
            let body =
                serde_json::json!({"host": "e2e-hostile1", "kind": kind, "user": name}).to_string();
            let (status, error) = cp.api("POST", "/v1/jobs", Some(&body));
            assert_eq!(status, 400, "{kind} {name:?}: {error}");
            assert_eq!(error["code"], "invalid_request", "{name:?}");
        }
        let body = serde_json::json!({"host": "e2e-hostile1", "kind": "add-group", "user": "alice", "group": name}).to_string();
        if name != "root" {
            assert_eq!(
                cp.api("POST", "/v1/jobs", Some(&body)).0,
                400,
                "group {name:?}"
            );
        }
    }
    let key = "command=\"/bin/sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0w3v6V8cUq3n3E6Qm9cGxvX9k2hGJm0r2mM3s5C3P x";
    let body = serde_json::json!({"host": "e2e-hostile1", "kind": "create-account", "user": "alice", "ssh_keys": [key]}).to_string();
    assert_eq!(cp.api("POST", "/v1/jobs", Some(&body)).0, 400);
    let cli = cp.latchctl(&[
        "jobs",
        "create",
        "--host",
        "e2e-hostile1",
        "--kind",
        "create-account",
        "--user=-oops",
    ]);
    assert_ne!(cli.code, 0);
    assert!(cli.stderr.contains("invalid_request"), "{}", cli.stderr);
    let (status, jobs) = cp.api("GET", "/v1/jobs", None);
    assert_eq!(status, 200);
    assert_eq!(jobs["list"], serde_json::json!([]), "something was queued");
    real.assert_unchanged();
}

/// Test 6: a job queued while the agent is stopped stays pending and confirms once it starts.
#[test]
fn a_job_waits_for_a_stopped_agent() {
    if !e2e_enabled("a_job_waits_for_a_stopped_agent") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-offline1");
    host.enroll_ok(&cp);
    let id = cp.create_job(&[
        "--host",
        "e2e-offline1",
        "--kind",
        "create-account",
        "--user",
        "erin",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let job = cp.job(&id);
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_u64()),
        (Some("pending"), Some(0))
    );
    let pending = cp.json(&["jobs", "list", "--status", "pending"]);
    assert_eq!(pending["list"].as_array().expect("list").len(), 1);
    let timeout = cp.latchctl(&["jobs", "wait", &id, "--timeout", "1s"]);
    assert_eq!(timeout.code, 2, "jobs wait must exit 2 on timeout");
    assert!(host.passwd_line("erin").is_none());
    let _agent = host.start_agent();
    cp.expect_confirmed(&id);
    assert!(host.passwd_line("erin").is_some());
    real.assert_unchanged();
}

/// Test 7: with a connected idle agent, a job confirms in well under a second (long-poll).
#[test]
fn an_idle_agent_confirms_at_once() {
    if !e2e_enabled("an_idle_agent_confirms_at_once") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-fast1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    wait_for("agent online", Duration::from_secs(20), || {
        (cp.json(&["hosts", "show", "e2e-fast1"])["online"] == true).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    for user in ["fast1", "fast2", "fast3"] {
        let id = cp.create_job(&[
            "--host",
            "e2e-fast1",
            "--kind",
            "create-account",
            "--user",
            user,
        ]);
        let job = cp.expect_confirmed(&id);
        let created =
            chrono::DateTime::parse_from_rfc3339(job["created_at"].as_str().expect("created"))
                .expect("time");
        let finished =
            chrono::DateTime::parse_from_rfc3339(job["finished_at"].as_str().expect("finished"))
                .expect("time");
        let latency = (finished - created).to_std().expect("positive");
        assert!(
            latency < Duration::from_millis(1000),
            "enqueue → confirmed took {latency:?}"
        );
    }
    real.assert_unchanged();
}

/// Test 8: `kill -9` of the agent after it received a job and before it reported: the job is
/// delivered again and confirmed exactly once.
#[test]
fn a_killed_agent_gets_the_job_again_and_confirms_once() {
    if !e2e_enabled("a_killed_agent_gets_the_job_again_and_confirms_once") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--lease-timeout", "3s"]);
    let host = TestHost::start("e2e-crash1");
    host.enroll_ok(&cp);
    // Hold the passwd lock the way shadow-utils does (a lock file naming a live PID), so the
    // agent receives the job and then waits, retrying, before it can apply or report.
    host.write("/etc/passwd.lock", "1");
    let agent = host.start_agent();
    let id = cp.create_job(&[
        "--host",
        "e2e-crash1",
        "--kind",
        "create-account",
        "--user",
        "frank",
        "--group",
        "sudo",
    ]);
    wait_for(
        "the agent to receive the job and hit the lock",
        Duration::from_secs(20),
        || {
            host.agent_log()
                .contains("account files are locked")
                .then_some(())
        },
    );
    agent.kill9();
    let job = cp.job(&id);
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_u64()),
        (Some("pending"), Some(1)),
        "{job:#}"
    );
    host.exec(&["rm", "-f", "/etc/passwd.lock"])
        .ok("release lock");
    let _agent = host.start_agent();
    let job = cp.expect_confirmed(&id);
    assert_eq!(job["attempts"], 2, "{job:#}");
    let outcomes: Vec<&Value> = job["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["event"] == "confirmed" || e["event"] == "failed")
        .collect();
    assert_eq!(outcomes.len(), 1, "exactly one outcome: {job:#}");
    assert_eq!(
        host.read("/etc/passwd")
            .lines()
            .filter(|l| l.starts_with("frank:"))
            .count(),
        1
    );
    assert!(host.group_members("sudo").contains(&"frank".to_owned()));
    host.assert_account_files_clean();
    real.assert_unchanged();
}

/// The agent rides out a control-plane outage: it backs off, reconnects, and applies the next job.
#[test]
fn the_agent_reconnects_after_a_control_plane_outage() {
    if !e2e_enabled("the_agent_reconnects_after_a_control_plane_outage") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-outage1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    cp.expect_confirmed(&cp.create_job(&[
        "--host",
        "e2e-outage1",
        "--kind",
        "create-account",
        "--user",
        "gina",
    ]));
    let cp = cp.restart_after(Duration::from_secs(3));
    let id = cp.create_job(&[
        "--host",
        "e2e-outage1",
        "--kind",
        "add-group",
        "--user",
        "gina",
        "--group",
        "sudo",
    ]);
    cp.expect_confirmed(&id);
    assert!(host.group_members("sudo").contains(&"gina".to_owned()));
    let log = host.agent_log();
    assert!(
        log.contains("cannot poll the control plane") && log.contains("reachable again"),
        "{log}"
    );
    real.assert_unchanged();
}
