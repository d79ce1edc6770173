//! Billing executions.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::domain::execution::ExecutionStatus;
use crate::domain::period::{PeriodBasis, PlanCalendar};

/// A stored billing execution.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct ExecutionRow {
    pub id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub plan_id: String,
    pub merchant_ref_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: ExecutionStatus,
    pub credit_balance: Decimal,
    pub metric_info: serde_json::Value,
    pub billing_start_date: Option<DateTime<Utc>>,
    pub token: Option<String>,
    pub mandate_id: Option<String>,
    pub activated_at: Option<DateTime<Utc>>,
    pub billed_until: Option<DateTime<Utc>>,
    pub next_bill_at: Option<DateTime<Utc>>,
    pub carried_amount: Decimal,
    pub plan_amount: Option<Decimal>,
    pub pending_plan_id: Option<String>,
    pub pending_plan_amount: Option<Decimal>,
    /// `[amount, ...]`, in order.
    pub usage_alerts: serde_json::Value,
    /// The period interim bills billed in, and the threshold they reached.
    pub progressive_period_start: Option<DateTime<Utc>>,
    pub progressive_level: Option<Decimal>,
    /// Usage reached the next threshold: an interim bill is due.
    pub progressive_due_at: Option<DateTime<Utc>>,
    /// The period in which a prorated plan change took effect.
    pub prorated_period_start: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ExecutionRow {
    /// This execution's period layout on a plan of `calendar`.
    pub(crate) fn period_basis(&self, calendar: PlanCalendar) -> PeriodBasis {
        PeriodBasis {
            calendar,
            billing_start_date: self.billing_start_date,
            activated_at: self.activated_at,
            created_at: self.created_at,
            billed_until: self.billed_until,
        }
    }
}

/// One execution of this merchant; another merchant's id finds nothing.
pub(crate) async fn find(
    conn: &mut PgConnection,
    merchant_id: &str,
    id: &str,
) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions WHERE merchant_id = $1 AND id = $2")
        .bind(merchant_id)
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Like [`find`], locking the row until the transaction ends, so changes to
/// one execution (and the webhooks they write) happen one after another.
pub(crate) async fn lock(
    conn: &mut PgConnection,
    merchant_id: &str,
    id: &str,
) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions WHERE merchant_id = $1 AND id = $2 FOR UPDATE")
        .bind(merchant_id)
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Locks an execution by id alone (the scheduler acts for every merchant).
pub(crate) async fn lock_by_id(conn: &mut PgConnection, id: &str) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Locks executions, in the order of their ids.
pub(crate) async fn lock_many_by_id(conn: &mut PgConnection, ids: &[&str]) -> Result<Vec<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// Saves what billing moves: the cursor, the plan, carried amounts, status.
pub(crate) async fn save_billing_state(
    conn: &mut PgConnection,
    row: &ExecutionRow,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE executions SET plan_id = $2, plan_amount = $3, pending_plan_id = $4, pending_plan_amount = $5,
             billing_start_date = $6, billed_until = $7, next_bill_at = $8, carried_amount = $9, status = $10,
             updated_at = $11, progressive_period_start = $12, progressive_level = $13, progressive_due_at = $14,
             prorated_period_start = $15, usage_alerts = $16
         WHERE id = $1",
    )
    .bind(&row.id)
    .bind(&row.plan_id)
    .bind(row.plan_amount)
    .bind(&row.pending_plan_id)
    .bind(row.pending_plan_amount)
    .bind(row.billing_start_date)
    .bind(row.billed_until)
    .bind(row.next_bill_at)
    .bind(row.carried_amount)
    .bind(row.status.as_str())
    .bind(now)
    .bind(row.progressive_period_start)
    .bind(row.progressive_level)
    .bind(row.progressive_due_at)
    .bind(row.prorated_period_start)
    .bind(&row.usage_alerts)
    .execute(conn)
    .await?;
    Ok(())
}

/// Saves the billing state of many executions in one statement, their
/// credit balances included (the ledger entries of the same batch explain them).
pub(crate) async fn save_billing_states(
    conn: &mut PgConnection,
    rows: &[ExecutionRow],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE executions e SET plan_id = u.plan_id, plan_amount = u.plan_amount, pending_plan_id = u.pending_plan_id,
             pending_plan_amount = u.pending_plan_amount, billing_start_date = u.billing_start_date,
             billed_until = u.billed_until, next_bill_at = u.next_bill_at, carried_amount = u.carried_amount,
             credit_balance = u.credit_balance, status = u.status, updated_at = $12,
             progressive_period_start = u.progressive_period_start, progressive_level = u.progressive_level,
             progressive_due_at = u.progressive_due_at, prorated_period_start = u.prorated_period_start
         FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::text[], $5::numeric[], $6::timestamptz[],
                     $7::timestamptz[], $8::timestamptz[], $9::numeric[], $10::numeric[], $11::text[],
                     $13::timestamptz[], $14::numeric[], $15::timestamptz[], $16::timestamptz[])
              AS u(id, plan_id, plan_amount, pending_plan_id, pending_plan_amount, billing_start_date, billed_until,
                   next_bill_at, carried_amount, credit_balance, status, progressive_period_start, progressive_level,
                   progressive_due_at, prorated_period_start)
         WHERE e.id = u.id",
    )
    .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.plan_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.plan_amount).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.pending_plan_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.pending_plan_amount).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.billing_start_date).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.billed_until).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.next_bill_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.carried_amount).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.credit_balance).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(now)
    .bind(rows.iter().map(|r| r.progressive_period_start).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.progressive_level).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.progressive_due_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.prorated_period_start).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Ids of executions whose next bill is due and that are not parked, at
/// most `limit`, fair across merchants: the oldest due execution of every
/// merchant comes before the second of any. `merchant` narrows to one.
pub(crate) async fn due_for_billing(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    merchant: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM (
             SELECT id, next_bill_at,
                    row_number() OVER (PARTITION BY merchant_id ORDER BY next_bill_at, id) AS turn
             FROM executions
             WHERE next_bill_at <= $1 AND (billing_parked_until IS NULL OR billing_parked_until <= $1)
               AND ($2::text IS NULL OR merchant_id = $2)) due
         ORDER BY turn, next_bill_at, id LIMIT $3",
    )
    .bind(now)
    .bind(merchant)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Locks those of `ids` that are still due, skipping those another process holds.
pub(crate) async fn lock_for_billing(
    conn: &mut PgConnection,
    ids: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<ExecutionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM executions WHERE id = ANY($1) AND next_bill_at <= $2
           AND (billing_parked_until IS NULL OR billing_parked_until <= $2)
         ORDER BY next_bill_at, id FOR UPDATE SKIP LOCKED",
    )
    .bind(ids)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Parks an execution whose bill cannot be made until `until`, keeping its
/// error. Returns whether this is news (it was not parked with this error).
pub(crate) async fn park(
    conn: &mut PgConnection,
    id: &str,
    error: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let news: Option<bool> = sqlx::query_scalar(
        "WITH prev AS (SELECT id, billing_error FROM executions WHERE id = $1 FOR UPDATE)
         UPDATE executions e SET billing_error = $2, billing_parked_until = $3, updated_at = $4
         FROM prev WHERE e.id = prev.id
         RETURNING prev.billing_error IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(error)
    .bind(until)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(news.unwrap_or(false))
}

/// Lets a merchant's parked executions be billed again at the next pass:
/// something the merchant changed may have mended them.
pub(crate) async fn unpark_merchant(conn: &mut PgConnection, merchant_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE executions SET billing_parked_until = NULL
         WHERE merchant_id = $1 AND billing_parked_until IS NOT NULL",
    )
    .bind(merchant_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn find_by_ref(
    conn: &mut PgConnection,
    merchant_id: &str,
    merchant_ref_id: &str,
) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions WHERE merchant_id = $1 AND merchant_ref_id = $2")
        .bind(merchant_id)
        .bind(merchant_ref_id)
        .fetch_optional(conn)
        .await
}

/// A page of a customer's executions, oldest first, after the execution
/// `after` (a cursor).
pub(crate) async fn list_for_customer(
    conn: &mut PgConnection,
    merchant_id: &str,
    customer_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ExecutionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM executions WHERE merchant_id = $1 AND customer_id = $2
           AND ($3::text IS NULL OR (created_at, id) > (
                SELECT created_at, id FROM executions WHERE merchant_id = $1 AND id = $3))
         ORDER BY created_at, id LIMIT $4",
    )
    .bind(merchant_id)
    .bind(customer_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Inserts an execution; `None` when its `merchant_ref_id` is taken.
pub(crate) async fn insert(conn: &mut PgConnection, row: &ExecutionRow) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO executions (id, merchant_id, customer_id, plan_id, merchant_ref_id, status, credit_balance,
             metric_info, billing_start_date, token, mandate_id, activated_at, created_at, updated_at, next_bill_at,
             usage_alerts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (merchant_id, merchant_ref_id) WHERE merchant_ref_id IS NOT NULL DO NOTHING
         RETURNING *",
    )
    .bind(&row.id)
    .bind(&row.merchant_id)
    .bind(&row.customer_id)
    .bind(&row.plan_id)
    .bind(&row.merchant_ref_id)
    .bind(row.status.as_str())
    .bind(row.credit_balance)
    .bind(&row.metric_info)
    .bind(row.billing_start_date)
    .bind(&row.token)
    .bind(&row.mandate_id)
    .bind(row.activated_at)
    .bind(row.created_at)
    .bind(row.updated_at)
    .bind(row.next_bill_at)
    .bind(&row.usage_alerts)
    .fetch_optional(conn)
    .await
}

/// Sets the status; the first activation also fixes the billing start.
pub(crate) async fn set_status(
    conn: &mut PgConnection,
    id: &str,
    status: &str,
    now: DateTime<Utc>,
) -> Result<ExecutionRow, sqlx::Error> {
    sqlx::query_as(
        "UPDATE executions SET status = $2, updated_at = $3,
             activated_at = CASE WHEN $2 = 'ACTIVE' AND activated_at IS NULL THEN $3 ELSE activated_at END,
             billing_start_date = CASE WHEN $2 = 'ACTIVE' AND billing_start_date IS NULL THEN $3 ELSE billing_start_date END
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(status)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// Ids of executions whose usage reached their next threshold by `now`,
/// at most `limit`.
pub(crate) async fn progressive_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    merchant: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM executions WHERE progressive_due_at <= $1 AND ($2::text IS NULL OR merchant_id = $2)
         ORDER BY progressive_due_at LIMIT $3",
    )
    .bind(now)
    .bind(merchant)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Locks those of `ids` still waiting for an interim bill, skipping those
/// another process holds.
pub(crate) async fn lock_progressive_due(
    conn: &mut PgConnection,
    ids: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<ExecutionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM executions WHERE id = ANY($1) AND progressive_due_at <= $2 ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(ids)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Forgets that an interim bill is due (it could not be made).
pub(crate) async fn clear_progressive_due(conn: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE executions SET progressive_due_at = NULL WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
