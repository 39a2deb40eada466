-- A run decides only the users that may need a decision (README, Planning):
-- those its round returned, those not settled yet, and those sharing a unique
-- value with them; everyone when what planning depends on changed.

-- The users a round returned, read by key.
CREATE INDEX directory_users_by_round ON directory_users (tenant_id, seen_round, object_id);

-- A user needs no decision while its applied version has reached this one
-- (0: nothing to apply; a change's version: settled once the change is
-- applied). NULL: decided by every run (skipped, held, pending deletion, and
-- every row planned before this column existed).
ALTER TABLE sync_users ADD COLUMN settled_version bigint;
CREATE INDEX sync_users_unsettled ON sync_users (tenant_id, object_id)
    WHERE settled_version IS NULL OR applied_version < settled_version;

-- Each user's claims on unique values (alias, fixed number) as of its last
-- decision: a run checks the users it decides against everyone else's.
CREATE TABLE user_claims (
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    field      text NOT NULL,
    value      text NOT NULL,
    object_id  text NOT NULL,
    holds      boolean NOT NULL,
    wants      boolean NOT NULL,
    PRIMARY KEY (tenant_id, field, value, object_id)
);
CREATE INDEX user_claims_by_user ON user_claims (tenant_id, object_id);

-- What the tenant's last stored plan depended on (a digest of the tenant
-- file as planned and the planner's version) and when everyone was last
-- decided. No row: the next run decides everyone.
CREATE TABLE tenant_plans (
    tenant_id        text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    basis            text NOT NULL,
    full_planned_at  timestamptz NOT NULL
);

-- The users a run decides when it does not decide everyone.
CREATE TABLE run_plan_users (
    run_id     uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    object_id  text NOT NULL,
    PRIMARY KEY (run_id, object_id)
);

-- A source's properties as a field mapping names them: nested objects one
-- level deep (`a.b`), arrays by position (`a[0]`), nulls left out.
CREATE FUNCTION source_fields(source jsonb) RETURNS TABLE (field text, value jsonb)
LANGUAGE sql IMMUTABLE AS $$
    SELECT p.key, p.value FROM jsonb_each(source) p
    WHERE jsonb_typeof(p.value) NOT IN ('object', 'array', 'null')
    UNION ALL
    SELECT p.key || '.' || i.key, i.value
    FROM jsonb_each(source) p,
         jsonb_each(CASE WHEN jsonb_typeof(p.value) = 'object' THEN p.value ELSE '{}' END) i
    WHERE jsonb_typeof(i.value) <> 'null'
    UNION ALL
    SELECT p.key || '[' || (e.position - 1) || ']', e.value
    FROM jsonb_each(source) p,
         jsonb_array_elements(CASE WHEN jsonb_typeof(p.value) = 'array' THEN p.value ELSE '[]' END)
             WITH ORDINALITY AS e(value, position)
    WHERE jsonb_typeof(e.value) <> 'null'
$$;

-- Discovered fields are counted as pages are recorded from now on: start
-- from the stored directory.
DELETE FROM tenant_fields;
INSERT INTO tenant_fields (tenant_id, field, users, example)
SELECT d.tenant_id, f.field, count(DISTINCT d.object_id), (array_agg(f.value ORDER BY d.object_id))[1]
FROM directory_users d, source_fields(d.source) f
WHERE NOT d.removed
GROUP BY d.tenant_id, f.field;

-- The round the fetcher began last for each tenant: the only one whose pages
-- are recorded and whose end is planned. A page of an older round (a killed
-- fetcher's, redelivered or retried late) changes nothing. The row is also
-- the tenant's directory lock: everything that writes the tenant's directory
-- users, discovered fields or members locks it first, so those writes take
-- turns and cannot deadlock.
CREATE TABLE tenant_rounds (
    tenant_id  text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    round_id   uuid NOT NULL,
    run_id     uuid NOT NULL,
    begun_at   timestamptz NOT NULL DEFAULT now()
);

-- Every round that was ever the tenant's current one: a round found here
-- that is not current any more is stale (round ids are random, not ordered).
CREATE TABLE directory_rounds (
    round_id   uuid PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    run_id     uuid NOT NULL,
    begun_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX directory_rounds_by_tenant ON directory_rounds (tenant_id);
