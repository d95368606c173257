//! Issue 12: just-in-time access end to end — real control plane, real agents in test hosts,
//! real sshd, the real `ssh` client, and `latchctl` as the people who use it.
//!
//! The headline flow: an engineer asks for sudo on prod-db-01 with a reason; the policy says
//! her group may; her manager approves; Latch creates her account with her key and sudo on
//! the host; she logs in and `sudo -n id -u` prints 0; at the end of the window the account is
//! gone, the login is refused, the request is `expired`, and the audit trail and a signed
//! webhook show every step. Then the other ways a request goes: refused (self-approval,
//! outside the policy's hosts, too long), denied, revoked early, failed on the host (nothing
//! left behind), expired undecided; a service user through the API with a generated key; an
//! SSH certificate grant.
//!
//! The server runs with `--mfa-required none`: second factors at approval are the library
//! tests' subject (control/tests/access.rs).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latch_e2e::{ControlPlane, Ran, RealEtc, Ssh, TestHost, e2e_enabled, ssh_keypair, wait_for};
use serde_json::{Value, json};

/// The people's Latch passwords.
const PASSWORD: &str = "correct horse battery staple";
/// The webhook's signing secret.
const HOOK_SECRET: &str = "jit-webhook-secret-0123456789";

/// A local user with `roles`, signed in with a session kept under `home`.
fn person(cp: &ControlPlane, name: &str, groups: &[&str], home: &Path) {
    cp.latchctl_stdin(
        &["users", "create", name, "--password-stdin"],
        Some(format!("{PASSWORD}\n").as_bytes()),
    )
    .ok(&format!("users create {name}"));
    cp.latchctl(&["roles", "bind", "end_user", "--user", name])
        .ok("roles bind");
    for group in groups {
        cp.latchctl(&["groups", "add-member", group, name])
            .ok("groups add-member");
    }
    cp.latchctl_as(
        None,
        home,
        &["login", "--local", name, "--password-stdin"],
        Some(format!("{PASSWORD}\n").as_bytes()),
    )
    .ok(&format!("login --local {name}"));
}

/// `latchctl --output json ARGS` as the person signed in under `home`.
fn as_person(cp: &ControlPlane, home: &Path, args: &[&str]) -> Ran {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    cp.latchctl_as(None, home, &all, None)
}

/// A host enrolled with `labels` (and the SSH CA when `ssh_ca`), with sshd and its agent
/// running: the host, sshd's port and the agent.
fn host_with(
    cp: &ControlPlane,
    name: &str,
    labels: &[&str],
    ssh_ca: bool,
) -> (TestHost, u16, latch_e2e::Agent) {
    let host = TestHost::start(name);
    let mut args = vec!["enroll-token", "create", "--ttl", "10m", "--uses", "1"];
    for label in labels {
        args.extend(["--label", label]);
    }
    if ssh_ca {
        args.push("--ssh-ca");
        host.write_agent_config("sshd_pid_file = \"/run/sshd-e2e.pid\"\n");
    }
    let token = cp.json(&args);
    host.enroll(cp, token["token"].as_str().expect("token"))
        .ok("enroll");
    let port = host.start_sshd();
    let agent = host.start_agent();
    // Online (it polled) before anyone asks for access to it.
    wait_for("the agent's first poll", Duration::from_secs(20), || {
        let shown = cp.json(&["hosts", "show", name]);
        (shown["online"] == true).then_some(())
    });
    (host, port, agent)
}

/// Writes an access policy: `group` may request `access` on `hosts` for at most `max`, and
/// `extra` flags (its approvers, exclusivity, …).
fn policy(
    cp: &ControlPlane,
    name: &str,
    group: &str,
    access: &str,
    hosts: &str,
    max: &str,
    extra: &[&str],
) {
    let mut args = vec![
        "policies", "create", "--name", name, "--group", group, "--access", access, "--hosts",
        hosts, "--max", max,
    ];
    args.extend_from_slice(extra);
    cp.latchctl(&args).ok(&format!("policies create {name}"));
}

/// Polls `access show ID` as `home`'s person until the request is in `state`.
fn wait_state(cp: &ControlPlane, home: &Path, id: &str, state: &str, timeout: Duration) -> Value {
    wait_for(
        &format!("access request {id} to be {state}"),
        timeout,
        || {
            let shown = as_person(cp, home, &["access", "show", id]).json("access show");
            (shown["state"] == state).then_some(shown)
        },
    )
}

/// One webhook delivery as received.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    timestamp: i64,
    signature: String,
    body: String,
}

/// A webhook receiver on loopback that answers 200 to every POST and keeps what it got.
fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut headers = std::collections::HashMap::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let length: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
            kept.lock().expect("lock").push(Received {
                event: header("x-latch-event"),
                timestamp: header("x-latch-timestamp").parse().unwrap_or(0),
                signature: header("x-latch-signature"),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (url, seen)
}

/// The headline flow with a one-minute window: request → approve → ssh + `sudo -n id -u` = 0
/// → expiry → login refused, account gone, request `expired`, every step in the audit trail
/// with its actor, and the approvers' and requester's webhook events signed.
#[test]
fn an_engineer_gets_sudo_for_a_window_and_loses_it_at_the_end() {
    if !e2e_enabled("an_engineer_gets_sudo_for_a_window_and_loses_it_at_the_end") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--mfa-required", "none"]);
    let (hook_url, received) = receiver();
    cp.latchctl_stdin(
        &[
            "webhooks",
            "add",
            "--url",
            &hook_url,
            "--event",
            "access.requested",
            "--event",
            "access.approved",
            "--event",
            "access.active",
            "--event",
            "access.expired",
            "--secret-stdin",
        ],
        Some(format!("{HOOK_SECRET}\n").as_bytes()),
    )
    .ok("webhooks add");
    let (host, port, _agent) = host_with(&cp, "prod-db-01", &["env=prod", "team=db"], false);
    let _other = host_with(&cp, "dev-01", &["env=dev"], false);
    for group in ["dbas", "managers"] {
        cp.latchctl(&["groups", "create", group])
            .ok("groups create");
    }
    policy(
        &cp,
        "dba-prod",
        "dbas",
        "sudo",
        "env=prod",
        "2h",
        &["--approver-group", "managers"],
    );
    let homes = tempfile::tempdir().expect("tempdir");
    let (alice, mark) = (homes.path().join("alice"), homes.path().join("mark"));
    std::fs::create_dir_all(&alice).expect("mkdir");
    std::fs::create_dir_all(&mark).expect("mkdir");
    person(&cp, "alice", &["dbas"], &alice);
    person(&cp, "mark", &["managers"], &mark);
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, _) = ssh_keypair(keys.path(), "alice");
    let public = key.with_extension("pub");
    let public = public.to_str().expect("utf-8 path");

    // Refused, naming why: outside the policy's hosts, longer than it allows.
    for (host_name, window, why) in [
        ("dev-01", "1h", "outside the hosts"),
        ("prod-db-01", "3h", "at most 120"),
    ] {
        let (code, message) = as_person(
            &cp,
            &alice,
            &[
                "access",
                "request",
                "--host",
                host_name,
                "--role",
                "sudo",
                "--for",
                window,
                "--reason",
                "INC-1: replication stuck",
                "--ssh-key-file",
                public,
            ],
        )
        .json_error("a request no policy allows");
        assert_eq!(code, "forbidden_error", "{message}");
        assert!(message.contains(why), "{message}");
    }

    let made = as_person(
        &cp,
        &alice,
        &[
            "access",
            "request",
            "--host",
            "prod-db-01",
            "--role",
            "sudo",
            "--for",
            "1m",
            "--reason",
            "INC-1: replication stuck",
            "--ssh-key-file",
            public,
        ],
    )
    .json("access request");
    assert_eq!(made["state"], "pending_approval", "{made:#}");
    assert_eq!(made["approver_group"], "managers");
    assert!(
        made.get("private_key").is_none(),
        "her own key: nothing generated"
    );
    let id = made["id"].as_str().expect("id").to_owned();

    // Her own request is never hers to approve.
    let (code, message) =
        as_person(&cp, &alice, &["access", "approve", &id]).json_error("self-approval");
    assert_eq!(code, "forbidden_error", "{message}");
    let listed = as_person(
        &cp,
        &mark,
        &["access", "list", "--state", "pending_approval"],
    )
    .json("access list");
    assert_eq!(listed["list"][0]["id"], id.as_str(), "{listed:#}");

    let approved = as_person(
        &cp,
        &mark,
        &["access", "approve", &id, "--reason", "go ahead"],
    )
    .json("access approve");
    assert!(
        ["provisioning", "active"].contains(&approved["state"].as_str().unwrap_or("")),
        "{approved:#}"
    );
    let watched = cp.latchctl_as(
        None,
        &alice,
        &["access", "watch", &id, "--timeout", "60s"],
        None,
    );
    assert_eq!(watched.code, 0, "{watched:?}");
    assert!(watched.stdout.contains("log in: ssh"), "{watched:?}");
    let active = as_person(&cp, &alice, &["access", "show", &id]).json("access show");
    assert_eq!(active["state"], "active", "{active:#}");
    assert_eq!(active["account"], "alice");
    assert_eq!(active["hosts"][0]["state"], "active");
    assert!(host.group_members("sudo").contains(&"alice".to_owned()));

    let ssh = Ssh::new(port, "alice", &key);
    let root = wait_for("alice to log in", Duration::from_secs(20), || {
        let ran = ssh.run("sudo -n id -u");
        (ran.code == 0).then_some(ran.stdout)
    });
    assert_eq!(root.trim(), "0");

    // The window ends a minute after activation: removed, then expired.
    let expired = wait_state(&cp, &alice, &id, "expired", Duration::from_secs(150));
    assert_eq!(expired["end_reason"], "expired", "{expired:#}");
    assert_eq!(expired["hosts"][0]["state"], "revoked");
    let (from, to) = (
        expired["activated_at"].as_str().expect("activated"),
        expired["ends_at"].as_str().expect("ends"),
    );
    let span = chrono::DateTime::parse_from_rfc3339(to).expect("time")
        - chrono::DateTime::parse_from_rfc3339(from).expect("time");
    assert_eq!(span.num_seconds(), 60, "the window starts at activation");
    assert!(host.passwd_line("alice").is_none(), "the account is gone");
    let refused = ssh.run("id -u");
    assert_eq!(refused.code, 255, "{refused:?}");
    host.assert_account_files_clean();
    let shown = as_person(&cp, &alice, &["access", "show", &id]);
    assert_eq!(shown.code, 0);
    let table = cp
        .latchctl_as(None, &alice, &["access", "show", &id], None)
        .ok("show");
    for step in ["requested", "approved", "active", "expired"] {
        assert!(table.contains(step), "{step}: {table}");
    }

    // The audit trail: each step with its actor.
    let audit = cp.json(&["audit", "list"]);
    let entries = audit["list"].as_array().expect("audit list").clone();
    let actor_of = |action: &str| -> String {
        entries
            .iter()
            .find(|e| e["action"] == action && e["detail"].to_string().contains(&id))
            .unwrap_or_else(|| panic!("no {action} for {id} in the audit trail"))["actor"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(actor_of("access.requested"), "user:alice");
    assert_eq!(actor_of("access.approved"), "user:mark");
    for action in [
        "access.provisioning",
        "access.activated",
        "access.expiring",
        "access.expired",
    ] {
        assert_eq!(actor_of(action), "control_plane", "{action}");
    }
    assert_eq!(cp.json(&["audit", "verify"])["ok"], true);

    // The webhook saw the steps, each signed over its timestamp and body.
    let wanted = [
        "access.requested",
        "access.approved",
        "access.active",
        "access.expired",
    ];
    let started = std::time::Instant::now();
    let events = loop {
        let seen = received.lock().expect("lock").clone();
        if wanted.iter().all(|e| seen.iter().any(|r| r.event == *e)) {
            break seen;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let hooks = cp.json(&["webhooks", "list"]);
            let hook = hooks["list"][0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            panic!(
                "the webhook did not see {wanted:?}: got {seen:?}; deliveries: {}; log: {}",
                cp.latchctl(&["webhooks", "deliveries", &hook]).stdout,
                cp.log()
                    .lines()
                    .filter(|l| l.contains("panicked") || l.contains("ERROR") || l.contains("WARN"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for event in events {
        assert_eq!(
            event.signature,
            latch_control::webhooks::signature(
                HOOK_SECRET.as_bytes(),
                event.timestamp,
                event.body.as_bytes()
            ),
            "{event:?}"
        );
        let body: Value = serde_json::from_str(&event.body).expect("JSON body");
        assert_eq!(body["detail"]["request_id"], id.as_str(), "{body:#}");
    }
    real.assert_unchanged();
}

/// The other ways a request goes: denied; exclusive access held by one engineer at a time;
/// revoked early (login refused at once); a provisioning failure (the account name is taken
/// on the host) leaves nothing behind and fails the request; a request nobody decides
/// expires; a service user asks through the API with its token and gets a generated key.
#[test]
fn requests_are_denied_held_revoked_failed_expired_and_made_by_pipelines() {
    if !e2e_enabled("requests_are_denied_held_revoked_failed_expired_and_made_by_pipelines") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--mfa-required", "none", "--access-pending-ttl", "3s"]);
    let (host, port, _agent) = host_with(&cp, "prod-db-02", &["env=prod"], false);
    for group in ["dbas", "managers", "pipelines"] {
        cp.latchctl(&["groups", "create", group])
            .ok("groups create");
    }
    policy(
        &cp,
        "dba",
        "dbas",
        "sudo",
        "env=prod",
        "2h",
        &["--approver-group", "managers", "--exclusive"],
    );
    policy(
        &cp,
        "deploys",
        "pipelines",
        "ephemeral-account",
        "env=prod",
        "1h",
        &[
            "--approver-group",
            "managers",
            "--auto-approve-service",
            "15m",
        ],
    );
    let homes = tempfile::tempdir().expect("tempdir");
    let home = |name: &str| {
        let dir = homes.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    };
    let (alice, carol, mark) = (home("alice"), home("carol"), home("mark"));
    person(&cp, "alice", &["dbas"], &alice);
    person(&cp, "carol", &["dbas"], &carol);
    person(&cp, "mark", &["managers"], &mark);
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, _) = ssh_keypair(keys.path(), "alice");
    let public = key.with_extension("pub");
    let public = public.to_str().expect("utf-8 path").to_owned();
    let ask = |home: &Path, reason: &str| -> String {
        as_person(
            &cp,
            home,
            &[
                "access",
                "request",
                "--host",
                "prod-db-02",
                "--role",
                "sudo",
                "--for",
                "30m",
                "--reason",
                reason,
                "--ssh-key-file",
                &public,
            ],
        )
        .json("access request")["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };

    // Nobody decides within the pending time: expired.
    let undecided = ask(&alice, "nobody will look");
    wait_state(&cp, &alice, &undecided, "expired", Duration::from_secs(30));

    // Denied.
    let denied = ask(&alice, "CHG-1");
    let shown = as_person(
        &cp,
        &mark,
        &["access", "deny", &denied, "--reason", "freeze"],
    )
    .json("access deny");
    assert_eq!(shown["state"], "denied", "{shown:#}");

    // Exclusive: while alice holds sudo there, carol's approval is refused.
    let first = ask(&alice, "CHG-2");
    as_person(&cp, &mark, &["access", "approve", &first]).json("approve");
    wait_state(&cp, &alice, &first, "active", Duration::from_secs(60));
    let second = ask(&carol, "CHG-3");
    let (code, message) = as_person(&cp, &mark, &["access", "approve", &second]).json_error("held");
    assert_eq!(code, "resource_already_exists", "{message}");
    assert!(message.contains(&first), "{message}");
    let ssh = Ssh::new(port, "alice", &key);
    wait_for("alice to log in", Duration::from_secs(20), || {
        (ssh.run("true").code == 0).then_some(())
    });

    // Revoked early by the holder: the account goes, the login is refused.
    as_person(
        &cp,
        &alice,
        &["access", "revoke", &first, "--reason", "done"],
    )
    .json("access revoke");
    let revoked = wait_state(&cp, &alice, &first, "revoked", Duration::from_secs(60));
    assert_eq!(revoked["decision_reason"], "done", "{revoked:#}");
    assert!(host.passwd_line("alice").is_none());
    assert_eq!(ssh.run("true").code, 255);

    // carol's name is taken on the host by an account Latch did not make: provisioning fails
    // there, and the host keeps its account untouched.
    host.exec(&["useradd", "-m", "carol"]).ok("useradd carol");
    let before = host.passwd_line("carol");
    as_person(&cp, &mark, &["access", "approve", &second]).json("approve carol");
    let failed = wait_state(&cp, &carol, &second, "failed", Duration::from_secs(60));
    assert_eq!(failed["hosts"][0]["state"], "failed", "{failed:#}");
    assert!(
        failed["hosts"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("account_exists"),
        "{failed:#}"
    );
    assert_eq!(
        host.passwd_line("carol"),
        before,
        "the host's own account is untouched"
    );
    assert!(!host.group_members("sudo").contains(&"carol".to_owned()));

    // A pipeline: a service user in `pipelines` asks through the API with its own token, gets
    // a key pair made for it, and logs in with it.
    let created = cp
        .latchctl(&["service-users", "create", "deployer", "--role", "end_user"])
        .ok("service-users create");
    let api_key = created
        .split_whitespace()
        .find(|w| w.starts_with("latch_key_"))
        .expect("API key printed")
        .to_owned();
    cp.latchctl(&["groups", "add-member", "pipelines", "deployer"])
        .ok("add deployer");
    let (status, issued) = cp.post_as("", "/v1/service_token", &json!({"api_key": api_key}));
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().expect("token");
    let (status, made) = cp.post_as(
        token,
        "/v1/access/requests",
        &json!({"host": "prod-db-02", "access": "ephemeral-account", "minutes": 1,
                "reason": "deploy 1.4.2"}),
    );
    assert_eq!(status, 201, "{made:#}");
    assert_eq!(made["key_generated"], true);
    let private = made["private_key"]
        .as_str()
        .expect("the generated private key");
    let id = made["id"].as_str().expect("id");
    let generated = keys.path().join("deployer");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&generated)
            .expect("key file");
        file.write_all(private.as_bytes()).expect("write key");
    }
    let active = wait_for("the pipeline's grant", Duration::from_secs(60), || {
        let (status, shown) = cp.api_as(token, "GET", &format!("/v1/access/requests/{id}"));
        assert_eq!(status, 200, "{shown}");
        assert!(shown.get("private_key").is_none(), "given out once only");
        (shown["state"] == "active").then_some(shown)
    });
    assert_eq!(active["account"], "deployer");
    let deployer = Ssh::new(port, "deployer", &generated);
    let who = wait_for("the pipeline to log in", Duration::from_secs(20), || {
        let ran = deployer.run("id -un");
        (ran.code == 0).then_some(ran.stdout)
    });
    assert_eq!(who.trim(), "deployer");
    // An ephemeral account has no sudo.
    assert_ne!(deployer.run("sudo -n id -u").code, 0);
    // The private key never reached the database.
    let middle = private
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    let needle = &middle[middle.len() / 2..middle.len() / 2 + 40];
    assert!(!cp.database_dump().contains(needle));
    // The generated key stops working when the minute is over.
    wait_for(
        "the pipeline's grant to expire",
        Duration::from_secs(150),
        || {
            let (_, shown) = cp.api_as(token, "GET", &format!("/v1/access/requests/{id}"));
            (shown["state"] == "expired").then_some(())
        },
    );
    assert_eq!(
        deployer.run("true").code,
        255,
        "the generated key is refused"
    );
    assert!(host.passwd_line("deployer").is_none());
    real.assert_unchanged();
}

/// On a host enrolled with `--ssh-ca`, a grant gets an OpenSSH certificate valid for its
/// window: no key is installed on the host, the certificate logs in (with sudo), and at the
/// window's end it no longer does.
#[test]
fn an_ssh_certificate_grant_logs_in_until_its_window_ends() {
    if !e2e_enabled("an_ssh_certificate_grant_logs_in_until_its_window_ends") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--mfa-required", "none"]);
    let (host, port, _agent) = host_with(&cp, "prod-web-01", &["env=prod"], true);
    cp.latchctl(&["groups", "create", "web"])
        .ok("groups create");
    policy(
        &cp,
        "web",
        "web",
        "sudo",
        "env=prod",
        "1h",
        &["--no-approval"],
    );
    let homes = tempfile::tempdir().expect("tempdir");
    person(&cp, "erin", &["web"], homes.path());
    let key = homes.path().join("erin-key");
    let key_text = key.to_str().expect("utf-8 path");
    // No key given: Latch generates one and the private key lands in --key-out, 0600.
    let made = cp.latchctl_as(
        None,
        homes.path(),
        &[
            "--output",
            "json",
            "access",
            "request",
            "--host",
            "prod-web-01",
            "--role",
            "sudo",
            "--for",
            "1m",
            "--reason",
            "deploy hotfix",
            "--key-out",
            key_text,
            "--wait",
            "--timeout",
            "60s",
        ],
        None,
    );
    assert_eq!(made.code, 0, "{made:?}");
    let mode = std::fs::metadata(&key).expect("key file");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let shown = as_person(&cp, homes.path(), &["access", "list", "--mine"]).json("list");
    let id = shown["list"][0]["id"].as_str().expect("id").to_owned();
    let active = as_person(&cp, homes.path(), &["access", "show", &id]).json("show");
    assert_eq!(active["state"], "active", "{active:#}");
    assert_eq!(active["hosts"][0]["ssh_certificate"], true);
    assert!(active["certificate"].is_string(), "{active:#}");
    let cert = format!("{key_text}-cert.pub");
    as_person(
        &cp,
        homes.path(),
        &["access", "certificate", &id, "--out", &cert],
    )
    .json("access certificate");
    // Nothing in ~/.ssh on the host: the certificate is the credential.
    let authorized = host.exec(&["test", "-e", "/home/erin/.ssh/authorized_keys"]);
    assert_ne!(authorized.code, 0, "no key file on the host");
    assert_eq!(
        host.read("/etc/ssh/latch/principals/erin"),
        format!("{id}\n")
    );
    let ssh = Ssh::new(port, "erin", &key);
    let root = wait_for(
        "erin to log in with the certificate",
        Duration::from_secs(20),
        || {
            let ran = ssh.run("sudo -n id -u");
            (ran.code == 0).then_some(ran.stdout)
        },
    );
    assert_eq!(root.trim(), "0");

    let cert_text = std::fs::read_to_string(&cert).expect("certificate");
    assert!(
        cert_text.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{cert_text}"
    );
    wait_state(&cp, homes.path(), &id, "expired", Duration::from_secs(150));
    assert_eq!(
        ssh.run("true").code,
        255,
        "the certificate no longer logs in"
    );
    assert!(host.passwd_line("erin").is_none());
    let principals = host.exec(&["test", "-e", "/etc/ssh/latch/principals/erin"]);
    assert_ne!(principals.code, 0);
    real.assert_unchanged();
}
