//! Bodies of the HTTP API (DESIGN.md §5). Agent endpoints live under `/v1/agent`, enrollment at
//! `/v1/enroll`, admin endpoints under `/v1/{enroll-tokens,hosts,jobs}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::{JobError, JobKind, JobOutcome, JobSpec, JobStatus};
use crate::names::ValidationError;

/// Longest long-poll wait the control plane honours, in seconds.
pub const MAX_POLL_WAIT_SECS: u64 = 30;

/// Every error body: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// One of the codes of DESIGN.md §5 (`invalid_request`, `authentication_error`, …).
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// Every list response: `{"list": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResponse<T> {
    /// The page's items.
    pub list: Vec<T>,
}

/// Facts an agent reports about its host at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token from `latchctl enroll-token create`.
    pub token: String,
    /// Facts about the host.
    pub facts: HostFacts,
}

/// Answer to [`EnrollRequest`]. The credential is shown once; the control plane keeps its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// A job as delivered to the agent by `GET /v1/agent/jobs`: the delivery (id, lease, attempt)
/// around the signed payload, exactly as the control plane signed it when the job was created.
/// Everything the agent acts on comes from the payload, after the signature is verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokedBy {
    /// The agent's local timer, at `expires_at` (works without the network).
    AgentExpiry,
    /// A revocation job the control plane queued at `expires_at`.
    ControlPlane,
}

impl RevokedBy {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokedBy::AgentExpiry => "agent_expiry",
            RevokedBy::ControlPlane => "control_plane",
        }
    }
}

/// `POST /v1/agent/revocations`: the agent ended a grant on its own, at its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationReport {
    /// The job that granted the access (a create-account or add-group job of this host).
    pub job_id: String,
    /// When the access was removed on the host.
    pub revoked_at: DateTime<Utc>,
}

/// `POST /v1/enroll-tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollTokenRequest {
    /// Lifetime in seconds (default 3600, at most 30 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// How many enrollments it allows (default 1, at most 10000).
    #[serde(default)]
    pub uses: Option<u32>,
}

/// A new enrollment token. The token is shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// A host as administrators see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// `POST /v1/jobs`. Fields that do not apply to `kind` must be absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    /// Host id or host name.
    pub host: String,
    /// What to do (`create-account`, …).
    pub kind: Option<JobKind>,
    /// The account.
    pub user: String,
    /// add-group / remove-group: the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// create-account: extra groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// create-account: login shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// create-account: SSH public keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// create-account / add-group: when the access ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// set-password: the new password. The control plane hashes it (SHA-512 crypt); only the hash
    /// is stored and sent to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl CreateJobRequest {
    /// Turns the request into a validated spec. `hash_password` turns the plaintext into the hash
    /// that travels to the host; it is called only for set-password.
    pub fn into_spec(
        self,
        hash_password: impl FnOnce(&str) -> Result<String, ValidationError>,
    ) -> Result<JobSpec, ValidationError> {
        if self.kind == Some(JobKind::RotateSigningKey) {
            return Err(ValidationError::new(
                "kind",
                "rotate-signing-key jobs are queued by `latchctl signing-key rotate`, not through the jobs API",
            ));
        }
        let kind = self.kind.ok_or_else(|| {
            ValidationError::new("kind", "is required: create-account, delete-account, add-group, remove-group or set-password")
        })?;
        let refuse = |field: &'static str, present: bool| {
            if present {
                Err(ValidationError::new(
                    field,
                    format!("does not apply to {kind}"),
                ))
            } else {
                Ok(())
            }
        };
        let need_group = |group: Option<String>| {
            group.ok_or_else(|| ValidationError::new("group", format!("is required for {kind}")))
        };
        let not_account_fields = |r: &CreateJobRequest| -> Result<(), ValidationError> {
            refuse("groups", !r.groups.is_empty())?;
            refuse("shell", r.shell.is_some())?;
            refuse("ssh_keys", !r.ssh_keys.is_empty())
        };
        let spec = match kind {
            JobKind::CreateAccount => {
                refuse("group", self.group.is_some())?;
                refuse("password", self.password.is_some())?;
                JobSpec::CreateAccount {
                    user: self.user,
                    groups: self.groups,
                    shell: self.shell,
                    ssh_keys: self.ssh_keys,
                    expires_at: self.expires_at,
                }
            }
            JobKind::DeleteAccount => {
                not_account_fields(&self)?;
                refuse("group", self.group.is_some())?;
                refuse("expires_at", self.expires_at.is_some())?;
                refuse("password", self.password.is_some())?;
                JobSpec::DeleteAccount { user: self.user }
            }
            JobKind::AddGroup => {
                not_account_fields(&self)?;
                refuse("password", self.password.is_some())?;
                JobSpec::AddGroup {
                    group: need_group(self.group)?,
                    user: self.user,
                    expires_at: self.expires_at,
                }
            }
            JobKind::RemoveGroup => {
                not_account_fields(&self)?;
                refuse("expires_at", self.expires_at.is_some())?;
                refuse("password", self.password.is_some())?;
                JobSpec::RemoveGroup {
                    group: need_group(self.group)?,
                    user: self.user,
                }
            }
            JobKind::RotateSigningKey => unreachable_kind()?,
            JobKind::SetPassword => {
                not_account_fields(&self)?;
                refuse("group", self.group.is_some())?;
                refuse("expires_at", self.expires_at.is_some())?;
                let password = self.password.ok_or_else(|| {
                    ValidationError::new("password", "is required for set-password")
                })?;
                // Name first: a hostile name must be refused before any hashing work.
                crate::names::validate_user_name(&self.user)?;
                JobSpec::SetPassword {
                    password_hash: hash_password(&password)?,
                    user: self.user,
                }
            }
        };
        spec.validate()?;
        Ok(spec)
    }
}

fn unreachable_kind() -> Result<JobSpec, ValidationError> {
    Err(ValidationError::new(
        "kind",
        "rotate-signing-key jobs are not created through the jobs API",
    ))
}

/// One step in a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `queued`, `delivered`, `confirmed`, `failed`, `lease_expired`.
    pub event: String,
    /// Extra detail (attempt number, error code).
    pub detail: Option<String>,
}

/// A job as administrators see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// The host it is for.
    pub host_id: String,
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
    /// Who removed it: `agent_expiry` or `control_plane`.
    #[serde(default)]
    pub revoked_by: Option<RevokedBy>,
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

    fn hash(_: &str) -> Result<String, ValidationError> {
        Ok("$6$salt$hash".to_owned())
    }

    #[test]
    fn set_password_request_hashes_and_drops_the_plaintext() {
        let request = CreateJobRequest {
            host: "h".into(),
            kind: Some(JobKind::SetPassword),
            user: "alice".into(),
            password: Some("correct horse".into()),
            ..Default::default()
        };
        let spec = request.into_spec(hash).unwrap();
        assert_eq!(
            spec,
            JobSpec::SetPassword {
                user: "alice".into(),
                password_hash: "$6$salt$hash".into()
            }
        );
    }

    #[test]
    fn fields_that_do_not_apply_are_refused() {
        let request = CreateJobRequest {
            host: "h".into(),
            kind: Some(JobKind::DeleteAccount),
            user: "alice".into(),
            group: Some("sudo".into()),
            ..Default::default()
        };
        assert_eq!(request.into_spec(hash).unwrap_err().field, "group");
        let request = CreateJobRequest {
            host: "h".into(),
            kind: Some(JobKind::AddGroup),
            user: "alice".into(),
            ..Default::default()
        };
        assert_eq!(request.into_spec(hash).unwrap_err().field, "group");
    }

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
