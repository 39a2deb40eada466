-- Every mail the notifier decided to send, by deterministic id, with where it
-- got to. A row is claimed (`sending`) before the SMTP transaction starts and
-- marked `sent` after the server's 250, so a redelivered event never sends a
-- mail twice; see docs/mail.md for the states.
CREATE TABLE mails (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL,
    -- welcome, welcome_copy, digest, resolved, secret_expiry
    kind         text NOT NULL,
    -- empty when the mail had nowhere to go (state no_address)
    recipient    text NOT NULL,
    run_id       uuid,
    -- sending, sent, pending (a temporary failure, to be tried again), failed
    -- (refused for good), uncertain (a send was cut off: not repeated),
    -- no_address (a created user without a mail address)
    state        text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    -- when the current attempt took the mail, by the services' clock
    claimed_at   timestamptz,
    sent_at      timestamptz,
    -- the SMTP reply or cause of the last failure
    reply        text,
    -- What the operator must hear about (a user without an address, a refused
    -- or uncertain welcome mail) is reported once, in the digest named here.
    reported_in  text,
    detail       jsonb NOT NULL DEFAULT '{}'
);
-- The mails of a run, for its progress (`usersync resync --wait`).
CREATE INDEX mails_by_run ON mails (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX mails_to_report ON mails (tenant_id)
    WHERE reported_in IS NULL AND state IN ('failed', 'uncertain', 'no_address');

-- Mails already recorded by earlier versions were sent.
INSERT INTO mails (id, tenant_id, kind, recipient, state, attempts, sent_at)
SELECT id, tenant_id,
       CASE WHEN id LIKE 'welcome-copy:%' THEN 'welcome_copy'
            WHEN id LIKE 'welcome:%' THEN 'welcome' ELSE 'digest' END,
       recipient, 'sent', 1, sent_at
FROM sent_mails;
DROP TABLE sent_mails;

-- Which mail reports a run: decided once, so a redelivered RunFinished (even on
-- another day) maps to the same mail.
CREATE TABLE run_digests (
    run_id   uuid PRIMARY KEY,
    mail_id  text
);

-- A run failure that stands until a later run of the tenant completes; then
-- one "resolved" mail says so.
CREATE TABLE standing_errors (
    tenant_id     text NOT NULL,
    error_code    text NOT NULL,
    -- the first failing run: names the episode
    opened_run    uuid NOT NULL,
    opened_at     timestamptz NOT NULL,
    last_error    text,
    -- the run that completed after it
    resolved_run  uuid,
    PRIMARY KEY (tenant_id, error_code, opened_run)
);
CREATE UNIQUE INDEX standing_errors_open ON standing_errors (tenant_id, error_code)
    WHERE resolved_run IS NULL;
