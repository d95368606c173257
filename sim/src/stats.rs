//! What the run measured: enqueue → confirmed latencies (HDR histograms), counters, errors by
//! kind, and the final [`Report`] (JSON, or a table for people).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procfs::Usage;

/// Which simulated job a latency belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKindSim {
    /// `create-account`.
    CreateAccount,
    /// `delete-account` of an account a create-account made earlier.
    DeleteAccount,
}

/// Latencies in microseconds, 1 µs to 10 min, 3 significant digits.
struct Latencies {
    all: Histogram<u64>,
    create: Histogram<u64>,
    delete: Histogram<u64>,
}

fn histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
}

/// Shared counters, updated by every agent and queueing task.
pub struct Stats {
    latencies: Mutex<Latencies>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Jobs the control plane accepted (201).
    pub queued: AtomicU64,
    /// Jobs the agents confirmed and the control plane acknowledged (204).
    pub confirmed: AtomicU64,
    /// Jobs an agent refused (signature, host, deadline, replay) and reported failed.
    pub refused: AtomicU64,
    /// Long-polls answered.
    pub polls: AtomicU64,
    /// Agents with a long-poll in flight right now.
    pub polling: AtomicI64,
    /// Agents enrolled.
    pub enrolled: AtomicU64,
    /// Agents whose enrollment failed.
    pub enroll_failed: AtomicU64,
    /// Connections opened again after one closed or failed.
    pub reconnects: AtomicU64,
}

impl Stats {
    /// Empty counters.
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            latencies: Mutex::new(Latencies {
                all: histogram()?,
                create: histogram()?,
                delete: histogram()?,
            }),
            errors: Mutex::default(),
            queued: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            polling: AtomicI64::new(0),
            enrolled: AtomicU64::new(0),
            enroll_failed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        })
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

impl Stats {
    /// Records one enqueue → confirmed latency.
    pub fn record_latency(&self, kind: JobKindSim, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        l.all.saturating_record(us);
        match kind {
            JobKindSim::CreateAccount => l.create.saturating_record(us),
            JobKindSim::DeleteAccount => l.delete.saturating_record(us),
        }
    }

    /// Counts one error of `kind` (e.g. `poll:closed`, `queue:too_many_requests`).
    pub fn error(&self, kind: impl Into<String>) {
        self.errors_add(kind, 1);
    }

    /// Counts `n` errors of `kind`.
    pub fn errors_add(&self, kind: impl Into<String>, n: u64) {
        if n == 0 {
            return;
        }
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(kind.into()).or_default() += n;
    }

    /// Errors so far.
    pub fn error_total(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Errors by kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// (all, create-account, delete-account) latencies.
    pub fn latencies(&self) -> (Latency, Latency, Latency) {
        let l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        (
            Latency::of(&l.all),
            Latency::of(&l.create),
            Latency::of(&l.delete),
        )
    }
}

/// Job counts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct JobCounts {
    /// Jobs the run was asked to queue.
    pub requested: u64,
    /// Jobs the control plane accepted.
    pub queued: u64,
    /// Jobs confirmed.
    pub confirmed: u64,
    /// Jobs the agents refused (bad signature, wrong host, past the deadline, replayed).
    pub refused: u64,
    /// Queued jobs neither confirmed nor refused when the run ended (`--drain-timeout`).
    pub not_confirmed: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// The command line.
    pub command: String,
    /// The started server's store as its banner names it (`sqlite`, `postgres`), or `external`.
    pub store: String,
    /// Control-plane URLs the agents were spread over.
    pub servers: Vec<String>,
    /// Simulated agents asked for.
    pub agents: u64,
    /// Agents enrolled.
    pub enrolled: u64,
    /// Agents with a long-poll in flight when queueing started.
    pub polling_at_load_start: u64,
    /// Seconds enrollment of all agents took.
    pub enroll_seconds: f64,
    /// Job counts.
    pub jobs: JobCounts,
    /// Jobs per second asked for.
    pub rate_target: f64,
    /// Jobs per second the control plane accepted while queueing.
    pub queue_rate: f64,
    /// Jobs confirmed per second, from the first job queued to the last confirmed.
    pub confirmed_per_second: f64,
    /// The fake work time of each job on the simulated host, ms (included in the latency).
    pub work_time_ms: f64,
    /// Enqueue (the admin's POST sent) → confirmed (the agent's report acknowledged), ms.
    pub latency_ms: Latency,
    /// The same for create-account jobs.
    pub latency_create_ms: Latency,
    /// The same for delete-account jobs.
    pub latency_delete_ms: Latency,
    /// Long-polls answered.
    pub polls: u64,
    /// Connections made again after one closed or failed.
    pub reconnects: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// All errors.
    pub error_total: u64,
    /// The control plane's process while jobs ran (when its PID is known).
    pub server: Option<Usage>,
    /// The control plane while agents enrolled and connected.
    pub server_enroll: Option<Usage>,
    /// This simulator while jobs ran (it shares the machine with the server).
    pub simulator: Usage,
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0} ms")
    } else {
        format!("{value:.1} ms")
    }
}

impl Report {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("date".into(), self.date.clone()),
            (
                "control plane".into(),
                format!("{} ({})", self.servers.join(", "), self.store),
            ),
            (
                "agents".into(),
                format!(
                    "{} enrolled of {} in {:.1} s; {} long-polling when jobs started",
                    self.enrolled, self.agents, self.enroll_seconds, self.polling_at_load_start
                ),
            ),
            (
                "jobs".into(),
                format!(
                    "{} queued of {}, {} confirmed, {} refused, {} not confirmed",
                    self.jobs.queued,
                    self.jobs.requested,
                    self.jobs.confirmed,
                    self.jobs.refused,
                    self.jobs.not_confirmed
                ),
            ),
            (
                "rate".into(),
                format!(
                    "asked {:.0}/s, queued {:.0}/s, confirmed {:.0}/s",
                    self.rate_target, self.queue_rate, self.confirmed_per_second
                ),
            ),
            ("fake work per job".into(), ms(self.work_time_ms)),
        ];
        for (name, l) in [
            ("enqueue → confirmed", &self.latency_ms),
            ("  create-account", &self.latency_create_ms),
            ("  delete-account", &self.latency_delete_ms),
        ] {
            rows.push((
                name.into(),
                format!(
                    "p50 {}  p95 {}  p99 {}  max {}  (n={})",
                    ms(l.p50),
                    ms(l.p95),
                    ms(l.p99),
                    ms(l.max),
                    l.count
                ),
            ));
        }
        let usage = |u: &Usage| {
            format!(
                "CPU {:.0}% of one core ({:.1} s), RSS {:.0} MiB (peak {:.0} MiB), up to {} open fds",
                u.cpu_percent, u.cpu_seconds, u.rss_mib, u.peak_rss_mib, u.peak_open_fds
            )
        };
        if let Some(server) = &self.server {
            rows.push(("server, jobs phase".into(), usage(server)));
        }
        if let Some(server) = &self.server_enroll {
            rows.push(("server, enrollment".into(), usage(server)));
        }
        rows.push(("simulator, jobs phase".into(), usage(&self.simulator)));
        rows.push((
            "polls, reconnects".into(),
            format!(
                "{} long-polls answered, {} reconnects",
                self.polls, self.reconnects
            ),
        ));
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(kind, n)| format!("{kind} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push(("errors".into(), errors));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in rows {
            let pad = width - key.chars().count();
            let _ = writeln!(out, "{key}{}  {value}", " ".repeat(pad));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let stats = Stats::new().unwrap();
        for ms in 1..=100u64 {
            stats.record_latency(JobKindSim::CreateAccount, Duration::from_millis(ms));
        }
        stats.record_latency(JobKindSim::DeleteAccount, Duration::from_secs(2));
        let (all, create, delete) = stats.latencies();
        assert_eq!(all.count, 101);
        assert_eq!(create.count, 100);
        assert!((create.p50 - 50.0).abs() < 0.1, "{create:?}");
        assert!((create.p99 - 99.0).abs() < 0.1, "{create:?}");
        assert!((delete.max - 2000.0).abs() < 2.0, "{delete:?}");
        assert!((all.max - 2000.0).abs() < 2.0, "{all:?}");
    }

    #[test]
    fn errors_by_kind() {
        let stats = Stats::new().unwrap();
        stats.error("poll:closed");
        stats.error("poll:closed");
        stats.errors_add("not_confirmed", 3);
        stats.errors_add("nothing", 0);
        assert_eq!(stats.error_total(), 5);
        assert_eq!(stats.errors().get("poll:closed"), Some(&2));
        assert!(!stats.errors().contains_key("nothing"));
    }
}
