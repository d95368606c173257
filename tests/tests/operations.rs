//! Issue 13, running the agent in production: `latch-agent status` as a health check (exit
//! status, JSON), structured logs (JSON lines and native journal entries with job id, host id,
//! kind and outcome), systemd's readiness and watchdog protocol, and the agent-protocol
//! handshake with the control plane.

use std::time::Duration;

use latch_e2e::{ControlPlane, RealEtc, TestHost, e2e_enabled, wait_for};
use serde_json::Value;

/// `latch-agent status --output json` inside `host`: (exit code, report).
fn status(host: &TestHost) -> (i32, Value) {
    let ran = host.exec(&[
        latch_e2e::AGENT,
        "status",
        "--state-dir",
        "/var/lib/latch",
        "--output",
        "json",
    ]);
    let report = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("status JSON ({e}): {} {}", ran.stdout, ran.stderr));
    (ran.code, report)
}

fn create_account(cp: &ControlPlane, host: &str, user: &str, expires_in: &str) -> String {
    cp.create_job(&[
        "--host",
        host,
        "--kind",
        "create-account",
        "--user",
        user,
        "--expires-in",
        expires_in,
    ])
}

/// The journal's native protocol as tracing-journald writes it: `NAME\n<u64 LE length><value>\n`
/// or `NAME=value\n`. Returns the fields of one datagram.
fn journal_fields(mut datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some(newline) = datagram.iter().position(|&b| b == b'\n') {
        let line = &datagram[..newline];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            datagram = &datagram[newline + 1..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let after = &datagram[newline + 1..];
            let length =
                usize::try_from(u64::from_le_bytes(after[..8].try_into().expect("length")))
                    .expect("length");
            fields.push((
                name,
                String::from_utf8_lossy(&after[8..8 + length]).into_owned(),
            ));
            datagram = &after[(8 + length + 1).min(after.len())..];
        }
    }
    fields
}

/// Receives datagrams on the Unix socket `socket` inside `host` (a background Python loop),
/// writing each as one line of hex to `file`.
fn capture_datagrams(host: &TestHost, socket: &str, file: &str) {
    let receiver = format!(
        "import os, socket\n\
         os.makedirs(os.path.dirname('{socket}'), exist_ok=True)\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.bind('{socket}')\n\
         open('{file}', 'a').close()\n\
         while True:\n\
         \x20   data = s.recv(1 << 20)\n\
         \x20   with open('{file}', 'a') as out:\n\
         \x20       out.write(data.hex() + '\\n')\n"
    );
    let script = format!(
        "setsid python3 -c \"$0\" </dev/null >/dev/null 2>&1 & \
         for i in $(seq 1 50); do [ -S {socket} ] && exit 0; sleep 0.1; done; exit 1"
    );
    host.exec(&["/bin/sh", "-c", &script, &receiver])
        .ok("datagram receiver");
}

/// The datagrams `capture_datagrams` wrote to `file`.
fn datagrams(host: &TestHost, file: &str) -> Vec<Vec<u8>> {
    host.read(file)
        .lines()
        .map(|line| {
            (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

/// What the agent sent to the notify socket, one datagram per line.
fn notify_text(host: &TestHost) -> String {
    datagrams(host, "/tmp/notify.hex")
        .iter()
        .map(|d| String::from_utf8_lossy(d).replace('\n', " ") + "\n")
        .collect()
}

/// `status` is the agent's health check: healthy while it runs and polls, with its grants and
/// their ends; unhealthy (exit 1, the reason named) when it is stopped or a revocation is
/// overdue.
#[test]
fn status_is_a_health_check_with_grants_reports_and_journal() {
    if !e2e_enabled("status_is_a_health_check_with_grants_reports_and_journal") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-ops1");
    let host_id = host.enroll_ok(&cp);
    let agent = host.start_agent();
    let job = create_account(&cp, "e2e-ops1", "opsuser", "1h");
    cp.expect_confirmed(&job);
    let (code, report) = wait_for("a healthy status", Duration::from_secs(20), || {
        let (code, report) = status(&host);
        (code == 0).then_some((code, report))
    });
    assert_eq!(code, 0);
    assert_eq!(report["healthy"], true, "{report:#}");
    assert_eq!(report["host_id"], host_id.as_str());
    assert_eq!(report["agent_running"], true);
    assert_eq!(report["mode"], "polling");
    assert!(report["poll"]["last_success"].is_string(), "{report:#}");
    assert_eq!(report["pending_job_reports"], 0);
    assert_eq!(report["pending_revocation_reports"], 0);
    assert_eq!(report["journal"]["unreadable"], Value::Array(Vec::new()));
    let grants = report["grants"].as_array().expect("grants");
    let grant = grants
        .iter()
        .find(|g| g["user"] == "opsuser" && g["group"].is_null())
        .unwrap_or_else(|| panic!("opsuser not among the grants: {report:#}"));
    assert_eq!(grant["expires_at"], cp.job(&job)["expires_at"]);
    // The control plane recorded which agent the host runs.
    assert_eq!(
        cp.json(&["hosts", "show", "e2e-ops1"])["agent"],
        serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "protocol": 1})
    );
    let table = cp.latchctl(&["hosts", "list"]).ok("hosts list");
    assert!(
        table.contains("AGENT") && table.contains(env!("CARGO_PKG_VERSION")),
        "{table}"
    );
    let text = host
        .exec(&[latch_e2e::AGENT, "status", "--state-dir", "/var/lib/latch"])
        .ok("status text");
    assert!(text.starts_with("health:        OK"), "{text}");
    assert!(text.contains("opsuser"), "{text}");

    // Stopped: nothing revokes any more.
    agent.stop();
    let (code, report) = status(&host);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["healthy"], false);
    let problems = report["problems"].to_string();
    assert!(problems.contains("not running"), "{problems}");

    // A grant still on the host well after its end: an overdue revocation. (The record is
    // back-dated while the agent is stopped; status only reads.)
    let accounts = host.read("/var/lib/latch/accounts.json");
    let mut parsed: Value = serde_json::from_str(&accounts).expect("accounts.json");
    parsed["accounts"]["opsuser"]["expires_at"] =
        Value::String((chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339());
    host.write("/var/lib/latch/accounts.json", &parsed.to_string());
    let (code, report) = status(&host);
    assert_eq!(code, 1);
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("revocation overdue: account opsuser"),
        "{problems}"
    );
    // Started again, the agent revokes it at once, and the host is healthy again.
    let agent = host.start_agent();
    wait_for("opsuser removed", Duration::from_secs(20), || {
        host.passwd_line("opsuser").is_none().then_some(())
    });
    let (code, report) = wait_for("healthy again", Duration::from_secs(20), || {
        let (code, report) = status(&host);
        (code == 0).then_some((code, report))
    });
    assert_eq!(code, 0, "{report:#}");
    assert!(
        !report["grants"].to_string().contains("opsuser"),
        "{report:#}"
    );
    agent.stop();
    real.assert_unchanged();
}

/// Neither a mistyped log format nor a revoke-only marker left by an earlier run (the problem
/// since fixed) keeps the agent from working: it starts on the `auto` format with a warning,
/// tries the control plane again, clears the marker at its first successful poll, and `status`
/// is healthy.
#[test]
fn a_bad_log_format_or_a_stale_revoke_only_marker_does_not_stop_the_agent() {
    if !e2e_enabled("a_bad_log_format_or_a_stale_revoke_only_marker_does_not_stop_the_agent") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-ops4");
    host.enroll_ok(&cp);
    host.write(
        "/var/lib/latch/revoke-only.json",
        &serde_json::json!({
            "reason": "the configuration is not usable (fixed since)",
            "since": "2026-01-01T00:00:00Z"
        })
        .to_string(),
    );
    let agent = host.start_agent_with("LATCH_LOG_FORMAT=jsno");
    let job = create_account(&cp, "e2e-ops4", "fmtuser", "1h");
    cp.expect_confirmed(&job);
    assert!(
        host.agent_log().contains("unknown log format \"jsno\""),
        "{}",
        host.agent_log()
    );
    let report = wait_for("healthy, marker cleared", Duration::from_secs(20), || {
        let (code, report) = status(&host);
        (code == 0).then_some(report)
    });
    assert_eq!(report["mode"], "polling");
    assert_eq!(
        host.exec(&["test", "-e", "/var/lib/latch/revoke-only.json"])
            .code,
        1,
        "the marker is gone"
    );
    agent.stop();
    real.assert_unchanged();
}

/// `--log-format json` writes one JSON object per line with the job's id, the host's id, the
/// job's kind and its outcome as fields.
#[test]
fn json_logs_carry_job_host_kind_and_outcome() {
    if !e2e_enabled("json_logs_carry_job_host_kind_and_outcome") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-ops2");
    let host_id = host.enroll_ok(&cp);
    let agent = host.start_agent_with("LATCH_LOG_FORMAT=json");
    let confirmed = create_account(&cp, "e2e-ops2", "jsonuser", "1h");
    cp.expect_confirmed(&confirmed);
    let failed = cp.create_job(&[
        "--host",
        "e2e-ops2",
        "--kind",
        "add-group",
        "--user",
        "jsonuser",
        "--group",
        "nosuchgroup",
        "--expires-in",
        "1h",
    ]);
    cp.expect_failed(&failed, "group_not_allowed");
    let lines: Vec<Value> = wait_for("both outcomes logged", Duration::from_secs(10), || {
        let log = host.agent_log();
        let lines: Vec<Value> = log
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect();
        let outcomes = lines.iter().filter(|l| l["outcome"].is_string()).count();
        (outcomes >= 2).then_some(lines)
    });
    let find = |id: &str| {
        lines
            .iter()
            .find(|l| l["job_id"] == id && l["outcome"].is_string())
            .unwrap_or_else(|| panic!("no outcome line for {id}: {lines:#?}"))
            .clone()
    };
    let ok = find(&confirmed);
    assert_eq!(ok["host_id"], host_id.as_str());
    assert_eq!(ok["kind"], "create-account");
    assert_eq!(ok["outcome"], "confirmed");
    assert_eq!(ok["level"], "INFO");
    assert!(ok["timestamp"].is_string());
    let bad = find(&failed);
    assert_eq!(bad["kind"], "add-group");
    assert_eq!(bad["outcome"], "failed");
    assert_eq!(bad["code"], "group_not_allowed");
    // The failure's text is its own field; `message` stays the event's message (one key).
    assert_eq!(bad["message"], "job failed");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("nosuchgroup")),
        "{bad}"
    );
    agent.stop();
    real.assert_unchanged();
}

/// Under systemd (`JOURNAL_STREAM` set) the agent writes native journal entries: `LATCH_JOB_ID`,
/// `LATCH_HOST_ID`, `LATCH_KIND`, `LATCH_OUTCOME` are fields `journalctl` can match on. It tells
/// systemd `READY=1` and pings the watchdog at half its interval. A journald stand-in and a
/// notify socket inside the test host receive the datagrams.
#[test]
fn under_systemd_the_agent_logs_to_the_journal_and_pings_the_watchdog() {
    if !e2e_enabled("under_systemd_the_agent_logs_to_the_journal_and_pings_the_watchdog") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-ops3");
    let host_id = host.enroll_ok(&cp);
    capture_datagrams(&host, "/run/systemd/journal/socket", "/tmp/journal.hex");
    capture_datagrams(&host, "/run/notify.sock", "/tmp/notify.hex");
    let agent = host.start_agent_with(
        "JOURNAL_STREAM=8:1 NOTIFY_SOCKET=/run/notify.sock WATCHDOG_USEC=1000000",
    );
    let job = create_account(&cp, "e2e-ops3", "jrnluser", "1h");
    cp.expect_confirmed(&job);
    let entry = wait_for(
        "the outcome in the journal",
        Duration::from_secs(10),
        || {
            datagrams(&host, "/tmp/journal.hex")
                .iter()
                .map(|datagram| journal_fields(datagram))
                .find(|fields| {
                    fields.iter().any(|(k, v)| k == "LATCH_JOB_ID" && v == &job)
                        && fields.iter().any(|(k, _)| k == "LATCH_OUTCOME")
                })
        },
    );
    let field = |name: &str| {
        entry
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} missing: {entry:?}"))
    };
    assert_eq!(field("LATCH_HOST_ID"), host_id);
    assert_eq!(field("LATCH_KIND"), "create-account");
    assert_eq!(field("LATCH_OUTCOME"), "confirmed");
    assert_eq!(field("SYSLOG_IDENTIFIER"), "latch-agent");
    assert_eq!(field("MESSAGE"), "job confirmed");
    assert_eq!(field("PRIORITY"), "5");
    // Nothing went to stderr: the journal has it all.
    assert!(
        !host.agent_log().contains("job confirmed"),
        "{}",
        host.agent_log()
    );

    let notes = wait_for("READY and watchdog pings", Duration::from_secs(10), || {
        let text = notify_text(&host);
        (text.contains("READY=1") && text.matches("WATCHDOG=1").count() >= 3).then_some(text)
    });
    let ready = notes.find("READY=1").expect("ready");
    let first_ping = notes.find("WATCHDOG=1").expect("ping");
    assert!(ready < first_ping, "READY=1 comes first: {notes}");
    assert!(notes.contains("STATUS="), "{notes}");
    agent.stop();
    wait_for("STOPPING=1", Duration::from_secs(5), || {
        notify_text(&host).contains("STOPPING=1").then_some(())
    });
    real.assert_unchanged();
}

/// The agent and the control plane tell each other their agent-protocol version; the control
/// plane refuses a protocol it cannot serve with 426 and what to upgrade, and changes nothing.
#[test]
fn the_control_plane_refuses_an_agent_protocol_it_cannot_serve() {
    if !e2e_enabled("the_control_plane_refuses_an_agent_protocol_it_cannot_serve") {
        return;
    }
    let cp = ControlPlane::start(&[]);
    let token = cp.enroll_token("10m", 1);
    let http = cp.http();
    let body = serde_json::json!({
        "token": token,
        "facts": {"hostname": "e2e-proto", "os": "Debian GNU/Linux 12", "kernel": "6.1.0",
                  "arch": "x86_64", "cpus": 2, "memory_bytes": 1u64 << 30,
                  "machine_id": "0123456789abcdef0123456789abcdef"}
    });
    let newer = http
        .post(format!("{}/v1/enroll", cp.url))
        .header("latch-protocol", "2")
        .json(&body)
        .send()
        .expect("enroll");
    assert_eq!(newer.status().as_u16(), 426);
    assert_eq!(newer.headers()["latch-protocol"], "1");
    let answer: Value = newer.json().expect("json");
    assert_eq!(answer["code"], "agent_protocol_unsupported");
    let message = answer["message"].as_str().expect("message");
    assert!(
        message.contains("protocol 2") && message.contains("upgrade latch-control"),
        "{message}"
    );
    let garbled = http
        .post(format!("{}/v1/enroll", cp.url))
        .header("latch-protocol", "latest")
        .json(&body)
        .send()
        .expect("enroll");
    assert_eq!(garbled.status().as_u16(), 400);
    assert_eq!(
        cp.json(&["hosts", "list"])["list"],
        serde_json::json!([]),
        "a refused agent enrolled nothing"
    );
    // The token (one use) was not used up: the same request with the protocol of this release
    // (or none, as release 0.1 agents send) enrolls, and the answer names the control plane's
    // protocol.
    let ok = http
        .post(format!("{}/v1/enroll", cp.url))
        .json(&body)
        .send()
        .expect("enroll");
    assert_eq!(ok.status().as_u16(), 201);
    assert_eq!(ok.headers()["latch-protocol"], "1");
    // Only the agent API carries the header.
    let admin = http
        .get(format!("{}/v1/health", cp.url))
        .send()
        .expect("health");
    assert!(admin.headers().get("latch-protocol").is_none());
}

/// `latch-control serve --log-format json` (or `log_format = "json"`): every log line on stderr
/// is one JSON object with the event's fields at the top level.
#[test]
fn the_control_plane_logs_json_lines_for_log_shippers() {
    if !e2e_enabled("the_control_plane_logs_json_lines_for_log_shippers") {
        return;
    }
    let cp = ControlPlane::start(&["--log-format", "json"]);
    let host = TestHost::start("e2e-ops5");
    let host_id = host.enroll_ok(&cp);
    let line = wait_for("the enrollment logged", Duration::from_secs(10), || {
        cp.log()
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .find(|entry| entry["message"] == "host enrolled")
    });
    assert_eq!(line["host_id"], host_id.as_str(), "{line}");
    assert_eq!(line["hostname"], "e2e-ops5");
    assert_eq!(line["level"], "INFO");
    // Nothing else the server wrote to stderr is a plain-text log line.
    assert!(
        !cp.log().contains(" INFO "),
        "a text log line among the JSON: {}",
        cp.log()
    );
}
