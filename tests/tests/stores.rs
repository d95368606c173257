//! Issue 9: moving a running installation from SQLite to PostgreSQL, with the real binaries.
//! (Every other suite runs on both stores: `LATCH_TEST_STORE=postgres`, see `scripts/test`.)

use latch_e2e::{ControlPlane, RealEtc, TestDatabase, TestHost, e2e_enabled};

/// The README's move, step by step: a control plane on SQLite with an enrolled, running agent
/// and a grant; stop it, `latch-control copy-to-postgres`, start it on PostgreSQL with the same
/// data directory and address. The agent goes on without being touched (same CA, signing key
/// and credential), the earlier grant is still listed, new jobs are applied, the audit chain
/// verifies across the move, and the SQLite database is refused from then on.
#[test]
fn a_control_plane_moves_from_sqlite_to_postgres_and_its_agents_go_on() {
    if !e2e_enabled("a_control_plane_moves_from_sqlite_to_postgres_and_its_agents_go_on") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start_on(TestDatabase::Sqlite, &[]);
    let host = TestHost::start("e2e-move1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    let before = cp.create_job(&[
        "--host",
        "e2e-move1",
        "--kind",
        "create-account",
        "--user",
        "hana",
        "--expires-in",
        "2h",
    ]);
    cp.expect_confirmed(&before);

    let cp = cp.move_to_postgres();
    assert!(cp.database.is_postgres());
    let after = cp.create_job(&[
        "--host",
        "e2e-move1",
        "--kind",
        "add-group",
        "--user",
        "hana",
        "--group",
        "sudo",
    ]);
    cp.expect_confirmed(&after);
    assert!(host.group_members("sudo").contains(&"hana".to_owned()));
    let grants = cp.json(&["grants", "--host", "e2e-move1"]);
    let listed: Vec<&str> = grants["list"]
        .as_array()
        .expect("grants")
        .iter()
        .filter_map(|g| g["job_id"].as_str())
        .collect();
    assert!(listed.contains(&before.as_str()), "{grants:#}");
    let verify = cp.latchctl(&["audit", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");

    // The stale SQLite copy is refused.
    let refused = std::process::Command::new(latch_e2e::binary("latch-control"))
        .env_remove("LATCH_DATABASE_URL")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(cp.data_dir.path().join("data"))
        .output()
        .expect("latch-control");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("was copied to PostgreSQL"), "{stderr}");
    real.assert_unchanged();
}

/// A database password on the command line, where every local user can read it, is refused
/// before anything is opened — and not repeated in the message.
#[test]
fn a_database_password_on_the_command_line_is_refused() {
    if !e2e_enabled("a_database_password_on_the_command_line_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(latch_e2e::binary("latch-control"))
        .env_remove("LATCH_DATABASE_URL")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--database-url",
            "postgres://latch:s3cret@127.0.0.1:5432/latch",
        ])
        .output()
        .expect("latch-control");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PGPASSWORD") && stderr.contains("LATCH_DATABASE_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "something was created");
}
