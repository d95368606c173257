//! Bodies of the webhook endpoints (`/v1/webhooks`): the endpoints that receive signed event
//! notifications, and the record of each delivery.
//!
//! A receiver checks `X-Latch-Signature: sha256=<hex>`, the HMAC-SHA-256 under the webhook's
//! secret of `<X-Latch-Timestamp>.<body>`. Requests refuse unknown fields; the secret appears
//! only in [`CreateWebhookRequest`], whose `Debug` output redacts it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::ValidationError;

/// Shortest signing secret.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest signing secret.
pub const MAX_SECRET_LEN: usize = 256;
/// Most event names one webhook may subscribe to.
pub const MAX_EVENTS: usize = 32;
/// The event name that subscribes to every event.
pub const ALL_EVENTS: &str = "*";

/// `POST /v1/webhooks`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where to `POST`: `https://…`, or `http://` on a loopback address.
    pub url: String,
    /// The events it receives (`*`: every event).
    pub events: Vec<String>,
    /// The signing secret (16–256 printable ASCII characters).
    pub secret: String,
}

impl fmt::Debug for CreateWebhookRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateWebhookRequest")
            .field("url", &"<redacted>")
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A webhook as admins see it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// Record id (`wh_…`).
    pub id: String,
    /// Where it posts.
    pub url: String,
    /// The events it receives.
    pub events: Vec<String>,
    /// Who added it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// How a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet answered with 2xx; another attempt is due at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed; no more are made.
    Failed,
}

impl DeliveryStatus {
    /// The stored (and wire) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// The status named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One delivery of one event to one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// Record id (`whd_…`).
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event's name (`X-Latch-Event`).
    pub event: String,
    /// The JSON body sent.
    pub body: serde_json::Value,
    /// How it stands.
    pub status: DeliveryStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last answer, if there was one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Checks an event name: `*`, or 1–64 of lower-case letters, digits, `_` and `.`, starting
/// with a letter (`access.requested`, `break_glass`).
pub fn validate_event(name: &str) -> Result<(), ValidationError> {
    if name == ALL_EVENTS {
        return Ok(());
    }
    let shaped = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if shaped {
        Ok(())
    } else {
        Err(ValidationError::new(
            "events",
            format!(
                "'{}' is not an event name: use lower-case letters, digits, '_' and '.', starting with a letter (e.g. access.requested), or '*' for every event",
                name.escape_debug()
            ),
        ))
    }
}

/// Checks a signing secret: 16–256 printable ASCII characters without spaces.
pub fn validate_secret(secret: &str) -> Result<(), ValidationError> {
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len()) {
        return Err(ValidationError::new(
            "secret",
            format!(
                "must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters long (e.g. `openssl rand -hex 32`)"
            ),
        ));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValidationError::new(
            "secret",
            "must be printable ASCII without spaces (e.g. `openssl rand -hex 32`)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        for good in ["*", "break_glass", "access.requested", "a1"] {
            assert!(validate_event(good).is_ok(), "{good}");
        }
        for bad in ["", "Access", "1x", "a b", "a\nb", "a*", &"a".repeat(65)] {
            assert!(validate_event(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets() {
        assert!(validate_secret("0123456789abcdef").is_ok());
        assert!(validate_secret("short").is_err());
        assert!(validate_secret("has a space inside it").is_err());
        assert!(validate_secret(&"x".repeat(257)).is_err());
    }

    #[test]
    fn the_secret_is_redacted_in_debug_output() {
        let request = CreateWebhookRequest {
            url: "https://hooks.example/T0K3N".into(),
            events: vec!["*".into()],
            secret: "very-secret-value-123".into(),
        };
        let shown = format!("{request:?}");
        assert!(!shown.contains("very-secret"));
        assert!(!shown.contains("T0K3N"));
    }
}
