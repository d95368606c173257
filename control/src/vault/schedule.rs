//! The vault's schedules (tokio-cron-scheduler), run by the leading replica only: the
//! scheduled-rotation sweep (every 30 minutes by default) and the expired-checkout sweep
//! (every minute by default). Rotations are settled by the server's one-second sweep.

use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::Control;
use crate::replicas::Leadership;

/// Why the schedules could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the vault's schedules: {0}")]
pub struct ScheduleError(#[from] JobSchedulerError);

/// Checks a cron expression (six fields, with seconds: `0 */30 * * * *`).
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    Job::new_async(schedule, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{schedule:?} is not a cron expression with seconds ({e}); e.g. \"0 */30 * * * *\" is every 30 minutes"
            )
        })
}

/// A job of `scheduler` on `schedule` that runs `sweep` in the leading replica only, and logs
/// what it did as `what`.
async fn add_leader_job<F, Fut>(
    scheduler: &JobScheduler,
    schedule: &str,
    leadership: Leadership,
    what: &'static str,
    sweep: F,
) -> Result<(), ScheduleError>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<u32, crate::ControlError>> + Send + 'static,
{
    let job = Job::new_async(schedule, move |_, _| {
        let leadership = leadership.clone();
        let sweep = sweep.clone();
        Box::pin(async move {
            if !leadership.is_leader() {
                return;
            }
            match sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "{what}"),
                Err(error) => tracing::error!(%error, "{what}: the sweep failed"),
            }
        })
    })?;
    scheduler.add(job).await?;
    Ok(())
}

/// Starts both sweeps; they do nothing in a replica that does not lead.
pub async fn start(
    control: Arc<Control>,
    leadership: Leadership,
) -> Result<JobScheduler, ScheduleError> {
    let scheduler = JobScheduler::new().await?;
    let config = control.config().vault.clone();
    let rotations = control.clone();
    add_leader_job(
        &scheduler,
        &config.sweep_schedule,
        leadership.clone(),
        "scheduled rotations started",
        move || {
            let control = rotations.clone();
            async move { control.rotate_due_identities().await }
        },
    )
    .await?;
    add_leader_job(
        &scheduler,
        &config.checkout_sweep_schedule,
        leadership,
        "expired checkouts checked in",
        move || {
            let control = control.clone();
            async move { control.check_in_expired(None).await }
        },
    )
    .await?;
    scheduler.start().await?;
    Ok(scheduler)
}
