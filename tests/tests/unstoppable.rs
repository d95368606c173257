//! Issue 8, end to end: revocation nothing can stop. One regression test per finding of the
//! review of 4530358 that concerns the agent, each named after it, run against the real agent,
//! shadow-utils, sshd and sudo inside test hosts. Each would fail on that commit.

use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, Ssh, TestHost, e2e_enabled, ssh_keypair, wait_for};
use serde_json::Value;

fn key_file(dir: &std::path::Path, public: &str) -> String {
    let path = dir.join("keys.pub");
    std::fs::write(&path, public).expect("write key file");
    path.to_str().expect("path").to_owned()
}

/// Queues `create-account USER [--group G] --expires-in EXPIRES` on `host` and waits for it.
fn create_account(
    cp: &ControlPlane,
    host: &str,
    user: &str,
    groups: &[&str],
    expires: &str,
) -> Value {
    let mut args = vec![
        "--host",
        host,
        "--kind",
        "create-account",
        "--user",
        user,
        "--expires-in",
        expires,
    ];
    for group in groups {
        args.extend(["--group", group]);
    }
    let id = cp.create_job(&args);
    cp.expect_confirmed(&id)
}

fn expires_at(job: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(job["expires_at"].as_str().expect("expires_at"))
        .expect("time")
        .with_timezone(&chrono::Utc)
}

/// Waits until `user` is gone from the host and asserts it happened within `slack` of `end`.
fn wait_gone(host: &TestHost, user: &str, end: chrono::DateTime<chrono::Utc>, slack: i64) {
    host.wait(
        &format!("'{user}' to be removed"),
        Duration::from_secs(90),
        || host.passwd_line(user).is_none().then_some(()),
    );
    let late = chrono::Utc::now() - end;
    assert!(
        late < chrono::Duration::seconds(slack),
        "'{user}' outlived its grant by {late}"
    );
}

/// Finding 1: the user turns `~/.ssh/authorized_keys` into a directory and leaves a process
/// behind; at expiry the processes still end and the account is still deleted.
#[test]
fn finding_1_keys_turned_into_a_directory_do_not_block_deletion() {
    if !e2e_enabled("finding_1_keys_turned_into_a_directory_do_not_block_deletion") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_key, public) = ssh_keypair(dir.path(), "amy");
    let id = cp.create_job(&[
        "--host",
        "e2e-f1",
        "--kind",
        "create-account",
        "--user",
        "amy",
        "--ssh-key-file",
        &key_file(dir.path(), &public),
        "--expires-in",
        "8s",
    ]);
    let job = cp.expect_confirmed(&id);
    host.run_as(
        "amy",
        "cd /home/amy && rm -f .ssh/authorized_keys && mkdir -p .ssh/authorized_keys/inside \
         && (setsid sleep 4321 </dev/null >/dev/null 2>&1 &)",
    )
    .ok("the user's own changes");
    assert!(!host.processes_matching("sleep 4321").is_empty());
    wait_gone(&host, "amy", expires_at(&job), 4);
    assert!(
        host.processes_matching("sleep 4321").is_empty(),
        "the user's process survived"
    );
    assert_eq!(host.exec(&["test", "-e", "/home/amy"]).code, 1);
    let accounts: Value =
        serde_json::from_str(&host.read("/var/lib/latch/accounts.json")).expect("accounts");
    assert!(accounts["accounts"].get("amy").is_none(), "{accounts}");
    real.assert_unchanged();
}

/// Finding 2: an operator tightens `allowed_groups` while memberships are active; they are
/// still removed at their end (only granting checks policy).
#[test]
fn finding_2_tightened_allowed_groups_still_expire() {
    if !e2e_enabled("finding_2_tightened_allowed_groups_still_expire") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f2");
    host.enroll_ok(&cp);
    let agent = host.start_agent();
    create_account(&cp, "e2e-f2", "ben", &[], "1h");
    let add = cp.create_job(&[
        "--host",
        "e2e-f2",
        "--kind",
        "add-group",
        "--user",
        "ben",
        "--group",
        "sudo",
        "--expires-in",
        "10s",
    ]);
    let grant = cp.expect_confirmed(&add);
    assert!(host.group_members("sudo").contains(&"ben".to_owned()));
    // The operator no longer allows sudo to be granted, and restarts the agent.
    agent.stop();
    host.write_agent_config("allowed_groups = [\"adm\"]\n");
    let _agent = host.start_agent();
    host.wait("the membership to end", Duration::from_secs(60), || {
        (!host.group_members("sudo").contains(&"ben".to_owned())).then_some(())
    });
    let late = chrono::Utc::now() - expires_at(&grant);
    assert!(
        late < chrono::Duration::seconds(4),
        "sudo outlived its grant by {late}"
    );
    assert!(
        host.passwd_line("ben").is_some(),
        "only the membership ends"
    );
    // Granting does follow the new policy.
    let again = cp.create_job(&[
        "--host",
        "e2e-f2",
        "--kind",
        "add-group",
        "--user",
        "ben",
        "--group",
        "sudo",
        "--expires-in",
        "1h",
    ]);
    cp.expect_failed(&again, "group_not_allowed");
    real.assert_unchanged();
}

/// Finding 3 (first cause): the host is removed (a 401 from then on). The agent keeps running
/// in revoke-only mode, says so in `status`, and still revokes the grant at its end; it can be
/// enrolled again with `--replace`.
#[test]
fn finding_3_a_removed_host_keeps_revoking_expired_grants() {
    if !e2e_enabled("finding_3_a_removed_host_keeps_revoking_expired_grants") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f3a");
    host.enroll_ok(&cp);
    let mut agent = host.start_agent();
    let job = create_account(&cp, "e2e-f3a", "cal", &["sudo"], "10s");
    cp.latchctl(&["hosts", "remove", "e2e-f3a"])
        .ok("hosts remove");
    host.wait("revoke-only mode", Duration::from_secs(10), || {
        host.agent_log().contains("revoke-only mode").then_some(())
    });
    let status = host.exec(&["/mnt/bin/latch-agent", "status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(status.stdout.contains("REVOKE-ONLY"), "{}", status.stdout);
    assert!(status.stdout.contains("REFUSED"), "{}", status.stdout);
    wait_gone(&host, "cal", expires_at(&job), 4);
    assert!(!host.group_members("sudo").contains(&"cal".to_owned()));
    assert_eq!(
        agent.wait_exit(Duration::from_millis(100)),
        None,
        "still running"
    );

    // Enrolling again: refused without --replace (it says how), then works with it.
    agent.stop();
    let token = cp.enroll_token("10m", 1);
    let refused = host.enroll(&cp, &token);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--replace"), "{}", refused.stderr);
    let replaced = host.exec_stdin(
        &[
            latch_e2e::AGENT,
            "enroll",
            "--replace",
            "--server",
            &cp.url,
            "--ca-fingerprint",
            &cp.fingerprint,
            "--token-file",
            "-",
        ],
        token.as_bytes(),
    );
    assert_eq!(replaced.code, 0, "{}", replaced.stderr);
    let _agent = host.start_agent();
    let dee = cp.create_job(&[
        "--host",
        "e2e-f3a",
        "--kind",
        "create-account",
        "--user",
        "dee",
        "--expires-in",
        "1h",
    ]);
    cp.expect_confirmed(&dee);
    let status = host.exec(&["/mnt/bin/latch-agent", "status"]);
    assert!(
        status.stdout.contains("mode:          polling"),
        "{}",
        status.stdout
    );
    real.assert_unchanged();
}

/// Finding 3 (second cause): `/etc/machine-id` changed (a cloned image). The agent never polls
/// with that identity but still revokes the grant at its end.
#[test]
fn finding_3_a_changed_machine_id_keeps_revoking_expired_grants() {
    if !e2e_enabled("finding_3_a_changed_machine_id_keeps_revoking_expired_grants") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f3b");
    host.enroll_ok(&cp);
    let agent = host.start_agent();
    let job = create_account(&cp, "e2e-f3b", "eli", &["sudo"], "10s");
    agent.stop();
    host.write("/etc/machine-id", &format!("{:032x}\n", 0xfeed_u128));
    let mut agent = host.start_agent();
    host.wait("revoke-only mode", Duration::from_secs(10), || {
        host.agent_log()
            .contains("machine-id changed")
            .then_some(())
    });
    wait_gone(&host, "eli", expires_at(&job), 4);
    assert_eq!(
        agent.wait_exit(Duration::from_millis(100)),
        None,
        "still running"
    );
    real.assert_unchanged();
}

/// Finding 4: `useradd` commits the passwd and group entries (with `--groups sudo`) and then
/// fails to create the home. The job fails and nothing is left: no account, no sudo
/// membership, no private group; the UID is not reused. Also: the private group's GID is the
/// account's UID.
#[test]
fn finding_4_a_failed_useradd_leaves_no_orphan_with_sudo() {
    if !e2e_enabled("finding_4_a_failed_useradd_leaves_no_orphan_with_sudo") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f4");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    host.exec(&["mount", "-o", "remount,bind,ro", "/home"])
        .ok("read-only /home");
    let id = cp.create_job(&[
        "--host",
        "e2e-f4",
        "--kind",
        "create-account",
        "--user",
        "fox",
        "--group",
        "sudo",
        "--expires-in",
        "1h",
    ]);
    let job = cp.expect_failed(&id, "tool_failed");
    let message = job["error"]["message"].as_str().expect("message");
    assert!(message.contains("removed again"), "{message}");
    assert!(
        host.passwd_line("fox").is_none(),
        "an orphan account is left"
    );
    assert!(!host.group_members("sudo").contains(&"fox".to_owned()));
    assert!(
        !host
            .read("/etc/group")
            .lines()
            .any(|l| l.starts_with("fox:"))
    );
    let accounts: Value =
        serde_json::from_str(&host.read("/var/lib/latch/accounts.json")).expect("accounts");
    assert!(accounts["accounts"].get("fox").is_none(), "{accounts}");
    let burnt = accounts["uid_high_water"].as_u64().expect("high water");

    host.exec(&["mount", "-o", "remount,bind,rw", "/home"])
        .ok("writable /home");
    create_account(&cp, "e2e-f4", "gus", &[], "1h");
    let uid = host.uid_of("gus").expect("gus");
    assert!(
        u64::from(uid) > burnt,
        "UID {uid} reused (high water {burnt})"
    );
    let gid = host.exec(&["id", "-g", "gus"]).ok("id -g");
    assert_eq!(
        gid.trim(),
        uid.to_string(),
        "the private group's GID is the UID"
    );
    host.assert_account_files_clean();
    real.assert_unchanged();
}

/// Finding 5: the user rewrites the GECOS field (`chfn` can, on Debian); deletion still
/// happens. Also: deleting a name that does not exist says it was a no-op.
#[test]
fn finding_5_a_rewritten_gecos_does_not_block_deletion() {
    if !e2e_enabled("finding_5_a_rewritten_gecos_does_not_block_deletion") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f5");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    create_account(&cp, "e2e-f5", "gia", &["sudo"], "1h");
    // What `chfn -f 'Gia,Room 7,555,555'` by the user writes (done as root: chfn asks the user
    // for a password the ephemeral account does not have).
    host.exec(&["usermod", "--comment", "Gia,Room 7,555,555", "gia"])
        .ok("rewrite GECOS");
    let delete = cp.create_job(&[
        "--host",
        "e2e-f5",
        "--kind",
        "delete-account",
        "--user",
        "gia",
    ]);
    cp.expect_confirmed(&delete);
    assert!(host.passwd_line("gia").is_none());

    let nothing = cp.create_job(&[
        "--host",
        "e2e-f5",
        "--kind",
        "delete-account",
        "--user",
        "nobody-here",
    ]);
    let job = cp.expect_confirmed(&nothing);
    assert!(
        job["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("does not exist")),
        "a no-op must say so: {job:#}"
    );
    let shown = cp.latchctl(&["jobs", "show", &nothing]).ok("jobs show");
    assert!(shown.contains("nothing to do"), "{shown}");
    real.assert_unchanged();
}

/// Finding 6: `kill -9` after the job was applied and recorded but before its outcome was
/// journaled. The redelivered job is verified again and reported `confirmed`, not
/// `replayed_job`.
#[test]
fn finding_6_a_crash_after_recording_reports_confirmed() {
    if !e2e_enabled("finding_6_a_crash_after_recording_reports_confirmed") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--lease-timeout", "2s"]);
    let host = TestHost::start("e2e-f6");
    host.enroll_ok(&cp);
    let agent = host.start_agent_paused_at("recorded");
    let id = cp.create_job(&[
        "--host",
        "e2e-f6",
        "--kind",
        "create-account",
        "--user",
        "hal",
        "--group",
        "sudo",
        "--expires-in",
        "1h",
    ]);
    host.wait(
        "the agent to stop at 'recorded'",
        Duration::from_secs(20),
        || host.agent_log().contains("test pause").then_some(()),
    );
    agent.kill9();
    let _agent = host.start_agent();
    let job = cp.expect_confirmed(&id);
    assert!(
        job["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("verified again")),
        "{job:#}"
    );
    assert!(host.group_members("sudo").contains(&"hal".to_owned()));
    real.assert_unchanged();
}

/// Finding 10: re-creating a managed account with a new (earlier) end applies that end.
#[test]
fn finding_10_recreating_an_account_applies_the_new_expiry() {
    if !e2e_enabled("finding_10_recreating_an_account_applies_the_new_expiry") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f10");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    create_account(&cp, "e2e-f10", "ida", &[], "1h");
    let job = create_account(&cp, "e2e-f10", "ida", &[], "8s");
    let accounts: Value =
        serde_json::from_str(&host.read("/var/lib/latch/accounts.json")).expect("accounts");
    assert_eq!(
        accounts["accounts"]["ida"]["expires_at"].as_str().map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .expect("time")
                .timestamp()
        }),
        Some(expires_at(&job).timestamp())
    );
    wait_gone(&host, "ida", expires_at(&job), 4);
    real.assert_unchanged();
}

/// Finding 11: the outcome of a grant cannot be reported (here: the agent's reporting stops
/// dead right after applying). The local expiry timer still ends the grant on time instead of
/// up to a minute late.
#[test]
fn finding_11_expiry_is_on_time_when_the_report_is_not_through() {
    if !e2e_enabled("finding_11_expiry_is_on_time_when_the_report_is_not_through") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f11");
    host.enroll_ok(&cp);
    let _agent = host.start_agent_paused_at("applied");
    let id = cp.create_job(&[
        "--host",
        "e2e-f11",
        "--kind",
        "create-account",
        "--user",
        "jan",
        "--expires-in",
        "8s",
    ]);
    let end = expires_at(&cp.job(&id));
    host.wait("the account to exist", Duration::from_secs(20), || {
        host.passwd_line("jan").map(drop)
    });
    assert_eq!(
        cp.job(&id)["status"],
        "pending",
        "the report never went out"
    );
    wait_gone(&host, "jan", end, 3);
    real.assert_unchanged();
}

/// Finding 13 (first half): processes that ignore TERM and HUP, and a process chain that keeps
/// re-spawning itself under a new PID, all end when the account is deleted.
#[test]
fn finding_13_respawning_and_signal_ignoring_processes_are_ended() {
    if !e2e_enabled("finding_13_respawning_and_signal_ignoring_processes_are_ended") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f13a");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    create_account(&cp, "e2e-f13a", "kai", &[], "1h");
    // A script that re-executes itself in the background and exits: always a new PID (bounded
    // to 3,000 generations, so a broken agent cannot turn it into a fork storm).
    host.write(
        "/tmp/hop.sh",
        "#!/bin/sh\ntrap '' TERM HUP INT\nsleep 0.01\nleft=$(($2 - 1))\n\
         [ \"$left\" -gt 0 ] && /bin/sh /tmp/hop.sh hop-chain \"$left\" &\n",
    );
    host.exec(&["chmod", "0755", "/tmp/hop.sh"]).ok("chmod");
    host.run_as(
        "kai",
        "(trap '' TERM HUP; setsid sh -c 'trap \"\" TERM HUP; while :; do sleep 1; done' stubborn \
           </dev/null >/dev/null 2>&1 &); \
         (setsid /bin/sh /tmp/hop.sh hop-chain 3000 </dev/null >/dev/null 2>&1 &); \
         (setsid sh -c 'while :; do sleep 7777 & wait; done' respawner </dev/null >/dev/null 2>&1 &)",
    )
    .ok("start the user's processes");
    let uid = host.uid_of("kai").expect("kai");
    host.wait("the user's processes", Duration::from_secs(10), || {
        (host.processes_matching("hop-chain").len()
            + host.processes_matching("stubborn").len()
            + host.processes_matching("sleep 7777").len()
            >= 3)
            .then_some(())
    });
    let delete = cp.create_job(&[
        "--host",
        "e2e-f13a",
        "--kind",
        "delete-account",
        "--user",
        "kai",
    ]);
    cp.expect_confirmed(&delete);
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<(u32, u32, u32)> = ["hop-chain", "stubborn", "sleep 7777"]
        .iter()
        .flat_map(|p| host.processes_matching(p))
        .filter(|(_, owner, _)| *owner == uid)
        .collect();
    assert!(
        left.is_empty(),
        "processes of the deleted user survived: {left:?}"
    );
    real.assert_unchanged();
}

/// Finding 13 (second half): a UID and names known only to the name service (here
/// libnss-extrausers, standing in for LDAP/SSSD) are never handed out.
#[test]
fn finding_13_uids_known_to_nss_are_never_handed_out() {
    if !e2e_enabled("finding_13_uids_known_to_nss_are_never_handed_out") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f13b");
    host.write(
        "/var/lib/extrausers/passwd",
        "diruser:x:60000:60000:Directory user:/home/diruser:/bin/sh\n",
    );
    host.write("/var/lib/extrausers/group", "dirgroup:x:60001:\n");
    host.write("/var/lib/extrausers/shadow", "");
    let nsswitch = host
        .read("/etc/nsswitch.conf")
        .lines()
        .map(|line| match line.split(':').next() {
            Some("passwd") | Some("group") => format!("{line} extrausers"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    host.write("/etc/nsswitch.conf", &format!("{nsswitch}\n"));
    assert_eq!(
        host.exec(&["getent", "passwd", "60000"])
            .stdout
            .split(':')
            .next(),
        Some("diruser"),
        "the directory user does not resolve: install libnss-extrausers (.ci/run does)"
    );
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    create_account(&cp, "e2e-f13b", "lea", &[], "1h");
    assert_eq!(
        host.uid_of("lea"),
        Some(60002),
        "UIDs 60000 (a directory user) and 60001 (a directory group) must be skipped"
    );
    for (user, code) in [("diruser", "account_exists"), ("dirgroup", "group_exists")] {
        let id = cp.create_job(&[
            "--host",
            "e2e-f13b",
            "--kind",
            "create-account",
            "--user",
            user,
            "--expires-in",
            "1h",
        ]);
        cp.expect_failed(&id, code);
    }
    real.assert_unchanged();
}

/// Finding 15: a job that had started applying when the agent died, redelivered after its
/// deadline, is finished (not refused with its changes half made).
#[test]
fn finding_15_a_started_job_is_finished_past_its_deadline() {
    if !e2e_enabled("finding_15_a_started_job_is_finished_past_its_deadline") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--lease-timeout", "2s", "--job-ttl", "5s"]);
    let host = TestHost::start("e2e-f15");
    host.enroll_ok(&cp);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_key, public) = ssh_keypair(dir.path(), "max");
    let agent = host.start_agent_paused_at("half-applied");
    let id = cp.create_job(&[
        "--host",
        "e2e-f15",
        "--kind",
        "create-account",
        "--user",
        "max",
        "--ssh-key-file",
        &key_file(dir.path(), &public),
        "--expires-in",
        "1h",
    ]);
    host.wait(
        "the agent to stop half-way",
        Duration::from_secs(20),
        || host.agent_log().contains("test pause").then_some(()),
    );
    agent.kill9();
    assert!(host.passwd_line("max").is_some(), "useradd ran");
    assert!(
        host.read("/home/max/.ssh/authorized_keys").is_empty(),
        "keys not yet"
    );
    // Past the job's deadline (created + 5 s).
    std::thread::sleep(Duration::from_secs(6));
    let _agent = host.start_agent();
    cp.expect_confirmed(&id);
    assert!(
        host.read("/home/max/.ssh/authorized_keys")
            .contains(&public),
        "the half-applied job was not finished"
    );
    real.assert_unchanged();
}

/// Finding 16: one malformed line in `/etc/passwd` refuses grants (naming file and line) but
/// does not stop revocation.
#[test]
fn finding_16_a_malformed_line_refuses_grants_not_revocation() {
    if !e2e_enabled("finding_16_a_malformed_line_refuses_grants_not_revocation") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f16");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    let job = create_account(&cp, "e2e-f16", "nia", &["sudo"], "10s");
    let passwd = host.read("/etc/passwd");
    let bad_line = passwd.lines().count() + 1;
    host.write(
        "/etc/passwd",
        &format!("{passwd}this line is not a passwd entry\n"),
    );
    let refused = cp.create_job(&[
        "--host",
        "e2e-f16",
        "--kind",
        "create-account",
        "--user",
        "otto",
        "--expires-in",
        "1h",
    ]);
    let failed = cp.expect_failed(&refused, "account_files_malformed");
    let message = failed["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("/etc/passwd line {bad_line}")),
        "{message}"
    );
    wait_gone(&host, "nia", expires_at(&job), 4);
    assert!(!host.group_members("sudo").contains(&"nia".to_owned()));
    real.assert_unchanged();
}

/// Finding 21: a root process the user started through sudo from a real ssh login — in the
/// background, outliving the login — is gone after the grant expires. For a sudo membership
/// that ends on its own, what was started through sudo ends, the user's session stays.
#[test]
fn finding_21_root_processes_started_through_sudo_end_with_the_grant() {
    if !e2e_enabled("finding_21_root_processes_started_through_sudo_end_with_the_grant") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-f21");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    let port = host.start_sshd();
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = ssh_keypair(dir.path(), "pia");
    let keys = key_file(dir.path(), &public);
    let id = cp.create_job(&[
        "--host",
        "e2e-f21",
        "--kind",
        "create-account",
        "--user",
        "pia",
        "--group",
        "sudo",
        "--ssh-key-file",
        &keys,
        "--expires-in",
        "12s",
    ]);
    let job = cp.expect_confirmed(&id);
    let ssh = Ssh::new(port, "pia", &key);
    let started =
        ssh.run("sudo -n sh -c 'setsid sleep 5151 </dev/null >/dev/null 2>&1 &' && echo started");
    assert!(started.stdout.contains("started"), "{started:?}");
    let uid = host.uid_of("pia").expect("pia");
    let root_sleep = host.processes_matching("sleep 5151");
    assert!(
        root_sleep
            .iter()
            .any(|&(_, owner, loginuid)| owner == 0 && loginuid == uid),
        "a root process carrying pia's login UID: {root_sleep:?}"
    );
    wait_gone(&host, "pia", expires_at(&job), 4);
    wait_for("the root process to end", Duration::from_secs(10), || {
        host.processes_matching("sleep 5151")
            .is_empty()
            .then_some(())
    });

    // A sudo membership that ends on its own: root processes go, the account and its own
    // processes stay.
    let (key, public) = ssh_keypair(dir.path(), "quin");
    let keys = key_file(dir.path(), &public);
    let create_keys = cp.create_job(&[
        "--host",
        "e2e-f21",
        "--kind",
        "create-account",
        "--user",
        "quin",
        "--ssh-key-file",
        &keys,
        "--expires-in",
        "1h",
    ]);
    cp.expect_confirmed(&create_keys);
    let add = cp.create_job(&[
        "--host",
        "e2e-f21",
        "--kind",
        "add-group",
        "--user",
        "quin",
        "--group",
        "sudo",
        "--expires-in",
        "10s",
    ]);
    let grant = cp.expect_confirmed(&add);
    let ssh = Ssh::new(port, "quin", &key);
    let started = ssh.run(
        "sudo -n sh -c 'setsid sleep 6161 </dev/null >/dev/null 2>&1 &' && \
         (setsid sleep 6262 </dev/null >/dev/null 2>&1 &) && echo started",
    );
    assert!(started.stdout.contains("started"), "{started:?}");
    host.wait("the membership to end", Duration::from_secs(60), || {
        (!host.group_members("sudo").contains(&"quin".to_owned())).then_some(())
    });
    let late = chrono::Utc::now() - expires_at(&grant);
    assert!(late < chrono::Duration::seconds(4), "{late}");
    wait_for("the root process to end", Duration::from_secs(10), || {
        host.processes_matching("sleep 6161")
            .is_empty()
            .then_some(())
    });
    assert!(
        !host.processes_matching("sleep 6262").is_empty(),
        "the user's own process stays with the account"
    );
    assert!(host.passwd_line("quin").is_some());
    real.assert_unchanged();
}

/// Review of issue 8, 1: the user keeps calling `kill(-1, SIGSTOP)`, which also stops the
/// helper that takes the user's UID to kill their processes. The agent must not wait on it for
/// ever: the account is still deleted, and the agent goes on revoking other grants.
#[test]
fn review_a_user_stopping_the_kill_helper_does_not_freeze_the_agent() {
    if !e2e_enabled("review_a_user_stopping_the_kill_helper_does_not_freeze_the_agent") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-r1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    create_account(&cp, "e2e-r1", "rex", &[], "1h");
    let other = create_account(&cp, "e2e-r1", "ria", &["sudo"], "20s");
    // A bounded busy loop (dash's builtin kill: no fork) stopping every other process of rex.
    host.run_as(
        "rex",
        "(setsid sleep 9191 </dev/null >/dev/null 2>&1 &); \
         (trap '' TERM HUP; setsid sh -c 'trap \"\" TERM HUP; sleep 1; i=0; \
           while [ $i -lt 3000000 ]; do kill -STOP -1 2>/dev/null; i=$((i+1)); done' stopper \
           </dev/null >/dev/null 2>&1 &)",
    )
    .ok("start the stopper");
    // It starts stopping once the shell that launched it is gone.
    std::thread::sleep(Duration::from_millis(1500));
    let delete = cp.create_job(&[
        "--host",
        "e2e-r1",
        "--kind",
        "delete-account",
        "--user",
        "rex",
    ]);
    cp.expect_confirmed(&delete);
    assert!(host.passwd_line("rex").is_none());
    let uid_left: Vec<(u32, u32, u32)> = ["stopper", "sleep 9191"]
        .iter()
        .flat_map(|p| host.processes_matching(p))
        .collect();
    assert!(uid_left.is_empty(), "{uid_left:?}");
    // The agent was not frozen: the other grant still ends on time.
    wait_gone(&host, "ria", expires_at(&other), 4);
    real.assert_unchanged();
}

/// Review of issue 8, 4: an operator's typo in the agent's configuration must not stop expiry:
/// the agent runs on the defaults, only revoking, and says why.
#[test]
fn review_a_broken_configuration_still_revokes() {
    if !e2e_enabled("review_a_broken_configuration_still_revokes") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-r4");
    host.enroll_ok(&cp);
    let agent = host.start_agent();
    let job = create_account(&cp, "e2e-r4", "sam", &["sudo"], "10s");
    agent.stop();
    host.write_agent_config("allowed_groupz = [\"sudo\"]\n");
    let mut agent = host.start_agent();
    host.wait("revoke-only mode", Duration::from_secs(10), || {
        host.agent_log().contains("revoke-only mode").then_some(())
    });
    let status = host.exec(&["/mnt/bin/latch-agent", "status"]);
    assert!(status.stdout.contains("NOT USABLE"), "{}", status.stdout);
    assert!(
        status.stdout.contains("allowed_groupz"),
        "{}",
        status.stdout
    );
    wait_gone(&host, "sam", expires_at(&job), 4);
    assert_eq!(
        agent.wait_exit(Duration::from_millis(100)),
        None,
        "still running"
    );
    real.assert_unchanged();
}

/// Review of issue 8, 5: a revoked membership of a group whose power is holding it (here `adm`,
/// like `docker`) is dropped from running processes too: a process started while a member
/// keeps the group until it exits, so the processes holding it end; the account stays.
#[test]
fn review_a_revoked_group_leaves_no_process_holding_it() {
    if !e2e_enabled("review_a_revoked_group_leaves_no_process_holding_it") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-r5");
    host.write_agent_config("allowed_groups = [\"sudo\", \"adm\"]\n");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    create_account(&cp, "e2e-r5", "tia", &[], "1h");
    let add = cp.create_job(&[
        "--host",
        "e2e-r5",
        "--kind",
        "add-group",
        "--user",
        "tia",
        "--group",
        "adm",
        "--expires-in",
        "10s",
    ]);
    let grant = cp.expect_confirmed(&add);
    // One process started while a member (holds adm), one without it.
    host.exec(&[
        "setpriv",
        "--reuid=tia",
        "--regid=tia",
        "--init-groups",
        "--",
        "/bin/sh",
        "-c",
        "(setsid sleep 8181 </dev/null >/dev/null 2>&1 &)",
    ])
    .ok("start a holder");
    host.run_as("tia", "(setsid sleep 8282 </dev/null >/dev/null 2>&1 &)")
        .ok("start a non-holder");
    let holder = host.processes_matching("sleep 8181");
    assert_eq!(holder.len(), 1);
    let groups = host.read(&format!("/proc/{}/status", holder[0].0));
    assert!(
        groups
            .lines()
            .any(|l| l.starts_with("Groups:") && l.split_whitespace().any(|g| g == "4")),
        "{groups}"
    );
    host.wait("the membership to end", Duration::from_secs(60), || {
        (!host.group_members("adm").contains(&"tia".to_owned())).then_some(())
    });
    let late = chrono::Utc::now() - expires_at(&grant);
    assert!(late < chrono::Duration::seconds(4), "{late}");
    wait_for("the holder to end", Duration::from_secs(10), || {
        host.processes_matching("sleep 8181")
            .is_empty()
            .then_some(())
    });
    assert_eq!(
        host.processes_matching("sleep 8282").len(),
        1,
        "processes that do not hold the group stay"
    );
    assert!(host.passwd_line("tia").is_some());
    real.assert_unchanged();
}

/// Review of issue 8 (control plane), 8: one grant the control plane cannot read or queue (a
/// corrupt row) must not keep every other expired grant from getting its revocation job.
#[test]
fn review_one_bad_grant_does_not_stop_the_revocation_sweep() {
    if !e2e_enabled("review_one_bad_grant_does_not_stop_the_revocation_sweep") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-r8");
    host.enroll_ok(&cp);
    let agent = host.start_agent();
    let bad = create_account(&cp, "e2e-r8", "uma", &[], "3s");
    let good = create_account(&cp, "e2e-r8", "vic", &[], "4s");
    // The agent is down: only the control plane's sweep can queue revocations now.
    agent.stop();
    let bad_id = bad["id"].as_str().expect("id");
    cp.sql(&format!(
        "UPDATE jobs SET spec = 'not a job' WHERE id = '{bad_id}'"
    ));
    let good_id = good["id"].as_str().expect("id").to_owned();
    wait_for(
        "the good grant's revocation job",
        Duration::from_secs(30),
        || {
            let rows = cp.sql_rows(&format!(
                "SELECT id FROM jobs WHERE revokes_job_id = '{good_id}'"
            ));
            (!rows.is_empty()).then_some(())
        },
    );
    assert!(
        cp.log().contains("cannot be read"),
        "the bad grant is reported in the log"
    );
    real.assert_unchanged();
}

/// Review of issue 8 (control plane), 3: the control plane's database is restored from a
/// backup older than what the agent applied. Its next job sequences are ones the agent has seen,
/// so every new job — revocations too — would be refused as stale or replayed. The agent tells
/// its highest applied sequence; the control plane raises its own above it (audited).
#[test]
fn review_a_restored_database_catches_up_with_the_agents_sequence() {
    if !e2e_enabled("review_a_restored_database_catches_up_with_the_agents_sequence") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-r3");
    let host_id = host.enroll_ok(&cp);
    let agent = host.start_agent();
    for user in ["wes", "xia", "yan"] {
        create_account(&cp, "e2e-r3", user, &[], "1h");
    }
    agent.stop();
    // What a restore of a backup taken after the first job looks like.
    cp.sql(&format!(
        "DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE host_id = '{host_id}' AND seq >= 2); \
         DELETE FROM jobs WHERE host_id = '{host_id}' AND seq >= 2; \
         UPDATE hosts SET next_seq = 2 WHERE id = '{host_id}';"
    ));
    let _agent = host.start_agent();
    wait_for(
        "the agent's first poll to raise the sequence",
        Duration::from_secs(10),
        || {
            let rows = cp.sql_rows(&format!(
                "SELECT next_seq FROM hosts WHERE id = '{host_id}'"
            ));
            (rows[0]["next_seq"].as_i64() == Some(4)).then_some(())
        },
    );
    let delete = cp.create_job(&[
        "--host",
        "e2e-r3",
        "--kind",
        "delete-account",
        "--user",
        "yan",
    ]);
    cp.expect_confirmed(&delete);
    assert!(host.passwd_line("yan").is_none());
    let audit = cp.json(&["audit", "list", "--host", "e2e-r3"]);
    assert!(
        audit["list"]
            .as_array()
            .expect("list")
            .iter()
            .any(|e| e["action"] == "host.sequence_raised"),
        "{audit:#}"
    );
    real.assert_unchanged();
}
