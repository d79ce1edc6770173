//! Bills, their lines and debit attempts. A bill row is the state machine
//! of its collection: status, attempt, next attempt, lease and last error.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::domain::bill::{AttemptStatus, BillKind, BillStatus, Line, LineKind};
use crate::domain::catalog::ActionOnFailure;

/// The statuses of a bill waiting for its debit, as SQL: those the bill's
/// life lets be claimed or cancelled (a test holds this to
/// [`crate::domain::bill::BillEvent::allowed_from`]). The `bills_due` index has the same list.
macro_rules! awaiting_debit {
    () => {
        "('SCHEDULED', 'RETRY_SCHEDULED')"
    };
}

/// A stored bill.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct BillRow {
    pub id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub execution_id: Option<String>,
    pub billing_plan_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub kind: BillKind,
    pub bill_key: Option<String>,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub sequence_number: Option<i32>,
    pub reference_id: Option<String>,
    pub currency: String,
    pub total: Decimal,
    pub credit_applied: Decimal,
    pub amount_due: Decimal,
    #[sqlx(try_from = "String")]
    pub status: BillStatus,
    #[sqlx(try_from = "String")]
    pub action_on_failure: ActionOnFailure,
    pub token: Option<String>,
    pub due_at: DateTime<Utc>,
    pub notice_sent_at: Option<DateTime<Utc>>,
    pub attempt: i32,
    pub max_retry: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub request_id: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub gateway_txn_id: Option<String>,
    pub settled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl BillRow {
    /// Records a debit the gateway made at `now` (the caller sets the
    /// status): its transaction id kept, no attempt to come, lease released.
    pub(crate) fn record_debit(&mut self, gateway_txn_id: Option<String>, now: DateTime<Utc>) {
        self.gateway_txn_id = gateway_txn_id;
        self.settled_at = Some(now);
        self.next_attempt_at = None;
        self.lease_owner = None;
        self.lease_expires_at = None;
        self.updated_at = now;
    }
}

/// A stored line.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct LineRow {
    pub position: i32,
    #[sqlx(try_from = "String")]
    pub kind: LineKind,
    pub metric_id: Option<String>,
    pub quantity: Option<Decimal>,
    pub amount: Decimal,
    pub description: String,
}

/// Inserts a bill; `false` when a bill with its key (or sequence number) exists.
pub(crate) async fn insert(conn: &mut PgConnection, b: &BillRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO bills (id, merchant_id, customer_id, execution_id, billing_plan_id, kind, bill_key, period_start,
             period_end, sequence_number, reference_id, currency, total, credit_applied, amount_due, status,
             action_on_failure, token, due_at, notice_sent_at, attempt, max_retry, next_attempt_at, settled_at,
             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                 $22, $23, $24, $25, $25)
         ON CONFLICT DO NOTHING",
    )
    .bind(&b.id)
    .bind(&b.merchant_id)
    .bind(&b.customer_id)
    .bind(&b.execution_id)
    .bind(&b.billing_plan_id)
    .bind(b.kind.as_str())
    .bind(&b.bill_key)
    .bind(b.period_start)
    .bind(b.period_end)
    .bind(b.sequence_number)
    .bind(&b.reference_id)
    .bind(&b.currency)
    .bind(b.total)
    .bind(b.credit_applied)
    .bind(b.amount_due)
    .bind(b.status.as_str())
    .bind(b.action_on_failure.as_str())
    .bind(&b.token)
    .bind(b.due_at)
    .bind(b.notice_sent_at)
    .bind(b.attempt)
    .bind(b.max_retry)
    .bind(b.next_attempt_at)
    .bind(b.settled_at)
    .bind(b.created_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Inserts many bills in one statement.
pub(crate) async fn insert_many(conn: &mut PgConnection, bills: &[BillRow]) -> Result<(), sqlx::Error> {
    if bills.is_empty() {
        return Ok(());
    }
    macro_rules! col {
        ($f:ident) => {
            bills.iter().map(|b| b.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO bills (id, merchant_id, customer_id, execution_id, billing_plan_id, kind, bill_key, period_start,
             period_end, sequence_number, reference_id, currency, total, credit_applied, amount_due, status,
             action_on_failure, token, due_at, notice_sent_at, attempt, max_retry, next_attempt_at, settled_at,
             created_at, updated_at)
         SELECT *, created_at FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::timestamptz[], $9::timestamptz[], $10::int4[], $11::text[], $12::text[], $13::numeric[], $14::numeric[],
             $15::numeric[], $16::text[], $17::text[], $18::text[], $19::timestamptz[], $20::timestamptz[], $21::int4[],
             $22::int4[], $23::timestamptz[], $24::timestamptz[], $25::timestamptz[])
             AS t(id, merchant_id, customer_id, execution_id, billing_plan_id, kind, bill_key, period_start, period_end,
                  sequence_number, reference_id, currency, total, credit_applied, amount_due, status, action_on_failure,
                  token, due_at, notice_sent_at, attempt, max_retry, next_attempt_at, settled_at, created_at)",
    )
    .bind(col!(id))
    .bind(col!(merchant_id))
    .bind(col!(customer_id))
    .bind(col!(execution_id))
    .bind(col!(billing_plan_id))
    .bind(bills.iter().map(|b| b.kind.as_str()).collect::<Vec<_>>())
    .bind(col!(bill_key))
    .bind(col!(period_start))
    .bind(col!(period_end))
    .bind(col!(sequence_number))
    .bind(col!(reference_id))
    .bind(col!(currency))
    .bind(col!(total))
    .bind(col!(credit_applied))
    .bind(col!(amount_due))
    .bind(bills.iter().map(|b| b.status.as_str()).collect::<Vec<_>>())
    .bind(bills.iter().map(|b| b.action_on_failure.as_str()).collect::<Vec<_>>())
    .bind(col!(token))
    .bind(col!(due_at))
    .bind(col!(notice_sent_at))
    .bind(col!(attempt))
    .bind(col!(max_retry))
    .bind(col!(next_attempt_at))
    .bind(col!(settled_at))
    .bind(col!(created_at))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes the lines of many bills in one statement.
pub(crate) async fn insert_lines_many(
    conn: &mut PgConnection,
    bills: &[(String, Vec<Line>)],
) -> Result<(), sqlx::Error> {
    let rows: Vec<(&str, i32, &Line)> = bills
        .iter()
        .flat_map(|(id, lines)| {
            lines
                .iter()
                .enumerate()
                .map(move |(i, l)| (id.as_str(), i as i32 + 1, l))
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO bill_lines (bill_id, position, kind, metric_id, quantity, amount, description)
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::text[])",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.metric_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.quantity).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.amount).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.description.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes a bill's lines in one statement.
pub(crate) async fn insert_lines(conn: &mut PgConnection, bill_id: &str, lines: &[Line]) -> Result<(), sqlx::Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let positions: Vec<i32> = (1..=lines.len() as i32).collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l.kind.as_str()).collect();
    let metrics: Vec<Option<String>> = lines.iter().map(|l| l.metric_id.clone()).collect();
    let quantities: Vec<Option<Decimal>> = lines.iter().map(|l| l.quantity).collect();
    let amounts: Vec<Decimal> = lines.iter().map(|l| l.amount).collect();
    let descriptions: Vec<&str> = lines.iter().map(|l| l.description.as_str()).collect();
    sqlx::query(
        "INSERT INTO bill_lines (bill_id, position, kind, metric_id, quantity, amount, description)
         SELECT $1, * FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::text[])",
    )
    .bind(bill_id)
    .bind(&positions)
    .bind(&kinds)
    .bind(&metrics)
    .bind(&quantities)
    .bind(&amounts)
    .bind(&descriptions)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn lines(conn: &mut PgConnection, bill_id: &str) -> Result<Vec<LineRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, kind, metric_id, quantity, amount, description FROM bill_lines WHERE bill_id = $1 ORDER BY position",
    )
    .bind(bill_id)
    .fetch_all(conn)
    .await
}

/// Claims bills whose debit is due: notice given, next attempt reached.
/// Each claimed bill moves to PROCESSING with a new attempt number, a new
/// request id and a lease, so no other process attempts it.
pub(crate) async fn claim_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    owner: &str,
    lease_until: DateTime<Utc>,
    limit: i64,
    merchant: Option<&str>,
) -> Result<Vec<BillRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "WITH due AS (
             SELECT id FROM bills
             WHERE status IN ",
        awaiting_debit!(),
        " AND notice_sent_at IS NOT NULL AND next_attempt_at <= $1
               AND ($5::text IS NULL OR merchant_id = $5)
             ORDER BY next_attempt_at
             LIMIT $4
             FOR UPDATE SKIP LOCKED)
         UPDATE bills b SET status = 'PROCESSING', attempt = b.attempt + 1,
             request_id = 'req_' || replace(gen_random_uuid()::text, '-', ''),
             lease_owner = $2, lease_expires_at = $3, updated_at = $1
         FROM due WHERE b.id = due.id
         RETURNING b.*"
    ))
    .bind(now)
    .bind(owner)
    .bind(lease_until)
    .bind(limit)
    .bind(merchant)
    .fetch_all(conn)
    .await
}

/// Records the attempts of claimed bills.
pub(crate) async fn insert_attempts(
    conn: &mut PgConnection,
    bills: &[BillRow],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let request_ids: Vec<String> = bills.iter().map(|b| b.request_id.clone().unwrap_or_default()).collect();
    let bill_ids: Vec<&str> = bills.iter().map(|b| b.id.as_str()).collect();
    let attempts: Vec<i32> = bills.iter().map(|b| b.attempt).collect();
    let amounts: Vec<Decimal> = bills.iter().map(|b| b.amount_due).collect();
    sqlx::query(
        "INSERT INTO debit_attempts (request_id, bill_id, attempt, amount, status, created_at)
         SELECT r, b, a, m, 'REQUESTED', $5 FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::numeric[]) AS t(r, b, a, m)",
    )
    .bind(&request_ids)
    .bind(&bill_ids)
    .bind(&attempts)
    .bind(&amounts)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks requests as handed to the broker; the lease now lasts until the
/// result is overdue.
pub(crate) async fn mark_requested(
    conn: &mut PgConnection,
    request_ids: &[String],
    now: DateTime<Utc>,
    result_deadline: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE debit_attempts SET requested_at = $2 WHERE request_id = ANY($1) AND requested_at IS NULL")
        .bind(request_ids)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE bills SET lease_expires_at = $2, updated_at = $3 WHERE request_id = ANY($1) AND status = 'PROCESSING'",
    )
    .bind(request_ids)
    .bind(result_deadline)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A PROCESSING bill whose lease ran out, with whether its request left.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Expired {
    #[sqlx(flatten)]
    pub bill: BillRow,
    pub requested_at: Option<DateTime<Utc>>,
}

/// Claims PROCESSING bills whose lease expired: a request never handed to the
/// broker (the process died in between) or a result that never came.
pub(crate) async fn claim_expired(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    owner: &str,
    lease_until: DateTime<Utc>,
    limit: i64,
    merchant: Option<&str>,
) -> Result<Vec<Expired>, sqlx::Error> {
    sqlx::query_as(
        "WITH expired AS (
             SELECT id FROM bills WHERE status = 'PROCESSING' AND lease_expires_at <= $1
               AND ($5::text IS NULL OR merchant_id = $5)
             ORDER BY lease_expires_at LIMIT $4 FOR UPDATE SKIP LOCKED)
         UPDATE bills b SET lease_owner = $2, lease_expires_at = $3, updated_at = $1
         FROM expired WHERE b.id = expired.id
         RETURNING b.*, (SELECT requested_at FROM debit_attempts d WHERE d.request_id = b.request_id) AS requested_at",
    )
    .bind(now)
    .bind(owner)
    .bind(lease_until)
    .bind(limit)
    .bind(merchant)
    .fetch_all(conn)
    .await
}

/// Locks a bill.
pub(crate) async fn lock(conn: &mut PgConnection, id: &str) -> Result<Option<BillRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bills WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// A debit attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub bill_id: String,
    #[sqlx(try_from = "String")]
    pub status: AttemptStatus,
    pub requested_at: Option<DateTime<Utc>>,
}

/// The bill a debit request was for, read without a lock.
pub(crate) async fn bill_of_request(conn: &mut PgConnection, request_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT bill_id FROM debit_attempts WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

/// Locks an attempt by its request id.
pub(crate) async fn lock_attempt(conn: &mut PgConnection, request_id: &str) -> Result<Option<AttemptRow>, sqlx::Error> {
    sqlx::query_as("SELECT bill_id, status, requested_at FROM debit_attempts WHERE request_id = $1 FOR UPDATE")
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

/// Records a gateway result (or a timeout) on an attempt.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_result(
    conn: &mut PgConnection,
    request_id: &str,
    status: AttemptStatus,
    error_code: Option<&str>,
    error_message: Option<&str>,
    retryable: Option<bool>,
    gateway_txn_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE debit_attempts SET status = $2, error_code = $3, error_message = $4, retryable = $5,
             gateway_txn_id = COALESCE($6, gateway_txn_id), result_at = $7
         WHERE request_id = $1",
    )
    .bind(request_id)
    .bind(status.as_str())
    .bind(error_code)
    .bind(error_message)
    .bind(retryable)
    .bind(gateway_txn_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves a bill to a new status with the fields that go with it.
pub(crate) async fn update(conn: &mut PgConnection, b: &BillRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE bills SET status = $2, next_attempt_at = $3, lease_owner = $4, lease_expires_at = $5, last_error = $6,
             gateway_txn_id = $7, settled_at = $8, notice_sent_at = $9, updated_at = $10
         WHERE id = $1",
    )
    .bind(&b.id)
    .bind(b.status.as_str())
    .bind(b.next_attempt_at)
    .bind(&b.lease_owner)
    .bind(b.lease_expires_at)
    .bind(&b.last_error)
    .bind(&b.gateway_txn_id)
    .bind(b.settled_at)
    .bind(b.notice_sent_at)
    .bind(b.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Bills whose pre-debit notice is due (explicit schedules bill ahead).
pub(crate) async fn claim_notices(
    conn: &mut PgConnection,
    notice_from: DateTime<Utc>,
    limit: i64,
    merchant: Option<&str>,
) -> Result<Vec<BillRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM bills WHERE status = 'SCHEDULED' AND notice_sent_at IS NULL AND due_at <= $1
           AND ($3::text IS NULL OR merchant_id = $3)
         ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(notice_from)
    .bind(limit)
    .bind(merchant)
    .fetch_all(conn)
    .await
}

/// Cancels an execution's bills that were not attempted yet.
pub(crate) async fn cancel_open(
    conn: &mut PgConnection,
    execution_id: &str,
    except: &str,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(concat!(
        "UPDATE bills SET status = 'CANCELLED', updated_at = $3
         WHERE execution_id = $1 AND id <> $2 AND status IN ",
        awaiting_debit!()
    ))
    .bind(execution_id)
    .bind(except)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Age in seconds of the oldest bill past its due time and not yet attempted.
pub(crate) async fn oldest_due_age(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<f64, sqlx::Error> {
    let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(concat!(
        "SELECT min(next_attempt_at) FROM bills WHERE status IN ",
        awaiting_debit!(),
        " AND notice_sent_at IS NOT NULL AND next_attempt_at <= $1"
    ))
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0))
}

// ---------------------------------------------------------------- late results

/// What a debit attempt asked for and what the gateway answered.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AttemptDetail {
    pub request_id: String,
    pub attempt: i32,
    pub amount: Decimal,
    pub gateway_txn_id: Option<String>,
}

/// The amount and transaction of an attempt.
pub(crate) async fn attempt_detail(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<AttemptDetail>, sqlx::Error> {
    sqlx::query_as("SELECT request_id, attempt, amount, gateway_txn_id FROM debit_attempts WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

/// The successful attempt that paid a bill, other than `except`: the first to succeed.
pub(crate) async fn paying_attempt(
    conn: &mut PgConnection,
    bill_id: &str,
    except: &str,
) -> Result<Option<AttemptDetail>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_id, attempt, amount, gateway_txn_id FROM debit_attempts
         WHERE bill_id = $1 AND request_id <> $2 AND status = 'SUCCESS' ORDER BY result_at, attempt LIMIT 1",
    )
    .bind(bill_id)
    .bind(except)
    .fetch_optional(conn)
    .await
}

/// Numbers a carry-over of the bill's unpaid amount in the order of the
/// execution's bill events (migration 0005). The caller holds the
/// execution's row lock.
pub(crate) async fn mark_carried(conn: &mut PgConnection, bill_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE bills SET carried_seq = nextval('bill_events_seq') WHERE id = $1")
        .bind(bill_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Where a bill's carry-over stands in the order of bill events: its
/// `carried_seq`, or its `issue_seq` for a bill carried before that existed.
pub(crate) async fn carry_position(conn: &mut PgConnection, bill_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(carried_seq, issue_seq) FROM bills WHERE id = $1")
        .bind(bill_id)
        .fetch_one(conn)
        .await
}

/// The first bill of an execution issued after `position` with a CARRIED
/// line (the bill a carry-over at `position` went into), locked, with that
/// line's position and amount.
pub(crate) async fn lock_carrying_bill(
    conn: &mut PgConnection,
    execution_id: &str,
    position: i64,
) -> Result<Option<(BillRow, i32, Decimal)>, sqlx::Error> {
    let bill: Option<BillRow> = sqlx::query_as(
        "SELECT * FROM bills b WHERE execution_id = $1 AND issue_seq > $2
             AND EXISTS (SELECT 1 FROM bill_lines l WHERE l.bill_id = b.id AND l.kind = 'CARRIED')
         ORDER BY issue_seq LIMIT 1 FOR UPDATE",
    )
    .bind(execution_id)
    .bind(position)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(bill) = bill else { return Ok(None) };
    let (line, amount): (i32, Decimal) = sqlx::query_as(
        "SELECT position, amount FROM bill_lines WHERE bill_id = $1 AND kind = 'CARRIED' ORDER BY position LIMIT 1",
    )
    .bind(&bill.id)
    .fetch_one(conn)
    .await?;
    Ok(Some((bill, line, amount)))
}

/// Takes `amount` out of a bill's CARRIED line and writes its new figures
/// (the caller computed them and keeps the CHECK constraints true).
pub(crate) async fn reduce_carried(
    conn: &mut PgConnection,
    bill: &BillRow,
    line: i32,
    line_amount: Decimal,
    description: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE bill_lines SET amount = $3, description = $4 WHERE bill_id = $1 AND position = $2")
        .bind(&bill.id)
        .bind(line)
        .bind(line_amount)
        .bind(description)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE bills SET total = $2, credit_applied = $3, amount_due = $4, updated_at = $5 WHERE id = $1")
        .bind(&bill.id)
        .bind(bill.total)
        .bind(bill.credit_applied)
        .bind(bill.amount_due)
        .bind(bill.updated_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records that this bill's failed debit revoked its execution (cleared by
/// any later change of the execution's status, see migration 0005).
pub(crate) async fn mark_revoked_by(
    conn: &mut PgConnection,
    execution_id: &str,
    bill_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE executions SET revoked_by_bill = $2 WHERE id = $1")
        .bind(execution_id)
        .bind(bill_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The bill that revoked an execution, while that revocation is the last
/// change of its status.
pub(crate) async fn revoked_by(conn: &mut PgConnection, execution_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT revoked_by_bill FROM executions WHERE id = $1")
        .bind(execution_id)
        .fetch_one(conn)
        .await
}

/// Of these requests, those whose bill still waits for them (PROCESSING,
/// same request), their bills locked: what a sender may still publish. A
/// bill that a late result settled meanwhile is left out, so it is never
/// asked for again.
pub(crate) async fn lock_still_processing(
    conn: &mut PgConnection,
    request_ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT request_id FROM bills WHERE request_id = ANY($1) AND status = 'PROCESSING' ORDER BY id FOR UPDATE",
    )
    .bind(request_ids)
    .fetch_all(conn)
    .await
}

// ---------------------------------------------------------------- results in a batch

/// The bills of these requests, locked in the order of their ids (the
/// order the scheduler's sender locks them in, bills before attempts).
pub(crate) async fn lock_of_requests(
    conn: &mut PgConnection,
    request_ids: &[&str],
) -> Result<Vec<BillRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT b.* FROM bills b
         WHERE b.id IN (SELECT bill_id FROM debit_attempts WHERE request_id = ANY($1))
         ORDER BY b.id FOR UPDATE OF b",
    )
    .bind(request_ids)
    .fetch_all(conn)
    .await
}

/// A debit attempt with what it asked for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct LockedAttempt {
    pub request_id: String,
    pub bill_id: String,
    #[sqlx(try_from = "String")]
    pub status: AttemptStatus,
    pub requested_at: Option<DateTime<Utc>>,
    pub attempt: i32,
    pub amount: Decimal,
}

/// Locks the attempts of these requests, in the order of their ids.
pub(crate) async fn lock_attempts(
    conn: &mut PgConnection,
    request_ids: &[&str],
) -> Result<Vec<LockedAttempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_id, bill_id, status, requested_at, attempt, amount FROM debit_attempts
         WHERE request_id = ANY($1) ORDER BY request_id FOR UPDATE",
    )
    .bind(request_ids)
    .fetch_all(conn)
    .await
}

/// A line with the bill it belongs to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct BillLineRow {
    pub bill_id: String,
    #[sqlx(flatten)]
    pub line: LineRow,
}

/// The lines of many bills, each bill's in order.
pub(crate) async fn lines_of(conn: &mut PgConnection, bill_ids: &[&str]) -> Result<Vec<BillLineRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT bill_id, position, kind, metric_id, quantity, amount, description FROM bill_lines
         WHERE bill_id = ANY($1) ORDER BY bill_id, position",
    )
    .bind(bill_ids)
    .fetch_all(conn)
    .await
}

/// A success as an attempt records it.
pub(crate) struct RecordedSuccess<'a> {
    pub request_id: &'a str,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub gateway_txn_id: Option<&'a str>,
}

/// Records successes on many attempts in one statement, as
/// [`record_result`] records one.
pub(crate) async fn record_successes(
    conn: &mut PgConnection,
    results: &[RecordedSuccess<'_>],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if results.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE debit_attempts d SET status = $5, error_code = t.code, error_message = t.message, retryable = NULL,
             gateway_txn_id = COALESCE(t.txn, d.gateway_txn_id), result_at = $6
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS t(request_id, code, message, txn)
         WHERE d.request_id = t.request_id",
    )
    .bind(results.iter().map(|r| r.request_id).collect::<Vec<_>>())
    .bind(results.iter().map(|r| r.error_code).collect::<Vec<_>>())
    .bind(results.iter().map(|r| r.error_message).collect::<Vec<_>>())
    .bind(results.iter().map(|r| r.gateway_txn_id).collect::<Vec<_>>())
    .bind(AttemptStatus::Success.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes many bills settled by a success in one statement, as [`update`]
/// writes one: status, gateway transaction, settled now, nothing more to
/// attempt, lease released.
pub(crate) async fn mark_paid_many(
    conn: &mut PgConnection,
    bills: &[&BillRow],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if bills.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE bills b SET status = t.status, gateway_txn_id = t.txn, settled_at = $4, next_attempt_at = NULL,
             lease_owner = NULL, lease_expires_at = NULL, updated_at = $4
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(id, status, txn)
         WHERE b.id = t.id",
    )
    .bind(bills.iter().map(|b| b.id.as_str()).collect::<Vec<_>>())
    .bind(bills.iter().map(|b| b.status.as_str()).collect::<Vec<_>>())
    .bind(bills.iter().map(|b| b.gateway_txn_id.as_deref()).collect::<Vec<_>>())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::domain::bill::BillEvent;

    #[test]
    fn the_sql_claims_and_cancels_the_bills_the_domain_allows() {
        for event in [BillEvent::Claimed, BillEvent::Cancelled] {
            let listed: Vec<String> = event.allowed_from().iter().map(|s| format!("'{s}'")).collect();
            assert_eq!(format!("({})", listed.join(", ")), awaiting_debit!(), "{event:?}");
        }
    }
}

/// What the interim (`PROGRESSIVE`) bills of an execution's period billed
/// for usage: the sum of their usage lines less what each took away for
/// the ones before it, which is what the last of them billed in all.
pub(crate) async fn progressive_billed(
    conn: &mut PgConnection,
    execution_id: &str,
    period_start: DateTime<Utc>,
) -> Result<Decimal, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(l.amount), 0) FROM bills b JOIN bill_lines l ON l.bill_id = b.id
         WHERE b.execution_id = $1 AND b.kind = 'PROGRESSIVE' AND b.period_start = $2
           AND l.kind IN ('USAGE', 'PROGRESSIVE_BILLED')",
    )
    .bind(execution_id)
    .bind(period_start)
    .fetch_one(conn)
    .await
}

/// A page of an execution's bills, newest first, after bill `after`,
/// optionally of one status.
pub(crate) async fn page_of_execution(
    conn: &mut PgConnection,
    execution_id: &str,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<BillRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM bills WHERE execution_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR issue_seq < (SELECT issue_seq FROM bills WHERE id = $3 AND execution_id = $1))
         ORDER BY issue_seq DESC LIMIT $4",
    )
    .bind(execution_id)
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One bill of this merchant; another merchant's id finds nothing.
pub(crate) async fn find_of_merchant(
    conn: &mut PgConnection,
    merchant_id: &str,
    bill_id: &str,
) -> Result<Option<BillRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bills WHERE id = $1 AND merchant_id = $2")
        .bind(bill_id)
        .bind(merchant_id)
        .fetch_optional(conn)
        .await
}

/// A debit attempt as `get_bill` shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct AttemptView {
    pub request_id: String,
    pub attempt: i32,
    pub amount: Decimal,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub retryable: Option<bool>,
    pub gateway_txn_id: Option<String>,
    pub requested_at: Option<DateTime<Utc>>,
    pub result_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Every debit attempt of a bill, first first.
pub(crate) async fn attempts(conn: &mut PgConnection, bill_id: &str) -> Result<Vec<AttemptView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_id, attempt, amount, status, error_code, error_message, retryable, gateway_txn_id,
                requested_at, result_at, created_at
         FROM debit_attempts WHERE bill_id = $1 ORDER BY attempt",
    )
    .bind(bill_id)
    .fetch_all(conn)
    .await
}
