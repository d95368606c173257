//! systemd's service protocol (`Type=notify`, `WatchdogSec=`): the agent says `READY=1` once
//! it has revoked what ended while it was stopped and its tasks run, and then pings the
//! watchdog at half its interval — but only while the expiry timer is alive and no revocation
//! has been running for longer than [`STUCK`]. A stuck or dead expiry timer stops the pings, so
//! systemd restarts the agent (`Restart=always`), and the restarted agent revokes at start.
//! Without `NOTIFY_SOCKET` (not started by systemd) all of this does nothing.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// A revocation pass running longer than this means the expiry timer is stuck (a pass takes
/// seconds: lock waits are bounded by `lock_wait_seconds`, process kills by the grace period).
pub const STUCK: Duration = Duration::from_secs(300);

/// The expiry timer's sign of life: when its loop last went round, and when its current
/// revocation pass started (Unix seconds; 0 while it is not revoking).
#[derive(Debug, Default)]
pub struct Heartbeat {
    beat: AtomicI64,
    busy_since: AtomicI64,
}

/// The expiry loop goes round at least this often while it is not revoking (it sleeps at most
/// 60 s, and retries failed revocations within 30 s).
const QUIET: i64 = 120;

impl Heartbeat {
    /// The loop went round.
    pub fn beat(&self) {
        self.beat
            .store(chrono::Utc::now().timestamp(), Ordering::Release);
    }

    /// A revocation pass starts.
    pub fn busy(&self) {
        self.busy_since
            .store(chrono::Utc::now().timestamp().max(1), Ordering::Release);
    }

    /// The pass ended.
    pub fn idle(&self) {
        self.busy_since.store(0, Ordering::Release);
        self.beat();
    }

    /// Why the expiry timer looks dead or stuck at `now` (Unix seconds), if it does.
    pub fn trouble(&self, now: i64) -> Option<String> {
        let busy_since = self.busy_since.load(Ordering::Acquire);
        let stuck = i64::try_from(STUCK.as_secs()).unwrap_or(i64::MAX);
        if busy_since != 0 {
            (now - busy_since > stuck)
                .then(|| format!("a revocation pass has been running for more than {stuck} s"))
        } else {
            let quiet = now - self.beat.load(Ordering::Acquire);
            (quiet > QUIET).then(|| format!("the expiry timer has not run for {quiet} s"))
        }
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

/// Pings the watchdog while the expiry timer is alive and not stuck; stops pinging for good
/// once it is not (systemd then restarts the agent). Returns at once when systemd set no
/// watchdog.
pub async fn run(heartbeat: std::sync::Arc<Heartbeat>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(trouble) = heartbeat.trouble(chrono::Utc::now().timestamp()) {
            tracing::error!(%trouble, "no longer pinging systemd's watchdog: systemd restarts the agent, which revokes at start");
            return;
        }
        if let Err(error) = sd_notify::notify(&[NotifyState::Watchdog]) {
            tracing::warn!(%error, "cannot ping systemd's watchdog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_is_in_trouble_only_when_quiet_or_revoking_for_too_long() {
        let heartbeat = Heartbeat::default();
        let now = chrono::Utc::now().timestamp();
        heartbeat.beat();
        assert_eq!(heartbeat.trouble(now), None);
        assert_eq!(heartbeat.trouble(now + QUIET), None);
        assert!(
            heartbeat.trouble(now + QUIET + 1).is_some(),
            "quiet too long"
        );
        heartbeat.busy();
        let limit = i64::try_from(STUCK.as_secs()).unwrap();
        assert_eq!(
            heartbeat.trouble(now + limit),
            None,
            "revoking, within the limit"
        );
        assert!(heartbeat.trouble(now + limit + 2).is_some(), "stuck");
        heartbeat.idle();
        assert_eq!(heartbeat.trouble(now + 1), None);
    }
}
