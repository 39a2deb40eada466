-- The generation of a user's create Idempotency-Key. It moves on in the
-- transaction that records a definite answer (201, 4xx), so a POST is repeated
-- with its key only while its outcome is unknown (timeout, dropped connection,
-- 5xx, 429), across crashes and runs.
ALTER TABLE sync_users ADD COLUMN create_generation bigint NOT NULL DEFAULT 0;

-- The PBX user that held one of the user's unique values when its create was
-- refused (409): {"holder_id", "field"}. The next run checks it with reads
-- before it posts again.
ALTER TABLE sync_users ADD COLUMN create_conflict jsonb;
