//! systemd's service protocol (`Type=notify`, `WatchdogSec=`): the agent says `READY=1` once
//! it has revoked what ended while it was stopped and its expiry timer runs, and then pings the
//! watchdog at half its interval — but only while the agent makes progress: the expiry timer
//! goes round (at least every [`QUIET`]), a revocation pass advances (a grant at least every
//! [`STUCK`]), and no job holds the worker longer than [`JOB_STUCK`]. Otherwise the pings stop,
//! systemd restarts the agent (`Restart=always`), and the restarted agent revokes at start.
//! Times are monotonic: a changed wall clock never stops the pings. Without `NOTIFY_SOCKET`
//! (not started by systemd) all of this does nothing.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// A revocation pass that revoked nothing for this long is stuck (one grant takes seconds: lock
/// waits are bounded by `lock_wait_seconds`, process kills by the grace period).
pub const STUCK: Duration = Duration::from_secs(300);

/// A job applied for longer than this is stuck (a tool hanging, e.g. on an unreachable name
/// service), and it holds up every other job, revocations included.
pub const JOB_STUCK: Duration = Duration::from_secs(900);

/// The expiry loop goes round at least this often while it is not revoking (it sleeps at most
/// 60 s, and retries failed revocations within 30 s).
pub const QUIET: Duration = Duration::from_secs(120);

/// Marks "not running" in the heartbeat's fields.
const IDLE: i64 = -1;

/// Milliseconds on the monotonic clock since the first call.
fn now_ms() -> i64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    i64::try_from(BASE.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The agent's sign of life: when the expiry loop last went round, when the current revocation
/// pass last made progress, and since when the current job runs (monotonic milliseconds).
#[derive(Debug)]
pub struct Heartbeat {
    beat: AtomicI64,
    revoking: AtomicI64,
    job: AtomicI64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            beat: AtomicI64::new(now_ms()),
            revoking: AtomicI64::new(IDLE),
            job: AtomicI64::new(IDLE),
        }
    }
}

impl Heartbeat {
    /// The expiry loop went round.
    pub fn beat(&self) {
        self.beat.store(now_ms(), Ordering::Release);
    }

    /// A revocation pass starts, or revoked one more grant.
    pub fn revoking(&self) {
        self.revoking.store(now_ms(), Ordering::Release);
    }

    /// The revocation pass ended.
    pub fn revoked(&self) {
        self.revoking.store(IDLE, Ordering::Release);
        self.beat();
    }

    /// A job starts being applied.
    pub fn job_started(&self) {
        self.job.store(now_ms(), Ordering::Release);
    }

    /// The job is done.
    pub fn job_done(&self) {
        self.job.store(IDLE, Ordering::Release);
    }

    /// Why the agent looks stuck at `now` (monotonic milliseconds), if it does.
    fn trouble_at(&self, now: i64) -> Option<String> {
        let revoking = self.revoking.load(Ordering::Acquire);
        let job = self.job.load(Ordering::Acquire);
        if revoking != IDLE && now - revoking > ms(STUCK) {
            return Some(format!(
                "a revocation pass has not advanced for more than {} s",
                STUCK.as_secs()
            ));
        }
        if revoking == IDLE && now - self.beat.load(Ordering::Acquire) > ms(QUIET) {
            return Some(format!(
                "the expiry timer has not run for more than {} s",
                QUIET.as_secs()
            ));
        }
        if job != IDLE && now - job > ms(JOB_STUCK) {
            return Some(format!(
                "a job has been applied for more than {} s",
                JOB_STUCK.as_secs()
            ));
        }
        None
    }

    /// Why the agent looks stuck now, if it does.
    pub fn trouble(&self) -> Option<String> {
        self.trouble_at(now_ms())
    }
}

/// Tells systemd the agent is ready, with a status line.
pub fn ready(status: &str) {
    if let Err(error) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!(%error, "cannot tell systemd the agent is ready");
    }
}

/// Tells systemd the agent is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its interval while the heartbeat shows progress; skips the pings
/// (systemd then restarts the agent) while it does not. Returns at once when systemd set no
/// watchdog.
pub async fn run(heartbeat: std::sync::Arc<Heartbeat>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = false;
    loop {
        tick.tick().await;
        match heartbeat.trouble() {
            Some(trouble) => {
                if !reported {
                    tracing::error!(%trouble, "not pinging systemd's watchdog: systemd restarts the agent, which revokes at start");
                    reported = true;
                }
            }
            None => {
                reported = false;
                if let Err(error) = sd_notify::notify(&[NotifyState::Watchdog]) {
                    tracing::warn!(%error, "cannot ping systemd's watchdog");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trouble_is_a_quiet_timer_a_pass_without_progress_or_a_long_job() {
        let heartbeat = Heartbeat::default();
        let start = now_ms();
        heartbeat.beat();
        assert_eq!(heartbeat.trouble_at(start), None);
        assert_eq!(heartbeat.trouble_at(start + ms(QUIET)), None);
        assert!(
            heartbeat.trouble_at(start + ms(QUIET) + 10).is_some(),
            "quiet"
        );

        heartbeat.revoking();
        let pass = now_ms();
        assert_eq!(
            heartbeat.trouble_at(pass + ms(STUCK)),
            None,
            "revoking, advancing"
        );
        assert!(
            heartbeat.trouble_at(pass + ms(STUCK) + 10).is_some(),
            "stuck"
        );
        heartbeat.revoked();
        assert_eq!(heartbeat.trouble_at(now_ms()), None);

        heartbeat.job_started();
        let job = now_ms();
        heartbeat.beat();
        assert_eq!(heartbeat.trouble_at(job + ms(QUIET) / 2), None);
        // (The timer would have gone round meanwhile: beat again to look at the job alone.)
        heartbeat.beat.store(job + ms(JOB_STUCK), Ordering::Release);
        assert!(
            heartbeat.trouble_at(job + ms(JOB_STUCK) + 10).is_some(),
            "long job"
        );
        heartbeat.job_done();
        assert_eq!(heartbeat.trouble_at(job + ms(JOB_STUCK) + 10), None);
    }
}
