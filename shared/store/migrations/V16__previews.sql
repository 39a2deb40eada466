-- Live previews: what the next sync would do, read from the directory as it
-- is now. Any API replica may start one and any may answer for it, so its
-- progress lives here; a preview whose process died stops beating and is
-- reported failed. Deleted a day after it was asked for.
CREATE TABLE previews (
    id             uuid PRIMARY KEY,
    tenant_id      text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- running, succeeded, failed
    state          text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    -- SHA-256 of the settings previewed (saved or not), to tell previews apart
    settings_hash  text NOT NULL,
    -- users per decision, and the run-level warnings (conflicts, a hold)
    summary        jsonb,
    warnings       jsonb,
    error_code     text,
    error          text,
    users_read     bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX previews_created ON previews (created_at);

-- One line per user, numbered in object id order; read in pages.
CREATE TABLE preview_lines (
    preview_id  uuid NOT NULL REFERENCES previews (id) ON DELETE CASCADE,
    n           integer NOT NULL,
    decision    text NOT NULL,
    line        jsonb NOT NULL,
    PRIMARY KEY (preview_id, n)
);
CREATE INDEX preview_lines_decision ON preview_lines (preview_id, decision, n);
