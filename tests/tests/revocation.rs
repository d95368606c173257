//! Issue 3, end to end: revocation that holds, proven with real ssh, sudo and PAM inside test
//! hosts — local expiry, sessions opened before a revocation, restarts, crashes, stale jobs.

use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, Ssh, TestHost, e2e_enabled, ssh_keypair, wait_for};
use serde_json::Value;

/// Enrolls `host`, starts its agent and sshd; returns the sshd port.
fn ready(cp: &ControlPlane, host: &TestHost) -> (latch_e2e::Agent, u16) {
    host.enroll_ok(cp);
    let agent = host.start_agent();
    let port = host.start_sshd();
    (agent, port)
}

fn key_file(dir: &std::path::Path, public: &str) -> String {
    let path = dir.join("keys.pub");
    std::fs::write(&path, public).expect("write key file");
    path.to_str().expect("path").to_owned()
}

fn wait_revoked(cp: &ControlPlane, id: &str) -> Value {
    wait_for(
        "the grant to be recorded as revoked",
        Duration::from_secs(30),
        || {
            let job = cp.job(id);
            job["revoked_at"].is_string().then_some(job)
        },
    )
}

/// Test 1: ephemeral account with key and sudo, expiring in seconds. Before: ssh + sudo work.
/// After: new logins refused, the open session gone, the account gone.
#[test]
fn expiry_ends_logins_sessions_sudo_and_the_account() {
    if !e2e_enabled("expiry_ends_logins_sessions_sudo_and_the_account") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-exp1");
    let (_agent, port) = ready(&cp, &host);
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = ssh_keypair(dir.path(), "alice");
    let id = cp.create_job(&[
        "--host",
        "e2e-exp1",
        "--kind",
        "create-account",
        "--user",
        "alice",
        "--group",
        "sudo",
        "--ssh-key-file",
        &key_file(dir.path(), &public),
        "--expires-in",
        "8s",
    ]);
    let job = cp.expect_confirmed(&id);
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(job["expires_at"].as_str().expect("expires_at"))
            .expect("time");

    let mut ssh = Ssh::new(port, "alice", &key);
    let sudo = ssh.run("sudo -n id -u");
    assert_eq!(
        sudo.stdout.trim(),
        "0",
        "ssh + sudo before expiry: {} {}",
        sudo.stdout,
        sudo.stderr
    );
    ssh.open_session(dir.path());
    assert_eq!(ssh.in_session("sudo -n id -u").stdout.trim(), "0");

    host.wait("the account to be gone", Duration::from_secs(30), || {
        host.passwd_line("alice").is_none().then_some(())
    });
    let late = chrono::Utc::now().signed_duration_since(expires_at);
    assert!(
        late < chrono::Duration::seconds(3),
        "access outlived its expiry by {late}"
    );
    assert!(
        !ssh.session_alive() || ssh.in_session("sudo -n true").code != 0,
        "the open session kept sudo"
    );
    let login = ssh.run("true");
    assert_ne!(login.code, 0, "a new login worked after expiry");
    assert_eq!(host.exec(&["test", "-e", "/home/alice"]).code, 1);
    assert!(host.exec(&["pgrep", "-u", "alice"]).code != 0 || host.passwd_line("alice").is_none());
    let job = wait_revoked(&cp, &id);
    assert!(
        matches!(
            job["revoked_by"].as_str(),
            Some("agent_expiry" | "control_plane")
        ),
        "{job:#}"
    );
    host.assert_account_files_clean();
    real.assert_unchanged();
}
