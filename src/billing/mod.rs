//! Turning usage and plans into money: bills issued when periods close (or
//! on `present`, or on an explicit schedule), credit applied first, debits
//! run through the payment gateway with retries, then the plan's action.

pub(crate) mod credit;
pub(crate) mod debits;
pub(crate) mod issue;
pub(crate) mod plans;
pub(crate) mod proration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::domain::catalog::{PlanInterval, PlanModel, PlanType};
use crate::domain::period::Schedule;
use crate::domain::webhook::{EventName, Webhook};
use crate::protocol::documents::{num, timestamp};
use crate::store;
use crate::store::bills::{BillRow, LineRow};
use crate::store::executions::ExecutionRow;

pub(crate) use crate::domain::catalog::bills_on_present;

/// When the scheduler first acts for an execution that starts billing on
/// `schedule`: at the start for an amount in advance (PRE_DEBIT) and for
/// ONETIME plans, at the end of the first period otherwise; never for plans
/// billed on `present`.
pub(crate) fn first_bill_at(
    schedule: &Schedule,
    interval: PlanInterval,
    plan_type: PlanType,
    model: PlanModel,
) -> Option<DateTime<Utc>> {
    if bills_on_present(interval, model) {
        return None;
    }
    if interval == PlanInterval::Onetime || plan_type == PlanType::PreDebit {
        return Some(schedule.start);
    }
    schedule.boundary(1)
}

/// A bill with its lines, as webhooks and answers show it.
pub(crate) fn bill_document(bill: &BillRow, lines: &[LineRow]) -> Value {
    json!({
        "bill_id": bill.id,
        "kind": bill.kind,
        "billing_execution_info_id": bill.execution_id,
        "billing_plan_id": bill.billing_plan_id,
        "customer_id": bill.customer_id,
        "period_start": bill.period_start.map(timestamp),
        "period_end": bill.period_end.map(timestamp),
        "sequence_number": bill.sequence_number,
        "reference_id": bill.reference_id,
        "currency": bill.currency,
        "total": num(bill.total),
        "credit_applied": num(bill.credit_applied),
        "amount_due": num(bill.amount_due),
        "status": bill.status,
        "due_at": timestamp(bill.due_at),
        "attempt": bill.attempt,
        "max_retry": bill.max_retry,
        "next_attempt_at": bill.next_attempt_at.map(timestamp),
        "last_error": bill.last_error,
        "gateway_txn_id": bill.gateway_txn_id,
        "settled_at": bill.settled_at.map(timestamp),
        "created_at": timestamp(bill.created_at),
        // PROGRESSIVE: the usage threshold the interim bill was made for.
        "threshold": (bill.kind == crate::domain::bill::BillKind::Progressive)
            .then(|| bill.bill_key.as_deref().and_then(|k| k.rsplit(':').next()))
            .flatten()
            .and_then(|t| t.parse::<Decimal>().ok())
            .map(num),
        "lines": lines.iter().map(|l| json!({
            "kind": l.kind,
            "metric_id": l.metric_id,
            "quantity": l.quantity.map(num),
            "amount": num(l.amount),
            "description": l.description,
        })).collect::<Vec<_>>(),
    })
}

/// A webhook about a bill: the bill with its lines, the execution when it
/// has one, and anything else the event carries.
pub(crate) fn bill_webhook(
    event: EventName,
    bill: &BillRow,
    lines: &[LineRow],
    execution: Option<&ExecutionRow>,
    now: DateTime<Utc>,
    extra: Option<(&str, Value)>,
) -> Webhook {
    let mut content = json!({ "bill": bill_document(bill, lines) });
    if let Some(obj) = content.as_object_mut() {
        if let Some(e) = execution {
            obj.insert(
                "billing_execution_info".into(),
                crate::protocol::documents::execution_summary(e),
            );
        }
        if let Some((key, value)) = extra {
            obj.insert(key.into(), value);
        }
    }
    Webhook::new(event, &bill.merchant_id, now, content)
}

/// The `settlement` of a bill paid without the gateway: all by credit.
pub(crate) fn credit_settlement(credit_applied: Decimal, currency: &str) -> Value {
    json!({"credit_applied": num(credit_applied), "debited_amount": 0, "currency": currency})
}

/// Writes a webhook about a stored bill. The caller holds the execution's
/// row lock (when the bill has one), which keeps webhooks of one execution
/// in order.
pub(crate) async fn announce_bill(
    conn: &mut PgConnection,
    event: EventName,
    bill: &BillRow,
    execution: Option<&ExecutionRow>,
    now: DateTime<Utc>,
    extra: Option<(&str, Value)>,
) -> Result<(), sqlx::Error> {
    let lines = store::bills::lines(conn, &bill.id).await?;
    let webhook = bill_webhook(event, bill, &lines, execution, now, extra);
    store::outbox::enqueue(conn, &webhook, bill.execution_id.as_deref()).await
}
