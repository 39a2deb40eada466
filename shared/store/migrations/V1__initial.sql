-- Tenants: configuration (secrets removed) plus the secrets, encrypted.
CREATE TABLE tenants (
    id                 text PRIMARY KEY,
    config             jsonb NOT NULL,
    client_secret_enc  text NOT NULL,
    pbx_token_enc      text,
    -- The users-delta link to start the next round from; moves only once the
    -- differ has recorded every page of a round.
    delta_link         text,
    last_success_at    timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- One sync run of one tenant, from request to outcome.
CREATE TABLE runs (
    id                 uuid PRIMARY KEY,
    tenant_id          text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    trigger            text NOT NULL,
    full_round         boolean NOT NULL,
    -- fetching, differing, applying, then one of succeeded, partial, failed, paused
    state              text NOT NULL,
    requested_at       timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    pages_total        integer,
    changes_pending    integer NOT NULL DEFAULT 0,
    created            integer NOT NULL DEFAULT 0,
    updated            integer NOT NULL DEFAULT 0,
    deleted            integer NOT NULL DEFAULT 0,
    skipped            integer NOT NULL DEFAULT 0,
    failed             integer NOT NULL DEFAULT 0,
    error              text
);
CREATE INDEX runs_by_tenant ON runs (tenant_id, started_at DESC);
CREATE INDEX runs_active ON runs (tenant_id) WHERE finished_at IS NULL;

-- Pages of a round (one pass of the fetcher) the differ has recorded, so a
-- round is complete only when all are.
CREATE TABLE round_pages (
    run_id    uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    round_id  uuid NOT NULL,
    page      integer NOT NULL,
    PRIMARY KEY (round_id, page)
);

-- Filter-group members seen in a round.
CREATE TABLE round_members (
    run_id     uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    round_id   uuid NOT NULL,
    object_id  text NOT NULL,
    PRIMARY KEY (round_id, object_id)
);

-- What the directory says about each user: the merged Graph attributes.
CREATE TABLE directory_users (
    tenant_id        text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    object_id        text NOT NULL,
    source           jsonb NOT NULL DEFAULT '{}',
    removed          boolean NOT NULL DEFAULT false,
    -- The last round that returned this user.
    seen_round       uuid,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, object_id)
);

-- Desired state (after mapping) and applied state (what the PBX was last told).
CREATE TABLE sync_users (
    tenant_id          text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    object_id          text NOT NULL,
    -- active, skipped, pending_deletion, deleted, out_of_scope
    state              text NOT NULL,
    desired            jsonb,
    desired_version    bigint NOT NULL DEFAULT 0,
    problems           jsonb NOT NULL DEFAULT '[]',
    pbx_id             text,
    applied            jsonb,
    applied_version    bigint NOT NULL DEFAULT 0,
    pending_delete_at  timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, object_id)
);

-- What a run planned for each user and how it ended.
CREATE TABLE run_changes (
    run_id           uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    object_id        text NOT NULL,
    desired_version  bigint NOT NULL,
    action           jsonb NOT NULL,
    -- pending, then created, updated, deleted, failed, superseded
    outcome          text NOT NULL DEFAULT 'pending',
    detail           text,
    PRIMARY KEY (run_id, object_id)
);

-- Users skipped by a run, with why.
CREATE TABLE run_skips (
    run_id     uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    object_id  text NOT NULL,
    problems   jsonb NOT NULL,
    PRIMARY KEY (run_id, object_id)
);

-- Mails sent, by deterministic id: a redelivered event never sends twice.
CREATE TABLE sent_mails (
    id        text PRIMARY KEY,
    tenant_id text NOT NULL,
    recipient text NOT NULL,
    sent_at   timestamptz NOT NULL DEFAULT now()
);
