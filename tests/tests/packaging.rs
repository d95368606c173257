//! The shipped sample configuration documents every option the agent accepts; the systemd units
//! say what they must, verify, and keep their exposure scores; the README gives CI's test command.

#[test]
fn sample_agent_config_documents_every_key() {
    let sample = include_str!("../../packaging/agent.toml");
    let config_source = include_str!("../../agent/src/config.rs");
    let raw = config_source
        .split("struct RawConfig {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("RawConfig in agent/src/config.rs");
    let keys: Vec<&str> = raw
        .lines()
        .filter_map(|line| line.trim().split(':').next())
        .filter(|key| !key.is_empty() && !key.starts_with("//"))
        .collect();
    assert!(keys.len() >= 8, "{keys:?}");
    for key in keys {
        assert!(
            sample.contains(&format!("# {key} = ")),
            "packaging/agent.toml does not document `{key}`"
        );
    }
}

#[test]
fn the_agent_unit_notifies_and_always_restarts() {
    let unit = include_str!("../../packaging/systemd/latch-agent.service");
    assert!(
        !unit.contains("RestartPreventExitStatus"),
        "a refused credential must not stop the agent (revoke-only mode)"
    );
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "ExecStart=/usr/bin/latch-agent run",
        "Restart=always",
        "After=network-online.target",
        "Wants=network-online.target",
        "StateDirectory=latch",
        "StateDirectoryMode=0700",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=",
        "SystemCallFilter=",
        "ReadWritePaths=",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "latch-agent.service lacks {line}"
        );
    }
    // Everything the agent writes must stay writable under ProtectSystem=strict.
    let writable = unit
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .expect("ReadWritePaths");
    for path in ["/etc", "/home", "/var/lib/latch", "/run/sudo"] {
        assert!(
            writable.split_whitespace().any(|p| p == path),
            "{path} is not in ReadWritePaths"
        );
    }
}

#[test]
fn the_control_unit_runs_as_its_own_user_without_capabilities() {
    let unit = include_str!("../../packaging/systemd/latch-control.service");
    for line in [
        "User=latch-control",
        "Group=latch-control",
        "ExecStart=/usr/bin/latch-control serve --data-dir /var/lib/latch-control",
        "Restart=on-failure",
        "StateDirectory=latch-control",
        "StateDirectoryMode=0700",
        // No capability at all (the default port needs none).
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "latch-control.service lacks the line {line}"
        );
    }
    assert!(
        !unit.contains("ReadWritePaths"),
        "only its state directory is writable"
    );
}

/// Whether `systemd-analyze` is installed (a skip without it, unless LATCH_E2E=required).
fn systemd_analyze_present(test: &str) -> bool {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
    {
        return true;
    }
    assert!(
        std::env::var("LATCH_E2E").map_or(true, |v| v != "required"),
        "{test}: systemd-analyze is missing (apt-get install systemd)"
    );
    eprintln!("SKIPPED {test}: systemd-analyze is not installed");
    false
}

/// `systemd-analyze verify` is clean for both units, in a root of their own that holds them,
/// the distribution's units they refer to, and their programs (stand-ins: verify checks that
/// ExecStart is executable).
#[test]
fn both_units_verify() {
    if !systemd_analyze_present("both_units_verify") {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("units directory");
    std::fs::create_dir_all(root.path().join("usr/bin")).expect("usr/bin");
    std::os::unix::fs::symlink("usr/lib", root.path().join("lib")).expect("lib link");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").expect("the system's units") {
        let entry = entry.expect("unit");
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(entry.path(), units.join(entry.file_name())).expect("copy a unit");
        }
    }
    for name in ["latch-agent", "latch-control"] {
        let source = format!(
            "{}/../packaging/systemd/{name}.service",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::copy(source, units.join(format!("{name}.service"))).expect("copy our unit");
        let program = root.path().join("usr/bin").join(name);
        std::fs::write(&program, "#!/bin/sh\n").expect("stand-in program");
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(["latch-agent.service", "latch-control.service"])
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// Each unit's `systemd-analyze security --offline=true` exposure is at most what README.md
/// states for it (its "Security" section), and the agent's at most 3.0.
#[test]
fn the_units_exposure_is_at_most_what_the_readme_says() {
    if !systemd_analyze_present("the_units_exposure_is_at_most_what_the_readme_says") {
        return;
    }
    let readme = include_str!("../../README.md");
    for unit in ["latch-agent.service", "latch-control.service"] {
        let stated: f64 = readme
            .lines()
            .find_map(|l| l.strip_prefix(&format!("| `{unit}` | ")))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("README.md states no exposure for {unit}"));
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(format!(
                "{}/../packaging/systemd/{unit}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .output()
            .expect("systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split(&format!("exposure level for {unit}: ")).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score in: {text}"));
        assert!(
            score <= stated,
            "{unit}: exposure {score} is above the {stated} README.md states"
        );
        if unit == "latch-agent.service" {
            assert!(
                stated <= 3.0,
                "the agent's exposure must stay at or below 3.0"
            );
        }
    }
}

#[test]
fn the_readme_gives_the_test_command_ci_runs() {
    let readme = include_str!("../../README.md");
    let ci = include_str!("../../.ci/run");
    let command = "LATCH_E2E=required ./scripts/test";
    assert!(
        readme.contains(command),
        "README.md does not give the test command"
    );
    assert!(
        ci.lines().any(|line| line.trim() == command),
        ".ci/run does not run the README's test command"
    );
    for section in [
        "## Quickstart",
        "## Running the tests",
        "## Job kinds",
        "## Configuration",
        "## Error codes",
        "## Security",
    ] {
        assert!(readme.contains(section), "README.md lacks {section}");
    }
}
