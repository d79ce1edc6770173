//! `list_bills`, `get_bill`, `list_credit`: what a merchant reads of its
//! bills and credit, scoped to the merchant, paged by cursor.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::PgConnection;

use super::outcome::{Outcome, not_found};
use crate::billing::bill_document;
use crate::billing::credit::grant_document;
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::documents::{self, num, timestamp};
use crate::protocol::provisioning::{GetBill, ListBills, ListCredit};
use crate::store;
use crate::store::executions::ExecutionRow;
use crate::store::ledger::EntryRow;

/// Page size of `list_bills` and `list_credit` when the sender names none.
pub(crate) const DEFAULT_PAGE: u32 = 50;

async fn execution(conn: &mut PgConnection, merchant_id: &str, id: &str) -> Result<ExecutionRow, HandleError> {
    store::executions::find(conn, merchant_id, id)
        .await?
        .ok_or_else(|| not_found(ErrorCode::ExecutionNotFound, "billing_execution_info_id", id))
}

pub(super) async fn list_bills(
    conn: &mut PgConnection,
    merchant_id: &str,
    c: ListBills,
) -> Result<Outcome, HandleError> {
    let execution = execution(conn, merchant_id, &c.billing_execution_info_id).await?;
    if let Some(cursor) = c.cursor.as_deref()
        && store::bills::find_of_merchant(conn, merchant_id, cursor)
            .await?
            .is_none_or(|b| b.execution_id.as_deref() != Some(execution.id.as_str()))
    {
        return Err(Rejection::field("cursor", "must be a next_cursor of list_bills for this execution").into());
    }
    let limit = c.limit.unwrap_or(DEFAULT_PAGE);
    let mut bills = store::bills::page_of_execution(
        conn,
        &execution.id,
        c.status.map(|s| s.as_str()),
        c.cursor.as_deref(),
        i64::from(limit) + 1,
    )
    .await?;
    let more = bills.len() > limit as usize;
    bills.truncate(limit as usize);
    let ids: Vec<&str> = bills.iter().map(|b| b.id.as_str()).collect();
    let mut lines: HashMap<String, Vec<store::bills::LineRow>> = HashMap::new();
    for row in store::bills::lines_of(conn, &ids).await? {
        lines.entry(row.bill_id).or_default().push(row.line);
    }
    let docs: Vec<Value> = bills
        .iter()
        .map(|b| bill_document(b, lines.get(&b.id).map(Vec::as_slice).unwrap_or_default()))
        .collect();
    let next_cursor = more.then(|| bills.last().map(|b| b.id.clone())).flatten();
    let body = json!({
        "billing_execution_info_id": execution.id,
        "bills": docs,
        "next_cursor": next_cursor,
    });
    Ok(Outcome::quiet(documents::success(merchant_id, body)))
}

fn entry_document(e: &EntryRow) -> Value {
    json!({
        "entry_id": e.id,
        "kind": e.kind,
        "amount": num(e.amount),
        "balance_after": num(e.balance_after),
        "reference_id": e.reference_id,
        "grant_id": e.grant_id,
        "created_at": timestamp(e.created_at),
    })
}

pub(super) async fn get_bill(conn: &mut PgConnection, merchant_id: &str, c: GetBill) -> Result<Outcome, HandleError> {
    let bill = store::bills::find_of_merchant(conn, merchant_id, &c.bill_id)
        .await?
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::BillNotFound,
                format!("bill_id '{}' does not exist for this merchant", c.bill_id),
            )
        })?;
    let lines = store::bills::lines(conn, &bill.id).await?;
    let attempts = store::bills::attempts(conn, &bill.id).await?;
    let credit = match &bill.execution_id {
        Some(execution_id) => store::ledger::entries_of_bill(conn, execution_id, &bill.id).await?,
        None => Vec::new(),
    };
    let paid_by = attempts.iter().find(|a| a.status == "SUCCESS");
    let mut doc = bill_document(&bill, &lines);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "attempts".into(),
            attempts
                .iter()
                .map(|a| {
                    json!({
                        "request_id": a.request_id,
                        "attempt": a.attempt,
                        "amount": num(a.amount),
                        "status": a.status,
                        "error_code": a.error_code,
                        "error_message": a.error_message,
                        "retryable": a.retryable,
                        "gateway_txn_id": a.gateway_txn_id,
                        "requested_at": a.requested_at.map(timestamp),
                        "result_at": a.result_at.map(timestamp),
                    })
                })
                .collect(),
        );
        obj.insert(
            "settlement".into(),
            json!({
                "credit_applied": num(bill.credit_applied),
                "credit_entries": credit.iter().map(entry_document).collect::<Vec<_>>(),
                "debited_amount": num(paid_by.map(|a| a.amount).unwrap_or_default()),
                "gateway_txn_id": paid_by.and_then(|a| a.gateway_txn_id.clone()).or_else(|| bill.gateway_txn_id.clone()),
                "request_id": paid_by.map(|a| a.request_id.clone()),
                "settled_at": bill.settled_at.map(timestamp),
                "currency": bill.currency,
            }),
        );
    }
    Ok(Outcome::quiet(documents::success(merchant_id, json!({ "bill": doc }))))
}

pub(super) async fn list_credit(
    conn: &mut PgConnection,
    merchant_id: &str,
    c: ListCredit,
) -> Result<Outcome, HandleError> {
    let execution = execution(conn, merchant_id, &c.billing_execution_info_id).await?;
    let limit = c.limit.unwrap_or(DEFAULT_PAGE);
    let before = match c.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(
            cursor
                .parse::<i64>()
                .map_err(|_| Rejection::field("cursor", "must be a next_cursor of list_credit"))?,
        ),
    };
    let mut entries = store::ledger::entries(conn, &execution.id, before, i64::from(limit) + 1).await?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let grants = store::ledger::grants(conn, &execution.id).await?;
    let next_cursor = more.then(|| entries.last().map(|e| e.id.to_string())).flatten();
    let body = json!({
        "billing_execution_info_id": execution.id,
        "balance": num(execution.credit_balance),
        "entries": entries.iter().map(entry_document).collect::<Vec<_>>(),
        "grants": grants.iter().map(grant_document).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    });
    Ok(Outcome::quiet(documents::success(merchant_id, body)))
}
