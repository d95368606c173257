//! `latch-agent run`: the daemon's tasks and its two modes.
//!
//! - **Polling**: long-poll for jobs and apply them ([`poll`]), send local revocations
//!   ([`expiry::flush_loop`]).
//! - **Revoke-only**: the control plane refused this host's credential (host removed, database
//!   restored, credential mix-up) or `/etc/machine-id` changed (a cloned image). Polling stops,
//!   but local expiry goes on, so every grant still ends on time. The reason is kept in
//!   `revoke-only.json` and shown by `latch-agent status`. A refused credential is checked
//!   again every [`RECHECK`] (a cloned identity never is); `latch-agent enroll --replace`
//!   enrolls the host again.
//!
//! In both modes the expiry timer ([`expiry::run`]) runs from start to stop: nothing the network
//! or the control plane does can stop a grant from ending.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use crate::client::{AgentClient, ClientError};
use crate::config::Config;
use crate::state::{Identity, RevokeOnly, StateDir};
use crate::{credential, expiry, facts, journal, poll, watchdog, worker};

/// How often a refused credential is tried again in revoke-only mode.
const RECHECK: Duration = Duration::from_secs(600);

/// Runs the agent until SIGTERM/SIGINT. `problem` (a configuration that could not be used)
/// puts it in revoke-only mode from the start.
pub async fn run(
    config: Config,
    mut problem: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let state = StateDir::open(&config.state_dir)?;
    let _lock = state.lock_waiting(Duration::from_secs(5))?;
    let replicas = config.servers.clone();
    let identity = match state.identity() {
        Ok(identity) => Some(identity),
        Err(error) => {
            problem.get_or_insert(format!(
                "the host's identity cannot be used ({error}); enroll it again with `latch-agent enroll --replace`"
            ));
            None
        }
    };
    tracing::info!(host_id = identity.as_ref().map_or("-", |i| i.host_id.as_str()), state_dir = %state.path().display(), "latch-agent started");
    let worker = Arc::new(worker::Worker::new(
        config,
        state.clone(),
        identity
            .as_ref()
            .map(|i| i.host_id.clone())
            .unwrap_or_default(),
    ));
    if let Err(error) = worker.prepare_host() {
        // Not fatal: revocation must run whatever sudo.conf looks like.
        tracing::error!(%error, "cannot set 'group_source dynamic' in /etc/sudo.conf; sudo in sessions opened before a revocation may keep working until they end");
    }
    match worker.prepare_sshd() {
        Ok(warnings) => {
            for warning in warnings {
                tracing::warn!("{warning}");
            }
        }
        // Not fatal either: accounts, keys and revocation work without the CA.
        Err(error) => {
            tracing::error!(%error, "cannot install the Latch SSH user CA for sshd; SSH certificates from Latch are not accepted on this host");
        }
    }
    // Grants that ended while the agent was down are revoked before anything else (before any
    // network call).
    let heartbeat = Arc::new(watchdog::Heartbeat::default());
    {
        let worker = worker.clone();
        let progress = heartbeat.clone();
        match tokio::task::spawn_blocking(move || {
            worker.revoke_expired(Utc::now(), &|| progress.revoking())
        })
        .await?
        {
            Ok(0) => {}
            Ok(count) => tracing::info!(
                count,
                "revoked grants that expired while the agent was stopped"
            ),
            Err(error) => {
                tracing::error!(code = %error.code, error = %error.message, "revoking expired grants at start failed; the expiry timer retries")
            }
        }
    }
    heartbeat.revoked();
    let grants_changed = Arc::new(tokio::sync::Notify::new());
    let outbox_ready = Arc::new(tokio::sync::Notify::new());
    let expiry = tokio::spawn(expiry::run(
        worker.clone(),
        grants_changed.clone(),
        outbox_ready.clone(),
        heartbeat.clone(),
    ));
    // Finish a credential rotation a crash interrupted, if any (network: the expiry timer
    // already runs).
    let identity = match identity {
        Some(identity) if identity.pending_credential.is_some() && problem.is_none() => {
            match credential::settle_pending(&state).await {
                Ok(settled) => Some(settled),
                Err(error) => {
                    tracing::warn!(%error, "cannot settle a pending credential rotation yet");
                    Some(identity)
                }
            }
        }
        other => other,
    };

    let mut mode = match (&problem, &identity) {
        (Some(reason), _) => Some(enter_revoke_only(&state, reason.clone(), false)),
        (None, Some(identity)) => first_mode(&state, identity),
        (None, None) => Some(Mode::RevokeOnly { recheck: false }),
    };
    watchdog::ready(match (&mode, &problem) {
        (None, _) => "revoking grants at their end; polling the control plane",
        (Some(_), Some(_)) => "REVOKE-ONLY: the configuration is not usable (see the log)",
        (Some(_), None) => "REVOKE-ONLY: see `latch-agent status`",
    });
    // After READY=1: systemd counts pings from then on.
    let watchdog = tokio::spawn(watchdog::run(heartbeat.clone()));
    tokio::pin!(shutdown);
    let result = loop {
        match mode.take() {
            None => {
                let Some(identity) = &identity else {
                    mode = Some(Mode::RevokeOnly { recheck: false });
                    continue;
                };
                let servers: Vec<&str> = std::iter::once(identity.server.as_str())
                    .chain(replicas.iter().map(String::as_str))
                    .collect();
                let client = AgentClient::with_servers(
                    &servers,
                    &identity.transport(),
                    Some(identity.credential.clone()),
                )?
                .recording_in(state.path().join(crate::status::SERVER_IN_USE_FILE));
                let flush: JoinHandle<()> = tokio::spawn(expiry::flush_loop(
                    client.clone(),
                    worker.clone(),
                    outbox_ready.clone(),
                ));
                let agent = poll::Agent {
                    client,
                    worker: worker.clone(),
                    journal: journal::Journal::open(state.path())?,
                    host_id: identity.host_id.clone(),
                    grants_changed: grants_changed.clone(),
                    catch_up: std::sync::atomic::AtomicBool::new(true),
                    recorder: crate::status::PollRecorder::new(state.path()),
                    state: state.clone(),
                    heartbeat: heartbeat.clone(),
                };
                let polled = tokio::select! {
                    result = agent.run() => Some(result),
                    () = &mut shutdown => None,
                };
                flush.abort();
                match polled {
                    None => break Ok(ExitCode::SUCCESS),
                    Some(Err(poll::PollError::Unauthorized(message))) => {
                        mode = Some(enter_revoke_only(
                            &state,
                            format!("the control plane refused this host's credential: {message}"),
                            true,
                        ));
                    }
                    Some(Err(error)) => break Err(error.into()),
                    Some(Ok(())) => break Ok(ExitCode::SUCCESS),
                }
            }
            Some(Mode::RevokeOnly { recheck }) => {
                tokio::select! {
                    () = &mut shutdown => break Ok(ExitCode::SUCCESS),
                    () = tokio::time::sleep(RECHECK), if recheck => {
                        if let Some(identity) = &identity && credential_accepted(identity).await {
                            tracing::warn!("the control plane accepts this host's credential again; leaving revoke-only mode");
                            if let Err(error) = state.clear_revoke_only() {
                                tracing::error!(%error, "cannot clear the revoke-only marker");
                            }
                        } else {
                            mode = Some(Mode::RevokeOnly { recheck });
                        }
                    }
                }
            }
        }
    };
    watchdog::stopping();
    expiry.abort();
    watchdog.abort();
    tracing::info!("stopping");
    result
}

/// The agent's mode.
enum Mode {
    /// Local expiry only; `recheck`: whether the credential is tried again now and then.
    RevokeOnly { recheck: bool },
}

/// Revoke-only from the start when the machine-id changed (never polls with a cloned
/// identity), when the identity holds no usable signing key, or when an earlier run found the
/// credential refused (checked again right away).
fn first_mode(state: &StateDir, identity: &Identity) -> Option<Mode> {
    match facts::machine_id() {
        Ok(machine_id) if machine_id != identity.machine_id => {
            return Some(enter_revoke_only(
                state,
                "/etc/machine-id changed since enrollment (a cloned image?); this host must be enrolled on its own: `latch-agent enroll --replace --server URL --ca-fingerprint sha256:… --token-file FILE`".to_owned(),
                false,
            ));
        }
        Ok(_) => {}
        Err(error) => {
            return Some(enter_revoke_only(
                state,
                format!(
                    "cannot read /etc/machine-id ({error}); the agent does not poll without knowing it is the enrolled machine"
                ),
                false,
            ));
        }
    }
    let pinned = identity
        .signing_key
        .as_deref()
        .and_then(latch_common::signing::decode_public_key);
    if pinned.is_none() {
        return Some(enter_revoke_only(
            state,
            "the identity holds no job-signing key (enrolled by an older agent); enroll this host again with `latch-agent enroll --replace`".to_owned(),
            false,
        ));
    }
    match state.revoke_only() {
        Ok(Some(earlier)) => {
            tracing::warn!(reason = %earlier.reason, since = %earlier.since, "the previous run was in revoke-only mode; trying the credential again");
            None
        }
        _ => None,
    }
}

fn enter_revoke_only(state: &StateDir, reason: String, recheck: bool) -> Mode {
    tracing::error!(%reason, "revoke-only mode: polling stopped; expiring grants are still revoked on time");
    let marker = RevokeOnly {
        reason,
        since: Utc::now(),
    };
    if let Err(error) = state.set_revoke_only(&marker) {
        tracing::error!(%error, "cannot record revoke-only mode");
    }
    Mode::RevokeOnly { recheck }
}

async fn credential_accepted(identity: &Identity) -> bool {
    match AgentClient::new(
        &identity.server,
        &identity.transport(),
        Some(identity.credential.clone()),
    ) {
        Ok(client) => match client.check_credential().await {
            Ok(()) => true,
            Err(ClientError::Unauthorized(_)) => false,
            Err(error) => {
                tracing::debug!(%error, "cannot check the credential yet");
                false
            }
        },
        Err(_) => false,
    }
}
