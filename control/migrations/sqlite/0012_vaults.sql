-- Credential vault (issue 11): vaults, access grants, identities (shared accounts) and their
-- linked hosts, checkouts, rotations with one set-password job per host, and the keyed hashes
-- of recent passwords. Every secret is sealed (AES-256-GCM, `v1:<data key id>:<base64>`) under
-- its organization's data key with the identity's id as associated data; no plaintext is stored.

-- How long a break-glass checkout of the organization lasts (null: the server's
-- --break-glass-duration).
ALTER TABLE organizations ADD COLUMN break_glass_minutes INTEGER;

CREATE TABLE vaults (
    id              TEXT PRIMARY KEY,            -- vlt_…
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    owner_id        TEXT REFERENCES principals (id) ON DELETE SET NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (organization_id, name)
);

CREATE TABLE vault_grants (
    id           TEXT PRIMARY KEY,               -- vg_…
    vault_id     TEXT NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    principal_id TEXT REFERENCES principals (id) ON DELETE CASCADE,
    group_id     TEXT REFERENCES groups (id) ON DELETE CASCADE,
    level        TEXT NOT NULL CHECK (level IN ('view_vault', 'view_credentials', 'checkout')),
    expires_at   INTEGER,
    created_at   INTEGER NOT NULL,
    CHECK ((principal_id IS NULL) <> (group_id IS NULL))
);
CREATE INDEX vault_grants_by_vault ON vault_grants (vault_id);

CREATE TABLE identities (
    id                    TEXT PRIMARY KEY,      -- idn_…
    vault_id              TEXT NOT NULL REFERENCES vaults (id),
    name                  TEXT NOT NULL,
    username              TEXT NOT NULL,
    credential_type       TEXT NOT NULL CHECK (credential_type IN ('password', 'ssh_key')),
    secret                TEXT,                  -- sealed current credential
    rotation_interval_days INTEGER,
    rotate_after_use      INTEGER NOT NULL DEFAULT 0,
    concurrent_checkout   INTEGER NOT NULL DEFAULT 0,
    max_concurrent        INTEGER NOT NULL DEFAULT 1,
    last_rotated_at       INTEGER,
    next_rotation_at      INTEGER,
    created_at            INTEGER NOT NULL,
    UNIQUE (vault_id, name)
);
CREATE INDEX identities_by_next_rotation ON identities (next_rotation_at);

CREATE TABLE identity_hosts (
    identity_id  TEXT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    host_id      TEXT NOT NULL REFERENCES hosts (id),
    adopt_job_id TEXT,                           -- the adopt-account job queued when linked
    password_job_id TEXT,                        -- the set-password job that gave it the current password
    PRIMARY KEY (identity_id, host_id)
);

CREATE TABLE password_history (
    identity_id TEXT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    hash        TEXT NOT NULL,                   -- HMAC-SHA-256 under a key derived from the data key, hex
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (identity_id, hash)
);
CREATE INDEX password_history_by_identity ON password_history (identity_id, created_at);

CREATE TABLE checkouts (
    id             TEXT PRIMARY KEY,             -- co_…
    identity_id    TEXT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    principal_id   TEXT NOT NULL REFERENCES principals (id),
    reason         TEXT NOT NULL,
    host_id        TEXT REFERENCES hosts (id),
    break_glass    INTEGER NOT NULL DEFAULT 0,
    started_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    checked_in_at  INTEGER,
    checked_in_how TEXT CHECK (checked_in_how IN ('holder', 'forced', 'expired')),
    checked_in_by  TEXT,
    rotation_id    TEXT
);
CREATE INDEX checkouts_open ON checkouts (identity_id, checked_in_at);
CREATE INDEX checkouts_by_expiry ON checkouts (expires_at);

CREATE TABLE rotations (
    id          TEXT PRIMARY KEY,                -- rot_…
    identity_id TEXT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    cause       TEXT NOT NULL CHECK (cause IN ('manual', 'scheduled', 'after_use', 'break_glass', 'enrollment')),
    state       TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'failed')),
    secret      TEXT NOT NULL,                   -- sealed new credential (pending until confirmed)
    secret_hash TEXT NOT NULL,                   -- its keyed hash, for the history
    started_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER,
    note        TEXT                         -- why it failed (a host's error, superseded by …)
);
CREATE INDEX rotations_by_identity ON rotations (identity_id, created_at);
CREATE INDEX rotations_pending ON rotations (state);
-- At most one pending rotation per identity (a newer one supersedes it in its transaction).
CREATE UNIQUE INDEX rotations_one_pending ON rotations (identity_id) WHERE state = 'pending';

CREATE TABLE rotation_hosts (
    rotation_id TEXT NOT NULL REFERENCES rotations (id) ON DELETE CASCADE,
    host_id     TEXT NOT NULL REFERENCES hosts (id),
    job_id      TEXT NOT NULL UNIQUE,            -- the set-password job (queued right after)
    PRIMARY KEY (rotation_id, host_id)
);

CREATE TABLE break_glass_uses (
    id           TEXT PRIMARY KEY,            -- a random id
    principal_id TEXT NOT NULL,
    at           INTEGER NOT NULL
);
CREATE INDEX break_glass_uses_by_principal ON break_glass_uses (principal_id, at);

-- Support access: the vendor's support engineers (members of the group latch-support) may see
-- an organization's vault metadata — never a secret — while one of these is in force.
CREATE TABLE support_access (
    id              TEXT PRIMARY KEY,             -- sa_…
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    reason          TEXT NOT NULL,
    enabled_by      TEXT NOT NULL,
    enabled_at      INTEGER NOT NULL,
    expires_at      INTEGER,                          -- null: until disabled
    disabled_at     INTEGER,
    disabled_by     TEXT,
    disabled_how    TEXT CHECK (disabled_how IN ('disabled', 'emergency'))
);
CREATE INDEX support_access_by_organization ON support_access (organization_id);
