//! Issue 12 (first part): access policies through the real `latchctl` against a real control
//! plane — written, listed as a table and JSON, shown, replaced and deleted; mistakes refused
//! before anything is sent. No test host is needed.

use latch_e2e::ControlPlane;

#[test]
fn latchctl_writes_access_policies() {
    let cp = ControlPlane::start(&["--mfa-required", "none"]);
    for group in ["dbas", "managers"] {
        cp.latchctl(&["groups", "create", group])
            .ok("groups create");
    }
    let made = cp.json(&[
        "policies",
        "create",
        "--name",
        "dba-prod",
        "--group",
        "dbas",
        "--access",
        "sudo,ephemeral-account",
        "--hosts",
        "env=prod,team=db",
        "--max",
        "2h",
        "--approver-group",
        "managers",
        "--window",
        "mon,tue,wed,thu,fri/08:00-18:00",
        "--exclusive",
        "--mfa-at-approval",
    ]);
    assert_eq!(made["max_minutes"], 120, "{made:#}");
    assert_eq!(
        made["access"],
        serde_json::json!(["ephemeral-account", "sudo"])
    );
    assert_eq!(made["approver_group"], "managers");
    assert_eq!(made["windows"][0]["start"], "08:00");
    let table = cp.latchctl(&["policies", "list"]).ok("policies list");
    assert!(
        table.contains("dba-prod") && table.contains("1 of managers"),
        "{table}"
    );
    let shown = cp
        .latchctl(&["policies", "show", "dba-prod"])
        .ok("policies show");
    assert!(shown.contains("mon,tue,wed,thu,fri/08:00-18:00"), "{shown}");

    // Refused before anything is sent: a window that ends before it starts, a duration in
    // seconds, an unknown access, no approver and no --no-approval.
    for bad in [
        vec!["--window", "mon/18:00-08:00"],
        vec!["--max", "90s"],
        vec!["--access", "root"],
    ] {
        let mut args = vec![
            "policies",
            "create",
            "--name",
            "x",
            "--group",
            "dbas",
            "--access",
            "sudo",
            "--hosts",
            "env=prod",
            "--max",
            "1h",
            "--approver-group",
            "managers",
        ];
        args.extend(bad.iter().copied());
        let ran = cp.latchctl(&args);
        assert_eq!(ran.code, 2, "{bad:?}: {ran:?}");
    }
    let no_approver = cp.latchctl(&[
        "policies", "create", "--name", "y", "--group", "dbas", "--access", "sudo", "--hosts",
        "env=prod", "--max", "1h",
    ]);
    assert_eq!(no_approver.code, 2, "{no_approver:?}");
    // The server refuses what only it can check: an empty selector, an unknown group.
    let unknown = cp.latchctl(&[
        "policies",
        "create",
        "--name",
        "z",
        "--group",
        "nobody",
        "--access",
        "sudo",
        "--hosts",
        "env=prod",
        "--max",
        "1h",
        "--no-approval",
    ]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("nobody"), "{unknown:?}");

    // Replaced whole; the groups it names cannot be deleted meanwhile.
    let replaced = cp.json(&[
        "policies",
        "update",
        "dba-prod",
        "--group",
        "dbas",
        "--access",
        "ephemeral-account",
        "--hosts",
        "env=staging",
        "--max",
        "30m",
        "--no-approval",
    ]);
    assert_eq!(replaced["approval_required"], false, "{replaced:#}");
    assert_eq!(replaced["hosts"], "env=staging");
    let in_use = cp.latchctl(&["groups", "delete", "dbas"]);
    assert_ne!(in_use.code, 0, "{in_use:?}");
    assert!(in_use.stderr.contains("dba-prod"), "{in_use:?}");
    cp.json(&["policies", "delete", "dba-prod"]);
    let list = cp.json(&["policies", "list"]);
    assert_eq!(list["list"], serde_json::json!([]), "{list:#}");
}

/// Shell completions: a script per shell that the shell itself accepts, covering the commands.
#[test]
fn latchctl_prints_shell_completions_bash_accepts() {
    let out = std::process::Command::new(latch_e2e::binary("latchctl"))
        .args(["completions", "bash"])
        .output()
        .expect("run latchctl");
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8(out.stdout).expect("UTF-8");
    for command in [
        "policies",
        "identities",
        "vaults",
        "support-access",
        "enroll-account",
    ] {
        assert!(script.contains(command), "{command} is not completed");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchctl.bash");
    std::fs::write(&path, &script).expect("write the script");
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    assert!(
        checked.status.success(),
        "bash refuses the script: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = std::process::Command::new(latch_e2e::binary("latchctl"))
            .args(["completions", shell])
            .output()
            .expect("run latchctl");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{shell}: {out:?}"
        );
    }
}
