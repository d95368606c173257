use super::*;
use crate::system::etc::parse_group;

#[test]
fn defaults() {
    let config = Config::parse("").unwrap();
    assert_eq!(config, Config::defaults());
    assert_eq!((config.uid_min, config.uid_max), (60000, 60999));
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/latch"));
    assert_eq!(config.default_shell, "/bin/bash");
}

#[test]
fn the_shipped_sample_is_the_defaults() {
    let sample = include_str!("../../../packaging/agent.toml");
    assert_eq!(Config::parse(sample).unwrap(), Config::parse("").unwrap());
    let uncommented: String = sample
        .lines()
        .map(|line| {
            line.strip_prefix("# ")
                .filter(|l| l.contains(" = "))
                .unwrap_or("")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        Config::parse(&uncommented).unwrap().allowed_groups,
        Some(vec!["sudo".to_owned()])
    );
}

#[test]
fn adopting_system_accounts_is_off_unless_allowed() {
    assert!(!Config::parse("").unwrap().allow_adopt_system_accounts);
    assert!(
        Config::parse("allow_adopt_system_accounts = true")
            .unwrap()
            .allow_adopt_system_accounts
    );
    assert!(Config::parse("allow_adopt_system_accounts = \"yes\"").is_err());
}

#[test]
fn sshd_reload_is_configurable() {
    let config = Config::parse(
            "sshd_reload_command = [\"/usr/sbin/service\", \"ssh\", \"reload\"]\nsshd_pid_file = \"/run/sshd-e2e.pid\"",
        )
        .unwrap();
    assert_eq!(
        config.sshd_reload,
        Reload {
            command: Some(vec![
                "/usr/sbin/service".into(),
                "ssh".into(),
                "reload".into()
            ]),
            pid_file: PathBuf::from("/run/sshd-e2e.pid"),
        }
    );
    assert_eq!(
        Config::parse("").unwrap().sshd_reload.pid_file,
        PathBuf::from("/run/sshd.pid")
    );
}

#[test]
fn takes_replica_urls() {
    let config =
        Config::parse("servers = [\"https://b.example:8443\", \"https://c.example:8443\"]")
            .unwrap();
    assert_eq!(
        config.servers,
        vec!["https://b.example:8443", "https://c.example:8443"]
    );
    assert!(Config::parse("").unwrap().servers.is_empty());
}

#[test]
fn detects_the_sudo_group() {
    let config = Config::parse("").unwrap();
    let debian = Snapshot {
        group: parse_group("sudo:x:27:\n").unwrap(),
        ..Snapshot::default()
    };
    let fedora = Snapshot {
        group: parse_group("wheel:x:10:\n").unwrap(),
        ..Snapshot::default()
    };
    assert_eq!(config.allowed_groups(&debian), vec!["sudo"]);
    assert_eq!(config.allowed_groups(&fedora), vec!["wheel"]);
    let custom = Config::parse("allowed_groups = [\"docker\"]").unwrap();
    assert_eq!(custom.allowed_groups(&debian), vec!["docker"]);
}

#[test]
fn the_keys_are_those_of_the_raw_config() {
    let error = toml::from_str::<RawConfig>("no_such_key = 1").unwrap_err();
    let listed: Vec<&str> = error
        .message()
        .split("expected one of")
        .nth(1)
        .unwrap()
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    assert_eq!(listed, KEYS);
}

/// Loads `text` as /etc/x/agent.toml with `env` as the whole environment.
fn load(text: &str, env: &[(&str, &str)]) -> Result<Loaded, Mistakes> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::load_with(Some(&path), &|name| env.get(name).cloned())
}

/// The mistakes' text with the temporary directory cut out.
fn mistakes(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    load(text, env)
        .unwrap_err()
        .0
        .iter()
        .map(|m| {
            let text = m.to_string();
            match text.find("agent.toml") {
                Some(at) => text[at..].to_owned(),
                None => text,
            }
        })
        .collect()
}

#[test]
fn every_mistake_points_at_its_line() {
    assert_eq!(
        mistakes(
            "uid_min = 61000\nallowed_groupz = [\"sudo\"]\nkill_grace_seconds = \"2\"\nuid_max = 70000\n",
            &[]
        ),
        [
            "agent.toml:2:1: unknown key `allowed_groupz`: did you mean `allowed_groups`?",
            "agent.toml:3:22: `kill_grace_seconds` has the wrong type (invalid type: string \"2\", expected u64): write it like `kill_grace_seconds = 1`",
            "agent.toml:4:11: `uid_max`: must be at least uid_min and below 65534",
        ]
    );
    // Values that parse but are out of range: each one, at its value.
    assert_eq!(
        mistakes("uid_min = 10\n\n  lock_wait_seconds = 100000\n", &[]),
        [
            "agent.toml:1:11: `uid_min`: must be at least 1000 (below are system accounts)",
            "agent.toml:3:23: `lock_wait_seconds`: must be at most 300 seconds",
        ]
    );
    assert_eq!(
        mistakes("log_level = \"debug\"\nservers = [\"https://a\"\n", &[]).len(),
        1
    );
}

#[test]
fn the_environment_overrides_the_file() {
    let loaded = load(
        "uid_min = 61000\nuid_max = 61999\nlog_level = \"debug\"\n",
        &[
            ("LATCH_AGENT_UID_MIN", "61500"),
            ("LATCH_AGENT_ALLOWED_GROUPS", "[\"sudo\", \"docker\"]"),
            ("LATCH_AGENT_DEFAULT_SHELL", "/bin/sh"),
            ("LATCH_AGENT_SUDO_DYNAMIC_GROUPS", "false"),
            ("LATCH_AGENT_TEST_PAUSE_AT", "not a key: ignored"),
        ],
    )
    .unwrap();
    let config = &loaded.config;
    assert_eq!((config.uid_min, config.uid_max), (61500, 61999));
    assert_eq!(
        config.allowed_groups,
        Some(vec!["sudo".to_owned(), "docker".to_owned()])
    );
    assert_eq!(config.default_shell, "/bin/sh");
    assert!(!config.sudo_dynamic_groups);
    assert_eq!(config.log_level, "debug");
    let lines = loaded.effective_values();
    let line = |key: &str| {
        lines
            .iter()
            .find(|l| {
                l.trim_start().starts_with(&format!("{key} "))
                    || l.trim_start().starts_with(&format!("{key}:"))
            })
            .unwrap()
            .clone()
    };
    assert!(
        line("uid_min").ends_with("(environment LATCH_AGENT_UID_MIN)"),
        "{lines:?}"
    );
    assert!(line("uid_max").contains("agent.toml:2:11)"), "{lines:?}");
    assert!(line("state_dir").ends_with("(default)"), "{lines:?}");
    assert!(line("sshd_reload_command").contains("not set"), "{lines:?}");
    assert_eq!(lines.len(), KEYS.len());
    // A bad value in the environment names the variable.
    assert_eq!(
        mistakes("", &[("LATCH_AGENT_UID_MIN", "lots")]),
        [
            "environment LATCH_AGENT_UID_MIN: `uid_min` has the wrong type (invalid type: string \"lots\", expected u32): write it like `uid_min = 60000`"
        ]
    );
    assert_eq!(
        mistakes("uid_min = 61000\n", &[]),
        ["agent.toml:1:11: `uid_min`: is above uid_max (60999, its default): set uid_max as well"]
    );
    assert_eq!(
        mistakes("uid_min = 61000\n", &[("LATCH_AGENT_UID_MAX", "100")]),
        ["environment LATCH_AGENT_UID_MAX: `uid_max`: must be at least uid_min and below 65534"]
    );
}

#[test]
fn a_missing_file_is_an_error_only_when_named() {
    let missing = Path::new("/nonexistent/agent.toml");
    let error = Config::load_with(Some(missing), &|_| None).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/agent.toml: cannot read it"),
        "{error}"
    );
}

#[test]
fn effective_values_round_trip() {
    let config = Config::parse(
            "uid_min = 61000\nuid_max = 61999\nallowed_groups = [\"docker\"]\nsshd_reload_command = [\"/bin/true\"]\nservers = [\"https://b:1\"]\nkill_grace_seconds = 5\n",
        )
        .unwrap();
    let table = toml::Table::try_from(RawConfig::from(&config)).unwrap();
    assert_eq!(Config::parse(&table.to_string()).unwrap(), config);
}

#[test]
fn refuses_bad_values_naming_the_key() {
    for (text, key) in [
        ("uid_min = 10", "uid_min"),
        ("uid_min = 5000\nuid_max = 4000", "uid_max"),
        ("allowed_groups = [\"root\"]", "allowed_groups"),
        ("allowed_groups = [\"a:b\"]", "allowed_groups"),
        ("default_shell = \"bash\"", "default_shell"),
        ("lock_wait_seconds = 100000", "lock_wait_seconds"),
        ("kill_grace_seconds = 3600", "kill_grace_seconds"),
        ("servers = [\"latch-b:8443\"]", "servers"),
        ("sshd_reload_command = []", "sshd_reload_command"),
        (
            "sshd_reload_command = [\"bin/reload\"]",
            "sshd_reload_command",
        ),
        ("sshd_pid_file = \"sshd.pid\"", "sshd_pid_file"),
    ] {
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    assert!(
        Config::parse("no_such_key = 1")
            .unwrap_err()
            .to_string()
            .contains("no_such_key")
    );
}
