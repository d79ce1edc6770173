//! Issuing bills: closing due periods (catching up missed ones), billing
//! presented usage, and the common path every bill takes: carried amounts,
//! rounding, credit through the ledger, then a debit scheduled with notice.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::credit::{CreditReason, GivenBack, given_back_webhook};
use super::{bill_webhook, bills_on_present};
use crate::domain::bill::{BillKind, BillStatus, Charge, Line, LineKind, compute, minimum_commitment, rounded_total};
use crate::domain::catalog::{MetricSpec, PlanInterval, PlanModel, PlanSpec, PlanType};
use crate::domain::execution::ExecutionStatus;
use crate::domain::ids::new_execution_id;
use crate::domain::ledger::EntryKind;
use crate::domain::period::PeriodBasis;
use crate::domain::webhook::{EventName, Webhook};
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::documents::timestamp;
use crate::store;
use crate::store::bills::{BillRow, LineRow};
use crate::store::catalog::plan_metrics;
use crate::store::executions::ExecutionRow;
use crate::store::ledger::LedgerEntry;
use crate::usage::{PeriodRef, effective_metrics, period_usage};

/// Most periods one pass bills for one execution; the next pass goes on.
const MAX_CATCH_UP: usize = 64;

/// A bill about to be issued.
pub(super) struct NewBill {
    pub kind: BillKind,
    pub key: String,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub charges: Vec<Charge>,
    /// Whether an unpaid amount carried over goes into this bill (not into
    /// a plan change's bill, which is written off if it fails).
    pub carries: bool,
    /// Given back as credit before the bill takes its own: what interim
    /// bills billed beyond the period's closing charges.
    pub credit_back: Decimal,
}

impl NewBill {
    fn new(
        kind: BillKind,
        key: String,
        period_start: DateTime<Utc>,
        period_end: Option<DateTime<Utc>>,
        charges: Vec<Charge>,
    ) -> NewBill {
        NewBill {
            kind,
            key,
            period_start: Some(period_start),
            period_end,
            charges,
            carries: true,
            credit_back: Decimal::ZERO,
        }
    }
}

/// The plan an execution is on, with everything billing needs of it.
pub(crate) struct PlanView {
    pub(super) spec: PlanSpec,
    pub(super) row: store::catalog::PlanRow,
    metrics: HashMap<String, MetricSpec>,
    /// Metric ids in the plan's order (then the customer's extra ones).
    order: Vec<String>,
}

/// Plans already read in this pass, by merchant, plan and customer prices:
/// executions on one plan share one read.
#[derive(Default)]
pub(crate) struct PlanCache(HashMap<(String, String, String), std::sync::Arc<PlanView>>);

impl PlanCache {
    pub(super) async fn get(
        &mut self,
        conn: &mut PgConnection,
        execution: &ExecutionRow,
    ) -> Result<std::sync::Arc<PlanView>, HandleError> {
        let key = (
            execution.merchant_id.clone(),
            execution.plan_id.clone(),
            execution.metric_info.to_string(),
        );
        if let Some(view) = self.0.get(&key) {
            return Ok(view.clone());
        }
        let view = std::sync::Arc::new(plan_view(conn, execution).await?);
        self.0.insert(key, view.clone());
        Ok(view)
    }
}

async fn plan_view(conn: &mut PgConnection, execution: &ExecutionRow) -> Result<PlanView, HandleError> {
    let row = store::catalog::require_plan(conn, &execution.merchant_id, &execution.plan_id, "plan_id").await?;
    let metric_rows = plan_metrics(conn, execution, &row).await?;
    let order = metric_rows.iter().map(|m| m.metric_id.clone()).collect();
    let metrics = effective_metrics(&metric_rows, &execution.metric_info)?;
    Ok(PlanView {
        spec: row.spec(),
        row,
        metrics,
        order,
    })
}

/// The period layout of an execution on a plan.
pub(crate) fn basis(execution: &ExecutionRow, plan: &store::catalog::PlanRow) -> PeriodBasis {
    execution.period_basis(plan.calendar())
}

/// The plan amount this execution pays: its agreed amount, else the plan's.
pub(super) fn plan_amount(execution: &ExecutionRow, plan: &PlanSpec) -> Decimal {
    execution.plan_amount.unwrap_or(plan.plan_amount)
}

fn plan_amount_charge(
    execution: &ExecutionRow,
    plan: &PlanView,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    when: &str,
) -> Option<Charge> {
    let amount = plan_amount(execution, &plan.spec);
    if amount <= Decimal::ZERO || plan.spec.plan_model == PlanModel::UsageCalculation {
        return None;
    }
    let span = match to {
        Some(to) => format!("{} to {}", timestamp(from), timestamp(to)),
        None => format!("from {}", timestamp(from)),
    };
    Some(Charge {
        kind: LineKind::PlanAmount,
        metric_id: None,
        quantity: None,
        amount,
        description: format!("{} ({when}), {span}", plan.spec.plan_name),
    })
}

/// The `MINIMUM_COMMITMENT` line of a period `[from, to)` whose usage
/// lines are `usage` and whose plan amount (billed now or in advance) is
/// `plan_amount`, when the plan has a commitment they fall short of.
fn commitment(
    plan: &PlanSpec,
    usage: &[Charge],
    plan_amount: Option<&Charge>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Option<Charge> {
    let minimum = plan.minimum_commitment?;
    let counted: Vec<Decimal> = usage.iter().chain(plan_amount).map(|c| c.amount).collect();
    minimum_commitment(
        &plan.plan_currency,
        minimum,
        &counted,
        format!(
            "minimum commitment of {minimum} {}, {} to {}",
            plan.plan_currency,
            timestamp(from),
            timestamp(to)
        ),
    )
}

/// The plan amount billed in arrears for the period `[from, to)`: all of
/// it, or, when a plan change with proration took effect in the period
/// (the rest of it was billed in advance then), the old amount for the
/// time before the change.
async fn arrears_charge(
    conn: &mut PgConnection,
    execution: &mut ExecutionRow,
    plan: &PlanView,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Option<Charge>, HandleError> {
    let prorated = execution.prorated_period_start.take() == Some(from);
    let charge = plan_amount_charge(execution, plan, from, Some(to), "in arrears");
    if !prorated || plan.spec.plan_type != PlanType::PostDebit {
        return Ok(charge);
    }
    let Some(change) = store::plan_changes::first_applied(conn, &execution.id, from).await? else {
        return Ok(charge);
    };
    let amount =
        crate::domain::proration::elapsed_amount(from, change.period_end, change.effective_at, change.from_amount)
            .ok_or_else(|| Rejection::overflow("the plan amount before a plan change"))?;
    Ok(Some(Charge {
        kind: LineKind::PlanAmount,
        metric_id: None,
        quantity: None,
        amount,
        description: format!(
            "{} (in arrears) before the plan change of {}, {} to {}",
            change.from_plan_id,
            timestamp(change.effective_at),
            timestamp(from),
            timestamp(change.effective_at)
        ),
    }))
}

/// Takes what the interim bills of the period starting at `from` billed
/// out of its closing `charges` (a `PROGRESSIVE_BILLED` line), never more
/// than the charges come to; returns the rest, to be given back as credit
/// (usage that fell after an interim bill, through negative events).
async fn deduct_interim(
    conn: &mut PgConnection,
    execution: &mut ExecutionRow,
    plan: &PlanSpec,
    from: DateTime<Utc>,
    charges: &mut Vec<Charge>,
) -> Result<Decimal, HandleError> {
    if execution.progressive_period_start != Some(from) {
        return Ok(Decimal::ZERO);
    }
    execution.progressive_period_start = None;
    execution.progressive_level = None;
    let billed = store::bills::progressive_billed(conn, &execution.id, from).await?;
    if billed <= Decimal::ZERO {
        return Ok(Decimal::ZERO);
    }
    let charged = rounded_total(&plan.plan_currency, charges.iter().map(|c| c.amount))
        .ok_or_else(|| Rejection::overflow("the period's charges"))?;
    let taken = billed.min(charged);
    charges.push(Charge {
        kind: LineKind::ProgressiveBilled,
        metric_id: None,
        quantity: None,
        amount: -taken,
        description: "billed by interim bills of this period".into(),
    });
    Ok(billed - taken)
}

/// The interim bill of a locked execution whose usage reached its next
/// progressive threshold: the usage of the open period so far, less what
/// earlier interim bills of the period billed. Nothing when the open period
/// has closed (its closing bill comes first) or usage fell back.
pub(crate) async fn bill_progressive(
    conn: &mut PgConnection,
    cache: &mut PlanCache,
    execution: &mut ExecutionRow,
    now: DateTime<Utc>,
    notice: Duration,
    batch: &mut BillBatch,
) -> Result<(), HandleError> {
    execution.progressive_due_at = None;
    if execution.status != ExecutionStatus::Active {
        return Ok(());
    }
    let Some(end) = execution.next_bill_at.filter(|end| *end > now) else {
        return Ok(());
    };
    let plan = cache.get(conn, execution).await?;
    if plan.spec.usage_thresholds.is_empty() {
        return Ok(());
    }
    let from = execution
        .billed_until
        .unwrap_or(basis(execution, &plan.row).schedule().start);
    let usage = usage_charges(conn, execution, &plan, from, end).await?;
    let amount = rounded_total(&plan.spec.plan_currency, usage.iter().map(|c| c.amount))
        .ok_or_else(|| Rejection::overflow("the period's usage amount"))?;
    let Some(level) = crate::domain::thresholds::reached(&plan.spec.usage_thresholds, amount) else {
        return Ok(());
    };
    let same_period = execution.progressive_period_start == Some(from);
    if same_period && execution.progressive_level.is_some_and(|billed| level <= billed) {
        return Ok(());
    }
    let billed = if same_period {
        store::bills::progressive_billed(conn, &execution.id, from).await?
    } else {
        Decimal::ZERO
    };
    execution.progressive_period_start = Some(from);
    execution.progressive_level = Some(level);
    if amount <= billed {
        return Ok(());
    }
    let mut charges = usage;
    if billed > Decimal::ZERO {
        charges.push(Charge {
            kind: LineKind::ProgressiveBilled,
            metric_id: None,
            quantity: None,
            amount: -billed,
            description: "billed by earlier interim bills of this period".into(),
        });
    }
    let key = format!("progressive:{}:{}", from.timestamp_micros(), level.normalize());
    let bill = NewBill::new(BillKind::Progressive, key, from, Some(now), charges);
    let spec = plan.spec.clone();
    prepare(execution, &spec, bill, now, notice, batch)?;
    Ok(())
}

/// One usage line per metric of the plan, priced on the period
/// `[period_start, period_end)`.
async fn usage_charges(
    conn: &mut PgConnection,
    execution: &ExecutionRow,
    plan: &PlanView,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
) -> Result<Vec<Charge>, HandleError> {
    if !plan.spec.plan_model.has_usage() {
        return Ok(Vec::new());
    }
    let period = PeriodRef {
        execution_id: &execution.id,
        start: period_start,
        end: period_end,
    };
    let usage = period_usage(conn, period, &plan.metrics).await?;
    let mut charges = Vec::with_capacity(plan.order.len());
    for metric_id in &plan.order {
        let Some(spec) = plan.metrics.get(metric_id) else {
            continue;
        };
        let (used, amount) = usage.get(metric_id).copied().unwrap_or((Decimal::ZERO, Decimal::ZERO));
        charges.push(Charge {
            kind: LineKind::Usage,
            metric_id: Some(metric_id.clone()),
            quantity: Some(used),
            amount,
            description: format!("{} {}", spec.name, spec.unit).trim().to_string(),
        });
    }
    Ok(charges)
}

/// Plans the bills of every period of a locked execution that closed by
/// `now`, oldest first, into `batch` (which writes them all at once), and
/// moves the execution's cursor in memory.
pub(crate) async fn bill_due_execution(
    conn: &mut PgConnection,
    cache: &mut PlanCache,
    execution: &mut ExecutionRow,
    now: DateTime<Utc>,
    notice: Duration,
    batch: &mut BillBatch,
) -> Result<(), HandleError> {
    for _ in 0..MAX_CATCH_UP {
        let Some(at) = execution.next_bill_at.filter(|at| *at <= now) else {
            break;
        };
        if execution.status != ExecutionStatus::Active {
            // Deactivated during the period: its counted usage is billed
            // (never its plan amount), and billing stops there.
            close_inactive(conn, cache, execution, at, now, notice, batch).await?;
            break;
        }
        let plan = cache.get(conn, execution).await?;
        let schedule = basis(execution, &plan.row).schedule();
        let onetime = plan.spec.plan_interval == PlanInterval::Onetime;
        // The bill belongs to the plan of the period it closes.
        let bill_plan = plan.spec.clone();
        let bill = if execution.billed_until.is_none()
            && at == schedule.start
            && (onetime || plan.spec.plan_type == PlanType::PreDebit)
        {
            // The amount in advance for the first period (or the one-time charge).
            let end = if onetime { None } else { schedule.boundary(1) };
            let charges = plan_amount_charge(execution, &plan, at, end, "in advance")
                .into_iter()
                .collect();
            execution.next_bill_at = end;
            NewBill::new(
                BillKind::Period,
                format!("advance:{}", at.timestamp_micros()),
                at,
                end,
                charges,
            )
        } else {
            let from = execution.billed_until.unwrap_or(schedule.start);
            let mut charges = usage_charges(conn, execution, &plan, from, at).await?;
            let period_amount = arrears_charge(conn, execution, &plan, from, at).await?;
            charges.extend(commitment(&plan.spec, &charges, period_amount.as_ref(), from, at));
            if plan.spec.plan_type == PlanType::PostDebit
                && let Some(c) = period_amount
            {
                charges.insert(0, c);
            }
            let credit_back = deduct_interim(conn, execution, &plan.spec, from, &mut charges).await?;
            // A plan change takes effect at the boundary: the closed period
            // was billed on the old plan, what follows is on the new one.
            let plan = match execution.pending_plan_id.take() {
                Some(next) => {
                    execution.plan_id = next;
                    execution.plan_amount = execution.pending_plan_amount.take();
                    execution.billing_start_date = Some(at);
                    cache.get(conn, execution).await?
                }
                None => plan,
            };
            execution.billed_until = Some(at);
            let next_schedule = basis(execution, &plan.row).schedule();
            let next_period = next_schedule.period_containing(at);
            if plan.spec.plan_type == PlanType::PreDebit
                && !bills_on_present(plan.spec.plan_interval, plan.spec.plan_model)
                && let Some(c) = plan_amount_charge(execution, &plan, next_period.start, next_period.end, "in advance")
            {
                charges.push(c);
            }
            execution.next_bill_at = if bills_on_present(plan.spec.plan_interval, plan.spec.plan_model) {
                None
            } else {
                next_period.end
            };
            NewBill {
                credit_back,
                ..NewBill::new(
                    BillKind::Period,
                    format!("period:{}", from.timestamp_micros()),
                    from,
                    Some(at),
                    charges,
                )
            }
        };
        prepare(execution, &bill_plan, bill, now, notice, batch)?;
    }
    Ok(())
}

/// The last bill of an execution deactivated during its open period: the
/// usage counted in it, if any.
async fn close_inactive(
    conn: &mut PgConnection,
    cache: &mut PlanCache,
    execution: &mut ExecutionRow,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    notice: Duration,
    batch: &mut BillBatch,
) -> Result<(), HandleError> {
    let plan = cache.get(conn, execution).await?;
    let from = execution
        .billed_until
        .unwrap_or(basis(execution, &plan.row).schedule().start);
    let mut charges = usage_charges(conn, execution, &plan, from, at).await?;
    let credit_back = deduct_interim(conn, execution, &plan.spec, from, &mut charges).await?;
    execution.billed_until = Some(at);
    execution.next_bill_at = None;
    if charges.iter().any(|c| c.amount > Decimal::ZERO)
        || execution.carried_amount > Decimal::ZERO
        || credit_back > Decimal::ZERO
    {
        let bill = NewBill {
            credit_back,
            ..NewBill::new(
                BillKind::Period,
                format!("period:{}", from.timestamp_micros()),
                from,
                Some(at),
                charges,
            )
        };
        prepare(execution, &plan.spec, bill, now, notice, batch)?;
    }
    Ok(())
}

/// `present`: bills the usage of the open period so far, for plans billed as presented.
pub(crate) async fn present(
    conn: &mut PgConnection,
    merchant_id: &str,
    execution_id: &str,
    now: DateTime<Utc>,
    notice: Duration,
) -> Result<Option<BillRow>, HandleError> {
    let mut execution = store::executions::lock(conn, merchant_id, execution_id)
        .await?
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::ExecutionNotFound,
                format!("billing_execution_info_id '{execution_id}' does not exist for this merchant"),
            )
        })?;
    let plan = plan_view(conn, &execution).await?;
    if !bills_on_present(plan.spec.plan_interval, plan.spec.plan_model) {
        return Err(Rejection::new(
            ErrorCode::InvalidState,
            format!(
                "plan '{}' bills on its {} schedule; present is for ASPRESENTED and USAGE_CALCULATION plans",
                plan.spec.plan_id,
                plan.spec.plan_interval.as_str()
            ),
        )
        .into());
    }
    let from = basis(&execution, &plan.row).schedule().start;
    let mut charges = usage_charges(conn, &execution, &plan, from, now).await?;
    let presented = plan_amount_charge(&execution, &plan, from, Some(now), "as presented");
    // A presented bill with no usage is not topped up to the commitment.
    if charges.iter().any(|c| c.quantity.is_some_and(|q| !q.is_zero())) {
        charges.extend(commitment(&plan.spec, &charges, presented.as_ref(), from, now));
    }
    if let Some(c) = presented {
        charges.insert(0, c);
    }
    execution.billed_until = Some(now);
    let bill = NewBill::new(
        BillKind::Presented,
        format!("presented:{}", from.timestamp_micros()),
        from,
        Some(now),
        charges,
    );
    // Credit that expired by now is not spent on this bill.
    super::credit::expire(conn, &mut execution, now).await?;
    // A plan change waits for the next bill, which this is.
    if let Some(next) = execution.pending_plan_id.take() {
        execution.plan_id = next;
        execution.plan_amount = execution.pending_plan_amount.take();
    }
    let mut batch = BillBatch::default();
    let bill = prepare(&mut execution, &plan.spec, bill, now, notice, &mut batch)?;
    batch.executions.push(execution);
    batch.write(conn, now).await?;
    Ok(Some(bill))
}

/// Everything a pass of billing writes, set-based: one statement per table
/// however many bills.
#[derive(Default)]
pub(crate) struct BillBatch {
    pub bills: Vec<BillRow>,
    pub lines: Vec<(String, Vec<Line>)>,
    pub credit_uses: Vec<LedgerEntry>,
    pub webhooks: Vec<(Webhook, Option<String>)>,
    /// Executions whose billing state (cursor, plan, balance) moved.
    pub executions: Vec<ExecutionRow>,
}

impl BillBatch {
    /// Takes in what another batch planned.
    pub(crate) fn absorb(&mut self, other: BillBatch) {
        self.bills.extend(other.bills);
        self.lines.extend(other.lines);
        self.credit_uses.extend(other.credit_uses);
        self.webhooks.extend(other.webhooks);
        self.executions.extend(other.executions);
    }

    /// Writes the batch in the caller's transaction.
    pub(crate) async fn write(self, conn: &mut PgConnection, now: DateTime<Utc>) -> Result<(), HandleError> {
        store::bills::insert_many(conn, &self.bills).await?;
        store::bills::insert_lines_many(conn, &self.lines).await?;
        let uses = super::credit::draw_uses(conn, self.credit_uses, now).await?;
        store::ledger::insert_many(conn, &uses, now).await?;
        store::executions::save_billing_states(conn, &self.executions, now).await?;
        store::outbox::enqueue_many(conn, &self.webhooks).await?;
        Ok(())
    }
}

/// The path of every execution bill: carried amount, rounding, credit,
/// then PAID (credit covered it) or SCHEDULED with the pre-debit notice.
/// Nothing is written here: the bill, its lines, its credit use and its
/// webhooks go into `batch`; `execution` follows in memory.
pub(super) fn prepare(
    execution: &mut ExecutionRow,
    plan: &PlanSpec,
    new: NewBill,
    now: DateTime<Utc>,
    notice: Duration,
    batch: &mut BillBatch,
) -> Result<BillRow, HandleError> {
    let mut charges = new.charges;
    let id = format!("bill_{}", new_execution_id());
    if new.credit_back > Decimal::ZERO {
        execution.credit_balance = execution
            .credit_balance
            .checked_add(new.credit_back)
            .ok_or_else(|| Rejection::overflow("the credit balance"))?;
        let reference_id = format!("{id}:interim_overbilled");
        let grant_id = super::credit::new_grant_id();
        batch.credit_uses.push(LedgerEntry {
            merchant_id: execution.merchant_id.clone(),
            execution_id: execution.id.clone(),
            kind: EntryKind::Grant,
            amount: new.credit_back,
            balance_after: execution.credit_balance,
            reference_id: reference_id.clone(),
            grant_id: Some(grant_id.clone()),
        });
        let credit = GivenBack {
            amount: new.credit_back,
            reference_id: &reference_id,
            currency: plan.plan_currency.as_str(),
            reason: CreditReason::InterimBillsAbovePeriodUsage,
            bill_id: Some(&id),
            grant_id: &grant_id,
        };
        let webhook = given_back_webhook(execution, credit, now);
        batch.webhooks.push((webhook, Some(execution.id.clone())));
    }
    if new.carries && execution.carried_amount > Decimal::ZERO {
        charges.push(Charge {
            kind: LineKind::Carried,
            metric_id: None,
            quantity: None,
            amount: execution.carried_amount,
            description: "unpaid amount carried over".into(),
        });
        execution.carried_amount = Decimal::ZERO;
    }
    let currency = &plan.plan_currency;
    let computed = compute(currency, charges, execution.credit_balance)?;
    let paid = computed.amount_due.is_zero();
    let due_at = now + notice;
    let bill = BillRow {
        id: id.clone(),
        merchant_id: execution.merchant_id.clone(),
        customer_id: execution.customer_id.clone(),
        execution_id: Some(execution.id.clone()),
        billing_plan_id: None,
        kind: new.kind,
        bill_key: Some(new.key),
        period_start: new.period_start,
        period_end: new.period_end,
        sequence_number: None,
        reference_id: execution.merchant_ref_id.clone(),
        currency: currency.to_string(),
        total: computed.total,
        credit_applied: computed.credit_applied,
        amount_due: computed.amount_due,
        status: if paid { BillStatus::Paid } else { BillStatus::Scheduled },
        action_on_failure: plan.plan_action_on_failure,
        token: execution.token.clone().or_else(|| execution.mandate_id.clone()),
        due_at,
        notice_sent_at: (!paid).then_some(now),
        attempt: 0,
        max_retry: plan.max_retry as i32,
        next_attempt_at: (!paid).then_some(due_at),
        request_id: None,
        lease_owner: None,
        lease_expires_at: None,
        last_error: None,
        gateway_txn_id: None,
        settled_at: paid.then_some(now),
        created_at: now,
        updated_at: now,
    };
    if computed.credit_applied > Decimal::ZERO {
        execution.credit_balance = execution
            .credit_balance
            .checked_sub(computed.credit_applied)
            .ok_or_else(|| Rejection::overflow("the credit balance"))?;
        batch.credit_uses.push(LedgerEntry {
            merchant_id: execution.merchant_id.clone(),
            execution_id: execution.id.clone(),
            kind: EntryKind::Use,
            amount: computed.credit_applied,
            balance_after: execution.credit_balance,
            reference_id: id.clone(),
            grant_id: None,
        });
    }
    let line_rows: Vec<LineRow> = computed
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| LineRow {
            position: i as i32 + 1,
            kind: l.kind,
            metric_id: l.metric_id.clone(),
            quantity: l.quantity,
            amount: l.amount,
            description: l.description.clone(),
        })
        .collect();
    let mut announce = |event: EventName, extra: Option<(&str, serde_json::Value)>| {
        let webhook = bill_webhook(event, &bill, &line_rows, Some(execution), now, extra);
        batch.webhooks.push((webhook, Some(execution.id.clone())));
    };
    if paid {
        if computed.total > Decimal::ZERO {
            let settlement = super::credit_settlement(computed.credit_applied, currency.as_str());
            announce(EventName::ExecutionDebitEvent, Some(("settlement", settlement)));
        }
    } else {
        announce(EventName::TxnScheduled, None);
        announce(EventName::TxnToBeExecuted, None);
    }
    batch.lines.push((id, computed.lines));
    batch.bills.push(bill.clone());
    Ok(bill)
}
