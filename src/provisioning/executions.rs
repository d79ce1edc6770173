//! `create`, `get`, `list`, `update_status`, `add_credit`.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::outcome::{Outcome, already_exists, not_found};
use crate::billing::credit::GrantTerms;
use crate::domain::catalog::PlanModel;
use crate::domain::execution::{ExecutionStatus, StatusEvent};
use crate::domain::ids::{check_id, new_execution_id};
use crate::domain::ledger::{PRIORITIES, check_grant};
use crate::domain::period::check_date_window;
use crate::domain::pricing::Pricing;
use crate::domain::thresholds::check_alerts;
use crate::domain::webhook::{EventName, Webhook};
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::documents;
use crate::protocol::provisioning::{
    AddCredit, ChangePlan, CreateExecution, ExecutionRef, ListExecutions, MetricOverride, Proration, SetAlerts,
    UpdateStatus,
};
use crate::store;
use crate::store::catalog::PlanRow;
use crate::store::catalog::{metric_spec, plan_metrics};
use crate::store::executions::ExecutionRow;

/// When the scheduler first bills an execution that becomes active now.
pub(crate) fn first_bill_at(row: &ExecutionRow, plan: &PlanRow) -> Option<DateTime<Utc>> {
    let spec = plan.spec();
    let schedule = crate::billing::issue::basis(row, plan).schedule();
    crate::billing::first_bill_at(&schedule, spec.plan_interval, spec.plan_type, spec.plan_model)
}

/// Reference of the ledger grant made by `create`'s free-tier `amount`.
pub(crate) const FREE_TIER_REFERENCE: &str = "free_tier";

/// The execution document with its plan, metrics and live usage at `now`.
pub(crate) async fn execution_document(
    conn: &mut PgConnection,
    row: &ExecutionRow,
    now: DateTime<Utc>,
) -> Result<Value, HandleError> {
    let plan = store::catalog::require_plan(conn, &row.merchant_id, &row.plan_id, "plan_id").await?;
    let metrics = plan_metrics(conn, row, &plan).await?;
    let specs = crate::usage::effective_metrics(&metrics, &row.metric_info)?;
    let basis = row.period_basis(plan.calendar());
    let usage = crate::usage::live_usage(conn, &row.id, &basis, &specs, now).await?;
    let plan_info = documents::plan(&plan, &metrics, &row.metric_info, Some(&usage));
    Ok(documents::execution(row, plan_info))
}

/// A billing start: a date or an RFC 3339 time within the window of
/// [`check_date_window`] (a start of 1900 is refused, not caught up).
fn parse_start_date(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Rejection> {
    let start = match DateTime::parse_from_rfc3339(value) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => NaiveDate::parse_from_str(value, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc()),
    }
    .ok_or_else(|| Rejection::field("billing_start_date", "must be a date (2026-01-31) or an RFC 3339 time"))?;
    check_date_window(start.date_naive(), now.date_naive()).map_err(|p| Rejection::field("billing_start_date", p))?;
    Ok(start)
}

fn check_optional_id(field: &str, value: &Option<String>) -> Result<(), Rejection> {
    match value {
        Some(v) => check_id(v).map_err(|p| Rejection::field(field, p)),
        None => Ok(()),
    }
}

/// Validates `metric_info` against the plan and the catalog; returns what is stored.
async fn metric_overrides(
    conn: &mut PgConnection,
    merchant_id: &str,
    plan: &PlanRow,
    overrides: Option<Vec<MetricOverride>>,
) -> Result<Value, HandleError> {
    let Some(overrides) = overrides.filter(|o| !o.is_empty()) else {
        return Ok(json!([]));
    };
    if plan.plan_model != PlanModel::Variable {
        return Err(Rejection::field(
            "metric_info",
            format_args!(
                "is only accepted for VARIABLE plans; plan '{}' is {}",
                plan.plan_id, plan.plan_model
            ),
        )
        .into());
    }
    let plan_currency = &plan.plan_currency;
    let mut stored = Vec::with_capacity(overrides.len());
    for (i, over) in overrides.into_iter().enumerate() {
        let field = format!("metric_info[{i}]");
        check_id(&over.metric_id).map_err(|p| Rejection::field(&format!("{field}.metric_id"), p))?;
        if stored.iter().any(|s: &Value| s["metric_id"] == over.metric_id.as_str()) {
            return Err(Rejection::field(
                &format!("{field}.metric_id"),
                format_args!("repeats '{}'", over.metric_id),
            )
            .into());
        }
        let metric = store::catalog::find_metric(conn, merchant_id, &over.metric_id)
            .await?
            .ok_or_else(|| {
                not_found(
                    ErrorCode::MetricNotFound,
                    &format!("{field}.metric_id"),
                    &over.metric_id,
                )
            })?;
        if metric_spec(&metric)?.currency != *plan_currency {
            return Err(Rejection::field(
                &format!("{field}.metric_id"),
                format_args!("is priced in {}, the plan in {}", metric.currency, plan_currency),
            )
            .into());
        }
        let spec = metric_spec(&metric)?;
        let terms = over.terms();
        // Free units the customer's prices do not name stay the metric's
        // (only for the types that have them).
        let free_units = over.free_units.unwrap_or(if over.pricing_type.has_tiers() {
            metric.free_units
        } else {
            Decimal::ZERO
        });
        let price = Pricing::build(
            over.pricing_type,
            over.pricing_model,
            over.package_size,
            free_units,
            terms,
        )
        .map_err(|e| Rejection::new(ErrorCode::InvalidField, format!("{field}.{e}")))?;
        crate::domain::catalog::check_pricing_fits(spec.aggregation_type, &price)
            .map_err(|message| Rejection::field(&format!("{field}.pricing_type"), message))?;
        let mut doc = serde_json::to_value(&price)
            .map_err(|e| HandleError::Rejected(Rejection::new(ErrorCode::InternalError, e.to_string())))?;
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("metric_id".into(), Value::String(over.metric_id));
        }
        stored.push(doc);
    }
    Ok(Value::Array(stored))
}

fn webhook(event: EventName, row: &ExecutionRow, now: DateTime<Utc>, extra: Option<(&str, Value)>) -> Webhook {
    let mut content = json!({ "billing_execution_info": documents::execution_summary(row) });
    if let (Some((key, value)), Some(obj)) = (extra, content.as_object_mut()) {
        obj.insert(key.to_string(), value);
    }
    Webhook::new(event, &row.merchant_id, now, content)
}

async fn announce(
    conn: &mut PgConnection,
    event: EventName,
    row: &ExecutionRow,
    now: DateTime<Utc>,
    extra: Option<(&str, Value)>,
) -> Result<(), sqlx::Error> {
    store::outbox::enqueue(conn, &webhook(event, row, now, extra), Some(&row.id)).await
}

/// Grants credit through the ledger and announces it; `row` follows the balance.
async fn grant(
    conn: &mut PgConnection,
    row: &mut ExecutionRow,
    amount: Decimal,
    reference_id: &str,
    terms: GrantTerms,
    currency: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let entry = crate::billing::credit::grant(conn, row, amount, reference_id, terms, now).await?;
    let mut content = credit_content(amount, reference_id, entry.balance_after, currency);
    if let Some(obj) = content.as_object_mut() {
        obj.insert("grant_id".into(), json!(entry.grant_id));
        obj.insert("priority".into(), json!(terms.priority));
        obj.insert("expires_at".into(), json!(terms.expires_at.map(documents::timestamp)));
    }
    announce(
        conn,
        EventName::ExecutionCreditEvent,
        row,
        now,
        Some(("credit", content)),
    )
    .await
}

fn credit_content(amount: Decimal, reference_id: &str, balance: Decimal, currency: &str) -> Value {
    json!({
        "amount": documents::num(amount),
        "reference_id": reference_id,
        "balance": documents::num(balance),
        "currency": currency,
    })
}

async fn reply_with(
    conn: &mut PgConnection,
    merchant_id: &str,
    row: &ExecutionRow,
    now: DateTime<Utc>,
    announced: bool,
) -> Result<Outcome, HandleError> {
    let doc = execution_document(conn, row, now).await?;
    Ok(Outcome {
        response: documents::success(merchant_id, doc),
        announced,
    })
}

pub(super) async fn create(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    c: CreateExecution,
) -> Result<Outcome, HandleError> {
    check_id(&c.plan_id).map_err(|p| Rejection::field("plan_id", p))?;
    check_id(&c.customer_id).map_err(|p| Rejection::field("customer_id", p))?;
    check_optional_id("merchant_ref_id", &c.merchant_ref_id)?;
    check_optional_id("token", &c.token)?;
    check_optional_id("mandate_id", &c.mandate_id)?;
    let start = c
        .billing_start_date
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| parse_start_date(s, now))
        .transpose()?;

    // The merchant's reference makes `create` idempotent: a repeat answers
    // with the execution it made the first time, and announces nothing.
    if let Some(reference) = &c.merchant_ref_id
        && let Some(existing) = store::executions::find_by_ref(conn, merchant_id, reference).await?
    {
        return repeat_of(conn, merchant_id, now, existing, &c).await;
    }

    let plan = store::catalog::require_plan(conn, merchant_id, &c.plan_id, "plan_id").await?;
    let plan_currency = plan.spec().plan_currency;
    if store::customers::find(conn, merchant_id, &c.customer_id)
        .await?
        .is_none()
    {
        return Err(HandleError::Rejected(Rejection::new(
            ErrorCode::CustomerNotFound,
            format!(
                "customer_id '{}' does not exist for this merchant; create it with create_customer first",
                c.customer_id
            ),
        )));
    }
    let credit = c.amount.unwrap_or(Decimal::ZERO);
    check_grant("amount", credit, plan_currency.minor_units(), true)?;
    let metric_info = metric_overrides(conn, merchant_id, &plan, c.metric_info.clone()).await?;
    let usage_alerts = check_alerts(c.usage_alerts.as_deref().unwrap_or_default(), &plan_currency)?;
    let status = c.status.unwrap_or(ExecutionStatus::Active);
    let active = status == ExecutionStatus::Active;

    let row = ExecutionRow {
        id: new_execution_id(),
        merchant_id: merchant_id.to_string(),
        customer_id: c.customer_id.clone(),
        plan_id: c.plan_id.clone(),
        merchant_ref_id: c.merchant_ref_id.clone(),
        status,
        credit_balance: Decimal::ZERO,
        metric_info,
        billing_start_date: start.or(active.then_some(now)),
        token: c.token.clone(),
        mandate_id: c.mandate_id.clone(),
        activated_at: active.then_some(now),
        billed_until: None,
        next_bill_at: None,
        carried_amount: Decimal::ZERO,
        plan_amount: None,
        pending_plan_id: None,
        pending_plan_amount: None,
        usage_alerts: json!(usage_alerts.into_iter().map(documents::num).collect::<Vec<_>>()),
        progressive_period_start: None,
        progressive_level: None,
        progressive_due_at: None,
        prorated_period_start: None,
        created_at: now,
        updated_at: now,
    };
    let row = ExecutionRow {
        next_bill_at: active.then(|| first_bill_at(&row, &plan)).flatten(),
        ..row
    };
    let Some(mut row) = store::executions::insert(conn, &row).await? else {
        // Another process created it with the same reference meanwhile.
        let reference = c.merchant_ref_id.clone().unwrap_or_default();
        let existing = store::executions::find_by_ref(conn, merchant_id, &reference)
            .await?
            .ok_or_else(|| HandleError::Transient("execution vanished during create".into()))?;
        return repeat_of(conn, merchant_id, now, existing, &c).await;
    };
    announce(conn, EventName::ExecutionCreated, &row, now, None).await?;
    if credit > Decimal::ZERO {
        let terms = GrantTerms::default();
        grant(
            conn,
            &mut row,
            credit,
            FREE_TIER_REFERENCE,
            terms,
            plan_currency.as_str(),
            now,
        )
        .await?;
    }
    reply_with(conn, merchant_id, &row, now, true).await
}

async fn repeat_of(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    existing: ExecutionRow,
    c: &CreateExecution,
) -> Result<Outcome, HandleError> {
    if existing.plan_id != c.plan_id || existing.customer_id != c.customer_id {
        return Err(already_exists(
            "merchant_ref_id",
            existing.merchant_ref_id.as_deref().unwrap_or_default(),
            &format!(" (customer '{}', plan '{}')", existing.customer_id, existing.plan_id),
        ));
    }
    reply_with(conn, merchant_id, &existing, now, false).await
}

pub(super) async fn get(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    c: ExecutionRef,
) -> Result<Outcome, HandleError> {
    let row = store::executions::find(conn, merchant_id, &c.billing_execution_info_id)
        .await?
        .ok_or_else(|| {
            not_found(
                ErrorCode::ExecutionNotFound,
                "billing_execution_info_id",
                &c.billing_execution_info_id,
            )
        })?;
    reply_with(conn, merchant_id, &row, now, false).await
}

/// Page size of `list` when the sender names none.
pub(crate) const DEFAULT_LIST_LIMIT: u32 = 100;

pub(super) async fn list(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    c: ListExecutions,
) -> Result<Outcome, HandleError> {
    if store::customers::find(conn, merchant_id, &c.customer_id)
        .await?
        .is_none()
    {
        return Err(not_found(ErrorCode::CustomerNotFound, "customer_id", &c.customer_id));
    }
    let limit = c.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    let mut rows = store::executions::list_for_customer(
        conn,
        merchant_id,
        &c.customer_id,
        c.cursor.as_deref(),
        i64::from(limit) + 1,
    )
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let mut docs = Vec::with_capacity(rows.len());
    for row in &rows {
        docs.push(execution_document(conn, row, now).await?);
    }
    let next_cursor = more.then(|| rows.last().map(|r| r.id.clone())).flatten();
    let body = json!({ "customer_id": c.customer_id, "billing_execution_info": docs, "next_cursor": next_cursor });
    Ok(Outcome::quiet(documents::success(merchant_id, body)))
}

async fn lock_execution(conn: &mut PgConnection, merchant_id: &str, id: &str) -> Result<ExecutionRow, HandleError> {
    store::executions::lock(conn, merchant_id, id)
        .await?
        .ok_or_else(|| not_found(ErrorCode::ExecutionNotFound, "billing_execution_info_id", id))
}

pub(super) async fn update_status(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    c: UpdateStatus,
) -> Result<Outcome, HandleError> {
    let row = lock_execution(conn, merchant_id, &c.billing_execution_info_id).await?;
    let from = row.status;
    let Some(event) = from.transition(c.status)? else {
        return reply_with(conn, merchant_id, &row, now, false).await;
    };
    let mut row = store::executions::set_status(conn, &row.id, c.status.as_str(), now).await?;
    schedule_billing(conn, &mut row, from, event, now).await?;
    let name = match event {
        StatusEvent::Activated => EventName::ExecutionActivated,
        StatusEvent::Deactivated => EventName::ExecutionDeactivated,
    };
    announce(conn, name, &row, now, None).await?;
    reply_with(conn, merchant_id, &row, now, true).await
}

/// `change_plan`: by default the new plan takes effect at the next period
/// boundary; usage up to it is billed on the old plan. An execution that
/// has not started billing moves at once. With `IMMEDIATE`, the rest of
/// the period is prorated (see [`crate::billing::proration`]).
pub(super) async fn change_plan(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    notice: chrono::Duration,
    c: ChangePlan,
) -> Result<Outcome, HandleError> {
    let mut row = lock_execution(conn, merchant_id, &c.billing_execution_info_id).await?;
    let next = &c.updated_fields.plan_id;
    check_id(next).map_err(|p| Rejection::field("updated_fields.plan_id", p))?;
    if c.proration == Some(Proration::Immediate) {
        let request_id = c
            .request_id
            .as_deref()
            .ok_or_else(|| Rejection::field("request_id", "is required with proration IMMEDIATE"))?;
        let target = crate::billing::proration::Target {
            plan_id: next,
            plan_amount: c.updated_fields.plan_amount,
        };
        let changed = crate::billing::proration::change_now(conn, row, request_id, target, now, notice).await?;
        let mut doc = execution_document(conn, &changed.execution, now).await?;
        if let Some(obj) = doc.as_object_mut() {
            obj.insert(
                "plan_change".into(),
                crate::billing::proration::change_document(&changed.change),
            );
            let bill = match &changed.bill {
                Some(b) => crate::billing::bill_document(b, &store::bills::lines(conn, &b.id).await?),
                None => Value::Null,
            };
            obj.insert("bill".into(), bill);
        }
        return Ok(Outcome {
            response: documents::success(merchant_id, doc),
            announced: changed.announced,
        });
    }
    let current = store::catalog::require_plan(conn, merchant_id, &row.plan_id, "plan_id").await?;
    let target = store::catalog::require_plan(conn, merchant_id, next, "updated_fields.plan_id").await?;
    let (current, target_spec) = (current.spec(), target.spec());
    if current.plan_currency != target_spec.plan_currency {
        return Err(Rejection::field(
            "updated_fields.plan_id",
            format_args!(
                "is priced in {}, the execution in {}",
                target_spec.plan_currency, current.plan_currency
            ),
        )
        .into());
    }
    if let Some(amount) = c.updated_fields.plan_amount {
        check_grant(
            "updated_fields.plan_amount",
            amount,
            target_spec.plan_currency.minor_units(),
            true,
        )?;
    }
    let started = row.status != ExecutionStatus::Created || row.billed_until.is_some();
    if started {
        row.pending_plan_id = Some(next.clone());
        row.pending_plan_amount = c.updated_fields.plan_amount;
    } else {
        row.plan_id = next.clone();
        row.plan_amount = c.updated_fields.plan_amount;
        row.pending_plan_id = None;
        row.pending_plan_amount = None;
    }
    store::executions::save_billing_state(conn, &row, now).await?;
    reply_with(conn, merchant_id, &row, now, false).await
}

/// Moves the billing cursor with the status. The first activation starts
/// billing. Deactivation keeps the open period's end: the scheduler still
/// bills the usage counted in it when it closes (usage is never lost), and
/// nothing after. Reactivation after that resumes from the period containing
/// `now`: periods spent wholly inactive are not billed.
async fn schedule_billing(
    conn: &mut PgConnection,
    row: &mut ExecutionRow,
    from: ExecutionStatus,
    event: StatusEvent,
    now: DateTime<Utc>,
) -> Result<(), HandleError> {
    let plan = store::catalog::require_plan(conn, &row.merchant_id, &row.plan_id, "plan_id").await?;
    let first_activation =
        from == ExecutionStatus::Created || (row.activated_at == Some(now) && row.billed_until.is_none());
    match event {
        StatusEvent::Deactivated => {}
        StatusEvent::Activated if first_activation => {
            row.next_bill_at = first_bill_at(row, &plan);
        }
        // Reactivated before the open period closed: it goes on as it was.
        StatusEvent::Activated if row.next_bill_at.is_some() => {}
        StatusEvent::Activated => {
            let spec = plan.spec();
            let schedule = crate::billing::issue::basis(row, &plan).schedule();
            let period = schedule.period_containing(now);
            if row.billed_until.is_none_or(|b| b < period.start) {
                row.billed_until = Some(period.start);
            }
            row.next_bill_at = if crate::billing::bills_on_present(spec.plan_interval, spec.plan_model)
                || spec.plan_interval == crate::domain::catalog::PlanInterval::Onetime
            {
                None
            } else {
                period.end
            };
        }
    }
    store::executions::save_billing_state(conn, row, now).await?;
    Ok(())
}

pub(super) async fn add_credit(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    c: AddCredit,
) -> Result<Outcome, HandleError> {
    check_id(&c.reference_id).map_err(|p| Rejection::field("reference_id", p))?;
    if c.reference_id == FREE_TIER_REFERENCE {
        return Err(Rejection::field(
            "reference_id",
            format_args!("'{FREE_TIER_REFERENCE}' is reserved for the credit granted by create"),
        )
        .into());
    }
    let terms = grant_terms(&c, now)?;
    let mut row = lock_execution(conn, merchant_id, &c.billing_execution_info_id).await?;
    let plan = store::catalog::require_plan(conn, merchant_id, &row.plan_id, "plan_id").await?;
    let plan_currency = plan.spec().plan_currency;
    check_grant("amount", c.amount, plan_currency.minor_units(), false)?;
    // The reference makes a grant idempotent: the same grant twice is one grant.
    if let Some(g) = store::ledger::grant_by_reference(conn, &row.id, &c.reference_id).await? {
        if g.amount != c.amount || g.priority != terms.priority || g.expires_at != terms.expires_at {
            return Err(already_exists(
                "reference_id",
                &c.reference_id,
                &format!(" (a grant of {} on other terms)", g.amount),
            ));
        }
        return reply_with(conn, merchant_id, &row, now, false).await;
    }
    grant(
        conn,
        &mut row,
        c.amount,
        &c.reference_id,
        terms,
        plan_currency.as_str(),
        now,
    )
    .await?;
    reply_with(conn, merchant_id, &row, now, true).await
}

/// `set_alerts`: replaces the execution's usage alerts. Those already
/// announced in the open period stay announced.
pub(super) async fn set_alerts(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    c: SetAlerts,
) -> Result<Outcome, HandleError> {
    let mut row = lock_execution(conn, merchant_id, &c.billing_execution_info_id).await?;
    let plan = store::catalog::require_plan(conn, merchant_id, &row.plan_id, "plan_id").await?;
    let alerts = check_alerts(
        c.usage_alerts.as_deref().unwrap_or_default(),
        &plan.spec().plan_currency,
    )?;
    row.usage_alerts = json!(alerts.into_iter().map(documents::num).collect::<Vec<_>>());
    store::executions::save_billing_state(conn, &row, now).await?;
    reply_with(conn, merchant_id, &row, now, false).await
}

/// The priority and expiry of a grant: a priority within [`PRIORITIES`],
/// an expiry after `now` and within the window of [`check_date_window`].
fn grant_terms(c: &AddCredit, now: DateTime<Utc>) -> Result<GrantTerms, Rejection> {
    let priority = c.priority.unwrap_or(crate::domain::ledger::DEFAULT_PRIORITY);
    if !PRIORITIES.contains(&priority) {
        return Err(Rejection::field(
            "priority",
            format_args!("must be from {} to {}", PRIORITIES.start(), PRIORITIES.end()),
        ));
    }
    let expires_at = match c.expires_at.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(value) => {
            let at = DateTime::parse_from_rfc3339(value)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| Rejection::field("expires_at", "must be an RFC 3339 time like 2026-12-31T00:00:00Z"))?;
            if at <= now {
                return Err(Rejection::field("expires_at", "must be in the future"));
            }
            check_date_window(at.date_naive(), now.date_naive()).map_err(|p| Rejection::field("expires_at", p))?;
            Some(at)
        }
    };
    Ok(GrantTerms { priority, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
            .expect("now")
            .to_utc()
    }

    #[test]
    fn start_dates_take_two_forms() {
        let now = now();
        assert_eq!(
            parse_start_date("2026-01-31", now).expect("date").to_rfc3339(),
            "2026-01-31T00:00:00+00:00"
        );
        assert_eq!(
            parse_start_date("2026-01-31T10:00:00+05:30", now)
                .expect("time")
                .to_rfc3339(),
            "2026-01-31T04:30:00+00:00"
        );
        assert!(parse_start_date("31/01/2026", now).is_err());
    }

    #[test]
    fn start_dates_lie_within_the_window() {
        let now = now();
        let err = parse_start_date("1900-01-01", now).expect_err("a century ago");
        assert!(
            err.message.starts_with("billing_start_date must lie within"),
            "{}",
            err.message
        );
        assert!(parse_start_date("2025-02-01", now).is_ok());
        assert!(parse_start_date("2025-01-30", now).is_err());
        assert!(parse_start_date("2036-02-01", now).is_ok());
        assert!(parse_start_date("2036-02-02", now).is_err());
    }
}
