-- Catalog, customers, billing executions, the credit ledger, command
-- idempotency and the webhook outbox. Every row is scoped by merchant_id.

CREATE TABLE metrics (
    merchant_id       TEXT        NOT NULL,
    metric_id         TEXT        NOT NULL,
    -- numeric id shown as metric_info[].id, as the product does
    seq               BIGINT      GENERATED ALWAYS AS IDENTITY,
    name              TEXT        NOT NULL,
    description       TEXT        NOT NULL DEFAULT '',
    unit              TEXT        NOT NULL DEFAULT '',
    event_type        TEXT        NOT NULL DEFAULT '',
    aggregation_type  TEXT        NOT NULL CHECK (aggregation_type IN ('SUM', 'COUNT', 'MAX', 'UNIQUE_COUNT', 'LATEST')),
    aggregation_field TEXT,
    pricing_type      TEXT        NOT NULL CHECK (pricing_type IN ('FIXED', 'TIERED', 'VOLUME', 'PACKAGE')),
    pricing_model     JSONB       NOT NULL,
    package_size      NUMERIC,
    free_units        NUMERIC     NOT NULL DEFAULT 0,
    currency          TEXT        NOT NULL,
    status            TEXT        NOT NULL DEFAULT 'ACTIVE',
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, metric_id)
);

CREATE TABLE plans (
    merchant_id            TEXT        NOT NULL,
    plan_id                TEXT        NOT NULL,
    plan_name              TEXT        NOT NULL,
    plan_description       TEXT        NOT NULL DEFAULT '',
    plan_type              TEXT        NOT NULL CHECK (plan_type IN ('PRE_DEBIT', 'POST_DEBIT')),
    plan_model             TEXT        NOT NULL CHECK (plan_model IN ('FIXED', 'VARIABLE', 'USAGE_BASED', 'HYBRID', 'USAGE_CALCULATION')),
    plan_interval          TEXT        NOT NULL,
    plan_rule_type         TEXT        NOT NULL DEFAULT 'ON' CHECK (plan_rule_type IN ('ON', 'BEFORE', 'AFTER')),
    plan_rule_value        INTEGER     CHECK (plan_rule_value BETWEEN 1 AND 31),
    plan_amount            NUMERIC     NOT NULL DEFAULT 0 CHECK (plan_amount >= 0),
    plan_currency          TEXT        NOT NULL,
    max_amount             NUMERIC     CHECK (max_amount > 0),
    max_retry              INTEGER     NOT NULL DEFAULT 3 CHECK (max_retry >= 0),
    plan_action_on_failure TEXT        NOT NULL CHECK (plan_action_on_failure IN ('RETRY', 'SKIP', 'REVOKE')),
    plan_status            TEXT        NOT NULL DEFAULT 'ACTIVE',
    created_at             TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, plan_id)
);

CREATE TABLE plan_metrics (
    merchant_id TEXT    NOT NULL,
    plan_id     TEXT    NOT NULL,
    metric_id   TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, plan_id, metric_id),
    FOREIGN KEY (merchant_id, plan_id) REFERENCES plans ON DELETE CASCADE,
    FOREIGN KEY (merchant_id, metric_id) REFERENCES metrics
);

CREATE TABLE customers (
    merchant_id TEXT        NOT NULL,
    customer_id TEXT        NOT NULL,
    name        TEXT,
    email       TEXT,
    mobile      TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, customer_id)
);

CREATE TABLE executions (
    id                 TEXT        PRIMARY KEY,
    merchant_id        TEXT        NOT NULL,
    customer_id        TEXT        NOT NULL,
    plan_id            TEXT        NOT NULL,
    merchant_ref_id    TEXT,
    status             TEXT        NOT NULL CHECK (status IN ('CREATED', 'ACTIVE', 'INACTIVE')),
    -- the balance is the running sum of credit_ledger; both change in one transaction
    credit_balance     NUMERIC     NOT NULL DEFAULT 0 CHECK (credit_balance >= 0),
    -- per-customer pricing of VARIABLE plans: [{metric_id, pricing_type, pricing_model, ...}]
    metric_info        JSONB       NOT NULL DEFAULT '[]',
    billing_start_date TIMESTAMPTZ,
    token              TEXT,
    mandate_id         TEXT,
    activated_at       TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (merchant_id, customer_id) REFERENCES customers,
    FOREIGN KEY (merchant_id, plan_id) REFERENCES plans
);
CREATE UNIQUE INDEX executions_merchant_ref ON executions (merchant_id, merchant_ref_id) WHERE merchant_ref_id IS NOT NULL;
CREATE INDEX executions_customer ON executions (merchant_id, customer_id, created_at);

CREATE TABLE credit_ledger (
    id            BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id   TEXT        NOT NULL,
    execution_id  TEXT        NOT NULL REFERENCES executions,
    kind          TEXT        NOT NULL CHECK (kind IN ('GRANT', 'USE')),
    amount        NUMERIC     NOT NULL CHECK (amount > 0),
    balance_after NUMERIC     NOT NULL CHECK (balance_after >= 0),
    -- the merchant's reference of a grant, or the bill a use paid
    reference_id  TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (execution_id, kind, reference_id)
);

-- Replies of commands that carried a message_id: a repeat gets the same answer.
CREATE TABLE processed_messages (
    merchant_id TEXT        NOT NULL,
    message_id  TEXT        NOT NULL,
    command     TEXT        NOT NULL,
    response    JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, message_id)
);

-- Webhooks, written in the transaction of the change they announce.
CREATE TABLE outbox (
    seq          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT        NOT NULL UNIQUE,
    merchant_id  TEXT        NOT NULL,
    execution_id TEXT,
    event_name   TEXT        NOT NULL,
    payload      JSONB       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
