-- When the fetcher began reading the run's round from the directory. Until
-- then a resync request joins the run; from then on it queues a follow-up run
-- (state `queued`, at most one per tenant) that starts once this one has ended.
ALTER TABLE runs ADD COLUMN round_started_at timestamptz;

-- A queued run's start requests: each one published gets its own number (its
-- message id carries it), so of several published requests exactly one starts
-- the run, and a request lost to a crash is published again after a while.
ALTER TABLE runs ADD COLUMN start_requests integer NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN start_requested_at timestamptz;
-- The number of the start request that started it (a redelivery of that one resumes it).
ALTER TABLE runs ADD COLUMN started_by_request integer;

CREATE UNIQUE INDEX runs_one_queued ON runs (tenant_id) WHERE state = 'queued';

-- Runs in progress before this migration may have read their round already:
-- counted as read, so a new request queues a follow-up instead of joining.
-- Not progress, so the heartbeat stays as it was.
ALTER TABLE runs DISABLE TRIGGER runs_heartbeat;
UPDATE runs SET round_started_at = started_at WHERE finished_at IS NULL;
ALTER TABLE runs ENABLE TRIGGER runs_heartbeat;

-- Tells the fetchers' schedulers at once when a run ends, whichever service
-- ended it, so a queued follow-up starts without waiting for the next poll
-- (the poll still finds it if the notification is lost).
CREATE FUNCTION runs_notify_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('usersync_run_ended', NEW.tenant_id);
    RETURN NULL;
END $$;
CREATE TRIGGER runs_notify_ended AFTER UPDATE OF finished_at ON runs
    FOR EACH ROW WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL)
    EXECUTE FUNCTION runs_notify_ended();
