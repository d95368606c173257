//! `POST /v1/jobs`: the request body and how it becomes a job — the kind's fields, the password
//! hashed, and a grant's window bounded by the server's limits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::{JobKind, JobSpec};
use crate::names::ValidationError;

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
}
