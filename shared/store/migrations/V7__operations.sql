-- Operating many tenants: progress heartbeats of runs, requests that joined a
-- run already in progress, and the schedule's claimable due times.

-- The last sign of progress of a run. A run whose heartbeat is old no longer
-- blocks new ones (a crashed pipeline cannot hold a tenant forever).
ALTER TABLE runs ADD COLUMN heartbeat_at timestamptz NOT NULL DEFAULT now();

-- Any update of a run (state, changes counted down) is progress.
CREATE FUNCTION runs_heartbeat() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.heartbeat_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER runs_heartbeat BEFORE UPDATE ON runs
    FOR EACH ROW EXECUTE FUNCTION runs_heartbeat();

-- Pages recorded and changes planned are progress too: one update per
-- statement, not per row, so a 100,000-user plan costs one write.
CREATE FUNCTION runs_heartbeat_from_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE runs SET heartbeat_at = now()
     WHERE id IN (SELECT DISTINCT run_id FROM new_rows) AND finished_at IS NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER round_pages_heartbeat AFTER INSERT ON round_pages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION runs_heartbeat_from_rows();
CREATE TRIGGER run_changes_heartbeat AFTER INSERT ON run_changes
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION runs_heartbeat_from_rows();

-- A resync request that joined the run already in progress, so whoever asked
-- (`usersync resync --wait`) can follow that run.
CREATE TABLE run_joins (
    request_id  uuid PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    joined_at   timestamptz NOT NULL DEFAULT now()
);

-- When each tenant's next nightly run is due. Replicas claim a due run by
-- moving next_due on with a compare-and-swap, so it fires once.
CREATE TABLE tenant_schedule (
    tenant_id    text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    -- The tenant's `schedule` the due time was computed from; a change recomputes it.
    schedule     jsonb NOT NULL,
    next_due     timestamptz NOT NULL,
    -- The earliest pending deletion a sweep run was last requested for.
    swept_for    timestamptz
);
CREATE INDEX tenant_schedule_due ON tenant_schedule (next_due);
-- Only users waiting for deletion: due sweeps and status count them per tenant.
CREATE INDEX sync_users_pending_delete ON sync_users (tenant_id, pending_delete_at)
    WHERE pending_delete_at IS NOT NULL;
