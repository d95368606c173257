-- The same as control/migrations/sqlite/0013_access_policies.sql.
-- Just-in-time access (issue 12), first part: access policies. A policy lets the members of
-- one group request some access (ephemeral-account, sudo) on the hosts a label selector
-- matches, for at most max_minutes, approved (or not) by another group's members.

CREATE TABLE access_policies (
    id                  TEXT COLLATE "C" PRIMARY KEY,        -- pol_…
    name                TEXT COLLATE "C" NOT NULL UNIQUE,
    description         TEXT NOT NULL DEFAULT '',
    group_id            TEXT NOT NULL REFERENCES groups (id),
    access              TEXT NOT NULL,             -- JSON array: ["ephemeral-account", "sudo"]
    hosts               TEXT NOT NULL CHECK (hosts <> ''), -- label selector
    max_minutes         BIGINT NOT NULL,
    approval_required   BIGINT NOT NULL,
    approver_group_id   TEXT REFERENCES groups (id),
    approvals           BIGINT NOT NULL DEFAULT 1,
    auto_approve_service_minutes BIGINT,
    windows             TEXT NOT NULL DEFAULT '[]', -- JSON array of {days, start, end} (UTC)
    exclusive           BIGINT NOT NULL DEFAULT 0,
    mfa_at_request      BIGINT NOT NULL DEFAULT 0,
    mfa_at_approval     BIGINT NOT NULL DEFAULT 0,
    reauth_minutes      BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
