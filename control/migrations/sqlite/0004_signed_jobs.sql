-- Every job is signed when it is created; the payload and signature are delivered byte-for-byte.
ALTER TABLE jobs ADD COLUMN payload TEXT;
ALTER TABLE jobs ADD COLUMN signature TEXT;
