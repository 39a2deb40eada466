-- A mail's row is written three times: claimed, `transmitting`, then its
-- outcome. The index of mails to report had `state` in its predicate, so
-- each of those writes was a new row version on another page with an entry
-- in every index of the table. The predicate now reads a stored column that
-- changes only when a mail becomes (or stops being) a problem to report, and
-- half-full pages leave room for the new versions beside the old: the writes
-- of a mail that goes out can be HOT updates, with no index entries.
-- Adding the column rewrites the table once.
ALTER TABLE mails ADD COLUMN to_report boolean
    GENERATED ALWAYS AS (reported_in IS NULL AND state IN ('failed', 'uncertain', 'no_address')) STORED;
DROP INDEX mails_to_report;
CREATE INDEX mails_to_report ON mails (tenant_id) WHERE to_report;
ALTER TABLE mails SET (fillfactor = 50);
