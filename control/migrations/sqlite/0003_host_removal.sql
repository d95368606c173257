-- Removed hosts keep their row (history, audit) but can no longer authenticate.
ALTER TABLE hosts ADD COLUMN removed_at INTEGER;
