//! Webhooks in the database: the endpoints that subscribe to events (their signing secrets
//! sealed by [`crate::webhooks`]; the store only moves ciphertexts) and the durable queue of
//! deliveries the leader's sweep works through.
//!
//! One body of SQL serves both engines, instantiated per store by `webhook_store!` as
//! [`super::vault`] does. Adding and removing a webhook and queueing an event's deliveries are
//! audited in the same transaction as the change.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latch_common::webhooks::DeliveryStatus;

use super::rows::{Columns, corrupt, from_millis, millis};
use super::{PgStore, SqliteStore, StoreError};
use crate::audit::AuditEvent;

/// A webhook as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// `wh_…`.
    pub id: String,
    /// The organization whose data key seals its secret.
    pub organization_id: String,
    /// Where it posts.
    pub url: String,
    /// The signing secret, sealed under the organization's data key (bound to `id`).
    pub sealed_secret: String,
    /// The events it receives (`*`: every event).
    pub events: Vec<String>,
    /// Who added it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    /// `whd_…`.
    pub id: String,
    /// The webhook it goes to.
    pub webhook_id: String,
    /// The event's name.
    pub event: String,
    /// The JSON body (never a secret).
    pub body: String,
    /// How it stands.
    pub status: DeliveryStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last answer.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The result of one attempt, as written back to its delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The status after the attempt.
    pub status: DeliveryStatus,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the answer, if there was one.
    pub last_status: Option<u16>,
    /// Why it failed.
    pub last_error: Option<String>,
    /// When it was accepted (delivered only).
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Persistence of webhooks and their deliveries.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Adds a webhook (audited).
    async fn insert_webhook(
        &self,
        webhook: &WebhookRecord,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Every webhook, oldest first.
    async fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError>;
    /// The webhook with this id.
    async fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError>;
    /// Removes a webhook and its deliveries (audited); false if there is none.
    async fn delete_webhook(
        &self,
        id: &str,
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Queues deliveries (none is fine) with `event`, in one transaction.
    async fn insert_deliveries(
        &self,
        deliveries: &[DeliveryRecord],
        event: AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Pending deliveries due at `now`, the longest-waiting first, at most `limit`.
    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// The deliveries of a webhook, newest first.
    async fn deliveries(&self, webhook_id: &str) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// Writes the result of an attempt on a pending delivery, with `event` if given (a final
    /// result); false if the delivery is gone or no longer pending.
    async fn record_attempt(
        &self,
        id: &str,
        attempt: &AttemptRecord,
        event: Option<AuditEvent>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

const WEBHOOK_SELECT: &str = "SELECT id, organization_id, url, secret, events, created_by, \
     created_at FROM webhooks";

const DELIVERY_SELECT: &str = "SELECT id, webhook_id, event, body, status, attempts, \
     next_attempt_at, last_status, last_error, created_at, delivered_at FROM webhook_deliveries";

fn webhook_from_row(row: &impl Columns) -> Result<WebhookRecord, StoreError> {
    let events = row.text("events")?;
    Ok(WebhookRecord {
        id: row.text("id")?,
        organization_id: row.text("organization_id")?,
        url: row.text("url")?,
        sealed_secret: row.text("secret")?,
        events: serde_json::from_str(&events).map_err(|e| corrupt("webhook events", e))?,
        created_by: row.text("created_by")?,
        created_at: from_millis(row.int("created_at")?),
    })
}

fn delivery_from_row(row: &impl Columns) -> Result<DeliveryRecord, StoreError> {
    let status = row.text("status")?;
    Ok(DeliveryRecord {
        id: row.text("id")?,
        webhook_id: row.text("webhook_id")?,
        event: row.text("event")?,
        body: row.text("body")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| corrupt("webhook delivery", format!("unknown status {status}")))?,
        attempts: u32::try_from(row.int("attempts")?)
            .map_err(|e| corrupt("webhook delivery", e))?,
        next_attempt_at: row.opt_int("next_attempt_at")?.map(from_millis),
        last_status: row
            .opt_int("last_status")?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.opt_text("last_error")?,
        created_at: from_millis(row.int("created_at")?),
        delivered_at: row.opt_int("delivered_at")?.map(from_millis),
    })
}

macro_rules! webhook_store {
    ($store:ty, $tx:ident) => {
        #[async_trait]
        impl WebhookStore for $store {
            async fn insert_webhook(
                &self,
                w: &WebhookRecord,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let events =
                    serde_json::to_string(&w.events).map_err(|e| corrupt("webhook events", e))?;
                let mut tx = $tx::begin(self).await?;
                sqlx::query(
                    "INSERT INTO webhooks (id, organization_id, url, secret, events, created_by, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&w.id)
                .bind(&w.organization_id)
                .bind(&w.url)
                .bind(&w.sealed_secret)
                .bind(events)
                .bind(&w.created_by)
                .bind(millis(w.created_at))
                .execute(tx.conn())
                .await?;
                tx.audit(event, now);
                tx.commit().await
            }

            async fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
                let sql = format!("{WEBHOOK_SELECT} ORDER BY created_at, id");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(webhook_from_row).collect()
            }

            async fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
                let sql = format!("{WEBHOOK_SELECT} WHERE id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await?;
                row.as_ref().map(webhook_from_row).transpose()
            }

            async fn delete_webhook(
                &self,
                id: &str,
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                let gone = sqlx::query("DELETE FROM webhooks WHERE id = $1")
                    .bind(id)
                    .execute(tx.conn())
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Ok(false);
                }
                tx.audit(event, now);
                tx.commit().await?;
                Ok(true)
            }

            async fn insert_deliveries(
                &self,
                deliveries: &[DeliveryRecord],
                event: AuditEvent,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = $tx::begin(self).await?;
                for d in deliveries {
                    sqlx::query(
                        "INSERT INTO webhook_deliveries (id, webhook_id, event, body, status, \
                         attempts, next_attempt_at, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&d.id)
                    .bind(&d.webhook_id)
                    .bind(&d.event)
                    .bind(&d.body)
                    .bind(d.status.as_str())
                    .bind(i64::from(d.attempts))
                    .bind(d.next_attempt_at.map(millis))
                    .bind(millis(d.created_at))
                    .execute(tx.conn())
                    .await?;
                }
                tx.audit(event, now);
                tx.commit().await
            }

            async fn due_deliveries(
                &self,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<DeliveryRecord>, StoreError> {
                let sql = format!(
                    "{DELIVERY_SELECT} WHERE status = 'pending' AND next_attempt_at <= $1 \
                     ORDER BY next_attempt_at, id LIMIT $2"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(millis(now))
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(delivery_from_row).collect()
            }

            async fn deliveries(&self, webhook_id: &str) -> Result<Vec<DeliveryRecord>, StoreError> {
                let sql = format!(
                    "{DELIVERY_SELECT} WHERE webhook_id = $1 ORDER BY created_at DESC, id DESC"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(webhook_id)
                    .fetch_all(self.pool())
                    .await?;
                rows.iter().map(delivery_from_row).collect()
            }

            async fn record_attempt(
                &self,
                id: &str,
                a: &AttemptRecord,
                event: Option<AuditEvent>,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = $tx::begin(self).await?;
                let changed = sqlx::query(
                    "UPDATE webhook_deliveries SET status = $1, attempts = $2, \
                     next_attempt_at = $3, last_status = $4, last_error = $5, delivered_at = $6 \
                     WHERE id = $7 AND status = 'pending'",
                )
                .bind(a.status.as_str())
                .bind(i64::from(a.attempts))
                .bind(a.next_attempt_at.map(millis))
                .bind(a.last_status.map(i64::from))
                .bind(&a.last_error)
                .bind(a.delivered_at.map(millis))
                .bind(id)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if changed == 0 {
                    return Ok(false);
                }
                if let Some(event) = event {
                    tx.audit(event, now);
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    };
}

use super::postgres::Tx as PgTx;
use super::sqlite::SqliteTx;

webhook_store!(SqliteStore, SqliteTx);
webhook_store!(PgStore, PgTx);
