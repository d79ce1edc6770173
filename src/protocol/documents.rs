//! Response documents, shaped like the product's own answers (`create`, `get`, `list`).

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::error::Rejection;
use crate::store::catalog::{MetricRow, PlanRow};
use crate::store::customers::CustomerRow;
use crate::store::executions::ExecutionRow;

/// A decimal as an exact JSON number (`10.5`, not `"10.5"`).
pub(crate) fn num(d: Decimal) -> Value {
    serde_json::Number::from_str(&d.normalize().to_string())
        .map_or_else(|_| Value::String(d.to_string()), Value::Number)
}

fn opt_num(d: Option<Decimal>) -> Value {
    d.map_or(Value::Null, num)
}

/// `2026-01-19T10:08:42Z`
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2026-03-06 14:05:47`, the form the product uses for plan times.
fn plan_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The answer to a failed command.
pub(crate) fn failure(rejection: &Rejection) -> Value {
    json!({
        "success": false,
        "error_code": rejection.code.as_str(),
        "error_message": rejection.message,
    })
}

/// Live usage of one metric in the open period: (`used_till_now`, `used_amount`).
pub(crate) type Usage = HashMap<String, (Decimal, Decimal)>;

/// The fields of a metric that a customer's own prices (`metric_info`) replace.
const PRICING_FIELDS: [&str; 10] = [
    "pricing_type",
    "pricing_model",
    "package_size",
    "free_units",
    "rate",
    "fixed_amount",
    "free_units_per_events",
    "free_units_per_total_aggregation",
    "per_transaction_min_amount",
    "per_transaction_max_amount",
];

/// A metric, with live usage when shown inside an execution. `pricing`
/// replaces the metric's own pricing for per-customer (`VARIABLE`) prices.
pub(crate) fn metric(row: &MetricRow, pricing: Option<&Value>, usage: Option<(Decimal, Decimal)>) -> Value {
    let mut doc = json!({
        "id": row.seq,
        "metric_id": row.metric_id,
        "merchant_id": row.merchant_id,
        "name": row.name,
        "description": row.description,
        "unit": row.unit,
        "event_type": row.event_type,
        "aggregation_type": row.aggregation_type,
        "aggregation_field": row.aggregation_field,
        "pricing_type": row.pricing_type,
        "pricing_model": row.pricing_model,
        "package_size": opt_num(row.package_size),
        "free_units": num(row.free_units),
        "currency": row.currency,
        "status": row.status,
        "created_at": timestamp(row.created_at),
        "updated_at": timestamp(row.updated_at),
    });
    if let (Some(Value::Object(terms)), Some(obj)) = (&row.percentage, doc.as_object_mut()) {
        obj.extend(terms.clone());
    }
    if let (Some(over), Some(obj)) = (pricing, doc.as_object_mut()) {
        // The customer's price replaces the metric's: none of the metric's
        // own PERCENTAGE fields stays beside it.
        for key in &PRICING_FIELDS[4..] {
            obj.remove(*key);
        }
        for key in PRICING_FIELDS {
            if let Some(v) = over.get(key) {
                obj.insert(key.to_string(), v.clone());
            }
        }
    }
    if let (Some((used, amount)), Some(obj)) = (usage, doc.as_object_mut()) {
        obj.insert("used_till_now".into(), num(used));
        obj.insert("used_amount".into(), num(amount));
    }
    doc
}

/// A plan as `plan_info`; `metric_info` carries usage when `usage` is given.
pub(crate) fn plan(row: &PlanRow, metrics: &[MetricRow], overrides: &Value, usage: Option<&Usage>) -> Value {
    let metric_info: Vec<Value> = metrics
        .iter()
        .map(|m| {
            let over = crate::domain::catalog::customer_price(overrides, &m.metric_id);
            let used = usage.map(|u| u.get(&m.metric_id).copied().unwrap_or((Decimal::ZERO, Decimal::ZERO)));
            metric(m, over, used)
        })
        .collect();
    json!({
        "plan_id": row.plan_id,
        "plan_name": row.plan_name,
        "plan_description": row.plan_description,
        "plan_type": row.plan_type,
        "plan_model": row.plan_model,
        "plan_interval": row.plan_interval,
        "plan_rule_type": row.plan_rule_type,
        "plan_rule_value": row.plan_rule_value,
        "plan_amount": num(row.plan_amount),
        "plan_currency": row.plan_currency.as_str(),
        "max_amount": opt_num(row.max_amount),
        "minimum_commitment": opt_num(row.minimum_commitment),
        "usage_thresholds": row.usage_thresholds,
        "max_retry": row.max_retry,
        "plan_action_on_failure": row.plan_action_on_failure,
        "plan_status": row.plan_status,
        "plan_created_at": plan_time(row.created_at),
        "plan_updated_at": plan_time(row.updated_at),
        "metric_ids": row.metric_ids,
        "metric_info": metric_info,
    })
}

/// A customer.
pub(crate) fn customer(row: &CustomerRow) -> Value {
    json!({
        "customer_id": row.customer_id,
        "name": row.name,
        "email": row.email,
        "mobile": row.mobile,
        "created_at": timestamp(row.created_at),
        "updated_at": timestamp(row.updated_at),
    })
}

/// One billing execution as `create` and `get` answer it and `list` lists it.
pub(crate) fn execution(row: &ExecutionRow, plan_info: Value) -> Value {
    json!({
        "billing_execution_info_id": row.id,
        "customer_id": row.customer_id,
        "status": row.status,
        "source": "MERCHANT_REF_ID",
        "source_object_id": row.merchant_ref_id.clone().unwrap_or_default(),
        "amount": num(row.credit_balance),
        "billing_start_date": row.billing_start_date.map(timestamp),
        "billed_until": row.billed_until.map(timestamp),
        "next_bill_at": row.next_bill_at.map(timestamp),
        "carried_amount": num(row.carried_amount),
        "pending_plan_id": row.pending_plan_id,
        "usage_alerts": row.usage_alerts,
        "created_at": timestamp(row.created_at),
        "updated_at": timestamp(row.updated_at),
        "plan_info": plan_info,
    })
}

/// The short form of an execution carried in webhooks.
pub(crate) fn execution_summary(row: &ExecutionRow) -> Value {
    json!({
        "billing_execution_info_id": row.id,
        "customer_id": row.customer_id,
        "plan_id": row.plan_id,
        "status": row.status,
        "source": "MERCHANT_REF_ID",
        "source_object_id": row.merchant_ref_id.clone().unwrap_or_default(),
        "amount": num(row.credit_balance),
    })
}

/// Wraps a document as a successful answer.
pub(crate) fn success(merchant_id: &str, mut body: Value) -> Value {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("success".into(), Value::Bool(true));
        obj.insert("message".into(), Value::String("Success".into()));
        obj.insert("merchant_id".into(), Value::String(merchant_id.into()));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn decimals_are_exact_numbers() {
        assert_eq!(num(Decimal::new(1100, 2)).to_string(), "11");
        assert_eq!(num(Decimal::new(1050, 2)).to_string(), "10.5");
        assert_eq!(
            num(Decimal::from_str("0.1234567890123456789").expect("d")).to_string(),
            "0.1234567890123456789"
        );
    }

    #[test]
    fn failures_have_the_documented_shape() {
        let doc = failure(&Rejection::new(ErrorCode::PlanNotFound, "plan_id 'x' does not exist"));
        assert_eq!(doc["success"], false);
        assert_eq!(doc["error_code"], "PLAN_NOT_FOUND");
        assert_eq!(doc["error_message"], "plan_id 'x' does not exist");
    }
}
