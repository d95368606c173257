//! SSH access end to end with the real `ssh` client against the test host's real sshd: Latch
//! as an SSH user certificate authority (a host enrolled with `--ssh-ca`, principals written
//! by create-account, certificates signed with the control plane's CA key), and keys that
//! carry the grant's end (`expiry-time=`) so sshd itself refuses them afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, Ssh, TestHost, e2e_enabled, ssh_keypair, wait_for};
use serde_json::json;

/// Signs `key`'s public key with the CA key file `ca` for `principal`, valid for 5 minutes
/// (`ssh-keygen -s`); `ssh` finds the certificate beside the key (`KEY-cert.pub`).
fn sign(ca: &Path, key: &Path, principal: &str) -> PathBuf {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "id", "-n", principal, "-V", "+5m"])
        .arg(key.with_extension("pub"))
        .status()
        .expect("ssh-keygen -s");
    assert!(status.success(), "ssh-keygen -s failed");
    let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
    assert!(cert.is_file(), "no certificate at {}", cert.display());
    cert
}

/// Queues a job through `POST /v1/jobs`; its id.
fn queue(cp: &ControlPlane, body: serde_json::Value) -> String {
    let (status, job) = cp.api("POST", "/v1/jobs", Some(&body.to_string()));
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().expect("job id").to_owned()
}

/// A host enrolled with an `--ssh-ca` token trusts the control plane's user CA: a
/// create-account job with `principals: ["p-test"]` and `sudo: true` lets a certificate for
/// p-test signed with the CA key log in as the account with sudo; a certificate for another
/// principal, and the bare key, are refused; after delete-account the certificate no longer
/// logs in and the principals file is gone.
#[test]
fn a_user_certificate_logs_in_with_sudo_until_the_account_is_deleted() {
    if !e2e_enabled("a_user_certificate_logs_in_with_sudo_until_the_account_is_deleted") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-sshca1");
    let token = cp.json(&[
        "enroll-token",
        "create",
        "--ttl",
        "10m",
        "--uses",
        "1",
        "--ssh-ca",
    ]);
    assert_eq!(token["ssh_ca"], true, "{token}");
    host.enroll(&cp, token["token"].as_str().expect("token"))
        .ok("enroll");
    assert_eq!(cp.json(&["hosts", "show", "e2e-sshca1"])["ssh_ca"], true);
    // sshd first: the agent installs the CA at its start and makes sshd reload (SIGHUP to the
    // PID in the test host's pid file).
    host.write_agent_config("sshd_pid_file = \"/run/sshd-e2e.pid\"\n");
    let port = host.start_sshd();
    let agent = host.start_agent();

    let ca_key = cp.data_dir.path().join("data/user_ca.key");
    let derived = Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(&ca_key)
        .output()
        .expect("ssh-keygen -y");
    assert!(derived.status.success(), "{derived:?}");
    let ca_public = String::from_utf8(derived.stdout).expect("utf-8");
    let blob = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    let installed = host.wait(
        "the agent to install the user CA",
        Duration::from_secs(20),
        || {
            let ran = host.exec(&["cat", "/etc/ssh/latch/user_ca.pub"]);
            (ran.code == 0).then_some(ran.stdout)
        },
    );
    assert_eq!(blob(&installed), blob(&ca_public));
    host.wait("the agent to reload sshd", Duration::from_secs(10), || {
        host.agent_log().contains("SIGHUP to sshd").then_some(())
    });
    assert!(
        !host.agent_log().contains("Include"),
        "no warning about sshd_config expected: {}",
        host.agent_log()
    );
    let drop_in = host.read("/etc/ssh/sshd_config.d/50-latch.conf");
    assert!(
        drop_in.contains("\nTrustedUserCAKeys /etc/ssh/latch/user_ca.pub\n")
            && drop_in.contains("\nAuthorizedPrincipalsFile /etc/ssh/latch/principals/%u\n"),
        "{drop_in}"
    );

    let id = queue(
        &cp,
        json!({"host": "e2e-sshca1", "kind": "create-account", "user": "alice",
               "sudo": true, "principals": ["p-test"], "expires_in_ms": 600_000}),
    );
    let job = cp.expect_confirmed(&id);
    assert_eq!(job["params"]["principals"], json!(["p-test"]), "{job:#}");
    assert_eq!(job["params"]["sudo"], true, "{job:#}");
    assert!(host.group_members("sudo").contains(&"alice".to_owned()));
    assert_eq!(host.read("/etc/ssh/latch/principals/alice"), "p-test\n");
    let modes = host
        .exec(&[
            "stat",
            "-c",
            "%a %U:%G",
            "/etc/ssh/latch",
            "/etc/ssh/latch/principals",
            "/etc/ssh/latch/principals/alice",
        ])
        .ok("stat");
    assert_eq!(modes, "755 root:root\n755 root:root\n644 root:root\n");

    let keys = tempfile::tempdir().expect("tempdir");
    let (key, _) = ssh_keypair(keys.path(), "alice");
    sign(&ca_key, &key, "p-test");
    let alice = Ssh::new(port, "alice", &key);
    let root = wait_for("the certificate to log in", Duration::from_secs(20), || {
        let ran = alice.run("sudo -n id -u");
        (ran.code == 0).then_some(ran.stdout)
    });
    assert_eq!(root.trim(), "0");

    // Another principal, signed by the same CA: refused. The same key without a certificate
    // (alice has no authorized_keys): refused.
    let (other, _) = ssh_keypair(keys.path(), "other");
    sign(&ca_key, &other, "p-other");
    let refused = Ssh::new(port, "alice", &other).run("id -u");
    assert_eq!(refused.code, 255, "{refused:?}");
    assert!(refused.stderr.contains("Permission denied"), "{refused:?}");
    let (bare, _) = ssh_keypair(keys.path(), "bare");
    assert_eq!(Ssh::new(port, "alice", &bare).run("id -u").code, 255);

    let id = cp.create_job(&[
        "--host",
        "e2e-sshca1",
        "--kind",
        "delete-account",
        "--user",
        "alice",
    ]);
    cp.expect_confirmed(&id);
    assert!(host.passwd_line("alice").is_none());
    let gone = host.exec(&["test", "-e", "/etc/ssh/latch/principals/alice"]);
    assert_ne!(gone.code, 0, "the principals file is still there");
    let after = alice.run("id -u");
    assert_eq!(after.code, 255, "{after:?}");
    host.assert_account_files_clean();

    // The CA stays in the agent's state: a restart puts back a drop-in removed by hand.
    agent.stop();
    host.exec(&["rm", "/etc/ssh/sshd_config.d/50-latch.conf"])
        .ok("rm drop-in");
    let _agent = host.start_agent();
    host.wait(
        "the agent to restore the drop-in",
        Duration::from_secs(20),
        || {
            (host
                .exec(&["cat", "/etc/ssh/sshd_config.d/50-latch.conf"])
                .stdout
                == drop_in)
                .then_some(())
        },
    );
    real.assert_unchanged();
}

/// A key installed with a grant's end carries sshd's `expiry-time=` (UTC, `Z`): it logs in
/// before the end, and after it sshd refuses it by itself — here with the agent killed, so the
/// account is still there.
#[test]
fn keys_carry_the_grant_end_and_sshd_refuses_them_after_it() {
    if !e2e_enabled("keys_carry_the_grant_end_and_sshd_refuses_them_after_it") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-sshexp1");
    host.enroll_ok(&cp);
    let port = host.start_sshd();
    let agent = host.start_agent();
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, public) = ssh_keypair(keys.path(), "bob");
    let id = queue(
        &cp,
        json!({"host": "e2e-sshexp1", "kind": "create-account", "user": "bob",
               "ssh_keys": [public], "expires_in_ms": 8_000}),
    );
    let job = cp.expect_confirmed(&id);
    let end = chrono::DateTime::parse_from_rfc3339(job["expires_at"].as_str().expect("end"))
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc);
    let line = host.read("/home/bob/.ssh/authorized_keys");
    assert_eq!(
        line,
        format!("expiry-time=\"{}\" {public}\n", end.format("%Y%m%d%H%M%SZ"))
    );
    let bob = Ssh::new(port, "bob", &key);
    let before = bob.run("id -un");
    assert_eq!(before.code, 0, "{before:?}");
    assert_eq!(before.stdout.trim(), "bob");

    // Without the agent nothing removes the account at its end; sshd refuses the key anyway.
    agent.kill9();
    let wait = (end - chrono::Utc::now()).num_milliseconds().max(0) as u64 + 1500;
    std::thread::sleep(Duration::from_millis(wait));
    assert!(
        host.passwd_line("bob").is_some(),
        "the account is still there"
    );
    let after = bob.run("id -un");
    assert_eq!(after.code, 255, "{after:?}");
    assert!(after.stderr.contains("Permission denied"), "{after:?}");
    real.assert_unchanged();
}
