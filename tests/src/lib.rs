//! The end-to-end harness: a real control plane on loopback, and test hosts built from Linux
//! namespaces (mount, UTS, PID) with private tmpfs copies of `/etc`, `/home`, `/run`,
//! `/var/log`, `/var/lib/latch`, `/var/mail` and `/tmp`, running the real `latch-agent`.
//!
//! The machine's own `/etc` is never changed: [`RealEtc`] fingerprints its account files when a
//! test starts and every test asserts they are byte-identical when it ends.
//!
//! These tests need root. Without it they skip, unless `LATCH_E2E=required`, which turns a skip
//! into a failure (CI sets it). The browser tests of the web console need Node.js, npm and
//! Chromium instead, and skip (or fail) the same way without them.
//!
//! Layout: this file (skip rule, [`RealEtc`], [`binary`], [`wait_for`], running commands) ·
//! [`control`] ([`ControlPlane`]: a real `latch-control serve` and `latchctl`) · [`database`]
//! ([`TestDatabase`]: SQLite or, with `LATCH_TEST_STORE=postgres`, a PostgreSQL schema) · [`host`]
//! ([`TestHost`], linked hosts, [`Agent`]) · [`ssh`] ([`Ssh`] sessions, key pairs) · [`browser`]
//! (scenarios in Chromium, `tests/console`) · [`npm`] (the Node.js packages under `tests/`) · [`oidc`] (the test OpenID Connect provider).

pub mod browser;
mod control;
mod database;
mod host;
pub mod npm;
pub mod oidc;
mod ssh;

pub use control::ControlPlane;
pub use database::TestDatabase;
pub use host::{AGENT, Agent, TestHost};
pub use ssh::{Ssh, ssh_keypair};

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The account files of the real machine that no test may change.
const GUARDED_FILES: &[&str] = &["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"];

/// Returns `true` when end-to-end tests can run here; otherwise skips (or fails, when
/// `LATCH_E2E=required`).
pub fn e2e_enabled(test: &str) -> bool {
    let why_not = if !nix_is_root() {
        Some("not running as root (run the tests as root)")
    } else if !Path::new("/usr/bin/unshare").exists() || !Path::new("/usr/bin/nsenter").exists() {
        Some("unshare/nsenter (util-linux) are missing")
    } else {
        None
    };
    match why_not {
        None => true,
        Some(reason) => skip_or_fail(test, reason),
    }
}

/// Skips `test` because of `reason` (a `SKIPPED` line on standard error; returns `false`), or
/// panics when `LATCH_E2E=required` makes a skip a failure.
pub(crate) fn skip_or_fail(test: &str, reason: &str) -> bool {
    let required = std::env::var("LATCH_E2E").is_ok_and(|v| v == "required");
    assert!(
        !required,
        "{test}: end-to-end test cannot run: {reason} (LATCH_E2E=required)"
    );
    eprintln!("SKIPPED {test}: {reason}; LATCH_E2E=required makes this a failure");
    false
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

/// Paths of the built binaries: next to the running executable (the demo, in
/// `target/<profile>/`) or next to its `deps/` directory (test executables).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing next to {}: build the binaries first (`cargo build --workspace --bins`, done by scripts/test)",
                exe.display()
            )
        })
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

    /// Panics unless the command succeeded; parses the JSON it printed
    /// (`latchctl --output json …`).
    pub fn json(self, what: &str) -> serde_json::Value {
        let out = self.ok(what);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: invalid JSON ({e}): {out}"))
    }

    /// The `{"code", "message"}` a failed `latchctl --output json …` printed; panics unless it
    /// failed with exit status 1.
    pub fn json_error(self, what: &str) -> (String, String) {
        assert_eq!(self.code, 1, "{what} should have failed: {self:?}");
        let body: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{what}: invalid JSON error ({e}): {self:?}"));
        (
            body["code"].as_str().unwrap_or_default().to_owned(),
            body["message"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

pub(crate) fn run(command: &mut Command, stdin: Option<&[u8]>) -> Ran {
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

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Replaces the section between `<!-- NAME -->` and `<!-- /NAME -->` in BENCHMARKS.md with the
/// date, the machine's core count, the command and `table` (benchmarks run with `LATCH_BENCH_WRITE=1`).
pub fn write_benchmark_section(name: &str, table: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).expect("BENCHMARKS.md");
    let (open, close) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
    let start = text.find(&open).expect("section start") + open.len();
    let end = text.find(&close).expect("section end");
    let measured = format!(
        "\nMeasured {} on this machine ({} cores), command: `sudo LATCH_E2E=required scripts/bench`\n\n{table}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    std::fs::write(
        &path,
        format!("{}{measured}{}", &text[..start], &text[end..]),
    )
    .expect("write BENCHMARKS.md");
}
