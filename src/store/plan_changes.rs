//! Plan changes with proration, by the caller's `request_id`: a preview
//! (`PREVIEWED`), a change waiting for its bill to be paid (`PENDING`), a
//! change made (`APPLIED`), or one whose bill failed for good (`FAILED`).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::domain::proration::ChangeStatus;

/// A stored plan change.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct PlanChangeRow {
    pub merchant_id: String,
    pub request_id: String,
    pub execution_id: String,
    pub from_plan_id: String,
    pub from_amount: Decimal,
    pub to_plan_id: String,
    pub to_plan_amount: Option<Decimal>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub effective_at: DateTime<Utc>,
    pub remaining_fraction: Decimal,
    pub unused_amount: Decimal,
    pub new_amount: Decimal,
    pub net_amount: Decimal,
    pub currency: String,
    #[sqlx(try_from = "String")]
    pub status: ChangeStatus,
    pub bill_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Writes a change: a new one, or the new figures and state of one
/// already stored under its request id.
pub(crate) async fn save(conn: &mut PgConnection, c: &PlanChangeRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plan_changes (merchant_id, request_id, execution_id, from_plan_id, from_amount, to_plan_id,
             to_plan_amount, period_start, period_end, effective_at, remaining_fraction, unused_amount, new_amount,
             net_amount, currency, status, bill_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         ON CONFLICT (merchant_id, request_id) DO UPDATE SET
             from_plan_id = EXCLUDED.from_plan_id, from_amount = EXCLUDED.from_amount,
             period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
             effective_at = EXCLUDED.effective_at, remaining_fraction = EXCLUDED.remaining_fraction,
             unused_amount = EXCLUDED.unused_amount, new_amount = EXCLUDED.new_amount,
             net_amount = EXCLUDED.net_amount, status = EXCLUDED.status, bill_id = EXCLUDED.bill_id,
             updated_at = EXCLUDED.updated_at",
    )
    .bind(&c.merchant_id)
    .bind(&c.request_id)
    .bind(&c.execution_id)
    .bind(&c.from_plan_id)
    .bind(c.from_amount)
    .bind(&c.to_plan_id)
    .bind(c.to_plan_amount)
    .bind(c.period_start)
    .bind(c.period_end)
    .bind(c.effective_at)
    .bind(c.remaining_fraction)
    .bind(c.unused_amount)
    .bind(c.new_amount)
    .bind(c.net_amount)
    .bind(&c.currency)
    .bind(c.status.as_str())
    .bind(&c.bill_id)
    .bind(c.created_at)
    .bind(c.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The change stored under this merchant's request id.
pub(crate) async fn find(
    conn: &mut PgConnection,
    merchant_id: &str,
    request_id: &str,
) -> Result<Option<PlanChangeRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM plan_changes WHERE merchant_id = $1 AND request_id = $2")
        .bind(merchant_id)
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

/// The change a bill was made for.
pub(crate) async fn of_bill(conn: &mut PgConnection, bill_id: &str) -> Result<Option<PlanChangeRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM plan_changes WHERE bill_id = $1")
        .bind(bill_id)
        .fetch_optional(conn)
        .await
}

/// A change of this execution still waiting for its bill, whose bill can
/// still be paid.
pub(crate) async fn waiting(conn: &mut PgConnection, execution_id: &str) -> Result<Option<PlanChangeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.* FROM plan_changes c JOIN bills b ON b.id = c.bill_id
         WHERE c.execution_id = $1 AND c.status = 'PENDING'
           AND b.status IN ('SCHEDULED', 'PROCESSING', 'RETRY_SCHEDULED')
         LIMIT 1",
    )
    .bind(execution_id)
    .fetch_optional(conn)
    .await
}

/// The first change applied in the period starting at `period_start`.
pub(crate) async fn first_applied(
    conn: &mut PgConnection,
    execution_id: &str,
    period_start: DateTime<Utc>,
) -> Result<Option<PlanChangeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM plan_changes WHERE execution_id = $1 AND period_start = $2 AND status = 'APPLIED'
         ORDER BY effective_at LIMIT 1",
    )
    .bind(execution_id)
    .bind(period_start)
    .fetch_optional(conn)
    .await
}

/// Gives up the changes of an execution whose bills were cancelled (the
/// execution was revoked): they will never be paid.
pub(crate) async fn give_up_cancelled(
    conn: &mut PgConnection,
    execution_id: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE plan_changes c SET status = 'FAILED', updated_at = $2
         FROM bills b WHERE b.id = c.bill_id AND b.status = 'CANCELLED'
           AND c.execution_id = $1 AND c.status = 'PENDING'",
    )
    .bind(execution_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
