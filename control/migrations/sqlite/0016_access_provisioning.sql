-- Just-in-time access (issue 12), third part: provisioning. A request now names a target (one
-- host, or a label selector over several) instead of one host; each of its hosts has a row in
-- access_request_hosts with the job that provisions it and the job that revokes it. The
-- request gains its account name, its window (activated_at .. ends_at), the reason it ended,
-- the re-confirmation deadline, the SSH certificate it was issued, and a version for
-- compare-and-set updates. A new state, `revoking`, lasts until every host confirmed the removal.
-- SQLite cannot drop a NOT NULL column in place: the tables are rebuilt, rows copied.

CREATE TABLE access_requests_next (
    id                TEXT PRIMARY KEY,          -- ar_…
    requester_id      TEXT NOT NULL REFERENCES principals (id),
    access            TEXT NOT NULL CHECK (access IN ('ephemeral-account', 'sudo')),
    minutes           INTEGER NOT NULL,
    reason            TEXT NOT NULL,
    ssh_public_key    TEXT,
    policy_id         TEXT NOT NULL,
    policy_name       TEXT NOT NULL,
    approver_group_id TEXT,
    approvals_needed  INTEGER NOT NULL,
    exclusive         INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending_approval', 'approved', 'denied',
                          'cancelled', 'expired', 'provisioning', 'active', 'revoking',
                          'revoked', 'failed')),
    created_at        INTEGER NOT NULL,
    pending_until     INTEGER,
    decided_at        INTEGER,
    decision_reason   TEXT,
    target            TEXT NOT NULL DEFAULT '',  -- what was asked: a host, or a label selector
    account           TEXT NOT NULL DEFAULT '',  -- the account on the hosts, set at provisioning
    key_generated     INTEGER NOT NULL DEFAULT 0, -- Latch made the key pair (private key shown once)
    activated_at      INTEGER,
    ends_at           INTEGER,
    end_reason        TEXT,                      -- expired, revoked or failed, while revoking too
    ended_at          INTEGER,
    confirm_by        INTEGER,                   -- re-confirmation deadline (policy reauth)
    certificate       TEXT,                      -- the OpenSSH user certificate, when issued
    version           INTEGER NOT NULL DEFAULT 0
);
INSERT INTO access_requests_next (id, requester_id, access, minutes, reason, ssh_public_key,
    policy_id, policy_name, approver_group_id, approvals_needed, exclusive, state, created_at,
    pending_until, decided_at, decision_reason, target)
SELECT r.id, r.requester_id, r.access, r.minutes, r.reason, r.ssh_public_key, r.policy_id,
    r.policy_name, r.approver_group_id, r.approvals_needed, r.exclusive, r.state, r.created_at,
    r.pending_until, r.decided_at, r.decision_reason, r.host_id
FROM access_requests r;

CREATE TABLE access_request_hosts (
    request_id       TEXT NOT NULL REFERENCES access_requests_next (id) ON DELETE CASCADE,
    host_id          TEXT NOT NULL REFERENCES hosts (id),
    state            TEXT NOT NULL CHECK (state IN ('waiting', 'provisioning', 'active',
                         'failed', 'revoking', 'revoked')),
    provision_job_id TEXT,
    revoke_job_id    TEXT,
    error            TEXT,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (request_id, host_id)
);
INSERT INTO access_request_hosts (request_id, host_id, state, updated_at)
SELECT id, host_id, 'waiting', created_at FROM access_requests;
CREATE INDEX access_request_hosts_by_host ON access_request_hosts (host_id, state);

CREATE TABLE access_decisions_next (
    request_id   TEXT NOT NULL REFERENCES access_requests_next (id) ON DELETE CASCADE,
    principal_id TEXT NOT NULL,
    decision     TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    reason       TEXT NOT NULL DEFAULT '',
    at           INTEGER NOT NULL,
    PRIMARY KEY (request_id, principal_id)
);
INSERT INTO access_decisions_next SELECT request_id, principal_id, decision, reason, at
FROM access_decisions;

DROP TABLE access_decisions;
DROP TABLE access_requests;
ALTER TABLE access_requests_next RENAME TO access_requests;
ALTER TABLE access_decisions_next RENAME TO access_decisions;
CREATE INDEX access_requests_by_state ON access_requests (state, pending_until);
CREATE INDEX access_requests_by_requester ON access_requests (requester_id, created_at);
