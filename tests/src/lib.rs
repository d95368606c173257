//! The end-to-end harness: a real control plane on loopback, and test hosts built from Linux
//! namespaces (mount, UTS, PID) with private tmpfs copies of `/etc`, `/home`, `/run`,
//! `/var/log`, `/var/lib/latch`, `/var/mail` and `/tmp`, running the real `latch-agent`.
//!
//! The machine's own `/etc` is never changed: [`RealEtc`] fingerprints its account files when a
//! test starts and every test asserts they are byte-identical when it ends.
//!
//! These tests need root. Without it they skip, unless `LATCH_E2E=required`, which turns a skip
//! into a failure (CI sets it).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The account files of the real machine that no test may change.
const GUARDED_FILES: &[&str] = &["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"];

/// Returns `true` when end-to-end tests can run here; otherwise skips (or fails, when
/// `LATCH_E2E=required`).
pub fn e2e_enabled(test: &str) -> bool {
    let required = std::env::var("LATCH_E2E").is_ok_and(|v| v == "required");
    let why_not = if !nix_is_root() {
        Some("not running as root")
    } else if !Path::new("/usr/bin/unshare").exists() || !Path::new("/usr/bin/nsenter").exists() {
        Some("unshare/nsenter (util-linux) are missing")
    } else {
        None
    };
    match why_not {
        None => true,
        Some(reason) if required => {
            panic!("{test}: end-to-end test cannot run: {reason} (LATCH_E2E=required)")
        }
        Some(reason) => {
            eprintln!(
                "SKIPPED {test}: {reason}; run as root, with LATCH_E2E=required to make this a failure"
            );
            false
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Fingerprint of the real machine's account files.
pub struct RealEtc(Vec<(String, Vec<u8>)>);

impl RealEtc {
    /// Reads the guarded files now.
    pub fn snapshot() -> RealEtc {
        RealEtc(
            GUARDED_FILES
                .iter()
                .map(|f| (f.to_string(), std::fs::read(f).unwrap_or_default()))
                .collect(),
        )
    }

    /// Panics if any guarded file changed since [`RealEtc::snapshot`].
    pub fn assert_unchanged(&self) {
        for (path, before) in &self.0 {
            let now = std::fs::read(path).unwrap_or_default();
            assert!(
                now == *before,
                "the real {path} changed during the test: tests must only touch test hosts"
            );
        }
    }
}

/// Paths of the built binaries (`cargo build --workspace --bins` puts them next to `deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, done by scripts/test)",
        path.display()
    );
    path
}

/// Waits until `check` returns `Some`, polling every 50 ms, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    /// Exit code (-1 if killed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Ran {
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Ran {
    /// Panics unless the command succeeded; returns stdout.
    pub fn ok(self, what: &str) -> String {
        assert_eq!(
            self.code, 0,
            "{what} failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

fn run(command: &mut Command, stdin: Option<&[u8]>) -> Ran {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait").into()
}

/// A running `latch-control serve` on 127.0.0.1 with a private data directory.
pub struct ControlPlane {
    child: Child,
    /// Data directory (database, admin token, server log).
    pub data_dir: tempfile::TempDir,
    /// Base URL, e.g. `https://127.0.0.1:40123`.
    pub url: String,
    /// The admin token.
    pub token: String,
    /// The CA fingerprint agents pin (`sha256:…`).
    pub fingerprint: String,
}

impl ControlPlane {
    /// Starts a control plane; `extra` are additional `serve` flags (e.g. `--lease-timeout 3s`).
    pub fn start(extra: &[&str]) -> ControlPlane {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(data_dir, "127.0.0.1:0", extra)
    }

    /// Kills the server (`kill -9`) and starts it again on the same address and data directory.
    pub fn restart_after(mut self, down: Duration) -> ControlPlane {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let listen = self.url.trim_start_matches("https://").to_owned();
        let data_dir = tempfile::tempdir().expect("tempdir");
        let old = std::mem::replace(&mut self.data_dir, data_dir);
        Self::start_in(old, &listen, &[])
    }

    fn start_in(data_dir: tempfile::TempDir, listen: &str, extra: &[&str]) -> ControlPlane {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.path().join("server.log"))
            .expect("server log");
        let mut child = Command::new(binary("latch-control"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .args(["--listen", listen, "--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start latch-control");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut fingerprint = String::new();
        let url = loop {
            let line = lines.next().and_then(Result::ok).unwrap_or_else(|| {
                let log =
                    std::fs::read_to_string(data_dir.path().join("server.log")).unwrap_or_default();
                panic!("latch-control exited before listening: {log}")
            });
            if let Some(found) = line.trim().strip_prefix("CA fingerprint: ") {
                fingerprint = found.to_owned();
            }
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                break url.to_owned();
            }
        };
        assert!(
            fingerprint.starts_with("sha256:"),
            "the control plane printed no CA fingerprint"
        );
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let token = std::fs::read_to_string(data_dir.path().join("data/admin.token"))
            .expect("admin token")
            .trim()
            .to_owned();
        ControlPlane {
            child,
            data_dir,
            url,
            token,
            fingerprint,
        }
    }

    /// Runs `latchctl` against this control plane (token passed in the environment, not argv).
    pub fn latchctl(&self, args: &[&str]) -> Ran {
        self.latchctl_stdin(args, None)
    }

    /// Runs `latchctl` with `stdin`.
    pub fn latchctl_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Ran {
        run(
            Command::new(binary("latchctl"))
                .args(["--server", &self.url])
                .args(args)
                .env("LATCH_TOKEN", &self.token)
                .env("LATCH_CA_FILE", self.ca_file()),
            stdin,
        )
    }

    /// Runs `latchctl --output json ARGS`, asserts success and parses the output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self
            .latchctl(&all)
            .ok(&format!("latchctl {}", args.join(" ")));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("latchctl printed invalid JSON ({e}): {out}"))
    }

    /// Creates an enrollment token and returns it.
    pub fn enroll_token(&self, ttl: &str, uses: u32) -> String {
        let token = self.json(&[
            "enroll-token",
            "create",
            "--ttl",
            ttl,
            "--uses",
            &uses.to_string(),
        ]);
        token["token"].as_str().expect("token").to_owned()
    }

    /// Queues a job through `latchctl jobs create` and returns its id.
    pub fn create_job(&self, args: &[&str]) -> String {
        let mut all = vec!["jobs", "create"];
        all.extend_from_slice(args);
        let job = self.json(&all);
        job["id"].as_str().expect("job id").to_owned()
    }

    /// `latchctl jobs show ID`.
    pub fn job(&self, id: &str) -> Value {
        self.json(&["jobs", "show", id])
    }

    /// Waits (through `latchctl jobs wait`) until the job is final; returns it.
    pub fn wait_job(&self, id: &str) -> Value {
        let out = self.latchctl(&["--output", "json", "jobs", "wait", id, "--timeout", "60s"]);
        assert!(
            out.code == 0 || out.code == 1,
            "jobs wait {id} ended with {}: {} {}",
            out.code,
            out.stdout,
            out.stderr
        );
        serde_json::from_str(&out.stdout).expect("job json")
    }

    /// Waits for the job and asserts it was confirmed.
    pub fn expect_confirmed(&self, id: &str) -> Value {
        let job = self.wait_job(id);
        assert_eq!(
            job["status"], "confirmed",
            "job {id} did not confirm: {job:#}"
        );
        job
    }

    /// Waits for the job and asserts it failed with `code`.
    pub fn expect_failed(&self, id: &str, code: &str) -> Value {
        let job = self.wait_job(id);
        assert_eq!(
            job["status"], "failed",
            "job {id} should have failed: {job:#}"
        );
        assert_eq!(job["error"]["code"], code, "job {id}: {job:#}");
        job
    }

    /// A raw API call: `(status, body)`.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let client = self.http();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().expect("API call");
        status_and_json(response)
    }

    /// A raw API call with another bearer token (a host credential, a guess): `(status, body)`.
    pub fn api_as(&self, token: &str, method: &str, path: &str) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = self
            .http()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .expect("API call");
        status_and_json(response)
    }

    /// Runs SQL against the control plane's database with the `sqlite3` tool, as an attacker
    /// with write access to the database could; returns its output.
    pub fn sql(&self, sql: &str) -> String {
        let db = self.data_dir.path().join("data/latch.db");
        let ran = run(
            Command::new("sqlite3")
                .args(["-cmd", ".timeout 5000"])
                .arg(&db)
                .arg(sql),
            None,
        );
        assert_eq!(ran.code, 0, "sqlite3 {sql}: {}", ran.stderr);
        ran.stdout
    }

    /// A raw JSON `POST` with another bearer token: `(status, body)`.
    pub fn post_as(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http()
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .expect("API call");
        status_and_json(response)
    }

    /// The control plane's CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.path().join("data/ca.crt")
    }

    /// A blocking HTTP client that trusts only this control plane's CA.
    fn http(&self) -> reqwest::blocking::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca_file()).expect("ca.crt"))
            .expect("CA");
        reqwest::blocking::Client::builder()
            .tls_certs_only([ca])
            .build()
            .expect("client")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shell script run as the first process of a test host: private copies of the host's
/// directories on tmpfs, a host name, a machine-id of its own, the agent binary staged inside.
const SETUP: &str = r#"
set -eu
name="$1"; machine_id="$2"; agent="$3"
mount -t tmpfs -o mode=0755 latch-test-host /mnt
mkdir -p /mnt/bin /var/lib/latch /var/mail /var/lib/extrausers
cp "$agent" /mnt/bin/latch-agent
for dir in /etc /home /run /var/log /var/lib/latch /var/mail /var/lib/extrausers /tmp; do
  mkdir -p "/mnt/root$dir"
  case "$dir" in
    /etc|/home|/run) cp -a "$dir/." "/mnt/root$dir/" 2>/dev/null || true ;;
  esac
  mount --bind "/mnt/root$dir" "$dir"
done
chmod 1777 /tmp
hostname "$name"
echo "127.0.1.1 $name" >> /etc/hosts
echo "$machine_id" > /etc/machine-id
mkdir -p /run/sshd
echo ready
exec sleep infinity
"#;

/// A running test host.
pub struct TestHost {
    /// Its host name.
    pub name: String,
    /// Its machine-id.
    pub machine_id: String,
    init: Child,
    /// Host-side PID of the test host's first process (for nsenter).
    pub pid: u32,
    pwck_baseline: String,
    /// The veth link to the machine, for hosts with a network of their own.
    link: Option<Link>,
    own_network: bool,
}

/// A veth pair between a relay namespace and a test host, both network namespaces this test
/// made, addressed from 192.0.2.0/24 — which therefore never appears in the machine's own
/// namespace (where that range may be the real network). The relay reaches the control plane's
/// loopback port through a Unix socket on the shared file system:
///
/// ```text
/// agent -> 127.0.0.1:8443 (test host) -veth-> 192.0.2.201 (relay) -> unix socket -> 127.0.0.1:P
/// ```
struct Link {
    /// The relay namespace's process (`unshare --net sleep`).
    relay: Child,
    /// Interface name inside the relay namespace.
    outside: String,
    forwarders: Vec<Child>,
    _socket_dir: tempfile::TempDir,
}

static LINKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The agent binary as seen inside a test host.
pub const AGENT: &str = "/mnt/bin/latch-agent";

impl TestHost {
    /// Starts a test host called `name`, sharing the machine's network.
    pub fn start(name: &str) -> TestHost {
        Self::start_inner(name, false)
    }

    /// Starts a test host with a network namespace of its own, linked by a veth pair to a relay
    /// namespace that carries the control plane's port; its agent reaches `control` at the URL
    /// returned, over that link.
    pub fn start_linked(name: &str, control: &ControlPlane) -> (TestHost, String) {
        let mut host = Self::start_inner(name, true);
        let index = LINKS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 100;
        let tag = std::process::id() % 10_000;
        let (outside, inside) = (format!("lt{tag}o{index}"), format!("lt{tag}i{index}"));
        let relay = Command::new("/usr/bin/unshare")
            .args(["--net", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("relay namespace");
        let relay_pid = relay.id().to_string();
        let in_relay = |args: &[&str]| {
            let ran = run(
                Command::new("/usr/bin/nsenter")
                    .args(["-t", &relay_pid, "-n", "--"])
                    .args(args),
                None,
            );
            assert_eq!(ran.code, 0, "in relay: {}: {}", args.join(" "), ran.stderr);
        };
        wait_for("the relay namespace", Duration::from_secs(5), || {
            let own = std::fs::read_link(format!("/proc/{relay_pid}/ns/net")).ok()?;
            (own != std::fs::read_link("/proc/self/ns/net").ok()?).then_some(())
        });
        in_relay(&["ip", "link", "set", "lo", "up"]);
        in_relay(&[
            "ip",
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
            "netns",
            &host.pid.to_string(),
        ]);
        in_relay(&["ip", "addr", "add", "192.0.2.201/30", "dev", &outside]);
        in_relay(&["ip", "link", "set", &outside, "up"]);
        host.exec(&["ip", "addr", "add", "192.0.2.202/30", "dev", &inside])
            .ok("address inside");
        host.exec(&["ip", "link", "set", &inside, "up"])
            .ok("link up inside");

        let socket_dir = tempfile::tempdir().expect("socket dir");
        let socket = socket_dir.path().join("control.sock");
        let server_port = control.url.rsplit(':').next().expect("port").to_owned();
        let quiet = |command: &mut Command| -> Child {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat (apt install socat)")
        };
        let to_control = quiet(
            Command::new("socat")
                .arg(format!("UNIX-LISTEN:{},fork", socket.display()))
                .arg(format!("TCP:127.0.0.1:{server_port}")),
        );
        wait_for(
            "the control plane's unix socket",
            Duration::from_secs(5),
            || socket.exists().then_some(()),
        );
        let in_relay_forwarder = quiet(
            Command::new("/usr/bin/nsenter")
                .args(["-t", &relay_pid, "-n", "--", "socat"])
                .arg("TCP-LISTEN:8443,bind=192.0.2.201,fork,reuseaddr")
                .arg(format!("UNIX-CONNECT:{}", socket.display())),
        );
        let in_host_forwarder = quiet(
            Command::new("/usr/bin/nsenter")
                .args(["-t", &host.pid.to_string(), "-n", "--", "socat"])
                .arg("TCP-LISTEN:8443,bind=127.0.0.1,fork,reuseaddr")
                .arg("TCP:192.0.2.201:8443"),
        );
        host.link = Some(Link {
            relay,
            outside,
            forwarders: vec![to_control, in_relay_forwarder, in_host_forwarder],
            _socket_dir: socket_dir,
        });
        host.wait(
            "the link to carry the control plane",
            Duration::from_secs(10),
            || host.can_reach_control_plane().then_some(()),
        );
        (host, "https://127.0.0.1:8443".to_owned())
    }

    /// Whether `GET /v1/health` through the test host's link answers within 2 s.
    pub fn can_reach_control_plane(&self) -> bool {
        let probe = self.exec(&[
            "timeout",
            "3",
            "bash",
            "-c",
            "curl -sk --max-time 2 https://127.0.0.1:8443/v1/health",
        ]);
        probe.stdout.contains("\"ok\"")
    }

    fn relay_ip_link(&self, state: &str) {
        let link = self.link.as_ref().expect("a linked test host");
        let ran = run(
            Command::new("/usr/bin/nsenter").args([
                "-t",
                &link.relay.id().to_string(),
                "-n",
                "--",
                "ip",
                "link",
                "set",
                &link.outside,
                state,
            ]),
            None,
        );
        assert_eq!(ran.code, 0, "ip link set {state}: {}", ran.stderr);
    }

    /// Cuts the test host's link (`ip link set … down` on the relay's side).
    pub fn cut_link(&self) {
        self.relay_ip_link("down");
    }

    /// Restores the link.
    pub fn restore_link(&self) {
        self.relay_ip_link("up");
    }

    fn start_inner(name: &str, own_network: bool) -> TestHost {
        let machine_id = format!("{:032x}", u128::from_le_bytes(rand_bytes()));
        let stderr_file = tempfile::NamedTempFile::new().expect("stderr file");
        let mut init = Command::new("/usr/bin/unshare")
            .args([
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
            ])
            .args(if own_network { &["--net"][..] } else { &[][..] })
            .arg("--")
            .args(["/bin/sh", "-c", SETUP, "setup", name, &machine_id])
            .arg(binary("latch-agent"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file.reopen().expect("stderr file"))
            .spawn()
            .expect("unshare");
        let stdout = init.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("test host setup output");
        if line.trim() != "ready" {
            let stderr = std::fs::read_to_string(stderr_file.path()).unwrap_or_default();
            panic!("test host {name} failed to start: {stderr}");
        }
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", init.id()))
            .expect("children");
        let pid = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("test host init pid");
        let mut host = TestHost {
            name: name.to_owned(),
            machine_id,
            init,
            pid,
            pwck_baseline: String::new(),
            link: None,
            own_network,
        };
        if own_network {
            host.exec(&["ip", "link", "set", "lo", "up"])
                .ok("loopback up");
        }
        host.pwck_baseline = host.account_checks();
        host
    }

    fn nsenter(&self) -> Command {
        let mut command = Command::new("/usr/bin/nsenter");
        command.args(["-t", &self.pid.to_string(), "-m", "-u", "-p"]);
        if self.own_network {
            command.arg("-n");
        }
        command.arg("--");
        command
    }

    /// Runs a command inside the test host.
    pub fn exec(&self, args: &[&str]) -> Ran {
        run(self.nsenter().args(args), None)
    }

    /// Runs a command inside the test host with `stdin`.
    pub fn exec_stdin(&self, args: &[&str], stdin: &[u8]) -> Ran {
        run(self.nsenter().args(args), Some(stdin))
    }

    /// Reads a file inside the test host ("" if missing).
    pub fn read(&self, path: &str) -> String {
        self.exec(&["cat", path]).stdout
    }

    /// Writes a file inside the test host.
    pub fn write(&self, path: &str, content: &str) {
        self.exec_stdin(
            &[
                "/bin/sh",
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
                "sh",
                path,
            ],
            content.as_bytes(),
        )
        .ok(&format!("write {path}"));
    }

    /// The `/etc/passwd` line of `user`, if any.
    pub fn passwd_line(&self, user: &str) -> Option<String> {
        self.read("/etc/passwd")
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .map(str::to_owned)
    }

    /// The `/etc/shadow` line of `user`, if any.
    pub fn shadow_line(&self, user: &str) -> Option<String> {
        self.read("/etc/shadow")
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .map(str::to_owned)
    }

    /// Supplementary members of `group`.
    pub fn group_members(&self, group: &str) -> Vec<String> {
        self.read("/etc/group")
            .lines()
            .find(|l| l.split(':').next() == Some(group))
            .map(|l| {
                l.rsplit(':')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `pwck -r` and `grpck -r` output (their exit codes are not used: a stock Debian `/etc`
    /// already has complaints about system users' homes).
    pub fn account_checks(&self) -> String {
        let pwck = self.exec(&["pwck", "-r"]);
        let grpck = self.exec(&["grpck", "-r"]);
        format!(
            "{}{}{}{}",
            pwck.stdout, pwck.stderr, grpck.stdout, grpck.stderr
        )
    }

    /// Asserts `pwck -r` and `grpck -r` report nothing new since the host started.
    pub fn assert_account_files_clean(&self) {
        let now = self.account_checks();
        assert_eq!(
            now, self.pwck_baseline,
            "pwck/grpck on {} report new problems",
            self.name
        );
    }

    /// Enrolls with `control` using a token given on stdin; returns the host id.
    pub fn enroll(&self, control: &ControlPlane, token: &str) -> Ran {
        run(
            self.nsenter().args([
                AGENT,
                "enroll",
                "--server",
                &control.url,
                "--ca-fingerprint",
                &control.fingerprint,
                "--token-file",
                "-",
            ]),
            Some(token.as_bytes()),
        )
    }

    /// Enrolls with the control plane at `url` (as the test host sees it).
    pub fn enroll_via(&self, url: &str, fingerprint: &str, token: &str) -> Ran {
        run(
            self.nsenter().args([
                AGENT,
                "enroll",
                "--server",
                url,
                "--ca-fingerprint",
                fingerprint,
                "--token-file",
                "-",
            ]),
            Some(token.as_bytes()),
        )
    }

    /// Creates a token, enrolls, asserts success, and returns the host id.
    pub fn enroll_ok(&self, control: &ControlPlane) -> String {
        let out = self
            .enroll(control, &control.enroll_token("10m", 1))
            .ok("enroll");
        out.split_whitespace()
            .nth(3)
            .expect("host id in enroll output")
            .to_owned()
    }

    /// Starts `latch-agent run` inside the host, logging to its `/var/log/latch-agent.log`.
    pub fn start_agent(&self) -> Agent {
        self.start_agent_paused_at("")
    }

    /// Starts the agent with the crash-test hook set to stop dead at `stage` (`received`,
    /// `applying`, `applied`); an empty stage starts it normally.
    pub fn start_agent_paused_at(&self, stage: &str) -> Agent {
        self.start_agent_with(&format!("LATCH_AGENT_TEST_PAUSE_AT='{stage}'"))
    }

    /// Starts the agent behind `prefix` (environment assignments and/or a wrapper command such
    /// as `setpriv …`), shell syntax.
    pub fn start_agent_with(&self, prefix: &str) -> Agent {
        let script = format!(
            "echo $$; exec env {prefix} /mnt/bin/latch-agent run --state-dir /var/lib/latch >>/var/log/latch-agent.log 2>&1"
        );
        let mut child = self
            .nsenter()
            .args(["/bin/sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("agent pid");
        Agent {
            child,
            ns_pid: line.trim().parse().expect("agent pid"),
            host_pid: self.pid,
        }
    }

    /// Starts this test host's sshd on 127.0.0.1 (the test hosts share
    /// the machine's network namespace), with a sudoers drop-in granting the `sudo` group
    /// passwordless sudo. Returns the port.
    pub fn start_sshd(&self) -> u16 {
        let port = free_port();
        self.write(
            "/etc/sudoers.d/latch-e2e",
            "%sudo ALL=(ALL:ALL) NOPASSWD: ALL\n",
        );
        self.exec(&["chmod", "0440", "/etc/sudoers.d/latch-e2e"])
            .ok("chmod sudoers");
        self.exec(&["visudo", "-cf", "/etc/sudoers.d/latch-e2e"])
            .ok("visudo");
        self.exec(&["ssh-keygen", "-A"]).ok("host keys");
        self.exec(&[
            "/usr/sbin/sshd",
            "-p",
            &port.to_string(),
            "-o",
            "ListenAddress=127.0.0.1",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "PidFile=/run/sshd-e2e.pid",
            "-E",
            "/var/log/sshd.log",
        ])
        .ok("sshd");
        wait_for("sshd to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(drop)
        });
        port
    }

    /// Like [`wait_for`], but a timeout panics with the host's agent log attached.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            if started.elapsed() >= timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; agent log of {}:\n{}",
                    self.name,
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's log inside the host.
    pub fn agent_log(&self) -> String {
        self.read("/var/log/latch-agent.log")
    }

    /// Runs `script` with `/bin/sh` as `user` (its UID and GID, no supplementary groups, no
    /// login: the audit login UID stays the caller's), as the account's own user would.
    pub fn run_as(&self, user: &str, script: &str) -> Ran {
        self.exec(&[
            "setpriv",
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
    }

    /// Writes the agent's configuration file (`/etc/latch/agent.toml`, read at agent start).
    pub fn write_agent_config(&self, toml: &str) {
        self.write("/etc/latch/agent.toml", toml);
    }

    /// The UID of `user` in the test host's `/etc/passwd`.
    pub fn uid_of(&self, user: &str) -> Option<u32> {
        self.passwd_line(user)
            .and_then(|line| line.split(':').nth(2).and_then(|uid| uid.parse().ok()))
    }

    /// PIDs (in the test host) of live processes whose command line contains `pattern`, with
    /// their real UID and audit login UID: `(pid, uid, loginuid)`.
    pub fn processes_matching(&self, pattern: &str) -> Vec<(u32, u32, u32)> {
        let out = self.exec(&["pgrep", "-f", pattern]).stdout;
        out.split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .filter_map(|pid| {
                let status = self.read(&format!("/proc/{pid}/status"));
                if status.lines().any(|l| l.starts_with("State:\tZ")) || status.is_empty() {
                    return None;
                }
                let uid = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                let loginuid = self
                    .read(&format!("/proc/{pid}/loginuid"))
                    .trim()
                    .parse()
                    .unwrap_or(u32::MAX);
                Some((pid, uid, loginuid))
            })
            .collect()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(link) = &mut self.link {
            for forwarder in &mut link.forwarders {
                let _ = forwarder.kill();
                let _ = forwarder.wait();
            }
            // Ending the relay namespace destroys its end of the veth pair, and so the pair.
            let _ = link.relay.kill();
            let _ = link.relay.wait();
        }
        // Killing the PID namespace's first process ends every process in the test host and
        // drops its mounts.
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
        let _ = self.init.kill();
        let _ = self.init.wait();
    }
}

/// A running agent inside a test host.
pub struct Agent {
    child: Child,
    /// Its PID inside the test host.
    pub ns_pid: u32,
    host_pid: u32,
}

impl Agent {
    /// Sends `signal` to the agent and waits for it to exit.
    pub fn stop_with(mut self, signal: &str) {
        Command::new("/usr/bin/nsenter")
            .args([
                "-t",
                &self.host_pid.to_string(),
                "-m",
                "-p",
                "--",
                "kill",
                signal,
                &self.ns_pid.to_string(),
            ])
            .status()
            .expect("kill agent");
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the agent to exit on its own; its exit status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `kill -9`.
    pub fn kill9(self) {
        self.stop_with("-KILL");
    }

    /// A graceful stop (SIGTERM).
    pub fn stop(self) {
        self.stop_with("-TERM");
    }
}

/// An API answer as `(status, JSON body)`; a body that is not JSON comes back as a string.
fn status_and_json(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An SSH client for `user@127.0.0.1:port` with a private key, never prompting.
pub struct Ssh {
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Private key file.
    pub key: PathBuf,
    /// Control socket of the master connection, once opened.
    control: Option<PathBuf>,
}

impl Ssh {
    /// A client for `user` on `port` using `key`.
    pub fn new(port: u16, user: &str, key: &Path) -> Ssh {
        Ssh {
            port,
            user: user.to_owned(),
            key: key.to_owned(),
            control: None,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(["-i"])
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "IdentitiesOnly=yes",
            ]);
        command
    }

    /// Runs `remote` in a new login.
    pub fn run(&self, remote: &str) -> Ran {
        run(
            self.command()
                .args(["-o", "ControlPath=none"])
                .arg(format!("{}@127.0.0.1", self.user))
                .arg(remote),
            None,
        )
    }

    /// Opens a long-lived master connection (a session that stays open).
    pub fn open_session(&mut self, dir: &Path) {
        let socket = dir.join(format!("mux-{}-{}", self.user, self.port));
        let ran = run(
            self.command()
                .args([
                    "-o",
                    "ControlMaster=yes",
                    "-o",
                    "ControlPersist=600",
                    "-N",
                    "-f",
                    "-o",
                ])
                .arg(format!("ControlPath={}", socket.display()))
                .arg(format!("{}@127.0.0.1", self.user)),
            None,
        );
        assert_eq!(ran.code, 0, "ssh master connection failed: {}", ran.stderr);
        self.control = Some(socket);
    }

    /// Runs `remote` inside the session opened by [`Ssh::open_session`] (its groups are the ones
    /// it got at login).
    pub fn in_session(&self, remote: &str) -> Ran {
        let socket = self.control.as_ref().expect("open_session first");
        run(
            self.command()
                .args(["-o", "ControlMaster=no", "-o"])
                .arg(format!("ControlPath={}", socket.display()))
                .arg(format!("{}@127.0.0.1", self.user))
                .arg(remote),
            None,
        )
    }

    /// Whether the session's master connection is still alive.
    pub fn session_alive(&self) -> bool {
        let socket = self.control.as_ref().expect("open_session first");
        run(
            Command::new("ssh")
                .args(["-o"])
                .arg(format!("ControlPath={}", socket.display()))
                .args(["-O", "check"])
                .arg(format!("{}@127.0.0.1", self.user)),
            None,
        )
        .code
            == 0
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        if let Some(socket) = &self.control {
            let _ = Command::new("ssh")
                .args(["-o"])
                .arg(format!("ControlPath={}", socket.display()))
                .args(["-O", "exit"])
                .arg(format!("{}@127.0.0.1", self.user))
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A fresh ed25519 key pair in `dir`: (private key path, public key line).
pub fn ssh_keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            &format!("{name}@latch-e2e"),
            "-f",
        ])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_owned())
}

fn rand_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes
}
