//! The server: data directory set-up (database, admin token), the transport, and the
//! background sweep. `run` takes its listener and a shutdown future so tests can drive it.
//!
//! Transport lives here only: HTTPS (rustls, ring) with the data directory's CA by default;
//! plain HTTP only with `--insecure-http`, and then only on loopback addresses.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use thiserror::Error;
use tokio::net::TcpListener;

use crate::secret::{hash_token, new_token};
use crate::store::{SqliteStore, Store, StoreError};
use crate::{Control, ControlError};

/// Name of the database file in the data directory.
pub const DATABASE_FILE: &str = "latch.db";
/// Name of the admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the job-signing key file in the data directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The data directory could not be created or secured.
    #[error(
        "cannot prepare data directory {path}: {source}; choose another with --data-dir or fix its permissions"
    )]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The admin token file could not be written.
    #[error("cannot write the admin token to {path}: {source}")]
    AdminToken {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
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
    /// The system random generator failed.
    #[error(transparent)]
    Random(#[from] crate::secret::RandomError),
    /// The job-signing key could not be loaded or created.
    #[error(transparent)]
    Signing(#[from] crate::signing::SigningError),
    /// The server loop failed.
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
}

/// What [`open_data_dir`] found or created.
pub struct DataDir {
    /// The opened store.
    pub store: SqliteStore,
    /// Where the admin token is.
    pub admin_token_path: PathBuf,
    /// Whether a new admin token was created now.
    pub admin_token_created: bool,
    /// The job-signing key (`signing.key`, created on first start).
    pub signer: crate::signing::JobSigner,
    /// The next signing key, while a rotation is under way (`signing.next.key`).
    pub next_signer: Option<crate::signing::JobSigner>,
}

/// Creates `dir` (mode 0700) and the SQLite database in it if needed; on first start, creates
/// an admin token, stores its hash and writes it to `dir/admin.token` (mode 0600).
pub async fn open_data_dir(dir: &Path) -> Result<DataDir, ServerError> {
    let dir_error = |source| ServerError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
    let store = SqliteStore::open(&dir.join(DATABASE_FILE)).await?;
    let admin_token_path = dir.join(ADMIN_TOKEN_FILE);
    let mut admin_token_created = false;
    if !store.has_admin_token().await? {
        let token = new_token("latch_admin_")?;
        write_secret_file(&admin_token_path, &token).map_err(|source| ServerError::AdminToken {
            path: admin_token_path.clone(),
            source,
        })?;
        store
            .insert_admin_token(&hash_token(&token), Utc::now())
            .await?;
        admin_token_created = true;
    }
    let signer = crate::signing::JobSigner::load_or_create(&dir.join(SIGNING_KEY_FILE))?;
    let next_path = dir.join(crate::keys::NEXT_KEY_FILE);
    let next_signer = if next_path.exists() {
        Some(crate::signing::JobSigner::load_or_create(&next_path)?)
    } else {
        None
    };
    Ok(DataDir {
        store,
        admin_token_path,
        admin_token_created,
        signer,
        next_signer,
    })
}

fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
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

/// Serves the API on `listener` — over TLS with `tls`, else plain HTTP — until `shutdown`
/// completes. Once a second, in the background, it fails abandoned jobs and queues revocations
/// of expired grants.
pub async fn run(
    control: Arc<Control>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let sweeper = {
        let control = control.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(error) = control.sweep_abandoned_jobs().await {
                    tracing::error!(%error, "sweeping abandoned jobs failed");
                }
                if let Err(error) = control.revoke_expired_grants().await {
                    tracing::error!(%error, "queueing revocations of expired grants failed");
                }
            }
        })
    };
    let app = crate::api::router(control);
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
    result
}
