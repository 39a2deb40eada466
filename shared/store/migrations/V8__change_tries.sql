-- A change's own failed tries (a transient PBX error on its own write: 429,
-- 5xx, timeout, dropped connection) and when the first and the latest
-- happened. The applier gives a change up only once its own failures span the
-- give-up bound; waiting out a pause another change caused is not a try.
-- While the change is pending, `detail` holds its latest error.
ALTER TABLE run_changes
    ADD COLUMN tries integer NOT NULL DEFAULT 0,
    ADD COLUMN first_failed_at timestamptz,
    ADD COLUMN last_failed_at timestamptz;
