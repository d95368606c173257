-- Latch control plane, initial schema. Times are Unix milliseconds (UTC).

CREATE TABLE admin_tokens (
    hash        TEXT PRIMARY KEY,          -- SHA-256 of the token, hex
    created_at  INTEGER NOT NULL
);

CREATE TABLE enroll_tokens (
    hash        TEXT PRIMARY KEY,          -- SHA-256 of the token, hex
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    uses_total  INTEGER NOT NULL,
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0)
);

CREATE TABLE hosts (
    id               TEXT PRIMARY KEY,
    hostname         TEXT NOT NULL,
    os               TEXT NOT NULL,
    kernel           TEXT NOT NULL,
    arch             TEXT NOT NULL,
    cpus             INTEGER NOT NULL,
    memory_bytes     INTEGER NOT NULL,
    machine_id       TEXT NOT NULL,
    credential_hash  TEXT NOT NULL UNIQUE, -- SHA-256 of the host credential, hex
    enrolled_at      INTEGER NOT NULL,
    last_seen        INTEGER,
    next_seq         INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX hosts_by_hostname ON hosts (hostname);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    host_id           TEXT NOT NULL REFERENCES hosts (id),
    seq               INTEGER NOT NULL,
    kind              TEXT NOT NULL,
    spec              TEXT NOT NULL,       -- JSON JobSpec, exactly as delivered
    status            TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'failed')),
    error_code        TEXT,
    error_message     TEXT,
    created_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    lease             TEXT,                -- token of the current delivery
    lease_expires_at  INTEGER,
    UNIQUE (host_id, seq)
);
CREATE INDEX jobs_by_host_status ON jobs (host_id, status, seq);
CREATE INDEX jobs_by_created ON jobs (created_at);

CREATE TABLE job_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   TEXT NOT NULL REFERENCES jobs (id),
    at       INTEGER NOT NULL,
    event    TEXT NOT NULL,
    detail   TEXT
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);
