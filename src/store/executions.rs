//! Billing executions.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

/// A stored billing execution.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ExecutionRow {
    pub id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub plan_id: String,
    pub merchant_ref_id: Option<String>,
    pub status: String,
    pub credit_balance: Decimal,
    pub metric_info: serde_json::Value,
    pub billing_start_date: Option<DateTime<Utc>>,
    pub token: Option<String>,
    pub mandate_id: Option<String>,
    pub activated_at: Option<DateTime<Utc>>,
    pub billed_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One execution of this merchant; another merchant's id finds nothing.
pub async fn find(conn: &mut PgConnection, merchant_id: &str, id: &str) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions WHERE merchant_id = $1 AND id = $2")
        .bind(merchant_id)
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Like [`find`], locking the row until the transaction ends, so changes to
/// one execution (and the webhooks they write) happen one after another.
pub async fn lock(conn: &mut PgConnection, merchant_id: &str, id: &str) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions WHERE merchant_id = $1 AND id = $2 FOR UPDATE")
        .bind(merchant_id)
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn find_by_ref(
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

/// Every execution of a customer, oldest first.
pub async fn list_for_customer(
    conn: &mut PgConnection,
    merchant_id: &str,
    customer_id: &str,
) -> Result<Vec<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions WHERE merchant_id = $1 AND customer_id = $2 ORDER BY created_at, id")
        .bind(merchant_id)
        .bind(customer_id)
        .fetch_all(conn)
        .await
}

/// Inserts an execution; `None` when its `merchant_ref_id` is taken.
pub async fn insert(conn: &mut PgConnection, row: &ExecutionRow) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO executions (id, merchant_id, customer_id, plan_id, merchant_ref_id, status, credit_balance,
             metric_info, billing_start_date, token, mandate_id, activated_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (merchant_id, merchant_ref_id) WHERE merchant_ref_id IS NOT NULL DO NOTHING
         RETURNING *",
    )
    .bind(&row.id)
    .bind(&row.merchant_id)
    .bind(&row.customer_id)
    .bind(&row.plan_id)
    .bind(&row.merchant_ref_id)
    .bind(&row.status)
    .bind(row.credit_balance)
    .bind(&row.metric_info)
    .bind(row.billing_start_date)
    .bind(&row.token)
    .bind(&row.mandate_id)
    .bind(row.activated_at)
    .bind(row.created_at)
    .bind(row.updated_at)
    .fetch_optional(conn)
    .await
}

/// Sets the status; the first activation also fixes the billing start.
pub async fn set_status(
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
