-- A run's change batches, numbered as the plan is stored (batch n holds the
-- changes n*100 .. n*100+99 in object-id order), each with its own counts.
-- The applier counts a change on its batch's row, so changes of different
-- batches never wait for one another, and the run's row is touched once per
-- batch (when the batch's last change is counted). A run's live counts are
-- the sum over its batches.
CREATE TABLE run_batches (
    run_id   uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    batch    integer NOT NULL,
    changes  integer NOT NULL,
    pending  integer NOT NULL,
    created  integer NOT NULL DEFAULT 0,
    updated  integer NOT NULL DEFAULT 0,
    deleted  integer NOT NULL DEFAULT 0,
    failed   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, batch)
);

-- How many batches the run has, and how many still have a change pending: the
-- run ends when the last one is done.
ALTER TABLE runs ADD COLUMN batches integer NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN batches_pending integer NOT NULL DEFAULT 0;

-- A run's pages, for its progress (the primary key is by round).
CREATE INDEX round_pages_by_run ON round_pages (run_id);

-- A batch's changes in the order they are handed out: the index delivers
-- exactly them, sorted, so no plan reading more of the run is ever cheaper.
DROP INDEX run_changes_by_batch;
CREATE INDEX run_changes_by_batch ON run_changes (run_id, batch, object_id);

-- Runs in progress planned before this table existed: number what was not
-- numbered yet, then count their batches.
UPDATE run_changes c SET batch = n.batch
FROM (SELECT run_id, object_id,
             (row_number() OVER (PARTITION BY run_id ORDER BY object_id) - 1) / 100 AS batch
      FROM run_changes
      WHERE run_id IN (SELECT id FROM runs WHERE finished_at IS NULL AND state = 'applying')) n
WHERE c.run_id = n.run_id AND c.object_id = n.object_id AND c.batch IS NULL;
INSERT INTO run_batches (run_id, batch, changes, pending, created, updated, deleted, failed)
SELECT c.run_id, c.batch, count(*),
       count(*) FILTER (WHERE c.outcome = 'pending'),
       count(*) FILTER (WHERE c.outcome = 'created'),
       count(*) FILTER (WHERE c.outcome = 'updated'),
       count(*) FILTER (WHERE c.outcome = 'deleted'),
       count(*) FILTER (WHERE c.outcome = 'failed')
FROM run_changes c JOIN runs r ON r.id = c.run_id
WHERE r.finished_at IS NULL AND c.batch IS NOT NULL
GROUP BY c.run_id, c.batch;
UPDATE runs r SET batches = b.batches, batches_pending = b.open
FROM (SELECT run_id, count(*) AS batches, count(*) FILTER (WHERE pending > 0) AS open
      FROM run_batches GROUP BY run_id) b
WHERE b.run_id = r.id;
