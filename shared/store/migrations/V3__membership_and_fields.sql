-- Membership tracking of a tenant's filter groups (the groups delta), as of the
-- last round whose plan was stored. No row: the next scoped round lists the
-- members from scratch.
CREATE TABLE tenant_groups (
    tenant_id         text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    delta_link        text NOT NULL,
    -- The filter groups the membership belongs to, and the groups nested in them.
    filter_group_ids  text[] NOT NULL,
    nested_group_ids  text[] NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Users who are (transitive) members of the tenant's filter groups.
CREATE TABLE tenant_members (
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    object_id  text NOT NULL,
    PRIMARY KEY (tenant_id, object_id)
);

-- Source properties seen in the directory, for writing a field mapping.
CREATE TABLE tenant_fields (
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    field       text NOT NULL,
    users       integer NOT NULL,
    example     jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, field)
);

-- What a run wants the operator to know without failing, e.g. a filter group
-- name that matches several groups. Carried by the run's RunFinished event.
CREATE TABLE run_warnings (
    run_id   uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    warning  text NOT NULL,
    PRIMARY KEY (run_id, warning)
);
