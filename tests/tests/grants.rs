//! Grants end to end, with the real binaries: who has access now (`latchctl grants`), how each
//! grant ended, the limits on grant windows, and what an explicit delete-account does to the
//! grants before it.

use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, TestHost, e2e_enabled, wait_for};
use serde_json::Value;

/// `latchctl --output json grants ARGS` → the list.
fn grants(cp: &ControlPlane, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["grants"];
    all.extend_from_slice(args);
    cp.json(&all)["list"]
        .as_array()
        .expect("grants list")
        .clone()
}

/// The one grant of `user` on `host`.
fn grant_of(cp: &ControlPlane, host: &str, user: &str) -> Value {
    let list = grants(cp, &["--host", host, "--user", user]);
    assert_eq!(list.len(), 1, "{list:#?}");
    list[0].clone()
}

/// An account with a short window is `active` in `latchctl grants` (with its time left), then
/// `revoked` with how, in both the table and the JSON; `jobs list` and `jobs show` say the same.
#[test]
fn grants_show_an_account_active_then_revoked_with_how() {
    if !e2e_enabled("grants_show_an_account_active_then_revoked_with_how") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-grant1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    let id = cp.create_job(&[
        "--host",
        "e2e-grant1",
        "--kind",
        "create-account",
        "--user",
        "alice",
        "--group",
        "sudo",
        "--expires-in",
        "5s",
    ]);
    cp.expect_confirmed(&id);

    let grant = grant_of(&cp, "e2e-grant1", "alice");
    assert_eq!(grant["state"], "active", "{grant:#}");
    assert_eq!(grant["job_id"], id.as_str());
    assert_eq!(grant["host_name"], "e2e-grant1");
    assert_eq!(grant["groups"], serde_json::json!(["sudo"]));
    let left = grant["seconds_left"].as_i64().expect("seconds_left");
    assert!((0..=5).contains(&left), "{grant:#}");
    let table = cp.latchctl(&["grants"]).ok("latchctl grants");
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no row for the grant:\n{table}"));
    assert!(
        row.contains("e2e-grant1")
            && row.contains("alice")
            && row.contains("account +sudo")
            && row.contains("active")
            && row.contains("left"),
        "{table}"
    );

    let grant = wait_for(
        "the grant to show as revoked",
        Duration::from_secs(30),
        || {
            let grant = grant_of(&cp, "e2e-grant1", "alice");
            (grant["state"] == "revoked").then_some(grant)
        },
    );
    assert!(
        matches!(
            grant["revoked_by"].as_str(),
            Some("agent_expiry" | "control_plane")
        ),
        "{grant:#}"
    );
    assert!(
        grant["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("expired; revoked by")),
        "{grant:#}"
    );
    assert!(host.passwd_line("alice").is_none());
    let table = cp.latchctl(&["grants"]).ok("latchctl grants");
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no row for the grant:\n{table}"));
    assert!(
        row.contains("revoked") && row.contains("expired; revoked by"),
        "{table}"
    );
    assert!(
        grants(&cp, &["--state", "active"]).is_empty(),
        "nobody should have access any more"
    );

    // jobs list: the host's name, and the grant's state in its own column.
    let jobs = cp
        .latchctl(&["jobs", "list", "--host", "e2e-grant1"])
        .ok("jobs list");
    let header = jobs.lines().next().expect("header");
    assert!(header.contains("GRANT"), "{jobs}");
    let row = jobs
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{jobs}"));
    assert!(
        row.contains("e2e-grant1") && row.contains("revoked"),
        "{jobs}"
    );
    let shown = cp.latchctl(&["jobs", "show", &id]).ok("jobs show");
    assert!(
        shown.contains("host:        e2e-grant1 (") && shown.contains("grant:       revoked"),
        "{shown}"
    );
    let job = cp.job(&id);
    assert_eq!(job["grant_state"], "revoked", "{job:#}");
    assert_eq!(job["host_name"], "e2e-grant1", "{job:#}");
    real.assert_unchanged();
}

/// An account created without an end gets the default window (not a permanent account); an
/// explicit delete-account then marks the earlier grant revoked by that job.
#[test]
fn delete_account_marks_the_earlier_grant_revoked_by_the_job() {
    if !e2e_enabled("delete_account_marks_the_earlier_grant_revoked_by_the_job") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--default-grant-duration", "30m"]);
    let host = TestHost::start("e2e-grant2");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    let grant_id = cp.create_job(&[
        "--host",
        "e2e-grant2",
        "--kind",
        "create-account",
        "--user",
        "bob",
    ]);
    let job = cp.expect_confirmed(&grant_id);
    let at = |v: &Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(v[field].as_str().expect(field)).expect("time")
    };
    let window = at(&job, "expires_at") - at(&job, "created_at");
    assert!(
        (window - chrono::Duration::minutes(30)).abs() < chrono::Duration::seconds(10),
        "no end given: the default window applies, not a permanent account: {job:#}"
    );
    assert_eq!(grant_of(&cp, "e2e-grant2", "bob")["state"], "active");

    let delete = cp.create_job(&[
        "--host",
        "e2e-grant2",
        "--kind",
        "delete-account",
        "--user",
        "bob",
    ]);
    cp.expect_confirmed(&delete);
    assert!(host.passwd_line("bob").is_none());
    let grant = grant_of(&cp, "e2e-grant2", "bob");
    assert_eq!(grant["state"], "revoked", "{grant:#}");
    assert_eq!(grant["revoked_by"], "job", "{grant:#}");
    assert_eq!(grant["revoked_by_job"], delete.as_str(), "{grant:#}");
    let shown = cp.latchctl(&["jobs", "show", &grant_id]).ok("jobs show");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("revoked:") && l.ends_with(&format!("by job {delete}"))),
        "{shown}"
    );
    let table = cp
        .latchctl(&["grants", "--user", "bob"])
        .ok("latchctl grants");
    assert!(
        table.contains(&format!("revoked by job {delete}")),
        "{table}"
    );
    real.assert_unchanged();
}

/// Finding 20 through the real CLI and server: bad `--expires-in` values get plain words (no
/// parser jargon), windows beyond the server's `--max-grant-duration` are refused naming it,
/// `--permanent` conflicts with `--expires-in`, and a permanent grant has no end.
#[test]
fn finding_20_latchctl_and_the_server_explain_grant_windows() {
    if !e2e_enabled("finding_20_latchctl_and_the_server_explain_grant_windows") {
        return;
    }
    let cp = ControlPlane::start(&["--max-grant-duration", "2h"]);
    let create = |extra: &[&str]| {
        let mut args = vec![
            "jobs",
            "create",
            "--host",
            "nohost",
            "--kind",
            "create-account",
            "--user",
            "alice",
        ];
        args.extend_from_slice(extra);
        cp.latchctl(&args)
    };
    for bad in ["-5m", "banana", "0s", "", "5 parsecs"] {
        let ran = create(&["--expires-in", bad]);
        assert_eq!(ran.code, 1, "{bad:?}: {ran:?}");
        assert!(
            ran.stderr
                .contains("give a positive duration such as 30m, 2h or 1d"),
            "{bad:?}: {}",
            ran.stderr
        );
        for jargon in [
            "invalid value",
            "expected",
            "humantime",
            "unexpected argument",
        ] {
            assert!(!ran.stderr.contains(jargon), "{bad:?}: {}", ran.stderr);
        }
    }
    for long in ["3h", "100000d", "99999999999s"] {
        let ran = create(&["--expires-in", long]);
        assert_eq!(ran.code, 1, "{long}: {ran:?}");
        assert!(
            ran.stderr.contains("--expires-in: asks for")
                && ran.stderr.contains("at most 2h")
                && ran.stderr.contains("--max-grant-duration"),
            "{long}: {}",
            ran.stderr
        );
    }
    let ran = create(&["--permanent", "--expires-in", "1h"]);
    assert_ne!(ran.code, 0);
    assert!(
        ran.stderr.contains("--permanent") && ran.stderr.contains("--expires-in"),
        "{}",
        ran.stderr
    );

    let host = TestHost::start("e2e-grant3");
    host.enroll_ok(&cp);
    let permanent = cp.json(&[
        "jobs",
        "create",
        "--host",
        "e2e-grant3",
        "--kind",
        "create-account",
        "--user",
        "carol",
        "--permanent",
    ]);
    assert!(permanent["expires_at"].is_null(), "{permanent:#}");
    let two_hours = cp.json(&[
        "jobs",
        "create",
        "--host",
        "e2e-grant3",
        "--kind",
        "add-group",
        "--user",
        "carol",
        "--group",
        "sudo",
        "--expires-in",
        "2h",
    ]);
    assert!(two_hours["expires_at"].is_string(), "{two_hours:#}");
    let audit = cp.json(&["audit", "list", "--host", "e2e-grant3"]);
    let created: Vec<Value> = audit["list"]
        .as_array()
        .expect("audit list")
        .iter()
        .filter(|e| e["action"] == "job.create")
        .map(|e| serde_json::from_str(e["detail"].as_str().expect("detail")).expect("json"))
        .collect();
    assert_eq!(created.len(), 2, "{created:#?}");
    assert_eq!(created[0]["permanent"], true, "{created:#?}");
    assert_eq!(created[1]["permanent"], false, "{created:#?}");
}

/// `latch-control serve` refuses a default window longer than the maximum.
#[test]
fn the_server_refuses_a_default_window_beyond_the_maximum() {
    if !e2e_enabled("the_server_refuses_a_default_window_beyond_the_maximum") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(latch_e2e::binary("latch-control"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-grant-duration",
            "1h",
            "--default-grant-duration",
            "2h",
        ])
        .output()
        .expect("run latch-control");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "command line --default-grant-duration: `default_grant_duration` (2h) is longer than `max_grant_duration` (1h)"
        ),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created for a refused configuration"
    );
}
