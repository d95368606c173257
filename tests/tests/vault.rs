//! Issue 11 end to end: the credential vault with real agents in test hosts, driven through
//! `latchctl` — one-click enrollment of an existing account (PAM accepts the new password), a
//! rotation across three hosts with one stopped (pending, naming it, until it comes back) and
//! one failing (failed; the previous password is kept and works everywhere again),
//! rotate-after-use, break-glass ending on its own with a rotation, the fourth break-glass in a
//! minute refused, a recent password refused, no secret in the database or the logs, and the
//! server refusing to start with a wrong master key.
//!
//! The servers run with `--mfa-required none`: the bootstrap admin is a service user, which has
//! no second factor (the step-up is tested in control/tests/vault.rs and the matrix).

use std::process::Command;
use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, TestHost, binary, e2e_enabled, wait_for};
use serde_json::Value;

/// The identity's current secret, as `latchctl identities reveal` prints it for scripts.
fn reveal(cp: &ControlPlane, id: &str) -> String {
    let revealed = cp.json(&["identities", "reveal", id]);
    revealed["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret: {revealed:#}"))
        .to_owned()
}

/// Creates the ordinary account `user` inside `host`.
fn useradd(host: &TestHost, user: &str) {
    host.exec(&["useradd", "-m", "-s", "/bin/bash", user])
        .ok(&format!("useradd {user}"));
}

/// `latchctl rotations show ID --wait SECONDS` as JSON, whatever its exit status.
fn rotation_after(cp: &ControlPlane, id: &str, seconds: u64) -> Value {
    let ran = cp.latchctl(&[
        "--output",
        "json",
        "rotations",
        "show",
        id,
        "--wait",
        &seconds.to_string(),
    ]);
    serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("rotations show printed no JSON ({e}): {ran:?}"))
}

fn host_status<'a>(rotation: &'a Value, hostname: &str) -> &'a Value {
    rotation["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["hostname"] == hostname))
        .unwrap_or_else(|| panic!("{hostname} is not in {rotation:#}"))
}

/// Enrolls `user` of `host` into `vault` and waits for its first password: the identity id.
fn enroll_account(cp: &ControlPlane, host: &str, user: &str, vault: &str) -> String {
    cp.wait_online(host);
    let enrolled = cp.json(&[
        "hosts",
        "enroll-account",
        host,
        "--user",
        user,
        "--vault",
        vault,
        "--wait",
        "60",
    ]);
    assert_eq!(enrolled["rotation"]["state"], "confirmed", "{enrolled:#}");
    assert_eq!(enrolled["rotation"]["trigger"], "enrollment");
    enrolled["identity"]["id"]
        .as_str()
        .expect("identity id")
        .to_owned()
}

#[test]
fn one_click_enrollment_sets_a_password_pam_accepts_and_stores_no_secret_in_plain_text() {
    if !e2e_enabled("one_click_enrollment_sets_a_password_pam_accepts") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--mfa-required", "none"]);
    let host = TestHost::start("e2e-vault1");
    host.enroll_ok(&cp);
    let agent = host.start_agent();
    useradd(&host, "deploy");
    host.exec_stdin(&["chpasswd"], b"deploy:Old-Deploy-Password-1\n")
        .ok("chpasswd");
    assert!(host.pam_accepts("deploy", "Old-Deploy-Password-1"));
    cp.json(&["vaults", "create", "legacy"]);

    // An account that does not exist is not enrolled: the adoption fails, and so does the
    // rotation that would set its password.
    cp.wait_online("e2e-vault1");
    let missing = cp.latchctl(&[
        "--output",
        "json",
        "hosts",
        "enroll-account",
        "e2e-vault1",
        "--user",
        "nobody-here",
        "--vault",
        "legacy",
        "--wait",
        "60",
    ]);
    assert_eq!(missing.code, 1, "{missing:?}");

    let id = enroll_account(&cp, "e2e-vault1", "deploy", "legacy");
    let shown = cp.json(&["identities", "show", &id]);
    assert_eq!(shown["name"], "deploy@e2e-vault1", "{shown:#}");
    assert_eq!(shown["hosts"][0]["adopt_status"], "confirmed");
    assert_eq!(shown["rotation_state"], "confirmed");
    let password = reveal(&cp, &id);
    assert_eq!(password.len(), 24);
    assert!(
        host.pam_accepts("deploy", &password),
        "PAM refused the vault's password"
    );
    assert!(
        !host.pam_accepts("deploy", "Old-Deploy-Password-1"),
        "the old password still works"
    );
    host.assert_account_files_clean();

    // The secret is nowhere in plain text: not in any table, not in a log.
    let dump = cp.database_dump();
    assert!(
        dump.contains(&id),
        "the dump holds the identity: {}",
        dump.len()
    );
    assert!(
        !dump.contains(&password),
        "the password is stored in plain text"
    );
    assert!(
        !cp.log().contains(&password),
        "the password is in the server log"
    );
    assert!(
        !host.agent_log().contains(&password),
        "the password is in the agent log"
    );
    drop(agent);
    real.assert_unchanged();
}

#[test]
fn a_rotation_waits_for_a_stopped_host_and_a_failed_one_keeps_the_previous_password() {
    if !e2e_enabled("a_rotation_waits_for_a_stopped_host") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--mfa-required", "none"]);
    let names = ["e2e-rot1", "e2e-rot2", "e2e-rot3"];
    let hosts: Vec<TestHost> = names.iter().map(|n| TestHost::start(n)).collect();
    let mut agents = Vec::new();
    for host in &hosts {
        host.enroll_ok(&cp);
        agents.push(Some(host.start_agent()));
        useradd(host, "appsvc");
    }
    cp.json(&["vaults", "create", "web"]);
    let id = enroll_account(&cp, "e2e-rot1", "appsvc", "web");
    // Link the other two hosts: each adopts the account.
    cp.json(&[
        "identities",
        "update",
        &id,
        "--host",
        "e2e-rot1",
        "--host",
        "e2e-rot2",
        "--host",
        "e2e-rot3",
    ]);
    wait_for("the adoptions", Duration::from_secs(60), || {
        let shown = cp.json(&["identities", "show", &id]);
        let hosts = shown["hosts"].as_array().cloned().unwrap_or_default();
        (hosts.len() == 3
            && hosts.iter().all(|h| h["adopt_status"] == "confirmed")
            && hosts[1..]
                .iter()
                .all(|h| h["password_status"] == "confirmed"))
        .then_some(())
    });
    // Linked hosts were given the vault's current password.
    let linked = reveal(&cp, &id);
    for host in &hosts {
        assert!(host.pam_accepts("appsvc", &linked), "{}", host.name);
    }

    // The third host's agent is stopped: the rotation stays pending and names it.
    agents[2].take().expect("agent").stop();
    let started = cp.json(&["identities", "rotate", &id]);
    let rotation = started["id"].as_str().expect("rotation id").to_owned();
    let waiting = wait_for("two hosts to confirm", Duration::from_secs(60), || {
        let r = cp.json(&["rotations", "show", &rotation]);
        (host_status(&r, "e2e-rot1")["status"] == "confirmed"
            && host_status(&r, "e2e-rot2")["status"] == "confirmed")
            .then_some(r)
    });
    std::thread::sleep(Duration::from_secs(2));
    let waiting = {
        let again = cp.json(&["rotations", "show", &rotation]);
        assert_eq!(again["state"], "pending", "{waiting:#} {again:#}");
        again
    };
    assert_eq!(waiting["waiting_for"], serde_json::json!(["e2e-rot3"]));
    let table = cp
        .latchctl(&["rotations", "show", &rotation])
        .ok("rotations show");
    assert!(table.contains("e2e-rot3"), "{table}");
    // Until every host confirmed, the vault reveals the previous password — still the one of
    // the stopped host (the two others already took the new one).
    let first = reveal(&cp, &id);
    assert!(hosts[2].pam_accepts("appsvc", &first), "the stopped host");
    assert!(!hosts[0].pam_accepts("appsvc", &first), "a confirmed host");
    // The agent comes back: the rotation confirms, the new password works on all three.
    agents[2] = Some(hosts[2].start_agent());
    let done = rotation_after(&cp, &rotation, 60);
    assert_eq!(done["state"], "confirmed", "{done:#}");
    let second = reveal(&cp, &id);
    assert_ne!(second, first);
    for host in &hosts {
        assert!(host.pam_accepts("appsvc", &second), "{}", host.name);
    }

    // The second host loses the account: its job fails, the rotation fails, the previous
    // password stays in the vault and is set again where the new one arrived.
    hosts[1].exec(&["userdel", "-r", "appsvc"]).ok("userdel");
    hosts[1]
        .exec(&["useradd", "-m", "-u", "1700", "appsvc"])
        .ok("useradd");
    let started = cp.json(&["identities", "rotate", &id]);
    let rotation = started["id"].as_str().expect("rotation id").to_owned();
    let failed = rotation_after(&cp, &rotation, 60);
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let bad = host_status(&failed, "e2e-rot2");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["error_code"], "account_not_managed", "{bad:#}");
    assert_eq!(reveal(&cp, &id), second, "the previous secret stays");
    for host in [&hosts[0], &hosts[2]] {
        wait_for(
            "the previous password to work again",
            Duration::from_secs(60),
            || host.pam_accepts("appsvc", &second).then_some(()),
        );
    }
    for host in &hosts {
        host.assert_account_files_clean();
    }
    drop(agents);
    real.assert_unchanged();
}

#[test]
fn checkin_rotates_after_use_and_break_glass_ends_on_its_own_with_a_rotation() {
    if !e2e_enabled("checkin_rotates_after_use_and_break_glass_ends_on_its_own") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[
        "--mfa-required",
        "none",
        "--break-glass-duration",
        "1m",
        "--checkout-sweep-schedule",
        "*/2 * * * * *",
    ]);
    let host = TestHost::start("e2e-glass1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    useradd(&host, "dba");
    cp.json(&["vaults", "create", "db"]);
    let id = enroll_account(&cp, "e2e-glass1", "dba", "db");
    cp.json(&["identities", "update", &id, "--rotate-after-use"]);

    // Check out, check in: the check-in rotates the password.
    let out = cp.json(&[
        "identities",
        "checkout",
        &id,
        "--reason",
        "vacuum the big table",
        "--for",
        "30m",
    ]);
    let used = out["credential"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(host.pam_accepts("dba", &used));
    let checkout = out["checkout"]["id"]
        .as_str()
        .expect("checkout id")
        .to_owned();
    let back = cp.json(&["identities", "checkin", &checkout]);
    let rotation = back["rotation_id"].as_str().expect("a rotation").to_owned();
    let after = rotation_after(&cp, &rotation, 60);
    assert_eq!(after["state"], "confirmed", "{after:#}");
    assert_eq!(after["trigger"], "after_use");
    let fresh = reveal(&cp, &id);
    assert_ne!(fresh, used);
    assert!(host.pam_accepts("dba", &fresh));
    assert!(
        !host.pam_accepts("dba", &used),
        "the used password still works"
    );

    // Break-glass: three in a minute, the fourth refused.
    let mut glass = Vec::new();
    for _ in 0..3 {
        let ran = cp.latchctl(&[
            "--output",
            "json",
            "identities",
            "break-glass",
            &id,
            "--reason",
            "primary down, DBA unreachable",
        ]);
        assert!(
            ran.stderr.to_lowercase().contains("break-glass"),
            "a loud warning: {ran:?}"
        );
        glass.push(ran.json("break-glass"));
    }
    let fourth = cp.latchctl(&["identities", "break-glass", &id, "--reason", "once more"]);
    assert_ne!(fourth.code, 0, "{fourth:?}");
    assert!(
        fourth.stderr.contains("too_many_requests") || fourth.stderr.contains("3 times"),
        "{fourth:?}"
    );
    let broken = glass[0]["credential"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert_eq!(broken, fresh);
    assert!(glass.iter().all(|g| g["checkout"]["break_glass"] == true));
    let audit = cp.json(&["audit", "list"]);
    let entries = audit
        .as_array()
        .or_else(|| audit["list"].as_array())
        .expect("audit entries");
    let critical = entries
        .iter()
        .filter(|e| e["action"] == "vault.break_glass")
        .count();
    assert_eq!(critical, 3, "{audit:#}");

    // At the end of the break-glass window the sweep checks them in and rotates.
    let ended = wait_for(
        "the break-glass checkouts to end",
        Duration::from_secs(120),
        || {
            let list = cp.json(&["identities", "checkouts", &id]);
            let glass: Vec<Value> = list["list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c["break_glass"] == true)
                .collect();
            (glass.len() == 3 && glass.iter().all(|c| c["checked_in_how"] == "expired"))
                .then_some(glass)
        },
    );
    let last = ended
        .iter()
        .filter_map(|c| c["rotation_id"].as_str())
        .max_by_key(|r| {
            cp.json(&["rotations", "show", r])["created_at"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .expect("the check-ins name their rotations")
        .to_owned();
    let rotated = rotation_after(&cp, &last, 60);
    assert_eq!(rotated["state"], "confirmed", "{rotated:#}");
    assert_eq!(rotated["trigger"], "break_glass");
    let after_glass = reveal(&cp, &id);
    assert_ne!(after_glass, broken);
    assert!(host.pam_accepts("dba", &after_glass));
    assert!(
        !host.pam_accepts("dba", &broken),
        "the break-glass password still works"
    );
    real.assert_unchanged();
}

#[test]
fn a_recent_password_is_refused_and_a_wrong_master_key_stops_the_server() {
    let cp = ControlPlane::start(&["--mfa-required", "none"]);
    cp.json(&["vaults", "create", "keys"]);
    let created = cp.latchctl_stdin(
        &[
            "--output",
            "json",
            "identities",
            "create",
            "--vault",
            "keys",
            "--name",
            "svc",
            "--username",
            "svc",
            "--secret-stdin",
        ],
        Some(b"First-Password-2026!\n"),
    );
    let id = created.json("identities create")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let rotate = |password: &str| {
        cp.latchctl_stdin(
            &[
                "--output",
                "json",
                "identities",
                "rotate",
                &id,
                "--password-stdin",
            ],
            Some(format!("{password}\n").as_bytes()),
        )
    };
    let second = rotate("Second-Password-2026!").json("rotate");
    assert_eq!(second["state"], "confirmed", "no host: confirmed at once");
    for reused in ["First-Password-2026!", "Second-Password-2026!"] {
        let refused = rotate(reused);
        assert_ne!(refused.code, 0, "{refused:?}");
        assert!(
            refused.stdout.contains("used recently") || refused.stderr.contains("used recently"),
            "{refused:?}"
        );
    }
    assert_eq!(reveal(&cp, &id), "Second-Password-2026!");

    // The master key is replaced by another one: the server does not start, and says why.
    cp.kill9();
    let data = cp.data_dir.path().join("data");
    std::fs::write(data.join("master.key"), format!("{}\n", "ab".repeat(32))).expect("write key");
    let mut command = Command::new(binary("latch-control"));
    cp.database.configure(&mut command);
    let out = command
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run latch-control");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a wrong master key: {stderr}"
    );
    assert!(
        stderr.contains("does not open") && stderr.contains("master key"),
        "{stderr}"
    );
}

#[test]
fn organizations_and_support_access_are_managed_with_latchctl() {
    let cp = ControlPlane::start(&["--mfa-required", "none"]);
    // Organizations: a new one, and its break-glass duration.
    let org = cp.json(&["organizations", "create", "acme"]);
    assert_eq!(org["break_glass_default"], true, "{org:#}");
    let org = cp.json(&[
        "organizations",
        "update",
        "acme",
        "--break-glass-duration",
        "15m",
    ]);
    assert_eq!(org["break_glass_minutes"], 15, "{org:#}");
    let bad = cp.latchctl(&[
        "organizations",
        "update",
        "acme",
        "--break-glass-duration",
        "25h",
    ]);
    assert_eq!(bad.code, 2, "{bad:?}");
    let table = cp
        .latchctl(&["organizations", "list"])
        .ok("organizations list");
    assert!(table.contains("acme") && table.contains("15m"), "{table}");
    let refused = cp.latchctl(&["support-access", "enable", "--reason", "", "--days", "3"]);
    assert_eq!(refused.code, 2, "an empty reason: {refused:?}");
    let too_long = cp.latchctl(&["support-access", "enable", "--reason", "x", "--days", "366"]);
    assert_eq!(too_long.code, 2, "366 days: {too_long:?}");
    let first = cp.json(&[
        "support-access",
        "enable",
        "--reason",
        "vendor ticket 1234",
        "--days",
        "3",
    ]);
    assert_eq!(first["active"], true, "{first:#}");
    let second = cp.json(&["support-access", "enable", "--reason", "vendor ticket 1235"]);
    assert!(second["expires_at"].is_null(), "{second:#}");
    let table = cp
        .latchctl(&["support-access", "list"])
        .ok("support-access list");
    assert!(
        table.contains("IN FORCE") && table.contains("vendor ticket 1234"),
        "{table}"
    );
    let ended = cp.json(&[
        "support-access",
        "emergency-disable",
        "--reason",
        "the vendor was breached",
    ]);
    assert_eq!(ended["disabled"], 2, "{ended:#}");
    let list = cp.json(&["support-access", "list"]);
    let all = list["list"].as_array().expect("list");
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|a| a["active"] == false && a["disabled_how"] == "emergency")
    );
    let audit = cp.json(&["audit", "list"]);
    let entries = audit
        .as_array()
        .or_else(|| audit["list"].as_array())
        .expect("audit entries");
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "support_access.emergency_disabled"),
        "{audit:#}"
    );
}

#[test]
fn the_rotation_schedule_rotates_a_due_identity_on_its_host() {
    if !e2e_enabled("the_rotation_schedule_rotates_a_due_identity_on_its_host") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[
        "--mfa-required",
        "none",
        "--rotation-sweep-schedule",
        "*/2 * * * * *",
    ]);
    let host = TestHost::start("e2e-sched1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    useradd(&host, "batch");
    cp.json(&["vaults", "create", "sched"]);
    let id = enroll_account(&cp, "e2e-sched1", "batch", "sched");
    cp.json(&["identities", "update", &id, "--rotation-days", "7"]);
    let before = reveal(&cp, &id);
    // Its next date is made to have passed (as a week later would).
    cp.sql(&format!(
        "UPDATE identities SET next_rotation_at = 1000 WHERE id = '{id}'"
    ));
    let scheduled = wait_for("the scheduled rotation", Duration::from_secs(60), || {
        let list = cp.json(&["identities", "rotations", &id]);
        list["list"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["trigger"] == "scheduled").cloned())
    });
    let done = rotation_after(&cp, scheduled["id"].as_str().expect("id"), 60);
    assert_eq!(done["state"], "confirmed", "{done:#}");
    let after = reveal(&cp, &id);
    assert_ne!(after, before);
    assert!(host.pam_accepts("batch", &after));
    let shown = cp.json(&["identities", "show", &id]);
    assert!(shown["next_rotation_at"].as_str().is_some(), "{shown:#}");
    real.assert_unchanged();
}
