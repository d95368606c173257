#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Smoke runs of the fleet simulator against the real `latch-control` binary (built next to
//! this test: `cargo build --workspace --bins`, as scripts/test does). They check that a small
//! run completes with every job confirmed and no error — not how fast (benchmarks are not
//! timed tests; BENCHMARKS.md has the numbers).

use std::path::PathBuf;
use std::process::Command;

use latch_fleet_sim::server::{ServerOptions, ServerProcess};
use serde_json::Value;

/// `latch-control`, next to this test's `deps/` directory.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("latch-control"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "latch-control is missing next to {}: build the binaries first (`cargo build --workspace --bins`, done by scripts/test)",
                exe.display()
            )
        })
}

fn simulate(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_latch-fleet-sim"))
        .args(["--agents", "20", "--jobs", "200", "--rate", "200"])
        .args([
            "--drain-timeout",
            "60s",
            "--output",
            "json",
            "--no-progress",
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "latch-fleet-sim exited with {:?}: {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn assert_clean(report: &Value) {
    assert_eq!(report["error_total"], 0, "{report:#}");
    assert_eq!(report["enrolled"], 20, "{report:#}");
    assert_eq!(report["polling_at_load_start"], 20, "{report:#}");
    assert_eq!(report["jobs"]["queued"], 200, "{report:#}");
    assert_eq!(report["jobs"]["confirmed"], 200, "{report:#}");
    assert_eq!(report["latency_ms"]["count"], 200, "{report:#}");
    assert!(report["server"]["peak_rss_mib"].as_f64().unwrap() > 0.0);
    assert!(report["server"]["peak_open_fds"].as_u64().unwrap() >= 20);
}

#[test]
fn a_small_fleet_run_confirms_every_job_without_errors() {
    let server = server_binary();
    let report = simulate(&["--server-binary", server.to_str().unwrap()]);
    assert_clean(&report);
    assert_eq!(report["store"], "sqlite");
    // Every second job deletes an account an earlier one created.
    assert!(report["latency_delete_ms"]["count"].as_u64().unwrap() > 0);
}

#[test]
fn a_run_against_a_running_control_plane_confirms_every_job_without_errors() {
    let work = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(ServerProcess::start(&ServerOptions {
            binary: server_binary(),
            work_dir: work.path().to_path_buf(),
            database_url: None,
            log_level: "warn".into(),
            extra_args: Vec::new(),
        }))
        .unwrap();
    let token_file = work.path().join("data/admin.token");
    let pid = server.pid.to_string();
    let report = simulate(&[
        "--server",
        &server.url,
        "--ca-file",
        server.ca_file.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--server-pid",
        &pid,
    ]);
    runtime.block_on(server.stop());
    assert_clean(&report);
    assert_eq!(report["store"], "external");
}
