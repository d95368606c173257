//! A test hook for the crash tests: `LATCH_AGENT_TEST_PAUSE_AT=STAGE` makes the agent stop dead
//! at that stage (the test then kills it with `kill -9`). Stages: `received`, `applying`,
//! `half-applied` (after the first change a new account makes), `recorded` (applied and
//! recorded, outcome not journaled yet), `applied` (outcome journaled, not reported). Unset in
//! production.

/// The environment variable naming the stage.
pub const TEST_PAUSE_ENV: &str = "LATCH_AGENT_TEST_PAUSE_AT";

fn wanted(stage: &str) -> bool {
    std::env::var(TEST_PAUSE_ENV).is_ok_and(|v| v == stage)
}

/// Stops dead at `stage` if asked to (async tasks).
pub async fn pause(stage: &str) {
    if wanted(stage) {
        tracing::warn!(stage, "test pause: waiting to be killed");
        std::future::pending::<()>().await;
    }
}

/// Stops dead at `stage` if asked to (the blocking worker thread).
pub fn pause_blocking(stage: &str) {
    if wanted(stage) {
        tracing::warn!(stage, "test pause: waiting to be killed");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
