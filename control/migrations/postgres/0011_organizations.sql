-- The same as control/migrations/sqlite/0011_organizations.sql. Credential vault groundwork
-- (issue 11): organizations and their data keys. Each data key is AES-256-GCM-wrapped by the
-- master key, which lives outside the database (master.key in the data directory, or
-- --master-key-file); the canary is a known text sealed under the data key, decrypted at start
-- to prove the master key is the right one. No plaintext key is stored.

CREATE TABLE organizations (
    id               TEXT COLLATE "C" PRIMARY KEY, -- org_…
    name             TEXT COLLATE "C" NOT NULL UNIQUE,
    data_key_id      TEXT NOT NULL,             -- dk_…, the prefix of every ciphertext under it
    wrapped_data_key TEXT NOT NULL,             -- v1:<master key id>:<base64>, bound to id
    canary           TEXT NOT NULL,             -- v1:<data key id>:<base64>, bound to id
    created_at       BIGINT NOT NULL
);
