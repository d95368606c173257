-- Keyed audit entries: one HMAC-SHA256 per entry under the audit key, which is kept outside the
-- database (audit.key), stored by that key's id so a replaced key (--new-audit-key) can key the
-- chain again without changing a row. Append-only like the log.
CREATE TABLE audit_macs (
    key_id   TEXT NOT NULL,      -- AuditKey::key_id
    entry_id INTEGER NOT NULL,   -- audit_log.id
    mac      TEXT NOT NULL,      -- HMAC-SHA256 over the entry's hash, hex
    PRIMARY KEY (key_id, entry_id)
) WITHOUT ROWID;

CREATE TRIGGER audit_macs_no_update BEFORE UPDATE ON audit_macs
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_macs_no_delete BEFORE DELETE ON audit_macs
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- The public halves of the data directory's keys, recorded when each key is made: a start that
-- finds a key file missing or different refuses instead of making a new key agents never pinned.
CREATE TABLE key_pins (
    name       TEXT PRIMARY KEY,   -- signing, audit, ca
    public     TEXT NOT NULL,      -- public key (base64) or CA fingerprint (sha256:…)
    updated_at INTEGER NOT NULL    -- Unix milliseconds
);
