//! Metered usage: where an event belongs, what an execution has used in its
//! open period, and the batch ingestion that counts each event once.

pub(crate) mod ingest;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;

use crate::domain::aggregation::{Aggregate, AggregationType, Window, seconds_between};
use crate::domain::catalog::MetricSpec;
use crate::domain::period::PeriodBasis;
use crate::domain::pricing::{Metered, Percentage, Pricing};
use crate::error::{HandleError, Rejection};
use crate::protocol::documents::Usage;
use crate::store;
use crate::store::catalog::MetricRow;
use crate::store::usage::AggregateRow;

/// The metrics of an execution by id, each with the pricing that applies to
/// it: the customer's (`metric_info` of a VARIABLE plan) over the metric's own.
pub(crate) fn effective_metrics(
    rows: &[MetricRow],
    overrides: &Value,
) -> Result<HashMap<String, MetricSpec>, HandleError> {
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
pub(crate) fn aggregate_of(row: &AggregateRow) -> Aggregate {
    Aggregate {
        sum: row.sum,
        count: row.count,
        max: row.max,
        latest: match (row.latest_ts, &row.latest_event_id, row.latest_value) {
            (Some(ts), Some(id), Some(v)) => Some((ts, id.clone(), v)),
            _ => None,
        },
        unique_count: row.unique_count,
        weighted: row.weighted,
        fee: row.fee,
    }
}

/// One period of one execution, as far as pricing its usage goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeriodRef<'a> {
    pub execution_id: &'a str,
    pub start: DateTime<Utc>,
    /// Where the period ends, or the instant it is billed (or read) for a
    /// period billed as presented: a WEIGHTED_SUM level holds until then.
    pub end: DateTime<Utc>,
}

/// Events read per query while a free-units allowance is walked.
const HEAD_PAGE: i64 = 1_000;

/// The first event values of a period, in `(timestamp, event_id)` order,
/// as many as a PERCENTAGE allowance reaches: `free_units_per_events` of
/// them at most, else page by page until the free units run out.
async fn allowance_head(
    conn: &mut PgConnection,
    period: PeriodRef<'_>,
    metric_id: &str,
    percentage: &Percentage,
) -> Result<Vec<Decimal>, HandleError> {
    let page = percentage.head_limit().map_or(HEAD_PAGE, i64::from);
    let mut head = Vec::new();
    let mut after = None;
    loop {
        let rows =
            store::usage::allowance_events(conn, period.execution_id, metric_id, period.start, after.as_ref(), page)
                .await?;
        let full = i64::try_from(rows.len()).is_ok_and(|n| n == page);
        after = rows.last().map(|(ts, id, _)| (*ts, id.clone()));
        head.extend(rows.into_iter().map(|(_, _, value)| value));
        let done = percentage.give_back(&head).is_none_or(|(_, ran_out)| ran_out);
        if done || !full || percentage.head_limit().is_some() {
            return Ok(head);
        }
    }
}

/// `used_till_now` and its price for each metric of one period, from its
/// stored aggregates (`rows`, this period's): WEIGHTED_SUM metrics add the
/// level carried from earlier periods (and count even without a row), and
/// PERCENTAGE metrics with a free allowance read the period's first events.
/// A price beyond the range of amounts is an `AMOUNT_OVERFLOW` error, never
/// a panic or a saturated value.
pub(crate) async fn price_period(
    conn: &mut PgConnection,
    period: PeriodRef<'_>,
    metrics: &HashMap<String, MetricSpec>,
    rows: &[&AggregateRow],
) -> Result<Usage, HandleError> {
    let weighted: Vec<String> = metrics
        .values()
        .filter(|m| m.aggregation_type == AggregationType::WeightedSum)
        .map(|m| m.metric_id.clone())
        .collect();
    let carried: HashMap<String, Decimal> = if weighted.is_empty() {
        HashMap::new()
    } else {
        store::usage::levels_before(conn, period.execution_id, &weighted, period.start)
            .await?
            .into_iter()
            .collect()
    };
    let span = seconds_between(period.start, period.end).unwrap_or(Decimal::ZERO);
    let mut usage = Usage::new();
    for spec in metrics.values() {
        let row = rows.iter().find(|r| r.metric_id == spec.metric_id);
        let aggregate = match row {
            Some(row) => aggregate_of(row),
            None if spec.aggregation_type == AggregationType::WeightedSum => Aggregate::default(),
            None => continue,
        };
        let window = Window {
            carried: carried.get(&spec.metric_id).copied().unwrap_or_default(),
            seconds: span,
        };
        let head = match &spec.pricing.percentage {
            Some(p) if p.has_allowance() && row.is_some() => allowance_head(conn, period, &spec.metric_id, p).await?,
            _ => Vec::new(),
        };
        let overflow = || Rejection::overflow(format_args!("the usage of metric '{}'", spec.metric_id));
        let units = aggregate.quantity(spec.aggregation_type, window).ok_or_else(overflow)?;
        let metered = Metered {
            units,
            fees: aggregate.fee,
            head: &head,
        };
        let price = spec
            .pricing
            .checked_amount(&metered)
            .ok_or_else(|| Rejection::overflow(format_args!("the price of metric '{}'", spec.metric_id)))?;
        usage.insert(spec.metric_id.clone(), (units, price));
    }
    Ok(usage)
}

/// The usage of one period of an execution, per metric.
pub(crate) async fn period_usage(
    conn: &mut PgConnection,
    period: PeriodRef<'_>,
    metrics: &HashMap<String, MetricSpec>,
) -> Result<Usage, HandleError> {
    let rows = store::usage::aggregates(conn, &[period.execution_id.to_string()], &[period.start]).await?;
    let rows: Vec<&AggregateRow> = rows.iter().collect();
    price_period(conn, period, metrics, &rows).await
}

/// Live usage of an execution's open period, per metric; a WEIGHTED_SUM
/// level is taken to hold to the period's end (to `now` for a period
/// billed as presented), so the figure is what the bill would say.
pub(crate) async fn live_usage(
    conn: &mut PgConnection,
    execution_id: &str,
    basis: &PeriodBasis,
    metrics: &HashMap<String, MetricSpec>,
    now: DateTime<Utc>,
) -> Result<Usage, HandleError> {
    let schedule = basis.schedule();
    let start = basis.period_for(&schedule, now);
    let end = schedule.period_containing(start).end.unwrap_or(now);
    period_usage(
        conn,
        PeriodRef {
            execution_id,
            start,
            end,
        },
        metrics,
    )
    .await
}
