-- Expiring, prioritised credit grants; usage alerts; progressive billing;
-- plan changes with proration.

-- A grant of credit and what is left of it. The execution's balance is the
-- sum of its grants' remainders, and the running sum of its ledger.
CREATE TABLE credit_grants (
    id           TEXT        PRIMARY KEY,
    -- age order among grants of equal priority and expiry
    seq          BIGINT      GENERATED ALWAYS AS IDENTITY,
    merchant_id  TEXT        NOT NULL,
    execution_id TEXT        NOT NULL REFERENCES executions,
    reference_id TEXT        NOT NULL,
    amount       NUMERIC     NOT NULL CHECK (amount > 0),
    remaining    NUMERIC     NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    -- lower is used first
    priority     INTEGER     NOT NULL DEFAULT 100,
    expires_at   TIMESTAMPTZ,
    expired_at   TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX credit_grants_execution ON credit_grants (execution_id, seq);
CREATE INDEX credit_grants_expiring ON credit_grants (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;

-- Every entry names the grant it moved: a GRANT its own, a USE (one per
-- grant a bill drew on) and an EXPIRE the grant they took from.
ALTER TABLE credit_ledger ADD COLUMN grant_id TEXT;
ALTER TABLE credit_ledger
    DROP CONSTRAINT credit_ledger_kind_check,
    ADD CONSTRAINT credit_ledger_kind_check CHECK (kind IN ('GRANT', 'USE', 'EXPIRE')),
    DROP CONSTRAINT credit_ledger_execution_id_kind_reference_id_key;
CREATE UNIQUE INDEX credit_ledger_grant_reference ON credit_ledger (execution_id, reference_id) WHERE kind = 'GRANT';
CREATE UNIQUE INDEX credit_ledger_use ON credit_ledger (execution_id, reference_id, grant_id) WHERE kind = 'USE';
CREATE UNIQUE INDEX credit_ledger_expire ON credit_ledger (grant_id) WHERE kind = 'EXPIRE';
CREATE INDEX credit_ledger_execution ON credit_ledger (execution_id, id);

-- Grants made before: one per GRANT entry, what was used taken from the
-- oldest first, so that the remainders add up to each balance.
WITH granted AS (
    SELECT l.id, l.merchant_id, l.execution_id, l.reference_id, l.amount, l.created_at,
           SUM(l.amount) OVER (PARTITION BY l.execution_id ORDER BY l.id) AS up_to,
           SUM(l.amount) OVER (PARTITION BY l.execution_id) - e.credit_balance AS used
    FROM credit_ledger l JOIN executions e ON e.id = l.execution_id
    WHERE l.kind = 'GRANT'
)
INSERT INTO credit_grants (id, merchant_id, execution_id, reference_id, amount, remaining, created_at, updated_at)
SELECT 'grant_' || id, merchant_id, execution_id, reference_id, amount,
       GREATEST(0, LEAST(amount, up_to - used)), created_at, created_at
FROM granted ORDER BY id;
UPDATE credit_ledger SET grant_id = 'grant_' || id WHERE kind = 'GRANT';

-- Interim bills of progressive billing, and the bills of plan changes.
ALTER TABLE bills
    DROP CONSTRAINT bills_kind_check,
    ADD CONSTRAINT bills_kind_check CHECK (kind IN ('PERIOD', 'PRESENTED', 'SEQUENCE', 'PROGRESSIVE', 'PRORATION'));
CREATE INDEX bills_execution_kind ON bills (execution_id, kind, period_start) WHERE kind IN ('PROGRESSIVE', 'PRORATION');

-- Lines may take away: what interim bills already billed, the unused part
-- of a plan amount paid in advance.
ALTER TABLE bill_lines
    DROP CONSTRAINT bill_lines_kind_check,
    ADD CONSTRAINT bill_lines_kind_check
        CHECK (kind IN ('PLAN_AMOUNT', 'USAGE', 'CARRIED', 'SCHEDULED_AMOUNT', 'MINIMUM_COMMITMENT',
                        'PROGRESSIVE_BILLED', 'PRORATED_PLAN_AMOUNT', 'UNUSED_PLAN_AMOUNT'));

-- [{"amount": .., "recurring": false}, ...]
ALTER TABLE plans ADD COLUMN usage_thresholds JSONB NOT NULL DEFAULT '[]';

ALTER TABLE executions
    -- [amount, ...]
    ADD COLUMN usage_alerts JSONB NOT NULL DEFAULT '[]',
    -- The period whose usage interim bills billed, and up to which threshold.
    ADD COLUMN progressive_period_start TIMESTAMPTZ,
    ADD COLUMN progressive_level NUMERIC,
    -- Set when counted usage reached the next threshold: billing makes the
    -- interim bill at its next pass (woken at once) and clears it.
    ADD COLUMN progressive_due_at TIMESTAMPTZ,
    -- The period in which a plan change with proration took effect: its
    -- plan amount was billed in advance from then on.
    ADD COLUMN prorated_period_start TIMESTAMPTZ;
CREATE INDEX executions_progressive_due ON executions (progressive_due_at) WHERE progressive_due_at IS NOT NULL;

-- Usage alerts announced, once per amount per period.
CREATE TABLE usage_alerts_sent (
    execution_id TEXT        NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    amount       NUMERIC     NOT NULL,
    used_amount  NUMERIC     NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (execution_id, period_start, amount)
);

-- Previews and plan changes with proration, by the caller's request_id.
CREATE TABLE plan_changes (
    merchant_id        TEXT        NOT NULL,
    request_id         TEXT        NOT NULL,
    execution_id       TEXT        NOT NULL REFERENCES executions,
    from_plan_id       TEXT        NOT NULL,
    from_amount        NUMERIC     NOT NULL,
    to_plan_id         TEXT        NOT NULL,
    -- the amount agreed for this execution, when one was given
    to_plan_amount     NUMERIC,
    period_start       TIMESTAMPTZ NOT NULL,
    period_end         TIMESTAMPTZ NOT NULL,
    effective_at       TIMESTAMPTZ NOT NULL,
    remaining_fraction NUMERIC     NOT NULL,
    unused_amount      NUMERIC     NOT NULL,
    new_amount         NUMERIC     NOT NULL,
    net_amount         NUMERIC     NOT NULL,
    currency           TEXT        NOT NULL,
    status             TEXT        NOT NULL CHECK (status IN ('PREVIEWED', 'PENDING', 'APPLIED', 'FAILED')),
    bill_id            TEXT,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (merchant_id, request_id)
);
CREATE INDEX plan_changes_bill ON plan_changes (bill_id) WHERE bill_id IS NOT NULL;
CREATE INDEX plan_changes_execution ON plan_changes (execution_id, period_start) WHERE status = 'APPLIED';
