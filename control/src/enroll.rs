//! Enrollment tokens and host enrollment (DESIGN.md §2 "Host enrollment").

use chrono::{Duration, Utc};
use latch_common::api::{CreateEnrollTokenRequest, EnrollRequest, EnrollResponse, EnrollTokenView};
use latch_common::labels::validate_labels;
use latch_common::names::ValidationError;

use latch_common::authz::Permission;

use crate::people::Authority;
use crate::secret::{hash_token, new_token};
use crate::store::HostRecord;
use crate::{Control, ControlError};

/// The audit actor of work the control plane does on its own (key rotation jobs it queues).
pub(crate) const CONTROL_PLANE: &str = "control_plane";

/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
/// Longest token lifetime.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
/// Most uses one token may allow.
pub const MAX_TOKEN_USES: u32 = 10_000;

impl Control {
    /// Creates an enrollment token. The plaintext is returned once; only its hash is stored.
    pub async fn create_enroll_token(
        &self,
        by: &Authority,
        request: &CreateEnrollTokenRequest,
    ) -> Result<EnrollTokenView, ControlError> {
        // A token chooses the labels of the hosts it enrolls, and so which delegations cover
        // them: only an admin of every host may make one.
        by.require_everywhere(Permission::HostsManage)?;
        validate_labels(&request.labels)?;
        let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
            return Err(ValidationError::new(
                "ttl_seconds",
                format!("must be between 1 and {MAX_TOKEN_TTL_SECS} (30 days)"),
            )
            .into());
        }
        let uses = request.uses.unwrap_or(1);
        if !(1..=MAX_TOKEN_USES).contains(&uses) {
            return Err(ValidationError::new(
                "uses",
                format!("must be between 1 and {MAX_TOKEN_USES}"),
            )
            .into());
        }
        let token = new_token("latch_enroll_")?;
        let now = Utc::now();
        let expires_at = now + Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX));
        self.store
            .insert_enroll_token(
                &hash_token(&token),
                now,
                expires_at,
                uses,
                &request.labels,
                request.ssh_ca,
                &by.audit_actor(),
            )
            .await?;
        Ok(EnrollTokenView {
            token,
            expires_at,
            uses,
            ca_fingerprint: self.ca_fingerprint.clone(),
            labels: request.labels.clone(),
            ssh_ca: request.ssh_ca,
        })
    }

    /// Enrolls a host: spends one use of the token, records the host's facts with the token's
    /// labels and returns a new host credential (stored hashed); a token made with `ssh_ca`
    /// also hands over the SSH user CA's public key for the agent to install.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ControlError> {
        request.facts.validate()?;
        if request.token.is_empty() || request.token.len() > 256 {
            return Err(ControlError::EnrollRefused(
                crate::store::TokenRefusal::Unknown,
            ));
        }
        let host = HostRecord {
            id: uuid::Uuid::new_v4().to_string(),
            facts: request.facts.clone(),
            enrolled_at: Utc::now(),
            last_seen: None,
            // Decided by the token.
            ssh_ca: false,
            // Recorded at its first poll.
            agent: None,
        };
        let credential = new_token("latch_host_")?;
        self.store
            .enroll_host(&hash_token(&request.token), &host, &hash_token(&credential))
            .await?
            .map_err(ControlError::EnrollRefused)?;
        let ssh_ca = self.host_uses_ssh_ca(&host.id).await?;
        tracing::info!(host_id = %host.id, hostname = %host.facts.hostname, ssh_ca, "host enrolled");
        Ok(EnrollResponse {
            host_id: host.id,
            credential,
            signing_key: self.signing_key(),
            next_signing_key: self.keys.next().map(|next| next.public_key()),
            user_ca_key: if ssh_ca {
                Some(self.user_ca_public_key()?)
            } else {
                None
            },
        })
    }
}
