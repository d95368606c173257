-- Just-in-time access (issue 12), first part: access policies. A policy lets the members of
-- one group request some access (ephemeral-account, sudo) on the hosts a label selector
-- matches, for at most max_minutes, approved (or not) by another group's members.

CREATE TABLE access_policies (
    id                  TEXT PRIMARY KEY,        -- pol_…
    name                TEXT NOT NULL UNIQUE,
    description         TEXT NOT NULL DEFAULT '',
    group_id            TEXT NOT NULL REFERENCES groups (id),
    access              TEXT NOT NULL,             -- JSON array: ["ephemeral-account", "sudo"]
    hosts               TEXT NOT NULL CHECK (hosts <> ''), -- label selector
    max_minutes         INTEGER NOT NULL,
    approval_required   INTEGER NOT NULL,
    approver_group_id   TEXT REFERENCES groups (id),
    approvals           INTEGER NOT NULL DEFAULT 1,
    auto_approve_service_minutes INTEGER,
    windows             TEXT NOT NULL DEFAULT '[]', -- JSON array of {days, start, end} (UTC)
    exclusive           INTEGER NOT NULL DEFAULT 0,
    mfa_at_request      INTEGER NOT NULL DEFAULT 0,
    mfa_at_approval     INTEGER NOT NULL DEFAULT 0,
    reauth_minutes      INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
