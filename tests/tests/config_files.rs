//! The configuration files, through the real binaries: `config check` of `latch-control` and
//! `latch-agent` on the shipped reference files and on broken ones (each mistake at its line),
//! the precedence command line > environment > file > default, and `serve --config` starting
//! from a file. No root needed: nothing here touches the machine beyond a temporary directory.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use latch_e2e::{Ran, binary};

/// The repository's `packaging/` directory.
fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

/// Runs `program config check` with `args` and only `env` as the environment.
fn check(program: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut command = Command::new(binary(program));
    command.env_clear().args(["config", "check"]).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run config check").into()
}

/// Runs `program config check` like [`check`], expecting it to refuse (status 1, nothing on
/// standard output); returns what it printed on standard error.
fn refused(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let ran = check(program, args, env);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert_eq!(ran.stdout, "", "nothing printed as valid");
    ran.stderr
}

/// A file holding `text` in `dir`.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the configuration");
    path.to_string_lossy().into_owned()
}

/// The effective-value line of `key` in a `config check` report, spaces squeezed:
/// `key = value (origin)`.
fn effective(report: &str, key: &str) -> String {
    report
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .find(|line| {
            line.starts_with(&format!("{key} = ")) || line.starts_with(&format!("{key}: "))
        })
        .unwrap_or_else(|| panic!("no effective value of {key} in:\n{report}"))
}

/// Every key at its default in `report` is documented with that default in `reference`
/// (`# key = value`), and the report lists at least `at_least` keys.
fn defaults_are_documented(report: &str, reference: &str, at_least: usize) {
    let mut listed = 0;
    for line in report.lines().skip(2) {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        listed += 1;
        let Some(setting) = line.strip_suffix(" (default)") else {
            panic!("not at its default with an empty environment: {line}");
        };
        // Unset options, and empty lists, are documented with an example.
        if let Some(key) = setting
            .strip_suffix(": not set")
            .or_else(|| setting.strip_suffix(" = []"))
        {
            assert!(
                reference.contains(&format!("\n# {key} = ")),
                "`{key}` is not documented"
            );
        } else {
            assert!(
                reference.contains(&format!("\n# {setting}\n")),
                "the reference file does not give the default `{setting}`"
            );
        }
    }
    assert!(listed >= at_least, "{report}");
}

#[test]
fn both_reference_files_pass_config_check_and_give_the_defaults() {
    let control = packaging("control.toml");
    let ran = check(
        "latch-control",
        &["--config", control.to_str().unwrap()],
        &[],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout
            .starts_with(&format!("{}: ok\n", control.display())),
        "{ran:?}"
    );
    let reference = std::fs::read_to_string(&control).unwrap();
    defaults_are_documented(&ran.stdout, &reference, 35);

    let agent = packaging("agent.toml");
    let ran = check("latch-agent", &["--config", agent.to_str().unwrap()], &[]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout
            .starts_with(&format!("{}: ok\n", agent.display())),
        "{ran:?}"
    );
    let reference = std::fs::read_to_string(&agent).unwrap();
    defaults_are_documented(&ran.stdout, &reference, 13);
}

#[test]
fn control_config_check_points_at_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "control.toml",
        "# the control plane\n\
         listen = \"127.0.0.1:9443\"\n\
         rate_limt = 100\n\
         max_attempts = \"many\"\n\
         vault_password_length = 500\n\
         mfa_window = \"13h\"\n\
         rotation_sweep_schedule = \"hourly\"\n\
         database_url = \"postgres://latch:s3cret@db.example.com/latch\"\n\
         new_ca = true\n",
    );
    let stderr = refused("latch-control", &["--config", &file], &[]);
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        format!("{file}:3:1: unknown key `rate_limt`: did you mean `rate_limit`?"),
        format!(
            "{file}:4:16: invalid value 'many' for `max_attempts`: invalid digit found in string"
        ),
        format!(
            "{file}:5:25: invalid value '500' for `vault_password_length`: 500 is not in 12..=128"
        ),
        format!("{file}:6:14: `mfa_window` must be between 1m and 12h (it was 13h)"),
    ];
    for (line, expected) in lines.iter().zip(&expected) {
        assert_eq!(line, expected, "{stderr}");
    }
    let starts = [
        format!("{file}:7:27: `rotation_sweep_schedule`: \"hourly\" is not a cron expression"),
        format!("{file}:8:16: `database_url` carries a password"),
        format!(
            "{file}:9:1: `new_ca` cannot be set in the configuration file: give --new-ca on the command line when it is needed"
        ),
        format!("{file}: not valid (7 mistake(s)); nothing was started"),
    ];
    for (line, start) in lines[4..].iter().zip(&starts) {
        assert!(line.starts_with(start.as_str()), "{stderr}");
    }
    assert_eq!(lines.len(), 8, "{stderr}");
    assert!(lines[5].contains("LATCH_DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // Options that need each other are checked across the file and the command line.
    let tls = write(
        dir.path(),
        "tls.toml",
        "\ntls_cert = \"/etc/latch/chain.pem\"\n",
    );
    // The file's own syntax.
    let broken = write(
        dir.path(),
        "broken.toml",
        "listen = \"127.0.0.1:1\nrate_limit = 3\n",
    );
    let missing = dir.path().join("missing.toml");
    let control = packaging("control.toml");
    for (args, env, start, contains) in [
        (
            vec!["--config", tls.as_str()],
            None,
            format!("{tls}:2:12: the following required arguments were not provided: --tls-key"),
            "",
        ),
        (
            vec!["--config", tls.as_str(), "--insecure-http"],
            None,
            format!("{tls}:2:12: the argument '--tls-cert <TLS_CERT>'"),
            "cannot be used with '--insecure-http' (`tls_cert` is set here)",
        ),
        (
            vec!["--config", broken.as_str()],
            None,
            format!("{broken}:1:"),
            "not valid TOML",
        ),
        (
            vec!["--config", missing.to_str().unwrap()],
            None,
            format!("{}: cannot read it", missing.display()),
            "",
        ),
        // The environment's mistakes name the variable.
        (
            vec!["--config", control.to_str().unwrap()],
            Some(("LATCH_MFA_WINDOW", "13h")),
            "environment LATCH_MFA_WINDOW: `mfa_window` must be between 1m and 12h".to_owned(),
            "",
        ),
        (
            vec!["--config", control.to_str().unwrap()],
            Some(("LATCH_MAX_ATTEMPTS", "500")),
            "environment LATCH_MAX_ATTEMPTS: invalid value '500' for '--max-attempts <MAX_ATTEMPTS>': 500 is not in 1..=100".to_owned(),
            "",
        ),
    ] {
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let stderr = refused("latch-control", &args, &env);
        assert!(
            stderr.starts_with(&start) && stderr.contains(contains),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn agent_config_check_points_at_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "agent.toml",
        "uid_min = 61000\n\
         uid_max = 61999\n\
         allowed_groupz = [\"sudo\"]\n\
         kill_grace_seconds = \"2\"\n\
         lock_wait_seconds = 100000\n\
         allowed_groups = [\"root\"]\n",
    );
    let stderr = refused("latch-agent", &["--config", &file], &[]);
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!("{file}:3:1: unknown key `allowed_groupz`: did you mean `allowed_groups`?"),
            format!(
                "{file}:4:22: `kill_grace_seconds` has the wrong type (invalid type: string \"2\", expected u64): write it like `kill_grace_seconds = 1`"
            ),
            format!("{file}:5:21: `lock_wait_seconds`: must be at most 300 seconds"),
            format!("{file}:6:18: `allowed_groups`: \"root\" may never be granted"),
            format!(
                "{file}: not valid (4 mistake(s)); `latch-agent run` would only revoke until it is fixed"
            ),
        ]
    );
    let missing = file.replace("agent.toml", "missing.toml");
    let stderr = refused("latch-agent", &["--config", &missing], &[]);
    assert!(
        stderr.starts_with(&format!("{missing}: cannot read it")),
        "{stderr}"
    );
    let reference = packaging("agent.toml");
    let stderr = refused(
        "latch-agent",
        &["--config", reference.to_str().unwrap()],
        &[("LATCH_AGENT_UID_MIN", "10")],
    );
    assert!(
        stderr.starts_with("environment LATCH_AGENT_UID_MIN: `uid_min`: must be at least 1000"),
        "{stderr}"
    );
}

#[test]
fn the_command_line_beats_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "control.toml",
        "listen = \"127.0.0.1:9443\"\n\
         rate_limit = 100\n\
         lease_timeout = \"30s\"\n\
         tls_name = [\"latch.example.com\", \"10.0.0.5\"]\n\
         database_url = \"postgres://latch@db.example.com/latch\"\n",
    );
    let env = [
        ("LATCH_RATE_LIMIT", "200"),
        ("LATCH_LEASE_TIMEOUT", "45s"),
        ("LATCH_MAX_ATTEMPTS", "7"),
        (
            "LATCH_DATABASE_URL",
            "postgres://latch:s3cret@db.example.com/latch",
        ),
    ];
    let ran = check(
        "latch-control",
        &["--config", &file, "--lease-timeout", "60s"],
        &env,
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    let report = &ran.stdout;
    assert_eq!(
        effective(report, "listen"),
        format!("listen = \"127.0.0.1:9443\" ({file}:1:10)")
    );
    assert_eq!(
        effective(report, "rate_limit"),
        "rate_limit = 200 (environment LATCH_RATE_LIMIT)"
    );
    assert_eq!(
        effective(report, "lease_timeout"),
        "lease_timeout = \"60s\" (command line --lease-timeout)"
    );
    assert_eq!(
        effective(report, "max_attempts"),
        "max_attempts = 7 (environment LATCH_MAX_ATTEMPTS)"
    );
    assert_eq!(
        effective(report, "tls_name"),
        format!("tls_name = [\"latch.example.com\", \"10.0.0.5\"] ({file}:4:12)")
    );
    assert_eq!(effective(report, "job_ttl"), "job_ttl = \"24h\" (default)");
    // The password of the environment's URL is not shown.
    assert_eq!(
        effective(report, "database_url"),
        "database_url = \"postgres://latch:***@db.example.com/latch\" (environment LATCH_DATABASE_URL)"
    );
    assert!(!report.contains("s3cret"), "{report}");

    // The agent: LATCH_AGENT_<KEY> over the file.
    let file = write(
        dir.path(),
        "agent.toml",
        "uid_min = 61000\nuid_max = 61999\nlog_level = \"debug\"\n",
    );
    let ran = check(
        "latch-agent",
        &["--config", &file],
        &[
            ("LATCH_AGENT_UID_MIN", "61500"),
            ("LATCH_AGENT_ALLOWED_GROUPS", "[\"sudo\", \"docker\"]"),
        ],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    let report = &ran.stdout;
    assert!(report.starts_with(&format!("{file}: ok\n")), "{report}");
    assert_eq!(
        effective(report, "uid_min"),
        "uid_min = 61500 (environment LATCH_AGENT_UID_MIN)"
    );
    assert_eq!(
        effective(report, "uid_max"),
        format!("uid_max = 61999 ({file}:2:11)")
    );
    assert_eq!(
        effective(report, "allowed_groups"),
        "allowed_groups = [\"sudo\", \"docker\"] (environment LATCH_AGENT_ALLOWED_GROUPS)"
    );
    assert_eq!(
        effective(report, "log_level"),
        format!("log_level = \"debug\" ({file}:3:13)")
    );
    assert_eq!(
        effective(report, "state_dir"),
        "state_dir = \"/var/lib/latch\" (default)"
    );
}

#[test]
fn serve_starts_from_its_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        "control.toml",
        &format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nlog_level = \"warn\"\nmax_grant_duration = \"8h\"\ndefault_grant_duration = \"2h\"\n",
            data.display()
        ),
    );
    let mut child = Command::new(binary("latch-control"))
        .env_clear()
        .args(["serve", "--config", &file])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start latch-control");
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read stdout");
        let done = line.trim().starts_with("listening on https://127.0.0.1:");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(text.contains("listening on https://127.0.0.1:"), "{text}");
    assert!(text.contains(&format!("configuration:  {file}")), "{text}");
    assert!(
        text.contains(&format!("data directory: {}", data.display())),
        "{text}"
    );
    assert!(
        text.contains("grants:         at most 8h; 2h when no end is given"),
        "{text}"
    );
    assert!(data.join("admin.token").is_file(), "{text}");

    // A broken file: nothing starts, nothing is created.
    let other = dir.path().join("other");
    let file = write(
        dir.path(),
        "broken.toml",
        &format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nmax_attempts = 0\n",
            other.display()
        ),
    );
    let ran: Ran = Command::new(binary("latch-control"))
        .env_clear()
        .args(["serve", "--config", &file])
        .output()
        .expect("run latch-control")
        .into();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.starts_with(&format!(
            "{file}:3:16: invalid value '0' for `max_attempts`"
        )),
        "{}",
        ran.stderr
    );
    assert!(
        !other.exists(),
        "a refused configuration created the data directory"
    );
}
