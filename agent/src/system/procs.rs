//! Ending a user's processes in a way the user cannot outrun.
//!
//! - Processes running as the user (real, effective or saved UID) are signalled by a helper that
//!   takes the user's UID (no groups, no capabilities) and calls `kill(-1, SIG)`: the kernel
//!   signals every process of that UID in one pass under the task-list lock, so a process that
//!   forks or re-spawns cannot slip between a scan and a kill, and no PID is ever guessed.
//! - Processes that descend from the user's logins but run as someone else — a root shell
//!   from `sudo -s`, a daemon started through sudo — carry the user's audit login UID
//!   (`/proc/PID/loginuid`, set by `pam_loginuid` at login and kept across sudo). They are
//!   stopped (SIGSTOP) first, scan after scan, so none can fork while the others are killed, and
//!   every signal goes through a pidfd opened and re-checked before use, so a reused PID is never
//!   hit.
//!
//! Zombies are never counted: they run nothing and only their parent can reap them.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// `loginuid` of a process that never logged in.
const NO_LOGINUID: u32 = u32::MAX;
/// Below this UID are root and system accounts, whose processes Latch never signals.
const MIN_USER_UID: u32 = 1000;
/// How long to keep killing before giving up.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// What `/proc/PID/status` and `/proc/PID/loginuid` say about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// PID (in the agent's PID namespace).
    pub pid: i32,
    /// Real, effective, saved and file-system UID.
    pub uids: [u32; 4],
    /// The audit login UID, if the process descends from a login.
    pub loginuid: Option<u32>,
    /// Supplementary group IDs (a process keeps them until it exits).
    pub groups: Vec<u32>,
    /// Stopped (`T`) or traced.
    pub stopped: bool,
}

impl ProcessInfo {
    /// Whether the process runs as `uid` (real, effective or saved UID).
    pub fn runs_as(&self, uid: u32) -> bool {
        self.uids[..3].contains(&uid)
    }

    /// Whether the process descends from a login of `uid` but runs as someone else.
    pub fn elevated_from(&self, uid: u32) -> bool {
        self.loginuid == Some(uid) && !self.runs_as(uid)
    }
}

/// Parses `/proc/PID/status` (and the `loginuid` file's text). `None` for a zombie or a
/// process that is gone.
pub fn parse_status(pid: i32, status: &str, loginuid: Option<&str>) -> Option<ProcessInfo> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let state = field("State:")?;
    if state.starts_with('Z') || state.starts_with('X') {
        return None;
    }
    let ids: Vec<u32> = field("Uid:")?
        .split_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect();
    let uids: [u32; 4] = ids.try_into().ok()?;
    let groups = field("Groups:")
        .map(|text| {
            text.split_whitespace()
                .filter_map(|id| id.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let loginuid = loginuid
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&id| id != NO_LOGINUID);
    Some(ProcessInfo {
        pid,
        uids,
        loginuid,
        groups,
        stopped: state.starts_with('T') || state.starts_with('t'),
    })
}

fn read_process(pid: i32) -> Option<ProcessInfo> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let loginuid = std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok();
    parse_status(pid, &status, loginuid.as_deref())
}

/// Every live process, read from `/proc`.
pub fn scan() -> Vec<ProcessInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(read_process)
        .collect()
}

/// Live processes of `uid`: running as it, or descending from its logins.
pub fn processes_of(uid: u32) -> Vec<ProcessInfo> {
    scan()
        .into_iter()
        .filter(|p| p.runs_as(uid) || p.loginuid == Some(uid))
        .collect()
}

/// Signals the process `pid` only if it is still the process `still` accepts: the pidfd is
/// opened first, then the process is read again, so a PID reused in between is never hit.
fn signal_checked(pid: i32, signal: Signal, still: impl Fn(&ProcessInfo) -> bool) -> bool {
    let Some(raw) = Pid::from_raw(pid) else {
        return false;
    };
    let Ok(pidfd): Result<OwnedFd, _> = pidfd_open(raw, PidfdFlags::empty()) else {
        return false;
    };
    match read_process(pid) {
        Some(info) if still(&info) => pidfd_send_signal(&pidfd, signal).is_ok(),
        _ => false,
    }
}

/// How long the `kill(-1)` helper may take. It runs with the user's UID, so the user can stop
/// it (SIGSTOP) before it signals anything: it is never waited on for longer, and the scan below
/// (run as root, which the user cannot stop) ends what it did not, the helper included.
const HELPER_DEADLINE: Duration = Duration::from_millis(500);

/// Runs `kill -s SIGNAL -- -1` as `uid` (no supplementary groups, no capabilities): the kernel
/// delivers `signal` to every process of `uid` at once. Spawned and waited on in a thread of its
/// own, given up after [`HELPER_DEADLINE`] (a stopped helper never blocks revocation; it is a
/// process of the UID, so the root scan kills it and the thread ends). Returns whether the
/// helper finished in time.
fn signal_all_as(uid: u32, gid: u32, signal: &'static str) -> bool {
    let Ok(kill) = super::cmd::tool("kill") else {
        return false;
    };
    let (done, finished) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("latch-kill-helper".into())
        .spawn(move || {
            let status = Command::new(kill)
                .args(["-s", signal, "--", "-1"])
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .current_dir("/")
                .uid(uid)
                .gid(gid)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = done.send(status.is_ok());
        });
    if spawned.is_err() {
        return false;
    }
    finished.recv_timeout(HELPER_DEADLINE).unwrap_or(false)
}

/// Ends every process of `uid` and every process descending from its logins (root shells
/// from sudo included): SIGTERM, up to `grace` to exit, then SIGKILL until none is left. Returns
/// the processes still alive after [`KILL_DEADLINE`] (empty on success).
pub fn end_all(uid: u32, gid: u32, grace: Duration) -> Vec<ProcessInfo> {
    end_matching(Some((uid, gid)), grace, |p| {
        p.runs_as(uid) || p.loginuid == Some(uid)
    })
}

/// The system programs that run as root with the user's login UID as part of a login itself
/// (sshd's privileged half of a session, `login`), not because the user elevated. Matched by
/// their full path, so a copy elsewhere (`/tmp/x/sshd`) is not exempt.
const LOGIN_SERVICES: &[&str] = &[
    "/usr/sbin/sshd",
    "/usr/lib/openssh/sshd-session",
    "/usr/libexec/openssh/sshd-session",
    "/usr/bin/login",
    "/bin/login",
];

/// Whether `pid` runs one of the [`LOGIN_SERVICES`].
fn is_login_service(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
        LOGIN_SERVICES
            .iter()
            .any(|service| exe == Path::new(service))
    })
}

/// Whether `process` descends from a login of `uid` and runs as someone else because the user
/// elevated (sudo, su), not as the login service holding the session.
fn elevated(process: &ProcessInfo, uid: u32) -> bool {
    process.elevated_from(uid) && !is_login_service(process.pid)
}

/// Whether `process` must end when `uid` loses a group: it descends from the user's logins and
/// runs as someone else (sudo), or — with `holding` — it runs as the user and still holds that
/// GID.
fn privileged(process: &ProcessInfo, uid: u32, holding: Option<u32>) -> bool {
    elevated(process, uid)
        || holding.is_some_and(|gid| process.runs_as(uid) && process.groups.contains(&gid))
}

/// Live processes that a revoked membership of `uid` must end (see [`end_privileged`]).
pub fn privileged_of(uid: u32, holding: Option<u32>) -> Vec<ProcessInfo> {
    scan()
        .into_iter()
        .filter(|p| privileged(p, uid, holding))
        .collect()
}

/// Ends what a revoked group membership of `uid` must not leave running: what the user started
/// through sudo from its logins and, with `holding` (a group whose power is holding it, not
/// sudo), the user's processes that still carry that GID. The user's other processes and
/// sessions stay. Returns what is still alive at the end.
pub fn end_privileged(uid: u32, holding: Option<u32>, grace: Duration) -> Vec<ProcessInfo> {
    if uid < MIN_USER_UID {
        // Never for root or a system account: Latch only ends what accounts it made started.
        return privileged_of(uid, holding);
    }
    end_matching(None, grace, |p| privileged(p, uid, holding))
}

/// Ends the processes `wanted` selects. `as_user` (UID, GID) also signals every process of
/// that UID at once through the `kill(-1)` helper.
fn end_matching(
    as_user: Option<(u32, u32)>,
    grace: Duration,
    wanted: impl Fn(&ProcessInfo) -> bool + Copy,
) -> Vec<ProcessInfo> {
    let left = || -> Vec<ProcessInfo> { scan().into_iter().filter(wanted).collect() };
    if as_user.is_some_and(|(uid, _)| uid < MIN_USER_UID) {
        // Never for root or a system account: Latch only ends processes of accounts it made.
        return left();
    }
    if left().is_empty() {
        return Vec::new();
    }
    // Polite first: SIGTERM (and SIGCONT, so a stopped process can act on it).
    if let Some((uid, gid)) = as_user {
        signal_all_as(uid, gid, "TERM");
        signal_all_as(uid, gid, "CONT");
    }
    for process in left() {
        signal_checked(process.pid, Signal::TERM, wanted);
        signal_checked(process.pid, Signal::CONT, wanted);
    }
    let started = Instant::now();
    while started.elapsed() < grace && !left().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    loop {
        if let Some((uid, gid)) = as_user {
            // One atomic pass over every process of the UID.
            signal_all_as(uid, gid, "KILL");
        }
        // Freeze the others first so none can fork while they are being killed, then kill.
        let mut frozen = Vec::new();
        for _ in 0..50 {
            let running: Vec<ProcessInfo> = left().into_iter().filter(|p| !p.stopped).collect();
            if running.is_empty() {
                break;
            }
            for process in &running {
                signal_checked(process.pid, Signal::STOP, wanted);
            }
            frozen.extend(running);
        }
        for process in left() {
            signal_checked(process.pid, Signal::KILL, wanted);
        }
        let remaining = left();
        if remaining.is_empty() {
            return remaining;
        }
        if started.elapsed() >= KILL_DEADLINE {
            // Nothing may stay frozen by us if it could not be killed.
            for process in &frozen {
                signal_checked(process.pid, Signal::CONT, wanted);
            }
            return remaining;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsleep\nState:\tS (sleeping)\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n";

    #[test]
    fn parses_ids_state_and_loginuid() {
        let info = parse_status(42, STATUS, Some("60001")).unwrap();
        assert_eq!(info.uids, [0, 0, 0, 0]);
        assert!(info.groups.is_empty());
        let with_groups = STATUS.replace("Gid:", "Groups:\t4 27 995\nGid:");
        let holder = parse_status(42, &with_groups, None).unwrap();
        assert_eq!(holder.groups, vec![4, 27, 995]);
        assert_eq!(info.loginuid, Some(60001));
        assert!(
            info.elevated_from(60001),
            "a root process of a login of 60001"
        );
        assert!(!info.runs_as(60001));
        let unset = parse_status(42, STATUS, Some("4294967295")).unwrap();
        assert_eq!(unset.loginuid, None);
        let zombie = STATUS.replace("S (sleeping)", "Z (zombie)");
        assert_eq!(parse_status(42, &zombie, None), None);
        let stopped = STATUS.replace("S (sleeping)", "T (stopped)");
        assert!(parse_status(42, &stopped, None).unwrap().stopped);
        let user = STATUS.replace("Uid:\t0\t0\t0\t0", "Uid:\t60001\t60001\t60001\t60001");
        let own = parse_status(7, &user, Some("60001")).unwrap();
        assert!(own.runs_as(60001) && !own.elevated_from(60001));
        assert_eq!(parse_status(1, "State:\tS\n", None), None, "no Uid line");
    }

    #[test]
    fn finds_own_processes_and_skips_zombies() {
        let me = nix::unistd::geteuid().as_raw();
        // The scan leaves the agent itself out; a child of ours is found.
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(processes_of(me).iter().any(|p| p.pid == pid));
        child.kill().unwrap();
        // Killed but not reaped yet: a zombie, not counted.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!processes_of(me).iter().any(|p| p.pid == pid));
        child.wait().unwrap();
        assert!(processes_of(4_000_000_000).is_empty());
    }

    #[test]
    fn a_pid_that_no_longer_matches_is_not_signalled() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The check says "not the process we meant": no signal.
        assert!(!signal_checked(pid, Signal::KILL, |_| false));
        assert_eq!(child.try_wait().unwrap(), None, "still running");
        assert!(signal_checked(pid, Signal::KILL, |p| p.pid == pid));
        assert!(child.wait().is_ok());
    }
}
