//! Browser scenarios: `node tests/console/run.mjs SCENARIO` drives Debian's Chromium through
//! playwright-core (see the top of `run.mjs` for the line protocol and the helper object `t` a
//! scenario gets). This side starts it, answers the scenario's `t.ask(kind, data)` requests with
//! a closure of the test (create a job through the API, run pamtester on a test host, give a TOTP
//! code…), echoes its output to the test output, and kills it after [`SCENARIO_TIMEOUT`].
//!
//! Screenshots and axe-core reports land in `target/console-screenshots/<scenario>/`.
//!
//! Without node, npm or Chromium (`LATCH_CHROMIUM`, default `/usr/bin/chromium`) the browser
//! tests skip ([`browser_enabled`]), unless `LATCH_E2E=required` makes that a failure.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{ControlPlane, npm, skip_or_fail};

/// How long a scenario may run before it is killed and fails (the answering closure's time
/// counts, but a closure that never returns is not interrupted).
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// The Chromium the scenarios run: `LATCH_CHROMIUM`, or Debian's `/usr/bin/chromium`.
fn chromium() -> PathBuf {
    std::env::var_os("LATCH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Checks that node, npm and Chromium are here, and installs `tests/console` with `npm ci` when
/// its `node_modules` is missing or stale; otherwise says what is missing.
pub fn browser_available() -> Result<(), String> {
    let chromium = chromium();
    if !chromium.is_file() {
        return Err(format!(
            "{} is missing (apt-get install chromium, or set LATCH_CHROMIUM)",
            chromium.display()
        ));
    }
    npm::install("console").map(|_| ())
}

/// Returns `true` when browser scenarios can run here; otherwise skips `test` (or fails, when
/// `LATCH_E2E=required`).
pub fn browser_enabled(test: &str) -> bool {
    match browser_available() {
        Ok(()) => true,
        Err(why) => skip_or_fail(test, &format!("no browser: {why}")),
    }
}

/// The scenario file `tests/console/scenarios/NAME.mjs`.
pub fn scenario(name: &str) -> PathBuf {
    npm::package_dir("console")
        .join("scenarios")
        .join(format!("{name}.mjs"))
}

/// The environment a scenario needs to open `cp`'s pages: `LATCH_URL` and `LATCH_CA_FILE` (the
/// harness trusts exactly the server certificate that this CA verifies).
pub fn control_plane_env(cp: &ControlPlane) -> Vec<(&'static str, String)> {
    vec![
        ("LATCH_URL", cp.url.clone()),
        ("LATCH_CA_FILE", cp.ca_file().display().to_string()),
    ]
}

/// A scenario that ran to `DONE`.
#[derive(Debug)]
pub struct ScenarioRun {
    /// Every line it printed (`STEP`, `CONSOLE`, `AXE`, `SCREENSHOT`, `ASK`, …), standard error
    /// lines prefixed with `stderr: `, and the answers given as `ANSWER …`.
    pub log: Vec<String>,
    /// Where its screenshots and axe reports are: `target/console-screenshots/<scenario>/`.
    pub out_dir: PathBuf,
}

impl ScenarioRun {
    /// The names of the steps that passed (`STEP ok NAME`), in order.
    pub fn steps(&self) -> Vec<&str> {
        self.log
            .iter()
            .filter_map(|line| line.strip_prefix("STEP ok "))
            .collect()
    }
}

/// Runs the scenario `script` with `env` added to the environment, answering each of its asks
/// with `answer(kind, data)`; panics with the scenario's log unless it ends with `DONE`.
pub fn run_scenario(
    script: &Path,
    env: &[(&str, String)],
    answer: impl FnMut(&str, &Value) -> Result<Value, String>,
) -> ScenarioRun {
    try_run_scenario(script, env, answer).unwrap_or_else(|failure| panic!("{failure}"))
}

/// [`run_scenario`] that returns the failure (what happened, then the scenario's log) instead of
/// panicking.
pub fn try_run_scenario(
    script: &Path,
    env: &[(&str, String)],
    mut answer: impl FnMut(&str, &Value) -> Result<Value, String>,
) -> Result<ScenarioRun, String> {
    let name = script
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".to_owned());
    let script =
        std::fs::canonicalize(script).map_err(|e| format!("scenario {}: {e}", script.display()))?;
    let out_dir = screenshots_dir().join(&name);
    // Files of an earlier run would pass for this one's.
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    let mut command = Command::new("node");
    command
        .arg(npm::package_dir("console").join("run.mjs"))
        .arg(&script)
        .env("LATCH_CONSOLE_OUT", &out_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut node = Harness(
        command
            .spawn()
            .map_err(|e| format!("cannot run node: {e}"))?,
    );
    let mut stdin = node.0.stdin.take().ok_or("node has no standard input")?;
    let lines = read_lines(&mut node.0);

    let mut log = Vec::new();
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    loop {
        let line = match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(failure(
                    &name,
                    &format!("timed out after {SCENARIO_TIMEOUT:?} (killed)"),
                    &log,
                ));
            }
        };
        eprintln!("[{name}] {line}");
        let ask = line.strip_prefix("ASK ").map(str::to_owned);
        log.push(line);
        if let Some(ask) = ask {
            let reply = reply(&ask, &mut answer);
            eprintln!("[{name}] ANSWER {reply}");
            log.push(format!("ANSWER {reply}"));
            send(&mut stdin, &reply, &mut log);
        }
    }
    drop(stdin);
    let status = node
        .0
        .wait()
        .map_err(|e| format!("waiting for node: {e}"))?;
    if status.success() && log.iter().any(|line| line == "DONE") {
        Ok(ScenarioRun { log, out_dir })
    } else {
        Err(failure(&name, &format!("failed ({status})"), &log))
    }
}

/// The answer line to the ask `{"kind", "data"}`: `{"answer": …}` or `{"error": "…"}`.
fn reply(ask: &str, answer: &mut impl FnMut(&str, &Value) -> Result<Value, String>) -> Value {
    let ask: Value = match serde_json::from_str(ask) {
        Ok(ask) => ask,
        Err(e) => return json!({ "error": format!("the ask is not JSON: {e}") }),
    };
    let Some(kind) = ask["kind"].as_str() else {
        return json!({ "error": "the ask has no kind" });
    };
    match answer(kind, &ask["data"]) {
        Ok(value) => json!({ "answer": value }),
        Err(error) => json!({ "error": error }),
    }
}

/// Writes the answer line; a scenario that already ended is noted in the log.
fn send(stdin: &mut ChildStdin, reply: &Value, log: &mut Vec<String>) {
    if let Err(e) = writeln!(stdin, "{reply}").and_then(|()| stdin.flush()) {
        log.push(format!("cannot answer the scenario: {e}"));
    }
}

/// The failure message: what happened, then every line of the scenario.
fn failure(name: &str, what: &str, log: &[String]) -> String {
    format!(
        "browser scenario {name} {what}; screenshots and axe reports in {}\n{}",
        screenshots_dir().join(name).display(),
        log.join("\n")
    )
}

/// `target/console-screenshots`, in the target directory of the running test executable
/// (`target/<profile>/deps/<test>`).
fn screenshots_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .unwrap_or(Path::new("target"))
        .join("console-screenshots")
}

/// The lines of the child's standard output and standard error (prefixed `stderr: `), as they
/// come; the channel closes when both have ended.
fn read_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        forward(stdout, "", sender.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        forward(stderr, "stderr: ", sender);
    }
    receiver
}

/// Sends each line of `pipe`, prefixed, to `to` from a thread of its own.
fn forward(pipe: impl Read + Send + 'static, prefix: &'static str, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if to.send(format!("{prefix}{line}")).is_err() {
                break;
            }
        }
    });
}

/// The `node run.mjs` process, killed when dropped: at the end, on a timeout, or when the
/// answering closure panics. Chromium (which Playwright starts in a process group of its own)
/// exits when its DevTools pipe to node closes.
struct Harness(Child);

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
