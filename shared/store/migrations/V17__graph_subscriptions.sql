-- Graph change-notification subscriptions: one per tenant and resource
-- (`/users`, `/groups`) while the tenant has `change_notifications` on.
-- The fetcher's scheduler creates, renews, recreates and deletes them; the
-- API's notification endpoint finds them by Graph's id to check the
-- clientState and asks the scheduler for lifecycle work through `action`.
CREATE TABLE graph_subscriptions (
    tenant_id         text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    resource          text NOT NULL,
    -- Graph's id; NULL until created (or after Graph lost it)
    subscription_id   text UNIQUE,
    -- the random clientState, encrypted like the tenant's secrets
    client_state_enc  text,
    expires_at        timestamptz,
    -- asked for by a lifecycle event: reauthorize, recreate
    action            text CHECK (action IN ('reauthorize', 'recreate')),
    -- the last failure to create or renew, and when to try again
    last_error        text,
    last_error_at     timestamptz,
    next_attempt_at   timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    -- one scheduler replica works on a row at a time
    claimed_until     timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    renewed_at        timestamptz,
    PRIMARY KEY (tenant_id, resource)
);

-- When the tenant's last change notification arrived (any resource).
ALTER TABLE tenants ADD COLUMN last_notification_at timestamptz;
