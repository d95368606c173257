//! CPU time, memory and open files of a process, from `/proc/<pid>/stat`, `/proc/<pid>/status`
//! and `/proc/<pid>/fd`.

use std::time::Instant;

use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was read.
    pub at: Instant,
    /// User + system CPU time so far, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory now, in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident memory so far, in bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Open file descriptors (sockets included).
    pub open_fds: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        // USER_HZ is 100 on every Linux architecture in use.
        _ => 100.0,
    }
}

/// utime + stime from the text of `/proc/<pid>/stat`, in clock ticks. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its closing parenthesis.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state (3), ppid (4), … utime is field 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The value in kB of `key` (e.g. `VmRSS:`) in the text of `/proc/<pid>/status`, in bytes.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Reads process `pid` (`None` when it is gone or unreadable).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    Some(Sample {
        at: Instant::now(),
        cpu_seconds: parse_stat_cpu_ticks(&stat)? as f64 / ticks_per_second(),
        rss_bytes: parse_status_kb(&status, "VmRSS:").unwrap_or(0),
        peak_rss_bytes: parse_status_kb(&status, "VmHWM:").unwrap_or(0),
        open_fds,
    })
}

/// What a process used over a phase of the run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// CPU time over the phase divided by its wall time, in percent of one core (200 = both
    /// cores of a 2-core machine busy).
    pub cpu_percent: f64,
    /// CPU seconds spent in the phase.
    pub cpu_seconds: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// Peak resident memory of the process's life, MiB.
    pub peak_rss_mib: f64,
    /// Most open file descriptors seen (sampled each second).
    pub peak_open_fds: u64,
}

impl Usage {
    /// Usage between two samples; `peak_open_fds` from the samples in between.
    pub fn between(start: &Sample, end: &Sample, peak_open_fds: u64) -> Usage {
        let wall = end.at.duration_since(start.at).as_secs_f64();
        let cpu = (end.cpu_seconds - start.cpu_seconds).max(0.0);
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        Usage {
            cpu_percent: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
            cpu_seconds: cpu,
            rss_mib: mib(end.rss_bytes),
            peak_rss_mib: mib(end.peak_rss_bytes),
            peak_open_fds: peak_open_fds.max(end.open_fds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (latch (ctl) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1500 250 0 0 20 0 9 0 1000 2000 300";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1750));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_kb_values_from_status() {
        let status = "Name:\tlatch-control\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(10240 * 1024));
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(20480 * 1024));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn samples_this_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0 && me.peak_rss_bytes >= me.rss_bytes && me.open_fds > 0);
    }
}
