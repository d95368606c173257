//! Test hosts: Linux namespaces with private copies of the host's directories, running the real
//! agent; optionally linked to the control plane over a veth pair.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ControlPlane, Ran, binary, free_port, run, wait_for};

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
# PID 1 of the test host must reap orphans (a shell waiting on a foreground child reaps every
# child that exits), or processes that fork and exit would pile up as zombies.
exec /bin/sh -c 'while :; do sleep 3600; done'
"#;

/// Shell lines that stop a script (exit 1) unless `/usr` and `/var/lib` are the overlays
/// [`TestHost::private_packages`] mounts: whatever follows writes there, and without them it
/// would write to the machine's own (a test host shares them with the machine).
const REQUIRE_PRIVATE_PACKAGES: &str = r#"
for dir in /usr /var/lib; do
  if [ "$(findmnt -no FSTYPE "$dir")" != overlay ] || [ "$(findmnt -no SOURCE "$dir")" != latch-test-overlay ]; then
    echo "refused: $dir is not the test host's overlay (TestHost::private_packages first)" >&2
    exit 1
  fi
done
"#;

/// Run inside a test host by [`TestHost::private_packages`]. Only in a test host: `/mnt`, where
/// the overlays keep their changes, must be its tmpfs.
const PRIVATE_PACKAGES: &str = r#"
set -eu
if [ "$(findmnt -no SOURCE /mnt)" != latch-test-host ]; then
  echo "refused: /mnt is not a test host's tmpfs" >&2
  exit 1
fi
for dir in /usr /var/lib; do
  if [ "$(findmnt -no SOURCE "$dir")" = latch-test-overlay ]; then
    continue
  fi
  name=$(echo "$dir" | tr / _)
  mkdir -p "/mnt/overlay/$name/upper" "/mnt/overlay/$name/work"
  mount -t overlay latch-test-overlay \
    -o "lowerdir=$dir,upperdir=/mnt/overlay/$name/upper,workdir=/mnt/overlay/$name/work" "$dir"
done
"#;

/// Run inside a test host by [`TestHost::pretend_systemd`], after [`REQUIRE_PRIVATE_PACKAGES`]:
/// a `systemctl` in the overlay that records its calls and runs the services it is asked to
/// (below).
const PRETEND_SYSTEMD: &str = r#"
set -eu
mkdir -p /run/systemd/system
: > /run/systemctl.calls
[ -e /usr/bin/systemctl.real ] || mv /usr/bin/systemctl /usr/bin/systemctl.real
cat > /usr/bin/systemctl <<'EOF'
#!/bin/sh
# Records the call; hands what works without a running systemd to the real one on the test
# host's files; runs a unit's ExecStart= (a simple service: one process, its PID in
# /run/UNIT.pid, output to /var/log/NAME.log) for start, restart, try-restart, stop and
# enable --now.
echo "$*" >> /run/systemctl.calls
for unit; do :; done
case "$unit" in *.*) ;; *) unit=$unit.service ;; esac
pidfile="/run/$unit.pid"
active() {
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
stop() {
  active || return 0
  kill -TERM "$pid"
  for _ in $(seq 100); do active || return 0; sleep 0.1; done
  kill -KILL "$pid"
  while active; do sleep 0.1; done
}
start() {
  active && return 0
  command=$(sed -n 's/^ExecStart=//p' "/lib/systemd/system/$unit")
  [ -n "$command" ] || { echo "systemctl stand-in: $unit has no ExecStart=" >&2; exit 5; }
  sh -c "exec $command" </dev/null >>"/var/log/${unit%.service}.log" 2>&1 &
  echo $! > "$pidfile"
}
case " $* " in
  *" --root="*) exec /usr/bin/systemctl.real "$@" ;;
  *" is-enabled "*) exec /usr/bin/systemctl.real --root=/ is-enabled "$unit" ;;
  *" is-active "*) active && exit 0; exit 3 ;;
  *" enable "*)
    /usr/bin/systemctl.real --root=/ enable "$unit" || exit
    case " $* " in *" --now "*) start ;; esac ;;
  *" disable "*) exec /usr/bin/systemctl.real --root=/ disable "$unit" ;;
  *" try-restart "*) if active; then stop; start; fi ;;
  *" restart "*) stop; start ;;
  *" start "*) start ;;
  *" stop "*) stop ;;
esac
exit 0
EOF
chmod 0755 /usr/bin/systemctl
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

    /// Makes `dpkg -i` inside the test host change the test host only: overlays on `/usr` and
    /// `/var/lib` (dpkg's database, systemd's and deb-systemd-helper's state, `/var/lib/latch`
    /// now in the overlay as well) whose changes stay on the host's tmpfs. Call it right after
    /// the start, before anything is written to `/var/lib`.
    pub fn private_packages(&self) {
        self.exec(&["/bin/sh", "-c", PRIVATE_PACKAGES])
            .ok("overlays for dpkg");
    }

    /// After [`TestHost::private_packages`] (refused otherwise): lets the maintainer scripts see
    /// a systemd as PID 1. `/run/systemd/system` exists and `systemctl` (in the overlay) records
    /// each call for [`TestHost::systemctl_calls`]; what works without a running systemd it
    /// hands to the real one on the test host's files (`--root=/`: presets; `is-enabled`,
    /// `enable`, `disable`); it runs a unit's `ExecStart=` as one process for `start`, `restart`,
    /// `try-restart` and `enable --now`, stops it for `stop` (SIGTERM, then SIGKILL after
    /// 10 s), answers `is-active` from it, and does nothing else (daemon-reload, …). The agent
    /// it starts logs to `/var/log/latch-agent.log`, where [`TestHost::agent_log`] reads.
    pub fn pretend_systemd(&self) {
        self.exec(&[
            "/bin/sh",
            "-c",
            &format!("{REQUIRE_PRIVATE_PACKAGES}{PRETEND_SYSTEMD}"),
        ])
        .ok("a systemctl that records");
    }

    /// The `systemctl` calls recorded since the previous call (or [`TestHost::pretend_systemd`]),
    /// one a line.
    pub fn systemctl_calls(&self) -> String {
        self.exec(&[
            "/bin/sh",
            "-c",
            "cat /run/systemctl.calls && : > /run/systemctl.calls",
        ])
        .ok("the recorded systemctl calls")
    }

    /// Runs `args` inside the test host only when its `/usr` and `/var/lib` are the overlays of
    /// [`TestHost::private_packages`] (exit status 1 and nothing run otherwise): for what
    /// writes there, such as dpkg.
    pub fn exec_on_private_packages(&self, args: &[&str]) -> Ran {
        let script = format!("{REQUIRE_PRIVATE_PACKAGES}exec \"$@\"");
        let mut argv = vec!["/bin/sh", "-c", &script, "sh"];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// Copies the machine's file `from` to `to` inside the test host (whose `/tmp` is its own).
    pub fn copy_in(&self, from: &std::path::Path, to: &str) {
        let bytes = std::fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        self.exec_stdin(&["/bin/sh", "-c", "cat > \"$1\"", "sh", to], &bytes)
            .ok(&format!("copy {} into the test host", from.display()));
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

    /// Whether PAM (`pamtester login USER authenticate`, the host's real stack) accepts
    /// `password` for `user`.
    pub fn pam_accepts(&self, user: &str, password: &str) -> bool {
        self.exec_stdin(
            &["pamtester", "login", user, "authenticate"],
            format!("{password}\n").as_bytes(),
        )
        .code
            == 0
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
        self.enroll_via(&control.url, &control.fingerprint, token)
    }

    /// Enrolls with the control plane at `url` (as the test host sees it).
    pub fn enroll_via(&self, url: &str, fingerprint: &str, token: &str) -> Ran {
        self.enroll_with(AGENT, url, fingerprint, token)
    }

    /// Enrolls with `control` through the agent a package installed (`/usr/bin/latch-agent`).
    pub fn enroll_installed(&self, control: &ControlPlane, token: &str) -> Ran {
        self.enroll_with(
            "/usr/bin/latch-agent",
            &control.url,
            &control.fingerprint,
            token,
        )
    }

    fn enroll_with(&self, agent: &str, url: &str, fingerprint: &str, token: &str) -> Ran {
        run(
            self.nsenter().args([
                agent,
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
        self.spawn_agent(&format!(
            "env {prefix} {AGENT} run --state-dir /var/lib/latch"
        ))
    }

    /// Runs `command` (shell syntax) as the agent, logging to `/var/log/latch-agent.log`.
    fn spawn_agent(&self, command: &str) -> Agent {
        let script = format!("echo $$; exec {command} >>/var/log/latch-agent.log 2>&1");
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

fn rand_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes
}
