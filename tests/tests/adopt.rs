//! adopt-account end to end (DESIGN.md §2, one-click PAM enrollment of an existing account):
//! an ordinary account made by hand inside a test host is adopted — queued through the
//! control-plane library, the only door for the kind, as the control plane's enrollment flow
//! will — then `set-password` reaches it and PAM accepts the new password; the adopted account
//! is never deleted, and a re-created one is not adopted. Root (under any name) and system
//! accounts are refused unless the host allows system accounts.
//!
//! The adoption is queued from this process on the running control plane's own data directory
//! and database. A SQLite control plane is woken only by jobs it queued itself, so each
//! adoption is followed by a job queued through `latchctl`, which wakes the host's long-poll;
//! jobs of a host are delivered in sequence order, the adoption first.

use std::time::Duration;

use latch_control::datadir::{Database, Options};
use latch_control::{Control, ControlConfig};
use latch_e2e::{ControlPlane, RealEtc, TestDatabase, TestHost, e2e_enabled};
use serde_json::Value;

/// Queues `adopt-account` of `user` on `host` through the library, as the bootstrap admin, on
/// the control plane's data directory and database. The job id, or the library's refusal.
fn queue_adoption(cp: &ControlPlane, host: &str, user: &str) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let database = match cp.database.as_ref() {
            TestDatabase::Sqlite => Database::Sqlite,
            TestDatabase::Postgres { url, .. } => Database::Postgres(url.clone()),
        };
        let options = Options {
            database,
            ..Options::default()
        };
        let data = latch_control::datadir::open(&cp.data_dir.path().join("data"), &options)
            .await
            .expect("open the control plane's data directory");
        let control = Control::new(data.store, ControlConfig::default(), data.signer);
        let admin = control
            .authenticate(cp.token())
            .await
            .expect("the bootstrap admin's token");
        control
            .queue_adopt_account(&admin, host, user)
            .await
            .map(|job| job.id)
            .map_err(|e| e.to_string())
    })
}

/// Queues `set-password` of `user` through `latchctl`; returns the job id.
fn queue_password(cp: &ControlPlane, host: &str, user: &str, password: &str) -> String {
    let job = cp.create_password_job(host, user, password);
    job["id"].as_str().expect("job id").to_owned()
}

/// A failed job's error message.
fn error_message(job: &Value) -> &str {
    job["error"]["message"].as_str().unwrap_or_default()
}

/// The agent's adoption record of `user` (`accounts.json` inside the host), or `Null`.
fn adoption_record(host: &TestHost, user: &str) -> Value {
    let accounts: Value =
        serde_json::from_str(&host.read("/var/lib/latch/accounts.json")).expect("accounts.json");
    accounts["adopted"][user].clone()
}

#[test]
fn an_adopted_account_gets_its_password_set_and_is_never_deleted() {
    if !e2e_enabled("an_adopted_account_gets_its_password_set_and_is_never_deleted") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-adopt1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    host.exec(&["useradd", "-m", "-s", "/bin/bash", "legacy"])
        .ok("useradd legacy");
    let uid = host.uid_of("legacy").expect("legacy's UID");
    assert!(uid >= 1000, "an ordinary account: UID {uid}");

    // Not adopted yet: Latch refuses to set its password.
    let early = queue_password(&cp, "e2e-adopt1", "legacy", "too early for this");
    cp.expect_failed(&early, "account_not_managed");

    let adopt = queue_adoption(&cp, "e2e-adopt1", "legacy").expect("queue adopt-account");
    let password = "correct horse adopted staple";
    let set = queue_password(&cp, "e2e-adopt1", "legacy", password);
    let adopted = cp.expect_confirmed(&adopt);
    assert_eq!(adopted["kind"], "adopt-account", "{adopted:#}");
    let record = adoption_record(&host, "legacy");
    assert_eq!(record["uid"], uid, "{record:#}");
    assert_eq!(record["adopted_by_job"], adopt.as_str(), "{record:#}");
    cp.expect_confirmed(&set);
    let shadow = host.shadow_line("legacy").expect("legacy's shadow line");
    assert!(
        shadow
            .split(':')
            .nth(1)
            .is_some_and(|h| h.starts_with("$6$")),
        "{shadow}"
    );
    assert!(
        host.pam_accepts("legacy", password),
        "PAM refused the new password"
    );
    assert!(
        !host.pam_accepts("legacy", "wrong password"),
        "PAM accepted a wrong one"
    );
    assert!(
        !host.agent_log().contains(password) && !cp.log().contains(password),
        "the password reached a log"
    );

    // Adopting again changes nothing; delete-account never reaches an adopted account.
    let again = queue_adoption(&cp, "e2e-adopt1", "legacy").expect("queue adopt-account");
    let delete = cp.create_job(&[
        "--host",
        "e2e-adopt1",
        "--kind",
        "delete-account",
        "--user",
        "legacy",
    ]);
    let again = cp.expect_confirmed(&again);
    assert!(
        again["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("already adopted")),
        "{again:#}"
    );
    assert_eq!(
        adoption_record(&host, "legacy")["adopted_by_job"],
        adopt.as_str()
    );
    let refused = cp.expect_failed(&delete, "account_not_managed");
    assert!(error_message(&refused).contains("adopted"), "{refused:#}");
    assert!(
        host.passwd_line("legacy").is_some(),
        "the adopted account was deleted"
    );
    assert!(
        host.pam_accepts("legacy", password),
        "the adopted account was locked"
    );
    host.assert_account_files_clean();

    // Deleted and re-created by hand under the same name with another UID: someone else's.
    host.exec(&["userdel", "-r", "legacy"]).ok("userdel legacy");
    host.exec(&["useradd", "-m", "-u", "1500", "-s", "/bin/bash", "legacy"])
        .ok("useradd legacy again");
    let before = host.shadow_line("legacy");
    let other = queue_password(&cp, "e2e-adopt1", "legacy", "not for the new one");
    let refused = cp.expect_failed(&other, "account_not_managed");
    assert!(error_message(&refused).contains("UID 1500"), "{refused:#}");
    assert_eq!(
        host.shadow_line("legacy"),
        before,
        "the new account was changed"
    );
    real.assert_unchanged();
}

#[test]
fn root_and_system_accounts_are_adopted_only_as_the_host_allows() {
    if !e2e_enabled("root_and_system_accounts_are_adopted_only_as_the_host_allows") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-adopt2");
    host.enroll_ok(&cp);
    let agent = host.start_agent();
    // A second name for root, and a system account.
    host.exec(&[
        "useradd",
        "-o",
        "-u",
        "0",
        "-g",
        "0",
        "-M",
        "-s",
        "/bin/bash",
        "toor",
    ])
    .ok("useradd toor");
    host.exec(&["useradd", "-r", "-m", "-s", "/bin/bash", "svcacct"])
        .ok("useradd svcacct");
    assert!(host.uid_of("svcacct").is_some_and(|uid| uid < 1000));
    let root_shadow = host.shadow_line("root");

    // `root` by name never leaves the control plane.
    let refused = queue_adoption(&cp, "e2e-adopt2", "root").expect_err("adopt root");
    assert!(refused.contains("reserved"), "{refused}");

    let toor = queue_adoption(&cp, "e2e-adopt2", "toor").expect("queue adopt toor");
    let svc = queue_adoption(&cp, "e2e-adopt2", "svcacct").expect("queue adopt svcacct");
    let set = queue_password(&cp, "e2e-adopt2", "toor", "would be root's password");
    let failed = cp.expect_failed(&toor, "system_account");
    assert!(error_message(&failed).contains("UID 0"), "{failed:#}");
    let failed = cp.expect_failed(&svc, "system_account");
    assert!(
        error_message(&failed).contains("allow_adopt_system_accounts"),
        "{failed:#}"
    );
    cp.expect_failed(&set, "account_not_managed");
    assert_eq!(
        host.shadow_line("root"),
        root_shadow,
        "root's password changed"
    );
    assert!(adoption_record(&host, "toor").is_null());
    assert!(adoption_record(&host, "svcacct").is_null());

    // The host allows system accounts: svcacct is adopted and gets a password; root still not.
    agent.stop();
    host.write_agent_config("allow_adopt_system_accounts = true\n");
    let _agent = host.start_agent();
    let svc = queue_adoption(&cp, "e2e-adopt2", "svcacct").expect("queue adopt svcacct");
    let toor = queue_adoption(&cp, "e2e-adopt2", "toor").expect("queue adopt toor");
    let password = "service account secret";
    let set = queue_password(&cp, "e2e-adopt2", "svcacct", password);
    cp.expect_confirmed(&svc);
    cp.expect_failed(&toor, "system_account");
    cp.expect_confirmed(&set);
    assert!(
        host.pam_accepts("svcacct", password),
        "PAM refused the new password"
    );
    assert_eq!(
        host.shadow_line("root"),
        root_shadow,
        "root's password changed"
    );
    real.assert_unchanged();
}

/// DESIGN.md §3 rule 7: an agent killed (`kill -9`) after recording the adoption, before
/// journaling the outcome, verifies it again at the next delivery and reports one outcome:
/// confirmed.
#[test]
fn an_adoption_interrupted_by_kill_9_is_confirmed_once() {
    if !e2e_enabled("an_adoption_interrupted_by_kill_9_is_confirmed_once") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&["--lease-timeout", "2s"]);
    let host = TestHost::start("e2e-adopt3");
    host.enroll_ok(&cp);
    host.exec(&["useradd", "-m", "-s", "/bin/bash", "legacy"])
        .ok("useradd legacy");
    let agent = host.start_agent_paused_at("recorded");
    let adopt = queue_adoption(&cp, "e2e-adopt3", "legacy").expect("queue adopt-account");
    let password = "after the crash";
    let set = queue_password(&cp, "e2e-adopt3", "legacy", password);
    host.wait(
        "the agent to stop at 'recorded'",
        Duration::from_secs(20),
        || host.agent_log().contains("test pause").then_some(()),
    );
    assert_eq!(
        adoption_record(&host, "legacy")["adopted_by_job"],
        adopt.as_str()
    );
    agent.kill9();
    let _agent = host.start_agent();
    let adopted = cp.expect_confirmed(&adopt);
    assert!(
        adopted["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("verified again")),
        "{adopted:#}"
    );
    assert_eq!(adopted["attempts"], 2, "{adopted:#}");
    cp.expect_confirmed(&set);
    assert!(
        host.pam_accepts("legacy", password),
        "PAM refused the new password"
    );
    real.assert_unchanged();
}
