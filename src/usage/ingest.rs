//! Counting a batch of usage events exactly once, in one transaction:
//! check each event against its execution, drop repeats by `event_id`,
//! pre-aggregate per (execution, metric, period) and write set-based.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{PeriodRef, effective_metrics};
use crate::domain::aggregation::{AggregationType, Delta, UsageEvent, weight};
use crate::domain::catalog::{MetricSpec, customer_prices};
use crate::domain::execution::ExecutionStatus;
use crate::domain::ids::usage_event_key;
use crate::domain::period::Schedule;
use crate::domain::thresholds::{UsageThreshold, reached};
use crate::domain::webhook::{EventName, Webhook};
use crate::error::short;
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::documents::{num, timestamp};
use crate::protocol::usage::{MAX_PROPERTY_LEN, UsageEventIn};
use crate::store;
use crate::store::usage::{AggregateDeltas, AggregateRow, AllowanceRows, EventRows, ExecutionContext};

/// An event of the batch, decoded, with its tenant and arrival time.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub merchant_id: String,
    pub event: UsageEventIn,
    pub received_at: DateTime<Utc>,
}

/// What a batch came to.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Events counted for the first time.
    pub counted: usize,
    /// Events already counted before (in this batch or earlier).
    pub duplicates: usize,
    /// Events refused, by their position in the input.
    pub rejected: Vec<(usize, Rejection)>,
    /// Whether threshold webhooks were written.
    pub announced: bool,
    /// Whether usage reached an execution's next progressive threshold:
    /// billing has an interim bill to make.
    pub progressive_due: bool,
}

/// How far ahead of its arrival an event's timestamp may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub future_tolerance: chrono::Duration,
}

struct Execution {
    ctx: ExecutionContext,
    schedule: Schedule,
    metrics: HashMap<String, MetricSpec>,
    /// The plan's progressive thresholds and the execution's alerts.
    thresholds: Vec<UsageThreshold>,
    alerts: Vec<Decimal>,
}

/// An event that passed every check, placed in its period.
struct Accepted {
    merchant_id: String,
    execution_id: String,
    metric_id: String,
    period_start: DateTime<Utc>,
    aggregation: AggregationType,
    /// Kept in order for a PERCENTAGE free allowance.
    allowance: bool,
    event: UsageEvent,
}

type Key = (String, String, DateTime<Utc>);

/// Counts the batch in the caller's transaction.
pub(crate) async fn ingest(
    conn: &mut PgConnection,
    candidates: &[Candidate],
    limits: Limits,
    now: DateTime<Utc>,
) -> Result<Report, HandleError> {
    let mut report = Report::default();
    let executions = load_executions(conn, candidates).await?;

    // Check each event; keep the first of each (merchant, event_id).
    let mut accepted = Vec::with_capacity(candidates.len());
    let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(candidates.len());
    for (i, c) in candidates.iter().enumerate() {
        let key = (c.merchant_id.as_str(), c.event.billing_execution_info_id.as_str());
        match check(executions.get(&(key.0.to_string(), key.1.to_string())), c, limits) {
            Ok(a) => {
                if seen.insert((c.merchant_id.as_str(), c.event.event_id.as_str())) {
                    accepted.push(a);
                } else {
                    report.duplicates += 1;
                }
            }
            Err(r) => report.rejected.push((i, r)),
        }
    }
    forgive_repeats(conn, candidates, &mut report).await?;
    if accepted.is_empty() {
        return Ok(report);
    }

    // Only events never seen before go on.
    let mut rows = EventRows::default();
    for a in &accepted {
        rows.key.push(usage_event_key(&a.merchant_id, &a.event.event_id));
        rows.merchant_id.push(a.merchant_id.clone());
        rows.event_id.push(a.event.event_id.clone());
        rows.execution_id.push(a.execution_id.clone());
        rows.metric_id.push(a.metric_id.clone());
        rows.period_start.push(a.period_start);
        rows.value.push(a.event.value);
        rows.ts.push(a.event.timestamp);
    }
    // Repeats are rare: first try the batch as all new, then sort it out.
    let fresh: Vec<&Accepted> = if store::usage::insert_new_events(conn, &rows).await? {
        accepted.iter().collect()
    } else {
        let inserted: HashSet<Uuid> = store::usage::insert_events(conn, &rows).await?.into_iter().collect();
        accepted
            .iter()
            .zip(&rows.key)
            .filter(|(_, key)| inserted.contains(key))
            .map(|(a, _)| a)
            .collect()
    };
    report.duplicates += accepted.len() - fresh.len();
    report.counted = fresh.len();
    if fresh.is_empty() {
        return Ok(report);
    }

    // One delta per key, then the distinct values that are new.
    let mut deltas: BTreeMap<Key, (AggregationType, Delta)> = BTreeMap::new();
    for a in &fresh {
        let key = (a.execution_id.clone(), a.metric_id.clone(), a.period_start);
        deltas
            .entry(key)
            .or_insert_with(|| (a.aggregation, Delta::default()))
            .1
            .add(a.aggregation, &a.event);
    }
    let new_unique = insert_unique_values(conn, &deltas).await?;
    let mut columns = AggregateDeltas::default();
    for ((execution_id, metric_id, period_start), (_, delta)) in &deltas {
        columns.execution_id.push(execution_id.clone());
        columns.metric_id.push(metric_id.clone());
        columns.period_start.push(*period_start);
        columns.sum.push(delta.sum);
        columns.count.push(delta.count);
        columns.max.push(delta.max);
        columns.latest_ts.push(delta.latest.as_ref().map(|l| l.0));
        columns.latest_event_id.push(delta.latest.as_ref().map(|l| l.1.clone()));
        columns.latest_value.push(delta.latest.as_ref().map(|l| l.2));
        let key = (execution_id.clone(), metric_id.clone(), *period_start);
        columns.unique_count.push(new_unique.get(&key).copied().unwrap_or(0));
        columns.weighted.push(delta.weighted);
        columns.fee.push(delta.fee);
    }
    store::usage::add_aggregates(conn, &columns).await?;
    keep_allowance_events(conn, &fresh).await?;

    (report.announced, report.progressive_due) = check_thresholds(conn, &executions, &deltas, now).await?;
    Ok(report)
}

/// A refused event that was counted before is a repeat, not an error: it
/// may come back after its execution was deactivated or its plan changed.
async fn forgive_repeats(
    conn: &mut PgConnection,
    candidates: &[Candidate],
    report: &mut Report,
) -> Result<(), HandleError> {
    if report.rejected.is_empty() {
        return Ok(());
    }
    let key = |i: usize| usage_event_key(&candidates[i].merchant_id, &candidates[i].event.event_id);
    let keys: Vec<Uuid> = report.rejected.iter().map(|(i, _)| key(*i)).collect();
    let seen: HashSet<Uuid> = store::usage::counted_before(conn, &keys).await?.into_iter().collect();
    if seen.is_empty() {
        return Ok(());
    }
    let before = report.rejected.len();
    report.rejected.retain(|(i, _)| !seen.contains(&key(*i)));
    report.duplicates += before - report.rejected.len();
    Ok(())
}

async fn load_executions(
    conn: &mut PgConnection,
    candidates: &[Candidate],
) -> Result<HashMap<(String, String), Execution>, HandleError> {
    let keys: HashSet<(&str, &str)> = candidates
        .iter()
        .map(|c| (c.merchant_id.as_str(), c.event.billing_execution_info_id.as_str()))
        .collect();
    let (merchants, ids): (Vec<String>, Vec<String>) =
        keys.into_iter().map(|(m, e)| (m.to_string(), e.to_string())).unzip();
    let contexts = store::usage::contexts(conn, &merchants, &ids).await?;

    // Every metric any of these executions may use, in one read.
    let mut wanted: HashMap<String, HashSet<String>> = HashMap::new();
    for ctx in &contexts {
        let entry = wanted.entry(ctx.merchant_id.clone()).or_default();
        entry.extend(ctx.metric_ids.iter().cloned());
        entry.extend(customer_prices(&ctx.metric_info).map(|(id, _)| id.to_string()));
    }
    let mut rows_by_merchant = HashMap::new();
    for (merchant, ids) in wanted {
        let ids: Vec<String> = ids.into_iter().collect();
        rows_by_merchant.insert(
            merchant.clone(),
            store::catalog::find_metrics(conn, &merchant, &ids).await?,
        );
    }

    let mut out = HashMap::with_capacity(contexts.len());
    for ctx in contexts {
        let rows = rows_by_merchant
            .get(&ctx.merchant_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut allowed: HashSet<&str> = ctx.metric_ids.iter().map(String::as_str).collect();
        allowed.extend(customer_prices(&ctx.metric_info).map(|(id, _)| id));
        let own: Vec<_> = rows
            .iter()
            .filter(|r| allowed.contains(r.metric_id.as_str()))
            .cloned()
            .collect();
        let metrics = effective_metrics(&own, &ctx.metric_info)?;
        let schedule = ctx.period_basis().schedule();
        // Both lists were checked when stored.
        let thresholds = serde_json::from_value(ctx.usage_thresholds.clone()).unwrap_or_default();
        let alerts = serde_json::from_value(ctx.usage_alerts.clone()).unwrap_or_default();
        out.insert(
            (ctx.merchant_id.clone(), ctx.id.clone()),
            Execution {
                ctx,
                schedule,
                metrics,
                thresholds,
                alerts,
            },
        );
    }
    Ok(out)
}

/// The checks of one usage event against its execution.
fn check(execution: Option<&Execution>, c: &Candidate, limits: Limits) -> Result<Accepted, Rejection> {
    let e = &c.event;
    let execution = execution.ok_or_else(|| {
        Rejection::new(
            ErrorCode::ExecutionNotFound,
            format!(
                "billing_execution_info_id '{}' does not exist for this merchant",
                e.billing_execution_info_id
            ),
        )
    })?;
    if ExecutionStatus::parse(&execution.ctx.status) != Some(ExecutionStatus::Active) {
        return Err(Rejection::new(
            ErrorCode::ExecutionNotActive,
            format!(
                "billing_execution_info_id '{}' is {}, not ACTIVE",
                e.billing_execution_info_id, execution.ctx.status
            ),
        ));
    }
    let Some(metric) = execution.metrics.get(&e.metric_id) else {
        return Err(Rejection::new(
            ErrorCode::MetricNotInPlan,
            format!(
                "metric_id '{}' is not a metric of plan '{}'",
                e.metric_id, execution.ctx.plan_id
            ),
        ));
    };
    let ts = e.timestamp.unwrap_or(c.received_at);
    if ts > c.received_at + limits.future_tolerance {
        return Err(Rejection::new(
            ErrorCode::TimestampInFuture,
            format!(
                "timestamp {} is more than {} seconds ahead of its arrival",
                timestamp(ts),
                limits.future_tolerance.num_seconds()
            ),
        ));
    }
    let value = e.value.unwrap_or(Decimal::ONE);
    let negative = value.is_sign_negative() && !value.is_zero();
    if negative && !metric.aggregation_type.allows_negative() {
        return Err(Rejection::field(
            "value",
            format_args!("must not be negative for a {} metric", metric.aggregation_type.as_str()),
        ));
    }
    if negative && metric.pricing.percentage.is_some() {
        return Err(Rejection::field(
            "value",
            "must not be negative for a metric priced by PERCENTAGE",
        ));
    }
    let unique_value = match (&metric.aggregation_type, &metric.aggregation_field) {
        (AggregationType::UniqueCount, Some(field)) => match e.properties.as_ref().and_then(|p| p.get(field)) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Null) | None => {
                return Err(Rejection::field(
                    &format!("properties.{field}"),
                    format_args!("is required by UNIQUE_COUNT metric '{}'", e.metric_id),
                ));
            }
            Some(other) => Some(other.to_string()),
        },
        _ => None,
    };
    if let (Some(value), Some(field)) = (&unique_value, &metric.aggregation_field)
        && value.chars().count() > MAX_PROPERTY_LEN
    {
        // Refused before it reaches the distinct-values index.
        return Err(Rejection::field(
            &format!("properties.{field}"),
            format_args!("must be at most {MAX_PROPERTY_LEN} characters"),
        ));
    }
    let period_start = execution.ctx.period_basis().period_for(&execution.schedule, ts);
    let overflow = |what: &str| Rejection::overflow(format_args!("the {what} of event '{}'", short(&e.event_id)));
    let weighted = match metric.aggregation_type {
        AggregationType::WeightedSum => weight(value, ts, period_start).ok_or_else(|| overflow("weight"))?,
        _ => Decimal::ZERO,
    };
    let (fee, allowance) = match &metric.pricing.percentage {
        Some(p) => (p.event_fee(value).ok_or_else(|| overflow("fee"))?, p.has_allowance()),
        None => (Decimal::ZERO, false),
    };
    Ok(Accepted {
        merchant_id: c.merchant_id.clone(),
        execution_id: execution.ctx.id.clone(),
        metric_id: e.metric_id.clone(),
        period_start,
        aggregation: metric.aggregation_type,
        allowance,
        event: UsageEvent {
            value,
            timestamp: ts,
            event_id: e.event_id.clone(),
            unique_value,
            weighted,
            fee,
        },
    })
}

async fn keep_allowance_events(conn: &mut PgConnection, fresh: &[&Accepted]) -> Result<(), HandleError> {
    let mut rows = AllowanceRows::default();
    for a in fresh.iter().filter(|a| a.allowance) {
        rows.execution_id.push(a.execution_id.clone());
        rows.metric_id.push(a.metric_id.clone());
        rows.period_start.push(a.period_start);
        rows.ts.push(a.event.timestamp);
        rows.event_id.push(a.event.event_id.clone());
        rows.value.push(a.event.value);
    }
    if !rows.event_id.is_empty() {
        store::usage::insert_allowance_events(conn, &rows).await?;
    }
    Ok(())
}

async fn insert_unique_values(
    conn: &mut PgConnection,
    deltas: &BTreeMap<Key, (AggregationType, Delta)>,
) -> Result<HashMap<Key, i64>, HandleError> {
    let (mut executions, mut metrics, mut periods, mut values) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((execution_id, metric_id, period_start), (aggregation, delta)) in deltas {
        if *aggregation != AggregationType::UniqueCount {
            continue;
        }
        for value in &delta.unique_values {
            executions.push(execution_id.clone());
            metrics.push(metric_id.clone());
            periods.push(*period_start);
            values.push(value.clone());
        }
    }
    let mut counts = HashMap::new();
    if values.is_empty() {
        return Ok(counts);
    }
    for key in store::usage::insert_unique_values(conn, &executions, &metrics, &periods, &values).await? {
        *counts.entry(key).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Announces, once per period, usage that first exceeds the credit balance
/// (for executions holding credit) or the plan's `max_amount`, or reaches
/// one of the execution's `usage_alerts`; marks executions whose usage
/// reached their next progressive threshold. Returns (webhooks written,
/// an interim bill due).
async fn check_thresholds(
    conn: &mut PgConnection,
    executions: &HashMap<(String, String), Execution>,
    deltas: &BTreeMap<Key, (AggregationType, Delta)>,
    now: DateTime<Utc>,
) -> Result<(bool, bool), HandleError> {
    let by_id: HashMap<&str, &Execution> = executions.values().map(|e| (e.ctx.id.as_str(), e)).collect();
    let watched: BTreeMap<(String, DateTime<Utc>), &Execution> = deltas
        .keys()
        .filter_map(|(execution_id, _, period)| {
            let e = by_id.get(execution_id.as_str())?;
            (e.ctx.max_amount.is_some()
                || e.ctx.credit_balance > Decimal::ZERO
                || !e.thresholds.is_empty()
                || !e.alerts.is_empty())
            .then(|| ((execution_id.clone(), *period), *e))
        })
        .collect();
    if watched.is_empty() {
        return Ok((false, false));
    }
    let with_alerts: Vec<(String, DateTime<Utc>)> = watched
        .iter()
        .filter(|(_, e)| !e.alerts.is_empty())
        .map(|(key, _)| key.clone())
        .collect();
    let sent: std::collections::HashSet<(String, DateTime<Utc>, Decimal)> = if with_alerts.is_empty() {
        Default::default()
    } else {
        let (ids, periods): (Vec<String>, Vec<DateTime<Utc>>) = with_alerts.into_iter().unzip();
        store::usage::alerts_sent(conn, &ids, &periods)
            .await?
            .into_iter()
            .map(|(id, period, amount)| (id, period, amount.normalize()))
            .collect()
    };
    let mut alerts: Vec<(&Execution, DateTime<Utc>, Decimal, Decimal)> = Vec::new();
    let mut progressive: Vec<String> = Vec::new();
    let (ids, periods): (Vec<String>, Vec<DateTime<Utc>>) = watched.keys().cloned().unzip();
    let rows = store::usage::aggregates(conn, &ids, &periods).await?;
    let mut by_period: HashMap<(&str, DateTime<Utc>), Vec<&AggregateRow>> = HashMap::new();
    for row in &rows {
        by_period
            .entry((row.execution_id.as_str(), row.period_start))
            .or_default()
            .push(row);
    }
    let mut crossings = Vec::new();
    for ((execution_id, period), e) in &watched {
        let rows = by_period.remove(&(execution_id.as_str(), *period)).unwrap_or_default();
        let open = PeriodRef {
            execution_id,
            start: *period,
            end: e.schedule.period_containing(*period).end.unwrap_or(now),
        };
        // An amount beyond range is no threshold crossing to announce:
        // that execution's bill reports it, and this batch goes on.
        let amount = match super::price_period(conn, open, &e.metrics, &rows).await {
            Ok(usage) => usage
                .values()
                .try_fold(Decimal::ZERO, |sum, (_, amount)| sum.checked_add(*amount)),
            Err(HandleError::Rejected(_)) => None,
            Err(other) => return Err(other),
        };
        let Some(amount) = amount else {
            continue;
        };
        for alert in e.alerts.iter().filter(|a| **a <= amount) {
            if !sent.contains(&(execution_id.clone(), *period, alert.normalize())) {
                alerts.push((*e, *period, *alert, amount));
            }
        }
        let billed_level = e
            .ctx
            .progressive_level
            .filter(|_| e.ctx.progressive_period_start == Some(*period));
        if let Some(level) = reached(&e.thresholds, amount)
            && billed_level.is_none_or(|billed| level > billed)
        {
            progressive.push(execution_id.clone());
        }
        if e.ctx.credit_balance > Decimal::ZERO && amount > e.ctx.credit_balance {
            crossings.push((
                *e,
                *period,
                "CREDITS_DEPLETED",
                EventName::ExecutionCreditsDepleted,
                amount,
            ));
        }
        if let Some(max) = e.ctx.max_amount
            && amount > max
        {
            crossings.push((
                *e,
                *period,
                "AMOUNT_BREACHED_LIMIT",
                EventName::ExecutionAmountBreachedLimit,
                amount,
            ));
        }
    }
    if crossings.is_empty() && alerts.is_empty() && progressive.is_empty() {
        return Ok((false, false));
    }
    let mut lock_ids: Vec<String> = crossings
        .iter()
        .map(|c| c.0.ctx.id.clone())
        .chain(alerts.iter().map(|a| a.0.ctx.id.clone()))
        .chain(progressive.iter().cloned())
        .collect();
    lock_ids.sort();
    lock_ids.dedup();
    store::usage::lock_executions(conn, &lock_ids).await?;
    if !progressive.is_empty() {
        store::usage::mark_progressive_due(conn, &progressive, now).await?;
    }
    let mut announced = false;
    for (e, period, alert, amount) in alerts {
        if !store::usage::record_alert(conn, &e.ctx.id, period, alert, amount, now).await? {
            continue;
        }
        let content = json!({
            "billing_execution_info": execution_info(e),
            "usage": {
                "period_start": timestamp(period),
                "threshold": num(alert),
                "used_amount": num(amount),
                "currency": e.ctx.plan_currency,
            },
        });
        let webhook = Webhook::new(EventName::ExecutionUsageAlert, &e.ctx.merchant_id, now, content);
        store::outbox::enqueue(conn, &webhook, Some(&e.ctx.id)).await?;
        announced = true;
    }
    for (e, period, kind, event, amount) in crossings {
        if !store::usage::record_threshold(conn, &e.ctx.id, period, kind, amount, now).await? {
            continue;
        }
        let content = json!({
            "billing_execution_info": execution_info(e),
            "usage": {
                "period_start": timestamp(period),
                "used_amount": num(amount),
                "credit_balance": num(e.ctx.credit_balance),
                "max_amount": e.ctx.max_amount.map(num),
                "currency": e.ctx.plan_currency,
            },
        });
        let webhook = Webhook::new(event, &e.ctx.merchant_id, now, content);
        store::outbox::enqueue(conn, &webhook, Some(&e.ctx.id)).await?;
        announced = true;
    }
    Ok((announced, !progressive.is_empty()))
}

/// The execution as threshold webhooks show it.
fn execution_info(e: &Execution) -> serde_json::Value {
    json!({
        "billing_execution_info_id": e.ctx.id,
        "customer_id": e.ctx.customer_id,
        "plan_id": e.ctx.plan_id,
        "status": e.ctx.status,
        "source": "MERCHANT_REF_ID",
        "source_object_id": e.ctx.merchant_ref_id.clone().unwrap_or_default(),
        "amount": num(e.ctx.credit_balance),
    })
}
