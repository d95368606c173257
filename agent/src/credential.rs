//! Host credential rotation. The agent makes the new secret itself and keeps it as *pending* in
//! its identity before asking the control plane (authenticated with the current one) to switch;
//! only then is it promoted. If the agent dies in between, the next start finds out which of
//! the two the control plane accepts ([`settle_pending`]), so the host is never locked out.

use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

use crate::client::{AgentClient, ClientError};
use crate::state::{Identity, StateDir, StateError};

/// Why rotation failed.
#[derive(Debug, Error)]
pub enum RotateError {
    /// The control plane refused or could not be reached; the current credential still works
    /// (or the pending one will be tried at the next start).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The identity could not be saved.
    #[error(transparent)]
    State(#[from] StateError),
    /// The random generator failed.
    #[error("the system random generator failed")]
    Random,
}

fn new_credential() -> Result<String, RotateError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RotateError::Random)?;
    Ok(format!("latch_host_{}", hex::encode(bytes)))
}

fn client(identity: &Identity, credential: &str) -> Result<AgentClient, ClientError> {
    AgentClient::new(
        &identity.server,
        &identity.transport(),
        Some(credential.to_owned()),
    )
}

/// Rotates the host credential; returns the updated identity.
pub async fn rotate(state: &StateDir) -> Result<Identity, RotateError> {
    let mut identity = settle_pending(state).await?;
    let fresh = new_credential()?;
    identity.pending_credential = Some(fresh.clone());
    state.save_identity(&identity)?;
    client(&identity, &identity.credential)?
        .rotate_credential(&fresh)
        .await?;
    identity.credential = fresh;
    identity.pending_credential = None;
    state.save_identity(&identity)?;
    Ok(identity)
}

/// Resolves an interrupted rotation: keeps whichever of the current and the pending credential
/// the control plane accepts. Without a pending credential, returns the identity unchanged.
pub async fn settle_pending(state: &StateDir) -> Result<Identity, RotateError> {
    let mut identity = state.identity()?;
    let Some(pending) = identity.pending_credential.clone() else {
        return Ok(identity);
    };
    match client(&identity, &identity.credential)?
        .check_credential()
        .await
    {
        Ok(()) => identity.pending_credential = None,
        Err(ClientError::Unauthorized(_)) => {
            client(&identity, &pending)?.check_credential().await?;
            identity.credential = pending;
            identity.pending_credential = None;
        }
        Err(other) => return Err(other.into()),
    }
    state.save_identity(&identity)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_credentials_have_the_control_planes_format() {
        let credential = new_credential().unwrap();
        let request = latch_common::api::RotateCredentialRequest {
            new_credential: credential.clone(),
        };
        assert_eq!(request.validate(), Ok(()));
        assert_ne!(credential, new_credential().unwrap());
    }
}
