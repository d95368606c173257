-- Grants and their revocation. A grant is a create-account or add-group job with an expiry.

ALTER TABLE jobs ADD COLUMN subject_user TEXT;       -- the account the job is about
ALTER TABLE jobs ADD COLUMN subject_group TEXT;      -- add-group / remove-group: the group
ALTER TABLE jobs ADD COLUMN expires_at INTEGER;      -- grants: when the access ends
ALTER TABLE jobs ADD COLUMN revoked_at INTEGER;      -- grants: when the access was removed
ALTER TABLE jobs ADD COLUMN revoked_by TEXT CHECK (revoked_by IN ('agent_expiry', 'control_plane'));
ALTER TABLE jobs ADD COLUMN revocation_job_id TEXT;  -- grants: the revocation job queued for it
ALTER TABLE jobs ADD COLUMN revokes_job_id TEXT;     -- revocation jobs: the grant they end

UPDATE jobs SET subject_user = json_extract(spec, '$.user'), subject_group = json_extract(spec, '$.group');

CREATE INDEX jobs_due_grants ON jobs (expires_at)
    WHERE expires_at IS NOT NULL AND revoked_at IS NULL AND revocation_job_id IS NULL;
CREATE INDEX jobs_by_subject ON jobs (host_id, subject_user, seq);
