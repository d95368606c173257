//! Signed webhook delivery: the endpoints admins register (`settings.manage`), the events the
//! control plane raises ([`Control::notify`]) and the durable delivery of each event to each
//! subscribed endpoint ([`Control::deliver_webhooks`], run by the leader every second).
//!
//! Each delivery is a JSON `POST` with `X-Latch-Event`, `X-Latch-Delivery` (its id, for
//! de-duplication: delivery is at least once), `X-Latch-Timestamp` (Unix seconds) and
//! `X-Latch-Signature: sha256=<hex>` — HMAC-SHA-256 under the webhook's secret of
//! `<timestamp>.<body>` ([`signature`]). A 2xx answer delivers it; anything else (redirects
//! included, which are never followed) is retried after [`WebhookConfig::backoff`], up to
//! [`WebhookConfig::max_attempts`], then it is `failed`. Final results are audited.
//!
//! Secrets: each webhook's signing secret is sealed under the default organization's data key
//! bound to the webhook's id, and opened only to sign. A URL can itself be a credential (chat
//! webhooks put a token in the path): logs and audit entries name only its origin.
//! Bodies never carry secrets: callers of [`Control::notify`] pass ids, names and reasons only.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use latch_common::authz::Permission;
use latch_common::names::ValidationError;
use latch_common::webhooks::{
    ALL_EVENTS, CreateWebhookRequest, DeliveryStatus, DeliveryView, MAX_EVENTS, WebhookView,
    validate_event, validate_secret,
};
use ring::hmac;
use serde_json::{Value, json};

use crate::audit::AuditEvent;
use crate::people::{Authority, new_id};
use crate::store::RetryBackoff;
use crate::store::webhooks::{AttemptRecord, DeliveryRecord, WebhookRecord};
use crate::vault::CONTROL_PLANE;
use crate::{Control, ControlError};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// How deliveries are attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Attempts before a delivery is `failed`.
    pub max_attempts: u32,
    /// The wait after a failed attempt: doubling from `first` with each failure, at most `max`.
    pub backoff: RetryBackoff,
    /// How long one attempt may take (connect, send, answer).
    pub timeout: StdDuration,
    /// Deliveries attempted per sweep, at most.
    pub batch: u32,
}

impl Default for WebhookConfig {
    /// 10 attempts, 5 s doubling to at most 1 h (about 21 minutes in all), 10 s per attempt,
    /// 50 deliveries a sweep.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            backoff: RetryBackoff {
                first: chrono::Duration::seconds(5),
                max: chrono::Duration::hours(1),
            },
            timeout: StdDuration::from_secs(10),
            batch: 50,
        }
    }
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds):
/// `sha256=<hex HMAC-SHA-256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex::encode(context.sign().as_ref()))
}

/// `scheme://host[:port]` of `url` (no user, path or query, which may hold a token).
pub fn origin_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "<unparsable URL>".to_owned())
}

/// Checks a webhook URL: `https://` anywhere, `http://` only on a loopback address
/// (127.0.0.0/8, ::1, `localhost`); nothing else (no `file:`, no plain HTTP across a network).
pub fn check_url(text: &str) -> Result<url::Url, ValidationError> {
    if text.len() > MAX_URL_LEN {
        return Err(ValidationError::new(
            "url",
            format!("is longer than {MAX_URL_LEN} characters"),
        ));
    }
    let url = url::Url::parse(text).map_err(|e| {
        ValidationError::new(
            "url",
            format!("is not a URL ({e}); write it as https://host/path"),
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => {
            return Err(ValidationError::new(
                "url",
                "names no host; write it as https://host/path",
            ));
        }
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(ValidationError::new(
            "url",
            "uses plain http:// on a host that is not loopback: events would cross the network unencrypted; use https://",
        )),
        other => Err(ValidationError::new(
            "url",
            format!(
                "uses the scheme '{other}:'; only https:// (or http:// on loopback) is allowed"
            ),
        )),
    }
}

/// Whether a webhook subscribed to `events` receives `event`.
fn subscribed(events: &[String], event: &str) -> bool {
    events.iter().any(|e| e == event || e == ALL_EVENTS)
}

fn webhook_view(w: WebhookRecord) -> WebhookView {
    WebhookView {
        id: w.id,
        url: w.url,
        events: w.events,
        created_by: w.created_by,
        created_at: w.created_at,
    }
}

fn delivery_view(d: DeliveryRecord) -> DeliveryView {
    DeliveryView {
        body: serde_json::from_str(&d.body).unwrap_or(Value::String(d.body)),
        id: d.id,
        webhook_id: d.webhook_id,
        event: d.event,
        status: d.status,
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_status: d.last_status,
        last_error: d.last_error,
        created_at: d.created_at,
        delivered_at: d.delivered_at,
    }
}

/// What one sweep of [`Control::deliver_webhooks`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliverySweep {
    /// Accepted with 2xx.
    pub delivered: usize,
    /// Failed, to be tried again.
    pub retried: usize,
    /// Failed for the last time.
    pub failed: usize,
}

/// One attempt ready to send: everything the HTTP request needs, nothing borrowed.
struct Outgoing {
    delivery: DeliveryRecord,
    url: String,
    secret: Vec<u8>,
}

/// The answer to one attempt: the HTTP status if the receiver answered, and an error unless
/// it was 2xx.
type Answer = (Option<u16>, Option<String>);

/// Posts one delivery.
async fn send(client: reqwest::Client, out: &Outgoing) -> Answer {
    let timestamp = Utc::now().timestamp();
    let request = client
        .post(&out.url)
        .header("content-type", "application/json")
        .header("x-latch-event", &out.delivery.event)
        .header("x-latch-delivery", &out.delivery.id)
        .header("x-latch-timestamp", timestamp.to_string())
        .header(
            "x-latch-signature",
            signature(&out.secret, timestamp, out.delivery.body.as_bytes()),
        )
        .body(out.delivery.body.clone());
    match request.send().await {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
        Ok(response) => (
            Some(response.status().as_u16()),
            Some(format!("the receiver answered HTTP {}", response.status())),
        ),
        // Without the URL: it may hold a token.
        Err(error) => (None, Some(error.without_url().to_string())),
    }
}

impl Control {
    /// Adds a webhook (`settings.manage` everywhere): its URL checked, its secret sealed under
    /// the default organization's data key.
    pub async fn create_webhook(
        &self,
        by: &Authority,
        request: &CreateWebhookRequest,
    ) -> Result<WebhookView, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        let url = check_url(&request.url)?;
        validate_secret(&request.secret)?;
        if request.events.is_empty() || request.events.len() > MAX_EVENTS {
            return Err(ValidationError::new(
                "events",
                format!("name 1 to {MAX_EVENTS} events (or '*' for every event)"),
            )
            .into());
        }
        let mut events = Vec::new();
        for event in &request.events {
            validate_event(event)?;
            if !events.contains(event) {
                events.push(event.clone());
            }
        }
        let organization = self.organization_named(None).await?;
        let key = self.data_key(&organization.id).await?;
        let id = new_id("wh_")?;
        let webhook = WebhookRecord {
            sealed_secret: key.seal(&id, &request.secret)?,
            id,
            organization_id: organization.id,
            url: url.to_string(),
            events,
            created_by: by.actor(),
            created_at: Utc::now(),
        };
        let event = by.event("webhook.created").detail(json!({
            "webhook_id": webhook.id,
            "webhook": origin_of(&webhook.url),
            "events": webhook.events,
        }));
        self.store
            .insert_webhook(&webhook, event, webhook.created_at)
            .await?;
        Ok(webhook_view(webhook))
    }

    /// Every webhook, oldest first (`settings.manage` everywhere).
    pub async fn list_webhooks(&self, by: &Authority) -> Result<Vec<WebhookView>, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        Ok(self
            .store
            .webhooks()
            .await?
            .into_iter()
            .map(webhook_view)
            .collect())
    }

    /// Removes a webhook and its deliveries (`settings.manage` everywhere).
    pub async fn delete_webhook(&self, by: &Authority, id: &str) -> Result<(), ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        let event = by
            .event("webhook.deleted")
            .detail(json!({"webhook_id": id}));
        if !self.store.delete_webhook(id, event, Utc::now()).await? {
            return Err(ControlError::NotFound {
                what: "webhook",
                key: id.to_owned(),
            });
        }
        Ok(())
    }

    /// The deliveries of a webhook, newest first (`settings.manage` everywhere).
    pub async fn list_webhook_deliveries(
        &self,
        by: &Authority,
        id: &str,
    ) -> Result<Vec<DeliveryView>, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        if self.store.webhook(id).await?.is_none() {
            return Err(ControlError::NotFound {
                what: "webhook",
                key: id.to_owned(),
            });
        }
        Ok(self
            .store
            .deliveries(id)
            .await?
            .into_iter()
            .map(delivery_view)
            .collect())
    }

    /// Raises `event`: queues one delivery of `{"id", "event", "at", "detail"}` to every
    /// webhook subscribed to it, in one audited transaction, and returns how many. `detail`
    /// must never hold a secret (it is stored, and sent as is). The sweep sends them.
    pub async fn notify(&self, event: &'static str, detail: Value) -> Result<usize, ControlError> {
        validate_event(event)?;
        let webhooks: Vec<WebhookRecord> = self
            .store
            .webhooks()
            .await?
            .into_iter()
            .filter(|w| subscribed(&w.events, event))
            .collect();
        if webhooks.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let event_id = new_id("evt_")?;
        let body = serde_json::to_string(&json!({
            "id": event_id,
            "event": event,
            "at": now,
            "detail": detail,
        }))
        .map_err(|e| ControlError::Internal(format!("cannot encode a webhook body: {e}")))?;
        let mut deliveries = Vec::with_capacity(webhooks.len());
        for webhook in &webhooks {
            deliveries.push(DeliveryRecord {
                id: new_id("whd_")?,
                webhook_id: webhook.id.clone(),
                event: event.to_owned(),
                body: body.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_attempt_at: Some(now),
                last_status: None,
                last_error: None,
                created_at: now,
                delivered_at: None,
            });
        }
        let audit = AuditEvent::new(CONTROL_PLANE, "webhook.queued").detail(json!({
            "event": event,
            "event_id": event_id,
            "webhooks": webhooks.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        }));
        self.store
            .insert_deliveries(&deliveries, audit, now)
            .await?;
        Ok(deliveries.len())
    }

    /// Sends the deliveries that are due (at most [`WebhookConfig::batch`], all at once) and
    /// records each result: delivered, retried after the backoff, or failed after the last
    /// attempt (those two audited). Run by the leader only.
    pub async fn deliver_webhooks(&self) -> Result<DeliverySweep, ControlError> {
        let config = &self.config.webhooks;
        let due = self.store.due_deliveries(Utc::now(), config.batch).await?;
        let mut sweep = DeliverySweep::default();
        if due.is_empty() {
            return Ok(sweep);
        }
        // reqwest's rustls needs a process-wide crypto provider; without one it panics.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ControlError::Internal(format!("cannot build the HTTP client: {e}")))?;
        let mut sends = tokio::task::JoinSet::new();
        for delivery in due {
            match self.outgoing(delivery).await {
                Ok(out) => {
                    let client = client.clone();
                    sends.spawn(async move {
                        let answer = send(client, &out).await;
                        (out, answer)
                    });
                }
                Err((delivery, url, error)) => {
                    // Not sendable (the secret does not open, the URL was altered): no retry helps.
                    self.settle(&delivery, &url, (None, Some(error)), true, &mut sweep)
                        .await?;
                }
            }
        }
        while let Some(joined) = sends.join_next().await {
            let (out, answer) = joined
                .map_err(|e| ControlError::Internal(format!("a webhook send panicked: {e}")))?;
            self.settle(&out.delivery, &out.url, answer, false, &mut sweep)
                .await?;
        }
        Ok(sweep)
    }

    /// Gets a delivery ready to send; on failure, the delivery, its URL and why.
    async fn outgoing(
        &self,
        delivery: DeliveryRecord,
    ) -> Result<Outgoing, (DeliveryRecord, String, String)> {
        let webhook = match self.store.webhook(&delivery.webhook_id).await {
            Ok(Some(webhook)) => webhook,
            Ok(None) => return Err((delivery, String::new(), "the webhook was removed".into())),
            Err(e) => return Err((delivery, String::new(), e.to_string())),
        };
        if let Err(e) = check_url(&webhook.url) {
            return Err((delivery, webhook.url, e.reason));
        }
        let secret = match self.data_key(&webhook.organization_id).await {
            Ok(key) => key.open(&webhook.id, &webhook.sealed_secret),
            Err(e) => Err(e),
        };
        match secret {
            Ok(secret) => Ok(Outgoing {
                delivery,
                url: webhook.url,
                secret: secret.into_bytes(),
            }),
            Err(e) => Err((delivery, webhook.url, e.to_string())),
        }
    }

    /// Records the answer to an attempt (`fatal`: no further attempt).
    async fn settle(
        &self,
        delivery: &DeliveryRecord,
        url: &str,
        (last_status, last_error): Answer,
        fatal: bool,
        sweep: &mut DeliverySweep,
    ) -> Result<(), ControlError> {
        let config = &self.config.webhooks;
        let now = Utc::now();
        let attempts = delivery.attempts.saturating_add(1);
        let origin = origin_of(url);
        let (status, next_attempt_at, delivered_at): (_, Option<DateTime<Utc>>, _) =
            match &last_error {
                None => (DeliveryStatus::Delivered, None, Some(now)),
                Some(_) if fatal || attempts >= config.max_attempts => {
                    (DeliveryStatus::Failed, None, None)
                }
                Some(_) => (
                    DeliveryStatus::Pending,
                    Some(now + config.backoff.delay(attempts)),
                    None,
                ),
            };
        let detail = json!({
            "delivery_id": delivery.id,
            "webhook_id": delivery.webhook_id,
            "webhook": origin,
            "event": delivery.event,
            "attempts": attempts,
            "last_status": last_status,
            "last_error": last_error,
        });
        let audit = match status {
            DeliveryStatus::Delivered => {
                sweep.delivered += 1;
                Some(AuditEvent::new(CONTROL_PLANE, "webhook.delivered").detail(detail))
            }
            DeliveryStatus::Failed => {
                sweep.failed += 1;
                tracing::error!(%origin, delivery = %delivery.id, error = ?last_error, attempts, "webhook delivery failed for good");
                Some(AuditEvent::new(CONTROL_PLANE, "webhook.failed").detail(detail))
            }
            DeliveryStatus::Pending => {
                sweep.retried += 1;
                tracing::warn!(%origin, delivery = %delivery.id, error = ?last_error, attempts, "webhook delivery failed; it will be retried");
                None
            }
        };
        let attempt = AttemptRecord {
            status,
            attempts,
            next_attempt_at,
            last_status,
            last_error,
            delivered_at,
        };
        self.store
            .record_attempt(&delivery.id, &attempt, audit, now)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http() {
        for good in [
            "https://hooks.example.com/latch",
            "https://10.0.0.1:8443/x?token=abc",
            "http://127.0.0.1:9000/hook",
            "http://[::1]/hook",
            "http://localhost:8080/",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://hooks.example.com/latch",
            "http://10.0.0.1/hook",
            "file:///etc/passwd",
            "ftp://127.0.0.1/x",
            "gopher://127.0.0.1:25/",
            "not a url",
            "data:text/plain,hi",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://a.example/{}", "x".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn origins_hide_paths_queries_and_users() {
        assert_eq!(
            origin_of("https://user:pw@hooks.example.com:8443/T0K3N?key=s3cret"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(origin_of("::"), "<unparsable URL>");
    }

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 does not cover this framing; a fixed vector guards against a change.
        let signed = signature(b"secret", 1_700_000_000, b"{}");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let expected = hmac::sign(&key, b"1700000000.{}");
        assert_eq!(signed, format!("sha256={}", hex::encode(expected.as_ref())));
        assert_ne!(signed, signature(b"secret", 1_700_000_001, b"{}"));
        assert_ne!(signed, signature(b"other", 1_700_000_000, b"{}"));
    }

    #[test]
    fn subscriptions_match_the_name_or_everything() {
        let events = vec!["access.requested".to_owned()];
        assert!(subscribed(&events, "access.requested"));
        assert!(!subscribed(&events, "break_glass"));
        assert!(subscribed(&["*".to_owned()], "break_glass"));
    }
}
