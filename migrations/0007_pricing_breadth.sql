-- Time-weighted usage, percentage fees, graduated percentage and minimum
-- commitments.

ALTER TABLE metrics
    DROP CONSTRAINT metrics_aggregation_type_check,
    ADD CONSTRAINT metrics_aggregation_type_check
        CHECK (aggregation_type IN ('SUM', 'COUNT', 'MAX', 'UNIQUE_COUNT', 'LATEST', 'WEIGHTED_SUM')),
    DROP CONSTRAINT metrics_pricing_type_check,
    ADD CONSTRAINT metrics_pricing_type_check
        CHECK (pricing_type IN ('FIXED', 'TIERED', 'VOLUME', 'PACKAGE', 'PERCENTAGE', 'GRADUATED_PERCENTAGE')),
    -- PERCENTAGE: {rate, fixed_amount, free_units_per_events, ...}
    ADD COLUMN percentage JSONB;

ALTER TABLE plans ADD COLUMN minimum_commitment NUMERIC CHECK (minimum_commitment >= 0);

-- weighted: WEIGHTED_SUM's sum of value x seconds from the period start;
-- fee: PERCENTAGE's sum of each event's own fee.
ALTER TABLE usage_aggregates
    ADD COLUMN weighted NUMERIC NOT NULL DEFAULT 0,
    ADD COLUMN fee      NUMERIC NOT NULL DEFAULT 0;

-- Events of PERCENTAGE metrics with a free allowance, in the order the
-- allowance takes them: a period is priced from its first rows here and
-- its running fee, never from all its events.
CREATE TABLE usage_allowance_events (
    execution_id TEXT        NOT NULL,
    metric_id    TEXT        NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    ts           TIMESTAMPTZ NOT NULL,
    event_id     TEXT        NOT NULL,
    value        NUMERIC     NOT NULL,
    PRIMARY KEY (execution_id, metric_id, period_start, ts, event_id)
);

ALTER TABLE bill_lines
    DROP CONSTRAINT bill_lines_kind_check,
    ADD CONSTRAINT bill_lines_kind_check
        CHECK (kind IN ('PLAN_AMOUNT', 'USAGE', 'CARRIED', 'SCHEDULED_AMOUNT', 'MINIMUM_COMMITMENT'));
