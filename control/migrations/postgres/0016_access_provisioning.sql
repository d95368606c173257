-- The same as control/migrations/sqlite/0016_access_provisioning.sql (PostgreSQL alters the
-- table in place). A request names a target (a host or a label selector); each of its hosts
-- has a row in access_request_hosts with its provisioning and revocation jobs.

CREATE TABLE access_request_hosts (
    request_id       TEXT NOT NULL REFERENCES access_requests (id) ON DELETE CASCADE,
    host_id          TEXT NOT NULL REFERENCES hosts (id),
    state            TEXT NOT NULL CHECK (state IN ('waiting', 'provisioning', 'active',
                         'failed', 'revoking', 'revoked')),
    provision_job_id TEXT,
    revoke_job_id    TEXT,
    error            TEXT,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (request_id, host_id)
);
INSERT INTO access_request_hosts (request_id, host_id, state, updated_at)
SELECT id, host_id, 'waiting', created_at FROM access_requests;
CREATE INDEX access_request_hosts_by_host ON access_request_hosts (host_id, state);

ALTER TABLE access_requests ADD COLUMN target TEXT NOT NULL DEFAULT '';
UPDATE access_requests SET target = host_id;
DROP INDEX access_requests_by_host;
ALTER TABLE access_requests DROP COLUMN host_id;
ALTER TABLE access_requests ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE access_requests ADD COLUMN key_generated BIGINT NOT NULL DEFAULT 0;
ALTER TABLE access_requests ADD COLUMN activated_at BIGINT;
ALTER TABLE access_requests ADD COLUMN ends_at BIGINT;
ALTER TABLE access_requests ADD COLUMN end_reason TEXT;
ALTER TABLE access_requests ADD COLUMN ended_at BIGINT;
ALTER TABLE access_requests ADD COLUMN confirm_by BIGINT;
ALTER TABLE access_requests ADD COLUMN certificate TEXT;
ALTER TABLE access_requests ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE access_requests DROP CONSTRAINT access_requests_state_check;
ALTER TABLE access_requests ADD CONSTRAINT access_requests_state_check CHECK (state IN
    ('pending_approval', 'approved', 'denied', 'cancelled', 'expired', 'provisioning', 'active',
     'revoking', 'revoked', 'failed'));
CREATE INDEX access_requests_by_requester ON access_requests (requester_id, created_at);
