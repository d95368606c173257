//! Issue 10: people and permissions through the real `latchctl` against a real control plane
//! (on the store `LATCH_TEST_STORE` chooses): users with local passwords, groups, role bindings,
//! service users and their API keys used the way a pipeline does, TOTP enrollment and step-up,
//! `login --local`. No test host is needed, so these run without root.

use std::os::unix::fs::PermissionsExt as _;

use latch_e2e::{ControlPlane, Ran};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";

/// Parses the JSON a successful `latchctl --output json …` printed.
fn json(ran: Ran, what: &str) -> Value {
    ran.json(what)
}

/// The `{"code", "message"}` a failed `latchctl --output json …` printed (exit status 1).
fn json_error(ran: Ran, what: &str) -> (String, String) {
    ran.json_error(what)
}

/// The names in a `{"list": […]}`, sorted.
fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["list"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list:#}"))
        .iter()
        .filter_map(|item| item["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value:#}"))
        .iter()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect()
}

/// The `latch_key_…` word in what `service-users create` / `keys create` printed.
fn printed_key(out: &str) -> String {
    out.split_whitespace()
        .find(|word| word.starts_with("latch_key_"))
        .unwrap_or_else(|| panic!("no API key printed: {out}"))
        .to_owned()
}

/// Exchanges an API key for a bearer token, as a pipeline that calls the API itself does.
fn bearer_for(cp: &ControlPlane, api_key: &str) -> String {
    let (status, issued) = cp.post_as(
        "",
        "/v1/service_token",
        &serde_json::json!({ "api_key": api_key }),
    );
    assert_eq!(status, 201, "exchange the API key: {issued}");
    issued["token"].as_str().expect("token").to_owned()
}

/// Users, groups, roles and service users through `latchctl`; a pipeline authenticates with
/// `LATCH_TOKEN=latch_key_…`; a revoked key's token is refused with
/// `server_authorization_revoked`; a disabled service user's key stops working.
#[test]
fn latchctl_manages_people_groups_roles_and_service_users() {
    let cp = ControlPlane::start(&[]);
    let home = tempfile::tempdir().expect("tempdir");

    // A user with a local password, from standard input.
    let alice = json(
        cp.latchctl_stdin(
            &[
                "--output",
                "json",
                "users",
                "create",
                "alice",
                "--display-name",
                "Alice Admin",
                "--email",
                "alice@example.com",
                "--password-stdin",
            ],
            Some(format!("{PASSWORD}\n").as_bytes()),
        ),
        "users create alice",
    );
    assert_eq!(alice["name"], "alice");
    assert_eq!(alice["kind"], "user");
    assert_eq!(alice["local_password"], true, "{alice:#}");
    assert_eq!(alice["email"], "alice@example.com");
    // One without a password signs in through the identity provider only.
    let bob = cp
        .latchctl(&["users", "create", "bob"])
        .ok("users create bob");
    assert!(
        bob.contains("bob") && bob.contains("identity provider"),
        "{bob}"
    );
    // The password is never an argument.
    let refused = cp.latchctl(&["users", "create", "eve", "--password", PASSWORD]);
    assert_eq!(refused.code, 2, "{refused:?}");
    // --password asks at a terminal; without one it says how else to give it.
    let no_terminal = cp.latchctl(&["users", "create", "eve", "--password"]);
    assert_eq!(no_terminal.code, 1, "{no_terminal:?}");
    assert!(
        no_terminal.stderr.contains("--password-stdin"),
        "{no_terminal:?}"
    );
    let users = cp.json(&["users", "list"]);
    assert_eq!(
        names(&users),
        ["alice", "bob"],
        "users list (only people): {users:#}"
    );
    let table = cp.latchctl(&["users", "list"]).ok("users list");
    let alice_row = table
        .lines()
        .find(|line| line.starts_with("alice "))
        .unwrap_or_else(|| panic!("no row for alice: {table}"));
    assert!(
        alice_row.contains("Alice Admin") && alice_row.contains("local"),
        "{table}"
    );

    // A group mapped from the identity provider, with alice in it.
    let group = cp.json(&[
        "groups",
        "create",
        "dbas",
        "--description",
        "Database admins",
        "--idp-group",
        "dba",
    ]);
    assert_eq!(group["name"], "dbas");
    assert_eq!(group["idp_group"], "dba");
    cp.latchctl(&["groups", "add-member", "dbas", "alice"])
        .ok("groups add-member");
    let shown = cp.json(&["groups", "show", "dbas"]);
    assert_eq!(strings(&shown["members"]), ["alice"], "{shown:#}");
    assert_eq!(names(&cp.json(&["groups", "list"])), ["dbas"]);

    // Roles: the fixed table, and bindings to a group, a user, and a delegation.
    let roles = cp.json(&["roles", "list"]);
    let listed: Vec<&str> = roles["list"]
        .as_array()
        .expect("roles")
        .iter()
        .filter_map(|r| r["role"].as_str())
        .collect();
    assert_eq!(
        listed,
        [
            "pam_admin",
            "resource_admin",
            "delegated_resource_admin",
            "security_admin",
            "end_user"
        ]
    );
    let pam_admin = &roles["list"][0];
    assert!(
        strings(&pam_admin["permissions"]).contains(&"users.manage".to_owned()),
        "{roles:#}"
    );
    let table = cp.latchctl(&["roles", "list"]).ok("roles list");
    let end_user = table
        .lines()
        .find(|line| line.starts_with("end_user "))
        .unwrap_or_else(|| panic!("no end_user row: {table}"));
    assert!(end_user.contains("access.request"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("delegated_resource_admin") && l.contains("by selector")),
        "{table}"
    );

    let to_group = cp.json(&["roles", "bind", "security_admin", "--group", "dbas"]);
    assert_eq!(to_group["subject_kind"], "group");
    assert_eq!(to_group["subject_name"], "dbas");
    let to_alice = cp.json(&["roles", "bind", "pam_admin", "--user", "alice"]);
    let delegated = cp.json(&[
        "roles",
        "bind",
        "delegated_resource_admin",
        "--user",
        "bob",
        "--selector",
        "team=db",
    ]);
    assert_eq!(delegated["selector"], "team=db");
    // A role needs exactly one subject (checked before anything is sent).
    let no_subject = cp.latchctl(&["roles", "bind", "end_user"]);
    assert_eq!(no_subject.code, 2, "{no_subject:?}");
    let unknown_role = cp.latchctl(&["roles", "bind", "root", "--user", "bob"]);
    assert_eq!(unknown_role.code, 2, "{unknown_role:?}");
    assert!(
        unknown_role.stderr.contains("pam_admin"),
        "the error lists the roles: {unknown_role:?}"
    );
    // The same binding twice is refused by the server, with its code in JSON.
    let (code, _) = json_error(
        cp.latchctl(&[
            "--output",
            "json",
            "roles",
            "bind",
            "pam_admin",
            "--user",
            "alice",
        ]),
        "duplicate binding",
    );
    assert_eq!(code, "resource_already_exists");

    let alice = cp.json(&["users", "show", "alice"]);
    let alice_roles = strings(&alice["roles"]);
    assert!(
        alice_roles.contains(&"pam_admin".to_owned())
            && alice_roles.contains(&"security_admin".to_owned()),
        "alice has her own role and her group's: {alice:#}"
    );
    assert_eq!(strings(&alice["groups"]), ["dbas"]);
    let bindings = cp.json(&["roles", "bindings"]);
    let ids: Vec<&str> = bindings["list"]
        .as_array()
        .expect("bindings")
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    for made in [&to_group, &to_alice, &delegated] {
        assert!(
            ids.contains(&made["id"].as_str().expect("id")),
            "{bindings:#}"
        );
    }
    let table = cp.latchctl(&["roles", "bindings"]).ok("roles bindings");
    assert!(
        table.contains("group dbas") && table.contains("user alice") && table.contains("team=db"),
        "{table}"
    );
    let unbound = cp
        .latchctl(&[
            "roles",
            "unbind",
            delegated["id"].as_str().expect("binding id"),
        ])
        .ok("roles unbind");
    assert!(unbound.contains("removed role binding"), "{unbound}");
    assert!(
        strings(&cp.json(&["users", "show", "bob"])["roles"]).is_empty(),
        "bob's delegation is gone"
    );

    // A service user for a pipeline: its key is printed once, with how to use it.
    let created = cp
        .latchctl(&[
            "service-users",
            "create",
            "ci-deploy",
            "--role",
            "resource_admin",
        ])
        .ok("service-users create");
    assert!(
        created.contains("shown only now") && created.contains("LATCH_TOKEN"),
        "{created}"
    );
    let key = printed_key(&created);
    let shown = cp.json(&["service-users", "show", "ci-deploy"]);
    assert_eq!(shown["kind"], "service");
    assert_eq!(strings(&shown["roles"]), ["resource_admin"]);
    assert!(
        names(&cp.json(&["service-users", "list"])).contains(&"ci-deploy".to_owned()),
        "service-users list"
    );

    // The pipeline: only the key, in LATCH_TOKEN; no session file, no admin.token.
    let hosts = json(
        cp.latchctl_as(
            Some(&key),
            home.path(),
            &["--output", "json", "hosts", "list"],
            None,
        ),
        "pipeline: hosts list",
    );
    assert!(hosts["list"].is_array(), "{hosts:#}");
    let me = json(
        cp.latchctl_as(
            Some(&key),
            home.path(),
            &["--output", "json", "whoami"],
            None,
        ),
        "pipeline: whoami",
    );
    assert_eq!(me["name"], "ci-deploy");
    assert_eq!(me["kind"], "service");
    assert_eq!(strings(&me["roles"]), ["resource_admin"]);
    // resource_admin does not manage people.
    let (code, message) = json_error(
        cp.latchctl_as(
            Some(&key),
            home.path(),
            &["--output", "json", "users", "list"],
            None,
        ),
        "pipeline: users list",
    );
    assert_eq!(code, "forbidden_error", "{message}");
    assert!(message.contains("users.view"), "{message}");

    // Keys: the use shows, a second key is made, the first is revoked.
    let keys = cp.json(&["service-users", "keys", "list", "ci-deploy"]);
    let first = &keys["list"][0];
    assert_eq!(keys["list"].as_array().map(Vec::len), Some(1), "{keys:#}");
    assert!(!first["last_used_at"].is_null(), "{keys:#}");
    assert!(
        !keys.to_string().contains(&key),
        "the key itself is never listed"
    );
    let first_id = first["id"].as_str().expect("key id").to_owned();
    let second = cp.json(&["service-users", "keys", "create", "ci-deploy"]);
    let second_key = second["api_key"].as_str().expect("second key").to_owned();
    assert_ne!(second_key, key);

    let bearer = bearer_for(&cp, &key);
    cp.latchctl_as(Some(&bearer), home.path(), &["hosts", "list"], None)
        .ok("hosts list with the exchanged token");
    let revoked = cp
        .latchctl(&["service-users", "keys", "revoke", "ci-deploy", &first_id])
        .ok("keys revoke");
    assert!(revoked.contains("stopped working"), "{revoked}");
    let (code, message) = json_error(
        cp.latchctl_as(
            Some(&bearer),
            home.path(),
            &["--output", "json", "hosts", "list"],
            None,
        ),
        "a token of the revoked key",
    );
    assert_eq!(code, "server_authorization_revoked", "{message}");
    let (code, _) = json_error(
        cp.latchctl_as(
            Some(&key),
            home.path(),
            &["--output", "json", "hosts", "list"],
            None,
        ),
        "the revoked key",
    );
    assert_eq!(code, "authentication_error");
    cp.latchctl_as(Some(&second_key), home.path(), &["hosts", "list"], None)
        .ok("the second key still works");
    let keys = cp.json(&["service-users", "keys", "list", "ci-deploy"]);
    let revoked_at: Vec<bool> = keys["list"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| !k["revoked_at"].is_null())
        .collect();
    assert_eq!(revoked_at.iter().filter(|r| **r).count(), 1, "{keys:#}");

    // Disabling the service user stops its keys; enabling lets them work again.
    cp.latchctl(&["service-users", "disable", "ci-deploy"])
        .ok("service-users disable");
    let (code, _) = json_error(
        cp.latchctl_as(
            Some(&second_key),
            home.path(),
            &["--output", "json", "hosts", "list"],
            None,
        ),
        "a disabled service user's key",
    );
    assert_eq!(code, "server_authorization_revoked");
    cp.latchctl(&["service-users", "enable", "ci-deploy"])
        .ok("service-users enable");
    cp.latchctl_as(Some(&second_key), home.path(), &["hosts", "list"], None)
        .ok("enabled again");

    // JSON creation of a service user carries the key once.
    let bot = cp.json(&["service-users", "create", "bot"]);
    assert_eq!(bot["service_user"]["name"], "bot");
    assert!(
        bot["key"]["api_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("latch_key_")),
        "{bot:#}"
    );

    // Membership and groups go away again.
    cp.latchctl(&["groups", "remove-member", "dbas", "alice"])
        .ok("groups remove-member");
    assert!(strings(&cp.json(&["groups", "show", "dbas"])["members"]).is_empty());
    cp.latchctl(&["groups", "delete", "dbas"])
        .ok("groups delete");
    let (code, message) = json_error(
        cp.latchctl(&["--output", "json", "groups", "show", "dbas"]),
        "a deleted group",
    );
    assert_eq!(code, "resource_does_not_exist");
    assert!(
        message.contains("`latchctl groups list` shows which exist"),
        "{message}"
    );
    let alice = cp.json(&["users", "show", "alice"]);
    assert_eq!(
        strings(&alice["roles"]),
        ["pam_admin"],
        "the group's role is gone: {alice:#}"
    );
}

/// A person: `login --local` keeps a session file (0600) that later commands use; a pam_admin
/// without a recent second factor is asked to step up; `mfa enroll` shows a QR code and the
/// URI, `mfa verify` with the authenticator's code confirms it and steps up (a replayed code is
/// refused); disabling the user ends the session.
#[test]
fn a_local_user_signs_in_enrolls_totp_and_steps_up() {
    let cp = ControlPlane::start(&[]);
    let home = tempfile::tempdir().expect("tempdir");
    cp.latchctl_stdin(
        &["users", "create", "alice", "--password-stdin"],
        Some(format!("{PASSWORD}\n").as_bytes()),
    )
    .ok("users create alice");
    cp.latchctl(&["roles", "bind", "pam_admin", "--user", "alice"])
        .ok("roles bind");
    let as_alice =
        |args: &[&str], stdin: Option<&[u8]>| cp.latchctl_as(None, home.path(), args, stdin);

    // Not signed in: said so, with what to do.
    let (code, message) = json_error(
        as_alice(&["--output", "json", "mfa", "verify", "123456"], None),
        "mfa verify before login",
    );
    assert_eq!(code, "invalid_request");
    assert!(message.contains("latchctl login"), "{message}");

    // A wrong password is refused; no session is kept.
    let wrong = as_alice(
        &["login", "--local", "alice", "--password-stdin"],
        Some(b"not the password\n"),
    );
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("wrong"), "{wrong:?}");
    let session_file = home.path().join("latch/session");
    assert!(!session_file.exists());
    // Without a terminal and without --password-stdin there is nobody to ask.
    let no_terminal = as_alice(&["login", "--local", "alice"], None);
    assert_eq!(no_terminal.code, 1, "{no_terminal:?}");
    assert!(
        no_terminal.stderr.contains("--password-stdin"),
        "{no_terminal:?}"
    );

    let signed_in = as_alice(
        &["login", "--local", "alice", "--password-stdin"],
        Some(format!("{PASSWORD}\n").as_bytes()),
    )
    .ok("login --local");
    assert!(signed_in.contains("signed in as alice"), "{signed_in}");
    let mode = std::fs::metadata(&session_file)
        .expect("session file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let me = json(as_alice(&["--output", "json", "whoami"], None), "whoami");
    assert_eq!(me["name"], "alice");
    assert_eq!(me["session_kind"], "local");
    assert!(me["mfa_at"].is_null());
    // The session serves the admin commands too: reading needs no step-up…
    let users = json(
        as_alice(&["--output", "json", "users", "list"], None),
        "users list as alice",
    );
    assert_eq!(names(&users), ["alice"]);
    // …changing people does.
    let (code, message) = json_error(
        as_alice(&["--output", "json", "users", "create", "carol"], None),
        "users create without step-up",
    );
    assert_eq!(code, "authorization_error", "{message}");
    assert!(message.contains("latchctl mfa verify"), "{message}");

    // Enroll: the QR code and the URI; without a terminal, how to confirm.
    let enrolled = as_alice(&["mfa", "enroll"], None).ok("mfa enroll");
    assert!(enrolled.contains('█'), "a QR code is drawn: {enrolled}");
    assert!(
        enrolled.contains("otpauth://totp/") && enrolled.contains("latchctl mfa verify"),
        "{enrolled}"
    );
    let secret = enrolled
        .lines()
        .find_map(|line| line.trim().strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("no secret printed: {enrolled}"))
        .to_owned();
    let now = chrono::Utc::now();
    let code = latch_control::mfa::code_at(&secret, now).expect("TOTP code");

    // A wrong code (none of the three steps accepted now) is refused.
    let near: Vec<String> = [-30, 0, 30]
        .iter()
        .filter_map(|s| latch_control::mfa::code_at(&secret, now + chrono::Duration::seconds(*s)))
        .collect();
    let wrong = (0..10)
        .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
        .find(|c| !near.contains(c))
        .expect("a wrong code");
    let (code_name, _) = json_error(
        as_alice(&["--output", "json", "mfa", "verify", &wrong], None),
        "a wrong code",
    );
    assert_eq!(code_name, "authorization_error");

    // The right code, given on standard input as a prompt would read it.
    let verified = json(
        as_alice(
            &["--output", "json", "mfa", "verify"],
            Some(format!("{code}\n").as_bytes()),
        ),
        "mfa verify",
    );
    assert!(verified["mfa_at"].is_string(), "{verified:#}");
    let me = json(as_alice(&["--output", "json", "whoami"], None), "whoami");
    assert!(me["mfa_at"].is_string(), "stepped up: {me:#}");
    // The same code again is refused.
    let (code_name, message) = json_error(
        as_alice(&["--output", "json", "mfa", "verify", &code], None),
        "a replayed code",
    );
    assert_eq!(code_name, "authorization_error", "{message}");

    // Stepped up, alice changes people.
    let carol = json(
        as_alice(&["--output", "json", "users", "create", "carol"], None),
        "users create as alice",
    );
    assert_eq!(carol["name"], "carol");

    // Disabling alice ends her session at once; enabling lets her sign in again.
    cp.latchctl(&["users", "disable", "alice"])
        .ok("users disable");
    let (code_name, _) = json_error(
        as_alice(&["--output", "json", "whoami"], None),
        "whoami when disabled",
    );
    assert_eq!(code_name, "server_authorization_revoked");
    let shown = cp.json(&["users", "show", "alice"]);
    assert!(shown["disabled_at"].is_string(), "{shown:#}");
    cp.latchctl(&["users", "enable", "alice"])
        .ok("users enable");
    as_alice(
        &["login", "--local", "alice", "--password-stdin"],
        Some(format!("{PASSWORD}\n").as_bytes()),
    )
    .ok("login --local again");
    // An admin sets a new password: her session ends, the old password stops working.
    cp.latchctl_stdin(
        &["users", "set-password", "alice", "--password-stdin"],
        Some(b"a brand new passphrase\n"),
    )
    .ok("users set-password");
    let (code_name, _) = json_error(
        as_alice(&["--output", "json", "whoami"], None),
        "whoami after a password reset",
    );
    assert_eq!(code_name, "server_authorization_revoked");
    let old = as_alice(
        &["login", "--local", "alice", "--password-stdin"],
        Some(format!("{PASSWORD}\n").as_bytes()),
    );
    assert_eq!(old.code, 1, "{old:?}");
    as_alice(
        &["login", "--local", "alice", "--password-stdin"],
        Some(b"a brand new passphrase\n"),
    )
    .ok("login --local with the new password");

    // Her sessions: a second sign-in elsewhere is listed, and she ends it from here.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let as_alice_elsewhere =
        |args: &[&str], stdin: Option<&[u8]>| cp.latchctl_as(None, elsewhere.path(), args, stdin);
    let sign_in_elsewhere = || {
        as_alice_elsewhere(
            &["login", "--local", "alice", "--password-stdin"],
            Some(b"a brand new passphrase\n"),
        )
        .ok("login --local elsewhere")
    };
    sign_in_elsewhere();
    let listed = json(
        as_alice(&["--output", "json", "sessions", "list"], None),
        "sessions list",
    );
    let listed = listed.as_array().expect("a list of sessions");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed.iter().filter(|s| s["current"] == true).count(), 1);
    let other = listed
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .expect("the other session")
        .to_owned();
    let table = as_alice(&["sessions", "list"], None).ok("sessions list (table)");
    assert!(table.contains("FROM") && table.contains(&other), "{table}");
    let missing = as_alice(&["sessions", "end"], None);
    assert_eq!(
        missing.code, 2,
        "an id or --others is required: {missing:?}"
    );
    let ended = as_alice(&["sessions", "end", &other], None).ok("sessions end");
    assert!(ended.contains(&other), "{ended}");
    let (code_name, _) = json_error(
        as_alice_elsewhere(&["--output", "json", "whoami"], None),
        "whoami in the ended session",
    );
    assert_eq!(code_name, "server_authorization_revoked");
    sign_in_elsewhere();
    let ended = as_alice(&["sessions", "end", "--others"], None).ok("sessions end --others");
    assert!(ended.contains("ended 1 other session"), "{ended}");
    assert_eq!(as_alice_elsewhere(&["whoami"], None).code, 1);
    as_alice(&["whoami"], None).ok("whoami in the session that ended the others");

    let out = as_alice(&["logout"], None).ok("logout");
    assert!(out.contains("signed out"), "{out}");
    assert!(!session_file.exists());
}
