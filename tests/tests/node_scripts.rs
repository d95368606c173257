//! How the tests start their Node.js helpers (`latch_e2e::npm::start_script`): a helper that
//! stays silent is ended and started again, and the failure carries what it wrote to its
//! standard error. Needs node, not root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use latch_e2e::npm;

/// Writes `script.mjs` into a new directory; returns the directory.
fn script_dir(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("script.mjs"), body).unwrap();
    dir
}

fn node_runs() -> bool {
    let runs = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let required = std::env::var("LATCH_E2E").is_ok_and(|v| v == "required");
    assert!(
        runs || !required,
        "node is not installed (LATCH_E2E=required)"
    );
    if !runs {
        eprintln!("SKIPPED: node is not installed");
    }
    runs
}

#[test]
fn a_script_is_started_with_its_environment_and_its_first_line_returned() {
    if !node_runs() {
        return;
    }
    let dir = script_dir(
        "console.log(`ready ${process.env.GREETING}`);\n\
         process.stdin.on('end', () => process.exit(0));\nprocess.stdin.resume();\n",
    );
    let started = npm::start_script(dir.path(), "script.mjs", &[("GREETING", "hello")]).unwrap();
    assert_eq!(started.first_line, "ready hello");
}

#[test]
fn a_silent_script_is_tried_three_times_and_its_standard_error_is_reported() {
    if !node_runs() {
        return;
    }
    let dir = script_dir(
        "const n = (await import('node:fs')).readdirSync('.').filter((f) => f.startsWith('run')).length;\n\
         (await import('node:fs')).writeFileSync(`run${n}`, '');\n\
         console.error(`stuck on attempt ${n + 1}`);\nsetInterval(() => {}, 1000);\n",
    );
    let started = Instant::now();
    let Err(why) = npm::start_script_within(dir.path(), "script.mjs", &[], Duration::from_secs(2))
    else {
        panic!("a script that prints nothing must not count as started");
    };
    assert!(why.contains("did not start in 3 attempts"), "{why}");
    for attempt in 1..=3 {
        assert!(
            why.contains(&format!("stuck on attempt {attempt}")),
            "{why}"
        );
    }
    assert!(why.contains("printed nothing"), "{why}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "each attempt is ended after 2 s"
    );
}

#[test]
fn a_script_that_exits_before_its_line_fails_with_its_reason() {
    if !node_runs() {
        return;
    }
    let dir = script_dir("console.error('OIDC_CLIENT_SECRET is not set');\nprocess.exit(2);\n");
    let Err(why) = npm::start_script(dir.path(), "script.mjs", &[]) else {
        panic!("a script that exits must not count as started");
    };
    assert!(why.contains("exited before printing a line"), "{why}");
    assert!(why.contains("OIDC_CLIENT_SECRET is not set"), "{why}");
}
