//! Credit grants: made with a priority and an optional expiry, drawn on by
//! bills in the ledger's order, and expired by the scheduler. Each change
//! writes a ledger entry naming its grant, so the balance is always the
//! running sum of the ledger and the sum of what the grants have left.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::domain::ids::new_execution_id;
use crate::domain::ledger::{DEFAULT_PRIORITY, EntryKind, Grant, draw, draw_order};
use crate::domain::webhook::{EventName, Webhook};
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::documents::{execution_summary, num, timestamp};
use crate::store;
use crate::store::executions::ExecutionRow;
use crate::store::ledger::{EntryRow, GrantRow, LedgerEntry, NewGrant};

/// How a grant is to be used: its priority (lower first) and when what is
/// left of it expires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GrantTerms {
    pub priority: i32,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Default for GrantTerms {
    fn default() -> Self {
        GrantTerms {
            priority: DEFAULT_PRIORITY,
            expires_at: None,
        }
    }
}

/// Grants `amount` to a locked execution: a grant, its `GRANT` entry, the
/// balance moved (`execution` follows it). Returns the entry.
pub(crate) async fn grant(
    conn: &mut PgConnection,
    execution: &mut ExecutionRow,
    amount: Decimal,
    reference_id: &str,
    terms: GrantTerms,
    now: DateTime<Utc>,
) -> Result<EntryRow, sqlx::Error> {
    let id = new_grant_id();
    let new = NewGrant {
        id: &id,
        merchant_id: &execution.merchant_id,
        execution_id: &execution.id,
        reference_id,
        amount,
        priority: terms.priority,
        expires_at: terms.expires_at,
    };
    store::ledger::insert_grant(conn, &new, now).await?;
    let entry = store::ledger::append(
        conn,
        &execution.merchant_id,
        &execution.id,
        EntryKind::Grant,
        amount,
        reference_id,
        &id,
        now,
    )
    .await?;
    execution.credit_balance = entry.balance_after;
    execution.updated_at = now;
    Ok(entry)
}

/// Why the worker itself gave credit back, for its credit webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreditReason {
    /// A debit that came after its bill moved on.
    LateDebitSuccess,
    /// Interim bills billed more than the period's closing charges.
    InterimBillsAbovePeriodUsage,
    /// A plan change whose prorated amount nets below zero.
    PlanChangeProration,
}

impl CreditReason {
    fn as_str(self) -> &'static str {
        match self {
            CreditReason::LateDebitSuccess => "LATE_DEBIT_SUCCESS",
            CreditReason::InterimBillsAbovePeriodUsage => "INTERIM_BILLS_ABOVE_PERIOD_USAGE",
            CreditReason::PlanChangeProration => "PLAN_CHANGE_PRORATION",
        }
    }
}

/// Credit the worker gave back, as it is announced.
pub(crate) struct GivenBack<'a> {
    pub amount: Decimal,
    pub reference_id: &'a str,
    pub currency: &'a str,
    pub reason: CreditReason,
    /// The bill it is about, if any.
    pub bill_id: Option<&'a str>,
    /// The grant it made.
    pub grant_id: &'a str,
}

/// `BILLING_EXECUTION_CREDIT_EVENT` for credit the worker gave back;
/// `execution` already holds the balance after it.
pub(crate) fn given_back_webhook(execution: &ExecutionRow, credit: GivenBack<'_>, now: DateTime<Utc>) -> Webhook {
    let content = json!({
        "billing_execution_info": execution_summary(execution),
        "credit": {
            "amount": num(credit.amount),
            "reference_id": credit.reference_id,
            "balance": num(execution.credit_balance),
            "currency": credit.currency,
            "reason": credit.reason.as_str(),
            "bill_id": credit.bill_id,
            "grant_id": credit.grant_id,
        },
    });
    Webhook::new(EventName::ExecutionCreditEvent, &execution.merchant_id, now, content)
}

/// Writes the credit entries of a batch of bills, in the order the bills
/// were made: a use (one per bill) becomes one entry per grant drawn on,
/// the amounts taken from the grants; a grant (credit given back while
/// billing) becomes a new grant, which later uses of the batch may draw
/// on. The caller holds the executions' row locks.
pub(crate) async fn draw_uses(
    conn: &mut PgConnection,
    uses: Vec<LedgerEntry>,
    now: DateTime<Utc>,
) -> Result<Vec<LedgerEntry>, HandleError> {
    if uses.is_empty() {
        return Ok(uses);
    }
    let mut ids: Vec<&str> = uses.iter().map(|u| u.execution_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut grants: HashMap<String, Vec<Grant>> = HashMap::new();
    for row in store::ledger::open_grants(conn, &ids).await? {
        grants.entry(row.execution_id.clone()).or_default().push(row.grant());
    }
    for list in grants.values_mut() {
        draw_order(list);
    }
    let disagree = || {
        HandleError::Rejected(Rejection::new(
            ErrorCode::InternalError,
            "the credit balance is more than the grants hold",
        ))
    };
    let mut entries = Vec::with_capacity(uses.len());
    let mut touched: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for u in uses {
        if u.kind == EntryKind::Grant {
            let id = u.grant_id.clone().unwrap_or_else(new_grant_id);
            let new = NewGrant {
                id: &id,
                merchant_id: &u.merchant_id,
                execution_id: &u.execution_id,
                reference_id: &u.reference_id,
                amount: u.amount,
                priority: DEFAULT_PRIORITY,
                expires_at: None,
            };
            store::ledger::insert_grant(conn, &new, now).await?;
            let list = grants.entry(u.execution_id.clone()).or_default();
            list.push(Grant {
                id: id.clone(),
                // The newest of all.
                seq: i64::MAX,
                priority: DEFAULT_PRIORITY,
                expires_at: None,
                remaining: u.amount,
            });
            draw_order(list);
            entries.push(LedgerEntry {
                grant_id: Some(id),
                ..u
            });
            continue;
        }
        let list = grants.get_mut(&u.execution_id).ok_or_else(disagree)?;
        let taken = draw(list, u.amount).ok_or_else(disagree)?;
        let mut balance = u.balance_after.checked_add(u.amount).ok_or_else(disagree)?;
        for (i, part) in taken {
            balance = balance.checked_sub(part).ok_or_else(disagree)?;
            touched.insert(list[i].id.clone());
            entries.push(LedgerEntry {
                amount: part,
                balance_after: balance,
                grant_id: Some(list[i].id.clone()),
                ..u.clone()
            });
        }
    }
    let left: Vec<(&str, Decimal)> = grants
        .values()
        .flatten()
        .filter(|g| touched.contains(&g.id))
        .map(|g| (g.id.as_str(), g.remaining))
        .collect();
    store::ledger::set_remaining(conn, &left, now).await?;
    Ok(entries)
}

/// A new grant's id.
pub(crate) fn new_grant_id() -> String {
    format!("grant_{}", new_execution_id())
}

/// The document of a grant, as `list_credit` and webhooks show it.
pub(crate) fn grant_document(g: &GrantRow) -> Value {
    let status = if g.expired_at.is_some() {
        "EXPIRED"
    } else if g.remaining.is_zero() {
        "USED"
    } else {
        "OPEN"
    };
    json!({
        "grant_id": g.id,
        "reference_id": g.reference_id,
        "amount": num(g.amount),
        "remaining": num(g.remaining),
        "priority": g.priority,
        "expires_at": g.expires_at.map(timestamp),
        "expired_at": g.expired_at.map(timestamp),
        "status": status,
        "created_at": timestamp(g.created_at),
    })
}

/// Expires what is left of a locked execution's grants whose `expires_at`
/// has come: an `EXPIRE` entry each, and `BILLING_EXECUTION_CREDIT_EXPIRED`.
/// Returns how many grants expired.
pub(crate) async fn expire(
    conn: &mut PgConnection,
    execution: &mut ExecutionRow,
    now: DateTime<Utc>,
) -> Result<usize, HandleError> {
    let due = store::ledger::expired_grants(conn, &execution.id, now).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let currency = store::catalog::find_plan(conn, &execution.merchant_id, &execution.plan_id)
        .await?
        .map(|p| p.spec().plan_currency.to_string())
        .unwrap_or_default();
    for g in &due {
        let entry = store::ledger::append(
            conn,
            &execution.merchant_id,
            &execution.id,
            EntryKind::Expire,
            g.remaining,
            &g.reference_id,
            &g.id,
            now,
        )
        .await?;
        store::ledger::mark_expired(conn, &g.id, now).await?;
        execution.credit_balance = entry.balance_after;
        let content = json!({
            "billing_execution_info": execution_summary(execution),
            "credit": {
                "grant_id": g.id,
                "reference_id": g.reference_id,
                "granted": num(g.amount),
                "amount": num(g.remaining),
                "expires_at": g.expires_at.map(timestamp),
                "balance": num(entry.balance_after),
                "currency": currency,
            },
        });
        let webhook = Webhook::new(EventName::ExecutionCreditExpired, &execution.merchant_id, now, content);
        store::outbox::enqueue(conn, &webhook, Some(&execution.id)).await?;
    }
    Ok(due.len())
}
