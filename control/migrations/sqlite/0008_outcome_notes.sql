-- What the agent noted on a confirmed outcome (JSON array of strings): a removal step that could
-- not be done although the result holds, or that there was nothing to do.
ALTER TABLE jobs ADD COLUMN outcome_notes TEXT;
