-- Grant lifecycle: revocations that failed are retried with backoff until confirmed, and a grant
-- can be ended by an explicit job (delete-account, remove-group) as well as by expiry.

-- `revoked_by` gains 'job'. SQLite cannot change a CHECK constraint in place, and rebuilding the
-- jobs table would drop columns other migrations add: swap the column instead.
ALTER TABLE jobs ADD COLUMN revoked_by_next TEXT
    CHECK (revoked_by_next IN ('agent_expiry', 'control_plane', 'job'));
UPDATE jobs SET revoked_by_next = revoked_by;
ALTER TABLE jobs DROP COLUMN revoked_by;
ALTER TABLE jobs RENAME COLUMN revoked_by_next TO revoked_by;

ALTER TABLE jobs ADD COLUMN revoked_by_job_id TEXT;                          -- grants: the job that ended it (revoked_by = 'job')
ALTER TABLE jobs ADD COLUMN revocation_attempts INTEGER NOT NULL DEFAULT 0;  -- grants: revocation jobs that failed
ALTER TABLE jobs ADD COLUMN revocation_failed_at INTEGER;                    -- grants: when the last one failed
ALTER TABLE jobs ADD COLUMN revocation_error TEXT;                           -- grants: its error, "code: message"
