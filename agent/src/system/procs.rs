//! Ending every process of a user: SIGTERM, a grace period, then SIGKILL.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Pids of the processes whose real or effective UID is `uid`, read from `/proc`.
pub fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .is_some_and(|ids| {
                    ids.split_whitespace()
                        .take(2)
                        .any(|id| id == uid.to_string())
                })
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
