//! Jobs: what the control plane asks a host to do, how it ends, and why it failed.
//!
//! Every kind is a declarative *ensure* operation, so a re-delivered job is harmless: applying
//! `create-account` to a host where the account already exists (created by Latch for the same
//! request) confirms without changing anything.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

mod error;

pub use error::{JobError, JobErrorCode};

use crate::names::{
    ValidationError, validate_group_name, validate_password_hash, validate_principal,
    validate_shell, validate_ssh_public_key, validate_user_name,
};

/// Most SSH keys one account may carry.
pub const MAX_SSH_KEYS: usize = 16;
/// Most extra groups one create-account job may name.
pub const MAX_GROUPS: usize = 16;
/// Most SSH certificate principals one create-account job may name.
pub const MAX_PRINCIPALS: usize = 8;

/// The kinds of job, spelled as on the command line and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Ensure an ephemeral account exists (`useradd`).
    CreateAccount,
    /// Ensure an account Latch created is gone (`userdel -r`).
    DeleteAccount,
    /// Ensure a managed account is a member of an allowed group (`gpasswd -a`).
    AddGroup,
    /// Ensure a managed account is not a member of a group (`gpasswd -d`).
    RemoveGroup,
    /// Apply a pre-hashed password to a managed account (`chpasswd -e`).
    SetPassword,
    /// Tell the agent the control plane's next job-signing key (queued by `latchctl signing-key
    /// rotate`, never through the jobs API).
    RotateSigningKey,
    /// Record an existing host account as adopted, so that Latch may set its password from
    /// then on (never delete, lock or expire it). Queued only by the control plane's account
    /// enrollment ([`JobSpec::AdoptAccount`]), never through the jobs API.
    AdoptAccount,
}

impl JobKind {
    /// Every kind, in documentation order.
    pub const ALL: [JobKind; 5] = [
        JobKind::CreateAccount,
        JobKind::DeleteAccount,
        JobKind::AddGroup,
        JobKind::RemoveGroup,
        JobKind::SetPassword,
    ];

    /// The wire and CLI spelling (`create-account`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::CreateAccount => "create-account",
            JobKind::DeleteAccount => "delete-account",
            JobKind::AddGroup => "add-group",
            JobKind::RemoveGroup => "remove-group",
            JobKind::SetPassword => "set-password",
            JobKind::RotateSigningKey => "rotate-signing-key",
            JobKind::AdoptAccount => "adopt-account",
        }
    }

    /// Parses the wire spelling of a kind administrators may queue (one of [`JobKind::ALL`]).
    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Every kind a job list may show, those only the control plane queues included.
    pub const LISTED: [JobKind; 7] = [
        JobKind::CreateAccount,
        JobKind::DeleteAccount,
        JobKind::AddGroup,
        JobKind::RemoveGroup,
        JobKind::SetPassword,
        JobKind::AdoptAccount,
        JobKind::RotateSigningKey,
    ];

    /// Parses the wire spelling of any kind (one of [`JobKind::LISTED`]), for filters.
    pub fn parse_listed(s: &str) -> Option<JobKind> {
        JobKind::LISTED.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's parameters, tagged by kind. This is exactly what the agent receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum JobSpec {
    /// See [`JobKind::CreateAccount`].
    CreateAccount {
        /// The account name.
        user: String,
        /// Extra groups (each must be allowed by the host).
        #[serde(default)]
        groups: Vec<String>,
        /// Login shell; the host's configured default when absent.
        #[serde(default)]
        shell: Option<String>,
        /// SSH public keys for `~/.ssh/authorized_keys`.
        #[serde(default)]
        ssh_keys: Vec<String>,
        /// When the access ends.
        #[serde(default)]
        expires_at: Option<DateTime<Utc>>,
        /// Also make the account a member of the host's sudo group: the first group of the
        /// host's allowed groups that exists there. Absent from payloads that do not ask for
        /// it, so jobs signed before the field existed keep their bytes.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sudo: bool,
        /// SSH certificate principals the account accepts (`AuthorizedPrincipalsFile`, on hosts
        /// that trust Latch's user CA): at most [`MAX_PRINCIPALS`], each checked by
        /// [`validate_principal`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        principals: Vec<String>,
    },
    /// See [`JobKind::DeleteAccount`].
    DeleteAccount {
        /// The account name.
        user: String,
    },
    /// See [`JobKind::AddGroup`].
    AddGroup {
        /// The account name.
        user: String,
        /// The group to join.
        group: String,
        /// When the membership ends.
        #[serde(default)]
        expires_at: Option<DateTime<Utc>>,
    },
    /// See [`JobKind::RemoveGroup`].
    RemoveGroup {
        /// The account name.
        user: String,
        /// The group to leave.
        group: String,
    },
    /// See [`JobKind::SetPassword`].
    SetPassword {
        /// The account name.
        user: String,
        /// SHA-512 crypt hash made by the control plane; never a plaintext password.
        password_hash: String,
    },
    /// See [`JobKind::RotateSigningKey`].
    RotateSigningKey {
        /// The next Ed25519 public key, base64.
        next_key: String,
    },
    /// See [`JobKind::AdoptAccount`].
    AdoptAccount {
        /// The existing account's name.
        user: String,
    },
}

impl JobSpec {
    /// The job's kind.
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::CreateAccount { .. } => JobKind::CreateAccount,
            JobSpec::DeleteAccount { .. } => JobKind::DeleteAccount,
            JobSpec::AddGroup { .. } => JobKind::AddGroup,
            JobSpec::RemoveGroup { .. } => JobKind::RemoveGroup,
            JobSpec::SetPassword { .. } => JobKind::SetPassword,
            JobSpec::RotateSigningKey { .. } => JobKind::RotateSigningKey,
            JobSpec::AdoptAccount { .. } => JobKind::AdoptAccount,
        }
    }

    /// When the access this job grants ends (create-account and add-group only).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            JobSpec::CreateAccount { expires_at, .. } | JobSpec::AddGroup { expires_at, .. } => {
                *expires_at
            }
            _ => None,
        }
    }

    /// The group the job is about (add-group and remove-group only).
    pub fn group(&self) -> Option<&str> {
        match self {
            JobSpec::AddGroup { group, .. } | JobSpec::RemoveGroup { group, .. } => Some(group),
            _ => None,
        }
    }

    /// The account the job is about (empty for a signing-key rotation, which concerns none).
    pub fn user(&self) -> &str {
        match self {
            JobSpec::CreateAccount { user, .. }
            | JobSpec::DeleteAccount { user }
            | JobSpec::AddGroup { user, .. }
            | JobSpec::RemoveGroup { user, .. }
            | JobSpec::SetPassword { user, .. }
            | JobSpec::AdoptAccount { user } => user,
            JobSpec::RotateSigningKey { .. } => "",
        }
    }

    /// Checks every field against DESIGN.md §3 rule 8. Called by the API before queueing and by
    /// the agent before acting.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let JobSpec::RotateSigningKey { next_key } = self {
            return match crate::names::decode_public_key(next_key) {
                Some(_) => Ok(()),
                None => Err(ValidationError::new(
                    "next_key",
                    "must be a base64 Ed25519 public key (32 bytes)",
                )),
            };
        }
        validate_user_name(self.user())?;
        match self {
            JobSpec::CreateAccount {
                groups,
                shell,
                ssh_keys,
                principals,
                ..
            } => {
                if groups.len() > MAX_GROUPS {
                    return Err(ValidationError::new(
                        "groups",
                        format!("at most {MAX_GROUPS} groups"),
                    ));
                }
                for group in groups {
                    validate_group_name(group)
                        .map_err(|e| ValidationError::new("groups", e.reason))?;
                }
                if let Some(shell) = shell {
                    validate_shell(shell)?;
                }
                if ssh_keys.len() > MAX_SSH_KEYS {
                    return Err(ValidationError::new(
                        "ssh_keys",
                        format!("at most {MAX_SSH_KEYS} keys"),
                    ));
                }
                for key in ssh_keys {
                    validate_ssh_public_key(key)?;
                }
                if principals.len() > MAX_PRINCIPALS {
                    return Err(ValidationError::new(
                        "principals",
                        format!("at most {MAX_PRINCIPALS} principals"),
                    ));
                }
                for principal in principals {
                    validate_principal(principal)?;
                }
                Ok(())
            }
            JobSpec::DeleteAccount { .. } | JobSpec::AdoptAccount { .. } => Ok(()),
            JobSpec::AddGroup { group, .. } | JobSpec::RemoveGroup { group, .. } => {
                validate_group_name(group)
            }
            JobSpec::SetPassword { password_hash, .. } => validate_password_hash(password_hash),
            JobSpec::RotateSigningKey { .. } => Ok(()),
        }
    }

    /// The parameters as shown to administrators: the password hash is replaced by a marker.
    pub fn redacted(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(hash) = value.get_mut("password_hash") {
            *hash = serde_json::Value::String("<redacted>".to_owned());
        }
        value
    }
}

/// A job's status as administrators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Queued or delivered, no outcome yet.
    Pending,
    /// The host applied the job and verified the result.
    Confirmed,
    /// The host refused or could not apply the job, or never answered.
    Failed,
}

impl JobStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Confirmed => "confirmed",
            JobStatus::Failed => "failed",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<JobStatus> {
        [JobStatus::Pending, JobStatus::Confirmed, JobStatus::Failed]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent reports for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobOutcome {
    /// Applied and verified.
    Confirmed {
        /// What a person should know although the post-condition holds: a removal step that
        /// could not be done (revocation is best-effort per step and verified as a whole), or
        /// that there was nothing to do.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    /// Refused or failed.
    Failed {
        /// Why.
        error: JobError,
    },
}

/// Most notes one outcome may carry, and the longest note.
pub const MAX_OUTCOME_NOTES: usize = 16;
/// Longest note, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;

impl JobOutcome {
    /// The outcome cut to what [`JobOutcome::validate`] accepts (at most [`MAX_OUTCOME_NOTES`]
    /// notes of [`MAX_NOTE_BYTES`], an error message of 4096 bytes, no NUL), so a long tool
    /// error or many failed steps never make an outcome the control plane refuses.
    pub fn bounded(self) -> Self {
        fn cut(text: &str, max: usize) -> String {
            let clean = text.replace('\0', " ");
            if clean.len() <= max {
                return clean;
            }
            let mut end = max.saturating_sub(3);
            while !clean.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &clean[..end])
        }
        match self {
            JobOutcome::Confirmed { notes } => {
                let total = notes.len();
                let mut kept: Vec<String> = notes
                    .iter()
                    .take(MAX_OUTCOME_NOTES)
                    .map(|n| cut(n, MAX_NOTE_BYTES))
                    .collect();
                if total > MAX_OUTCOME_NOTES {
                    kept.pop();
                    kept.push(format!(
                        "… and {} more note(s); see the agent's log",
                        total - MAX_OUTCOME_NOTES + 1
                    ));
                }
                JobOutcome::Confirmed { notes: kept }
            }
            JobOutcome::Failed { error } => JobOutcome::Failed {
                error: JobError {
                    code: error.code,
                    message: cut(&error.message, 4096),
                },
            },
        }
    }

    /// Confirmed, with nothing to note.
    pub fn confirmed() -> Self {
        JobOutcome::Confirmed { notes: Vec::new() }
    }

    /// Refuses outcomes a well-behaved agent never sends: too many or too long notes, an error
    /// message over 4096 bytes, NUL bytes.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            JobOutcome::Confirmed { notes } => {
                if notes.len() > MAX_OUTCOME_NOTES
                    || notes
                        .iter()
                        .any(|n| n.len() > MAX_NOTE_BYTES || n.contains('\0'))
                {
                    return Err(ValidationError::new(
                        "outcome.notes",
                        format!(
                            "at most {MAX_OUTCOME_NOTES} notes of at most {MAX_NOTE_BYTES} bytes without NUL"
                        ),
                    ));
                }
            }
            JobOutcome::Failed { error } => {
                if error.message.len() > 4096 || error.message.contains('\0') {
                    return Err(ValidationError::new(
                        "outcome.error.message",
                        "must be at most 4096 bytes without NUL",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The status this outcome gives the job.
    pub fn status(&self) -> JobStatus {
        match self {
            JobOutcome::Confirmed { .. } => JobStatus::Confirmed,
            JobOutcome::Failed { .. } => JobStatus::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_with_kebab_case_kind() {
        let spec = JobSpec::AddGroup {
            user: "alice".into(),
            group: "sudo".into(),
            expires_at: None,
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["kind"], "add-group");
        assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), spec);
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let extra = serde_json::json!({"kind": "delete-account", "user": "alice", "force": true});
        assert!(serde_json::from_value::<JobSpec>(extra).is_err());
        let kind = serde_json::json!({"kind": "run-command", "user": "alice"});
        assert!(serde_json::from_value::<JobSpec>(kind).is_err());
    }

    #[test]
    fn validate_refuses_hostile_fields() {
        let bad = [
            JobSpec::DeleteAccount {
                user: "root".into(),
            },
            JobSpec::AddGroup {
                user: "alice".into(),
                group: "-G".into(),
                expires_at: None,
            },
            JobSpec::SetPassword {
                user: "alice".into(),
                password_hash: "$6$x$y\nroot:x".into(),
            },
            JobSpec::CreateAccount {
                user: "alice".into(),
                groups: vec!["a:b".into()],
                shell: None,
                ssh_keys: vec![],
                expires_at: None,
                sudo: false,
                principals: vec![],
            },
            JobSpec::CreateAccount {
                user: "alice".into(),
                groups: vec![],
                shell: Some("/bin/sh -i".into()),
                ssh_keys: vec![],
                expires_at: None,
                sudo: false,
                principals: vec![],
            },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
    }

    fn create_with(sudo: bool, principals: &[&str]) -> JobSpec {
        JobSpec::CreateAccount {
            user: "alice".into(),
            groups: vec![],
            shell: None,
            ssh_keys: vec![],
            expires_at: None,
            sudo,
            principals: principals.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn sudo_and_principals_are_absent_from_payloads_that_do_not_use_them() {
        // A payload signed before the fields existed decodes, and encodes to the same bytes.
        let old = r#"{"kind":"create-account","user":"alice","groups":[],"shell":null,"ssh_keys":[],"expires_at":null}"#;
        let spec: JobSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec, create_with(false, &[]));
        assert_eq!(serde_json::to_string(&spec).unwrap(), old);
        let new = create_with(true, &["p-test"]);
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["sudo"], true);
        assert_eq!(json["principals"], serde_json::json!(["p-test"]));
        assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), new);
    }

    #[test]
    fn principals_are_validated() {
        assert_eq!(
            create_with(true, &["p-test", "ops@example.com"]).validate(),
            Ok(())
        );
        let nine: Vec<String> = (0..=MAX_PRINCIPALS).map(|i| format!("p{i}")).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        for bad in [
            create_with(false, &nine),
            create_with(false, &[""]),
            create_with(false, &["a\nroot"]),
            create_with(false, &["from=\"*\" x"]),
            create_with(false, &[&"p".repeat(65)]),
        ] {
            let err = bad.validate().unwrap_err();
            assert_eq!(err.field, "principals", "{bad:?}");
        }
    }

    #[test]
    fn redacted_hides_the_hash() {
        let spec = JobSpec::SetPassword {
            user: "alice".into(),
            password_hash: "$6$s$h".into(),
        };
        let shown = spec.redacted().to_string();
        assert!(!shown.contains("$6$s$h"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn outcome_wire_shape() {
        let failed = JobOutcome::Failed {
            error: JobError::new(JobErrorCode::GroupNotAllowed, "nope"),
        };
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(json["error"]["code"], "group_not_allowed");
        assert_eq!(serde_json::from_value::<JobOutcome>(json).unwrap(), failed);
    }

    #[test]
    fn confirmed_outcomes_carry_notes_only_when_there_are_some() {
        let plain = serde_json::to_value(JobOutcome::confirmed()).unwrap();
        assert_eq!(plain, serde_json::json!({"status": "confirmed"}));
        let old: JobOutcome = serde_json::from_value(plain).unwrap();
        assert_eq!(old, JobOutcome::confirmed());
        let noted = JobOutcome::Confirmed {
            notes: vec!["home directory kept".into()],
        };
        let json = serde_json::to_value(&noted).unwrap();
        assert_eq!(json["notes"][0], "home directory kept");
        assert_eq!(serde_json::from_value::<JobOutcome>(json).unwrap(), noted);
        let flood = JobOutcome::Confirmed {
            notes: vec!["x".into(); MAX_OUTCOME_NOTES + 1],
        };
        assert!(flood.validate().is_err());
        assert!(flood.bounded().validate().is_ok());
        assert!(noted.validate().is_ok());
        let long = JobOutcome::Failed {
            error: JobError::new(JobErrorCode::ToolFailed, "é".repeat(5000)),
        };
        assert!(long.validate().is_err());
        assert!(long.bounded().validate().is_ok());
    }

    #[test]
    fn kinds_parse_their_own_spelling() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(JobKind::parse("create_account"), None);
        // Queued by the control plane itself only, never by name through the jobs API.
        assert_eq!(JobKind::parse("adopt-account"), None);
        assert_eq!(JobKind::parse("rotate-signing-key"), None);
    }

    #[test]
    fn adopt_account_wire_shape_and_validation() {
        let spec = JobSpec::AdoptAccount {
            user: "legacy".into(),
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "adopt-account", "user": "legacy"})
        );
        assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), spec);
        assert_eq!(spec.kind(), JobKind::AdoptAccount);
        assert_eq!(spec.kind().as_str(), "adopt-account");
        assert_eq!(spec.user(), "legacy");
        assert_eq!(spec.validate(), Ok(()));
        for hostile in ["root", "-oops", "a:b", "a\nroot", ""] {
            let spec = JobSpec::AdoptAccount {
                user: hostile.into(),
            };
            assert!(spec.validate().is_err(), "{hostile:?}");
        }
        let extra = serde_json::json!({"kind": "adopt-account", "user": "legacy", "uid": 0});
        assert!(serde_json::from_value::<JobSpec>(extra).is_err());
        assert_eq!(
            serde_json::to_value(JobErrorCode::SystemAccount).unwrap(),
            "system_account"
        );
        assert_eq!(JobErrorCode::EphemeralAccount.as_str(), "ephemeral_account");
    }
}
