//! Account changes through the distribution's own shadow-utils. Every call goes through
//! [`cmd::run_shadow_tool`], so a lock held by another program is waited out, and every
//! argument is a separate argv item. Names reaching this module were validated by
//! `latch_common::names` and re-checked by the planner.

use std::ffi::OsStr;
use std::time::Duration;

use super::cmd::{self, CmdError};

/// Shadow-utils, with how long to wait for a locked account file.
pub struct ShadowUtils {
    /// Longest time to retry while the account files are locked.
    pub lock_wait: Duration,
}

impl ShadowUtils {
    fn exec(&self, tool: &str, args: &[&OsStr], stdin: Option<&[u8]>) -> Result<(), CmdError> {
        cmd::run_shadow_tool(&cmd::tool(tool)?, args, stdin, self.lock_wait).map(drop)
    }

    /// `groupadd --system NAME`.
    pub fn add_system_group(&self, name: &str) -> Result<(), CmdError> {
        self.exec(
            "groupadd",
            &["--system".as_ref(), "--".as_ref(), name.as_ref()],
            None,
        )
    }

    /// `useradd` with an explicit UID, a private group whose GID is the same number, a home
    /// from `/etc/skel`, the shell, the GECOS tag and supplementary groups.
    ///
    /// With `many_groups` (a large `/etc/group`), the private group is made first with
    /// `groupadd --gid UID`, then `useradd --gid UID` without groups, then one
    /// `usermod --append --groups`: useradd's own group handling scans the whole group file
    /// for each group it touches, which took 0.4–0.6 s per account on a host with 10,000 groups,
    /// against 25–70 ms for each of the three calls. Otherwise one `useradd --user-group`, the
    /// GID forced with `-K GID_MIN=UID -K GID_MAX=UID` (shadow-utils otherwise takes the next
    /// free GID when the UID is above `GID_MAX` in `login.defs`). A failure part-way leaves a
    /// group or an account of this UID, which the caller's undo removes.
    #[allow(clippy::too_many_arguments)]
    pub fn add_user(
        &self,
        name: &str,
        uid: u32,
        shell: &str,
        gecos: &str,
        groups: &[String],
        expire_day: Option<i64>,
        many_groups: bool,
    ) -> Result<(), CmdError> {
        let id_keys = [
            format!("GID_MIN={uid}"),
            format!("GID_MAX={uid}"),
            format!("UID_MIN={uid}"),
            format!("UID_MAX={uid}"),
        ];
        let uid = uid.to_string();
        let groups = groups.join(",");
        let expire_day = expire_day.map(|d| d.to_string());
        if many_groups {
            self.exec(
                "groupadd",
                &["--gid".as_ref(), uid.as_ref(), "--".as_ref(), name.as_ref()],
                None,
            )?;
        }
        let mut args: Vec<&OsStr> = vec!["--uid".as_ref(), uid.as_ref()];
        if many_groups {
            args.extend::<[&OsStr; 3]>([
                "--gid".as_ref(),
                uid.as_ref(),
                "--no-user-group".as_ref(),
            ]);
        } else {
            args.push("--user-group".as_ref());
        }
        args.extend::<[&OsStr; 7]>([
            "--create-home".as_ref(),
            "--skel".as_ref(),
            "/etc/skel".as_ref(),
            "--shell".as_ref(),
            shell.as_ref(),
            "--comment".as_ref(),
            gecos.as_ref(),
        ]);
        for key in &id_keys {
            args.push("--key".as_ref());
            args.push(key.as_ref());
        }
        if !groups.is_empty() && !many_groups {
            args.push("--groups".as_ref());
            args.push(groups.as_ref());
        }
        if let Some(day) = &expire_day {
            // shadow-utils reads a plain number as days since the epoch (no time-zone guessing).
            args.push("--expiredate".as_ref());
            args.push(day.as_ref());
        }
        args.push("--".as_ref());
        args.push(name.as_ref());
        self.exec("useradd", &args, None)?;
        if many_groups && !groups.is_empty() {
            self.exec(
                "usermod",
                &[
                    "--append".as_ref(),
                    "--groups".as_ref(),
                    groups.as_ref(),
                    "--".as_ref(),
                    name.as_ref(),
                ],
                None,
            )?;
        }
        Ok(())
    }

    /// `gpasswd --add USER GROUP`.
    pub fn add_to_group(&self, user: &str, group: &str) -> Result<(), CmdError> {
        self.exec(
            "gpasswd",
            &[
                "--add".as_ref(),
                user.as_ref(),
                "--".as_ref(),
                group.as_ref(),
            ],
            None,
        )
    }

    /// `gpasswd --delete USER GROUP`.
    pub fn remove_from_group(&self, user: &str, group: &str) -> Result<(), CmdError> {
        self.exec(
            "gpasswd",
            &[
                "--delete".as_ref(),
                user.as_ref(),
                "--".as_ref(),
                group.as_ref(),
            ],
            None,
        )
    }

    /// `chpasswd --encrypted` with `user:hash` on stdin (never in argv).
    pub fn set_password_hash(&self, user: &str, hash: &str) -> Result<(), CmdError> {
        let line = format!("{user}:{hash}\n");
        self.exec("chpasswd", &["--encrypted".as_ref()], Some(line.as_bytes()))
    }

    /// `usermod --lock --expiredate 1 USER`: the password can no longer be used and the account
    /// is expired, so PAM refuses every new login, SSH keys included.
    pub fn lock_user(&self, user: &str) -> Result<(), CmdError> {
        self.exec(
            "usermod",
            &[
                "--lock".as_ref(),
                "--expiredate".as_ref(),
                "1".as_ref(),
                "--".as_ref(),
                user.as_ref(),
            ],
            None,
        )
    }

    /// `usermod --lock --expiredate 1 --groups KEEP USER`: [`ShadowUtils::lock_user`] and
    /// leaving every supplementary group but `keep` in one call (one pass over the account
    /// files instead of one per group).
    pub fn lock_user_keeping_groups(&self, user: &str, keep: &[String]) -> Result<(), CmdError> {
        let keep = keep.join(",");
        self.exec(
            "usermod",
            &[
                "--lock".as_ref(),
                "--expiredate".as_ref(),
                "1".as_ref(),
                "--groups".as_ref(),
                keep.as_ref(),
                "--".as_ref(),
                user.as_ref(),
            ],
            None,
        )
    }

    /// Asks `nscd` and `sssd` to drop cached users and groups, where they are installed.
    /// Failures are logged, not fatal: a cache that is not running holds nothing.
    pub fn invalidate_name_caches(&self) {
        let calls: [(&str, &[&str]); 3] = [
            ("nscd", &["--invalidate", "passwd"]),
            ("nscd", &["--invalidate", "group"]),
            ("sss_cache", &["-E"]),
        ];
        for (tool, args) in calls {
            if let Ok(path) = cmd::tool(tool) {
                let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
                if let Err(error) = cmd::run(&path, &args, None) {
                    tracing::debug!(%error, "name cache invalidation failed");
                }
            }
        }
    }

    /// `userdel --remove USER` (home and mail spool too); with `force`, also while the user
    /// is still logged in (`--force`).
    pub fn delete_user(&self, user: &str, force: bool) -> Result<(), CmdError> {
        let mut args: Vec<&OsStr> = vec!["--remove".as_ref()];
        if force {
            args.push("--force".as_ref());
        }
        args.push("--".as_ref());
        args.push(user.as_ref());
        self.exec("userdel", &args, None)
    }

    /// `groupdel NAME` (a private group left behind by a `useradd` that failed half-way).
    pub fn delete_group(&self, name: &str) -> Result<(), CmdError> {
        self.exec("groupdel", &["--".as_ref(), name.as_ref()], None)
    }

    /// `usermod --expiredate DAY USER` (days since the epoch), or no expiry with `None`.
    pub fn set_expiry(&self, user: &str, day: Option<i64>) -> Result<(), CmdError> {
        let day = day.map_or_else(String::new, |d| d.to_string());
        self.exec(
            "usermod",
            &[
                "--expiredate".as_ref(),
                day.as_ref(),
                "--".as_ref(),
                user.as_ref(),
            ],
            None,
        )
    }
}
