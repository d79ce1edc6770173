//! The credit ledger and its grants. An entry, the grant it moves and the
//! execution's balance change in one transaction; the row lock on the
//! execution orders them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::domain::ledger::{EntryKind, Grant};

/// A ledger entry as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct EntryRow {
    pub id: i64,
    pub execution_id: String,
    pub kind: String,
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub reference_id: String,
    pub grant_id: Option<String>,
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
    pub grant_id: Option<String>,
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
        "INSERT INTO credit_ledger (merchant_id, execution_id, kind, amount, balance_after, reference_id, grant_id,
             created_at)
         SELECT *, $8 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::text[],
             $7::text[])",
    )
    .bind(entries.iter().map(|e| e.merchant_id.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.execution_id.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.amount).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.balance_after).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.reference_id.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.grant_id.as_deref()).collect::<Vec<_>>())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends an entry and moves the balance by it. The caller holds the
/// execution's row lock. A use larger than the balance fails the balance's
/// CHECK constraint instead of going negative.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn append(
    conn: &mut PgConnection,
    merchant_id: &str,
    execution_id: &str,
    kind: EntryKind,
    amount: Decimal,
    reference_id: &str,
    grant_id: &str,
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
        "INSERT INTO credit_ledger (merchant_id, execution_id, kind, amount, balance_after, reference_id, grant_id,
             created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, execution_id, kind, amount, balance_after, reference_id, grant_id, created_at",
    )
    .bind(merchant_id)
    .bind(execution_id)
    .bind(kind.as_str())
    .bind(amount)
    .bind(balance)
    .bind(reference_id)
    .bind(grant_id)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// A stored grant.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct GrantRow {
    pub id: String,
    pub seq: i64,
    pub execution_id: String,
    pub reference_id: String,
    pub amount: Decimal,
    pub remaining: Decimal,
    pub priority: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl GrantRow {
    /// The grant as bills draw on it.
    pub(crate) fn grant(&self) -> Grant {
        Grant {
            id: self.id.clone(),
            seq: self.seq,
            priority: self.priority,
            expires_at: self.expires_at,
            remaining: self.remaining,
        }
    }
}

/// The columns of [`GrantRow`], for static SQL.
macro_rules! grant_columns {
    () => {
        "id, seq, execution_id, reference_id, amount, remaining, priority, expires_at, expired_at, created_at"
    };
}

/// A new grant, whole.
pub(crate) struct NewGrant<'a> {
    pub id: &'a str,
    pub merchant_id: &'a str,
    pub execution_id: &'a str,
    pub reference_id: &'a str,
    pub amount: Decimal,
    pub priority: i32,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Records a grant with all of it remaining.
pub(crate) async fn insert_grant(
    conn: &mut PgConnection,
    g: &NewGrant<'_>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credit_grants (id, merchant_id, execution_id, reference_id, amount, remaining, priority, expires_at,
             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $8)",
    )
    .bind(g.id)
    .bind(g.merchant_id)
    .bind(g.execution_id)
    .bind(g.reference_id)
    .bind(g.amount)
    .bind(g.priority)
    .bind(g.expires_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The grants of these executions that have something left, any order.
/// The caller holds the executions' row locks.
pub(crate) async fn open_grants(conn: &mut PgConnection, execution_ids: &[&str]) -> Result<Vec<GrantRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        grant_columns!(),
        " FROM credit_grants WHERE execution_id = ANY($1) AND remaining > 0"
    ))
    .bind(execution_ids)
    .fetch_all(conn)
    .await
}

/// Sets what is left of many grants in one statement.
pub(crate) async fn set_remaining(
    conn: &mut PgConnection,
    grants: &[(&str, Decimal)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if grants.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE credit_grants g SET remaining = u.remaining, updated_at = $3
         FROM UNNEST($1::text[], $2::numeric[]) AS u(id, remaining) WHERE g.id = u.id",
    )
    .bind(grants.iter().map(|g| g.0).collect::<Vec<_>>())
    .bind(grants.iter().map(|g| g.1).collect::<Vec<_>>())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Executions holding a grant that expired by `now` with something left,
/// at most `limit`.
pub(crate) async fn with_expired_grants(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    merchant: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT execution_id FROM (
             SELECT execution_id FROM credit_grants
             WHERE expires_at <= $1 AND remaining > 0 AND ($2::text IS NULL OR merchant_id = $2)
             ORDER BY expires_at LIMIT $3) due",
    )
    .bind(now)
    .bind(merchant)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The grants of one execution that expired by `now` with something left.
/// The caller holds the execution's row lock.
pub(crate) async fn expired_grants(
    conn: &mut PgConnection,
    execution_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<GrantRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        grant_columns!(),
        " FROM credit_grants
         WHERE execution_id = $1 AND expires_at <= $2 AND remaining > 0 ORDER BY expires_at, seq"
    ))
    .bind(execution_id)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Marks a grant expired: nothing left of it.
pub(crate) async fn mark_expired(
    conn: &mut PgConnection,
    grant_id: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE credit_grants SET remaining = 0, expired_at = $2, updated_at = $2 WHERE id = $1")
        .bind(grant_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The grant made with this reference, if any.
pub(crate) async fn grant_by_reference(
    conn: &mut PgConnection,
    execution_id: &str,
    reference_id: &str,
) -> Result<Option<GrantRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        grant_columns!(),
        " FROM credit_grants WHERE execution_id = $1 AND reference_id = $2"
    ))
    .bind(execution_id)
    .bind(reference_id)
    .fetch_optional(conn)
    .await
}

/// Grants of an execution: those with something left in the order bills
/// use them, then the others newest first; at most 1,000.
pub(crate) async fn grants(conn: &mut PgConnection, execution_id: &str) -> Result<Vec<GrantRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        grant_columns!(),
        " FROM credit_grants WHERE execution_id = $1
         ORDER BY remaining = 0, CASE WHEN remaining > 0 THEN priority END,
                  CASE WHEN remaining > 0 THEN expires_at IS NULL END, CASE WHEN remaining > 0 THEN expires_at END,
                  CASE WHEN remaining > 0 THEN seq END, seq DESC
         LIMIT 1000"
    ))
    .bind(execution_id)
    .fetch_all(conn)
    .await
}

/// A page of an execution's ledger, newest first, after entry `before`.
pub(crate) async fn entries(
    conn: &mut PgConnection,
    execution_id: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<EntryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, execution_id, kind, amount, balance_after, reference_id, grant_id, created_at
         FROM credit_ledger WHERE execution_id = $1 AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(execution_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The ledger entries a bill wrote (its uses of credit).
pub(crate) async fn entries_of_bill(
    conn: &mut PgConnection,
    execution_id: &str,
    bill_id: &str,
) -> Result<Vec<EntryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, execution_id, kind, amount, balance_after, reference_id, grant_id, created_at
         FROM credit_ledger WHERE execution_id = $1 AND reference_id = $2 AND kind = 'USE' ORDER BY id",
    )
    .bind(execution_id)
    .bind(bill_id)
    .fetch_all(conn)
    .await
}
