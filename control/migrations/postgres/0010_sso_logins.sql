-- The same as control/migrations/sqlite/0010_sso_logins.sql. Single sign-on (issue 10): sign-ins
-- through the identity provider that have begun and not yet finished, kept in the database so
-- that any replica can finish one another began. The PKCE verifier and the device code are
-- sealed under a key outside the database (bound to the id).

CREATE TABLE sso_logins (
    id            TEXT COLLATE "C" PRIMARY KEY, -- the OAuth state (code flow) or sso_… (device flow)
    kind          TEXT NOT NULL CHECK (kind IN ('code', 'device')),
    nonce         TEXT,                      -- the ID token must carry it (code flow)
    pkce_verifier TEXT,                      -- sealed (code flow)
    redirect_uri  TEXT,                      -- loopback only (code flow)
    device_code   TEXT,                      -- sealed (device flow)
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,           -- at most 10 minutes after creation
    used_at       BIGINT                     -- set once: a sign-in finishes once
);
CREATE INDEX sso_logins_by_expiry ON sso_logins (expires_at);
