//! Bodies of the just-in-time access endpoints (issue 12): access policies (`/v1/policies`).
//!
//! A policy says which group may request which access on which hosts, for how long at most,
//! whether and by whom it must be approved, when, and whether one holder at a time.
//! Requests refuse unknown fields.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveTime, Utc, Weekday};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::labels::Selector;
use crate::names::ValidationError;

/// Longest access a policy may allow, in minutes (a week).
pub const MAX_POLICY_MINUTES: u32 = 7 * 24 * 60;
/// Most approvals a policy may ask for.
pub const MAX_APPROVALS: u32 = 10;
/// Most time windows one policy may list.
pub const MAX_WINDOWS: usize = 14;

/// What a request asks for on a host.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum AccessKind {
    /// An ephemeral account for the requester (with her SSH key).
    EphemeralAccount,
    /// The ephemeral account, in the host's sudo group.
    Sudo,
}

impl AccessKind {
    /// Every kind.
    pub const ALL: [AccessKind; 2] = [Self::EphemeralAccount, Self::Sudo];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EphemeralAccount => "ephemeral-account",
            Self::Sudo => "sudo",
        }
    }
}

impl fmt::Display for AccessKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccessKind {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| {
                ValidationError::new(
                    "access",
                    format!("unknown access {text:?}; use ephemeral-account or sudo"),
                )
            })
    }
}

/// When requests are allowed: on these days (UTC), between `start` and `end` (UTC, `HH:MM`;
/// `end` after `start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// Days of the week: `mon` … `sun`.
    pub days: Vec<String>,
    /// From (inclusive), `HH:MM` UTC.
    pub start: String,
    /// Until (exclusive), `HH:MM` UTC.
    pub end: String,
}

fn weekday(text: &str) -> Option<Weekday> {
    match text {
        "mon" => Some(Weekday::Mon),
        "tue" => Some(Weekday::Tue),
        "wed" => Some(Weekday::Wed),
        "thu" => Some(Weekday::Thu),
        "fri" => Some(Weekday::Fri),
        "sat" => Some(Weekday::Sat),
        "sun" => Some(Weekday::Sun),
        _ => None,
    }
}

fn clock(field: &'static str, text: &str) -> Result<NaiveTime, ValidationError> {
    NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| {
        ValidationError::new(
            field,
            format!("{text:?} is not a time of day as HH:MM (UTC)"),
        )
    })
}

impl TimeWindow {
    /// Checks the days and times.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.days.is_empty() || self.days.len() > 7 {
            return Err(ValidationError::new(
                "windows",
                "a window names 1 to 7 days (mon, tue, wed, thu, fri, sat, sun)",
            ));
        }
        if let Some(bad) = self.days.iter().find(|d| weekday(d).is_none()) {
            return Err(ValidationError::new(
                "windows",
                format!("{bad:?} is not a day; use mon, tue, wed, thu, fri, sat or sun"),
            ));
        }
        let (start, end) = (clock("windows", &self.start)?, clock("windows", &self.end)?);
        if end <= start {
            return Err(ValidationError::new(
                "windows",
                format!(
                    "a window ends after it starts ({} is not after {}); split one across midnight into two",
                    self.end, self.start
                ),
            ));
        }
        Ok(())
    }

    /// Whether `at` falls in this window.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let on_day = self.days.iter().any(|d| weekday(d) == Some(at.weekday()));
        let (Ok(start), Ok(end)) = (clock("windows", &self.start), clock("windows", &self.end))
        else {
            return false;
        };
        let time = at.time();
        on_day && time >= start && time < end
    }
}

/// A policy as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    /// Record id (`pol_…`).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The group whose members (users and service users) may request.
    pub group: String,
    /// What they may request.
    pub access: Vec<AccessKind>,
    /// On which hosts (a label selector).
    pub hosts: String,
    /// The longest window, in minutes.
    pub max_minutes: u32,
    /// Whether requests need approval.
    pub approval_required: bool,
    /// The group whose members approve (never the requester).
    pub approver_group: Option<String>,
    /// How many different approvers must approve.
    pub approvals: u32,
    /// Service users' requests up to this many minutes are approved at once.
    pub auto_approve_service_minutes: Option<u32>,
    /// When requests are allowed (none: always).
    pub windows: Vec<TimeWindow>,
    /// One holder at a time per host and access.
    pub exclusive: bool,
    /// A second factor at request time.
    pub mfa_at_request: bool,
    /// A second factor at approval time.
    pub mfa_at_approval: bool,
    /// The holder re-confirms with a second factor this often, or the grant ends.
    pub reauth_minutes: Option<u32>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/policies`; `PUT /v1/policies/{policy}` replaces every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// Unique name (the vault-name rules).
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// The requesters' group (name or id).
    pub group: String,
    /// What they may request (at least one).
    pub access: Vec<AccessKind>,
    /// On which hosts: a label selector (`env=prod,team=db`); never empty.
    pub hosts: String,
    /// The longest window, 1–10080 minutes.
    pub max_minutes: u32,
    /// Whether requests need approval.
    #[serde(default = "yes")]
    pub approval_required: bool,
    /// The approvers' group (name or id); required when approval is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_group: Option<String>,
    /// How many different approvers (1–10; default 1).
    #[serde(default = "one")]
    pub approvals: u32,
    /// Service users' requests up to this many minutes are approved at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_approve_service_minutes: Option<u32>,
    /// When requests are allowed (none: always).
    #[serde(default)]
    pub windows: Vec<TimeWindow>,
    /// One holder at a time per host and access.
    #[serde(default)]
    pub exclusive: bool,
    /// A second factor at request time.
    #[serde(default)]
    pub mfa_at_request: bool,
    /// A second factor at approval time.
    #[serde(default)]
    pub mfa_at_approval: bool,
    /// Re-confirmation interval, 5–1440 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reauth_minutes: Option<u32>,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

impl PolicyRequest {
    /// Checks every field (the group names are resolved by the server).
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::vault::validate_vault_name("name", &self.name)?;
        if self.description.chars().count() > 1000
            || self
                .description
                .chars()
                .any(|c| c.is_control() && c != '\n')
        {
            return Err(ValidationError::new(
                "description",
                "at most 1000 characters, no control characters but newlines",
            ));
        }
        if self.access.is_empty() {
            return Err(ValidationError::new(
                "access",
                "name at least one of ephemeral-account, sudo",
            ));
        }
        if self.hosts.trim().is_empty() {
            return Err(ValidationError::new(
                "hosts",
                "a policy names its hosts with a label selector (e.g. env=prod); an empty one would mean every host",
            ));
        }
        Selector::parse(&self.hosts).map_err(|e| ValidationError::new("hosts", e.reason))?;
        if !(1..=MAX_POLICY_MINUTES).contains(&self.max_minutes) {
            return Err(ValidationError::new(
                "max_minutes",
                format!("must be 1 to {MAX_POLICY_MINUTES} minutes (a week)"),
            ));
        }
        if self.approval_required && self.approver_group.is_none() {
            return Err(ValidationError::new(
                "approver_group",
                "a policy that needs approval names the group whose members approve",
            ));
        }
        if !(1..=MAX_APPROVALS).contains(&self.approvals) {
            return Err(ValidationError::new(
                "approvals",
                format!("must be 1 to {MAX_APPROVALS}"),
            ));
        }
        if let Some(minutes) = self.auto_approve_service_minutes
            && !(1..=self.max_minutes).contains(&minutes)
        {
            return Err(ValidationError::new(
                "auto_approve_service_minutes",
                "must be 1 to the policy's max_minutes",
            ));
        }
        if self.windows.len() > MAX_WINDOWS {
            return Err(ValidationError::new(
                "windows",
                format!("at most {MAX_WINDOWS} windows"),
            ));
        }
        for window in &self.windows {
            window.validate()?;
        }
        if let Some(minutes) = self.reauth_minutes
            && !(5..=1440).contains(&minutes)
        {
            return Err(ValidationError::new(
                "reauth_minutes",
                "must be 5 to 1440 minutes",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PolicyRequest {
        PolicyRequest {
            name: "dba-prod".into(),
            description: String::new(),
            group: "dbas".into(),
            access: vec![AccessKind::Sudo],
            hosts: "env=prod".into(),
            max_minutes: 120,
            approval_required: true,
            approver_group: Some("managers".into()),
            approvals: 1,
            auto_approve_service_minutes: None,
            windows: Vec::new(),
            exclusive: false,
            mfa_at_request: false,
            mfa_at_approval: true,
            reauth_minutes: None,
        }
    }

    #[test]
    fn policies_are_checked() {
        assert!(request().validate().is_ok());
        let bad = [
            PolicyRequest {
                hosts: String::new(),
                ..request()
            },
            PolicyRequest {
                hosts: "=prod".into(),
                ..request()
            },
            PolicyRequest {
                access: Vec::new(),
                ..request()
            },
            PolicyRequest {
                max_minutes: 0,
                ..request()
            },
            PolicyRequest {
                max_minutes: MAX_POLICY_MINUTES + 1,
                ..request()
            },
            PolicyRequest {
                approver_group: None,
                ..request()
            },
            PolicyRequest {
                approvals: 0,
                ..request()
            },
            PolicyRequest {
                auto_approve_service_minutes: Some(121),
                ..request()
            },
            PolicyRequest {
                reauth_minutes: Some(1),
                ..request()
            },
            PolicyRequest {
                windows: vec![TimeWindow {
                    days: vec!["mon".into()],
                    start: "18:00".into(),
                    end: "08:00".into(),
                }],
                ..request()
            },
            PolicyRequest {
                windows: vec![TimeWindow {
                    days: vec!["monday".into()],
                    start: "08:00".into(),
                    end: "18:00".into(),
                }],
                ..request()
            },
        ];
        for policy in bad {
            assert!(policy.validate().is_err(), "{policy:?}");
        }
    }

    #[test]
    fn windows_contain_their_days_and_hours() {
        let window = TimeWindow {
            days: vec!["mon".into(), "tue".into()],
            start: "08:00".into(),
            end: "18:00".into(),
        };
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // 2026-11-23 is a Monday.
        assert!(window.contains(at("2026-11-23T08:00:00Z")));
        assert!(window.contains(at("2026-11-24T17:59:59Z")));
        assert!(!window.contains(at("2026-11-23T18:00:00Z")));
        assert!(!window.contains(at("2026-11-23T07:59:59Z")));
        assert!(!window.contains(at("2026-11-25T12:00:00Z")), "a Wednesday");
    }

    #[test]
    fn access_kinds_round_trip() {
        for kind in AccessKind::ALL {
            assert_eq!(kind.as_str().parse::<AccessKind>().unwrap(), kind);
        }
        assert!("root".parse::<AccessKind>().is_err());
    }
}

/// Most hosts one request (a label selector) may span.
pub const MAX_REQUEST_HOSTS: usize = 100;

/// Body of `POST /v1/access/requests`: one host (`host`) or every host matching a label
/// selector (`hosts`), never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequestCreate {
    /// One host, by id or name.
    #[serde(default)]
    pub host: Option<String>,
    /// A label selector over several hosts (`env=prod,role=db`).
    #[serde(default)]
    pub hosts: Option<String>,
    /// What: `ephemeral-account` or `sudo`.
    pub access: AccessKind,
    /// For how long once active, in minutes.
    pub minutes: u32,
    /// Why (1–500 characters).
    pub reason: String,
    /// The requester's SSH public key; without one Latch generates a key pair and returns its
    /// private half once, in the answer.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
}

impl AccessRequestCreate {
    /// Checks the shape: exactly one of `host` and `hosts`, a valid selector, at least a minute.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match (&self.host, &self.hosts) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "hosts",
                    "give either host (one host) or hosts (a label selector), not both",
                ));
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "host",
                    "name a host, or a label selector in hosts",
                ));
            }
            (Some(host), None) => {
                if host.is_empty() || host.len() > 253 || host.chars().any(char::is_control) {
                    return Err(ValidationError::new(
                        "host",
                        "must be a host id or host name",
                    ));
                }
            }
            (None, Some(selector)) => {
                let parsed = Selector::parse(selector)
                    .map_err(|e| ValidationError::new("hosts", e.reason))?;
                if parsed.is_empty() {
                    return Err(ValidationError::new(
                        "hosts",
                        "an empty selector would match every host; name the labels",
                    ));
                }
            }
        }
        if self.minutes == 0 || self.minutes > MAX_POLICY_MINUTES {
            return Err(ValidationError::new(
                "minutes",
                format!("must be 1 to {MAX_POLICY_MINUTES}"),
            ));
        }
        Ok(())
    }
}

/// Body of `POST /v1/access/requests/{id}/approve|deny|revoke|cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessDecision {
    /// Why (optional for approvals, 1–500 characters when given).
    #[serde(default)]
    pub reason: String,
}

/// One approver's decision, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    /// The approver's name.
    pub by: String,
    /// `approve` or `deny`.
    pub decision: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One host of a request, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestHostView {
    /// Host id.
    pub host_id: String,
    /// Host name.
    pub host: String,
    /// `waiting`, `provisioning`, `active`, `failed`, `revoking` or `revoked`.
    pub state: String,
    /// The create-account job.
    pub provision_job: Option<String>,
    /// The delete-account job.
    pub revoke_job: Option<String>,
    /// What went wrong on this host.
    pub error: Option<String>,
    /// Whether the host trusts Latch's SSH certificate authority (log in with the certificate).
    pub ssh_certificate: bool,
    /// The create-account job's status (`pending`, `confirmed`, `failed`).
    pub provision_status: Option<String>,
    /// The delete-account job's status.
    pub revoke_status: Option<String>,
}

/// An access request, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessRequestView {
    /// `ar_…`.
    pub id: String,
    /// The requester's name.
    pub requester: String,
    /// What was asked for: a host, or a label selector.
    pub target: String,
    /// What.
    pub access: AccessKind,
    /// The window, in minutes, from activation.
    pub minutes: u32,
    /// Why.
    pub reason: String,
    /// `pending_approval`, `approved`, `provisioning`, `active`, `revoking`, `expired`,
    /// `revoked`, `denied`, `cancelled` or `failed`.
    pub state: String,
    /// The policy that allowed it.
    pub policy: String,
    /// Who approves (a group's name), when approval is needed.
    pub approver_group: Option<String>,
    /// How many approvals it needs.
    pub approvals_needed: u32,
    /// The approvers' decisions.
    pub decisions: Vec<DecisionView>,
    /// The account on the hosts, once provisioning started.
    pub account: Option<String>,
    /// The hosts, with their status.
    pub hosts: Vec<RequestHostView>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// An undecided request expires then.
    pub pending_until: Option<DateTime<Utc>>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// The last decision's reason (a denial's, a cancellation's, a revocation's).
    pub decision_reason: Option<String>,
    /// When every host confirmed: the window started.
    pub activated_at: Option<DateTime<Utc>>,
    /// When the window ends.
    pub ends_at: Option<DateTime<Utc>>,
    /// Why it ended (`expired`, `revoked`, `failed`).
    pub end_reason: Option<String>,
    /// When every host confirmed the removal.
    pub ended_at: Option<DateTime<Utc>>,
    /// The holder re-confirms (`latchctl access confirm`) before this, or the grant ends.
    pub confirm_by: Option<DateTime<Utc>>,
    /// The SSH public key installed.
    pub ssh_public_key: Option<String>,
    /// Latch generated the key pair.
    pub key_generated: bool,
    /// The OpenSSH user certificate for the window (hosts that trust Latch's CA).
    pub certificate: Option<String>,
    /// The generated private key (OpenSSH format): only in the answer that created the
    /// request, never again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

impl AccessRequestView {
    /// Whether the request is over (nothing will change any more).
    pub fn is_over(&self) -> bool {
        matches!(
            self.state.as_str(),
            "expired" | "revoked" | "denied" | "cancelled" | "failed"
        )
    }
}
