-- Windowed dispatch: each planned change belongs to one batch of its run, so
-- the applier can hand on the next batch of a run when it finishes one.
ALTER TABLE run_changes ADD COLUMN batch integer;
CREATE INDEX run_changes_by_batch ON run_changes (run_id, batch);

-- What the applier checked in the tenant's PBX before a run's first create:
-- the template (its id, when the tenant names it by name) and the caller id.
CREATE TABLE run_pbx_checks (
    run_id       uuid PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    template_id  text,
    checked_at   timestamptz NOT NULL DEFAULT now()
);

-- PBX users without an owner (no external_id), listed before a run's first
-- create, by the value of the tenant's adopt_match field: a create whose value
-- is here adopts that user instead of posting a second one. An adoption
-- removes its row, so one PBX user is adopted once.
CREATE TABLE run_pbx_unowned (
    run_id       uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    match_value  text NOT NULL,
    pbx_user     jsonb NOT NULL,
    PRIMARY KEY (run_id, match_value)
);
