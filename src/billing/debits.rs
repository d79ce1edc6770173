//! Debits through the payment gateway (contract §6): due bills are claimed
//! with a lease, requested with an idempotency key, settled by results (or
//! their absence), retried with backoff, then the plan's action on failure.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgConnection;

use super::announce_bill;
use crate::backoff_policy::retry_delay;
use crate::domain::bill::{AfterFailure, after_failure, format_amount};
use crate::domain::catalog::ActionOnFailure;
use crate::domain::money::Currency;
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::documents::num;
use crate::protocol::webhook::EventName;
use crate::settings::RetrySettings;
use crate::store;
use crate::store::bills::BillRow;
use crate::store::executions::ExecutionRow;

/// A debit request as published to `billing.payments` (contract §6).
pub fn request_body(bill: &BillRow) -> serde_json::Value {
    let amount = Currency::parse(&bill.currency)
        .map_or_else(|_| bill.amount_due.to_string(), |c| format_amount(&c, bill.amount_due));
    json!({
        "request_id": bill.request_id,
        "merchant_id": bill.merchant_id,
        "customer_id": bill.customer_id,
        "billing_execution_info_id": bill.execution_id,
        "bill_id": bill.id,
        "sequence_number": bill.sequence_number.unwrap_or(1),
        "attempt": bill.attempt,
        "amount": amount,
        "currency": bill.currency,
        "token": bill.token,
        "reference_id": bill.reference_id,
    })
}

/// A debit result as the gateway sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct DebitResult {
    pub request_id: String,
    pub status: ResultStatus,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub retryable: Option<bool>,
    #[serde(default)]
    pub gateway_txn_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResultStatus {
    Success,
    Failure,
    Pending,
}

/// What a result did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultOutcome {
    Paid,
    /// Failed; the bill's new status (a retry, or the plan's action).
    Failed(&'static str),
    Pending,
    /// A repeat, or a result for an attempt already settled: nothing changed.
    Ignored,
}

impl ResultOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultOutcome::Paid => "paid",
            ResultOutcome::Failed(_) => "failed",
            ResultOutcome::Pending => "pending",
            ResultOutcome::Ignored => "ignored",
        }
    }
}

async fn lock_execution_of(conn: &mut PgConnection, bill: &BillRow) -> Result<Option<ExecutionRow>, sqlx::Error> {
    match &bill.execution_id {
        Some(id) => store::executions::lock_by_id(conn, id).await,
        None => Ok(None),
    }
}

/// Applies one gateway result, exactly once per attempt. Also returns the
/// time since the request left, for the round-trip metric.
pub async fn apply_result(
    conn: &mut PgConnection,
    result: &DebitResult,
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<(ResultOutcome, Option<Duration>), HandleError> {
    let attempt = store::bills::lock_attempt(conn, &result.request_id)
        .await?
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::InvalidField,
                format!("request_id '{}' names no debit request", result.request_id),
            )
        })?;
    let roundtrip = attempt.requested_at.map(|t| now - t);
    let outcome = settle(conn, &attempt, result, retry, now).await?;
    Ok((outcome, roundtrip))
}

async fn settle(
    conn: &mut PgConnection,
    attempt: &store::bills::AttemptRow,
    result: &DebitResult,
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<ResultOutcome, HandleError> {
    let Some(mut bill) = store::bills::lock(conn, &attempt.bill_id).await? else {
        return Ok(ResultOutcome::Ignored);
    };
    let execution = lock_execution_of(conn, &bill).await?;
    let settled = matches!(attempt.status.as_str(), "SUCCESS" | "FAILURE" | "TIMEOUT");
    let current = bill.request_id.as_deref() == Some(result.request_id.as_str()) && bill.status == "PROCESSING";
    let (status, code, message) = (
        result.status,
        result.error_code.as_deref(),
        result.error_message.as_deref(),
    );
    let txn = result.gateway_txn_id.as_deref();
    match status {
        ResultStatus::Pending if !settled => {
            store::bills::record_result(conn, &result.request_id, "PENDING", code, message, None, txn, now).await?;
            Ok(ResultOutcome::Pending)
        }
        ResultStatus::Success if current || (attempt.status == "TIMEOUT" && !is_final(&bill.status)) => {
            // A late success of a timed-out attempt still pays the bill: the
            // money moved, so the pending retry must not run.
            store::bills::record_result(conn, &result.request_id, "SUCCESS", code, message, None, txn, now).await?;
            bill.status = "PAID".into();
            bill.gateway_txn_id = result.gateway_txn_id.clone();
            bill.settled_at = Some(now);
            bill.next_attempt_at = None;
            bill.lease_owner = None;
            bill.lease_expires_at = None;
            bill.updated_at = now;
            store::bills::update(conn, &bill).await?;
            let settlement = json!({"credit_applied": num(bill.credit_applied), "debited_amount": num(bill.amount_due),
                                    "gateway_txn_id": bill.gateway_txn_id, "currency": bill.currency});
            announce_bill(
                conn,
                EventName::ExecutionDebitEvent,
                &bill,
                execution.as_ref(),
                now,
                Some(("settlement", settlement)),
            )
            .await?;
            Ok(ResultOutcome::Paid)
        }
        ResultStatus::Failure if current => {
            let retryable = result.retryable.unwrap_or(true);
            store::bills::record_result(
                conn,
                &result.request_id,
                "FAILURE",
                code,
                message,
                Some(retryable),
                txn,
                now,
            )
            .await?;
            let reason = format!("{}: {}", code.unwrap_or("FAILURE"), message.unwrap_or("debit failed"));
            let status = fail(conn, bill, execution, retryable, reason, retry, now).await?;
            Ok(ResultOutcome::Failed(status))
        }
        _ => {
            if !settled {
                store::bills::record_result(
                    conn,
                    &result.request_id,
                    status_str(status),
                    code,
                    message,
                    result.retryable,
                    txn,
                    now,
                )
                .await?;
            }
            // The first success of an attempt for a bill already settled by
            // another attempt: money moved twice.
            if status == ResultStatus::Success && !settled && is_final(&bill.status) {
                tracing::warn!(bill = %bill.id, request = %result.request_id, "a second successful debit for a paid bill: reconcile with the gateway");
            }
            Ok(ResultOutcome::Ignored)
        }
    }
}

fn status_str(s: ResultStatus) -> &'static str {
    match s {
        ResultStatus::Success => "SUCCESS",
        ResultStatus::Failure => "FAILURE",
        ResultStatus::Pending => "PENDING",
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "PAID" | "WRITTEN_OFF" | "CARRIED_OVER" | "FAILED" | "CANCELLED")
}

/// A failed attempt: retry with backoff while retries remain, else apply
/// the plan's action. Webhooks say each step. Returns the bill's new status.
pub async fn fail(
    conn: &mut PgConnection,
    mut bill: BillRow,
    mut execution: Option<ExecutionRow>,
    retryable: bool,
    reason: String,
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<&'static str, HandleError> {
    bill.last_error = Some(reason);
    bill.lease_owner = None;
    bill.lease_expires_at = None;
    bill.updated_at = now;
    let attempt = bill.attempt.max(1) as u32;
    let decision = after_failure(attempt, bill.max_retry.max(0) as u32, retryable);
    if decision == AfterFailure::Retry {
        let delay = Duration::from_std(retry_delay(retry, attempt)).unwrap_or(Duration::hours(1));
        bill.status = "RETRY_SCHEDULED".into();
        bill.next_attempt_at = Some(now + delay);
        store::bills::update(conn, &bill).await?;
        announce_bill(conn, EventName::TxnFailed, &bill, execution.as_ref(), now, None).await?;
        announce_bill(conn, EventName::RetryTxnScheduled, &bill, execution.as_ref(), now, None).await?;
        return Ok("RETRY_SCHEDULED");
    }
    bill.next_attempt_at = None;
    let action = ActionOnFailure::parse(&bill.action_on_failure).unwrap_or(ActionOnFailure::Skip);
    let status = match (action, &execution) {
        (ActionOnFailure::Retry, Some(_)) => "CARRIED_OVER",
        (ActionOnFailure::Revoke, Some(_)) => "FAILED",
        _ => "WRITTEN_OFF",
    };
    bill.status = status.into();
    store::bills::update(conn, &bill).await?;
    announce_bill(conn, EventName::TxnFailed, &bill, execution.as_ref(), now, None).await?;
    if decision == AfterFailure::RetriesExhausted {
        announce_bill(conn, EventName::TxnRetryExceeded, &bill, execution.as_ref(), now, None).await?;
    }
    match (bill.status.as_str(), execution.as_mut()) {
        ("CARRIED_OVER", Some(e)) => {
            e.carried_amount += bill.amount_due;
            store::executions::save_billing_state(conn, e, now).await?;
        }
        ("FAILED", Some(e)) => {
            e.status = "INACTIVE".into();
            e.next_bill_at = None;
            store::executions::save_billing_state(conn, e, now).await?;
            store::bills::cancel_open(conn, &e.id, &bill.id, now).await?;
            let content = json!({ "billing_execution_info": crate::protocol::documents::execution_summary(e), "reason": "REVOKED_AFTER_FAILED_DEBIT", "bill_id": bill.id });
            let webhook =
                crate::protocol::webhook::Webhook::new(EventName::ExecutionDeactivated, &e.merchant_id, now, content);
            store::outbox::enqueue(conn, &webhook, Some(&e.id)).await?;
        }
        _ => {
            announce_bill(conn, EventName::TxnSkipped, &bill, execution.as_ref(), now, None).await?;
        }
    }
    Ok(status)
}

/// A PROCESSING bill whose result never came: a retryable failure.
pub async fn time_out(
    conn: &mut PgConnection,
    bill: BillRow,
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<&'static str, HandleError> {
    let execution = lock_execution_of(conn, &bill).await?;
    if let Some(request_id) = &bill.request_id {
        store::bills::record_result(
            conn,
            request_id,
            "TIMEOUT",
            Some("TIMEOUT"),
            Some("no result within payments.result_timeout"),
            Some(true),
            None,
            now,
        )
        .await?;
    }
    fail(
        conn,
        bill,
        execution,
        true,
        "TIMEOUT: no result within payments.result_timeout".into(),
        retry,
        now,
    )
    .await
}
