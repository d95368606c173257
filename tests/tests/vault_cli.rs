//! Issue 11: the credential vault through the real `latchctl` against a real control plane (on
//! the store `LATCH_TEST_STORE` chooses): a vault and an identity with no hosts, listing and
//! showing them as tables and JSON, grants, reveal, checkout/checkin, and the refusals a
//! person meets (an identity already checked out, a vault that is not empty). No test host is
//! needed, so these run without root.
//!
//! The server runs with `--mfa-required none`: reveal's MFA step-up is the people tests'
//! subject (`tests/people.rs`); here a person reveals right after signing in.

use std::path::Path;
use std::time::{Duration, Instant};

use latch_e2e::{ControlPlane, Ran};
use serde_json::Value;

/// The shared account's password, stored in the vault.
const APP_PASSWORD: &str = "Vault-app-Passw0rd-4-tests";
/// The people's own Latch passwords.
const LOGIN_PASSWORD: &str = "correct horse battery staple";

/// The values of `field` in a `{"list": […]}`, sorted.
fn field_of(list: &Value, field: &str) -> Vec<String> {
    let mut values: Vec<String> = list["list"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list:#}"))
        .iter()
        .filter_map(|item| item[field].as_str().map(str::to_owned))
        .collect();
    values.sort();
    values
}

/// The table row that starts with `first`.
fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row for {first}: {table}"))
}

/// A local user with a password, the end_user role, and a session kept under `home`.
fn person(cp: &ControlPlane, name: &str, home: &Path) {
    cp.latchctl_stdin(
        &["users", "create", name, "--password-stdin"],
        Some(format!("{LOGIN_PASSWORD}\n").as_bytes()),
    )
    .ok(&format!("users create {name}"));
    cp.latchctl(&["roles", "bind", "end_user", "--user", name])
        .ok(&format!("roles bind end_user --user {name}"));
    cp.latchctl_as(
        None,
        home,
        &["login", "--local", name, "--password-stdin"],
        Some(format!("{LOGIN_PASSWORD}\n").as_bytes()),
    )
    .ok(&format!("login --local {name}"));
}

/// `latchctl --output json ARGS` as the person signed in under `home`.
fn as_person(cp: &ControlPlane, home: &Path, args: &[&str]) -> Ran {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    cp.latchctl_as(None, home, &all, None)
}

/// The owner makes a vault and an identity; bob (view_credentials) reveals it; carol
/// (checkout) checks it out for 30 minutes, a second checkout is refused, she checks it in;
/// the vault cannot be deleted while it holds the identity, and can once it is gone.
#[test]
fn latchctl_keeps_reveals_and_checks_out_a_shared_password() {
    let cp = ControlPlane::start(&["--mfa-required", "none"]);

    // A vault: its creator (the bootstrap admin) owns it.
    let vault = cp.json(&[
        "vaults",
        "create",
        "prod-db",
        "--description",
        "Production databases",
    ]);
    assert_eq!(vault["name"], "prod-db", "{vault:#}");
    assert_eq!(vault["description"], "Production databases");
    assert_eq!(vault["organization"], "default");
    assert_eq!(vault["identities"], 0);
    assert!(vault["owner"].is_string(), "the creator owns it: {vault:#}");
    let vault_id = vault["id"].as_str().expect("vault id").to_owned();
    // A name the server would refuse is refused before anything is sent.
    let bad = cp.latchctl(&["vaults", "create", "Prod DB"]);
    assert_eq!(bad.code, 2, "{bad:?}");

    // An identity with no hosts: its password comes from standard input, never argv, and is
    // never printed back.
    let created = cp.latchctl_stdin(
        &[
            "--output",
            "json",
            "identities",
            "create",
            "--vault",
            "prod-db",
            "--name",
            "app-db",
            "--username",
            "app",
            "--secret-stdin",
        ],
        Some(format!("{APP_PASSWORD}\n").as_bytes()),
    );
    assert!(
        !created.stdout.contains(APP_PASSWORD) && !created.stderr.contains(APP_PASSWORD),
        "the password is never printed back: {created:?}"
    );
    let identity = created.json("identities create");
    assert_eq!(identity["name"], "app-db", "{identity:#}");
    assert_eq!(identity["username"], "app");
    assert_eq!(identity["credential_type"], "password");
    assert_eq!(identity["has_secret"], true);
    assert_eq!(identity["vault"], "prod-db");
    assert_eq!(identity["hosts"], serde_json::json!([]));
    let id = identity["id"].as_str().expect("identity id").to_owned();
    // Without a terminal to ask at, no password and no hosts is refused with what to do.
    let no_secret = cp.latchctl(&[
        "identities",
        "create",
        "--vault",
        "prod-db",
        "--name",
        "other",
        "--username",
        "other",
    ]);
    assert_eq!(no_secret.code, 1, "{no_secret:?}");
    assert!(
        no_secret.stderr.contains("--secret-stdin") && no_secret.stderr.contains("--host"),
        "{no_secret:?}"
    );

    // Lists and shows, as JSON and as tables.
    let vaults = cp.json(&["vaults", "list"]);
    assert_eq!(field_of(&vaults, "name"), ["prod-db"], "{vaults:#}");
    assert_eq!(vaults["list"][0]["identities"], 1, "{vaults:#}");
    let table = cp.latchctl(&["vaults", "list"]).ok("vaults list");
    let vault_row = row(&table, "prod-db");
    assert!(
        vault_row.contains(&vault_id) && vault_row.contains("Production databases"),
        "{table}"
    );
    let shown = cp.json(&["vaults", "show", &vault_id]);
    assert_eq!(shown["name"], "prod-db", "a vault by id: {shown:#}");
    let identities = cp.json(&["identities", "list", "--vault", "prod-db"]);
    assert_eq!(field_of(&identities, "id"), [id.as_str()], "{identities:#}");
    let table = cp
        .latchctl(&["identities", "list", "--vault", "prod-db"])
        .ok("identities list");
    let identity_row = row(&table, &id);
    assert!(
        identity_row.contains("app-db") && identity_row.contains("password"),
        "{table}"
    );
    let shown = cp.json(&["identities", "show", &id]);
    assert_eq!(shown["name"], "app-db", "{shown:#}");
    assert_eq!(shown["active_checkouts"], 0);
    let table = cp
        .latchctl(&["identities", "show", &id])
        .ok("identities show");
    assert!(
        table.contains("app-db") && table.contains("hosts:") && table.contains("(none)"),
        "{table}"
    );
    assert!(!table.contains(APP_PASSWORD), "{table}");

    // bob may see credentials; carol may check them out, for eight hours.
    let bob_home = tempfile::tempdir().expect("tempdir");
    let carol_home = tempfile::tempdir().expect("tempdir");
    person(&cp, "bob", bob_home.path());
    person(&cp, "carol", carol_home.path());
    let to_bob = cp.json(&[
        "vaults",
        "grant",
        "prod-db",
        "--user",
        "bob",
        "--level",
        "view_credentials",
    ]);
    assert_eq!(to_bob["principal"], "bob", "{to_bob:#}");
    assert_eq!(to_bob["level"], "view_credentials");
    assert!(to_bob["expires_at"].is_null(), "{to_bob:#}");
    let to_carol = cp.json(&[
        "vaults", "grant", "prod-db", "--user", "carol", "--level", "checkout", "--for", "8h",
    ]);
    assert_eq!(to_carol["level"], "checkout", "{to_carol:#}");
    let ends = to_carol["expires_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("--for 8h gives an end: {to_carol:#}"));
    let left = ends.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        left > chrono::Duration::hours(7) && left <= chrono::Duration::hours(8),
        "{to_carol:#}"
    );
    let grants = cp.json(&["vaults", "grants", "list", "prod-db"]);
    assert_eq!(
        field_of(&grants, "principal"),
        ["bob", "carol"],
        "{grants:#}"
    );
    let table = cp
        .latchctl(&["vaults", "grants", "list", "prod-db"])
        .ok("vaults grants list");
    assert!(
        table.contains("user bob") && table.contains("view_credentials"),
        "{table}"
    );

    // bob reveals it: as JSON, and piped (printed once, no 30-second wait).
    let revealed =
        as_person(&cp, bob_home.path(), &["identities", "reveal", &id]).json("reveal as bob");
    assert_eq!(revealed["secret"], APP_PASSWORD, "{revealed:#}");
    assert_eq!(revealed["username"], "app");
    assert_eq!(revealed["identity_id"], id.as_str());
    let started = Instant::now();
    let piped = cp
        .latchctl_as(None, bob_home.path(), &["identities", "reveal", &id], None)
        .ok("reveal as bob, piped");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a piped reveal does not wait to erase anything"
    );
    assert!(
        piped.contains(&format!("password: {APP_PASSWORD}")) && !piped.contains("\x1b["),
        "{piped:?}"
    );
    // view_credentials does not reach checkout.
    let (code, message) = as_person(
        &cp,
        bob_home.path(),
        &[
            "identities",
            "checkout",
            &id,
            "--reason",
            "look around",
            "--for",
            "30m",
        ],
    )
    .json_error("checkout as bob");
    assert_eq!(code, "forbidden_error", "{message}");

    // carol checks it out for 30 minutes, with her reason.
    let granted = as_person(
        &cp,
        carol_home.path(),
        &[
            "identities",
            "checkout",
            &id,
            "--reason",
            "rotate the replication user",
            "--for",
            "30m",
        ],
    )
    .json("checkout as carol");
    assert_eq!(granted["credential"]["secret"], APP_PASSWORD, "{granted:#}");
    let checkout = &granted["checkout"];
    assert_eq!(checkout["holder"], "carol", "{granted:#}");
    assert_eq!(checkout["reason"], "rotate the replication user");
    assert_eq!(checkout["break_glass"], false);
    let time = |field: &str| {
        checkout[field]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .unwrap_or_else(|| panic!("checkout {field}: {granted:#}"))
    };
    assert_eq!(
        time("expires_at") - time("started_at"),
        chrono::Duration::minutes(30),
        "{granted:#}"
    );
    let checkout_id = checkout["id"].as_str().expect("checkout id").to_owned();

    // It is exclusive: a second checkout is refused, with where to look.
    let (_, message) = as_person(
        &cp,
        carol_home.path(),
        &[
            "identities",
            "checkout",
            &id,
            "--reason",
            "again",
            "--for",
            "30m",
        ],
    )
    .json_error("a second checkout");
    assert!(
        message.contains("Identity is already checked out"),
        "{message}"
    );
    assert!(
        message.contains(&format!("latchctl identities checkouts {id}")),
        "{message}"
    );
    // A duration outside 5m–24h never reaches the server.
    let short = cp.latchctl_as(
        None,
        carol_home.path(),
        &[
            "identities",
            "checkout",
            &id,
            "--reason",
            "quick",
            "--for",
            "2m",
        ],
        None,
    );
    assert_eq!(short.code, 2, "{short:?}");
    assert!(short.stderr.contains("5m to 24h"), "{short:?}");

    let checkouts = cp.json(&["identities", "checkouts", &id]);
    assert_eq!(
        field_of(&checkouts, "id"),
        [checkout_id.as_str()],
        "{checkouts:#}"
    );
    assert!(
        checkouts["list"][0]["checked_in_at"].is_null(),
        "{checkouts:#}"
    );
    assert_eq!(cp.json(&["identities", "show", &id])["active_checkouts"], 1);

    // carol checks it in.
    let checked_in = as_person(
        &cp,
        carol_home.path(),
        &["identities", "checkin", &checkout_id],
    )
    .json("checkin as carol");
    assert!(checked_in["checked_in_at"].is_string(), "{checked_in:#}");
    assert_eq!(checked_in["checked_in_how"], "holder", "{checked_in:#}");
    assert_eq!(cp.json(&["identities", "show", &id])["active_checkouts"], 0);

    // A vault that holds an identity is not deleted.
    let (code, message) = cp
        .latchctl(&["--output", "json", "vaults", "delete", "prod-db"])
        .json_error("delete a vault with an identity");
    assert_eq!(code, "resource_already_exists", "{message}");
    assert!(
        message.contains("Cannot delete vault with 1 identities"),
        "{message}"
    );
    assert!(
        message.contains("`latchctl identities "),
        "the error says what to do: {message}"
    );

    // Identity first, then the vault.
    cp.latchctl(&["identities", "delete", &id])
        .ok("identities delete");
    let (code, _) = cp
        .latchctl(&["--output", "json", "identities", "show", &id])
        .json_error("a deleted identity");
    assert_eq!(code, "resource_does_not_exist");
    let deleted = cp
        .latchctl(&["vaults", "delete", "prod-db"])
        .ok("vaults delete");
    assert!(deleted.contains("deleted vault prod-db"), "{deleted}");
    let (code, message) = cp
        .latchctl(&["--output", "json", "vaults", "show", "prod-db"])
        .json_error("a deleted vault");
    assert_eq!(code, "resource_does_not_exist", "{message}");
    assert!(
        message.contains("`latchctl vaults list` shows which exist"),
        "{message}"
    );
    assert!(field_of(&cp.json(&["vaults", "list"]), "name").is_empty());
}
