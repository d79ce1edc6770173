//! The credit ledger. An entry and the execution's balance change in one
//! statement pair of one transaction; the row lock on the execution orders them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::domain::ledger::EntryKind;

/// A ledger entry as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct EntryRow {
    pub id: i64,
    pub execution_id: String,
    pub kind: String,
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub reference_id: String,
    pub created_at: DateTime<Utc>,
}

/// An entry computed by the caller, with the balance it leaves.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LedgerEntry {
    pub merchant_id: String,
    pub execution_id: String,
    pub kind: EntryKind,
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub reference_id: String,
}

/// Writes many entries in one statement. The caller holds the executions'
/// row locks and writes their balances (see `executions::save_billing_states`).
pub(crate) async fn insert_many(
    conn: &mut PgConnection,
    entries: &[LedgerEntry],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO credit_ledger (merchant_id, execution_id, kind, amount, balance_after, reference_id, created_at)
         SELECT *, $7 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::text[])",
    )
    .bind(entries.iter().map(|e| e.merchant_id.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.execution_id.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.amount).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.balance_after).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.reference_id.as_str()).collect::<Vec<_>>())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The entry of this kind and reference, if one was written.
pub(crate) async fn find(
    conn: &mut PgConnection,
    execution_id: &str,
    kind: EntryKind,
    reference_id: &str,
) -> Result<Option<EntryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, execution_id, kind, amount, balance_after, reference_id, created_at
         FROM credit_ledger WHERE execution_id = $1 AND kind = $2 AND reference_id = $3",
    )
    .bind(execution_id)
    .bind(kind.as_str())
    .bind(reference_id)
    .fetch_optional(conn)
    .await
}

/// Appends an entry and moves the balance by it. The caller holds the
/// execution's row lock. A use larger than the balance fails the balance's
/// CHECK constraint instead of going negative.
pub(crate) async fn append(
    conn: &mut PgConnection,
    merchant_id: &str,
    execution_id: &str,
    kind: EntryKind,
    amount: Decimal,
    reference_id: &str,
    now: DateTime<Utc>,
) -> Result<EntryRow, sqlx::Error> {
    let balance: Decimal = sqlx::query_scalar(
        "UPDATE executions SET credit_balance = credit_balance + $2, updated_at = $3 WHERE id = $1 RETURNING credit_balance",
    )
    .bind(execution_id)
    .bind(kind.signed(amount))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query_as(
        "INSERT INTO credit_ledger (merchant_id, execution_id, kind, amount, balance_after, reference_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, execution_id, kind, amount, balance_after, reference_id, created_at",
    )
    .bind(merchant_id)
    .bind(execution_id)
    .bind(kind.as_str())
    .bind(amount)
    .bind(balance)
    .bind(reference_id)
    .bind(now)
    .fetch_one(conn)
    .await
}
