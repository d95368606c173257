//! Bodies of the HTTP API (DESIGN.md §5). Agent endpoints live under `/v1/agent`, enrollment at
//! `/v1/enroll`, admin endpoints under `/v1/{enroll-tokens,hosts,jobs}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::{JobError, JobKind, JobOutcome, JobStatus};
use crate::names::ValidationError;

mod create_job;

pub use create_job::{CreateJobRequest, GrantLimits, GrantWindow, format_window};

/// Longest long-poll wait the control plane honours, in seconds.
pub const MAX_POLL_WAIT_SECS: u64 = 30;

/// Every error body: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// One of the codes of DESIGN.md §5 (`invalid_request`, `authentication_error`, …).
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// Every list response: `{"list": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListResponse<T> {
    /// The page's items.
    pub list: Vec<T>,
}

/// `GET /v1/health`: `{"status": "ok"}` while the control plane serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// Always `ok`.
    pub status: String,
}

/// `GET /v1/agent/self`: the host the presented credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentSelf {
    /// The host's id.
    pub host_id: String,
}

/// `DELETE /v1/hosts/{host}`: the host is gone, its credential revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostRemoved {
    /// The removed host's id.
    pub id: String,
    /// Always `true`.
    pub removed: bool,
    /// How many of its pending jobs were cancelled.
    pub cancelled_jobs: u64,
}

/// `POST /v1/signing-key/rotate`: the next job-signing key and the job queued for each host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyRotation {
    /// The next public key (Ed25519, base64).
    pub next_key: String,
    /// The `rotate-signing-key` job queued for each active host.
    pub jobs: Vec<SigningKeyRotationJob>,
}

/// One host's `rotate-signing-key` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyRotationJob {
    /// The host.
    pub host_id: String,
    /// Its job.
    pub job_id: String,
}

/// `POST /v1/signing-key/promote`: the next key now signs every job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyPromoted {
    /// Always `true`.
    pub promoted: bool,
    /// The signing key now in use (Ed25519, base64).
    pub signing_key: String,
    /// Hosts that had not confirmed the key (only with `force`): they refuse every new job
    /// until enrolled again.
    pub hosts_left_behind: Vec<String>,
}

/// Facts an agent reports about its host at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// The host name (`uname -n`).
    pub hostname: String,
    /// Operating system, e.g. `Linux 12 Debian GNU/Linux`.
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// `/etc/machine-id` (32 lowercase hex digits).
    pub machine_id: String,
}

impl HostFacts {
    /// Refuses facts that are empty, oversized or carry control characters.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let text_fields = [
            ("facts.hostname", &self.hostname, 253),
            ("facts.os", &self.os, 256),
            ("facts.kernel", &self.kernel, 256),
            ("facts.arch", &self.arch, 64),
        ];
        for (field, value, max) in text_fields {
            if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    field,
                    format!("must be 1 to {max} bytes without control characters"),
                ));
            }
        }
        if !self
            .hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(ValidationError::new(
                "facts.hostname",
                "may contain only ASCII letters, digits, '-', '.' and '_'",
            ));
        }
        if self.machine_id.len() != 32 || !self.machine_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ValidationError::new(
                "facts.machine_id",
                "must be 32 hex digits",
            ));
        }
        Ok(())
    }
}

/// `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token from `latchctl enroll-token create`.
    pub token: String,
    /// Facts about the host.
    pub facts: HostFacts,
}

/// Answer to [`EnrollRequest`]. The credential is shown once; the control plane keeps its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    /// The new host id.
    pub host_id: String,
    /// Bearer credential for the agent endpoints.
    pub credential: String,
    /// The control plane's job-signing public key (Ed25519, base64); the agent pins it.
    pub signing_key: String,
    /// The next signing key while a rotation is under way (the agent accepts it from the first
    /// job that carries it on).
    #[serde(default)]
    pub next_signing_key: Option<String>,
    /// The control plane's SSH user CA (an OpenSSH public key line) when the enrollment token
    /// asked for it (`--ssh-ca`): the agent installs it as sshd's `TrustedUserCAKeys`, with an
    /// `AuthorizedPrincipalsFile` per account.
    #[serde(default)]
    pub user_ca_key: Option<String>,
}

/// A job as delivered to the agent by `GET /v1/agent/jobs`: the delivery (id, lease, attempt)
/// around the signed payload, exactly as the control plane signed it when the job was created.
/// Everything the agent acts on comes from the payload, after the signature is verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentJob {
    /// Job id (must equal the payload's `job_id`).
    pub id: String,
    /// Lease token; the report must carry it.
    pub lease: String,
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// The signed payload: a JSON `signing::SignedJob`, as text.
    pub payload: String,
    /// Ed25519 signature of `payload`'s bytes, base64; empty if the job is unsigned.
    pub signature: String,
}

/// `POST /v1/agent/jobs/{id}/report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// The lease token of the delivery being reported.
    pub lease: String,
    /// What happened.
    pub outcome: JobOutcome,
}

/// `POST /v1/agent/credential`: replace this host's credential (authenticated with the current
/// one). The agent makes the new secret itself and keeps it as pending until the control plane
/// has switched, so a crash in between never locks the host out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateCredentialRequest {
    /// The new credential: `latch_host_` followed by 64 lowercase hex digits.
    pub new_credential: String,
}

impl RotateCredentialRequest {
    /// Refuses anything but a well-formed credential.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let hex = self
            .new_credential
            .strip_prefix("latch_host_")
            .unwrap_or("");
        if hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            Ok(())
        } else {
            Err(ValidationError::new(
                "new_credential",
                "must be latch_host_ followed by 64 lowercase hex digits",
            ))
        }
    }
}

/// Who ended a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokedBy {
    /// The agent's local timer, at `expires_at` (works without the network).
    AgentExpiry,
    /// A revocation job the control plane queued at `expires_at`.
    ControlPlane,
    /// A later delete-account (or remove-group, for a membership) queued by an administrator;
    /// the job's id is in `revoked_by_job`.
    Job,
}

impl RevokedBy {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokedBy::AgentExpiry => "agent_expiry",
            RevokedBy::ControlPlane => "control_plane",
            RevokedBy::Job => "job",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<RevokedBy> {
        [
            RevokedBy::AgentExpiry,
            RevokedBy::ControlPlane,
            RevokedBy::Job,
        ]
        .into_iter()
        .find(|by| by.as_str() == s)
    }
}

/// Where a grant (a confirmed create-account or add-group job) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// In force: before its end, or permanent.
    Active,
    /// Past its end; its revocation is queued or on its way and nothing has failed yet.
    Revoking,
    /// Past its end and at least one revocation job failed; retried with backoff until the host
    /// confirms.
    RevocationStuck,
    /// Ended; `revoked_by` says how.
    Revoked,
    /// A later confirmed grant of the same access (same user, and group for a membership)
    /// replaced it; that grant decides when the access ends.
    Superseded,
    /// Its host was removed while it was not revoked: the control plane can no longer revoke
    /// it. Remove the account on the host by hand if the host still runs.
    HostRemoved,
}

impl GrantState {
    /// Every state, in documentation order.
    pub const ALL: [GrantState; 6] = [
        GrantState::Active,
        GrantState::Revoking,
        GrantState::RevocationStuck,
        GrantState::Revoked,
        GrantState::Superseded,
        GrantState::HostRemoved,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Revoking => "revoking",
            GrantState::RevocationStuck => "revocation_stuck",
            GrantState::Revoked => "revoked",
            GrantState::Superseded => "superseded",
            GrantState::HostRemoved => "host_removed",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<GrantState> {
        GrantState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the grant is over as far as the control plane can tell (revoked or replaced).
    pub fn is_over(self) -> bool {
        matches!(self, GrantState::Revoked | GrantState::Superseded)
    }
}

impl std::fmt::Display for GrantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the revocation of a grant past its end is going.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevocationView {
    /// The revocation job now queued or delivered, if any.
    pub job_id: Option<String>,
    /// Revocation jobs that failed so far.
    pub failed_attempts: u32,
    /// The last failure, `code: message`.
    pub last_error: Option<String>,
    /// When the last one failed.
    pub last_failed_at: Option<DateTime<Utc>>,
    /// When the next revocation job will be queued (only while none is queued).
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// A grant as administrators see it: who has (or had) which access on which host, and how it
/// ended. `GET /v1/grants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantView {
    /// The job that granted the access.
    pub job_id: String,
    /// The host.
    pub host_id: String,
    /// The host's name.
    pub host_name: String,
    /// `create-account` (an account) or `add-group` (a membership).
    pub kind: JobKind,
    /// The account.
    pub user: String,
    /// add-group: the group.
    #[serde(default)]
    pub group: Option<String>,
    /// create-account: the extra groups it came with.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Where it stands.
    pub state: GrantState,
    /// When the host confirmed it.
    pub granted_at: Option<DateTime<Utc>>,
    /// When it ends (`null`: permanent).
    pub expires_at: Option<DateTime<Utc>>,
    /// Seconds left while active with an end.
    #[serde(default)]
    pub seconds_left: Option<i64>,
    /// When it was revoked.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// How: `agent_expiry`, `control_plane` or `job`.
    #[serde(default)]
    pub revoked_by: Option<RevokedBy>,
    /// For `revoked_by: job`: the delete-account or remove-group job.
    #[serde(default)]
    pub revoked_by_job: Option<String>,
    /// For `superseded`: the later grant.
    #[serde(default)]
    pub superseded_by: Option<String>,
    /// Past its end and not revoked: how the revocation is going.
    #[serde(default)]
    pub revocation: Option<RevocationView>,
    /// The state in words, for people.
    pub summary: String,
}

/// `POST /v1/agent/revocations`: the agent ended a grant on its own, at its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationReport {
    /// The job that granted the access (a create-account or add-group job of this host).
    pub job_id: String,
    /// When the access was removed on the host.
    pub revoked_at: DateTime<Utc>,
}

/// `POST /v1/enroll-tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollTokenRequest {
    /// Lifetime in seconds (default 3600, at most 30 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// How many enrollments it allows (default 1, at most 10000).
    #[serde(default)]
    pub uses: Option<u32>,
    /// Labels every host enrolled with the token gets (`env=prod`).
    #[serde(default, skip_serializing_if = "crate::labels::Labels::is_empty")]
    pub labels: crate::labels::Labels,
    /// Hosts enrolled with the token trust the control plane's SSH user CA: their agent
    /// installs it in sshd, and grants there may use OpenSSH user certificates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ssh_ca: bool,
}

/// A new enrollment token. The token is shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollTokenView {
    /// The secret token.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// How many enrollments it allows.
    pub uses: u32,
    /// The control plane's CA fingerprint (`sha256:…`) to pin with `latch-agent enroll
    /// --ca-fingerprint`; `null` when the control plane serves plain HTTP.
    #[serde(default)]
    pub ca_fingerprint: Option<String>,
    /// Labels every host enrolled with the token gets.
    #[serde(default)]
    pub labels: crate::labels::Labels,
    /// Whether hosts enrolled with it trust the control plane's SSH user CA.
    #[serde(default)]
    pub ssh_ca: bool,
}

/// A host as administrators see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    /// Host id.
    pub id: String,
    /// Facts reported at enrollment.
    #[serde(flatten)]
    pub facts: HostFacts,
    /// When it enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// Last time the agent polled.
    pub last_seen: Option<DateTime<Utc>>,
    /// Whether the agent polled recently.
    pub online: bool,
    /// Labels (`env=prod`), which scope delegated administration.
    #[serde(default)]
    pub labels: crate::labels::Labels,
    /// Whether the host was enrolled to trust the control plane's SSH user CA (`--ssh-ca`).
    #[serde(default)]
    pub ssh_ca: bool,
    /// The agent the host last polled with (`None` until its first poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::protocol::AgentInfo>,
}

/// `POST /v1/service_token`: a service user's API key, exchanged for a short-lived bearer token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceTokenRequest {
    /// The API key (`latch_key_…`).
    pub api_key: String,
    /// How long the token should live, at most the server's limit (default one hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// The bearer token issued for an API key or a sign-in.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// `Authorization: Bearer <token>`.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// One step in a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobEvent {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `queued`, `delivered`, `confirmed`, `failed`, `lease_expired`.
    pub event: String,
    /// Extra detail (attempt number, error code).
    pub detail: Option<String>,
}

/// A job as administrators see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// The host it is for.
    pub host_id: String,
    /// That host's name.
    #[serde(default)]
    pub host_name: String,
    /// Per-host sequence number.
    pub seq: i64,
    /// What it does.
    pub kind: JobKind,
    /// Its parameters (password hashes redacted).
    pub params: serde_json::Value,
    /// `pending`, `confirmed` or `failed`.
    pub status: JobStatus,
    /// Why it failed, or `null`.
    pub error: Option<JobError>,
    /// For a confirmed job: what the agent noted (a removal step it could not do although the
    /// result holds, or that there was nothing to do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it reached its final status.
    pub finished_at: Option<DateTime<Utc>>,
    /// How many times it was delivered.
    pub attempts: u32,
    /// When the access it granted ends (create-account and add-group).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When that access was removed, if it was.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who removed it: `agent_expiry`, `control_plane` or `job`.
    #[serde(default)]
    pub revoked_by: Option<RevokedBy>,
    /// For `revoked_by: job`: the delete-account or remove-group job that ended it.
    #[serde(default)]
    pub revoked_by_job: Option<String>,
    /// For a grant the host confirmed (create-account, add-group): where it stands.
    #[serde(default)]
    pub grant_state: Option<GrantState>,
    /// For a superseded grant: the later grant that replaced it.
    #[serde(default)]
    pub superseded_by: Option<String>,
    /// For a grant past its end and not revoked: how its revocation is going.
    #[serde(default)]
    pub revocation: Option<RevocationView>,
    /// For a revocation job the control plane queued: the grant job it ends.
    #[serde(default)]
    pub revokes: Option<String>,
    /// Its history, oldest first (only in `jobs show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<JobEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_validated() {
        let mut facts = HostFacts {
            hostname: "db1".into(),
            os: "Debian 12".into(),
            kernel: "6.1".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            machine_id: "0123456789abcdef0123456789abcdef".into(),
        };
        assert_eq!(facts.validate(), Ok(()));
        facts.hostname = "db1\nevil".into();
        assert!(facts.validate().is_err());
        facts.hostname = "db1".into();
        facts.machine_id = "../../etc".into();
        assert!(facts.validate().is_err());
    }
}
