//! Enrollment: send the token and this host's facts once, keep the identity that comes back.

use chrono::Utc;
use latch_common::api::EnrollRequest;
use thiserror::Error;

use crate::client::{AgentClient, ClientError, Transport};
use crate::facts;
use crate::state::{Identity, StateDir, StateError};

/// Why enrollment failed. Nothing is written in any of these cases.
#[derive(Debug, Error)]
pub enum EnrollError {
    /// Already enrolled.
    #[error(
        "this host is already enrolled as {host_id} with {server} ({path}); to enroll it again (e.g. after `latchctl hosts remove`), stop the agent and add --replace"
    )]
    AlreadyEnrolled {
        /// Existing host id.
        host_id: String,
        /// Existing server.
        server: String,
        /// Identity file.
        path: String,
    },
    /// The control plane sent no usable job-signing key.
    #[error(
        "the control plane sent no valid job-signing key; is it a Latch control plane of a matching version?"
    )]
    BadSigningKey,
    /// Host facts could not be read.
    #[error("cannot read this host's facts: {0}")]
    Facts(std::io::Error),
    /// The control plane refused or failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The identity could not be stored.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Enrolls with `server` using `token`, storing the identity in `state`. With `replace`, an
/// existing identity is replaced once the new enrollment succeeded: the accounts Latch created
/// and their grants stay (they still end on time); what belonged to the old enrollment (job
/// sequence numbers, the job journal, unsent revocation reports, revoke-only mode) goes.
pub async fn enroll(
    server: &str,
    transport: &Transport,
    token: &str,
    state: &StateDir,
    replace: bool,
) -> Result<Identity, EnrollError> {
    if state.is_enrolled() && !replace {
        let existing = state.identity()?;
        return Err(EnrollError::AlreadyEnrolled {
            host_id: existing.host_id,
            server: existing.server,
            path: state
                .path()
                .join(crate::state::IDENTITY_FILE)
                .display()
                .to_string(),
        });
    }
    let facts = facts::collect().map_err(EnrollError::Facts)?;
    let client = AgentClient::new(server, transport, None)?;
    let response = client
        .enroll(&EnrollRequest {
            token: token.to_owned(),
            facts: facts.clone(),
        })
        .await?;
    if latch_common::signing::decode_public_key(&response.signing_key).is_none() {
        return Err(EnrollError::BadSigningKey);
    }
    let identity = Identity {
        server: server.trim_end_matches('/').to_owned(),
        host_id: response.host_id,
        credential: response.credential,
        machine_id: facts.machine_id,
        enrolled_at: Utc::now(),
        signing_key: Some(response.signing_key),
        pending_credential: None,
        next_signing_key: response
            .next_signing_key
            .filter(|key| latch_common::signing::decode_public_key(key).is_some()),
        ca_fingerprint: match transport {
            Transport::Pinned(fingerprint) => Some(fingerprint.clone()),
            Transport::InsecureHttp => None,
        },
        user_ca_key: response.user_ca_key,
    };
    if replace {
        let mut accounts = state.accounts()?;
        accounts.forget_enrollment();
        state.save_accounts(&accounts)?;
        crate::journal::Journal::open(state.path())?.clear()?;
        state.clear_revoke_only()?;
    }
    state.save_identity(&identity)?;
    Ok(identity)
}
