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
        // A watchdog SIGABRT must not write the host credential to a core file.
        "LimitCORE=0",
        // The start revokes what ended during a downtime before READY=1: more than 90 s.
        "TimeoutStartSec=10min",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "latch-agent.service lacks {line}"
        );
    }
    // Everything the agent writes must stay writable under ProtectSystem=strict, and nothing a
    // minimal host may lack (no sudo, no mail spool) may stop the agent from starting: systemd
    // fails a start whose ReadWritePaths= names a missing path without "-" (226/NAMESPACE).
    let writable: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .expect("ReadWritePaths")
        .split_whitespace()
        .collect();
    let always_there = ["/etc", "/var/lib/latch"]; // the latter is the StateDirectory=
    for path in always_there {
        assert!(writable.contains(&path), "{path} is not in ReadWritePaths");
    }
    for path in ["/home", "/var/mail", "/var/spool/mail", "/run/sudo"] {
        assert!(
            writable.contains(&format!("-{path}").as_str()),
            "-{path} (may be absent) is not in ReadWritePaths: {writable:?}"
        );
    }
    for path in &writable {
        assert!(
            path.starts_with('-') || always_there.contains(path),
            "ReadWritePaths={path}: a path a host may lack needs the \"-\" prefix"
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

/// The agent's maintainer scripts read Latch's records through one block, the same in each
/// (a script cannot share code with the others: postrm runs after the package's files are
/// gone), and none names the default state directory outside it: a state_dir set in agent.toml
/// is followed everywhere.
#[test]
fn the_agent_maintainer_scripts_share_one_reading_of_the_records() {
    const START: &str = "# --- Latch's records";
    const END: &str = "# --- end of Latch's records";
    let scripts = [
        (
            "postinst",
            include_str!("../../packaging/debian/agent/postinst"),
        ),
        ("prerm", include_str!("../../packaging/debian/agent/prerm")),
        (
            "postrm",
            include_str!("../../packaging/debian/agent/postrm"),
        ),
    ];
    let block = |name: &str, text: &'static str| -> (&'static str, String) {
        let start = text
            .find(START)
            .unwrap_or_else(|| panic!("{name} lacks {START:?}"));
        let end = text[start..]
            .find(END)
            .map(|at| start + at + END.len())
            .unwrap_or_else(|| panic!("{name} lacks {END:?}"));
        (
            &text[start..end],
            format!("{}{}", &text[..start], &text[end..]),
        )
    };
    let (first, _) = block(scripts[0].0, scripts[0].1);
    assert!(first.contains("state_dir") && first.contains("accounts.json"));
    for (name, text) in scripts {
        let (shared, rest) = block(name, text);
        assert_eq!(shared, first, "{name}'s block differs from postinst's");
        let code: Vec<&str> = rest
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect();
        assert!(
            !code.iter().any(|line| line.contains("/var/lib/latch")),
            "{name} names the state directory outside the shared block"
        );
    }
}
