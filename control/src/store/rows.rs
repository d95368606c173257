//! What both stores share: the column lists, decoding a row into a record, and the errors and
//! audit actors both write. Each engine keeps its own SQL where the dialects differ.

use chrono::{DateTime, TimeZone, Utc};
use latch_common::api::{GrantState, HostFacts, RevokedBy};
use latch_common::job::{JobError, JobErrorCode, JobStatus};
use latch_common::labels::Labels;
use sqlx::Row as _;

use crate::audit::AuditEntry;

use super::{GrantRevocation, HostRecord, JobContext, JobRecord, StoreError};

/// The columns [`job_from_row`] reads, in the same order on both engines.
macro_rules! job_columns {
    () => {
        "id, host_id, seq, spec, status, error_code, error_message, created_at, finished_at, \
         attempts, lease, lease_expires_at, revoked_at, revoked_by, revokes_job_id, payload, signature, \
         revoked_by_job_id, revocation_job_id, revocation_attempts, revocation_failed_at, \
         revocation_error, outcome_notes"
    };
}

/// The columns [`host_from_row`] reads.
macro_rules! host_columns {
    () => {
        "id, hostname, os, kernel, arch, cpus, memory_bytes, machine_id, enrolled_at, last_seen, ssh_ca, \
         agent_version, agent_protocol"
    };
}

/// Times are stored as Unix milliseconds (UTC) on both engines.
pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(super) fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// Labels are stored as a JSON object (`{"env": "prod"}`) on both engines.
pub(super) fn labels_from_text(text: &str) -> Result<Labels, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt("host labels", e))
}

/// The stored form of `labels`.
pub(super) fn labels_to_text(labels: &Labels) -> Result<String, StoreError> {
    serde_json::to_string(labels).map_err(|e| corrupt("host labels", e))
}

/// Reading a column by name, the same way on either engine's rows.
pub(super) trait Columns {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(column)
            }
        }
    };
}
columns_for!(sqlx::sqlite::SqliteRow);
columns_for!(sqlx::postgres::PgRow);

pub(super) fn host_from_row(row: &impl Columns) -> Result<HostRecord, StoreError> {
    Ok(HostRecord {
        id: row.text("id")?,
        facts: HostFacts {
            hostname: row.text("hostname")?,
            os: row.text("os")?,
            kernel: row.text("kernel")?,
            arch: row.text("arch")?,
            cpus: row
                .int("cpus")?
                .try_into()
                .map_err(|e| corrupt("host", e))?,
            memory_bytes: row
                .int("memory_bytes")?
                .try_into()
                .map_err(|e| corrupt("host", e))?,
            machine_id: row.text("machine_id")?,
        },
        enrolled_at: from_millis(row.int("enrolled_at")?),
        last_seen: row.opt_int("last_seen")?.map(from_millis),
        ssh_ca: row.int("ssh_ca")? != 0,
        agent: match (
            row.opt_text("agent_version")?,
            row.opt_int("agent_protocol")?,
        ) {
            (Some(version), Some(protocol)) => Some(latch_common::protocol::AgentInfo {
                version,
                protocol: protocol.try_into().map_err(|e| corrupt("host", e))?,
            }),
            _ => None,
        },
    })
}

/// Keeps a decoded grant; logs and skips one that does not decode (the sweep of expired grants
/// goes on with the others instead of failing every second on one bad row).
pub(super) fn skip_corrupt_grant(decoded: Result<JobRecord, StoreError>) -> Option<JobRecord> {
    match decoded {
        Ok(job) => Some(job),
        Err(error) => {
            tracing::error!(%error, "a grant past its end cannot be read; it is skipped (repair the row)");
            None
        }
    }
}

pub(super) fn job_from_row(row: &impl Columns) -> Result<JobRecord, StoreError> {
    let spec = row.text("spec")?;
    let status = row.text("status")?;
    let error = match row.opt_text("error_code")? {
        Some(code) => Some(JobError {
            code: serde_json::from_value::<JobErrorCode>(serde_json::Value::String(code))
                .map_err(|e| corrupt("job error code", e))?,
            message: row.opt_text("error_message")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(JobRecord {
        id: row.text("id")?,
        host_id: row.text("host_id")?,
        seq: row.int("seq")?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("job spec", e))?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt("job status", &status))?,
        error,
        notes: match row.opt_text("outcome_notes")? {
            Some(text) => serde_json::from_str(&text).map_err(|e| corrupt("job notes", e))?,
            None => Vec::new(),
        },
        created_at: from_millis(row.int("created_at")?),
        finished_at: row.opt_int("finished_at")?.map(from_millis),
        attempts: row
            .int("attempts")?
            .try_into()
            .map_err(|e| corrupt("job", e))?,
        lease: row.opt_text("lease")?,
        lease_expires_at: row.opt_int("lease_expires_at")?.map(from_millis),
        revoked_at: row.opt_int("revoked_at")?.map(from_millis),
        revoked_by: match row.opt_text("revoked_by")?.as_deref() {
            None => None,
            Some(by) => Some(RevokedBy::parse(by).ok_or_else(|| corrupt("job revoked_by", by))?),
        },
        revoked_by_job: row.opt_text("revoked_by_job_id")?,
        revocation: GrantRevocation {
            job_id: row.opt_text("revocation_job_id")?,
            attempts: row
                .int("revocation_attempts")?
                .try_into()
                .map_err(|e| corrupt("job revocation_attempts", e))?,
            failed_at: row.opt_int("revocation_failed_at")?.map(from_millis),
            last_error: row.opt_text("revocation_error")?,
        },
        revokes: row.opt_text("revokes_job_id")?,
        payload: row.opt_text("payload")?.unwrap_or_default(),
        signature: row.opt_text("signature")?.unwrap_or_default(),
    })
}

/// A job's host and grant state, from the columns `host_name`, `host_removed_at`,
/// `superseded_by` and `grant_state`.
pub(super) fn context_from_row(row: &impl Columns) -> Result<JobContext, StoreError> {
    let state = row.opt_text("grant_state")?;
    Ok(JobContext {
        host_name: row.opt_text("host_name")?.unwrap_or_default(),
        host_removed_at: row.opt_int("host_removed_at")?.map(from_millis),
        grant_state: match state.as_deref() {
            None => None,
            Some(s) => Some(GrantState::parse(s).ok_or_else(|| corrupt("grant state", s))?),
        },
        superseded_by: row.opt_text("superseded_by")?,
    })
}

pub(super) fn audit_from_row(row: &impl Columns) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: row.int("id")?,
        at: from_millis(row.int("at")?),
        actor: row.text("actor")?,
        action: row.text("action")?,
        host_id: row.opt_text("host_id")?,
        job_id: row.opt_text("job_id")?,
        detail: row.text("detail")?,
        prev_hash: row.text("prev_hash")?,
        hash: row.text("hash")?,
        mac: row.opt_text("mac")?,
    })
}

/// The audit actor of a host.
pub(super) fn host_actor(host_id: &str) -> String {
    format!("host:{host_id}")
}

/// Job outcomes that mean the agent refused the job as forged, replayed, late or hostile.
pub(super) fn is_rejection(code: JobErrorCode) -> bool {
    matches!(
        code,
        JobErrorCode::UnsignedJob
            | JobErrorCode::BadSignature
            | JobErrorCode::WrongHost
            | JobErrorCode::JobExpired
            | JobErrorCode::ReplayedJob
            | JobErrorCode::InvalidJob
            | JobErrorCode::StaleJob
    )
}

/// The error of a job whose last allowed delivery ran out unreported.
pub(super) fn unresponsive(attempts: u32) -> JobError {
    JobError::new(
        JobErrorCode::AgentUnresponsive,
        format!(
            "the agent received this job {attempts} times without reporting an outcome; check \
             `latch-agent status` and the agent's log on the host, then queue the job again"
        ),
    )
}

/// The error of a job still pending when its host was removed.
pub(super) fn host_removed() -> JobError {
    JobError::new(
        JobErrorCode::HostRemoved,
        "the host was removed (`latchctl hosts remove`) before this job ran; nothing was applied by Latch after that",
    )
}
