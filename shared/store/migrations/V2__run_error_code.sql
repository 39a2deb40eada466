-- A stable key for why a run failed, so a standing error is recognised across runs.
ALTER TABLE runs ADD COLUMN error_code text;

-- Deletions the mass-deletion guard held back in a run.
ALTER TABLE runs ADD COLUMN held integer NOT NULL DEFAULT 0;
