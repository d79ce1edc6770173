//! Plan changes with proration (`preview_prorated_amount`, `change_plan`
//! with `IMMEDIATE`): the rest of the open period is priced on the new
//! plan, less what of the current plan amount was paid and not used. A
//! positive net is billed (`PRORATION`) and the plan switches once that
//! bill is paid; a negative net is granted as credit and the plan switches
//! at once.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::credit::{CreditReason, GivenBack, given_back_webhook};
use super::issue::{BillBatch, NewBill, plan_amount, prepare};
use crate::domain::bill::{BillKind, BillStatus, Charge, LineKind};
use crate::domain::catalog::{ActionOnFailure, PlanInterval, PlanType, bills_on_present};
use crate::domain::execution::ExecutionStatus;
use crate::domain::proration::{ChangeStatus, prorate};
use crate::domain::webhook::{EventName, Webhook};
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::documents::{execution_summary, num, timestamp};
use crate::store;
use crate::store::bills::BillRow;
use crate::store::executions::ExecutionRow;
use crate::store::plan_changes::PlanChangeRow;

/// The plan asked for, and the amount agreed for this execution if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub plan_id: &'a str,
    pub plan_amount: Option<Decimal>,
}

fn invalid_state(message: String) -> HandleError {
    Rejection::new(ErrorCode::InvalidState, message).into()
}

/// The figures of a change of `execution` to `target` at `now`, as a
/// `PREVIEWED` change, after every check that the change can be made.
async fn figures(
    conn: &mut PgConnection,
    execution: &ExecutionRow,
    request_id: &str,
    target: Target<'_>,
    now: DateTime<Utc>,
) -> Result<PlanChangeRow, HandleError> {
    let current = store::catalog::require_plan(conn, &execution.merchant_id, &execution.plan_id, "plan_id").await?;
    let next =
        store::catalog::require_plan(conn, &execution.merchant_id, target.plan_id, "updated_fields.plan_id").await?;
    let (spec, next_spec) = (current.spec(), next.spec());
    if execution.status != ExecutionStatus::Active {
        return Err(invalid_state(format!(
            "billing_execution_info_id '{}' is {}; a prorated change needs an ACTIVE execution",
            execution.id,
            execution.status.as_str()
        )));
    }
    if bills_on_present(spec.plan_interval, spec.plan_model) || spec.plan_interval == PlanInterval::Onetime {
        return Err(invalid_state(format!(
            "plan '{}' has no billing period to prorate ({}); change it with NEXT_BOUNDARY",
            spec.plan_id, spec.plan_interval
        )));
    }
    let same = |what: &str, a: String, b: String| {
        if a == b {
            Ok(())
        } else {
            Err(Rejection::field(
                "updated_fields.plan_id",
                format_args!(
                    "has {what} {b}, the current plan {a}; a prorated change keeps the {what} (use NEXT_BOUNDARY)"
                ),
            ))
        }
    };
    same(
        "currency",
        spec.plan_currency.to_string(),
        next_spec.plan_currency.to_string(),
    )?;
    same("plan_type", spec.plan_type.to_string(), next_spec.plan_type.to_string())?;
    same(
        "plan_interval",
        spec.plan_interval.to_string(),
        next_spec.plan_interval.to_string(),
    )?;
    same(
        "billing day",
        format!("{} {:?}", spec.plan_rule_type, spec.plan_rule_value),
        format!("{} {:?}", next_spec.plan_rule_type, next_spec.plan_rule_value),
    )?;
    let currency = &spec.plan_currency;
    if let Some(amount) = target.plan_amount
        && (amount.is_sign_negative() || !currency.fits_minor_units(amount))
    {
        return Err(Rejection::field(
            "updated_fields.plan_amount",
            format_args!("must be zero or more, in whole minor units of {currency}"),
        )
        .into());
    }
    let schedule = super::issue::basis(execution, &current).schedule();
    let start = execution.billed_until.unwrap_or(schedule.start);
    let end = execution
        .next_bill_at
        .filter(|end| *end > now && start <= now)
        .ok_or_else(|| {
            invalid_state(format!(
                "billing_execution_info_id '{}' has no open billing period now (billing has not started, or the \
                 last period is still being billed); try again after the next billing pass",
                execution.id
            ))
        })?;
    let prepaid = spec.plan_type == PlanType::PreDebit || execution.prorated_period_start == Some(start);
    let from_amount = plan_amount(execution, &spec);
    let new_amount = target.plan_amount.unwrap_or(next_spec.plan_amount);
    let p = prorate(currency, start, end, now, from_amount, prepaid, new_amount)
        .ok_or_else(|| Rejection::overflow("the prorated amount"))?;
    Ok(PlanChangeRow {
        merchant_id: execution.merchant_id.clone(),
        request_id: request_id.to_string(),
        execution_id: execution.id.clone(),
        from_plan_id: execution.plan_id.clone(),
        from_amount,
        to_plan_id: target.plan_id.to_string(),
        to_plan_amount: target.plan_amount,
        period_start: start,
        period_end: end,
        effective_at: now,
        remaining_fraction: p.remaining_fraction,
        unused_amount: p.unused_amount,
        new_amount: p.new_amount,
        net_amount: p.net_amount,
        currency: currency.to_string(),
        status: ChangeStatus::Previewed,
        bill_id: None,
        created_at: now,
        updated_at: now,
    })
}

/// Digits of `remaining_fraction` shown (the amounts use all of them).
const FRACTION_DIGITS: u32 = 6;

/// A change as answers and webhooks show it.
pub(crate) fn change_document(c: &PlanChangeRow) -> Value {
    json!({
        "request_id": c.request_id,
        "billing_execution_info_id": c.execution_id,
        "status": c.status,
        "from_plan_id": c.from_plan_id,
        "from_plan_amount": num(c.from_amount),
        "plan_id": c.to_plan_id,
        "plan_amount": c.to_plan_amount.map(num),
        "period_start": timestamp(c.period_start),
        "period_end": timestamp(c.period_end),
        "effective_at": timestamp(c.effective_at),
        "remaining_fraction": num(c.remaining_fraction.round_dp(FRACTION_DIGITS).normalize()),
        "unused_amount": num(c.unused_amount),
        "new_amount": num(c.new_amount),
        "net_amount": num(c.net_amount),
        "currency": c.currency,
        "bill_id": c.bill_id,
    })
}

/// Refuses a request id already used for another change.
fn check_same(existing: &PlanChangeRow, execution_id: &str, target: Target<'_>) -> Result<(), HandleError> {
    if existing.execution_id == execution_id
        && existing.to_plan_id == target.plan_id
        && existing.to_plan_amount == target.plan_amount
    {
        return Ok(());
    }
    Err(Rejection::new(
        ErrorCode::AlreadyExists,
        format!(
            "request_id '{}' was used for another change (execution '{}', plan '{}')",
            existing.request_id, existing.execution_id, existing.to_plan_id
        ),
    )
    .into())
}

/// `preview_prorated_amount`: the figures, changing nothing; the same
/// `request_id` again answers the same figures.
pub(crate) async fn preview(
    conn: &mut PgConnection,
    merchant_id: &str,
    execution_id: &str,
    request_id: &str,
    target: Target<'_>,
    now: DateTime<Utc>,
) -> Result<Value, HandleError> {
    if let Some(existing) = store::plan_changes::find(conn, merchant_id, request_id).await? {
        check_same(&existing, execution_id, target)?;
        return Ok(change_document(&existing));
    }
    let execution = store::executions::find(conn, merchant_id, execution_id)
        .await?
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::ExecutionNotFound,
                format!("billing_execution_info_id '{execution_id}' does not exist for this merchant"),
            )
        })?;
    let change = figures(conn, &execution, request_id, target, now).await?;
    store::plan_changes::save(conn, &change).await?;
    Ok(change_document(&change))
}

/// What `change_plan` with `IMMEDIATE` did.
pub(crate) struct Changed {
    pub execution: ExecutionRow,
    pub change: PlanChangeRow,
    pub bill: Option<BillRow>,
    /// Whether anything was written (a repeat writes nothing).
    pub announced: bool,
}

/// `change_plan` with `IMMEDIATE`, on a locked execution.
pub(crate) async fn change_now(
    conn: &mut PgConnection,
    mut execution: ExecutionRow,
    request_id: &str,
    target: Target<'_>,
    now: DateTime<Utc>,
    notice: Duration,
) -> Result<Changed, HandleError> {
    let existing = store::plan_changes::find(conn, &execution.merchant_id, request_id).await?;
    if let Some(existing) = existing.as_ref() {
        check_same(existing, &execution.id, target)?;
        if existing.status != ChangeStatus::Previewed {
            let bill = match &existing.bill_id {
                Some(id) => store::bills::find_of_merchant(conn, &execution.merchant_id, id).await?,
                None => None,
            };
            return Ok(Changed {
                execution,
                change: existing.clone(),
                bill,
                announced: false,
            });
        }
    }
    if let Some(waiting) = store::plan_changes::waiting(conn, &execution.id).await? {
        return Err(invalid_state(format!(
            "plan change '{}' to plan '{}' is waiting for its bill {} to be paid",
            waiting.request_id,
            waiting.to_plan_id,
            waiting.bill_id.unwrap_or_default()
        )));
    }
    let mut change = figures(conn, &execution, request_id, target, now).await?;
    if let Some(existing) = existing {
        change.created_at = existing.created_at;
    }
    super::credit::expire(conn, &mut execution, now).await?;
    let mut batch = BillBatch::default();
    let mut bill = None;
    if change.net_amount > Decimal::ZERO {
        let plan = store::catalog::require_plan(conn, &execution.merchant_id, target.plan_id, "updated_fields.plan_id")
            .await?;
        // A change's bill that fails for good is written off: the execution
        // stays on its plan, nothing is carried over or revoked.
        let mut spec = plan.spec();
        spec.plan_action_on_failure = ActionOnFailure::Skip;
        let span = format!("{} to {}", timestamp(change.effective_at), timestamp(change.period_end));
        let mut charges = vec![Charge {
            kind: LineKind::ProratedPlanAmount,
            metric_id: None,
            quantity: Some(change.remaining_fraction.round_dp(FRACTION_DIGITS)),
            amount: change.new_amount,
            description: format!("{} prorated, {span}", change.to_plan_id),
        }];
        if change.unused_amount > Decimal::ZERO {
            charges.push(Charge {
                kind: LineKind::UnusedPlanAmount,
                metric_id: None,
                quantity: Some(change.remaining_fraction.round_dp(FRACTION_DIGITS)),
                amount: -change.unused_amount,
                description: format!("{} paid and not used, {span}", change.from_plan_id),
            });
        }
        let new = NewBill {
            kind: BillKind::Proration,
            key: format!("proration:{request_id}"),
            period_start: Some(change.effective_at),
            period_end: Some(change.period_end),
            charges,
            carries: false,
            credit_back: Decimal::ZERO,
        };
        let made = prepare(&mut execution, &spec, new, now, notice, &mut batch)?;
        change.bill_id = Some(made.id.clone());
        change.status = ChangeStatus::Pending;
        if made.status == BillStatus::Paid {
            batch
                .webhooks
                .push((apply(&mut execution, &mut change, now), Some(execution.id.clone())));
        }
        bill = Some(made);
    } else {
        if change.net_amount < Decimal::ZERO {
            let amount = -change.net_amount;
            let reference = format!("proration:{request_id}");
            let entry = super::credit::grant(conn, &mut execution, amount, &reference, Default::default(), now).await?;
            let credit = GivenBack {
                amount,
                reference_id: &reference,
                currency: &change.currency,
                reason: CreditReason::PlanChangeProration,
                bill_id: None,
                grant_id: entry.grant_id.as_deref().unwrap_or_default(),
            };
            let webhook = given_back_webhook(&execution, credit, now);
            batch.webhooks.push((webhook, Some(execution.id.clone())));
        }
        batch
            .webhooks
            .push((apply(&mut execution, &mut change, now), Some(execution.id.clone())));
    }
    store::plan_changes::save(conn, &change).await?;
    batch.executions.push(execution.clone());
    batch.write(conn, now).await?;
    Ok(Changed {
        execution,
        change,
        bill,
        announced: true,
    })
}

/// Switches the execution to the change's plan (in memory) and returns
/// the `BILLING_EXECUTION_PLAN_CHANGED` that announces it.
fn apply(execution: &mut ExecutionRow, change: &mut PlanChangeRow, now: DateTime<Utc>) -> Webhook {
    execution.plan_id = change.to_plan_id.clone();
    execution.plan_amount = change.to_plan_amount;
    execution.pending_plan_id = None;
    execution.pending_plan_amount = None;
    execution.prorated_period_start = Some(change.period_start);
    execution.updated_at = now;
    change.status = ChangeStatus::Applied;
    change.updated_at = now;
    let content = json!({
        "billing_execution_info": execution_summary(execution),
        "plan_change": change_document(change),
    });
    Webhook::new(EventName::ExecutionPlanChanged, &execution.merchant_id, now, content)
}

/// What a paid `PRORATION` bill did.
pub(crate) enum PaidChange {
    /// The plan switched; the webhook announces it.
    Applied(Webhook),
    /// Nothing to do (no change, or it was already made).
    Nothing,
    /// The change can no longer be made (its period is over, or the
    /// execution moved on): the money is to be given back as credit.
    TooLate,
}

/// A `PRORATION` bill was paid (by the gateway, on time or late): the
/// plan switches, if the change still can be made. The caller holds the
/// execution's lock and saves nothing of it; this saves the execution.
pub(crate) async fn on_paid(
    conn: &mut PgConnection,
    bill: &BillRow,
    execution: &mut ExecutionRow,
    now: DateTime<Utc>,
) -> Result<PaidChange, HandleError> {
    let Some(mut change) = store::plan_changes::of_bill(conn, &bill.id).await? else {
        return Ok(PaidChange::Nothing);
    };
    if change.status == ChangeStatus::Applied {
        return Ok(PaidChange::Nothing);
    }
    if execution.plan_id != change.from_plan_id
        || execution.status != ExecutionStatus::Active
        || now >= change.period_end
    {
        change.status = ChangeStatus::Failed;
        change.updated_at = now;
        store::plan_changes::save(conn, &change).await?;
        return Ok(PaidChange::TooLate);
    }
    let webhook = apply(execution, &mut change, now);
    store::executions::save_billing_state(conn, execution, now).await?;
    store::plan_changes::save(conn, &change).await?;
    Ok(PaidChange::Applied(webhook))
}

/// A `PRORATION` bill failed for good: the change is given up and the
/// execution stays on its plan.
pub(crate) async fn on_failed(conn: &mut PgConnection, bill: &BillRow, now: DateTime<Utc>) -> Result<(), HandleError> {
    if let Some(mut change) = store::plan_changes::of_bill(conn, &bill.id).await?
        && change.status == ChangeStatus::Pending
    {
        change.status = ChangeStatus::Failed;
        change.updated_at = now;
        store::plan_changes::save(conn, &change).await?;
    }
    Ok(())
}
