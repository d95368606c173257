//! Findings 8 and 9 with the real binaries: the keyed audit chain, its checkpoints and the
//! server's recorded head against an attacker who writes the database (`sqlite3` or `psql`);
//! and a server that refuses to start when a key it was initialised with is gone.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use latch_e2e::{ControlPlane, TestDatabase, binary, e2e_enabled, wait_for};
use serde_json::Value;

/// `n` audited actions.
fn activity(cp: &ControlPlane, n: usize) {
    for _ in 0..n {
        cp.enroll_token("10m", 1);
    }
}

/// A query's rows as JSON.
fn rows(cp: &ControlPlane, sql: &str) -> Vec<Value> {
    cp.sql_rows(sql)
}

fn max_id(cp: &ControlPlane) -> i64 {
    cp.sql("SELECT max(id) FROM audit_log")
        .trim()
        .parse()
        .expect("max id")
}

/// The entry hash as the source code defines it (no key needed): SHA-256 over the
/// length-prefixed fields. An attacker can compute it too.
fn plain_hash(row: &Value, detail: &str, prev: &str) -> String {
    let text = |name: &str| row[name].as_str().map(str::to_owned);
    let id = row["id"].as_i64().expect("id").to_string();
    let at = row["at"].as_i64().expect("at").to_string();
    let fields = [
        Some(id),
        Some(at),
        text("actor"),
        text("action"),
        Some(text("host_id").unwrap_or_else(|| "\u{0}".into())),
        Some(text("job_id").unwrap_or_else(|| "\u{0}".into())),
        Some(detail.to_owned()),
        Some(prev.to_owned()),
    ];
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for field in fields {
        let field = field.expect("field");
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn recorded_head(cp: &ControlPlane) -> Option<Value> {
    let text = std::fs::read(cp.data_dir.path().join("data/audit.head")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Waits until the server recorded the current head in `audit.head`; returns its entry id.
fn wait_for_recorded_head(cp: &ControlPlane) -> i64 {
    let last = max_id(cp);
    wait_for(
        "the server to record the audit head",
        Duration::from_secs(10),
        || {
            recorded_head(cp)
                .and_then(|head| head["id"].as_i64())
                .filter(|id| *id == last)
        },
    )
}

#[test]
fn finding_8_an_entry_rewritten_and_rehashed_without_the_key_fails_audit_verify() {
    if !e2e_enabled("finding_8_an_entry_rewritten_and_rehashed_without_the_key_fails_audit_verify")
    {
        return;
    }
    let cp = ControlPlane::start(&[]);
    activity(&cp, 5);
    let intact = cp.latchctl(&["audit", "verify"]);
    assert_eq!(intact.code, 0, "{intact:?}");
    assert!(intact.stdout.contains("intact"), "{}", intact.stdout);

    // Rewrite one entry's detail, then re-hash it and every later entry with plain SHA-256, so
    // that ids, links and hashes are all consistent again.
    let target = max_id(&cp) - 2;
    cp.drop_trigger("audit_log_no_update");
    let mut prev = rows(
        &cp,
        &format!("SELECT prev_hash FROM audit_log WHERE id = {target}"),
    )[0]["prev_hash"]
        .as_str()
        .expect("prev_hash")
        .to_owned();
    for row in rows(
        &cp,
        &format!(
            "SELECT id, at, actor, action, host_id, job_id, detail FROM audit_log WHERE id >= {target} ORDER BY id"
        ),
    ) {
        let id = row["id"].as_i64().expect("id");
        let detail = if id == target {
            r#"{"ttl_seconds":31536000,"uses":1000}"#.to_owned()
        } else {
            row["detail"].as_str().expect("detail").to_owned()
        };
        let hash = plain_hash(&row, &detail, &prev);
        cp.sql(&format!(
            "UPDATE audit_log SET detail = {}, prev_hash = {}, hash = {} WHERE id = {id}",
            quote(&detail),
            quote(&prev),
            quote(&hash)
        ));
        prev = hash;
    }

    let broken = cp.latchctl(&["audit", "verify"]);
    assert_eq!(
        broken.code, 1,
        "a rewritten, re-hashed entry went unnoticed: {broken:?}"
    );
    assert!(
        broken
            .stdout
            .contains(&format!("BROKEN at entry {target}:"))
            && broken.stdout.contains("MAC"),
        "{}",
        broken.stdout
    );
    let json = cp.latchctl(&["--output", "json", "audit", "verify"]);
    let report: Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad"]["id"], target);
}

#[test]
fn finding_8_a_deleted_tail_is_detected_by_the_recorded_head_and_an_exported_checkpoint() {
    if !e2e_enabled(
        "finding_8_a_deleted_tail_is_detected_by_the_recorded_head_and_an_exported_checkpoint",
    ) {
        return;
    }
    let cp = ControlPlane::start(&[]);
    activity(&cp, 3);
    let outside = tempfile::tempdir().expect("tempdir");
    let file = outside.path().join("checkpoint.json");
    let file_arg = file.to_str().expect("path");
    let written = cp.latchctl(&["audit", "checkpoint", "--output-file", file_arg]);
    assert_eq!(written.code, 0, "{written:?}");
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("checkpoint file")).expect("json");
    let checkpoint_id = checkpoint["id"].as_i64().expect("id");
    for field in ["hash", "at", "public_key", "signature"] {
        assert!(checkpoint[field].is_string(), "{field} in {checkpoint}");
    }
    let again = cp.latchctl(&["audit", "checkpoint", "--output-file", file_arg]);
    assert_ne!(again.code, 0, "an exported checkpoint is never overwritten");

    activity(&cp, 3);
    let head = wait_for_recorded_head(&cp);
    let intact = cp.latchctl(&["audit", "verify", "--checkpoint", file_arg]);
    assert_eq!(intact.code, 0, "{intact:?}");
    assert!(
        intact.stdout.contains("(audit.head") && intact.stdout.contains("(supplied"),
        "{}",
        intact.stdout
    );

    // Delete the tail, from just before the exported checkpoint's entry: the rest is a valid
    // chain on its own.
    let cut = checkpoint_id - 1;
    cp.drop_trigger("audit_log_no_delete");
    cp.drop_trigger("audit_macs_no_delete");
    cp.sql(&format!(
        "DELETE FROM audit_macs WHERE entry_id >= {cut}; DELETE FROM audit_log WHERE id >= {cut};"
    ));
    let broken = cp.latchctl(&["audit", "verify"]);
    assert_eq!(broken.code, 1, "a deleted tail went unnoticed: {broken:?}");
    assert!(
        broken.stdout.contains(&format!("BROKEN at entry {cut}:"))
            && broken.stdout.contains("removed from the end"),
        "{}",
        broken.stdout
    );
    let with_checkpoint = cp.latchctl(&["audit", "verify", "--checkpoint", file_arg]);
    assert_eq!(with_checkpoint.code, 1);
    assert_eq!(
        with_checkpoint
            .stdout
            .matches("does NOT hold the checkpoint")
            .count(),
        2,
        "both the recorded head and the exported checkpoint: {}",
        with_checkpoint.stdout
    );

    // New entries written after the cut do not cover it: the server keeps the recorded head.
    activity(&cp, 2);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        recorded_head(&cp).and_then(|h| h["id"].as_i64()),
        Some(head),
        "the server overwrote the evidence"
    );
    assert_eq!(cp.latchctl(&["audit", "verify"]).code, 1);
    assert!(
        cp.log().contains("no longer holds entry"),
        "the server did not report the cut"
    );
    let refused = cp.latchctl(&["audit", "checkpoint"]);
    assert_ne!(refused.code, 0, "a checkpoint of a broken chain was signed");
}

/// How a `latch-control serve` run on an existing data directory ended.
enum Serve {
    /// It listened (and was stopped).
    Listened,
    /// It exited with this status and standard error.
    Exited(i32, String),
}

fn serve(data: &Path, database: &TestDatabase, extra: &[&str]) -> Serve {
    let stderr_path = data.with_file_name("serve.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut command = Command::new(binary("latch-control"));
    database.configure(&mut command);
    let mut child = command
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start latch-control");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    let started = Instant::now();
    loop {
        if rx.try_recv().is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return Serve::Listened;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            return Serve::Exited(status.code().unwrap_or(-1), stderr);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "latch-control neither listened nor exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn expect_refusal(data: &Path, database: &TestDatabase, what: &str, needed: &[&str]) {
    match serve(data, database, &[]) {
        Serve::Listened => panic!("the server started without {what}"),
        Serve::Exited(code, stderr) => {
            assert_ne!(code, 0, "{what}: {stderr}");
            for text in needed {
                assert!(stderr.contains(text), "{what}: {text:?} not in {stderr}");
            }
        }
    }
}

#[test]
fn finding_9_a_server_whose_keys_are_gone_refuses_to_start() {
    if !e2e_enabled("finding_9_a_server_whose_keys_are_gone_refuses_to_start") {
        return;
    }
    let mut cp = ControlPlane::start(&[]);
    activity(&cp, 1);
    let list = cp.json(&["audit", "list"]);
    let actions: Vec<&str> = list["list"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for made in ["audit.keyed", "signing_key.created", "tls.ca_created"] {
        assert!(
            actions.contains(&made),
            "{made} is not audited: {actions:?}"
        );
    }
    // Stop the server, keeping its data directory and database.
    let dir = std::mem::replace(&mut cp.data_dir, tempfile::tempdir().expect("tempdir"));
    let database = cp.database.clone();
    drop(cp);
    let data = dir.path().join("data");

    for (file, flag) in [
        ("signing.key", "--new-signing-key"),
        ("audit.key", "--new-audit-key"),
        ("ca.key", "--new-ca"),
    ] {
        let path = data.join(file);
        let saved = std::fs::read(&path).expect("key file");
        std::fs::remove_file(&path).expect("remove");
        let moved_cert = (file == "ca.key").then(|| {
            let cert = std::fs::read(data.join("ca.crt")).expect("ca.crt");
            std::fs::remove_file(data.join("ca.crt")).expect("remove ca.crt");
            cert
        });
        expect_refusal(&data, &database, file, &["is missing", "Restore", flag]);
        assert!(!path.exists(), "{file} was made again");
        // Restored from a backup, the same data directory starts.
        std::fs::write(&path, &saved).expect("restore");
        if let Some(cert) = moved_cert {
            std::fs::write(data.join("ca.crt"), cert).expect("restore ca.crt");
        }
        assert!(
            matches!(serve(&data, &database, &[]), Serve::Listened),
            "after restoring {file}"
        );
    }

    // A different signing key is refused too.
    let original = std::fs::read(data.join("signing.key")).expect("signing.key");
    std::fs::remove_file(data.join("signing.key")).expect("remove");
    assert!(matches!(
        serve(&data, &database, &["--new-signing-key"]),
        Serve::Listened
    ));
    std::fs::write(data.join("signing.key"), &original).expect("put back the old key");
    expect_refusal(
        &data,
        &database,
        "the original key after a replacement",
        &["is not the key this data directory was initialised with"],
    );
}
