use super::*;
use crate::state::{AdoptedAccount, GroupGrant, ManagedAccount};
use crate::system::etc::{parse_group, parse_passwd, parse_shadow};
use chrono::Utc;
use latch_common::job::JobErrorCode as Code;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          legacy:x:1001:1001:Legacy:/home/legacy:/bin/bash\n\
                          eph:x:60000:60000:latch-managed account:/home/eph:/bin/bash\n\
                          fake:x:60001:60001:latch-managed account:/home/fake:/bin/bash\n";
const GROUP: &str = "root:x:0:\nsudo:x:27:eph\nadm:x:4:eph\nlatch-managed:x:999:eph,fake\n\
                         legacy:x:1001:\neph:x:60000:\nfake:x:60001:\ntaken:x:60002:\n";
const SHADOW: &str = "root:*:1::::::\nlegacy:$6$a$b:1::::::\neph:!:1::::::\nfake:!:1::::::\n";

fn snapshot() -> Snapshot {
    Snapshot {
        passwd: parse_passwd(PASSWD).unwrap(),
        group: parse_group(GROUP).unwrap(),
        shadow: parse_shadow(SHADOW).unwrap(),
        shells: vec!["/bin/bash".into(), "/bin/sh".into()],
        malformed: Vec::new(),
        malformed_users: Vec::new(),
    }
}

fn accounts() -> Accounts {
    let mut accounts = Accounts {
        uid_high_water: 60001,
        ..Accounts::default()
    };
    // "fake" carries the marker and tag but the agent never recorded it.
    accounts.accounts.insert(
        "eph".into(),
        ManagedAccount {
            uid: 60000,
            created_by_job: "j".into(),
            created_at: Utc::now(),
            expires_at: None,
            group_grants: Default::default(),
        },
    );
    accounts
}

fn policy() -> Policy {
    Policy {
        allowed_groups: vec!["sudo".into()],
        uid_min: 60000,
        uid_max: 60999,
        default_shell: "/bin/bash".into(),
        sudo_checked_groups: vec!["sudo".into()],
        allow_adopt_system_accounts: false,
    }
}

fn plan_with(
    spec: &JobSpec,
    snapshot: &Snapshot,
    accounts: &Accounts,
    policy: &Policy,
) -> Result<Plan, JobError> {
    let facts = Facts {
        snapshot,
        accounts,
        policy,
        names: &FilesOnly,
    };
    plan(spec, "job-1", &facts)
}

fn check(spec: JobSpec, expected: Result<Vec<Step>, Code>) {
    let got = plan_with(&spec, &snapshot(), &accounts(), &policy())
        .map(|p| p.steps)
        .map_err(|e| e.code);
    assert_eq!(got, expected, "{spec:?}");
}

fn create(user: &str, groups: &[&str]) -> JobSpec {
    JobSpec::CreateAccount {
        user: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        shell: None,
        ssh_keys: vec![],
        expires_at: None,
        sudo: false,
        principals: vec![],
    }
}

fn delete(user: &str) -> JobSpec {
    JobSpec::DeleteAccount { user: user.into() }
}

fn remove_sudo(user: &str) -> JobSpec {
    JobSpec::RemoveGroup {
        user: user.into(),
        group: "sudo".into(),
    }
}

fn eph_removal() -> Vec<Step> {
    let end = Step::EndProcesses {
        uid: 60000,
        gid: 60000,
    };
    vec![
        Step::ClearSudoTimestamps { user: "eph".into() },
        end.clone(),
        Step::RemoveKeys { user: "eph".into() },
        Step::RemovePrincipals { user: "eph".into() },
        Step::LockAccount { user: "eph".into() },
        Step::RemoveFromGroup {
            user: "eph".into(),
            group: "sudo".into(),
        },
        Step::RemoveFromGroup {
            user: "eph".into(),
            group: "adm".into(),
        },
        Step::InvalidateNameCaches,
        end,
        Step::DeleteUser { user: "eph".into() },
        Step::ForgetAccount { user: "eph".into() },
    ]
}

#[test]
fn create_picks_an_unused_uid_above_the_high_water_mark() {
    check(
        create("alice", &["sudo"]),
        Ok(vec![
            Step::RecordAccount {
                user: "alice".into(),
                uid: 60003,
                expires_at: None,
            },
            Step::AddUser {
                user: "alice".into(),
                uid: 60003,
                shell: "/bin/bash".into(),
                groups: vec!["latch-managed".into(), "sudo".into()],
                expire_day: None,
            },
            Step::RecordGroupGrant {
                user: "alice".into(),
                group: "sudo".into(),
                job_id: "job-1".into(),
                expires_at: None,
            },
        ]),
    );
}

/// A directory (LDAP, SSSD) behind NSS that knows a user, a group, a UID and a GID the files
/// do not.
struct Directory;

impl NameService for Directory {
    fn user_exists(&self, name: &str) -> bool {
        name == "ldapuser"
    }
    fn group_exists(&self, name: &str) -> bool {
        name == "ldapgroup"
    }
    fn uid_taken(&self, uid: u32) -> bool {
        uid == 60003
    }
    fn gid_taken(&self, gid: u32) -> bool {
        gid == 60004
    }
}

/// Finding 13 (second half): a UID or name known only to the name service (LDAP, SSSD,
/// extrausers) is never handed out.
#[test]
fn finding_13_uids_and_names_known_to_nss_are_skipped() {
    let (snapshot, accounts, policy) = (snapshot(), accounts(), policy());
    let facts = Facts {
        snapshot: &snapshot,
        accounts: &accounts,
        policy: &policy,
        names: &Directory,
    };
    let steps = plan(&create("alice", &[]), "j", &facts).unwrap().steps;
    assert!(
        steps.contains(&Step::RecordAccount {
            user: "alice".into(),
            uid: 60005,
            expires_at: None
        }),
        "{steps:?}"
    );
    let refused = |user: &str| plan(&create(user, &[]), "j", &facts).unwrap_err().code;
    assert_eq!(refused("ldapuser"), Code::AccountExists);
    assert_eq!(refused("ldapgroup"), Code::GroupExists);
}

#[test]
fn create_refusals() {
    check(create("legacy", &[]), Err(Code::AccountExists));
    check(create("fake", &[]), Err(Code::AccountExists));
    check(create("taken", &[]), Err(Code::GroupExists));
    check(create("alice", &["root"]), Err(Code::GroupNotAllowed));
    check(create("alice", &["adm"]), Err(Code::GroupNotAllowed));
    check(
        JobSpec::CreateAccount {
            user: "alice".into(),
            groups: vec![],
            shell: Some("/usr/bin/evil".into()),
            ssh_keys: vec![],
            expires_at: None,
            sudo: false,
            principals: vec![],
        },
        Err(Code::ShellNotAllowed),
    );
    check(create("root", &[]), Err(Code::InvalidJob));
    check(create("-oops", &[]), Err(Code::InvalidJob));
}

#[test]
fn root_and_the_marker_are_never_granted_whatever_the_configuration() {
    let generous = Policy {
        allowed_groups: vec!["root".into(), MARKER_GROUP.into(), "sudo".into()],
        ..policy()
    };
    for group in ["root", MARKER_GROUP] {
        let err = plan_with(
            &JobSpec::AddGroup {
                user: "eph".into(),
                group: group.into(),
                expires_at: None,
            },
            &snapshot(),
            &accounts(),
            &generous,
        )
        .unwrap_err();
        assert_eq!(err.code, Code::GroupNotAllowed);
        assert!(err.message.contains("may never be granted"), "{err}");
    }
}

fn create_with(user: &str, groups: &[&str], sudo: bool, principals: &[&str]) -> JobSpec {
    JobSpec::CreateAccount {
        user: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        shell: None,
        ssh_keys: vec![],
        expires_at: None,
        sudo,
        principals: principals.iter().map(|p| p.to_string()).collect(),
    }
}

/// `sudo` joins the host's sudo group (the first allowed group that exists), once, recorded
/// as a grant like a named group; principals are written after the account exists.
#[test]
fn sudo_joins_the_first_existing_allowed_group_and_principals_are_written() {
    let steps = plan_with(
        &create_with("alice", &[], true, &["p-test", "ops"]),
        &snapshot(),
        &accounts(),
        &Policy {
            allowed_groups: vec!["wheel".into(), "sudo".into(), "adm".into()],
            ..policy()
        },
    )
    .unwrap()
    .steps;
    let add = steps
        .iter()
        .find_map(|s| match s {
            Step::AddUser { groups, .. } => Some(groups.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(add, vec![MARKER_GROUP.to_owned(), "sudo".to_owned()]);
    assert!(steps.contains(&Step::RecordGroupGrant {
        user: "alice".into(),
        group: "sudo".into(),
        job_id: "job-1".into(),
        expires_at: None,
    }));
    assert_eq!(
        steps.last(),
        Some(&Step::WritePrincipals {
            user: "alice".into(),
            principals: vec!["p-test".into(), "ops".into()],
        })
    );
    // Naming the group as well as asking for sudo joins it once.
    let steps = plan_with(
        &create_with("alice", &["sudo"], true, &[]),
        &snapshot(),
        &accounts(),
        &policy(),
    )
    .unwrap()
    .steps;
    let grants = steps
        .iter()
        .filter(|s| matches!(s, Step::RecordGroupGrant { .. }))
        .count();
    assert_eq!(grants, 1, "{steps:?}");
    assert!(
        !steps
            .iter()
            .any(|s| matches!(s, Step::WritePrincipals { .. }))
    );
    // Re-delivered to the existing account: the membership is already there.
    check(
        create_with("eph", &[], true, &["p-test"]),
        Ok(vec![
            Step::RecordGroupGrant {
                user: "eph".into(),
                group: "sudo".into(),
                job_id: "job-1".into(),
                expires_at: None,
            },
            Step::WritePrincipals {
                user: "eph".into(),
                principals: vec!["p-test".into()],
            },
        ]),
    );
}

#[test]
fn sudo_without_a_sudo_group_on_the_host_is_refused_clearly() {
    for allowed in [vec![], vec!["wheel".to_owned()], vec!["root".to_owned()]] {
        let err = plan_with(
            &create_with("alice", &[], true, &[]),
            &snapshot(),
            &accounts(),
            &Policy {
                allowed_groups: allowed.clone(),
                ..policy()
            },
        )
        .unwrap_err();
        assert_eq!(err.code, Code::NoSudoGroup, "{allowed:?}");
        assert!(err.message.contains("allowed_groups"), "{err}");
    }
    // Without sudo the same host creates the account.
    assert!(
        plan_with(
            &create_with("alice", &[], false, &[]),
            &snapshot(),
            &accounts(),
            &Policy {
                allowed_groups: vec![],
                ..policy()
            },
        )
        .is_ok()
    );
}

#[test]
fn create_redelivered_converges() {
    check(
        create("eph", &["sudo"]),
        Ok(vec![Step::RecordGroupGrant {
            user: "eph".into(),
            group: "sudo".into(),
            job_id: "job-1".into(),
            expires_at: None,
        }]),
    );
}

/// Finding 10: re-creating a managed account with another end applies the new end.
#[test]
fn finding_10_recreating_an_account_applies_the_new_expiry() {
    let end = Utc::now() + chrono::Duration::minutes(5);
    let spec = JobSpec::CreateAccount {
        user: "eph".into(),
        groups: vec![],
        shell: None,
        ssh_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBu2K6/pB0pY+4p2eGZq1jWbA5i6RzkmVfO2hXmLHqXh k"
                .into(),
        ],
        expires_at: Some(end),
        sudo: false,
        principals: vec![],
    };
    let steps = plan_with(&spec, &snapshot(), &accounts(), &policy())
        .unwrap()
        .steps;
    assert!(
        steps.contains(&Step::SetAccountExpiry {
            user: "eph".into(),
            expires_at: Some(end)
        }),
        "{steps:?}"
    );
    assert!(
        steps.iter().any(
            |s| matches!(s, Step::WriteKeys { lines, .. } if lines[0].starts_with("expiry-time="))
        ),
        "{steps:?}"
    );
}

#[test]
fn group_changes() {
    check(
        JobSpec::AddGroup {
            user: "eph".into(),
            group: "root".into(),
            expires_at: None,
        },
        Err(Code::GroupNotAllowed),
    );
    check(
        JobSpec::AddGroup {
            user: "legacy".into(),
            group: "sudo".into(),
            expires_at: None,
        },
        Err(Code::AccountNotManaged),
    );
    check(
        remove_sudo("eph"),
        Ok(vec![
            Step::RemoveFromGroup {
                user: "eph".into(),
                group: "sudo".into(),
            },
            Step::ClearSudoTimestamps { user: "eph".into() },
            Step::InvalidateNameCaches,
            Step::EndPrivilegedProcesses {
                uid: 60000,
                holding: None,
            },
            Step::ForgetGroupGrant {
                user: "eph".into(),
                group: "sudo".into(),
            },
        ]),
    );
    check(
        JobSpec::RemoveGroup {
            user: "eph".into(),
            group: "latch-managed".into(),
        },
        Err(Code::InvalidJob),
    );
    check(remove_sudo("legacy"), Err(Code::AccountNotManaged));
}

/// A revoked group other than sudo ends the user's processes that still hold it (sudo
/// checks membership at each use; `adm` or `docker` is held by the process itself).
#[test]
fn revoking_a_held_group_ends_the_processes_holding_it() {
    let steps = plan_with(
        &JobSpec::RemoveGroup {
            user: "eph".into(),
            group: "adm".into(),
        },
        &snapshot(),
        &accounts(),
        &policy(),
    )
    .unwrap()
    .steps;
    assert!(
        steps.contains(&Step::EndPrivilegedProcesses {
            uid: 60000,
            holding: Some(4)
        }),
        "{steps:?}"
    );
}

/// A Latch account whose own passwd line does not parse is still revoked (by name, its
/// processes by the recorded UID), never taken for gone.
#[test]
fn an_account_with_a_malformed_line_is_revoked_not_forgotten() {
    let mut files = snapshot();
    files.passwd.retain(|u| u.name != "eph");
    files.malformed_users = vec!["eph".into()];
    let plan = plan_with(&delete("eph"), &files, &accounts(), &policy()).unwrap();
    assert!(
        plan.steps
            .contains(&Step::DeleteUser { user: "eph".into() })
    );
    assert!(plan.steps.contains(&Step::EndProcesses {
        uid: 60000,
        gid: 60000
    }));
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::RemoveKeys { .. }))
    );
    let (records, policy) = (accounts(), policy());
    let facts = Facts {
        snapshot: &files,
        accounts: &records,
        policy: &policy,
        names: &FilesOnly,
    };
    assert_eq!(
        verify(&delete("eph"), &facts).unwrap_err().code,
        Code::VerifyFailed
    );
}

/// Finding 2: tightening `allowed_groups` must not stop the revocation of memberships
/// granted before: only granting checks policy.
#[test]
fn finding_2_tightened_allowed_groups_still_revoke() {
    let tightened = Policy {
        allowed_groups: vec![],
        uid_min: 61000,
        uid_max: 61999,
        ..policy()
    };
    let steps = plan_with(&remove_sudo("eph"), &snapshot(), &accounts(), &tightened)
        .unwrap()
        .steps;
    assert_eq!(
        steps[0],
        Step::RemoveFromGroup {
            user: "eph".into(),
            group: "sudo".into()
        }
    );
    // Deletion removes every supplementary group (adm was never in allowed_groups).
    let steps = plan_with(&delete("eph"), &snapshot(), &accounts(), &tightened)
        .unwrap()
        .steps;
    assert_eq!(steps, eph_removal());
    // Granting does check it.
    let err = plan_with(
        &JobSpec::AddGroup {
            user: "eph".into(),
            group: "sudo".into(),
            expires_at: None,
        },
        &snapshot(),
        &accounts(),
        &tightened,
    )
    .unwrap_err();
    assert_eq!(err.code, Code::GroupNotAllowed);
}

/// Finding 5: ownership must not hang on GECOS, which the user can rewrite with `chfn`.
#[test]
fn finding_5_a_rewritten_gecos_does_not_stop_revocation() {
    let mut snapshot = snapshot();
    for entry in &mut snapshot.passwd {
        if entry.name == "eph" {
            entry.gecos = "Eve,Room 1,555,555".into();
        }
    }
    let steps = plan_with(&delete("eph"), &snapshot, &accounts(), &policy())
        .unwrap()
        .steps;
    assert_eq!(steps, eph_removal());
    // ... and an operator's `usermod -G` that dropped the marker group does not either.
    for group in &mut snapshot.group {
        group.members.retain(|m| m != "eph");
    }
    let plan = plan_with(&delete("eph"), &snapshot, &accounts(), &policy()).unwrap();
    assert!(
        plan.steps
            .contains(&Step::DeleteUser { user: "eph".into() })
    );
}

#[test]
fn only_accounts_latch_created_are_deleted_or_changed() {
    check(delete("legacy"), Err(Code::AccountNotManaged));
    check(delete("fake"), Err(Code::AccountNotManaged));
    check(set_password("legacy"), Err(Code::AccountNotManaged));
    check(delete("eph"), Ok(eph_removal()));
    check(
        set_password("eph"),
        Ok(vec![Step::SetPasswordHash {
            user: "eph".into(),
            hash: "$6$x$y".into(),
        }]),
    );
}

fn adopt(user: &str) -> JobSpec {
    JobSpec::AdoptAccount { user: user.into() }
}

fn set_password(user: &str) -> JobSpec {
    JobSpec::SetPassword {
        user: user.into(),
        password_hash: "$6$x$y".into(),
    }
}

/// The fixture's records with `legacy` (UID 1001) adopted by job `a1`.
fn with_legacy_adopted() -> Accounts {
    let mut records = accounts();
    records.adopted.insert(
        "legacy".into(),
        AdoptedAccount {
            uid: 1001,
            adopted_by_job: "a1".into(),
            adopted_at: Utc::now(),
        },
    );
    records
}

/// The fixture's files with `legacy` deleted and re-created with another UID.
fn legacy_recreated() -> Snapshot {
    let mut files = snapshot();
    for entry in &mut files.passwd {
        if entry.name == "legacy" {
            entry.uid = 1500;
        }
    }
    files
}

/// The fixture's files plus a system account (`svc`, UID 998) and a root alias (`toor`).
fn with_system_accounts() -> Snapshot {
    let mut files = snapshot();
    files.passwd.extend(
        parse_passwd(
            "svc:x:998:998::/var/lib/svc:/usr/sbin/nologin\ntoor:x:0:0::/root:/bin/bash\n",
        )
        .unwrap(),
    );
    files
        .shadow
        .extend(parse_shadow("svc:!:1::::::\ntoor:*:1::::::\n").unwrap());
    files
}

#[test]
fn adopting_an_existing_ordinary_account_records_it() {
    check(
        adopt("legacy"),
        Ok(vec![Step::RecordAdoption {
            user: "legacy".into(),
            uid: 1001,
        }]),
    );
    // Re-delivery of the adopting job: nothing to do, nothing to say.
    let records = with_legacy_adopted();
    let facts = Facts {
        snapshot: &snapshot(),
        accounts: &records,
        policy: &policy(),
        names: &FilesOnly,
    };
    assert_eq!(plan(&adopt("legacy"), "a1", &facts), Ok(Plan::default()));
    // Another adopt of the same account changes nothing either, and says so.
    let again = plan(&adopt("legacy"), "a2", &facts).unwrap();
    assert!(again.steps.is_empty());
    assert!(
        again.notes[0].contains("already adopted by job a1"),
        "{again:?}"
    );
    // Deleted and re-created under the same name: an explicit adopt takes the new account.
    let files = legacy_recreated();
    let replaced = plan_with(&adopt("legacy"), &files, &records, &policy()).unwrap();
    assert_eq!(
        replaced.steps,
        vec![Step::RecordAdoption {
            user: "legacy".into(),
            uid: 1500
        }]
    );
    assert!(replaced.notes[0].contains("UID 1001"), "{replaced:?}");
}

#[test]
fn adopting_what_is_missing_or_latchs_own_is_refused() {
    check(adopt("alice"), Err(Code::NoSuchAccount));
    check(adopt("eph"), Err(Code::EphemeralAccount));
    // Marker group and GECOS tag but no record: an ephemeral account whose record is lost.
    check(adopt("fake"), Err(Code::EphemeralAccount));
    // A name whose Latch account is gone and now belongs to someone else: delete-account
    // drops the record first.
    let mut records = accounts();
    records.accounts.get_mut("eph").unwrap().uid = 60005;
    let err = plan_with(&adopt("eph"), &snapshot(), &records, &policy()).unwrap_err();
    assert_eq!(err.code, Code::EphemeralAccount);
    assert!(err.message.contains("delete-account"), "{err}");
    check(adopt("root"), Err(Code::InvalidJob));
    check(adopt("-oops"), Err(Code::InvalidJob));
    let mut files = snapshot();
    files.malformed = vec!["/etc/passwd line 9: expected 7 fields, found 1".into()];
    let err = plan_with(&adopt("legacy"), &files, &accounts(), &policy()).unwrap_err();
    assert_eq!(err.code, Code::AccountFilesMalformed);
    // Known only to the name service (LDAP, SSSD): not a local account to adopt.
    let (files, records, policy) = (snapshot(), accounts(), policy());
    let facts = Facts {
        snapshot: &files,
        accounts: &records,
        policy: &policy,
        names: &Directory,
    };
    let err = plan(&adopt("ldapuser"), "j", &facts).unwrap_err();
    assert_eq!(err.code, Code::NoSuchAccount);
    assert!(err.message.contains("name service"), "{err}");
}

/// DESIGN.md §3 rule 1: root and system accounts are refused unless the host allows them;
/// root (UID 0, under any name) always.
#[test]
fn root_and_system_accounts_are_adopted_only_as_the_host_allows() {
    let files = with_system_accounts();
    let strict = policy();
    let allowing = Policy {
        allow_adopt_system_accounts: true,
        ..policy()
    };
    let refused = |user: &str, policy: &Policy| {
        plan_with(&adopt(user), &files, &accounts(), policy).unwrap_err()
    };
    let err = refused("svc", &strict);
    assert_eq!(err.code, Code::SystemAccount);
    assert!(err.message.contains("allow_adopt_system_accounts"), "{err}");
    assert_eq!(
        plan_with(&adopt("svc"), &files, &accounts(), &allowing)
            .unwrap()
            .steps,
        vec![Step::RecordAdoption {
            user: "svc".into(),
            uid: 998
        }]
    );
    for policy in [&strict, &allowing] {
        let err = refused("toor", policy);
        assert_eq!(err.code, Code::SystemAccount);
        assert!(err.message.contains("UID 0"), "{err}");
    }
    // A system account adopted while allowed gets no password once the host stops
    // allowing it.
    let mut records = accounts();
    records.adopted.insert(
        "svc".into(),
        AdoptedAccount {
            uid: 998,
            adopted_by_job: "a1".into(),
            adopted_at: Utc::now(),
        },
    );
    assert!(plan_with(&set_password("svc"), &files, &records, &allowing).is_ok());
    let err = plan_with(&set_password("svc"), &files, &records, &strict).unwrap_err();
    assert_eq!(err.code, Code::SystemAccount);
}

#[test]
fn set_password_reaches_adopted_accounts_with_their_uid_only() {
    let records = with_legacy_adopted();
    let set = |files: &Snapshot| {
        plan_with(&set_password("legacy"), files, &records, &policy()).map(|p| p.steps)
    };
    assert_eq!(
        set(&snapshot()),
        Ok(vec![Step::SetPasswordHash {
            user: "legacy".into(),
            hash: "$6$x$y".into(),
        }])
    );
    // Not adopted: refused as before.
    check(set_password("legacy"), Err(Code::AccountNotManaged));
    // Deleted and re-created with another UID: someone else's account now.
    let err = set(&legacy_recreated()).unwrap_err();
    assert_eq!(err.code, JobErrorCode::AccountNotManaged);
    assert!(
        err.message.contains("UID 1001") && err.message.contains("UID 1500"),
        "{err}"
    );
    // Deleted.
    let mut gone = snapshot();
    gone.passwd.retain(|u| u.name != "legacy");
    assert_eq!(set(&gone).unwrap_err().code, Code::NoSuchAccount);
}

/// Adopted accounts are never deleted, locked, expired or given groups: only their password
/// is set.
#[test]
fn adopted_accounts_are_never_revoked() {
    let records = with_legacy_adopted();
    for spec in [
        delete("legacy"),
        remove_sudo("legacy"),
        JobSpec::AddGroup {
            user: "legacy".into(),
            group: "sudo".into(),
            expires_at: None,
        },
        create("legacy", &[]),
    ] {
        let err = plan_with(&spec, &snapshot(), &records, &policy()).unwrap_err();
        assert!(
            matches!(err.code, Code::AccountNotManaged | Code::AccountExists),
            "{spec:?}: {err}"
        );
        assert!(
            err.code == Code::AccountExists || err.message.contains("adopted"),
            "{spec:?}: {err}"
        );
    }
    let far = Utc::now() + chrono::Duration::days(365 * 100);
    assert!(expired(&records, far).is_empty());
    assert_eq!(next_expiry(&records), None);
}

#[test]
fn adoption_is_verified_on_the_files_and_the_record() {
    let files = snapshot();
    let verify_with = |files: &Snapshot, records: &Accounts| {
        let policy = policy();
        let facts = Facts {
            snapshot: files,
            accounts: records,
            policy: &policy,
            names: &FilesOnly,
        };
        verify(&adopt("legacy"), &facts).map_err(|e| e.code)
    };
    assert_eq!(verify_with(&files, &with_legacy_adopted()), Ok(()));
    assert_eq!(
        verify_with(&files, &accounts()),
        Err(Code::VerifyFailed),
        "no record"
    );
    assert_eq!(
        verify_with(&legacy_recreated(), &with_legacy_adopted()),
        Err(Code::VerifyFailed),
        "the record names another UID"
    );
}

#[test]
fn deleting_what_is_not_there_says_so() {
    let plan = plan_with(&delete("gone"), &snapshot(), &accounts(), &policy()).unwrap();
    assert!(plan.steps.is_empty());
    assert_eq!(
        plan.notes,
        vec!["account 'gone' does not exist on this host; nothing to do"]
    );
    // Recorded but gone, with its private group left behind by a failed useradd.
    let mut records = accounts();
    records.accounts.insert(
        "half".into(),
        ManagedAccount {
            uid: 60002,
            created_by_job: "j2".into(),
            created_at: Utc::now(),
            expires_at: None,
            group_grants: Default::default(),
        },
    );
    let mut files = snapshot();
    files
        .group
        .push(parse_group("half:x:60002:\n").unwrap().remove(0));
    let plan = plan_with(&delete("half"), &files, &records, &policy()).unwrap();
    assert_eq!(
        plan.steps,
        vec![
            Step::EndProcesses {
                uid: 60002,
                gid: 60002
            },
            Step::RemovePrincipals {
                user: "half".into()
            },
            Step::DeleteGroup {
                group: "half".into()
            },
            Step::ForgetAccount {
                user: "half".into()
            }
        ]
    );
    // The name now belongs to another UID: left alone, record dropped.
    records.accounts.get_mut("half").unwrap().uid = 60005;
    let mut files = snapshot();
    files.passwd.push(
        parse_passwd("half:x:1500:1500::/home/half:/bin/sh\n")
            .unwrap()
            .remove(0),
    );
    let plan = plan_with(&delete("half"), &files, &records, &policy()).unwrap();
    assert_eq!(
        plan.steps,
        vec![
            Step::RemovePrincipals {
                user: "half".into()
            },
            Step::ForgetAccount {
                user: "half".into()
            }
        ]
    );
    assert!(plan.notes[0].contains("belongs to someone else"));
}

/// Finding 16: a malformed account-file line refuses granting, not revoking.
#[test]
fn finding_16_malformed_files_refuse_grants_only() {
    let mut files = snapshot();
    files.malformed = vec!["/etc/passwd line 9: expected 7 fields, found 1".into()];
    let err = plan_with(&create("alice", &[]), &files, &accounts(), &policy()).unwrap_err();
    assert_eq!(err.code, Code::AccountFilesMalformed);
    assert!(err.message.contains("/etc/passwd line 9"), "{err}");
    let plan = plan_with(&delete("eph"), &files, &accounts(), &policy()).unwrap();
    assert_eq!(plan.steps, eph_removal());
}

#[test]
fn uid_range_exhaustion() {
    let tight = Policy {
        uid_min: 60000,
        uid_max: 60001,
        ..policy()
    };
    let err = plan_with(&create("alice", &[]), &snapshot(), &accounts(), &tight).unwrap_err();
    assert_eq!(err.code, Code::UidRangeExhausted);
}

#[test]
fn expiry_rounds_up_to_the_next_midnight_and_keys_carry_it() {
    let end = chrono::DateTime::parse_from_rfc3339("2026-11-23T15:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let midnight = chrono::DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(shadow_expire_day(end), midnight.timestamp() / 86_400);
    assert_eq!(shadow_expire_day(midnight), midnight.timestamp() / 86_400);
    let lines = authorized_key_lines(&["ssh-ed25519 AAAA k".into()], Some(end));
    assert_eq!(
        lines,
        vec!["expiry-time=\"20261123150000Z\" ssh-ed25519 AAAA k"]
    );
    assert_eq!(
        authorized_key_lines(&["ssh-ed25519 AAAA k".into()], None),
        vec!["ssh-ed25519 AAAA k"]
    );
}

#[test]
fn expired_grants_are_found_and_planned() {
    let now = Utc::now();
    let mut records = accounts();
    assert!(expired(&records, now).is_empty());
    assert_eq!(next_expiry(&records), None);
    let account = records.accounts.get_mut("eph").unwrap();
    account.group_grants.insert(
        "sudo".into(),
        GroupGrant {
            job_id: "g1".into(),
            expires_at: Some(now - chrono::Duration::seconds(1)),
        },
    );
    account.expires_at = Some(now + chrono::Duration::hours(1));
    assert_eq!(
        next_expiry(&records),
        Some(now - chrono::Duration::seconds(1))
    );
    let due = expired(&records, now);
    assert_eq!(
        due,
        vec![Expired::Group {
            user: "eph".into(),
            group: "sudo".into(),
            job_id: "g1".into()
        }]
    );
    let (files, policy) = (snapshot(), policy());
    let facts = Facts {
        snapshot: &files,
        accounts: &records,
        policy: &policy,
        names: &FilesOnly,
    };
    let steps = plan_expiry(&due[0], &facts).unwrap().steps;
    assert_eq!(
        steps[0],
        Step::RemoveFromGroup {
            user: "eph".into(),
            group: "sudo".into()
        }
    );

    let later = now + chrono::Duration::hours(2);
    let due = expired(&records, later);
    assert_eq!(
        due,
        vec![Expired::Account {
            user: "eph".into(),
            job_ids: vec!["j".into(), "g1".into()]
        }]
    );
    let steps = plan_expiry(&due[0], &facts).unwrap().steps;
    assert_eq!(steps[0], Step::ClearSudoTimestamps { user: "eph".into() });
    assert!(steps.contains(&Step::EndProcesses {
        uid: 60000,
        gid: 60000
    }));
    assert_eq!(
        steps.last(),
        Some(&Step::ForgetAccount { user: "eph".into() })
    );
}

#[test]
fn an_expired_account_reports_each_granting_job_once() {
    let mut records = accounts();
    let account = records.accounts.get_mut("eph").unwrap();
    account.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
    // "adm" sorts before "sudo": the creating job's own grant is not next to it.
    account.group_grants.insert(
        "adm".into(),
        GroupGrant {
            job_id: "g1".into(),
            expires_at: None,
        },
    );
    account.group_grants.insert(
        "sudo".into(),
        GroupGrant {
            job_id: "j".into(),
            expires_at: None,
        },
    );
    let due = expired(&records, Utc::now());
    assert_eq!(
        due,
        vec![Expired::Account {
            user: "eph".into(),
            job_ids: vec!["j".into(), "g1".into()]
        }]
    );
}

#[test]
fn verify_reads_the_post_condition() {
    let (files, records, policy) = (snapshot(), accounts(), policy());
    let facts = Facts {
        snapshot: &files,
        accounts: &records,
        policy: &policy,
        names: &FilesOnly,
    };
    assert_eq!(
        verify(&remove_sudo("eph"), &facts).unwrap_err().code,
        Code::VerifyFailed
    );
    let spec = JobSpec::AddGroup {
        user: "eph".into(),
        group: "sudo".into(),
        expires_at: None,
    };
    assert_eq!(verify(&spec, &facts), Ok(()));
    assert_eq!(
        verify(&delete("eph"), &facts).unwrap_err().code,
        Code::VerifyFailed
    );
    assert_eq!(verify(&delete("nobody-here"), &facts), Ok(()));
}

/// A create-account with `sudo` is confirmed only once the account is in the host's sudo
/// group.
#[test]
fn verify_checks_the_sudo_membership() {
    let (records, policy) = (accounts(), policy());
    let spec = create_with("eph", &[], true, &["p-test"]);
    let files = snapshot();
    let facts = Facts {
        snapshot: &files,
        accounts: &records,
        policy: &policy,
        names: &FilesOnly,
    };
    assert_eq!(verify(&spec, &facts), Ok(()));
    let mut without = snapshot();
    without.group = parse_group(&GROUP.replace("sudo:x:27:eph", "sudo:x:27:")).unwrap();
    let facts = Facts {
        snapshot: &without,
        ..facts
    };
    let err = verify(&spec, &facts).unwrap_err();
    assert_eq!(err.code, Code::VerifyFailed);
    assert!(err.message.contains("'sudo'"), "{err}");
}
