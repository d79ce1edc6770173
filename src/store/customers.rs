//! Customers of a merchant.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// A stored customer.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct CustomerRow {
    pub merchant_id: String,
    pub customer_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub mobile: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) async fn find(
    conn: &mut PgConnection,
    merchant_id: &str,
    customer_id: &str,
) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM customers WHERE merchant_id = $1 AND customer_id = $2")
        .bind(merchant_id)
        .bind(customer_id)
        .fetch_optional(conn)
        .await
}

/// Inserts a customer; `None` if the id is taken (the caller decides what a repeat means).
pub(crate) async fn insert(conn: &mut PgConnection, row: &CustomerRow) -> Result<Option<CustomerRow>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO customers (merchant_id, customer_id, name, email, mobile, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING *",
    )
    .bind(&row.merchant_id)
    .bind(&row.customer_id)
    .bind(&row.name)
    .bind(&row.email)
    .bind(&row.mobile)
    .bind(row.created_at)
    .bind(row.updated_at)
    .fetch_optional(conn)
    .await
}
