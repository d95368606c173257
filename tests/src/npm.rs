//! The Node.js packages the tests run, each a directory `tests/NAME` with a `package.json` and a
//! committed `package-lock.json`: `tests/oidc` (an OpenID Connect provider, for the SSO tests of
//! `control/tests/sso.rs`) and `tests/console` (the browser harness of `tests/src/browser.rs`).
//!
//! `control/tests/support/oidc.rs` includes this file by path (`#[path]`) rather than depending
//! on this crate, so it uses only the standard library.

use std::path::PathBuf;
use std::process::Command;

/// The directory of the package `tests/NAME` (from this crate or from `control/`, whose tests
/// include this file).
pub fn package_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests")
        .join(name)
}

/// Checks that `node` and `npm` run, and installs the package `tests/NAME` with `npm ci` when its
/// `node_modules` is missing or older than its `package-lock.json`; returns the package directory,
/// or why it cannot be used. Test processes run in parallel: the install runs under a file lock.
pub fn install(name: &str) -> Result<PathBuf, String> {
    for tool in ["node", "npm"] {
        let runs = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !runs {
            return Err(format!(
                "{tool} is not installed: tests/{name} needs Node.js 20+ and npm"
            ));
        }
    }
    let dir = package_dir(name);
    let lock = std::fs::File::create(std::env::temp_dir().join(format!("latch-npm-{name}.lock")))
        .map_err(|e| format!("cannot create the npm lock file: {e}"))?;
    lock.lock()
        .map_err(|e| format!("cannot lock the npm lock file: {e}"))?;
    let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    // npm writes node_modules/.package-lock.json at the end of a complete install.
    let installed = modified(dir.join("node_modules/.package-lock.json"));
    let wanted = modified(dir.join("package-lock.json"));
    if installed.is_some() && installed >= wanted {
        return Ok(dir);
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if status.success() {
        Ok(dir)
    } else {
        Err(format!("`npm ci` in {} failed: {status}", dir.display()))
    }
}

/// How long one start of a Node.js script may take to print its first line. It starts in about
/// a second; a loaded CI machine once left a start silent for 90 s, so a silent start is ended
/// and tried again rather than waited on.
const START_ATTEMPT: std::time::Duration = std::time::Duration::from_secs(30);

/// How many times [`start_script`] starts the script before it gives up.
const START_ATTEMPTS: u32 = 3;

/// A Node.js script that announced itself; killed when dropped.
pub struct NodeScript {
    child: std::process::Child,
    /// The first line it printed.
    pub first_line: String,
}

impl Drop for NodeScript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `node SCRIPT` in `dir` with `envs` (secrets go here, never on the command line) and
/// standard input held open (the scripts exit when it closes), and waits for its first line of
/// output. A start that prints nothing within 30 s is killed and tried again, up to three
/// times; the error then carries what the script wrote to its standard error. The rest of its
/// output is read and dropped, so the script never blocks on a full pipe.
pub fn start_script(
    dir: &std::path::Path,
    script: &str,
    envs: &[(&str, &str)],
) -> Result<NodeScript, String> {
    start_script_within(dir, script, envs, START_ATTEMPT)
}

/// [`start_script`] with the time one attempt may take (its tests shorten it).
pub fn start_script_within(
    dir: &std::path::Path,
    script: &str,
    envs: &[(&str, &str)],
    attempt_time: std::time::Duration,
) -> Result<NodeScript, String> {
    let mut failures = Vec::new();
    for attempt in 1..=START_ATTEMPTS {
        match start_once(dir, script, envs, attempt_time) {
            Ok(started) => return Ok(started),
            Err(why) => {
                eprintln!("node {script}, attempt {attempt} of {START_ATTEMPTS}: {why}");
                failures.push(why);
            }
        }
    }
    Err(format!(
        "node {script} did not start in {START_ATTEMPTS} attempts: {}",
        failures.join("; ")
    ))
}

fn start_once(
    dir: &std::path::Path,
    script: &str,
    envs: &[(&str, &str)],
    attempt_time: std::time::Duration,
) -> Result<NodeScript, String> {
    use std::io::{BufRead as _, Read as _};
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut child = Command::new("node")
        .arg(script)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run node {script}: {e}"))?;
    let (stdout, mut stderr) = match (child.stdout.take(), child.stderr.take()) {
        (Some(stdout), Some(stderr)) => (stdout, stderr),
        _ => return Err("node's output was not captured".to_owned()),
    };
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = first_tx.send(lines.next());
        for _ in lines {}
    });
    let (err_tx, err_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = err_tx.send(text);
    });
    let first = first_rx.recv_timeout(attempt_time);
    let ended = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = err_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_default();
        format!("standard error: {:?}", stderr.trim())
    };
    match first {
        Ok(Some(Ok(first_line))) => Ok(NodeScript { child, first_line }),
        Ok(_) => Err(format!(
            "it exited before printing a line ({})",
            ended(&mut child)
        )),
        Err(_) => Err(format!(
            "it printed nothing in {:.0?} ({})",
            started.elapsed(),
            ended(&mut child)
        )),
    }
}
