-- Metered usage: every counted event (the idempotency key, kept forever),
-- running aggregates per execution, metric and period, distinct values of
-- UNIQUE_COUNT metrics, and the thresholds already announced per period.

-- Everything before this instant has been billed; later usage is open.
ALTER TABLE executions ADD COLUMN billed_until TIMESTAMPTZ;

CREATE TABLE usage_events (
    merchant_id  TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    execution_id TEXT        NOT NULL,
    metric_id    TEXT        NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    value        NUMERIC     NOT NULL,
    ts           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, event_id)
);

CREATE TABLE usage_aggregates (
    execution_id    TEXT        NOT NULL,
    metric_id       TEXT        NOT NULL,
    period_start    TIMESTAMPTZ NOT NULL,
    sum             NUMERIC     NOT NULL DEFAULT 0,
    count           BIGINT      NOT NULL DEFAULT 0,
    max             NUMERIC,
    latest_ts       TIMESTAMPTZ,
    latest_event_id TEXT,
    latest_value    NUMERIC,
    unique_count    BIGINT      NOT NULL DEFAULT 0,
    PRIMARY KEY (execution_id, metric_id, period_start)
);

CREATE TABLE usage_unique_values (
    execution_id TEXT        NOT NULL,
    metric_id    TEXT        NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    value        TEXT        NOT NULL,
    PRIMARY KEY (execution_id, metric_id, period_start, value)
);

CREATE TABLE usage_thresholds (
    execution_id TEXT        NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    kind         TEXT        NOT NULL CHECK (kind IN ('CREDITS_DEPLETED', 'AMOUNT_BREACHED_LIMIT')),
    amount       NUMERIC     NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (execution_id, period_start, kind)
);
