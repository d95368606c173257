-- The same as control/migrations/sqlite/0015_access_requests.sql.
-- Just-in-time access (issue 12), second part: requests and their approvals. A request is
-- decided by the policy that allows it (access_policies); approvals are one row per approver.
-- Provisioning states (provisioning, active, revoked, expired, failed) come with the jobs.

CREATE TABLE access_requests (
    id                TEXT COLLATE "C" PRIMARY KEY,          -- ar_…
    requester_id      TEXT NOT NULL REFERENCES principals (id),
    host_id           TEXT NOT NULL REFERENCES hosts (id),
    access            TEXT NOT NULL CHECK (access IN ('ephemeral-account', 'sudo')),
    minutes           BIGINT NOT NULL,
    reason            TEXT NOT NULL,
    ssh_public_key    TEXT,
    policy_id         TEXT NOT NULL,             -- the policy that allowed it (kept if deleted)
    policy_name       TEXT NOT NULL,
    approver_group_id TEXT,
    approvals_needed  BIGINT NOT NULL,               -- 0: approved by the policy itself
    exclusive         BIGINT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending_approval', 'approved', 'denied',
                          'cancelled', 'expired', 'provisioning', 'active', 'revoked', 'failed')),
    created_at        BIGINT NOT NULL,
    pending_until     BIGINT,
    decided_at        BIGINT,
    decision_reason   TEXT
);
CREATE INDEX access_requests_by_state ON access_requests (state, pending_until);
CREATE INDEX access_requests_by_host ON access_requests (host_id, access, state);

CREATE TABLE access_decisions (
    request_id   TEXT NOT NULL REFERENCES access_requests (id) ON DELETE CASCADE,
    principal_id TEXT NOT NULL,
    decision     TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    reason       TEXT NOT NULL DEFAULT '',
    at           BIGINT NOT NULL,
    PRIMARY KEY (request_id, principal_id)
);
