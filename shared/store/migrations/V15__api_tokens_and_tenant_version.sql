-- usersync-api: a tenant's version for optimistic concurrency (its ETag),
-- moved on by every write; and the API tokens, stored as hashes only.
ALTER TABLE tenants ADD COLUMN version bigint NOT NULL DEFAULT 1;

CREATE TABLE api_tokens (
    -- The public id shown in lists and logs (`tok_…`); never the token.
    id            text PRIMARY KEY,
    -- sha256 of the token, hex: tokens are 256 random bits, so a plain hash suffices.
    token_sha256  text NOT NULL UNIQUE,
    -- The one tenant the token may see; NULL for every tenant (the operator).
    -- No foreign key: a token outlives a tenant deleted and created again.
    tenant_id     text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz
);
