-- Failure isolation: an execution whose bill cannot be made is parked with
-- its error. Billing passes skip it until billing_parked_until, or until the
-- merchant changes something of its own (plan, prices, credit, status).
ALTER TABLE executions ADD COLUMN billing_error TEXT;
ALTER TABLE executions ADD COLUMN billing_parked_until TIMESTAMPTZ;
CREATE INDEX executions_parked ON executions (merchant_id) WHERE billing_parked_until IS NOT NULL;
