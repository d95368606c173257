//! Bodies of the HTTP API (DESIGN.md §5). Agent endpoints live under `/v1/agent`, enrollment at
//! `/v1/enroll`, admin endpoints under `/v1/{enroll-tokens,hosts,jobs}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::{JobError, JobKind, JobOutcome, JobSpec, JobStatus};
use crate::names::ValidationError;

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

/// `POST /v1/jobs`. Fields that do not apply to `kind` must be absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
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
    /// create-account: also join the host's sudo group (the first of its allowed groups that
    /// exists there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sudo: bool,
    /// create-account: SSH certificate principals the account accepts (hosts enrolled with
    /// `--ssh-ca`); at most 8, each 1–64 characters of `A-Z a-z 0-9 _ . @ -`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// create-account / add-group: when the access ends (at most the control plane's maximum
    /// grant duration ahead). Without it, and without `expires_in_ms` or `permanent`, the
    /// control plane's default window applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// create-account / add-group: end the access this many milliseconds after the control
    /// plane receives the request (immune to the caller's clock; `latchctl --expires-in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// create-account / add-group: no end at all (audited). Conflicts with `expires_at` and
    /// `expires_in_ms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
    /// set-password: the new password. The control plane hashes it (SHA-512 crypt); only the hash
    /// is stored and sent to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// How long grants may last, from the control plane's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantLimits {
    /// The longest window a grant may ask for (`latch-control serve --max-grant-duration`).
    pub max: chrono::Duration,
    /// The window of a grant that names no end and is not permanent
    /// (`--default-grant-duration`).
    pub default: chrono::Duration,
}

/// How a grant's end was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantWindow {
    /// The job grants nothing (delete-account, remove-group, set-password).
    NotAGrant,
    /// The caller named the end (`expires_at` or `expires_in_ms`).
    Requested,
    /// The caller named none: the default window applies.
    Default,
    /// The caller asked for no end (`permanent`).
    Permanent,
}

impl GrantWindow {
    /// The spelling in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantWindow::NotAGrant => "none",
            GrantWindow::Requested => "requested",
            GrantWindow::Default => "default",
            GrantWindow::Permanent => "permanent",
        }
    }
}

/// Clock difference tolerated on an absolute `expires_at` beyond the maximum grant duration
/// (a caller computing "now + maximum" must not be refused for a few milliseconds).
pub const EXPIRES_AT_SLACK_SECS: i64 = 60;

/// A duration the way people type it: `45s`, `30m`, `2h30m`, `24h`, `7d`, `250ms` (days only
/// from two days on, so the default maximum reads `24h`).
pub fn format_window(duration: chrono::Duration) -> String {
    let ms = u64::try_from(duration.num_milliseconds()).unwrap_or(0);
    format_ms(ms)
}

fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let days = if secs >= 2 * 86_400 { secs / 86_400 } else { 0 };
    let parts = [
        (days, "d"),
        ((secs - days * 86_400) / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

impl CreateJobRequest {
    /// Turns the request into a validated spec and says how a grant's end was decided. `now` is
    /// the control plane's clock; `limits` bound grant windows: a create-account or add-group
    /// must end in the future and at most `limits.max` ahead, gets `limits.default` when it
    /// names no end, and has none only with `permanent`. `hash_password` turns the plaintext
    /// into the hash that travels to the host; it is called only for set-password.
    pub fn into_spec(
        self,
        now: DateTime<Utc>,
        limits: &GrantLimits,
        hash_password: impl FnOnce(&str) -> Result<String, ValidationError>,
    ) -> Result<(JobSpec, GrantWindow), ValidationError> {
        if self.kind == Some(JobKind::RotateSigningKey) {
            return Err(ValidationError::new(
                "kind",
                "rotate-signing-key jobs are queued by `latchctl signing-key rotate`, not through the jobs API",
            ));
        }
        if self.kind == Some(JobKind::AdoptAccount) {
            return Err(ValidationError::new(
                "kind",
                "adopt-account jobs are queued by the control plane's account enrollment, not through the jobs API",
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
            refuse("ssh_keys", !r.ssh_keys.is_empty())?;
            refuse("sudo", r.sudo)?;
            refuse("principals", !r.principals.is_empty())
        };
        let no_window = |r: &CreateJobRequest| -> Result<(), ValidationError> {
            refuse("expires_at", r.expires_at.is_some())?;
            refuse("expires_in_ms", r.expires_in_ms.is_some())?;
            refuse("permanent", r.permanent)
        };
        let (spec, window) = match kind {
            JobKind::CreateAccount => {
                refuse("group", self.group.is_some())?;
                refuse("password", self.password.is_some())?;
                let (expires_at, window) = self.grant_end(now, limits)?;
                let spec = JobSpec::CreateAccount {
                    user: self.user,
                    groups: self.groups,
                    shell: self.shell,
                    ssh_keys: self.ssh_keys,
                    expires_at,
                    sudo: self.sudo,
                    principals: self.principals,
                };
                (spec, window)
            }
            JobKind::DeleteAccount => {
                not_account_fields(&self)?;
                no_window(&self)?;
                refuse("group", self.group.is_some())?;
                refuse("password", self.password.is_some())?;
                let spec = JobSpec::DeleteAccount { user: self.user };
                (spec, GrantWindow::NotAGrant)
            }
            JobKind::AddGroup => {
                not_account_fields(&self)?;
                refuse("password", self.password.is_some())?;
                let (expires_at, window) = self.grant_end(now, limits)?;
                let spec = JobSpec::AddGroup {
                    group: need_group(self.group)?,
                    user: self.user,
                    expires_at,
                };
                (spec, window)
            }
            JobKind::RemoveGroup => {
                not_account_fields(&self)?;
                no_window(&self)?;
                refuse("password", self.password.is_some())?;
                let spec = JobSpec::RemoveGroup {
                    group: need_group(self.group)?,
                    user: self.user,
                };
                (spec, GrantWindow::NotAGrant)
            }
            JobKind::RotateSigningKey | JobKind::AdoptAccount => {
                (unreachable_kind()?, GrantWindow::NotAGrant)
            }
            JobKind::SetPassword => {
                not_account_fields(&self)?;
                no_window(&self)?;
                refuse("group", self.group.is_some())?;
                let password = self.password.ok_or_else(|| {
                    ValidationError::new("password", "is required for set-password")
                })?;
                // Name first: a hostile name must be refused before any hashing work.
                crate::names::validate_user_name(&self.user)?;
                let spec = JobSpec::SetPassword {
                    password_hash: hash_password(&password)?,
                    user: self.user,
                };
                (spec, GrantWindow::NotAGrant)
            }
        };
        spec.validate()?;
        Ok((spec, window))
    }

    /// The end of a grant: requested (in the future, within the maximum), the default window,
    /// or none when permanent.
    fn grant_end(
        &self,
        now: DateTime<Utc>,
        limits: &GrantLimits,
    ) -> Result<(Option<DateTime<Utc>>, GrantWindow), ValidationError> {
        let max = format_window(limits.max);
        let how = format!(
            "give a positive duration such as 30m or 2h, at most {max} (this control plane's --max-grant-duration)"
        );
        if self.permanent {
            let other = if self.expires_at.is_some() {
                Some("expires_at")
            } else if self.expires_in_ms.is_some() {
                Some("expires_in_ms")
            } else {
                None
            };
            return match other {
                Some(other) => Err(ValidationError::new(
                    "permanent",
                    format!("conflicts with {other}: a grant either has an end or is permanent"),
                )),
                None => Ok((None, GrantWindow::Permanent)),
            };
        }
        match (self.expires_at, self.expires_in_ms) {
            (Some(_), Some(_)) => Err(ValidationError::new(
                "expires_in_ms",
                "give either expires_at or expires_in_ms, not both",
            )),
            (None, Some(0)) => Err(ValidationError::new(
                "expires_in_ms",
                format!("must be more than 0: {how}"),
            )),
            (None, Some(ms)) => {
                let within = i64::try_from(ms)
                    .ok()
                    .filter(|ms| *ms <= limits.max.num_milliseconds())
                    .and_then(chrono::Duration::try_milliseconds);
                match within {
                    Some(window) => Ok((Some(now + window), GrantWindow::Requested)),
                    None => Err(ValidationError::new(
                        "expires_in_ms",
                        format!(
                            "asks for {} but a grant may last at most {max} (this control plane's --max-grant-duration); ask for a shorter window",
                            format_ms(ms)
                        ),
                    )),
                }
            }
            (Some(end), None) if end <= now => Err(ValidationError::new(
                "expires_at",
                format!(
                    "is not in the future (compare the clocks of the caller and the control plane): {how}"
                ),
            )),
            (Some(end), None)
                if end - now > limits.max + chrono::Duration::seconds(EXPIRES_AT_SLACK_SECS) =>
            {
                Err(ValidationError::new(
                    "expires_at",
                    format!(
                        "is {} ahead but a grant may last at most {max} (this control plane's --max-grant-duration); ask for a shorter window",
                        format_window(end - now)
                    ),
                ))
            }
            (Some(end), None) => Ok((Some(end), GrantWindow::Requested)),
            (None, None) => Ok((Some(now + limits.default), GrantWindow::Default)),
        }
    }
}

fn unreachable_kind() -> Result<JobSpec, ValidationError> {
    Err(ValidationError::new(
        "kind",
        "rotate-signing-key and adopt-account jobs are not created through the jobs API",
    ))
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

    fn hash(_: &str) -> Result<String, ValidationError> {
        Ok("$6$salt$hash".to_owned())
    }

    const LIMITS: GrantLimits = GrantLimits {
        max: chrono::Duration::hours(24),
        default: chrono::Duration::hours(1),
    };

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn spec(request: CreateJobRequest) -> Result<(JobSpec, GrantWindow), ValidationError> {
        request.into_spec(now(), &LIMITS, hash)
    }

    fn grant(
        f: impl FnOnce(&mut CreateJobRequest),
    ) -> Result<(JobSpec, GrantWindow), ValidationError> {
        let mut request = CreateJobRequest {
            host: "h".into(),
            kind: Some(JobKind::CreateAccount),
            user: "alice".into(),
            ..Default::default()
        };
        f(&mut request);
        spec(request)
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
        let (spec, window) = spec(request).unwrap();
        assert_eq!(window, GrantWindow::NotAGrant);
        assert_eq!(
            spec,
            JobSpec::SetPassword {
                user: "alice".into(),
                password_hash: "$6$salt$hash".into()
            }
        );
    }

    /// adopt-account is queued by the control plane's account enrollment only: the jobs API
    /// refuses it by name, whatever else the request says.
    #[test]
    fn adopt_account_is_not_queued_through_the_jobs_api() {
        let request = CreateJobRequest {
            host: "h".into(),
            kind: Some(JobKind::AdoptAccount),
            user: "legacy".into(),
            ..Default::default()
        };
        let refused = spec(request).unwrap_err();
        assert_eq!(refused.field, "kind");
        assert!(refused.reason.contains("adopt-account"), "{refused}");
        let parsed: CreateJobRequest = serde_json::from_value(
            serde_json::json!({"host": "h", "kind": "adopt-account", "user": "legacy"}),
        )
        .unwrap();
        assert_eq!(spec(parsed).unwrap_err().field, "kind");
    }

    #[test]
    fn create_account_carries_sudo_and_principals_which_other_kinds_refuse() {
        let (made, _) = grant(|r| {
            r.sudo = true;
            r.principals = vec!["p-test".into()];
        })
        .unwrap();
        let JobSpec::CreateAccount {
            sudo, principals, ..
        } = made
        else {
            panic!("{made:?}")
        };
        assert!(sudo);
        assert_eq!(principals, vec!["p-test"]);
        let hostile = grant(|r| r.principals = vec!["a\nroot".into()]).unwrap_err();
        assert_eq!(hostile.field, "principals");
        for (field, f) in [
            (
                "sudo",
                (|r: &mut CreateJobRequest| r.sudo = true) as fn(&mut CreateJobRequest),
            ),
            ("principals", |r| r.principals = vec!["p".into()]),
        ] {
            let mut request = CreateJobRequest {
                host: "h".into(),
                kind: Some(JobKind::DeleteAccount),
                user: "alice".into(),
                ..Default::default()
            };
            f(&mut request);
            assert_eq!(spec(request).unwrap_err().field, field);
        }
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
        assert_eq!(spec(request).unwrap_err().field, "group");
        let request = CreateJobRequest {
            host: "h".into(),
            kind: Some(JobKind::AddGroup),
            user: "alice".into(),
            ..Default::default()
        };
        assert_eq!(spec(request).unwrap_err().field, "group");
        let request = CreateJobRequest {
            host: "h".into(),
            kind: Some(JobKind::DeleteAccount),
            user: "alice".into(),
            permanent: true,
            ..Default::default()
        };
        assert_eq!(spec(request).unwrap_err().field, "permanent");
    }

    #[test]
    fn finding_20_grant_windows_are_bounded_defaulted_or_explicitly_permanent() {
        let end = |r: Result<(JobSpec, GrantWindow), ValidationError>| {
            let (spec, window) = r.unwrap();
            (spec.expires_at(), window)
        };
        // No end named: the default window.
        assert_eq!(
            end(grant(|_| {})),
            (
                Some(now() + chrono::Duration::hours(1)),
                GrantWindow::Default
            )
        );
        // Relative and absolute ends within the maximum.
        assert_eq!(
            end(grant(|r| r.expires_in_ms = Some(30 * 60 * 1000))),
            (
                Some(now() + chrono::Duration::minutes(30)),
                GrantWindow::Requested
            )
        );
        let at = now() + chrono::Duration::hours(24);
        assert_eq!(
            end(grant(|r| r.expires_at = Some(at))),
            (Some(at), GrantWindow::Requested)
        );
        // Permanent only when asked, and never together with an end.
        assert_eq!(
            end(grant(|r| r.permanent = true)),
            (None, GrantWindow::Permanent)
        );
        let both = grant(|r| {
            r.permanent = true;
            r.expires_in_ms = Some(1000);
        })
        .unwrap_err();
        assert_eq!(both.field, "permanent");
        // Zero, the past, and beyond the maximum are refused, naming the limit.
        for (refused, field) in [
            (grant(|r| r.expires_in_ms = Some(0)), "expires_in_ms"),
            (grant(|r| r.expires_at = Some(now())), "expires_at"),
            (
                grant(|r| r.expires_at = Some(now() - chrono::Duration::minutes(5))),
                "expires_at",
            ),
            (
                grant(|r| r.expires_in_ms = Some(24 * 3600 * 1000 + 1)),
                "expires_in_ms",
            ),
            (
                grant(|r| r.expires_in_ms = Some(100_000 * 86_400 * 1000)),
                "expires_in_ms",
            ),
            (grant(|r| r.expires_in_ms = Some(u64::MAX)), "expires_in_ms"),
            (
                grant(|r| r.expires_at = Some(now() + chrono::Duration::days(2))),
                "expires_at",
            ),
        ] {
            let error = refused.unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(error.reason.contains("at most 24h"), "{error}");
            assert!(error.reason.contains("--max-grant-duration"), "{error}");
        }
    }

    #[test]
    fn windows_are_written_as_people_type_them() {
        assert_eq!(format_window(chrono::Duration::hours(24)), "24h");
        assert_eq!(format_window(chrono::Duration::hours(36)), "36h");
        assert_eq!(format_window(chrono::Duration::days(7)), "7d");
        assert_eq!(
            format_window(chrono::Duration::days(2) + chrono::Duration::minutes(1)),
            "2d1m"
        );
        assert_eq!(format_window(chrono::Duration::minutes(150)), "2h30m");
        assert_eq!(format_window(chrono::Duration::seconds(45)), "45s");
        assert_eq!(format_window(chrono::Duration::milliseconds(250)), "250ms");
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
