-- Latch control plane on PostgreSQL: the schema of SQLite migrations 0001-0008 in one step.
-- This tree starts at version 8 so that from 0009 on, one number means one change on both
-- engines (control/migrations/sqlite/NNNN_x.sql and control/migrations/postgres/NNNN_x.sql).
--
-- Same meaning, same values as the SQLite store: times are Unix milliseconds (UTC) in BIGINT,
-- so an audit entry hashes the same `at` on both engines; JSON (job specs, audit details,
-- outcome notes) is TEXT, kept byte for byte as delivered and hashed (jsonb would reorder it).
-- Identifiers and names sort bytewise (COLLATE "C"), as in SQLite, whatever the database's
-- default collation.

CREATE TABLE admin_tokens (
    hash        TEXT PRIMARY KEY,          -- SHA-256 of the token, hex
    created_at  BIGINT NOT NULL
);

CREATE TABLE enroll_tokens (
    hash        TEXT PRIMARY KEY,          -- SHA-256 of the token, hex
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    uses_total  BIGINT NOT NULL,
    uses_left   BIGINT NOT NULL CHECK (uses_left >= 0)
);

CREATE TABLE hosts (
    id               TEXT COLLATE "C" PRIMARY KEY,
    hostname         TEXT COLLATE "C" NOT NULL,
    os               TEXT NOT NULL,
    kernel           TEXT NOT NULL,
    arch             TEXT NOT NULL,
    cpus             BIGINT NOT NULL,
    memory_bytes     BIGINT NOT NULL,
    machine_id       TEXT NOT NULL,
    credential_hash  TEXT NOT NULL UNIQUE, -- SHA-256 of the host credential, hex
    enrolled_at      BIGINT NOT NULL,
    last_seen        BIGINT,
    next_seq         BIGINT NOT NULL DEFAULT 1,
    removed_at       BIGINT                -- removed hosts keep their row but cannot authenticate
);
CREATE INDEX hosts_by_hostname ON hosts (hostname);

CREATE TABLE jobs (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    host_id               TEXT COLLATE "C" NOT NULL REFERENCES hosts (id),
    seq                   BIGINT NOT NULL,
    kind                  TEXT NOT NULL,
    spec                  TEXT NOT NULL,   -- JSON JobSpec, exactly as delivered
    status                TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'failed')),
    error_code            TEXT,
    error_message         TEXT,
    created_at            BIGINT NOT NULL,
    finished_at           BIGINT,
    attempts              BIGINT NOT NULL DEFAULT 0,
    lease                 TEXT,            -- token of the current delivery
    lease_expires_at      BIGINT,
    subject_user          TEXT COLLATE "C", -- the account the job is about
    subject_group         TEXT COLLATE "C", -- add-group / remove-group: the group
    expires_at            BIGINT,          -- grants: when the access ends
    revoked_at            BIGINT,          -- grants: when the access was removed
    revoked_by            TEXT CHECK (revoked_by IN ('agent_expiry', 'control_plane', 'job')),
    revoked_by_job_id     TEXT,            -- grants: the job that ended it (revoked_by = 'job')
    revocation_job_id     TEXT,            -- grants: the revocation job queued for it
    revocation_attempts   BIGINT NOT NULL DEFAULT 0, -- grants: revocation jobs that failed
    revocation_failed_at  BIGINT,          -- grants: when the last one failed
    revocation_error      TEXT,            -- grants: its error, "code: message"
    revokes_job_id        TEXT,            -- revocation jobs: the grant they end
    payload               TEXT,            -- the signed payload, byte for byte
    signature             TEXT,
    outcome_notes         TEXT,            -- JSON array of strings noted on a confirmed outcome
    UNIQUE (host_id, seq)
);
CREATE INDEX jobs_by_host_status ON jobs (host_id, status, seq);
CREATE INDEX jobs_by_created ON jobs (created_at);
CREATE INDEX jobs_due_grants ON jobs (expires_at)
    WHERE expires_at IS NOT NULL AND revoked_at IS NULL AND revocation_job_id IS NULL;
CREATE INDEX jobs_by_subject ON jobs (host_id, subject_user, seq);
-- Not in SQLite (where one writer scans): the lease sweep and a failed revocation job's grant.
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE status = 'pending';
CREATE INDEX jobs_by_revocation_job ON jobs (revocation_job_id) WHERE revocation_job_id IS NOT NULL;

CREATE TABLE job_events (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   TEXT COLLATE "C" NOT NULL REFERENCES jobs (id),
    at       BIGINT NOT NULL,
    event    TEXT NOT NULL,
    detail   TEXT
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);

-- Append-only, hash-chained audit log (see the SQLite migration 0005). Appends are serialized
-- by a transaction-scoped advisory lock (control/src/store/postgres.rs), so ids stay 1, 2, 3, …
-- without gaps and the chain never forks, whichever connection or replica writes.
CREATE TABLE audit_log (
    id         BIGINT PRIMARY KEY,      -- 1, 2, 3, … without gaps
    at         BIGINT NOT NULL,         -- Unix milliseconds
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    host_id    TEXT,
    job_id     TEXT,
    detail     TEXT NOT NULL,           -- JSON; never holds a secret
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_by_at ON audit_log (at);
CREATE INDEX audit_by_host ON audit_log (host_id, id);

-- One HMAC-SHA256 per entry under the audit key (kept outside the database), by key id.
CREATE TABLE audit_macs (
    key_id   TEXT NOT NULL,
    entry_id BIGINT NOT NULL,
    mac      TEXT NOT NULL,
    PRIMARY KEY (key_id, entry_id)
);

-- The triggers make accidental changes fail (the chain and its MACs catch deliberate ones).
-- Their names are those of the SQLite triggers.
CREATE FUNCTION latch_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION latch_append_only();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION latch_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION latch_append_only();
CREATE TRIGGER audit_macs_no_update BEFORE UPDATE ON audit_macs
    FOR EACH ROW EXECUTE FUNCTION latch_append_only();
CREATE TRIGGER audit_macs_no_delete BEFORE DELETE ON audit_macs
    FOR EACH ROW EXECUTE FUNCTION latch_append_only();
CREATE TRIGGER audit_macs_no_truncate BEFORE TRUNCATE ON audit_macs
    FOR EACH STATEMENT EXECUTE FUNCTION latch_append_only();

-- The public halves of the data directory's keys, recorded when each key is made.
CREATE TABLE key_pins (
    name       TEXT PRIMARY KEY,   -- signing, audit, ca
    public     TEXT NOT NULL,      -- public key (base64) or CA fingerprint (sha256:…)
    updated_at BIGINT NOT NULL     -- Unix milliseconds
);
