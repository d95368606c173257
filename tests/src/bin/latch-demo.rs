//! `latch-demo`: the whole loop on one machine without touching it — a control plane on
//! loopback with a throwaway data directory, and an agent in a throwaway test host (Linux
//! namespaces with private copies of `/etc`, `/home`, …). Grants an account with an SSH key and
//! sudo for 20 seconds, logs in with it, watches it expire, then removes everything. Run by
//! `scripts/demo` (needs root for the namespaces; the machine's own accounts are never
//! changed — checked at the end).

use std::process::ExitCode;
use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, Ssh, TestHost, ssh_keypair};

fn step(text: &str) {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m==> {text}\x1b[0m");
    } else {
        println!("\n==> {text}");
    }
}

fn show(cp: &ControlPlane, args: &[&str]) {
    println!("$ latchctl {}", args.join(" "));
    let ran = cp.latchctl(args);
    print!("{}", ran.stdout);
    if ran.code != 0 {
        eprint!("{}", ran.stderr);
    }
}

fn main() -> ExitCode {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !is_root {
        eprintln!(
            "error: the demo builds a throwaway test host from Linux namespaces and needs root; run `scripts/demo` (it asks sudo)"
        );
        return ExitCode::from(1);
    }
    let with_ssh = ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/sudo"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    let real = RealEtc::snapshot();

    step("Starting a control plane on loopback (throwaway data directory)");
    let cp = ControlPlane::start(&[]);
    println!("control plane: {}", cp.url);
    println!("CA fingerprint agents pin: {}", cp.fingerprint);

    step("Starting a throwaway test host 'demo-host' and enrolling its agent");
    let host = TestHost::start("demo-host");
    let host_id = host.enroll_ok(&cp);
    let _agent = host.start_agent();
    println!("enrolled as host {host_id}");
    show(&cp, &["hosts", "list"]);

    step("Granting 'alice' an account with an SSH key and sudo for 20 seconds");
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("error: cannot make a temporary directory: {error}");
            return ExitCode::from(1);
        }
    };
    let (key, public) = ssh_keypair(dir.path(), "alice");
    let keys = dir.path().join("alice.keys");
    if let Err(error) = std::fs::write(&keys, &public) {
        eprintln!("error: cannot write the key file: {error}");
        return ExitCode::from(1);
    }
    let keys = keys.display().to_string();
    let id = cp.create_job(&[
        "--host",
        "demo-host",
        "--kind",
        "create-account",
        "--user",
        "alice",
        "--group",
        "sudo",
        "--ssh-key-file",
        &keys,
        "--expires-in",
        "20s",
    ]);
    show(&cp, &["jobs", "wait", &id]);
    show(&cp, &["grants", "--host", "demo-host"]);

    if with_ssh {
        step("Logging in as alice with her key and using sudo");
        let port = host.start_sshd();
        let ssh = Ssh::new(port, "alice", &key);
        let ran = ssh.run("id; sudo -n id -u");
        print!("{}", ran.stdout);
    } else {
        println!("(openssh-server and sudo are not installed: skipping the ssh login)");
    }

    step("Waiting for the grant to end (the agent revokes it on its own timer)");
    host.wait("alice to be removed", Duration::from_secs(60), || {
        host.passwd_line("alice").is_none().then_some(())
    });
    println!("alice is gone from demo-host's /etc/passwd");
    std::thread::sleep(Duration::from_secs(2));
    show(&cp, &["grants", "--host", "demo-host"]);

    step("The audit trail");
    show(&cp, &["audit", "list", "--host", "demo-host"]);
    show(&cp, &["audit", "verify"]);

    step("Cleaning up: the test host and the control plane go away");
    drop(host);
    drop(cp);
    real.assert_unchanged();
    println!("done: this machine's own accounts were not touched");
    ExitCode::SUCCESS
}
