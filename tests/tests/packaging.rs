//! The shipped sample configuration parses, and documents every option the agent accepts.

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
fn the_unit_runs_the_agent_and_restarts_on_failure() {
    let unit = include_str!("../../packaging/systemd/latch-agent.service");
    assert!(
        !unit.contains("RestartPreventExitStatus"),
        "a refused credential must not stop the agent (revoke-only mode)"
    );
    for line in [
        "ExecStart=/usr/bin/latch-agent run",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=",
        "SystemCallFilter=",
        "ReadWritePaths=",
    ] {
        assert!(unit.contains(line), "latch-agent.service lacks {line}");
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
fn the_unit_verifies_and_its_exposure_is_low() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/systemd/latch-agent.service"
        ))
        .output()
    else {
        assert!(
            std::env::var("LATCH_E2E").map_or(true, |v| v != "required"),
            "systemd-analyze is missing"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for latch-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    assert!(
        score <= 3.0,
        "exposure {score} is above 3.0 (systemd-analyze security)"
    );
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
