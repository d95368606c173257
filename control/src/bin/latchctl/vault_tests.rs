use super::super::vault_views::{credential_lines, rows};
use super::*;
use clap::{CommandFactory as _, Parser as _};
use latch_common::vault::RevealedSecret;

#[test]
fn checkout_durations_are_whole_minutes_from_5m_to_24h() {
    for (text, minutes) in [
        ("5m", 5),
        ("30m", 30),
        ("1h", 60),
        ("1h30m", 90),
        ("90m", 90),
        ("24h", 1440),
        ("1d", 1440),
        (" 2h ", 120),
        ("300s", 5),
    ] {
        assert_eq!(checkout_minutes_arg(text), Ok(minutes), "{text}");
    }
    for (text, says) in [
        ("4m", "5m to 24h"),
        ("24h1m", "5m to 24h"),
        ("2d", "5m to 24h"),
        ("0m", "5m to 24h"),
        ("30", "no unit"),
        ("90s", "whole number of minutes"),
        ("5m30s", "whole number of minutes"),
        ("soon", "not a duration"),
        ("", "not a duration"),
        ("-30m", "not a duration"),
        ("99999999999h", "5m to 24h"),
    ] {
        let error = checkout_minutes_arg(text).expect_err(text);
        assert!(error.contains(says), "{text}: {error}");
    }
}

#[test]
fn grant_durations_are_positive_and_expiry_times_lie_ahead() {
    assert_eq!(grant_duration_arg("8h"), Ok(Duration::from_secs(8 * 3600)));
    assert_eq!(
        grant_duration_arg("30d"),
        Ok(Duration::from_secs(30 * 86_400))
    );
    for bad in ["0s", "30s", "-1d", "forever", ""] {
        assert!(grant_duration_arg(bad).is_err(), "{bad}");
    }
    let ahead = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    assert!(future_time_arg(&ahead).is_ok());
    let past = future_time_arg("2020-01-01T00:00:00Z").expect_err("past");
    assert!(past.contains("in the past"), "{past}");
    let garbled = future_time_arg("tomorrow").expect_err("garbled");
    assert!(garbled.contains("RFC 3339"), "{garbled}");
}

#[test]
fn reasons_names_levels_and_types_are_checked_before_sending() {
    assert!(reason_arg("disk full on db1").is_ok());
    assert!(reason_arg("").unwrap_err().contains("required"));
    assert!(reason_arg(&"x".repeat(501)).unwrap_err().contains("500"));
    assert!(reason_arg("a\nb").unwrap_err().contains("control"));
    assert!(name_arg("prod-db").is_ok());
    assert!(name_arg("root@db1").is_ok());
    assert!(name_arg("Prod").is_err());
    assert!(username_arg("oracle").is_ok());
    assert!(username_arg("-rf").is_err());
    assert!(username_arg("a:b").is_err());
    assert_eq!(level_arg("checkout"), Ok(AccessLevel::Checkout));
    assert!(level_arg("admin").unwrap_err().contains("view_credentials"));
    assert_eq!(credential_type_arg("ssh_key"), Ok(CredentialType::SshKey));
    assert!(credential_type_arg("x509").is_err());
}

/// `latchctl LINE` parsed as the binary would, or clap's error text. LINE's words are
/// split at single spaces; `''` is an empty word.
fn parse(line: &str) -> Result<crate::Cli, String> {
    let words = line.split(' ').map(|w| if w == "''" { "" } else { w });
    crate::Cli::try_parse_from(std::iter::once("latchctl").chain(words)).map_err(|e| e.to_string())
}

#[test]
fn the_command_line_refuses_what_the_server_would() {
    for ok in [
        "vaults create prod-db --description databases",
        "vaults grant prod-db --user alice --level checkout --for 8h",
        "vaults grant prod-db --group dbas --level view_vault",
        "identities checkout idn_1 --reason fix --for 30m",
        "identities create --vault v --name app --username app --secret-stdin",
        "identities update idn_1 --exclusive --no-hosts",
        "identities break-glass idn_1 --reason outage",
        "rotations show rot_1 --wait 30",
        "hosts enroll-account db1 --user oracle --vault prod-db --wait 60",
    ] {
        assert!(parse(ok).is_ok(), "{ok}: {:?}", parse(ok).err());
    }
    let create = "identities create --vault v --name a --username a";
    for (line, says) in [
        ("identities checkout idn_1 --reason x --for 3m", "5m to 24h"),
        (
            "identities checkout idn_1 --reason '' --for 30m",
            "required",
        ),
        ("identities checkout idn_1 --for 30m", "--reason"),
        ("identities break-glass idn_1 --reason a\tb", "control"),
        ("vaults grant v --level checkout", "--user"),
        (
            "vaults grant v --user a --group g --level checkout",
            "cannot be used",
        ),
        ("vaults grant v --user a --level owner", "view_credentials"),
        (
            "vaults grant v --user a --level checkout --for 1d --expires-at 2099-01-01T00:00:00Z",
            "cannot be used",
        ),
        ("vaults create Bad", "lowercase"),
        ("vaults update v", "required"),
        ("identities update idn_1", "required"),
        (
            "identities update idn_1 --concurrent 2 --exclusive",
            "cannot be used",
        ),
        (&format!("{create} --concurrent 101"), "1..=100"),
        (&format!("{create} --rotation-days 0"), "1..=3650"),
        // Secrets are never arguments.
        (&format!("{create} --secret hunter2"), "unexpected argument"),
        (
            "identities rotate idn_1 --password hunter2",
            "unexpected argument",
        ),
    ] {
        let error = parse(line)
            .err()
            .unwrap_or_else(|| panic!("{line} was accepted"));
        assert!(error.contains(says), "{line}: {error}");
    }
}

/// The body `identities update LINE` sends.
fn update_body(line: &str) -> serde_json::Value {
    let command = parse(&format!("identities update idn_1 {line}")).map(|cli| cli.command);
    let Ok(crate::Command::Vault(VaultCommand::Identities(IdentitiesCommand::Update(args)))) =
        command
    else {
        panic!("{line}: not identities update");
    };
    serde_json::to_value(update_request(&args)).expect("serializes")
}

#[test]
fn update_sends_only_what_changes() {
    assert_eq!(
        update_body("--rotation-days 0 --no-rotate-after-use --host db1 --host db2"),
        serde_json::json!({
            "rotation_interval_days": 0,
            "rotate_after_use": false,
            "hosts": ["db1", "db2"],
        })
    );
    assert_eq!(
        update_body("--concurrent 3 --no-hosts"),
        serde_json::json!({
            "concurrent_checkout": true,
            "max_concurrent_checkouts": 3,
            "hosts": [],
        })
    );
    assert_eq!(
        update_body("--exclusive"),
        serde_json::json!({ "concurrent_checkout": false })
    );
}

#[test]
fn a_missing_thing_is_answered_with_what_lists_its_kind() {
    let refused = |status: u16, message: &str| ClientError::Api {
        status,
        code: "resource_does_not_exist".into(),
        message: message.into(),
    };
    let said = |error: ClientError| error.to_string();
    assert!(
        said(not_found(refused(404, "group 'dbas' does not exist")))
            .contains("`latchctl groups list` shows which exist")
    );
    assert!(
        said(not_found(refused(404, "vault 'x' does not exist")))
            .contains("`latchctl vaults list` shows which exist")
    );
    // Nothing added where the control plane already said what to run, to another status,
    // or to a kind it has no list for.
    for (status, message) in [
        (
            404,
            "identity 'i' does not exist; `latchctl identities show` …",
        ),
        (409, "vault 'x' does not exist"),
        (404, "organization 'o' does not exist"),
    ] {
        assert_eq!(
            said(not_found(refused(status, message))),
            said(refused(status, message))
        );
    }
    let flagged = in_cli_words(CHECKOUT_FLAGS)(ClientError::Api {
        status: 400,
        code: "invalid_request".into(),
        message: "duration_minutes: is 3".into(),
    });
    assert!(said(flagged).starts_with("--for: is 3"));
}

#[test]
fn erasing_counts_the_rows_long_lines_wrap_into() {
    let lines = vec!["a".repeat(10), String::new(), "b".repeat(81)];
    assert_eq!(rows(&lines, 80), 1 + 1 + 2);
    assert_eq!(rows(&lines, 10), 1 + 1 + 9);
    assert_eq!(rows(&lines, 0), 10 + 1 + 81);
    let key = RevealedSecret {
        identity_id: "idn_1".into(),
        username: "deploy".into(),
        credential_type: CredentialType::SshKey,
        secret: "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
            .into(),
    };
    assert_eq!(
        credential_lines(&key),
        [
            "username: deploy",
            "private key:",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "AAAA",
            "-----END OPENSSH PRIVATE KEY-----"
        ]
    );
}

/// Every vault command, and every option of it, says what it is in `--help`.
#[test]
fn every_vault_command_and_option_has_help() {
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", command.get_name());
        if command.get_about().is_none() {
            missing.push(path.clone());
        }
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_name() != "help" {
                walk(sub, &path, missing);
            }
        }
    }
    let cli = crate::Cli::command();
    cli.clone().debug_assert();
    let mut missing = Vec::new();
    for name in ["vaults", "identities", "rotations", "hosts"] {
        let command = cli
            .find_subcommand(name)
            .unwrap_or_else(|| panic!("no `latchctl {name}`"));
        walk(command, "latchctl", &mut missing);
    }
    assert!(missing.is_empty(), "without help: {missing:#?}");
    let enroll = cli
        .find_subcommand("hosts")
        .and_then(|h| h.find_subcommand("enroll-account"))
        .expect("hosts enroll-account");
    assert!(enroll.get_arguments().any(|a| a.get_id() == "wait"));
}
