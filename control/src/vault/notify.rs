//! The break-glass notification: besides the critical audit event, a JSON `POST` to the
//! configured webhook, signed with HMAC-SHA-256 over `<timestamp>.<body>` when a secret is
//! set (`X-Latch-Timestamp`, `X-Latch-Signature: sha256=<hex>`), retried with backoff in the
//! background. Its delivery (or failure) is audited too; it never carries a secret.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use crate::Control;
use crate::audit::AuditEvent;
use crate::webhooks::origin_of;

/// Attempts per notification.
const ATTEMPTS: u32 = 5;

/// Where break-glass notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The URL (`https://…`, or `http://` on loopback).
    pub url: String,
    /// The signing secret (none: unsigned).
    pub secret: Option<Vec<u8>>,
}

/// The signature header's value (shared with every webhook: [`crate::webhooks::signature`]).
pub use crate::webhooks::signature;

impl Control {
    /// Sends the break-glass notification in the background (if a webhook is configured).
    pub(crate) fn notify_break_glass(&self, actor: &str, detail: Value) {
        let Some(webhook) = self.config.vault.break_glass_webhook.clone() else {
            return;
        };
        let store = self.store.clone();
        let body = json!({
            "event": "break_glass",
            "severity": "critical",
            "actor": actor,
            "at": Utc::now(),
            "detail": detail,
        });
        let checkout_id = detail["checkout_id"].clone();
        tokio::spawn(async move {
            let outcome = deliver(&webhook, &body).await;
            let (action, result) = match &outcome {
                Ok(status) => ("vault.break_glass_notified", json!({"status": status})),
                Err(error) => ("vault.break_glass_notify_failed", json!({"error": error})),
            };
            // The URL may itself be a credential (chat webhooks): only its origin is written.
            let origin = origin_of(&webhook.url);
            if let Err(error) = &outcome {
                tracing::error!(%error, %origin, "break-glass webhook failed");
            }
            let event = AuditEvent::new(super::CONTROL_PLANE, action).detail(json!({
                "severity": "critical",
                "checkout_id": checkout_id,
                "webhook": origin,
                "result": result,
            }));
            if let Err(error) = store.append_audit(&event, Utc::now()).await {
                tracing::error!(%error, "cannot audit the break-glass webhook's delivery");
            }
        });
    }
}

/// Posts `body` until the receiver answers 2xx, with backoff; the last error otherwise.
async fn deliver(webhook: &Webhook, body: &Value) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut wait = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let timestamp = Utc::now().timestamp();
        let mut request = client
            .post(&webhook.url)
            .header("content-type", "application/json")
            .header("x-latch-event", "break_glass")
            .header("x-latch-timestamp", timestamp.to_string());
        if let Some(secret) = &webhook.secret {
            request = request.header("x-latch-signature", signature(secret, timestamp, &bytes));
        }
        match request.body(bytes.clone()).send().await {
            Ok(response) if response.status().is_success() => {
                return Ok(response.status().as_u16());
            }
            Ok(response) => last = format!("attempt {attempt}: HTTP {}", response.status()),
            Err(error) => last = format!("attempt {attempt}: {}", error.without_url()),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    Err(last)
}
