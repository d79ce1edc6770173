-- Billing: bills and their lines, debit attempts at the payment gateway,
-- explicit bill schedules (add_billing_plan) and plan changes.

-- The end of the open period: when the scheduler next bills the execution.
ALTER TABLE executions ADD COLUMN next_bill_at TIMESTAMPTZ;
-- Unpaid amounts carried into the next bill (plan action RETRY).
ALTER TABLE executions ADD COLUMN carried_amount NUMERIC NOT NULL DEFAULT 0 CHECK (carried_amount >= 0);
-- A plan_amount agreed for this execution instead of the plan's.
ALTER TABLE executions ADD COLUMN plan_amount NUMERIC CHECK (plan_amount >= 0);
-- change_plan: the plan (and amount) taking effect at the next period boundary.
ALTER TABLE executions ADD COLUMN pending_plan_id TEXT;
ALTER TABLE executions ADD COLUMN pending_plan_amount NUMERIC CHECK (pending_plan_amount >= 0);
CREATE INDEX executions_next_bill ON executions (next_bill_at) WHERE next_bill_at IS NOT NULL;

CREATE TABLE billing_plans (
    id             TEXT        PRIMARY KEY,
    merchant_id    TEXT        NOT NULL,
    customer_id    TEXT        NOT NULL,
    token          TEXT,
    plan_type      TEXT,
    schedule_type  TEXT        NOT NULL CHECK (schedule_type IN ('D', 'W', 'M', 'Y')),
    periodicity    INTEGER     NOT NULL CHECK (periodicity >= 1),
    start_date     DATE        NOT NULL,
    end_date       DATE,
    end_type       INTEGER     NOT NULL CHECK (end_type IN (1, 2, 3)),
    no_of_payments INTEGER,
    amount         NUMERIC     NOT NULL CHECK (amount >= 0),
    currency       TEXT        NOT NULL,
    reference_id   TEXT,
    max_retry      INTEGER     NOT NULL CHECK (max_retry >= 0),
    active         BOOLEAN     NOT NULL,
    billing_mode   TEXT,
    bill_day       INTEGER,
    request        JSONB       NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (merchant_id, customer_id) REFERENCES customers
);
CREATE UNIQUE INDEX billing_plans_reference ON billing_plans (merchant_id, reference_id) WHERE reference_id IS NOT NULL;

CREATE TABLE bills (
    id               TEXT        PRIMARY KEY,
    merchant_id      TEXT        NOT NULL,
    customer_id      TEXT        NOT NULL,
    execution_id     TEXT        REFERENCES executions,
    billing_plan_id  TEXT        REFERENCES billing_plans,
    -- PERIOD: a closed period of an execution; PRESENTED: usage billed on present;
    -- SEQUENCE: an entry of an explicit schedule
    kind             TEXT        NOT NULL CHECK (kind IN ('PERIOD', 'PRESENTED', 'SEQUENCE')),
    -- what the bill is for, unique per execution: "advance:<t>", "period:<t>", "presented:<t>"
    bill_key         TEXT,
    period_start     TIMESTAMPTZ,
    period_end       TIMESTAMPTZ,
    sequence_number  INTEGER,
    reference_id     TEXT,
    currency         TEXT        NOT NULL,
    total            NUMERIC     NOT NULL CHECK (total >= 0),
    credit_applied   NUMERIC     NOT NULL DEFAULT 0 CHECK (credit_applied >= 0),
    amount_due       NUMERIC     NOT NULL CHECK (amount_due >= 0),
    status           TEXT        NOT NULL CHECK (status IN ('SCHEDULED', 'PROCESSING', 'RETRY_SCHEDULED', 'PAID',
                                                            'WRITTEN_OFF', 'CARRIED_OVER', 'FAILED', 'CANCELLED')),
    action_on_failure TEXT       NOT NULL CHECK (action_on_failure IN ('RETRY', 'SKIP', 'REVOKE')),
    token            TEXT,
    -- when the debit may run; BILLING_TXN_TO_BE_EXECUTED goes out at least
    -- the pre-debit notice before it
    due_at           TIMESTAMPTZ NOT NULL,
    notice_sent_at   TIMESTAMPTZ,
    attempt          INTEGER     NOT NULL DEFAULT 0,
    max_retry        INTEGER     NOT NULL,
    next_attempt_at  TIMESTAMPTZ,
    request_id       TEXT,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_error       TEXT,
    gateway_txn_id   TEXT,
    settled_at       TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX bills_key ON bills (execution_id, bill_key) WHERE execution_id IS NOT NULL;
CREATE UNIQUE INDEX bills_sequence ON bills (billing_plan_id, sequence_number) WHERE kind = 'SEQUENCE';
CREATE INDEX bills_due ON bills (next_attempt_at) WHERE status IN ('SCHEDULED', 'RETRY_SCHEDULED');
CREATE INDEX bills_processing ON bills (lease_expires_at) WHERE status = 'PROCESSING';
CREATE INDEX bills_request ON bills (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX bills_notice ON bills (due_at) WHERE status = 'SCHEDULED' AND notice_sent_at IS NULL;

CREATE TABLE bill_lines (
    bill_id     TEXT    NOT NULL REFERENCES bills,
    position    INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('PLAN_AMOUNT', 'USAGE', 'CARRIED', 'SCHEDULED_AMOUNT')),
    metric_id   TEXT,
    quantity    NUMERIC,
    amount      NUMERIC NOT NULL,
    description TEXT    NOT NULL,
    PRIMARY KEY (bill_id, position)
);

CREATE TABLE debit_attempts (
    request_id     TEXT        PRIMARY KEY,
    bill_id        TEXT        NOT NULL REFERENCES bills,
    attempt        INTEGER     NOT NULL,
    amount         NUMERIC     NOT NULL,
    requested_at   TIMESTAMPTZ,
    status         TEXT        NOT NULL CHECK (status IN ('REQUESTED', 'PENDING', 'SUCCESS', 'FAILURE', 'TIMEOUT')),
    error_code     TEXT,
    error_message  TEXT,
    retryable      BOOLEAN,
    gateway_txn_id TEXT,
    result_at      TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (bill_id, attempt)
);
