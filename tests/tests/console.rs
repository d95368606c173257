//! Issue 14 end to end: the web console in headless Chromium (tests/console, playwright-core)
//! against a real control plane, real agents in test hosts and the real OpenID Connect provider
//! (tests/oidc). The scenarios (tests/console/scenarios/console_*.mjs) drive the pages; this side
//! sets the scene and answers their asks with what only the host or the server can tell: queue
//! a job, start the agent, run pamtester on the host, give a TOTP code. axe-core runs on every
//! page; screenshots land in target/console-screenshots/.

use std::time::Duration;

use latch_e2e::browser::{
    browser_enabled, control_plane_env, run_scenario, scenario, try_run_scenario,
};
use latch_e2e::oidc::OidcProvider;
use latch_e2e::{Agent, ControlPlane, RealEtc, TestHost, e2e_enabled};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

/// A free loopback port (the control plane must know its address before the provider starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn refuse(kind: &str) -> Result<Value, String> {
    Err(format!("no such ask: {kind}"))
}

#[test]
fn an_admin_signs_in_through_the_provider_follows_jobs_and_enrolls_an_account() {
    if !e2e_enabled("console admin") || !browser_enabled("console admin") {
        return;
    }
    let real = RealEtc::snapshot();
    let port = free_port();
    let provider =
        OidcProvider::start_for_console(&format!("https://127.0.0.1:{port}/login/callback"))
            .unwrap_or_else(|why| panic!("the OpenID Connect provider: {why}"));
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret_file = secret_dir.path().join("sso-secret");
    std::fs::write(&secret_file, &provider.secret).expect("secret file");
    let cp = ControlPlane::start_at(
        &format!("127.0.0.1:{port}"),
        &[
            "--sso-issuer",
            &provider.issuer,
            "--sso-client-id",
            "latch",
            "--sso-client-secret-file",
            secret_file.to_str().expect("path"),
        ],
    );
    // The provider's group dbas makes its members pam_admins; carol signs in with a second
    // factor (amr otp), so her session is stepped up for the reveal.
    cp.latchctl(&["groups", "create", "dbas", "--idp-group", "dbas"])
        .ok("groups create");
    cp.latchctl(&["roles", "bind", "pam_admin", "--group", "dbas"])
        .ok("roles bind");
    cp.json(&["vaults", "create", "legacy"]);
    cp.latchctl(&[
        "vaults", "grant", "legacy", "--group", "dbas", "--level", "checkout",
    ])
    .ok("vaults grant");

    let host = TestHost::start("e2e-console1");
    host.enroll_ok(&cp);
    host.exec(&["useradd", "-m", "-s", "/bin/bash", "deploy"])
        .ok("useradd deploy");
    let mut agent: Option<Agent> = Some(host.start_agent());
    cp.wait_online(&host.name);

    let mut env = control_plane_env(&cp);
    env.push(("OIDC_ISSUER", provider.issuer.clone()));
    env.push(("LATCH_HOST", host.name.clone()));
    env.push(("LATCH_VAULT", "legacy".to_owned()));
    let outcome = try_run_scenario(&scenario("console_admin"), &env, |kind, data| match kind {
        "queue-job-while-agent-stopped" => {
            if let Some(running) = agent.take() {
                running.stop();
            }
            let id = cp.create_job(&[
                "--host",
                &host.name,
                "--kind",
                "create-account",
                "--user",
                "tempo",
            ]);
            Ok(json!({ "id": id }))
        }
        "start-agent" => {
            agent = Some(host.start_agent());
            Ok(Value::Null)
        }
        "queue-failing-job" => {
            // `games` is not a group this host allows granting: the agent refuses it.
            let id = cp.create_job(&[
                "--host",
                &host.name,
                "--kind",
                "add-group",
                "--user",
                "tempo",
                "--group",
                "games",
            ]);
            Ok(json!({ "id": id }))
        }
        "pam-accepts" => {
            let user = data["user"].as_str().ok_or("user")?;
            let password = data["password"].as_str().ok_or("password")?;
            Ok(Value::Bool(host.pam_accepts(user, password)))
        }
        other => refuse(other),
    });
    let run = outcome.unwrap_or_else(|failure| {
        panic!(
            "{failure}\n--- agent log ---\n{}\n--- server log (tail) ---\n{}",
            host.agent_log(),
            tail(&cp.log(), 80)
        )
    });
    for step in [
        "carol signs in through the identity provider",
        "a job queued elsewhere turns confirmed without a reload",
        "one click enrolls an existing account, and its jobs turn confirmed",
        "reveal shows the password for 30 seconds, in no storage",
        "a form posted without its CSRF token is refused",
    ] {
        assert!(
            run.steps().contains(&step),
            "step {step:?} did not pass: {:?}",
            run.steps()
        );
    }
    for page in [
        "login",
        "jobs",
        "hosts",
        "host-enrolled",
        "identity-revealed",
        "audit",
    ] {
        assert!(
            run.out_dir.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
    let log = cp.log();
    assert!(
        !log.contains(&provider.secret),
        "the client secret is in the server log"
    );
    drop(agent);
    real.assert_unchanged();
}

#[test]
fn an_approver_steps_up_to_approve_while_the_requester_cannot() {
    if !e2e_enabled("console access") || !browser_enabled("console access") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-console2");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    cp.wait_online(&host.name);
    cp.latchctl(&["hosts", "label", &host.name, "env=test"])
        .ok("hosts label");
    cp.latchctl(&["groups", "create", "engineers"])
        .ok("groups create");
    cp.latchctl(&["groups", "create", "managers"])
        .ok("groups create");
    for (who, group) in [("eve", "engineers"), ("mark", "managers")] {
        cp.latchctl_stdin(
            &["users", "create", who, "--password-stdin"],
            Some(format!("{PASSWORD}\n").as_bytes()),
        )
        .ok("users create");
        cp.latchctl(&["roles", "bind", "end_user", "--user", who])
            .ok("roles bind");
        cp.latchctl(&["groups", "add-member", group, who])
            .ok("groups add-member");
    }
    cp.latchctl(&[
        "policies",
        "create",
        "--name",
        "test-sudo",
        "--group",
        "engineers",
        "--access",
        "sudo",
        "--hosts",
        "env=test",
        "--max",
        "1h",
        "--approver-group",
        "managers",
    ])
    .ok("policies create");
    // mark sets up his authenticator app in the console; each code counts once, so every code
    // given is of a later time step than the one before.
    let mut last_step = 0;
    let mut env = control_plane_env(&cp);
    env.push(("LATCH_HOST", host.name.clone()));
    env.push(("LATCH_PASSWORD", PASSWORD.to_owned()));
    let run = run_scenario(&scenario("console_access"), &env, |kind, data| match kind {
        "totp" => {
            let secret = data["secret"].as_str().ok_or("secret")?;
            while chrono::Utc::now().timestamp() / 30 <= last_step {
                std::thread::sleep(Duration::from_millis(500));
            }
            let now = chrono::Utc::now();
            last_step = now.timestamp() / 30;
            latch_control::mfa::code_at(secret, now)
                .map(Value::String)
                .ok_or_else(|| "no code".to_owned())
        }
        "account-on-host" | "account-removed" => {
            let id = data["request"].as_str().ok_or("request")?;
            let shown = cp.json(&["access", "show", id]);
            let account = shown["account"]
                .as_str()
                .ok_or("no account yet")?
                .to_owned();
            let want = kind == "account-on-host";
            let found = wait_until(Duration::from_secs(60), || {
                host.passwd_line(&account).is_some() == want
            });
            Ok(Value::Bool(found))
        }
        other => refuse(other),
    });
    assert!(
        run.steps()
            .contains(&"the approver is asked for a second factor, then approves"),
        "{:?}",
        run.steps()
    );
    real.assert_unchanged();
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `condition` every 200 ms for up to `limit`.
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
