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
    for line in [
        "ExecStart=/usr/bin/latch-agent run",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
        "RestartPreventExitStatus=78",
    ] {
        assert!(unit.contains(line), "latch-agent.service lacks {line}");
    }
}
