//! Explicit bill schedules (`add_billing_plan`).

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::store::bills::BillRow;

/// A stored billing plan.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct BillingPlanRow {
    pub id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub token: Option<String>,
    pub plan_type: Option<String>,
    pub schedule_type: String,
    pub periodicity: i32,
    pub start_date: NaiveDate,
    pub end_date: Option<NaiveDate>,
    pub end_type: i32,
    pub no_of_payments: Option<i32>,
    pub amount: Decimal,
    pub currency: String,
    pub reference_id: Option<String>,
    pub max_retry: i32,
    pub active: bool,
    pub billing_mode: Option<String>,
    pub bill_day: Option<i32>,
}

pub(crate) async fn find_by_reference(
    conn: &mut PgConnection,
    merchant_id: &str,
    reference_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM billing_plans WHERE merchant_id = $1 AND reference_id = $2")
        .bind(merchant_id)
        .bind(reference_id)
        .fetch_optional(conn)
        .await
}

pub(crate) async fn find(conn: &mut PgConnection, id: &str) -> Result<Option<BillingPlanRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, merchant_id, customer_id, token, plan_type, schedule_type, periodicity, start_date, end_date, end_type,
                no_of_payments, amount, currency, reference_id, max_retry, active, billing_mode, bill_day
         FROM billing_plans WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Stores a plan as requested (the request itself is kept for reference).
pub(crate) async fn insert(
    conn: &mut PgConnection,
    plan: &BillingPlanRow,
    request: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO billing_plans (id, merchant_id, customer_id, token, plan_type, schedule_type, periodicity, start_date,
             end_date, end_type, no_of_payments, amount, currency, reference_id, max_retry, active, billing_mode, bill_day,
             request, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
    )
    .bind(&plan.id)
    .bind(&plan.merchant_id)
    .bind(&plan.customer_id)
    .bind(&plan.token)
    .bind(&plan.plan_type)
    .bind(&plan.schedule_type)
    .bind(plan.periodicity)
    .bind(plan.start_date)
    .bind(plan.end_date)
    .bind(plan.end_type)
    .bind(plan.no_of_payments)
    .bind(plan.amount)
    .bind(&plan.currency)
    .bind(&plan.reference_id)
    .bind(plan.max_retry)
    .bind(plan.active)
    .bind(&plan.billing_mode)
    .bind(plan.bill_day)
    .bind(request)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The bills of a plan, by sequence number.
pub(crate) async fn bills(conn: &mut PgConnection, id: &str) -> Result<Vec<BillRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM bills WHERE billing_plan_id = $1 ORDER BY sequence_number")
        .bind(id)
        .fetch_all(conn)
        .await
}
