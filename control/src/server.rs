//! The server: the transport and the background sweep. `run` takes its listener and a shutdown
//! future so tests can drive it. The data directory (database, keys, admin token) is
//! [`crate::datadir`]; [`open_data_dir`] opens it with the default options.
//!
//! Transport lives here only: HTTPS (rustls, ring) with the data directory's CA by default;
//! plain HTTP only with `--insecure-http`, and then only on loopback addresses.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

pub use crate::datadir::DataDir;
pub use crate::files::{ADMIN_TOKEN_FILE, DATABASE_FILE, SIGNING_KEY_FILE};
use crate::store::StoreError;
use crate::{Control, ControlError};

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The data directory could not be opened, or a key in it is missing or wrong.
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A control-plane operation failed during start-up.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Plain HTTP was asked for on an address that is not loopback.
    #[error(
        "refusing to serve plain HTTP on {0}: --insecure-http is for development on loopback only (127.0.0.0/8 or ::1); drop --insecure-http to serve HTTPS"
    )]
    NotLoopback(SocketAddr),
    /// The TLS identity could not be prepared.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding the listening socket failed.
    #[error(
        "cannot listen on {addr}: {source}; is another process using the port? choose another with --listen"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The vault's schedules could not start.
    #[error(transparent)]
    Schedule(#[from] crate::vault::schedule::ScheduleError),
    /// The server loop failed.
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
}

/// Opens the data directory `dir` with the default [`crate::datadir::Options`]: creates it and
/// its keys on first start, refuses a missing or different key afterwards.
pub async fn open_data_dir(dir: &Path) -> Result<DataDir, ServerError> {
    Ok(crate::datadir::open(dir, &crate::datadir::Options::default()).await?)
}

/// Binds the API's listening socket. Plain HTTP (`tls` false) is refused on anything but
/// loopback.
pub async fn bind(addr: SocketAddr, tls: bool) -> Result<TcpListener, ServerError> {
    if !tls && !addr.ip().is_loopback() {
        return Err(ServerError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Sweep ticks (seconds) between deletions of ended sessions.
const SESSION_PURGE_EVERY: u64 = 300;

/// Serves the API on `listener` — over TLS with `tls`, else plain HTTP — until `shutdown`
/// completes. Once a second, in the background, it fails abandoned jobs and queues revocations
/// of expired grants — on a database shared by several replicas, only in the one that leads
/// ([`crate::replicas`]); a separate task records the audit chain's head outside the database
/// ([`Control::refresh_audit_head`]) in every replica's own data directory, so audit work never
/// delays a revocation. The leader also sends due webhook deliveries in a task of their own
/// ([`Control::deliver_webhooks`]).
pub async fn run(
    control: Arc<Control>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // With several replicas on one PostgreSQL database: wake-ups between them, and one leader
    // for the sweep below.
    let replica = crate::replicas::start(&control);
    let sweeper = {
        let control = control.clone();
        let leadership = replica.leadership.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut ticks: u64 = 0;
            loop {
                tick.tick().await;
                if !leadership.is_leader() {
                    continue;
                }
                if let Err(error) = control.sweep_abandoned_jobs().await {
                    tracing::error!(%error, "sweeping abandoned jobs failed");
                }
                if let Err(error) = control.revoke_expired_grants().await {
                    tracing::error!(%error, "queueing revocations of expired grants failed");
                }
                if let Err(error) = control.settle_rotations().await {
                    tracing::error!(%error, "settling vault rotations failed");
                }
                if let Err(error) = control.expire_pending_requests().await {
                    tracing::error!(%error, "expiring undecided access requests failed");
                }
                if let Err(error) = control.advance_access_requests().await {
                    tracing::error!(%error, "advancing access requests failed");
                }
                ticks += 1;
                if ticks.is_multiple_of(SESSION_PURGE_EVERY)
                    && let Err(error) = control.purge_ended_sessions().await
                {
                    tracing::error!(%error, "deleting ended sessions failed");
                }
            }
        })
    };
    let mut schedules =
        crate::vault::schedule::start(control.clone(), replica.leadership.clone()).await?;
    // Its own task: nothing the audit head does can delay the sweep (revocations above all).
    let head_keeper = {
        let control = control.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(error) = control.refresh_audit_head().await {
                    tracing::error!(%error, "recording the audit chain's head failed");
                }
            }
        })
    };
    // Its own task too: a slow webhook receiver must not delay the sweep above.
    let webhook_sender = {
        let control = control.clone();
        let leadership = replica.leadership.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if !leadership.is_leader() {
                    continue;
                }
                if let Err(error) = control.deliver_webhooks().await {
                    tracing::error!(%error, "delivering webhooks failed");
                }
            }
        })
    };
    // The console's own address when no public_url is set (it must be loopback then).
    let served = crate::console::ServedAt {
        scheme: if tls.is_some() { "https" } else { "http" },
        addr: listener.local_addr().map_err(ServerError::Serve)?,
    };
    let app = crate::api::router(control).layer(axum::Extension(served));
    let result = match tls {
        None => axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve),
        Some(config) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stopper.graceful_shutdown(Some(Duration::from_secs(5)));
            });
            let listener = listener.into_std().map_err(ServerError::Serve)?;
            axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(config),
            )
            .map_err(ServerError::Serve)?
            .handle(handle)
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .map_err(ServerError::Serve)
        }
    };
    sweeper.abort();
    head_keeper.abort();
    webhook_sender.abort();
    if let Err(error) = schedules.shutdown().await {
        tracing::warn!(%error, "stopping the vault's schedules failed");
    }
    drop(replica);
    result
}
