-- A run ends when none of its batches has a change pending. The applier no
-- longer counts finished batches on the run's row: every step that finished
-- a batch locked that one row until its commit (an fsync), so the steps of a
-- run took turns there. After its commit a step looks for batches still
-- pending, and only when there are none locks the run's row to end it; the
-- last step to commit sees every other's changes, so one of them ends the run.
ALTER TABLE runs DROP COLUMN batches_pending;
-- That look-up reads only the batches still open.
CREATE INDEX run_batches_open ON run_batches (run_id) WHERE pending > 0;
