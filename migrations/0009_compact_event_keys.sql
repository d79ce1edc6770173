-- Usage events keep their idempotency key forever in a compact form, and
-- their bodies only as long as `usage.event_retention`.

-- The key of a usage event: the first 16 bytes of the SHA-256 of the
-- merchant id's length in bytes, a colon, the merchant id and the event id.
-- The worker computes the same key (`domain::ids::usage_event_key`); this
-- function serves this migration and anyone asking "was this event counted?".
CREATE FUNCTION usage_event_key(merchant_id TEXT, event_id TEXT) RETURNS UUID
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
        SELECT encode(substring(sha256(convert_to(
            octet_length(merchant_id)::text || ':' || merchant_id || event_id, 'UTF8')) FROM 1 FOR 16), 'hex')::uuid
    $$;

ALTER TABLE usage_events ADD COLUMN key UUID;
UPDATE usage_events SET key = usage_event_key(merchant_id, event_id);

-- The key is the only unique index; every other column is the event's
-- body, which the pruning pass sets to NULL once the event is older than
-- the retention.
ALTER TABLE usage_events
    DROP CONSTRAINT usage_events_pkey,
    ALTER COLUMN key SET NOT NULL,
    ADD CONSTRAINT usage_events_pkey PRIMARY KEY (key),
    ALTER COLUMN merchant_id DROP NOT NULL,
    ALTER COLUMN event_id DROP NOT NULL,
    ALTER COLUMN execution_id DROP NOT NULL,
    ALTER COLUMN metric_id DROP NOT NULL,
    ALTER COLUMN period_start DROP NOT NULL,
    ALTER COLUMN value DROP NOT NULL,
    ALTER COLUMN ts DROP NOT NULL,
    ADD CONSTRAINT usage_events_body_whole CHECK (
        (merchant_id IS NULL AND event_id IS NULL AND execution_id IS NULL AND metric_id IS NULL
         AND period_start IS NULL AND value IS NULL AND ts IS NULL)
        OR (merchant_id IS NOT NULL AND event_id IS NOT NULL AND execution_id IS NOT NULL AND metric_id IS NOT NULL
            AND period_start IS NOT NULL AND value IS NOT NULL AND ts IS NOT NULL));

-- Bodies still kept, by age: what the pruning pass reads.
CREATE INDEX usage_events_kept_ts ON usage_events (ts) WHERE ts IS NOT NULL;

-- Allowance events of periods long billed, by age: what the pruning pass deletes.
CREATE INDEX usage_allowance_events_period ON usage_allowance_events (period_start);
