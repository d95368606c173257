//! `latchctl login`'s side of single sign-on: the loopback listener that receives the
//! identity provider's redirect, and the session file (`$XDG_CONFIG_HOME/latch/session`, or
//! `~/.config/latch/session`, mode 0600) that keeps the session token between commands.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Why signing in on this side failed.
#[derive(Debug, Error)]
pub enum LoginError {
    /// The session file could not be found, read or written.
    #[error("session file {path}: {message}")]
    SessionFile {
        /// Where.
        path: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The loopback listener failed.
    #[error("the loopback listener for the sign-in redirect failed: {0}")]
    Listener(std::io::Error),
    /// No redirect came back in time.
    #[error(
        "no sign-in came back within {0:?}; run `latchctl login` again (or `latchctl login --device` on a machine without a browser)"
    )]
    TimedOut(Duration),
    /// The provider redirected with an error.
    #[error("the identity provider refused the sign-in: {0}")]
    Provider(String),
}

/// What `latchctl login` keeps between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSession {
    /// The control plane it is for.
    pub server: String,
    /// The bearer token.
    pub token: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

/// `$XDG_CONFIG_HOME/latch/session`, or `$HOME/.config/latch/session`.
pub fn session_path() -> Result<PathBuf, LoginError> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => {
                return Err(LoginError::SessionFile {
                    path: "~/.config/latch/session".into(),
                    message: "neither XDG_CONFIG_HOME nor HOME is set; set one".into(),
                });
            }
        },
    };
    Ok(base.join("latch").join("session"))
}

fn file_error(path: &std::path::Path, message: String) -> LoginError {
    LoginError::SessionFile {
        path: path.display().to_string(),
        message,
    }
}

/// Writes the session file, mode 0600 (its directory 0700), replacing any earlier one.
pub fn save_session(session: &StoredSession) -> Result<PathBuf, LoginError> {
    let path = session_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e.to_string()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let text = serde_json::to_vec(session).map_err(|e| file_error(&path, e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_error(&tmp, e.to_string()))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| file_error(&path, e.to_string()))?;
    Ok(path)
}

/// The session file's contents, if there is one.
pub fn load_session() -> Result<Option<StoredSession>, LoginError> {
    let path = session_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            file_error(
                &path,
                format!("unreadable ({e}); delete it and run `latchctl login`"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(&path, e.to_string())),
    }
}

/// Deletes the session file (no error if there is none).
pub fn forget_session() -> Result<(), LoginError> {
    let path = session_path()?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(file_error(&path, e.to_string())),
        _ => Ok(()),
    }
}

/// A listener on 127.0.0.1 (a free port) for the provider's redirect.
pub struct Callback {
    listener: TcpListener,
}

impl Callback {
    /// Listens on `127.0.0.1:0`.
    pub async fn bind() -> Result<Self, LoginError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(LoginError::Listener)?;
        Ok(Self { listener })
    }

    /// The redirect URI to register with the sign-in: `http://127.0.0.1:PORT/callback`.
    pub fn redirect_uri(&self) -> Result<String, LoginError> {
        let port = self
            .listener
            .local_addr()
            .map_err(LoginError::Listener)?
            .port();
        Ok(format!("http://127.0.0.1:{port}/callback"))
    }

    /// Waits (at most `timeout`) for `GET /callback?…&state=STATE` and returns its `code`.
    /// Requests for other paths or states get 404 and are ignored.
    pub async fn wait(&self, state: &str, timeout: Duration) -> Result<String, LoginError> {
        tokio::time::timeout(timeout, self.accept_loop(state))
            .await
            .map_err(|_| LoginError::TimedOut(timeout))?
    }

    async fn accept_loop(&self, state: &str) -> Result<String, LoginError> {
        loop {
            let (mut stream, _) = self.listener.accept().await.map_err(LoginError::Listener)?;
            let mut buffer = vec![0u8; 8192];
            let mut read = 0;
            // Read the request head (bounded), a few seconds at most.
            let head = tokio::time::timeout(Duration::from_secs(5), async {
                while read < buffer.len() {
                    let n = stream.read(&mut buffer[read..]).await?;
                    if n == 0 {
                        break;
                    }
                    read += n;
                    if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(head, Ok(Ok(()))) {
                continue;
            }
            let text = String::from_utf8_lossy(&buffer[..read]);
            let target = text
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("GET "))
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or("");
            let parsed = url::Url::parse(&format!("http://127.0.0.1{target}")).ok();
            let Some(url) = parsed.filter(|u| u.path() == "/callback") else {
                let _ = respond(&mut stream, "404 Not Found", "not the sign-in callback").await;
                continue;
            };
            let pairs: std::collections::HashMap<String, String> =
                url.query_pairs().into_owned().collect();
            if pairs.get("state").map(String::as_str) != Some(state) {
                let _ = respond(
                    &mut stream,
                    "400 Bad Request",
                    "this is not the sign-in latchctl started",
                )
                .await;
                continue;
            }
            if let Some(error) = pairs.get("error") {
                let _ = respond(
                    &mut stream,
                    "400 Bad Request",
                    "the sign-in was refused; see the terminal",
                )
                .await;
                let description = pairs.get("error_description").cloned().unwrap_or_default();
                return Err(LoginError::Provider(
                    format!("{error} {description}").chars().take(300).collect(),
                ));
            }
            if let Some(code) = pairs.get("code") {
                let _ = respond(
                    &mut stream,
                    "200 OK",
                    "Signed in to Latch. You can close this window and return to the terminal.",
                )
                .await;
                return Ok(code.clone());
            }
            let _ = respond(
                &mut stream,
                "400 Bad Request",
                "the redirect carries no code",
            )
            .await;
        }
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
