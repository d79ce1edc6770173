-- Late and repeated gateway results (contract §14): what a success that
-- comes after its bill moved on needs to find again.

-- One order for the events of an execution's bills: a bill takes a number
-- when it is issued, an unpaid amount takes one when it is carried over.
-- Both happen under the execution's row lock, so the numbers follow the
-- order of the changes whatever the clocks of the processes say: the bill
-- an amount was carried into is the first bill with a CARRIED line whose
-- number is above the carry's.
CREATE SEQUENCE bill_events_seq;
ALTER TABLE bills ADD COLUMN issue_seq BIGINT NOT NULL DEFAULT nextval('bill_events_seq');
-- Set when the bill's unpaid amount was carried over (plan action RETRY).
-- Bills carried over before this migration have none; their issue_seq
-- stands in for it.
ALTER TABLE bills ADD COLUMN carried_seq BIGINT;
CREATE INDEX bills_execution_issue ON bills (execution_id, issue_seq) WHERE execution_id IS NOT NULL;

-- The bill whose failed debit revoked the execution (plan action REVOKE).
-- Any later change of status (update_status, or a reactivation) clears it:
-- an execution is activated again by a late success of that bill only while
-- the revocation is the last thing that happened to its status.
ALTER TABLE executions ADD COLUMN revoked_by_bill TEXT;

CREATE FUNCTION executions_clear_revocation() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.revoked_by_bill IS NOT DISTINCT FROM OLD.revoked_by_bill THEN
        NEW.revoked_by_bill := NULL;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER executions_clear_revocation BEFORE UPDATE ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_clear_revocation();
