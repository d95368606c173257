//! Why a job failed: the stable codes scripts match on, what an operator does about each, and
//! the code with its message.

use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// Stable, machine-readable reasons a job failed. Scripts may match on them; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobErrorCode {
    /// The job failed validation on the host (hostile or malformed parameters).
    InvalidJob,
    /// create-account: an account with that name exists and Latch does not manage it.
    AccountExists,
    /// create-account: a group with the user's name exists; Latch will not adopt it.
    GroupExists,
    /// The account is not one Latch created (marker group, GECOS tag and agent record disagree).
    AccountNotManaged,
    /// The account does not exist.
    NoSuchAccount,
    /// The group does not exist on the host.
    NoSuchGroup,
    /// The host's configuration does not allow granting this group.
    GroupNotAllowed,
    /// The shell is not listed in the host's `/etc/shells`.
    ShellNotAllowed,
    /// Every UID of the configured range is in use or was used before.
    UidRangeExhausted,
    /// The account files stayed locked by another program for too long.
    HostBusy,
    /// A shadow-utils tool exited with an error.
    ToolFailed,
    /// The tool succeeded but reading the files back did not show the expected state.
    VerifyFailed,
    /// The agent could not read or write its own state directory.
    AgentStateError,
    /// The job was delivered the maximum number of times without an outcome.
    AgentUnresponsive,
    /// The job is older (lower sequence) than one already applied to the same account.
    StaleJob,
    /// The account still had processes or sessions that could not be ended.
    AccountInUse,
    /// The host was removed before the job ran.
    HostRemoved,
    /// The job carries no signature.
    UnsignedJob,
    /// The signature does not verify with the key pinned at enrollment (forged or tampered).
    BadSignature,
    /// The job is signed for another host.
    WrongHost,
    /// The job arrived after its `not_after` deadline.
    JobExpired,
    /// The job was already applied on this host.
    ReplayedJob,
    /// A line of `/etc/passwd`, `/etc/group` or `/etc/shadow` does not parse: nothing is granted
    /// until the file is repaired (revocations still proceed).
    AccountFilesMalformed,
    /// adopt-account (or set-password on an adopted account): the account is `root` (UID 0,
    /// never) or a system account (UID below 1000) and the host's configuration does not allow
    /// adopting system accounts.
    SystemAccount,
    /// adopt-account: the account is one Latch created (ephemeral); it ends with its grant and
    /// is never adopted.
    EphemeralAccount,
    /// create-account with `sudo`: none of the groups the host allows granting exists on the
    /// host, so there is no sudo group to join.
    NoSudoGroup,
}

impl JobErrorCode {
    /// What an operator does about a job that failed with this code (the job's own message
    /// names the details).
    pub fn what_to_do(self) -> &'static str {
        match self {
            JobErrorCode::InvalidJob => {
                "Fix the job's parameters (see the message) and queue it again."
            }
            JobErrorCode::AccountExists => {
                "The host has an account of that name that Latch does not manage: pick another name, or enroll that account into the vault instead."
            }
            JobErrorCode::GroupExists => {
                "A group named like the account exists on the host: pick another account name or remove that group on the host."
            }
            JobErrorCode::AccountNotManaged => {
                "Latch never changes accounts it did not create or adopt; act on the host by hand, or enroll the account into the vault first."
            }
            JobErrorCode::NoSuchAccount => "Check the account name; it does not exist on the host.",
            JobErrorCode::NoSuchGroup => {
                "Create the group on the host, or choose a group that exists there."
            }
            JobErrorCode::GroupNotAllowed => {
                "The host's agent configuration does not allow granting this group; add it to allowed_groups in /etc/latch/agent.toml if it should be grantable."
            }
            JobErrorCode::ShellNotAllowed => "Choose a shell listed in the host's /etc/shells.",
            JobErrorCode::UidRangeExhausted => {
                "Widen uid_min/uid_max in the host's agent configuration."
            }
            JobErrorCode::HostBusy => {
                "Another program held the account files; queue the job again."
            }
            JobErrorCode::ToolFailed => {
                "A shadow-utils command failed on the host; read the message and the agent's journal (journalctl -u latch-agent), fix the host, and queue the job again."
            }
            JobErrorCode::VerifyFailed => {
                "The host's account files do not show the change; check the host for tampering or a conflicting tool, then queue the job again."
            }
            JobErrorCode::AgentStateError => {
                "The agent cannot use its state directory; check disk space and permissions of /var/lib/latch-agent on the host."
            }
            JobErrorCode::AgentUnresponsive => {
                "The agent never reported; check that latch-agent runs on the host (latch-agent status) and can reach the control plane."
            }
            JobErrorCode::StaleJob => {
                "A newer job for the same account was applied first; nothing to do unless the newer job was wrong."
            }
            JobErrorCode::AccountInUse => {
                "The account's processes could not be ended; look at the host's processes for that user."
            }
            JobErrorCode::HostRemoved => {
                "The host was removed from Latch; enroll it again if it should be managed."
            }
            JobErrorCode::UnsignedJob | JobErrorCode::BadSignature | JobErrorCode::WrongHost => {
                "The host refused a job whose signature does not check: treat it as a possible attack on the control plane or its database, and read the audit trail."
            }
            JobErrorCode::JobExpired => {
                "The job reached the host after its deadline; queue it again while the host is online."
            }
            JobErrorCode::ReplayedJob => {
                "The host had already applied this job; a replay was refused. Read the audit trail if you did not expect it."
            }
            JobErrorCode::AccountFilesMalformed => {
                "Repair /etc/passwd, /etc/group or /etc/shadow on the host (pwck, grpck), then queue the job again."
            }
            JobErrorCode::SystemAccount => {
                "Root and system accounts are refused unless the host's agent configuration allows adopting system accounts."
            }
            JobErrorCode::EphemeralAccount => {
                "The account is a temporary one that Latch created; it ends with its grant and cannot be enrolled."
            }
            JobErrorCode::NoSudoGroup => {
                "The host has none of the groups it allows granting (sudo or wheel); install sudo or set allowed_groups on the host."
            }
        }
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobErrorCode::InvalidJob => "invalid_job",
            JobErrorCode::AccountExists => "account_exists",
            JobErrorCode::GroupExists => "group_exists",
            JobErrorCode::AccountNotManaged => "account_not_managed",
            JobErrorCode::NoSuchAccount => "no_such_account",
            JobErrorCode::NoSuchGroup => "no_such_group",
            JobErrorCode::GroupNotAllowed => "group_not_allowed",
            JobErrorCode::ShellNotAllowed => "shell_not_allowed",
            JobErrorCode::UidRangeExhausted => "uid_range_exhausted",
            JobErrorCode::HostBusy => "host_busy",
            JobErrorCode::ToolFailed => "tool_failed",
            JobErrorCode::VerifyFailed => "verify_failed",
            JobErrorCode::AgentStateError => "agent_state_error",
            JobErrorCode::AgentUnresponsive => "agent_unresponsive",
            JobErrorCode::StaleJob => "stale_job",
            JobErrorCode::AccountInUse => "account_in_use",
            JobErrorCode::HostRemoved => "host_removed",
            JobErrorCode::UnsignedJob => "unsigned_job",
            JobErrorCode::BadSignature => "bad_signature",
            JobErrorCode::WrongHost => "wrong_host",
            JobErrorCode::JobExpired => "job_expired",
            JobErrorCode::ReplayedJob => "replayed_job",
            JobErrorCode::AccountFilesMalformed => "account_files_malformed",
            JobErrorCode::SystemAccount => "system_account",
            JobErrorCode::EphemeralAccount => "ephemeral_account",
            JobErrorCode::NoSudoGroup => "no_sudo_group",
        }
    }
}

impl fmt::Display for JobErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed: a stable code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobError {
    /// Machine-readable reason.
    pub code: JobErrorCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

impl JobError {
    /// A failure with `code` and `message`.
    pub fn new(code: JobErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
