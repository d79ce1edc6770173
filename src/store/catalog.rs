//! Metrics and plans of a merchant.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::domain::aggregation::AggregationType;
use crate::domain::catalog::{
    ActionOnFailure, MetricSpec, PlanInterval, PlanModel, PlanRuleType, PlanSpec, PlanStatus, PlanType,
};
use crate::domain::money::Currency;
use crate::domain::period::PlanCalendar;
use crate::domain::pricing::{PercentageTerms, Pricing, PricingType, Tier};
use crate::error::{HandleError, corrupt};
use crate::store::executions::ExecutionRow;

/// A stored metric.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct MetricRow {
    pub merchant_id: String,
    pub metric_id: String,
    pub seq: i64,
    pub name: String,
    pub description: String,
    pub unit: String,
    pub event_type: String,
    pub aggregation_type: String,
    pub aggregation_field: Option<String>,
    pub pricing_type: String,
    pub pricing_model: serde_json::Value,
    pub package_size: Option<Decimal>,
    pub free_units: Decimal,
    pub percentage: Option<serde_json::Value>,
    pub currency: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A stored plan with its metrics in order.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct PlanRow {
    pub merchant_id: String,
    pub plan_id: String,
    pub plan_name: String,
    pub plan_description: String,
    #[sqlx(try_from = "String")]
    pub plan_type: PlanType,
    #[sqlx(try_from = "String")]
    pub plan_model: PlanModel,
    #[sqlx(try_from = "String")]
    pub plan_interval: PlanInterval,
    #[sqlx(try_from = "String")]
    pub plan_rule_type: PlanRuleType,
    pub plan_rule_value: Option<i32>,
    pub plan_amount: Decimal,
    #[sqlx(try_from = "String")]
    pub plan_currency: Currency,
    pub max_amount: Option<Decimal>,
    pub minimum_commitment: Option<Decimal>,
    /// `[{amount, recurring}, ...]`, in order.
    pub usage_thresholds: serde_json::Value,
    pub max_retry: i32,
    #[sqlx(try_from = "String")]
    pub plan_action_on_failure: ActionOnFailure,
    #[sqlx(try_from = "String")]
    pub plan_status: PlanStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub metric_ids: Vec<String>,
}

pub(crate) async fn find_metric(
    conn: &mut PgConnection,
    merchant_id: &str,
    metric_id: &str,
) -> Result<Option<MetricRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM metrics WHERE merchant_id = $1 AND metric_id = $2")
        .bind(merchant_id)
        .bind(metric_id)
        .fetch_optional(conn)
        .await
}

/// The metrics named, in the order named; missing ones are left out.
pub(crate) async fn find_metrics(
    conn: &mut PgConnection,
    merchant_id: &str,
    metric_ids: &[String],
) -> Result<Vec<MetricRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.* FROM UNNEST($2::text[]) WITH ORDINALITY AS wanted(metric_id, n)
         JOIN metrics m ON m.merchant_id = $1 AND m.metric_id = wanted.metric_id
         ORDER BY wanted.n",
    )
    .bind(merchant_id)
    .bind(metric_ids)
    .fetch_all(conn)
    .await
}

/// Inserts a metric; `None` if the id is taken.
pub(crate) async fn insert_metric(
    conn: &mut PgConnection,
    merchant_id: &str,
    spec: &MetricSpec,
    now: DateTime<Utc>,
) -> Result<Option<MetricRow>, sqlx::Error> {
    let encode = |e: serde_json::Error| sqlx::Error::Encode(Box::new(e));
    let model = serde_json::to_value(&spec.pricing.tiers).map_err(encode)?;
    let percentage = spec
        .pricing
        .percentage
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(encode)?;
    sqlx::query_as(
        "INSERT INTO metrics (merchant_id, metric_id, name, description, unit, event_type, aggregation_type,
             aggregation_field, pricing_type, pricing_model, package_size, free_units, currency, created_at, updated_at,
             percentage)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15)
         ON CONFLICT DO NOTHING RETURNING *",
    )
    .bind(merchant_id)
    .bind(&spec.metric_id)
    .bind(&spec.name)
    .bind(&spec.description)
    .bind(&spec.unit)
    .bind(&spec.event_type)
    .bind(spec.aggregation_type.as_str())
    .bind(&spec.aggregation_field)
    .bind(spec.pricing.pricing_type.as_str())
    .bind(model)
    .bind(spec.pricing.package_size)
    .bind(spec.pricing.free_units)
    .bind(spec.currency.as_str())
    .bind(now)
    .bind(percentage)
    .fetch_optional(conn)
    .await
}

const PLAN_SELECT: &str = "SELECT p.*, COALESCE(
        (SELECT array_agg(pm.metric_id ORDER BY pm.position) FROM plan_metrics pm
         WHERE pm.merchant_id = p.merchant_id AND pm.plan_id = p.plan_id), '{}') AS metric_ids
     FROM plans p WHERE p.merchant_id = $1 AND p.plan_id = $2";

pub(crate) async fn find_plan(
    conn: &mut PgConnection,
    merchant_id: &str,
    plan_id: &str,
) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as(PLAN_SELECT)
        .bind(merchant_id)
        .bind(plan_id)
        .fetch_optional(conn)
        .await
}

/// Locks a plan row for an update in this transaction.
pub(crate) async fn lock_plan(conn: &mut PgConnection, merchant_id: &str, plan_id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM plans WHERE merchant_id = $1 AND plan_id = $2 FOR UPDATE")
            .bind(merchant_id)
            .bind(plan_id)
            .fetch_optional(conn)
            .await?;
    Ok(found.is_some())
}

/// Inserts or replaces a plan and its metric list. `created` tells which.
pub(crate) async fn upsert_plan(
    conn: &mut PgConnection,
    merchant_id: &str,
    spec: &PlanSpec,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let created: bool = sqlx::query_scalar(
        "INSERT INTO plans (merchant_id, plan_id, plan_name, plan_description, plan_type, plan_model, plan_interval,
             plan_rule_type, plan_rule_value, plan_amount, plan_currency, max_amount, max_retry, plan_action_on_failure,
             created_at, updated_at, minimum_commitment, usage_thresholds)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $16, $17)
         ON CONFLICT (merchant_id, plan_id) DO UPDATE SET
             plan_name = EXCLUDED.plan_name, plan_description = EXCLUDED.plan_description,
             plan_type = EXCLUDED.plan_type, plan_model = EXCLUDED.plan_model,
             plan_interval = EXCLUDED.plan_interval, plan_rule_type = EXCLUDED.plan_rule_type,
             plan_rule_value = EXCLUDED.plan_rule_value, plan_amount = EXCLUDED.plan_amount,
             plan_currency = EXCLUDED.plan_currency, max_amount = EXCLUDED.max_amount,
             max_retry = EXCLUDED.max_retry, plan_action_on_failure = EXCLUDED.plan_action_on_failure,
             updated_at = EXCLUDED.updated_at, minimum_commitment = EXCLUDED.minimum_commitment,
             usage_thresholds = EXCLUDED.usage_thresholds
         RETURNING (xmax = 0)",
    )
    .bind(merchant_id)
    .bind(&spec.plan_id)
    .bind(&spec.plan_name)
    .bind(&spec.plan_description)
    .bind(spec.plan_type.as_str())
    .bind(spec.plan_model.as_str())
    .bind(spec.plan_interval.as_str())
    .bind(spec.plan_rule_type.as_str())
    .bind(spec.plan_rule_value.map(|v| v as i32))
    .bind(spec.plan_amount)
    .bind(spec.plan_currency.as_str())
    .bind(spec.max_amount)
    .bind(spec.max_retry as i32)
    .bind(spec.plan_action_on_failure.as_str())
    .bind(now)
    .bind(spec.minimum_commitment)
    .bind(serde_json::to_value(&spec.usage_thresholds).unwrap_or_default())
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM plan_metrics WHERE merchant_id = $1 AND plan_id = $2")
        .bind(merchant_id)
        .bind(&spec.plan_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO plan_metrics (merchant_id, plan_id, metric_id, position)
         SELECT $1, $2, m.metric_id, m.n FROM UNNEST($3::text[]) WITH ORDINALITY AS m(metric_id, n)",
    )
    .bind(merchant_id)
    .bind(&spec.plan_id)
    .bind(&spec.metric_ids)
    .execute(&mut *conn)
    .await?;
    Ok(created)
}
/// The definition a stored metric was created with.
pub(crate) fn metric_spec(row: &MetricRow) -> Result<MetricSpec, HandleError> {
    let tiers: Vec<Tier> =
        serde_json::from_value(row.pricing_model.clone()).map_err(|e| corrupt("pricing_model", e))?;
    let pricing_type = row
        .pricing_type
        .parse::<PricingType>()
        .map_err(|e| corrupt("pricing_type", e))?;
    let terms: PercentageTerms = match &row.percentage {
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| corrupt("percentage", e))?,
        None => PercentageTerms::default(),
    };
    Ok(MetricSpec {
        metric_id: row.metric_id.clone(),
        name: row.name.clone(),
        description: row.description.clone(),
        unit: row.unit.clone(),
        event_type: row.event_type.clone(),
        aggregation_type: row
            .aggregation_type
            .parse::<AggregationType>()
            .map_err(|e| corrupt("aggregation_type", e))?,
        aggregation_field: row.aggregation_field.clone(),
        pricing: Pricing::build(pricing_type, tiers, row.package_size, row.free_units, terms)
            .map_err(|e| corrupt("pricing", e))?,
        currency: Currency::parse(&row.currency).map_err(|e| corrupt("currency", e))?,
    })
}

/// The definition a stored plan has now.
impl PlanRow {
    /// The plan as the domain sees it.
    pub(crate) fn spec(&self) -> PlanSpec {
        PlanSpec {
            plan_id: self.plan_id.clone(),
            plan_name: self.plan_name.clone(),
            plan_description: self.plan_description.clone(),
            plan_type: self.plan_type,
            plan_model: self.plan_model,
            plan_interval: self.plan_interval,
            plan_rule_type: self.plan_rule_type,
            plan_rule_value: self.plan_rule_value.map(|v| v.max(0) as u32),
            plan_amount: self.plan_amount,
            plan_currency: self.plan_currency.clone(),
            max_amount: self.max_amount,
            minimum_commitment: self.minimum_commitment,
            // Written by `upsert_plan` from a checked list.
            usage_thresholds: serde_json::from_value(self.usage_thresholds.clone()).unwrap_or_default(),
            max_retry: self.max_retry.max(0) as u32,
            plan_action_on_failure: self.plan_action_on_failure,
            metric_ids: self.metric_ids.clone(),
        }
    }

    /// The plan's part of its executions' period layout.
    pub(crate) fn calendar(&self) -> PlanCalendar {
        PlanCalendar::new(
            self.plan_interval,
            self.plan_model,
            self.plan_rule_type,
            self.plan_rule_value,
        )
    }
}

/// A plan of this merchant that must exist: `PLAN_NOT_FOUND` naming
/// `field` when it does not.
pub(crate) async fn require_plan(
    conn: &mut PgConnection,
    merchant_id: &str,
    plan_id: &str,
    field: &str,
) -> Result<PlanRow, HandleError> {
    find_plan(conn, merchant_id, plan_id).await?.ok_or_else(|| {
        HandleError::Rejected(crate::error::Rejection::new(
            crate::error::ErrorCode::PlanNotFound,
            format!(
                "{field} '{}' does not exist for this merchant",
                crate::error::short(plan_id)
            ),
        ))
    })
}

/// The metrics an execution may use: its plan's, then the ones its
/// customer prices (`metric_info`) add.
pub(crate) async fn plan_metrics(
    conn: &mut PgConnection,
    row: &ExecutionRow,
    plan: &PlanRow,
) -> Result<Vec<MetricRow>, sqlx::Error> {
    let mut ids = plan.metric_ids.clone();
    for (id, _) in crate::domain::catalog::customer_prices(&row.metric_info) {
        if !ids.iter().any(|m| m == id) {
            ids.push(id.to_string());
        }
    }
    find_metrics(conn, &row.merchant_id, &ids).await
}
