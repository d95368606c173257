//! Ending every process of a user: SIGTERM, a grace period, then SIGKILL.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Pids of the live processes whose real or effective UID is `uid`, read from `/proc`. Zombies
/// are left out: they run nothing and hold nothing, and only their parent can reap them.
pub fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let uid = uid.to_string();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim)
            };
            let zombie = field("State:")
                .is_some_and(|state| state.starts_with('Z') || state.starts_with('X'));
            let owned =
                field("Uid:").is_some_and(|ids| ids.split_whitespace().take(2).any(|id| id == uid));
            owned && !zombie
        })
        .collect()
}

/// Sends SIGTERM to every process of `uid`, waits up to `grace` for them to exit, then sends
/// SIGKILL to what is left. Returns how many processes remain (0 on success).
pub fn terminate_user(uid: u32, grace: Duration) -> usize {
    let signal_all = |signal| {
        for pid in processes_of(uid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    };
    if processes_of(uid).is_empty() {
        return 0;
    }
    signal_all(Signal::SIGTERM);
    let started = Instant::now();
    while started.elapsed() < grace && !processes_of(uid).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..20 {
        if processes_of(uid).is_empty() {
            return 0;
        }
        signal_all(Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(50));
    }
    processes_of(uid).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_processes_and_skips_zombies() {
        let me = nix::unistd::geteuid().as_raw();
        assert!(processes_of(me).contains(&(std::process::id() as i32)));
        // A child that exits and is not reaped yet is a zombie: not counted.
        let child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(Duration::from_millis(200));
        assert!(!processes_of(me).contains(&pid));
        drop(child);
        assert!(processes_of(4_000_000_000).is_empty());
    }
}
