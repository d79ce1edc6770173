//! Metered usage: where an event belongs, what an execution has used in its
//! open period, and the batch ingestion that counts each event once.

pub mod ingest;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;

use crate::domain::aggregation::Aggregate;
use crate::domain::catalog::{MetricSpec, PlanInterval, PlanModel, PlanRuleType};
use crate::domain::period::Schedule;
use crate::domain::pricing::Pricing;
use crate::error::{HandleError, Rejection};
use crate::protocol::documents::Usage;
use crate::store;
use crate::store::catalog::MetricRow;
use crate::store::usage::AggregateRow;

/// What an execution's periods hang on: its plan's interval and anchor, and its start.
#[derive(Debug, Clone, Copy)]
pub struct PeriodBasis<'a> {
    pub plan_interval: &'a str,
    pub plan_model: &'a str,
    pub plan_rule_type: &'a str,
    pub plan_rule_value: Option<i32>,
    pub billing_start_date: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub billed_until: Option<DateTime<Utc>>,
}

impl PeriodBasis<'_> {
    /// The schedule of periods: from the billing start (else activation,
    /// else creation), anchored when the plan's rule is `ON`. Plans billed as
    /// presented (and ONETIME) have one open period, which starts again where
    /// the last bill ended.
    pub fn schedule(&self) -> Schedule {
        let mut interval = PlanInterval::parse(self.plan_interval).unwrap_or(PlanInterval::Aspresented);
        let model = PlanModel::parse(self.plan_model).unwrap_or(PlanModel::UsageBased);
        let mut start = self.billing_start_date.or(self.activated_at).unwrap_or(self.created_at);
        if crate::domain::catalog::bills_on_present(interval, model) || interval == PlanInterval::Onetime {
            interval = PlanInterval::Aspresented;
            start = self.billed_until.unwrap_or(start);
        }
        let anchor = (PlanRuleType::parse(self.plan_rule_type) == Some(PlanRuleType::On))
            .then_some(self.plan_rule_value)
            .flatten()
            .and_then(|v| u32::try_from(v).ok());
        Schedule::new(interval, start, anchor)
    }

    /// The start of the period usage at instant `t` counts in: its own
    /// period, unless that was billed already, then the open one.
    pub fn period_for(&self, schedule: &Schedule, t: DateTime<Utc>) -> DateTime<Utc> {
        let at = match self.billed_until {
            Some(billed) if t < billed => billed,
            _ => t,
        };
        schedule.period_containing(at).start
    }
}

/// The metrics of an execution by id, each with the pricing that applies to
/// it: the customer's (`metric_info` of a VARIABLE plan) over the metric's own.
pub fn effective_metrics(rows: &[MetricRow], overrides: &Value) -> Result<HashMap<String, MetricSpec>, HandleError> {
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let mut spec = crate::store::catalog::metric_spec(row)?;
        let over = crate::domain::catalog::customer_price(overrides, &row.metric_id);
        if let Some(over) = over {
            spec.pricing =
                serde_json::from_value::<Pricing>(over.clone()).map_err(|e| crate::error::corrupt("metric_info", e))?;
        }
        out.insert(row.metric_id.clone(), spec);
    }
    Ok(out)
}

/// A stored aggregate as the domain sees it.
pub fn aggregate_of(row: &AggregateRow) -> Aggregate {
    Aggregate {
        sum: row.sum,
        count: row.count,
        max: row.max,
        latest: match (row.latest_ts, &row.latest_event_id, row.latest_value) {
            (Some(ts), Some(id), Some(v)) => Some((ts, id.clone(), v)),
            _ => None,
        },
        unique_count: row.unique_count,
    }
}

/// `used_till_now` and its price for one metric; a price beyond the range
/// of amounts is an `AMOUNT_OVERFLOW` error, never a panic or a saturated value.
pub fn usage_of(spec: &MetricSpec, aggregate: &Aggregate) -> Result<(Decimal, Decimal), Rejection> {
    let used = aggregate.used_till_now(spec.aggregation_type);
    let price = spec
        .pricing
        .checked_price(used)
        .ok_or_else(|| Rejection::overflow(format_args!("the price of metric '{}'", spec.metric_id)))?;
    Ok((used, price))
}

/// Live usage of an execution's open period, per metric.
pub async fn live_usage(
    conn: &mut PgConnection,
    execution_id: &str,
    basis: PeriodBasis<'_>,
    metrics: &HashMap<String, MetricSpec>,
    now: DateTime<Utc>,
) -> Result<Usage, HandleError> {
    let period = basis.period_for(&basis.schedule(), now);
    let rows = store::usage::aggregates(conn, &[execution_id.to_string()], &[period]).await?;
    let mut usage = Usage::new();
    for row in &rows {
        if let Some(spec) = metrics.get(&row.metric_id) {
            usage.insert(row.metric_id.clone(), usage_of(spec, &aggregate_of(row))?);
        }
    }
    Ok(usage)
}
