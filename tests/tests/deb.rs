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
/// when `force`); refused unless `/usr` and `/var/lib` are the test host's overlays.
fn dpkg(host: &TestHost, args: &[&str], force: bool) -> Ran {
    let mut argv = vec!["dpkg"];
    argv.extend_from_slice(args);
    clean_env(host, &argv, force)
}

/// `argv` inside `host` as [`dpkg`] runs it: a clean environment (plus
/// `LATCH_AGENT_FORCE_REMOVE=yes` when `force`), only on the test host's overlays.
fn clean_env(host: &TestHost, argv: &[&str], force: bool) -> Ran {
    let mut command = vec!["env", "-i", PATH];
    if force {
        command.push("LATCH_AGENT_FORCE_REMOVE=yes");
    }
    command.extend_from_slice(argv);
    host.exec_on_private_packages(&command)
}

/// Whether one of the recorded systemctl `calls` asks `verb` (`start`, `restart`, …) of the
/// agent's unit.
fn called(calls: &str, verb: &str) -> bool {
    calls.lines().any(|call| {
        let words: Vec<&str> = call.split_whitespace().collect();
        words.contains(&verb) && words.contains(&"latch-agent.service")
    })
}

/// How many agents run in `host`.
fn agents_running(host: &TestHost) -> usize {
    host.processes_matching("latch-agent run").len()
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
/// it and runs the agent when asked to: lintian-clean; installed, it is neither enabled nor
/// started and says how to enroll; the installed agent enrolls, is enabled and started as the
/// README says, and applies jobs; an upgrade with the agent stopped keeps the enrollment, the
/// active grant and the operator's configuration, starts the agent (accounts of Latch's exist),
/// and the grant that ended while it was down is revoked at once; removal is refused while accounts Latch created
/// exist and leaves the agent running (forced, it stops the agent, keeps the state and the
/// configuration, and purge is refused in turn); installed again, the package starts the agent,
/// which still ends those accounts; with none left an upgrade leaves a stopped agent stopped,
/// and purge leaves nothing behind.
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

    // The installed agent enrolls, the operator enables and starts it as the README says (from
    // then on only the maintainer scripts start it), and it applies jobs: one grant that lasts,
    // one that ends soon.
    let token = cp.enroll_token("10m", 1);
    host.enroll_installed(&cp, &token).ok("latch-agent enroll");
    assert_eq!(stat(&host, "/var/lib/latch/identity.json"), "600 root root");
    host.exec(&["systemctl", "enable", "--now", "latch-agent"])
        .ok("systemctl enable --now latch-agent");
    assert!(exists(&host, AGENT_WANTED));
    assert_eq!(agents_running(&host), 1);
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

    // Upgrade, with the agent stopped past pkgbob's end. The operator's change to the
    // configuration file stays. Accounts of Latch's exist: the postinst starts the (enabled)
    // agent on the new binary, which revokes pkgbob at once.
    host.exec(&[
        "/bin/sh",
        "-c",
        "echo 'log_level = \"debug\"' >> /etc/latch/agent.toml",
    ])
    .ok("edit agent.toml");
    let identity = host.read("/var/lib/latch/identity.json");
    host.exec(&["systemctl", "stop", "latch-agent"])
        .ok("systemctl stop latch-agent");
    assert_eq!(agents_running(&host), 0);
    host.systemctl_calls();
    let left = (ends_at - chrono::Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(left + Duration::from_secs(1));
    assert!(
        host.passwd_line("pkgbob").is_some(),
        "nothing revokes while the agent is down"
    );
    let upgraded = dpkg(&host, &["-i", "/tmp/v2.deb"], false).ok("dpkg -i v2");
    let started = Instant::now();
    assert!(
        !upgraded.contains("not enrolled")
            && upgraded.contains("the agent, which ends them, is started"),
        "{upgraded}"
    );
    assert_eq!(
        host.exec(&["dpkg-query", "-W", "-f=${Version}", "latch-agent"])
            .stdout,
        "0.1.1-1"
    );
    let calls = host.systemctl_calls();
    assert!(
        called(&calls, "restart") && exists(&host, AGENT_WANTED),
        "the postinst must (re)start the agent while accounts of Latch's exist: {calls}"
    );
    assert_eq!(agents_running(&host), 1, "{calls}");
    host.wait(
        "the grant that ended during the upgrade to be revoked",
        Duration::from_secs(10),
        || host.passwd_line("pkgbob").is_none().then_some(()),
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "revoked {:?} after the upgrade",
        started.elapsed()
    );
    assert_eq!(host.read("/var/lib/latch/identity.json"), identity);
    assert!(
        host.read("/etc/latch/agent.toml")
            .ends_with("log_level = \"debug\"\n")
    );
    assert_eq!(stat(&host, "/var/lib/latch"), "700 root root");
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

    // Removal is refused while an account Latch created exists: nothing would end it. dpkg
    // then runs `postinst abort-remove`, which makes sure the agent runs.
    host.systemctl_calls();
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
    let calls = host.systemctl_calls();
    assert!(
        !called(&calls, "stop") && called(&calls, "start"),
        "{calls}"
    );
    assert_eq!(agents_running(&host), 1, "{calls}");

    // Forced: the agent is stopped, the programs go, the state and the configuration stay, and
    // so does the account.
    let removed = dpkg(&host, &["-r", "latch-agent"], true);
    assert_eq!(removed.code, 0, "{removed:?}");
    assert!(
        removed.stderr.contains("WARNING") && removed.stderr.contains("pkgalice"),
        "{removed:?}"
    );
    assert!(called(&host.systemctl_calls(), "stop"));
    assert_eq!(agents_running(&host), 0);
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

    // Installed again, the postinst starts the agent (nobody else does here), which carries
    // on with its enrollment and ends the account.
    let reinstalled = dpkg(&host, &["-i", "/tmp/v2.deb"], false).ok("dpkg -i again");
    assert!(
        !reinstalled.contains("not enrolled")
            && reinstalled.contains("the agent, which ends them, is started"),
        "{reinstalled}"
    );
    let calls = host.systemctl_calls();
    assert!(
        (called(&calls, "start") || called(&calls, "restart")) && exists(&host, AGENT_WANTED),
        "{calls}"
    );
    assert_eq!(agents_running(&host), 1, "{calls}");
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

    // With no account of Latch's left, an agent the operator stopped stays stopped through an
    // upgrade (try-restart), and remove and purge need no force; nothing is left.
    host.exec(&["systemctl", "stop", "latch-agent.service"])
        .ok("systemctl stop");
    host.systemctl_calls();
    let upgraded = dpkg(&host, &["-i", "/tmp/v2.deb"], false).ok("dpkg -i v2 again");
    assert!(
        !upgraded.contains("the agent, which ends them, is started"),
        "{upgraded}"
    );
    let calls = host.systemctl_calls();
    assert!(
        called(&calls, "try-restart") && !called(&calls, "start") && !called(&calls, "restart"),
        "{calls}"
    );
    assert_eq!(agents_running(&host), 0, "{calls}");
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

/// The agent's prerm and postinst run by hand in a test host (with the systemd stand-in, no
/// package needed) on the cases a package install does not reach: the record in the state_dir
/// agent.toml names counts (and only an uncommented state_dir line names one); the postinst
/// starts an enabled agent there and warns about one that is not; a state_dir line or a record
/// that cannot be read refuses removal with what to check; LATCH_AGENT_FORCE_REMOVE=yes removes
/// whatever the scripts could not read; an account created while prerm stops the agent
/// refuses the removal and starts the agent again, enabled or not. And the harness refuses to
/// write to `/usr` before it is the test host's overlay.
#[test]
fn the_agent_scripts_follow_state_dir_and_force_always_removes() {
    const TEST: &str = "the_agent_scripts_follow_state_dir_and_force_always_removes";
    if !package_test_runs(TEST) {
        return;
    }
    let real_etc = RealEtc::snapshot();
    let host = TestHost::start("e2e-deb-scripts");
    let real = RealSystem::snapshot();
    // What writes to /usr or /var/lib refuses to run before they are the test host's overlays.
    let refused = host.exec_on_private_packages(&["touch", "/usr/bin/latch-e2e-guard"]);
    assert!(
        refused.code == 1 && refused.stderr.contains("not the test host's overlay"),
        "{refused:?}"
    );
    assert!(!Path::new("/usr/bin/latch-e2e-guard").exists());
    host.private_packages();
    host.pretend_systemd();
    let packaging = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging"));
    host.copy_in(&packaging.join("debian/agent/prerm"), "/tmp/prerm");
    host.copy_in(&packaging.join("debian/agent/postinst"), "/tmp/postinst");
    host.copy_in(
        &packaging.join("systemd/latch-agent.service"),
        "/tmp/latch-agent.service",
    );
    clean_env(
        &host,
        &["cp", "/tmp/latch-agent.service", "/usr/lib/systemd/system/"],
        false,
    )
    .ok("the unit, in the overlay");
    // As dpkg runs them (deb-systemd-helper insists).
    let script = |name: &str, args: &[&str], force: bool| {
        let package = "DPKG_MAINTSCRIPT_PACKAGE=latch-agent".to_owned();
        let script_name = format!("DPKG_MAINTSCRIPT_NAME={name}");
        let path = format!("/tmp/{name}");
        let mut argv = vec![package.as_str(), script_name.as_str(), "sh", path.as_str()];
        argv.extend_from_slice(args);
        clean_env(&host, &argv, force)
    };
    let prerm = |force: bool| script("prerm", &["remove"], force);
    let postinst = || script("postinst", &["configure"], false);
    let record = |names: &[&str]| {
        let accounts: Vec<String> = names
            .iter()
            .map(|name| {
                format!("    \"{name}\": {{\n      \"uid\": 60001,\n      \"expires_at\": \"2030-01-01T00:00:00Z\"\n    }}")
            })
            .collect();
        // As serde_json pretty-prints it: an empty map is `{}`.
        let accounts = if accounts.is_empty() {
            "{}".to_owned()
        } else {
            format!("{{\n{}\n  }}", accounts.join(",\n"))
        };
        format!("{{\n  \"uid_high_water\": 60001,\n  \"accounts\": {accounts}\n}}\n")
    };
    host.write("/var/lib/latch/accounts.json", &record(&[]));
    host.write("/run/latch-custom/accounts.json", &record(&["custom1"]));
    host.write("/run/latch-custom/identity.json", "{}");

    // Commented out, state_dir names nothing: only /var/lib/latch counts, and it lists none.
    host.write_agent_config("# state_dir = \"/run/latch-custom\"\n");
    let ran = prerm(false);
    assert!(ran.code == 0 && !ran.stderr.contains("custom1"), "{ran:?}");
    let ran = postinst();
    assert!(ran.stdout.contains("not enrolled yet"), "{ran:?}");
    assert!(!called(&host.systemctl_calls(), "start"));

    // Set (a basic string with a comment after it, or an indented literal string): its record
    // counts, and removal is refused; the postinst starts the agent once its unit is enabled,
    // and says what to do while it is not.
    for line in [
        "state_dir = \"/run/latch-custom\"  # kept apart\n",
        "  state_dir='/run/latch-custom'\n",
    ] {
        host.write_agent_config(&format!("log_level = \"info\"\n{line}"));
        let ran = prerm(false);
        assert!(
            ran.code == 1
                && ran.stderr.contains("NOT removed")
                && ran
                    .stderr
                    .contains("custom1  (access ends: 2030-01-01T00:00:00Z)"),
            "{line}: {ran:?}"
        );
    }
    let ran = postinst();
    assert!(
        ran.code == 0
            && ran.stderr.contains("its unit is not enabled")
            && ran.stderr.contains("systemctl enable --now latch-agent"),
        "{ran:?}"
    );
    assert!(!called(&host.systemctl_calls(), "start"));
    host.exec(&["systemctl", "enable", "latch-agent"])
        .ok("systemctl enable");
    let ran = postinst();
    assert!(
        ran.code == 0
            && ran
                .stdout
                .contains("the agent, which ends them, is started"),
        "{ran:?}"
    );
    assert!(called(&host.systemctl_calls(), "start"));
    // Forced: removed, with the accounts named, and the directory said to stay.
    let ran = prerm(true);
    assert!(
        ran.code == 0
            && ran.stderr.contains("WARNING")
            && ran.stderr.contains("custom1")
            && ran
                .stderr
                .contains("/run/latch-custom (state_dir in /etc/latch/agent.toml) stays"),
        "{ran:?}"
    );
    assert!(called(&host.systemctl_calls(), "stop"));

    // A state_dir line it cannot read (an escape), a record that is not the agent's, or one it
    // cannot read at all: refused with what to check; forced, removed all the same.
    let cases = [
        (
            "state_dir = \"/run/latch-\\u0063ustom\"\n",
            None,
            "/etc/latch/agent.toml: its state_dir cannot be read",
        ),
        (
            "",
            Some("{\"accounts\": {\"truncated"),
            "/var/lib/latch/accounts.json: cannot be read as the agent's record",
        ),
        (
            "",
            Some(""),
            "/var/lib/latch/accounts.json: cannot be read as the agent's record",
        ),
    ];
    for (config, default_record, said) in cases {
        host.write_agent_config(config);
        match default_record {
            Some("") => {
                host.exec(&["rm", "-f", "/var/lib/latch/accounts.json"])
                    .ok("rm");
                host.exec(&["mkdir", "/var/lib/latch/accounts.json"])
                    .ok("a record awk cannot read");
            }
            Some(text) => host.write("/var/lib/latch/accounts.json", text),
            None => {}
        }
        let ran = prerm(false);
        assert!(
            ran.code == 1
                && ran
                    .stderr
                    .contains("cannot tell whether accounts created by Latch exist")
                && ran.stderr.contains(said)
                && ran.stderr.contains("LATCH_AGENT_FORCE_REMOVE=yes"),
            "{config}: {ran:?}"
        );
        let ran = prerm(true);
        assert!(
            ran.code == 0 && ran.stderr.contains("WARNING") && ran.stderr.contains(said),
            "{config} forced: {ran:?}"
        );
    }

    // The agent applies one more job while prerm stops it (a stand-in agent writes an account
    // into the record when told to stop): prerm refuses, and starts the agent again although
    // its unit is not enabled (deb-systemd-invoke would not).
    host.write_agent_config("");
    host.exec(&["rm", "-rf", "/var/lib/latch/accounts.json"])
        .ok("rm");
    host.write("/var/lib/latch/accounts.json", &record(&[]));
    host.write("/tmp/late.json", &record(&["late1"]));
    host.write(
        "/tmp/latch-agent",
        "#!/bin/sh\ntrap 'cp /tmp/late.json /var/lib/latch/accounts.json; exit 0' TERM\n\
         while :; do sleep 0.1; done\n",
    );
    clean_env(
        &host,
        &[
            "install",
            "-m",
            "0755",
            "/tmp/latch-agent",
            "/usr/bin/latch-agent",
        ],
        false,
    )
    .ok("a stand-in agent, in the overlay");
    host.exec(&["systemctl", "disable", "latch-agent"])
        .ok("systemctl disable");
    host.exec(&["systemctl", "start", "latch-agent"])
        .ok("systemctl start");
    assert_eq!(agents_running(&host), 1);
    host.systemctl_calls();
    let ran = prerm(false);
    assert!(
        ran.code == 1
            && ran.stderr.contains("created an account while stopping")
            && ran.stderr.contains("late1"),
        "{ran:?}"
    );
    let calls = host.systemctl_calls();
    assert!(called(&calls, "stop") && called(&calls, "start"), "{calls}");
    assert_eq!(agents_running(&host), 1, "{calls}");

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
