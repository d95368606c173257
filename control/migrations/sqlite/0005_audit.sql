-- Append-only, hash-chained audit log. Each entry commits to the previous one's hash, so an
-- edited, inserted or deleted row breaks the chain (`latchctl audit verify`). The triggers make
-- accidental changes fail; the chain catches deliberate ones.
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY,     -- 1, 2, 3, … without gaps
    at         INTEGER NOT NULL,        -- Unix milliseconds
    actor      TEXT NOT NULL,           -- admin, host:<id>, enroll_token:<hash prefix>, control_plane, anonymous
    action     TEXT NOT NULL,           -- host.enroll, job.create, job.deliver, job.outcome, …
    host_id    TEXT,
    job_id     TEXT,
    detail     TEXT NOT NULL,           -- JSON; never holds a secret
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_by_at ON audit_log (at);
CREATE INDEX audit_by_host ON audit_log (host_id, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
