//! Metered usage: where an event belongs, what an execution has used in its
//! open period, and the batch ingestion that counts each event once.

pub(crate) mod ingest;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;

use crate::domain::aggregation::Aggregate;
use crate::domain::catalog::MetricSpec;
use crate::domain::period::PeriodBasis;
use crate::domain::pricing::Pricing;
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
    }
}

/// `used_till_now` and its price for one metric; a price beyond the range
/// of amounts is an `AMOUNT_OVERFLOW` error, never a panic or a saturated value.
pub(crate) fn usage_of(spec: &MetricSpec, aggregate: &Aggregate) -> Result<(Decimal, Decimal), Rejection> {
    let used = aggregate.used_till_now(spec.aggregation_type);
    let price = spec
        .pricing
        .checked_price(used)
        .ok_or_else(|| Rejection::overflow(format_args!("the price of metric '{}'", spec.metric_id)))?;
    Ok((used, price))
}

/// Live usage of an execution's open period, per metric.
pub(crate) async fn live_usage(
    conn: &mut PgConnection,
    execution_id: &str,
    basis: &PeriodBasis,
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
