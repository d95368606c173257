-- People and permissions (issue 10): principals (users and service users), groups, role
-- bindings, API keys, bearer sessions, TOTP, host labels. Credential hashes are keyed
-- (HMAC-SHA-256 under a key derived from the audit key, which lives outside the database), so
-- someone who can write the database but not read the data directory cannot mint a credential.

CREATE TABLE principals (
    id            TEXT PRIMARY KEY,          -- usr_… or svc_…
    kind          TEXT NOT NULL CHECK (kind IN ('user', 'service')),
    name          TEXT NOT NULL UNIQUE,      -- login name, or the service user's name
    display_name  TEXT NOT NULL DEFAULT '',
    email         TEXT,
    idp_issuer    TEXT,                      -- set for users who sign in through OIDC
    idp_subject   TEXT,
    password_hash TEXT,                      -- argon2id PHC string, local users only
    disabled_at   INTEGER,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER,
    failed_logins INTEGER NOT NULL DEFAULT 0, -- wrong local passwords since the last good one
    locked_until  INTEGER,                    -- local sign-in refused until then
    UNIQUE (idp_issuer, idp_subject)
);

CREATE TABLE groups (
    id          TEXT PRIMARY KEY,            -- grp_…
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    idp_group   TEXT UNIQUE,                 -- the identity provider's group claim value mapped here
    created_at  INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id     TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    principal_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    source       TEXT NOT NULL CHECK (source IN ('local', 'idp')),
    PRIMARY KEY (group_id, principal_id)
);
CREATE INDEX group_members_by_principal ON group_members (principal_id);

CREATE TABLE role_bindings (
    id           TEXT PRIMARY KEY,           -- rb_…
    role         TEXT NOT NULL CHECK (role IN ('pam_admin', 'resource_admin',
                     'delegated_resource_admin', 'security_admin', 'end_user')),
    principal_id TEXT REFERENCES principals (id) ON DELETE CASCADE,
    group_id     TEXT REFERENCES groups (id) ON DELETE CASCADE,
    selector     TEXT CHECK (selector <> ''), -- label selector; delegated_resource_admin only
    created_at   INTEGER NOT NULL,
    CHECK ((principal_id IS NULL) <> (group_id IS NULL)),
    CHECK ((role = 'delegated_resource_admin') = (selector IS NOT NULL))
);
CREATE INDEX role_bindings_by_principal ON role_bindings (principal_id);
CREATE INDEX role_bindings_by_group ON role_bindings (group_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,           -- key_…
    principal_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    hash         TEXT NOT NULL UNIQUE,       -- keyed hash of the key, hex
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,           -- ses_…
    principal_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    hash         TEXT NOT NULL UNIQUE,       -- keyed hash of the bearer token, hex
    kind         TEXT NOT NULL CHECK (kind IN ('sso', 'local', 'service')),
    api_key_id   TEXT REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    mfa_at       INTEGER,                    -- last second factor shown in this session
    address      TEXT
);
CREATE INDEX sessions_by_principal ON sessions (principal_id);

CREATE TABLE totp (
    principal_id TEXT PRIMARY KEY REFERENCES principals (id) ON DELETE CASCADE,
    secret       TEXT NOT NULL,              -- sealed (AES-256-GCM, base64) under a key outside the database
    confirmed_at INTEGER,
    pending      TEXT,                       -- a replacement being enrolled (sealed); the
                                             -- confirmed secret stays in force until its first code
    last_step    INTEGER NOT NULL DEFAULT 0, -- the last accepted time step: a code is used once
    failures     INTEGER NOT NULL DEFAULT 0, -- wrong codes since the last good one
    locked_until INTEGER                     -- codes refused until then
);

ALTER TABLE hosts ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE enroll_tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
