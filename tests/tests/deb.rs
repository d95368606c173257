//! The Debian packages (cargo-deb metadata in `agent/` and `control/`, built by `scripts/deb`
//! from the debug binaries the other tests use), installed with the real dpkg inside test hosts
//! whose `/usr` and `/var/lib` are overlays ([`TestHost::private_packages`]): lintian, the
//! installed files, what the maintainer scripts ask of systemd, enrollment and jobs through the
//! installed agent, an upgrade while one grant is active and another ends, the refusal to remove
//! the agent while accounts Latch created exist, remove and purge — and the machine's own
//! `/usr`, package database and systemd configuration unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use latch_e2e::{ControlPlane, Ran, RealEtc, TestHost, binary, e2e_enabled, free_port, wait_for};

/// The link that enables the agent's unit.
const AGENT_WANTED: &str = "/etc/systemd/system/multi-user.target.wants/latch-agent.service";

/// `PATH` for dpkg and the maintainer scripts (dpkg needs the sbin directories).
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether the package tests run here: as root (see [`e2e_enabled`]), in the SQLite pass of
/// `scripts/test` only (the packages do not depend on the store: the PostgreSQL pass would
/// build and install them again for nothing), with cargo-deb, lintian and dpkg installed —
/// otherwise skips (fails with `LATCH_E2E=required`).
fn package_test_runs(test: &str) -> bool {
    if !e2e_enabled(test) {
        return false;
    }
    if std::env::var("LATCH_TEST_STORE").is_ok_and(|v| v.starts_with("postgres")) {
        eprintln!(
            "{test}: runs in the SQLite pass of scripts/test only (the packages do not depend on the store)"
        );
        return false;
    }
    let tools: [&[&str]; 3] = [
        &["cargo", "deb", "--version"],
        &["lintian", "--version"],
        &["dpkg", "--version"],
    ];
    let missing: Vec<String> = tools
        .iter()
        .filter(|argv| {
            !Command::new(argv[0])
                .args(&argv[1..])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .map(|argv| argv[..argv.len() - 1].join(" "))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} missing (cargo install cargo-deb --locked; apt-get install lintian)",
        missing.join(", ")
    );
    assert!(
        std::env::var("LATCH_E2E").map_or(true, |v| v != "required"),
        "{test}: {why} (LATCH_E2E=required)"
    );
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Builds `package` at `version` with `scripts/deb --debug` into `out`; the `.deb`'s path.
fn build(package: &str, version: &str, out: &Path) -> PathBuf {
    let target = binary("latch-agent")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_owned();
    let built = Ran::from(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/deb"))
            .args(["--debug", "--deb-version", version, "--output"])
            .arg(out)
            .arg(package)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("scripts/deb"),
    );
    let printed = built.ok(&format!("scripts/deb {package} {version}"));
    let deb = PathBuf::from(printed.trim());
    assert!(
        deb.is_file()
            && deb
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_{version}_"))),
        "scripts/deb printed {printed:?}"
    );
    deb
}

/// lintian reports no error and no warning (the kept ones are overridden in the package, each
/// with its reason).
fn assert_lintian_clean(deb: &Path) {
    let ran = Ran::from(
        Command::new("lintian")
            .args(["--fail-on", "error,warning"])
            .arg(deb)
            .output()
            .expect("lintian"),
    );
    let complaints: Vec<&str> = ran
        .stdout
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        ran.code == 0 && complaints.is_empty(),
        "lintian {}: exit {}\n{}{}",
        deb.display(),
        ran.code,
        ran.stdout,
        ran.stderr
    );
}

/// What dpkg inside a test host must not change on the machine: the package database, the
/// programs, units and documentation in `/usr` (`systemctl` too: the test host has a stand-in),
/// systemd's configuration and state, and what is in `/etc` and `/var/lib`.
struct RealSystem(Vec<(String, Vec<u8>)>);

impl RealSystem {
    fn snapshot() -> RealSystem {
        let mut facts = Vec::new();
        for file in ["/var/lib/dpkg/status", "/usr/bin/systemctl"] {
            facts.push((file.to_owned(), std::fs::read(file).unwrap_or_default()));
        }
        for dir in [
            "/usr/bin",
            "/usr/sbin",
            "/usr/lib/systemd/system",
            "/usr/share/doc",
            "/usr/share/lintian/overrides",
            "/var/lib",
            "/var/lib/dpkg/info",
            "/var/lib/systemd",
            "/etc",
            "/etc/systemd/system",
            "/etc/systemd/system/multi-user.target.wants",
        ] {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            facts.push((format!("{dir}/"), names.join("\n").into_bytes()));
        }
        RealSystem(facts)
    }

    fn assert_unchanged(&self) {
        let now = RealSystem::snapshot();
        for ((what, before), (_, after)) in self.0.iter().zip(&now.0) {
            assert!(
                before == after,
                "the machine's {what} changed: dpkg in a test host must change the test host only"
            );
        }
    }
}

/// `dpkg ARGS` inside `host` with a clean environment (plus `LATCH_AGENT_FORCE_REMOVE=yes`
/// when `force`).
fn dpkg(host: &TestHost, args: &[&str], force: bool) -> Ran {
    let mut argv = vec!["env", "-i", PATH];
    if force {
        argv.push("LATCH_AGENT_FORCE_REMOVE=yes");
    }
    argv.push("dpkg");
    argv.extend_from_slice(args);
    host.exec(&argv)
}

/// dpkg's status of `package` in `host` (`install ok installed`, `deinstall ok config-files`,
/// or "" once purged).
fn status(host: &TestHost, package: &str) -> String {
    host.exec(&["dpkg-query", "-W", "-f=${Status}", package])
        .stdout
        .trim()
        .to_owned()
}

/// `MODE OWNER GROUP` of `path` in `host` ("" if it does not exist).
fn stat(host: &TestHost, path: &str) -> String {
    host.exec(&["stat", "-c", "%a %U %G", path])
        .stdout
        .trim()
        .to_owned()
}

fn exists(host: &TestHost, path: &str) -> bool {
    host.exec(&["test", "-e", path]).code == 0
}

/// The systemd units of `unit`'s name anywhere in `/etc/systemd/system` (links made by
/// enabling or masking it) and deb-systemd-helper's records of it.
fn unit_traces(host: &TestHost, unit: &str) -> String {
    host.exec(&[
        "find",
        "/etc/systemd/system",
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
        "-name",
        &format!("*{unit}*"),
    ])
    .stdout
}

/// `systemd-analyze verify` of an installed unit (its binary is in the test host's `/usr`).
fn assert_unit_verifies(host: &TestHost, unit: &str) {
    let ran = host.exec(&[
        "systemd-analyze",
        "verify",
        &format!("/lib/systemd/system/{unit}"),
    ]);
    assert!(
        ran.code == 0 && !ran.stderr.contains(unit),
        "systemd-analyze verify {unit}: {ran:?}"
    );
}

/// The names of the accounts in the agent's record (`/var/lib/latch/accounts.json`) with their
/// `expires_at`.
fn recorded_accounts(host: &TestHost) -> serde_json::Map<String, serde_json::Value> {
    let record: serde_json::Value =
        serde_json::from_str(&host.read("/var/lib/latch/accounts.json")).expect("accounts.json");
    record["accounts"].as_object().cloned().unwrap_or_default()
}

/// The agent's package, with a systemd stand-in that records what the maintainer scripts ask of
/// it: lintian-clean; installed, it is neither enabled nor started and says how
/// to enroll; the installed agent enrolls and applies jobs; an upgrade keeps the enrollment, the
/// active grant and the operator's configuration, and the grant that ended while it ran is
/// revoked as soon as the new agent starts; removal is refused while accounts Latch created
/// exist (forced, it keeps the state and the configuration, and purge is refused in turn);
/// installed again, the agent still ends those accounts; purge then leaves nothing behind.
#[test]
fn the_agent_package_installs_upgrades_with_live_grants_and_purges_cleanly() {
    const TEST: &str = "the_agent_package_installs_upgrades_with_live_grants_and_purges_cleanly";
    if !package_test_runs(TEST) {
        return;
    }
    let real_etc = RealEtc::snapshot();
    let out = tempfile::tempdir().expect("tempdir");
    let v1 = build("latch-agent", "0.1.0-1", out.path());
    let v2 = build("latch-agent", "0.1.1-1", out.path());
    assert_lintian_clean(&v1);

    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-deb-agent");
    let real = RealSystem::snapshot();
    host.private_packages();
    host.pretend_systemd();
    host.copy_in(&v1, "/tmp/v1.deb");
    host.copy_in(&v2, "/tmp/v2.deb");

    // Installed: the files in place, the agent neither enabled nor started, the way to enroll.
    let installed = dpkg(&host, &["-i", "/tmp/v1.deb"], false).ok("dpkg -i v1");
    assert!(
        installed.contains("this host is not enrolled yet")
            && installed.contains("latch-agent enroll --server URL --ca-fingerprint sha256:")
            && installed.contains("systemctl enable --now latch-agent"),
        "{installed}"
    );
    assert_eq!(status(&host, "latch-agent"), "install ok installed");
    assert_eq!(stat(&host, "/usr/bin/latch-agent"), "755 root root");
    assert_eq!(stat(&host, "/var/lib/latch"), "700 root root");
    assert_eq!(
        host.read("/lib/systemd/system/latch-agent.service"),
        include_str!("../../packaging/systemd/latch-agent.service")
    );
    let config = host.read("/etc/latch/agent.toml");
    assert_eq!(config, include_str!("../../packaging/agent.toml"));
    let checked = host
        .exec(&["/usr/bin/latch-agent", "config", "check"])
        .ok("latch-agent config check");
    assert!(
        checked.starts_with("/etc/latch/agent.toml: ok\n"),
        "{checked}"
    );
    assert!(
        config
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "every line of the shipped agent.toml is a comment, so the defaults apply"
    );
    let conffiles = host
        .exec(&["dpkg-query", "-W", "-f=${Conffiles}", "latch-agent"])
        .ok("conffiles");
    assert!(conffiles.contains("/etc/latch/agent.toml"), "{conffiles}");
    assert!(exists(&host, "/usr/share/doc/latch-agent/copyright"));
    assert_unit_verifies(&host, "latch-agent.service");
    let calls = host.systemctl_calls();
    assert!(calls.contains("daemon-reload"), "{calls}");
    assert!(
        !calls.contains("start") && !calls.contains("preset") && !exists(&host, AGENT_WANTED),
        "postinst must neither start nor enable an agent that is not enrolled: {calls}"
    );
    assert!(host.processes_matching("latch-agent run").is_empty());

    // The installed agent enrolls and applies jobs: one grant that lasts, one that ends soon.
    let token = cp.enroll_token("10m", 1);
    host.enroll_installed(&cp, &token).ok("latch-agent enroll");
    assert_eq!(stat(&host, "/var/lib/latch/identity.json"), "600 root root");
    let agent = host.start_installed_agent();
    let lasting = cp.create_job(&[
        "--host",
        "e2e-deb-agent",
        "--kind",
        "create-account",
        "--user",
        "pkgalice",
        "--group",
        "sudo",
        "--expires-in",
        "1h",
    ]);
    let ending = cp.create_job(&[
        "--host",
        "e2e-deb-agent",
        "--kind",
        "create-account",
        "--user",
        "pkgbob",
        "--expires-in",
        "20s",
    ]);
    cp.expect_confirmed(&lasting);
    cp.expect_confirmed(&ending);
    let ends_at: chrono::DateTime<chrono::Utc> = recorded_accounts(&host)["pkgbob"]["expires_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("pkgbob's end in the record");

    // Upgrade. The operator's change to the configuration file stays. Under systemd the
    // postinst's try-restart is all the downtime; here the agent is down from before the
    // upgrade until after pkgbob's end.
    host.exec(&[
        "/bin/sh",
        "-c",
        "echo 'log_level = \"debug\"' >> /etc/latch/agent.toml",
    ])
    .ok("edit agent.toml");
    let identity = host.read("/var/lib/latch/identity.json");
    agent.stop();
    let upgraded = dpkg(&host, &["-i", "/tmp/v2.deb"], false).ok("dpkg -i v2");
    assert!(!upgraded.contains("not enrolled"), "{upgraded}");
    assert_eq!(
        host.exec(&["dpkg-query", "-W", "-f=${Version}", "latch-agent"])
            .stdout,
        "0.1.1-1"
    );
    let calls = host.systemctl_calls();
    assert!(calls.contains("try-restart latch-agent.service"), "{calls}");
    assert!(
        !calls
            .lines()
            .any(|c| c.contains(" start ") || c.contains("preset"))
            && !exists(&host, AGENT_WANTED),
        "{calls}"
    );
    assert_eq!(host.read("/var/lib/latch/identity.json"), identity);
    assert!(
        host.read("/etc/latch/agent.toml")
            .ends_with("log_level = \"debug\"\n")
    );
    assert_eq!(stat(&host, "/var/lib/latch"), "700 root root");
    let left = (ends_at - chrono::Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(left + Duration::from_secs(1));
    assert!(
        host.passwd_line("pkgbob").is_some(),
        "nothing revokes while the agent is down"
    );
    let started = Instant::now();
    let agent = host.start_installed_agent();
    host.wait(
        "the grant that ended during the upgrade to be revoked",
        Duration::from_secs(10),
        || host.passwd_line("pkgbob").is_none().then_some(()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "revoked {:?} after the new agent started",
        started.elapsed()
    );
    assert!(host.passwd_line("pkgalice").is_some());
    assert!(host.group_members("sudo").contains(&"pkgalice".to_owned()));
    let revoked = wait_for(
        "pkgbob's grant recorded as revoked",
        Duration::from_secs(30),
        || {
            let job = cp.job(&ending);
            job["revoked_at"].is_string().then_some(job)
        },
    );
    assert_eq!(revoked["revoked_by"], "agent_expiry", "{revoked:#}");
    assert!(
        host.agent_log().contains("DEBUG"),
        "the new agent runs with the kept configuration (log_level = debug)"
    );

    // Removal is refused while an account Latch created exists: nothing would end it.
    let refused = dpkg(&host, &["-r", "latch-agent"], false);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("NOT removed") && refused.stderr.contains("pkgalice"),
        "{refused:?}"
    );
    assert!(!refused.stderr.contains("pkgbob"), "{refused:?}");
    // Still installed (dpkg keeps the wish to remove it: "deinstall ok installed").
    assert!(
        status(&host, "latch-agent").ends_with(" ok installed"),
        "{}",
        status(&host, "latch-agent")
    );
    assert!(exists(&host, "/usr/bin/latch-agent"));
    assert!(!host.systemctl_calls().contains("stop"));

    // Forced: the programs go, the state and the configuration stay, and so does the account.
    agent.stop();
    let removed = dpkg(&host, &["-r", "latch-agent"], true);
    assert_eq!(removed.code, 0, "{removed:?}");
    assert!(
        removed.stderr.contains("WARNING") && removed.stderr.contains("pkgalice"),
        "{removed:?}"
    );
    assert!(host.systemctl_calls().contains("stop latch-agent.service"));
    assert_eq!(status(&host, "latch-agent"), "deinstall ok config-files");
    for gone in [
        "/usr/bin/latch-agent",
        "/lib/systemd/system/latch-agent.service",
    ] {
        assert!(!exists(&host, gone), "{gone} is still there after dpkg -r");
    }
    assert_eq!(host.read("/var/lib/latch/identity.json"), identity);
    assert!(
        host.read("/etc/latch/agent.toml")
            .contains("log_level = \"debug\"")
    );
    assert!(host.passwd_line("pkgalice").is_some());

    // Purge is refused too: it would delete the only record of that account.
    let refused = dpkg(&host, &["-P", "latch-agent"], false);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("NOT purged") && refused.stderr.contains("pkgalice"),
        "{refused:?}"
    );
    assert_eq!(host.read("/var/lib/latch/identity.json"), identity);
    assert!(recorded_accounts(&host).contains_key("pkgalice"));

    // Installed again, the agent carries on with its enrollment and ends the account.
    let reinstalled = dpkg(&host, &["-i", "/tmp/v2.deb"], false).ok("dpkg -i again");
    assert!(!reinstalled.contains("not enrolled"), "{reinstalled}");
    let agent = host.start_installed_agent();
    let delete = cp.create_job(&[
        "--host",
        "e2e-deb-agent",
        "--kind",
        "delete-account",
        "--user",
        "pkgalice",
    ]);
    cp.expect_confirmed(&delete);
    assert!(host.passwd_line("pkgalice").is_none());
    assert!(recorded_accounts(&host).is_empty());

    // With no account of Latch's left, remove and purge need no force; nothing is left.
    agent.stop();
    dpkg(&host, &["-r", "latch-agent"], false).ok("dpkg -r");
    assert!(exists(&host, "/var/lib/latch/identity.json"));
    dpkg(&host, &["-P", "latch-agent"], false).ok("dpkg -P");
    assert_eq!(status(&host, "latch-agent"), "");
    for gone in [
        "/var/lib/latch",
        "/etc/latch",
        "/usr/bin/latch-agent",
        "/lib/systemd/system/latch-agent.service",
        "/usr/share/doc/latch-agent",
        "/usr/share/lintian/overrides/latch-agent",
        "/var/lib/dpkg/info/latch-agent.list",
    ] {
        assert!(!exists(&host, gone), "{gone} is left after purge");
    }
    let traces = unit_traces(&host, "latch-agent");
    assert!(traces.trim().is_empty(), "left after purge: {traces}");
    host.assert_account_files_clean();

    drop(host);
    real.assert_unchanged();
    real_etc.assert_unchanged();
}

/// The control plane's package, where systemd is not PID 1 (the maintainer scripts must work
/// there too): lintian-clean; installed, it has its system user and a state directory only that
/// user can read, and its unit is enabled; the installed
/// server runs as that user on its defaults and latchctl talks to it; removal keeps the data
/// and the configuration; purge removes the configuration and keeps the data (keys, CA,
/// database) and the user.
#[test]
fn the_control_package_runs_as_its_own_user_and_purge_keeps_its_data() {
    const TEST: &str = "the_control_package_runs_as_its_own_user_and_purge_keeps_its_data";
    if !package_test_runs(TEST) {
        return;
    }
    let real_etc = RealEtc::snapshot();
    let out = tempfile::tempdir().expect("tempdir");
    let deb = build("latch-control", "0.1.0-1", out.path());
    assert_lintian_clean(&deb);

    let host = TestHost::start("e2e-deb-control");
    let real = RealSystem::snapshot();
    host.private_packages();
    host.copy_in(&deb, "/tmp/control.deb");

    dpkg(&host, &["-i", "/tmp/control.deb"], false).ok("dpkg -i");
    assert_eq!(status(&host, "latch-control"), "install ok installed");
    let user = host
        .exec(&["getent", "passwd", "latch-control"])
        .ok("the latch-control user");
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "a system user: {user}");
    assert_eq!(
        (fields[5], fields[6]),
        ("/var/lib/latch-control", "/usr/sbin/nologin"),
        "{user}"
    );
    host.exec(&["getent", "group", "latch-control"])
        .ok("the latch-control group");
    assert_eq!(
        stat(&host, "/var/lib/latch-control"),
        "700 latch-control latch-control"
    );
    for program in ["/usr/bin/latch-control", "/usr/bin/latchctl"] {
        assert_eq!(stat(&host, program), "755 root root", "{program}");
    }
    assert_eq!(
        host.read("/lib/systemd/system/latch-control.service"),
        include_str!("../../packaging/systemd/latch-control.service")
    );
    assert_eq!(
        host.read("/etc/latch/control.toml"),
        include_str!("../../packaging/control.toml")
    );
    let conffiles = host
        .exec(&["dpkg-query", "-W", "-f=${Conffiles}", "latch-control"])
        .ok("conffiles");
    assert!(conffiles.contains("/etc/latch/control.toml"), "{conffiles}");
    let checked = host
        .exec(&["/usr/bin/latch-control", "config", "check"])
        .ok("latch-control config check");
    assert!(
        checked.starts_with("/etc/latch/control.toml: ok\n"),
        "{checked}"
    );
    assert_unit_verifies(&host, "latch-control.service");
    // No systemd runs here (a container, a chroot): the unit is enabled all the same, for the
    // next boot.
    assert!(
        exists(
            &host,
            "/etc/systemd/system/multi-user.target.wants/latch-control.service"
        ),
        "the unit is enabled"
    );

    // The installed server runs as its user, as the unit starts it, and latchctl reaches it.
    let port = free_port();
    host.exec(&[
        "/bin/sh",
        "-c",
        &format!(
            "setpriv --reuid=latch-control --regid=latch-control --init-groups -- \
             /usr/bin/latch-control serve --data-dir /var/lib/latch-control --listen 127.0.0.1:{port} \
             </dev/null >/var/log/latch-control.log 2>&1 &"
        ),
    ])
    .ok("start latch-control");
    let url = format!("https://127.0.0.1:{port}");
    wait_for(
        "the packaged control plane",
        Duration::from_secs(30),
        || {
            host.read("/var/log/latch-control.log")
                .contains("listening on")
                .then_some(())
        },
    );
    for key in ["admin.token", "ca.key", "signing.key", "audit.key"] {
        assert_eq!(
            stat(&host, &format!("/var/lib/latch-control/{key}")),
            "600 latch-control latch-control",
            "{key}"
        );
    }
    let token = host.read("/var/lib/latch-control/admin.token");
    let hosts = host.exec(&[
        "env",
        &format!("LATCH_TOKEN={}", token.trim()),
        "/usr/bin/latchctl",
        "--server",
        &url,
        "--ca-file",
        "/var/lib/latch-control/ca.crt",
        "hosts",
        "list",
    ]);
    assert_eq!(hosts.code, 0, "latchctl hosts list: {hosts:?}");
    host.exec(&["pkill", "-x", "latch-control"])
        .ok("stop latch-control");

    // Removed: the programs go; the data, the user and the configuration stay.
    dpkg(&host, &["-r", "latch-control"], false).ok("dpkg -r");
    for gone in [
        "/usr/bin/latch-control",
        "/usr/bin/latchctl",
        "/lib/systemd/system/latch-control.service",
    ] {
        assert!(!exists(&host, gone), "{gone} is still there after dpkg -r");
    }
    assert!(exists(&host, "/etc/latch/control.toml"));
    assert_eq!(host.read("/var/lib/latch-control/admin.token"), token);

    // Purged: the configuration and the unit's traces go; the data and its user stay, as said.
    let purged = dpkg(&host, &["-P", "latch-control"], false).ok("dpkg -P");
    assert!(purged.contains("kept /var/lib/latch-control"), "{purged}");
    assert_eq!(status(&host, "latch-control"), "");
    assert!(!exists(&host, "/etc/latch"));
    let traces = unit_traces(&host, "latch-control");
    assert!(traces.trim().is_empty(), "left after purge: {traces}");
    assert_eq!(host.read("/var/lib/latch-control/admin.token"), token);
    assert_eq!(
        stat(&host, "/var/lib/latch-control"),
        "700 latch-control latch-control"
    );

    drop(host);
    real.assert_unchanged();
    real_etc.assert_unchanged();
}
