//! Debits through the payment gateway: due bills are claimed
//! with a lease, requested with an idempotency key, settled by results (or
//! their absence), retried with backoff, then the plan's action on failure.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgConnection;

use rust_decimal::Decimal;
use serde_json::Value;

use super::credit::{CreditReason, GivenBack, given_back_webhook};
use super::{announce_bill, bill_webhook, bills_on_present};
use crate::backoff_policy::retry_delay;
use crate::domain::bill::{
    AfterFailure, AttemptStatus, BillEvent, BillKind, BillStatus, RefusedTransition, after_failure, format_amount,
    transition,
};
use crate::domain::catalog::{ActionOnFailure, PlanInterval};
use crate::domain::execution::ExecutionStatus;
use crate::domain::money::Currency;
use crate::domain::webhook::{EventName, Webhook};
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::de::opt_clipped_text;
use crate::protocol::documents::{execution_summary, num};
use crate::protocol::envelope::MERCHANT_HEADER;
use crate::settings::RetrySettings;
use crate::store;
use crate::store::bills::BillRow;
use crate::store::executions::ExecutionRow;

/// The gateway's idempotency key of an attempt: the bill and the attempt's
/// place in the bill's life. A request sent again (same attempt) has the same key.
pub(crate) fn idempotency_key(bill: &BillRow) -> String {
    format!("{}:{}", bill.id, bill.attempt)
}

/// A debit request as published to `billing.payments`.
pub(crate) fn request_body(bill: &BillRow) -> serde_json::Value {
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
        "idempotency_key": idempotency_key(bill),
    })
}

/// A debit result as the gateway sends it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DebitResult {
    pub request_id: String,
    pub status: ResultStatus,
    #[serde(default, deserialize_with = "opt_clipped_text")]
    pub error_code: Option<String>,
    #[serde(default, deserialize_with = "opt_clipped_text")]
    pub error_message: Option<String>,
    #[serde(default)]
    pub retryable: Option<bool>,
    /// Kept to its first 1000 characters: a success is never refused.
    #[serde(default, deserialize_with = "opt_clipped_text")]
    pub gateway_txn_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ResultStatus {
    Success,
    Failure,
    Pending,
}

/// What a result did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultOutcome {
    Paid,
    /// Failed; the bill's new status (a retry, or the plan's action).
    Failed(BillStatus),
    Pending,
    /// A repeat, or a result for an attempt already settled: nothing changed.
    Ignored,
    /// A success after its attempt timed out or its bill moved on: paid late.
    PaidLate,
    /// A success for a bill another attempt had already paid.
    DoubleCharge,
}

impl ResultOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResultOutcome::Paid => "paid",
            ResultOutcome::Failed(_) => "failed",
            ResultOutcome::Pending => "pending",
            ResultOutcome::Ignored => "ignored",
            ResultOutcome::PaidLate => "paid_late",
            ResultOutcome::DoubleCharge => "double_charge",
        }
    }
}

async fn lock_execution_of(conn: &mut PgConnection, bill: &BillRow) -> Result<Option<ExecutionRow>, sqlx::Error> {
    match &bill.execution_id {
        Some(id) => store::executions::lock_by_id(conn, id).await,
        None => Ok(None),
    }
}

/// Who sent a result: the merchant its `x-merchantid` header names (a broker
/// user allowed for it when authentication is on), or why it names none.
pub(crate) type Sender<'a> = Result<&'a str, &'a Rejection>;

/// Longest `request_id` a result may carry; also how much of
/// any wire input a message quotes.
const MAX_RESULT_ID: usize = 100;

/// Wire input quoted in a message: at most `MAX_RESULT_ID` characters of it.
fn quoted(value: &str) -> String {
    if value.chars().count() <= MAX_RESULT_ID {
        value.to_string()
    } else {
        format!("{}…", value.chars().take(MAX_RESULT_ID).collect::<String>())
    }
}

/// A `request_id` out of bounds names no request the worker sent. Other
/// fields are not refused for their size: a success is money that moved
/// and is always recorded.
fn check_request_id(result: &DebitResult) -> Result<(), Rejection> {
    let n = result.request_id.chars().count();
    if n == 0 || n > MAX_RESULT_ID {
        return Err(Rejection::field(
            "request_id",
            format_args!("must be 1-{MAX_RESULT_ID} characters"),
        ));
    }
    Ok(())
}

/// Applies one gateway result, exactly once per attempt. Also returns the
/// time since the request left, for the round-trip metric. A result whose
/// sender is not the bill's merchant is refused (`FORBIDDEN`) before
/// anything changes.
pub(crate) async fn apply_result(
    conn: &mut PgConnection,
    result: &DebitResult,
    sender: Sender<'_>,
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<(ResultOutcome, Option<Duration>), HandleError> {
    check_request_id(result)?;
    // The bill first, then its attempt: the order the scheduler's sender
    // locks them in, so the two never wait on each other in a cycle.
    if let Some(bill_id) = store::bills::bill_of_request(conn, &result.request_id).await? {
        store::bills::lock(conn, &bill_id).await?;
    }
    let attempt = store::bills::lock_attempt(conn, &result.request_id)
        .await?
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::InvalidField,
                format!("request_id '{}' names no debit request", quoted(&result.request_id)),
            )
        })?;
    let roundtrip = attempt.requested_at.map(|t| now - t);
    let outcome = settle(conn, &attempt, result, sender, retry, now).await?;
    Ok((outcome, roundtrip))
}

/// Applies a batch of results in the caller's transaction, in effect as
/// [`apply_result`] applies them one after another. The ordinary ones (a
/// `SUCCESS` from the bill's merchant for the attempt its `PROCESSING` bill
/// waits for, asking no more than the bill owes, the only result of the
/// batch for its execution) are settled together, a few statements for all;
/// the others go through [`apply_result`] one by one. The two sets touch
/// different executions, so each execution's webhooks keep their order.
pub(crate) async fn apply_results(
    conn: &mut PgConnection,
    results: &[(&DebitResult, Sender<'_>)],
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<Vec<(ResultOutcome, Option<Duration>)>, HandleError> {
    let mut applied: Vec<Option<(ResultOutcome, Option<Duration>)>> = vec![None; results.len()];
    if results.len() > 1 {
        pay_ordinary(conn, results, now, &mut applied).await?;
    }
    let mut outcomes = Vec::with_capacity(results.len());
    for ((result, sender), done) in results.iter().zip(applied) {
        match done {
            Some(outcome) => outcomes.push(outcome),
            None => outcomes.push(apply_result(conn, result, *sender, retry, now).await?),
        }
    }
    Ok(outcomes)
}

/// Settles the ordinary successes of a batch together (see
/// [`apply_results`]) and fills in their outcomes.
async fn pay_ordinary(
    conn: &mut PgConnection,
    results: &[(&DebitResult, Sender<'_>)],
    now: DateTime<Utc>,
    applied: &mut [Option<(ResultOutcome, Option<Duration>)>],
) -> Result<(), HandleError> {
    use std::collections::HashMap;

    let request_ids: Vec<&str> = results
        .iter()
        .filter(|(r, _)| check_request_id(r).is_ok())
        .map(|(r, _)| r.request_id.as_str())
        .collect();
    if request_ids.is_empty() {
        return Ok(());
    }
    // Bills first, then attempts: the order the scheduler's sender takes.
    let bills: HashMap<String, BillRow> = store::bills::lock_of_requests(conn, &request_ids)
        .await?
        .into_iter()
        .map(|b| (b.id.clone(), b))
        .collect();
    let attempts: HashMap<String, store::bills::LockedAttempt> = store::bills::lock_attempts(conn, &request_ids)
        .await?
        .into_iter()
        .map(|a| (a.request_id.clone(), a))
        .collect();
    // Whose results share an execution (or a bill without one) go one by one.
    let key = |result: &DebitResult| {
        let attempt = attempts.get(&result.request_id)?;
        let bill = bills.get(&attempt.bill_id)?;
        Some(bill.execution_id.clone().unwrap_or_else(|| bill.id.clone()))
    };
    let mut touching: HashMap<String, usize> = HashMap::new();
    for (result, _) in results {
        if let Some(k) = key(result) {
            *touching.entry(k).or_default() += 1;
        }
    }
    let ordinary: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, (result, sender))| {
            let Some(attempt) = attempts.get(&result.request_id) else {
                return false;
            };
            let Some(bill) = bills.get(&attempt.bill_id) else {
                return false;
            };
            result.status == ResultStatus::Success
                && check_request_id(result).is_ok()
                && matches!(attempt.status, AttemptStatus::Requested | AttemptStatus::Pending)
                && bill.status == BillStatus::Processing
                && bill.kind != BillKind::Proration
                && bill.request_id.as_deref() == Some(result.request_id.as_str())
                && sender.is_ok_and(|m| m == bill.merchant_id)
                && attempt.amount <= bill.amount_due
                && key(result).and_then(|k| touching.get(&k).copied()) == Some(1)
        })
        .map(|(i, _)| i)
        .collect();
    if ordinary.is_empty() {
        return Ok(());
    }

    let mut paid: Vec<(usize, BillRow, &store::bills::LockedAttempt)> = Vec::with_capacity(ordinary.len());
    for &i in &ordinary {
        let result = results[i].0;
        let attempt = &attempts[&result.request_id];
        let mut bill = bills[&attempt.bill_id].clone();
        bill.status = transition(bill.status, BillEvent::Succeeded).map_err(|e| refused(&e))?;
        bill.record_debit(result.gateway_txn_id.clone(), now);
        paid.push((i, bill, attempt));
    }
    let mut execution_ids: Vec<&str> = paid.iter().filter_map(|(_, b, _)| b.execution_id.as_deref()).collect();
    execution_ids.sort_unstable();
    let executions: HashMap<String, ExecutionRow> = store::executions::lock_many_by_id(conn, &execution_ids)
        .await?
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    let bill_ids: Vec<&str> = paid.iter().map(|(_, b, _)| b.id.as_str()).collect();
    let mut lines: HashMap<String, Vec<store::bills::LineRow>> = HashMap::new();
    for row in store::bills::lines_of(conn, &bill_ids).await? {
        lines.entry(row.bill_id).or_default().push(row.line);
    }

    let recorded: Vec<store::bills::RecordedSuccess<'_>> = paid
        .iter()
        .map(|(i, _, _)| {
            let result = results[*i].0;
            store::bills::RecordedSuccess {
                request_id: result.request_id.as_str(),
                error_code: result.error_code.as_deref(),
                error_message: result.error_message.as_deref(),
                gateway_txn_id: result.gateway_txn_id.as_deref(),
            }
        })
        .collect();
    store::bills::record_successes(conn, &recorded, now).await?;
    let rows: Vec<&BillRow> = paid.iter().map(|(_, b, _)| b).collect();
    store::bills::mark_paid_many(conn, &rows, now).await?;

    let no_lines = Vec::new();
    let webhooks: Vec<(Webhook, Option<String>)> = paid
        .iter()
        .map(|(_, bill, attempt)| {
            let execution = bill.execution_id.as_ref().and_then(|id| executions.get(id));
            let settlement = json!({
                "credit_applied": num(bill.credit_applied),
                "debited_amount": num(attempt.amount),
                "gateway_txn_id": bill.gateway_txn_id,
                "request_id": attempt.request_id,
                "attempt": attempt.attempt,
                "currency": bill.currency,
            });
            let extras = vec![("settlement", settlement), ("late", Value::Bool(false))];
            let lines = lines.get(&bill.id).unwrap_or(&no_lines);
            let webhook = with_extras(
                bill_webhook(EventName::ExecutionDebitEvent, bill, lines, execution, now, None),
                extras,
            );
            (webhook, bill.execution_id.clone())
        })
        .collect();
    store::outbox::enqueue_many(conn, &webhooks).await?;

    for (i, _, attempt) in &paid {
        applied[*i] = Some((ResultOutcome::Paid, attempt.requested_at.map(|t| now - t)));
    }
    Ok(())
}

/// Refuses a result that does not come from the bill's merchant./// Refuses a result that does not come from the bill's merchant.
fn check_sender(bill: &BillRow, sender: Sender<'_>) -> Result<(), Rejection> {
    match sender {
        Ok(merchant) if merchant == bill.merchant_id => Ok(()),
        Ok(merchant) => Err(Rejection::new(
            ErrorCode::Forbidden,
            format!(
                "{MERCHANT_HEADER} '{}' is not the merchant of the debit request; the result is refused",
                quoted(merchant)
            ),
        )),
        Err(why) => Err(Rejection::new(
            ErrorCode::Forbidden,
            format!("{}; a debit result must name the merchant of its request", why.message),
        )),
    }
}

async fn settle(
    conn: &mut PgConnection,
    attempt: &store::bills::AttemptRow,
    result: &DebitResult,
    sender: Sender<'_>,
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<ResultOutcome, HandleError> {
    let Some(bill) = store::bills::lock(conn, &attempt.bill_id).await? else {
        return Ok(ResultOutcome::Ignored);
    };
    check_sender(&bill, sender)?;
    let execution = lock_execution_of(conn, &bill).await?;
    let settled = attempt.status.is_settled();
    let current =
        bill.request_id.as_deref() == Some(result.request_id.as_str()) && bill.status == BillStatus::Processing;
    let (status, code, message) = (
        result.status,
        result.error_code.as_deref(),
        result.error_message.as_deref(),
    );
    let txn = result.gateway_txn_id.as_deref();
    match status {
        ResultStatus::Pending if !settled => {
            store::bills::record_result(
                conn,
                &result.request_id,
                AttemptStatus::Pending,
                code,
                message,
                None,
                txn,
                now,
            )
            .await?;
            Ok(ResultOutcome::Pending)
        }
        // The same success again: already recorded, nothing changes twice.
        ResultStatus::Success if attempt.status == AttemptStatus::Success => Ok(ResultOutcome::Ignored),
        // Money moved: always recorded, however late.
        ResultStatus::Success => success(conn, bill, execution, result, current, now).await,
        ResultStatus::Failure if current => {
            let retryable = result.retryable.unwrap_or(true);
            store::bills::record_result(
                conn,
                &result.request_id,
                AttemptStatus::Failure,
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
                    status.attempt_status(),
                    code,
                    message,
                    result.retryable,
                    txn,
                    now,
                )
                .await?;
            }
            Ok(ResultOutcome::Ignored)
        }
    }
}

/// A transition the bill's life refuses: a fault of this service.
fn refused(e: &RefusedTransition) -> HandleError {
    HandleError::Rejected(Rejection::new(ErrorCode::InternalError, e.to_string()))
}

fn overflow(what: &str) -> HandleError {
    HandleError::Rejected(Rejection::overflow(format_args!("the amount while {what}")))
}

fn minus(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, HandleError> {
    a.checked_sub(b).ok_or_else(|| overflow(what))
}

/// A bill webhook with any number of extra content fields.
async fn bill_event(
    conn: &mut PgConnection,
    event: EventName,
    bill: &BillRow,
    execution: Option<&ExecutionRow>,
    now: DateTime<Utc>,
    extras: Vec<(&str, Value)>,
) -> Result<Webhook, sqlx::Error> {
    let lines = store::bills::lines(conn, &bill.id).await?;
    Ok(with_extras(
        bill_webhook(event, bill, &lines, execution, now, None),
        extras,
    ))
}

/// A webhook with extra content fields added.
fn with_extras(mut webhook: Webhook, extras: Vec<(&str, Value)>) -> Webhook {
    if let Some(content) = webhook.payload.get_mut("content").and_then(Value::as_object_mut) {
        for (key, value) in extras {
            content.insert(key.to_string(), value);
        }
    }
    webhook
}

/// Marks a bill with nothing left to collect `PAID` (by the credit it
/// had) and returns its `EXECUTION_DEBIT_EVENT`, which says so.
async fn paid_without_debit(
    conn: &mut PgConnection,
    bill: &mut BillRow,
    execution: Option<&ExecutionRow>,
    now: DateTime<Utc>,
) -> Result<Webhook, sqlx::Error> {
    bill.status = BillStatus::Paid;
    bill.settled_at = Some(now);
    bill.next_attempt_at = None;
    store::bills::update(conn, bill).await?;
    let settlement = super::credit_settlement(bill.credit_applied, bill.currency.as_str());
    let extras = vec![("settlement", settlement), ("late", Value::Bool(false))];
    bill_event(conn, EventName::ExecutionDebitEvent, bill, execution, now, extras).await
}

/// What a late success undid, for its webhook, and the webhooks that follow it.
#[derive(Default)]
struct Unwound {
    adjustments: Vec<Value>,
    followups: Vec<Webhook>,
}

/// A `SUCCESS` not seen before for this attempt: it pays the bill, or, when
/// another attempt already paid it, it is a double charge.
async fn success(
    conn: &mut PgConnection,
    mut bill: BillRow,
    mut execution: Option<ExecutionRow>,
    result: &DebitResult,
    current: bool,
    now: DateTime<Utc>,
) -> Result<ResultOutcome, HandleError> {
    let request_id = result.request_id.as_str();
    let txn = result.gateway_txn_id.as_deref();
    store::bills::record_result(
        conn,
        request_id,
        AttemptStatus::Success,
        result.error_code.as_deref(),
        result.error_message.as_deref(),
        None,
        txn,
        now,
    )
    .await?;
    let detail = store::bills::attempt_detail(conn, request_id)
        .await?
        .ok_or_else(|| Rejection::new(ErrorCode::InternalError, format!("debit attempt {request_id} vanished")))?;
    let amount = detail.amount;
    if bill.status == BillStatus::Paid
        && let Some(paying) = store::bills::paying_attempt(conn, &bill.id, request_id).await?
    {
        return double_charge(conn, &bill, execution.as_ref(), &detail, &paying, now).await;
    }

    // This success pays the bill, now or late.
    let late = !current;
    let paid = transition(bill.status, BillEvent::Succeeded).map_err(|e| refused(&e))?;
    let previous = std::mem::replace(&mut bill.status, paid);
    // What the bill still owed when the money came: nothing if it was
    // already settled without the gateway; less than was asked if a late
    // success of an earlier bill took a carried amount out of it meanwhile.
    let owed = if previous == BillStatus::Paid {
        Decimal::ZERO
    } else {
        bill.amount_due
    };
    let overpaid = minus(amount, owed, "comparing the debit with the bill")?.max(Decimal::ZERO);
    bill.record_debit(result.gateway_txn_id.clone(), now);
    store::bills::update(conn, &bill).await?;

    let mut unwound = Unwound::default();
    if let Some(e) = execution.as_mut() {
        if bill.kind == BillKind::Proration {
            match super::proration::on_paid(conn, &bill, e, now).await? {
                super::proration::PaidChange::Applied(webhook) => unwound.followups.push(webhook),
                super::proration::PaidChange::Nothing => {}
                super::proration::PaidChange::TooLate => {
                    let taken = minus(amount, overpaid, "giving back a plan change's payment")?;
                    if taken > Decimal::ZERO {
                        let reference = format!("late_debit:{}:plan_change", bill.id);
                        credit_back(conn, e, taken, &reference, &bill, now, &mut unwound).await?;
                        unwound
                            .adjustments
                            .push(json!({"kind": "PLAN_CHANGE_NOT_MADE_CREDITED", "amount": num(taken)}));
                    }
                }
            }
        }
        if late && previous == BillStatus::CarriedOver {
            take_back_carried(conn, &bill, e, now, &mut unwound).await?;
        }
        if late && previous == BillStatus::Failed && e.status == ExecutionStatus::Inactive {
            let revoked_by = store::bills::revoked_by(conn, &e.id).await?;
            if revoked_by.as_deref() == Some(bill.id.as_str()) {
                reactivate(conn, e, now).await?;
                let content = json!({
                    "billing_execution_info": execution_summary(e),
                    "reason": "LATE_DEBIT_SUCCESS",
                    "bill_id": bill.id,
                });
                unwound.followups.push(Webhook::new(
                    EventName::ExecutionActivated,
                    &e.merchant_id,
                    now,
                    content,
                ));
                unwound
                    .adjustments
                    .push(json!({"kind": "EXECUTION_ACTIVATED", "billing_execution_info_id": e.id}));
            }
        }
        if overpaid > Decimal::ZERO {
            let reference = format!("late_debit:{}:overpaid", bill.id);
            credit_back(conn, e, overpaid, &reference, &bill, now, &mut unwound).await?;
            unwound
                .adjustments
                .push(json!({"kind": "OVERPAYMENT_CREDITED", "amount": num(overpaid)}));
        }
    } else if overpaid > Decimal::ZERO {
        tracing::warn!(bill = %bill.id, request = request_id, overpaid = %overpaid, "a debit collected more than its bill owes and the bill has no execution to credit");
    }

    let settlement = json!({
        "credit_applied": num(bill.credit_applied),
        "debited_amount": num(amount),
        "gateway_txn_id": bill.gateway_txn_id,
        "request_id": request_id,
        "attempt": detail.attempt,
        "currency": bill.currency,
    });
    let mut extras = vec![("settlement", settlement), ("late", Value::Bool(late))];
    if late {
        extras.push(("previous_status", Value::String(previous.as_str().to_string())));
    }
    if late || !unwound.adjustments.is_empty() {
        extras.push(("adjustments", Value::Array(std::mem::take(&mut unwound.adjustments))));
    }
    let webhook = bill_event(
        conn,
        EventName::ExecutionDebitEvent,
        &bill,
        execution.as_ref(),
        now,
        extras,
    )
    .await?;
    store::outbox::enqueue(conn, &webhook, bill.execution_id.as_deref()).await?;
    for followup in &unwound.followups {
        store::outbox::enqueue(conn, followup, bill.execution_id.as_deref()).await?;
    }
    if late {
        tracing::info!(bill = %bill.id, request = request_id, previous = %previous, "a late debit success paid the bill");
        Ok(ResultOutcome::PaidLate)
    } else {
        Ok(ResultOutcome::Paid)
    }
}

/// A success for a bill that another attempt already paid: the customer
/// paid twice. Announced so the merchant can refund it.
async fn double_charge(
    conn: &mut PgConnection,
    bill: &BillRow,
    execution: Option<&ExecutionRow>,
    this: &store::bills::AttemptDetail,
    paying: &store::bills::AttemptDetail,
    now: DateTime<Utc>,
) -> Result<ResultOutcome, HandleError> {
    tracing::warn!(bill = %bill.id, request = %this.request_id, paid_by = %paying.request_id, "a second successful debit for a paid bill: refund it");
    let details = json!({
        "amount": num(this.amount),
        "currency": bill.currency,
        "request_id": this.request_id,
        "attempt": this.attempt,
        "gateway_txn_id": this.gateway_txn_id,
        "paying_request_id": paying.request_id,
        "paying_attempt": paying.attempt,
        "paying_gateway_txn_id": paying.gateway_txn_id.clone().or_else(|| bill.gateway_txn_id.clone()),
    });
    let webhook = bill_event(
        conn,
        EventName::TxnDoubleCharge,
        bill,
        execution,
        now,
        vec![("double_charge", details)],
    )
    .await?;
    store::outbox::enqueue(conn, &webhook, bill.execution_id.as_deref()).await?;
    Ok(ResultOutcome::DoubleCharge)
}

/// Gives `amount` back to the execution as credit through the ledger, with
/// its `BILLING_EXECUTION_CREDIT_EVENT` (written after the debit event).
async fn credit_back(
    conn: &mut PgConnection,
    execution: &mut ExecutionRow,
    amount: Decimal,
    reference: &str,
    bill: &BillRow,
    now: DateTime<Utc>,
    unwound: &mut Unwound,
) -> Result<(), HandleError> {
    let entry = super::credit::grant(conn, execution, amount, reference, Default::default(), now).await?;
    let credit = GivenBack {
        amount,
        reference_id: reference,
        currency: &bill.currency,
        reason: CreditReason::LateDebitSuccess,
        bill_id: Some(&bill.id),
        grant_id: entry.grant_id.as_deref().unwrap_or_default(),
    };
    unwound.followups.push(given_back_webhook(execution, credit, now));
    Ok(())
}

/// A carried-over bill was paid late: its amount comes out of wherever it
/// went. Not yet billed: out of the execution's carried amount. In a later
/// bill not yet paid: out of that bill's CARRIED line (its amount due first,
/// then the credit it used, which goes back to the balance); if that bill
/// was itself carried over, on into the next. In a later bill already paid:
/// back as credit.
async fn take_back_carried(
    conn: &mut PgConnection,
    bill: &BillRow,
    execution: &mut ExecutionRow,
    now: DateTime<Utc>,
    unwound: &mut Unwound,
) -> Result<(), HandleError> {
    let base = format!("late_debit:{}", bill.id);
    let mut amount = bill.amount_due;
    let mut position = store::bills::carry_position(conn, &bill.id).await?;
    // Each hop follows a bill that was carried over again; the chain is finite.
    while amount > Decimal::ZERO {
        let Some((mut later, line, line_amount)) =
            store::bills::lock_carrying_bill(conn, &execution.id, position).await?
        else {
            let taken = amount.min(execution.carried_amount);
            if taken > Decimal::ZERO {
                execution.carried_amount = minus(execution.carried_amount, taken, "reducing the carried amount")?;
                store::executions::save_billing_state(conn, execution, now).await?;
                unwound
                    .adjustments
                    .push(json!({"kind": "CARRIED_AMOUNT_REDUCED", "amount": num(taken)}));
            }
            let rest = minus(amount, taken, "reducing the carried amount")?;
            if rest > Decimal::ZERO {
                // Nowhere to be found: the customer is not left out of pocket.
                credit_back(conn, execution, rest, &format!("{base}:unmatched"), bill, now, unwound).await?;
                unwound
                    .adjustments
                    .push(json!({"kind": "CREDITED", "amount": num(rest)}));
            }
            return Ok(());
        };
        let part = amount.min(line_amount.max(Decimal::ZERO));
        let rest = minus(amount, part, "matching the carried line")?;
        if rest > Decimal::ZERO {
            let reference = format!("{base}:unmatched:{}", later.id);
            credit_back(conn, execution, rest, &reference, bill, now, unwound).await?;
            unwound
                .adjustments
                .push(json!({"kind": "CREDITED", "amount": num(rest), "bill_id": later.id}));
        }
        if later.status == BillStatus::Paid {
            let reference = format!("{base}:paid:{}", later.id);
            credit_back(conn, execution, part, &reference, bill, now, unwound).await?;
            unwound
                .adjustments
                .push(json!({"kind": "CREDITED", "amount": num(part), "bill_id": later.id}));
            return Ok(());
        }
        // Not paid: the bill is reduced, its amount due first.
        let from_due = part.min(later.amount_due);
        let released = minus(part, from_due, "reducing a later bill")?;
        later.total = minus(later.total, part, "reducing a later bill")?;
        later.amount_due = minus(later.amount_due, from_due, "reducing a later bill")?;
        later.credit_applied = minus(later.credit_applied, released, "reducing a later bill")?;
        later.updated_at = now;
        let line_left = minus(line_amount, part, "reducing a later bill")?;
        let description = format!(
            "unpaid amount carried over ({} paid late with bill {})",
            num(part),
            bill.id
        );
        store::bills::reduce_carried(conn, &later, line, line_left, &description).await?;
        unwound.adjustments.push(json!({
            "kind": "BILL_REDUCED", "bill_id": later.id, "amount": num(part),
            "amount_due": num(later.amount_due), "total": num(later.total),
        }));
        if released > Decimal::ZERO {
            let reference = format!("{base}:released:{}", later.id);
            credit_back(conn, execution, released, &reference, bill, now, unwound).await?;
            unwound
                .adjustments
                .push(json!({"kind": "CREDIT_RELEASED", "amount": num(released), "bill_id": later.id}));
        }
        match later.status {
            // Nothing left to collect: paid by the credit it had.
            BillStatus::Scheduled | BillStatus::RetryScheduled if later.amount_due.is_zero() => {
                let webhook = paid_without_debit(conn, &mut later, Some(execution), now).await?;
                unwound.followups.push(webhook);
                return Ok(());
            }
            // Its unpaid amount went on: follow the part of ours that was in it.
            BillStatus::CarriedOver => {
                amount = from_due;
                position = store::bills::carry_position(conn, &later.id).await?;
            }
            // PROCESSING: a result now settles the reduced amount (any excess
            // collected comes back as credit); others are not collected.
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Activates again an execution that this bill's failed debit revoked:
/// billing resumes as `update_status` ACTIVE resumes it (from the open
/// period if it has not ended, else from the period containing now).
async fn reactivate(conn: &mut PgConnection, e: &mut ExecutionRow, now: DateTime<Utc>) -> Result<(), HandleError> {
    e.status = ExecutionStatus::Active;
    if e.next_bill_at.is_none()
        && let Some(plan) = store::catalog::find_plan(conn, &e.merchant_id, &e.plan_id).await?
    {
        let spec = plan.spec();
        let period = super::issue::basis(e, &plan).schedule().period_containing(now);
        if e.billed_until.is_none_or(|b| b < period.start) {
            e.billed_until = Some(period.start);
        }
        e.next_bill_at =
            if bills_on_present(spec.plan_interval, spec.plan_model) || spec.plan_interval == PlanInterval::Onetime {
                None
            } else {
                period.end
            };
    }
    e.updated_at = now;
    store::executions::save_billing_state(conn, e, now).await?;
    Ok(())
}

impl ResultStatus {
    /// What the attempt records for this answer.
    fn attempt_status(self) -> AttemptStatus {
        match self {
            ResultStatus::Success => AttemptStatus::Success,
            ResultStatus::Failure => AttemptStatus::Failure,
            ResultStatus::Pending => AttemptStatus::Pending,
        }
    }
}

/// A failed attempt: retry with backoff while retries remain, else apply
/// the plan's action. Webhooks say each step. Returns the bill's new status.
pub(crate) async fn fail(
    conn: &mut PgConnection,
    mut bill: BillRow,
    mut execution: Option<ExecutionRow>,
    retryable: bool,
    reason: String,
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<BillStatus, HandleError> {
    bill.last_error = Some(reason);
    bill.lease_owner = None;
    bill.lease_expires_at = None;
    bill.updated_at = now;
    if bill.amount_due.is_zero() {
        // A late success of an earlier bill took everything this one still
        // had to collect while its debit was out: nothing to ask again.
        let webhook = paid_without_debit(conn, &mut bill, execution.as_ref(), now).await?;
        store::outbox::enqueue(conn, &webhook, bill.execution_id.as_deref()).await?;
        return Ok(BillStatus::Paid);
    }
    let attempt = bill.attempt.max(1) as u32;
    let decision = after_failure(attempt, bill.max_retry.max(0) as u32, retryable);
    if decision == AfterFailure::Retry {
        let delay = Duration::from_std(retry_delay(retry, attempt)).unwrap_or(Duration::hours(1));
        bill.status = transition(bill.status, BillEvent::RetryScheduled).map_err(|e| refused(&e))?;
        bill.next_attempt_at = Some(now + delay);
        store::bills::update(conn, &bill).await?;
        announce_bill(conn, EventName::TxnFailed, &bill, execution.as_ref(), now, None).await?;
        announce_bill(conn, EventName::RetryTxnScheduled, &bill, execution.as_ref(), now, None).await?;
        return Ok(bill.status);
    }
    bill.next_attempt_at = None;
    // Carrying over and revoking need an execution; a schedule's bill is written off.
    let action = match (bill.action_on_failure, &execution) {
        (action, Some(_)) => action,
        (_, None) => ActionOnFailure::Skip,
    };
    bill.status = transition(bill.status, BillEvent::GaveUp(action)).map_err(|e| refused(&e))?;
    let status = bill.status;
    store::bills::update(conn, &bill).await?;
    announce_bill(conn, EventName::TxnFailed, &bill, execution.as_ref(), now, None).await?;
    if decision == AfterFailure::RetriesExhausted {
        announce_bill(conn, EventName::TxnRetryExceeded, &bill, execution.as_ref(), now, None).await?;
    }
    match (bill.status, execution.as_mut()) {
        (BillStatus::CarriedOver, Some(e)) => {
            e.carried_amount = e
                .carried_amount
                .checked_add(bill.amount_due)
                .ok_or_else(|| overflow("carrying the unpaid amount over"))?;
            store::executions::save_billing_state(conn, e, now).await?;
            // Where the carry-over stands among the execution's bills: a late
            // success of this bill finds the amount again from here.
            store::bills::mark_carried(conn, &bill.id).await?;
        }
        (BillStatus::Failed, Some(e)) => {
            e.status = ExecutionStatus::Inactive;
            e.next_bill_at = None;
            store::executions::save_billing_state(conn, e, now).await?;
            // A late success of this bill activates the execution again.
            store::bills::mark_revoked_by(conn, &e.id, &bill.id).await?;
            store::bills::cancel_open(conn, &e.id, &bill.id, now).await?;
            store::plan_changes::give_up_cancelled(conn, &e.id, now).await?;
            let content = json!({ "billing_execution_info": crate::protocol::documents::execution_summary(e), "reason": "REVOKED_AFTER_FAILED_DEBIT", "bill_id": bill.id });
            let webhook =
                crate::domain::webhook::Webhook::new(EventName::ExecutionDeactivated, &e.merchant_id, now, content);
            store::outbox::enqueue(conn, &webhook, Some(&e.id)).await?;
        }
        _ => {
            announce_bill(conn, EventName::TxnSkipped, &bill, execution.as_ref(), now, None).await?;
        }
    }
    if bill.kind == BillKind::Proration {
        super::proration::on_failed(conn, &bill, now).await?;
    }
    Ok(status)
}

/// A PROCESSING bill whose result never came: a retryable failure.
pub(crate) async fn time_out(
    conn: &mut PgConnection,
    bill: BillRow,
    retry: &RetrySettings,
    now: DateTime<Utc>,
) -> Result<BillStatus, HandleError> {
    let execution = lock_execution_of(conn, &bill).await?;
    if let Some(request_id) = &bill.request_id {
        store::bills::record_result(
            conn,
            request_id,
            AttemptStatus::Timeout,
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
