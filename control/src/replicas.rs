//! Several `latch-control` processes (replicas) on one PostgreSQL database.
//!
//! - **Wake-ups.** Every transaction that gives a host's agent something to fetch (a job queued,
//!   an outcome recorded, a job failed by the lease sweep, the host removed) sends
//!   `NOTIFY latch_wake_<schema>, '<host id>'`, delivered when it commits. Each replica listens
//!   on a connection of its own and wakes its local long-polls of that host. The listener checks
//!   its connection by notifying itself after [`HEARTBEAT`] of silence; a connection that is lost
//!   (or whose check does not come back) is replaced, and then every local poll is woken once,
//!   because notifications were missed meanwhile. Polls also look again at least every
//!   [`crate::ControlConfig::poll_recheck`] on their own.
//! - **One leader.** Periodic work that must run once across replicas (the abandoned-lease
//!   sweep, revocations of expired grants) runs only in the replica holding a session-level
//!   advisory lock on a dedicated connection. The lock lives as long as that session: when the
//!   leader's process dies (even by `kill -9`) the kernel closes its socket, PostgreSQL ends the
//!   session and releases the lock, and another replica takes it at its next try, within
//!   [`LEADER_RETRY`]. A leader whose host or network vanishes without closing the socket is
//!   dropped by the server's TCP keepalive (set to about 11 s on that session), and steps down
//!   by itself when its own check of the connection fails. Both sweeps are conditional updates
//!   (`FOR UPDATE SKIP LOCKED`, compare-and-set), so two leaders overlapping briefly are safe.
//!
//! A store that one process owns (SQLite) has no [`Coordination`]: its process always leads and
//! wakes its polls directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::Control;

/// How long a replica that does not lead waits between attempts to take the lead (and how
/// often the leader checks its connection).
pub const LEADER_RETRY: Duration = Duration::from_secs(2);

/// Silence on the wake-up connection after which the listener checks it end to end.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long one query of the coordination connections may take before the connection is
/// considered lost.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest wait between attempts to reconnect the wake-up listener.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Advisory lock class of the leader (`pg_try_advisory_lock(class, schema)`).
const LEADER_LOCK: i32 = 0x4C41_544C; // "LATL"

/// The `NOTIFY` channel of the wake-ups of the schema whose hash is `schema_key` (channels are
/// per database, so every Latch schema has its own).
pub(crate) fn wake_channel(schema_key: i32) -> String {
    format!("latch_wake_{:08x}", schema_key.cast_unsigned())
}

/// Why a coordination connection was given up (it is then made again).
#[derive(Debug, Error)]
enum Lost {
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error("PostgreSQL did not answer within {} s", QUERY_TIMEOUT.as_secs())]
    TimedOut,
    #[error("the connection was lost")]
    Closed,
    #[error("its own heartbeat notification did not come back within {} s", HEARTBEAT.as_secs())]
    NoHeartbeat,
}

async fn timed<T>(
    work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, Lost> {
    match tokio::time::timeout(QUERY_TIMEOUT, work).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(Lost::TimedOut),
    }
}

/// How the replicas on one PostgreSQL schema coordinate: the connection options and the
/// schema's key (for its lock and its channel).
#[derive(Clone)]
pub struct Coordination {
    options: PgConnectOptions,
    schema_key: i32,
    channel: String,
}

/// Whether this process leads the periodic work: always with a store of its own, and while
/// it holds the leader lock with a shared one.
#[derive(Debug, Clone)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// A process that always leads (the only one on its database).
    pub fn always() -> Self {
        Leadership(Arc::new(AtomicBool::new(true)))
    }

    /// Whether this process leads now.
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, leads: bool) -> bool {
        self.0.swap(leads, Ordering::AcqRel)
    }
}

/// The background tasks of a replica; aborted when dropped.
pub struct Replica {
    /// Whether this process leads the periodic work.
    pub leadership: Leadership,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts what `control` needs to run beside other replicas: the wake-up listener and the
/// leader election when its store is shared, nothing (and always leading) otherwise.
pub fn start(control: &Arc<Control>) -> Replica {
    match control.store.coordination() {
        None => Replica {
            leadership: Leadership::always(),
            tasks: Vec::new(),
        },
        Some(coordination) => {
            let leadership = Leadership(Arc::new(AtomicBool::new(false)));
            let election = {
                let coordination = coordination.clone();
                let leadership = leadership.clone();
                tokio::spawn(async move { coordination.elect(&leadership).await })
            };
            let listener = {
                let control = control.clone();
                tokio::spawn(async move { coordination.listen(&control).await })
            };
            Replica {
                leadership,
                tasks: vec![election, listener],
            }
        }
    }
}

/// Without the connection options: they may hold the database password.
impl std::fmt::Debug for Coordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordination")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Coordination {
    /// Coordination over the schema reached with `options` whose hash is `schema_key`.
    pub fn new(options: PgConnectOptions, schema_key: i32) -> Self {
        Coordination {
            options,
            schema_key,
            channel: wake_channel(schema_key),
        }
    }

    /// The connection options, named in `pg_stat_activity` as `latch-control ROLE CHANNEL`
    /// (the channel names the schema).
    fn named(&self, role: &str) -> PgConnectOptions {
        self.options
            .clone()
            .application_name(&format!("latch-control {role} {}", self.channel))
    }

    /// Takes the lead whenever it is free, holds it while the connection lives; never returns.
    async fn elect(&self, leadership: &Leadership) {
        loop {
            let lost = self.campaign(leadership).await;
            if leadership.set(false) {
                tracing::warn!(error = %lost, "this replica no longer leads the periodic work (its lock connection failed); another replica takes over");
            } else {
                tracing::warn!(error = %lost, "leader election: cannot reach PostgreSQL; trying again");
            }
            tokio::time::sleep(LEADER_RETRY).await;
        }
    }

    /// One connection's worth of [`Coordination::elect`]; returns why it ended.
    async fn campaign(&self, leadership: &Leadership) -> Lost {
        let run = async {
            let mut conn = timed(PgConnection::connect_with(&self.named("leader"))).await?;
            // The server drops a session whose peer vanished without closing the socket (host
            // or network lost) after about 5 + 3 × 2 s, releasing the lock.
            timed(conn.execute(
                "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; \
                 SET tcp_keepalives_count = 3",
            ))
            .await?;
            loop {
                let leads = if leadership.is_leader() {
                    // The lock lives as long as this session: a working session still holds it.
                    timed(sqlx::query("SELECT 1").execute(&mut conn)).await?;
                    true
                } else {
                    timed(
                        sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1, $2)")
                            .bind(LEADER_LOCK)
                            .bind(self.schema_key)
                            .fetch_one(&mut conn),
                    )
                    .await?
                };
                if leads && !leadership.set(true) {
                    tracing::info!(
                        "this replica now leads the periodic work (lease sweep, revocations of expired grants)"
                    );
                }
                tokio::time::sleep(LEADER_RETRY).await;
            }
        };
        match run.await {
            Ok(never) => never,
            Err(lost) => lost,
        }
    }

    /// Wakes local long-polls on the notifications of other replicas; never returns.
    async fn listen(&self, control: &Control) {
        let mut delay = Duration::from_millis(100);
        loop {
            let lost = match self.subscribe().await {
                Ok(mut listener) => {
                    // Anything queued while nobody listened: every local poll looks again.
                    control.wakeups.wake_all();
                    tracing::debug!(channel = %self.channel, "listening for wake-ups from other replicas");
                    delay = Duration::from_millis(100);
                    self.relay(&mut listener, control).await
                }
                Err(lost) => lost,
            };
            tracing::warn!(error = %lost, "the wake-up listener lost PostgreSQL; reconnecting (polls re-check on their own meanwhile)");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    async fn subscribe(&self) -> Result<PgListener, Lost> {
        // A pool of one, lazily connected: the listener's own connection.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(QUERY_TIMEOUT)
            .connect_lazy_with(self.named("listener"));
        let mut listener = timed(PgListener::connect_with(&pool)).await?;
        timed(listener.listen(&self.channel)).await?;
        Ok(listener)
    }

    /// Relays notifications to local polls until the connection fails.
    async fn relay(&self, listener: &mut PgListener, control: &Control) -> Lost {
        let mut pinged: Option<tokio::time::Instant> = None;
        loop {
            match tokio::time::timeout(HEARTBEAT, listener.try_recv()).await {
                Ok(Ok(Some(notification))) => match notification.payload() {
                    // Our own heartbeat (host ids are never empty).
                    "" => pinged = None,
                    host_id => control.wakeups.wake(host_id),
                },
                Ok(Ok(None)) => return Lost::Closed,
                Ok(Err(error)) => return Lost::Database(error),
                Err(_) if pinged.is_some_and(|at| at.elapsed() >= HEARTBEAT) => {
                    return Lost::NoHeartbeat;
                }
                Err(_) => {
                    // Quiet for a while: check the connection end to end by notifying ourselves.
                    if pinged.is_none() {
                        pinged = Some(tokio::time::Instant::now());
                    }
                    let ping = sqlx::query("SELECT pg_notify($1, '')")
                        .bind(&self.channel)
                        .execute(&mut *listener);
                    if let Err(lost) = timed(ping).await {
                        return lost;
                    }
                }
            }
        }
    }
}
