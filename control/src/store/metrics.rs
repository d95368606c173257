//! What `GET /metrics` reports about the fleet, counted in the database at each scrape (so every
//! replica on a shared database reports the same numbers), and the readiness probe's query.
//!
//! One body of SQL serves both engines, instantiated per store by `metrics_store!` as
//! [`super::webhooks`] does. Every query is a `GROUP BY` or an aggregate over indexed or small
//! sets; nothing here writes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::rows::{Columns, corrupt, from_millis, millis};
use super::{PgStore, SqliteStore, StoreError};

/// The fleet's numbers at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Jobs per `(kind, status)`.
    pub jobs: Vec<(String, String, u64)>,
    /// Per kind: when its oldest pending job was queued.
    pub oldest_pending: Vec<(String, DateTime<Utc>)>,
    /// Pending jobs delivered whose lease ran out without a report (they go out again).
    pub lease_expired: u64,
    /// Pending jobs delivered more than once.
    pub redelivered: u64,
    /// Hosts (not removed) seen within the online window.
    pub hosts_online: u64,
    /// Hosts (not removed) not seen within it.
    pub hosts_offline: u64,
    /// Grants past their end and not yet revoked, per state (`revoking`, `revocation_stuck`).
    pub grants_unrevoked: Vec<(String, u64)>,
    /// Vault rotations per state.
    pub rotations: Vec<(String, u64)>,
    /// Access requests per state.
    pub access_requests: Vec<(String, u64)>,
    /// Hosts (not removed) per `(agent version, agent protocol)` of their last poll; `("none",
    /// 0)` for hosts that have not polled since the control plane recorded versions.
    pub agents: Vec<(String, u32, u64)>,
}

/// The counting queries behind [`FleetCounts`] and the readiness probe.
#[async_trait]
pub trait MetricsStore {
    /// The fleet's numbers at `now`; a host is online when seen after `online_since`.
    async fn fleet_counts(
        &self,
        now: DateTime<Utc>,
        online_since: DateTime<Utc>,
    ) -> Result<FleetCounts, StoreError>;
    /// One cheap query over a table of the schema: the database answers and holds Latch's tables.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A count column as an unsigned number.
fn count(row: &impl Columns, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(row.int(column)?).map_err(|e| corrupt("a count", e))
}

/// Rows of `(label, n)`.
fn label_counts(rows: &[impl Columns]) -> Result<Vec<(String, u64)>, StoreError> {
    rows.iter()
        .map(|row| Ok((row.text("label")?, count(row, "n")?)))
        .collect()
}

/// Grants (confirmed `create-account`/`add-group` jobs) past their end at `$1`, not revoked, on
/// a host not removed, and not replaced by a later confirmed grant of the same access: the
/// states `revoking` and `revocation_stuck` of the grants list, as one portable query.
const UNREVOKED_GRANTS: &str = "SELECT CASE WHEN g.revocation_attempts > 0 \
         THEN 'revocation_stuck' ELSE 'revoking' END AS label, COUNT(*) AS n \
     FROM jobs g JOIN hosts h ON h.id = g.host_id \
     WHERE g.status = 'confirmed' AND g.kind IN ('create-account', 'add-group') \
       AND g.revoked_at IS NULL AND h.removed_at IS NULL \
       AND g.expires_at IS NOT NULL AND g.expires_at <= $1 \
       AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.host_id = g.host_id \
           AND l.subject_user = g.subject_user AND l.kind = g.kind \
           AND (l.subject_group = g.subject_group \
                OR (l.subject_group IS NULL AND g.subject_group IS NULL)) \
           AND l.seq > g.seq AND l.status = 'confirmed') \
     GROUP BY 1";

macro_rules! metrics_store {
    ($store:ty) => {
        #[async_trait]
        impl MetricsStore for $store {
            async fn fleet_counts(
                &self,
                now: DateTime<Utc>,
                online_since: DateTime<Utc>,
            ) -> Result<FleetCounts, StoreError> {
                let pool = self.pool();
                let jobs = sqlx::query(
                    "SELECT kind, status, COUNT(*) AS n FROM jobs GROUP BY kind, status \
                     ORDER BY kind, status",
                )
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.text("kind")?, row.text("status")?, count(row, "n")?)))
                .collect::<Result<_, StoreError>>()?;
                let oldest_pending = sqlx::query(
                    "SELECT kind, MIN(created_at) AS oldest FROM jobs WHERE status = 'pending' \
                     GROUP BY kind ORDER BY kind",
                )
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.text("kind")?, from_millis(row.int("oldest")?))))
                .collect::<Result<_, StoreError>>()?;
                let deliveries = sqlx::query(
                    "SELECT COUNT(CASE WHEN lease_expires_at <= $1 THEN 1 END) AS expired, \
                            COUNT(CASE WHEN attempts > 1 THEN 1 END) AS redelivered \
                     FROM jobs WHERE status = 'pending'",
                )
                .bind(millis(now))
                .fetch_one(pool)
                .await?;
                let hosts = sqlx::query(
                    "SELECT COUNT(CASE WHEN last_seen > $1 THEN 1 END) AS online, \
                            COUNT(CASE WHEN last_seen IS NULL OR last_seen <= $1 THEN 1 END) AS offline \
                     FROM hosts WHERE removed_at IS NULL",
                )
                .bind(millis(online_since))
                .fetch_one(pool)
                .await?;
                let grants = sqlx::query(UNREVOKED_GRANTS)
                    .bind(millis(now))
                    .fetch_all(pool)
                    .await?;
                let rotations = sqlx::query(
                    "SELECT state AS label, COUNT(*) AS n FROM rotations GROUP BY state \
                     ORDER BY state",
                )
                .fetch_all(pool)
                .await?;
                let requests = sqlx::query(
                    "SELECT state AS label, COUNT(*) AS n FROM access_requests GROUP BY state \
                     ORDER BY state",
                )
                .fetch_all(pool)
                .await?;
                let agents = sqlx::query(
                    "SELECT COALESCE(agent_version, 'none') AS version, \
                            COALESCE(agent_protocol, 0) AS protocol, COUNT(*) AS n \
                     FROM hosts WHERE removed_at IS NULL GROUP BY 1, 2 ORDER BY 1, 2",
                )
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    Ok((
                        row.text("version")?,
                        u32::try_from(row.int("protocol")?).map_err(|e| corrupt("a protocol", e))?,
                        count(row, "n")?,
                    ))
                })
                .collect::<Result<_, StoreError>>()?;
                Ok(FleetCounts {
                    jobs,
                    oldest_pending,
                    lease_expired: count(&deliveries, "expired")?,
                    redelivered: count(&deliveries, "redelivered")?,
                    hosts_online: count(&hosts, "online")?,
                    hosts_offline: count(&hosts, "offline")?,
                    grants_unrevoked: label_counts(&grants)?,
                    rotations: label_counts(&rotations)?,
                    access_requests: label_counts(&requests)?,
                    agents,
                })
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT COUNT(*) FROM hosts WHERE id = ''")
                    .fetch_one(self.pool())
                    .await?;
                Ok(())
            }
        }
    };
}

metrics_store!(SqliteStore);
metrics_store!(PgStore);
