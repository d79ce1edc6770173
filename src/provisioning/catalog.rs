//! `create_metric`, `create_plan`, `update_plan`, `create_customer`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::outcome::{Outcome, already_exists, not_found};
use crate::domain::catalog::DEFAULT_MAX_RETRY;
use crate::domain::catalog::{ActionOnFailure, MetricSpec, PlanRuleType, PlanSpec, check_text};
use crate::domain::ids::check_id;
use crate::domain::money::Currency;
use crate::domain::pricing::Pricing;
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::documents;
use crate::protocol::provisioning::{CreateCustomer, CreateMetric, PlanFields};
use crate::store;
use crate::store::catalog::MetricRow;
use crate::store::catalog::metric_spec;
use crate::store::customers::CustomerRow;

/// Builds a validated price list.
fn pricing(c: &mut CreateMetric) -> Result<Pricing, Rejection> {
    let terms = c.terms();
    Pricing::build(
        c.pricing_type,
        std::mem::take(&mut c.pricing_model),
        c.package_size,
        c.free_units.unwrap_or(Decimal::ZERO),
        terms,
    )
    .map_err(|e| Rejection::new(ErrorCode::InvalidField, e.to_string()))
}

pub(super) fn currency(field: &str, code: &str) -> Result<Currency, Rejection> {
    Currency::parse(code).map_err(|p| Rejection::field(field, p))
}

pub(super) async fn create_metric(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    mut c: CreateMetric,
) -> Result<Outcome, HandleError> {
    let spec = MetricSpec {
        pricing: pricing(&mut c)?,
        currency: currency("currency", &c.currency)?,
        metric_id: c.metric_id,
        name: c.name,
        description: c.description,
        unit: c.unit,
        event_type: c.event_type,
        aggregation_type: c.aggregation_type,
        aggregation_field: c.aggregation_field.filter(|f| !f.is_empty()),
    };
    spec.validate()?;
    let row = match store::catalog::insert_metric(conn, merchant_id, &spec, now).await? {
        Some(row) => row,
        None => {
            let existing = store::catalog::find_metric(conn, merchant_id, &spec.metric_id)
                .await?
                .ok_or_else(|| HandleError::Transient("metric vanished during create".into()))?;
            if metric_spec(&existing)? != spec {
                return Err(already_exists("metric_id", &spec.metric_id, ""));
            }
            existing
        }
    };
    Ok(Outcome::quiet(documents::success(
        merchant_id,
        documents::metric(&row, None, None),
    )))
}

/// `usage_thresholds` as given, put in order (the plan checks them).
fn thresholds(
    list: Option<Vec<crate::protocol::provisioning::ThresholdIn>>,
) -> Vec<crate::domain::thresholds::UsageThreshold> {
    let mut list: Vec<crate::domain::thresholds::UsageThreshold> =
        list.unwrap_or_default().into_iter().map(Into::into).collect();
    crate::domain::thresholds::put_in_order(&mut list);
    list
}

fn required<T>(field: &str, value: Option<T>) -> Result<T, Rejection> {
    value.ok_or_else(|| Rejection::field(field, "is required"))
}

/// A complete plan from `create_plan` fields, with the documented defaults.
fn new_plan_spec(f: PlanFields) -> Result<PlanSpec, Rejection> {
    Ok(PlanSpec {
        plan_name: required("plan_name", f.plan_name)?,
        plan_description: f.plan_description.unwrap_or_default(),
        plan_type: required("plan_type", f.plan_type)?,
        plan_model: required("plan_model", f.plan_model)?,
        plan_interval: required("plan_interval", f.plan_interval)?,
        plan_rule_type: f.plan_rule_type.unwrap_or(PlanRuleType::On),
        plan_rule_value: f.plan_rule_value,
        plan_amount: f.plan_amount.unwrap_or(Decimal::ZERO),
        plan_currency: currency("plan_currency", &required("plan_currency", f.plan_currency)?)?,
        max_amount: f.max_amount,
        minimum_commitment: f.minimum_commitment,
        usage_thresholds: thresholds(f.usage_thresholds),
        max_retry: f.max_retry.unwrap_or(DEFAULT_MAX_RETRY),
        plan_action_on_failure: f.plan_action_on_failure.unwrap_or(ActionOnFailure::Retry),
        metric_ids: f.metric_ids.unwrap_or_default(),
        plan_id: f.plan_id,
    })
}

/// `update_plan`: only the fields named change.
fn merged_plan_spec(mut spec: PlanSpec, f: PlanFields) -> Result<PlanSpec, Rejection> {
    if let Some(v) = f.plan_name {
        spec.plan_name = v;
    }
    if let Some(v) = f.plan_description {
        spec.plan_description = v;
    }
    if let Some(v) = f.plan_type {
        spec.plan_type = v;
    }
    if let Some(v) = f.plan_model {
        spec.plan_model = v;
    }
    if let Some(v) = f.plan_interval {
        spec.plan_interval = v;
    }
    if let Some(v) = f.plan_rule_type {
        spec.plan_rule_type = v;
    }
    if f.plan_rule_value.is_some() {
        spec.plan_rule_value = f.plan_rule_value;
    }
    if let Some(v) = f.plan_amount {
        spec.plan_amount = v;
    }
    if let Some(v) = f.plan_currency {
        spec.plan_currency = currency("plan_currency", &v)?;
    }
    if f.max_amount.is_some() {
        spec.max_amount = f.max_amount;
    }
    if f.minimum_commitment.is_some() {
        spec.minimum_commitment = f.minimum_commitment;
    }
    if f.usage_thresholds.is_some() {
        spec.usage_thresholds = thresholds(f.usage_thresholds);
    }
    if let Some(v) = f.max_retry {
        spec.max_retry = v;
    }
    if let Some(v) = f.plan_action_on_failure {
        spec.plan_action_on_failure = v;
    }
    if let Some(v) = f.metric_ids {
        spec.metric_ids = v;
    }
    Ok(spec)
}

/// Checks that every metric of the plan exists and is priced in its currency.
async fn plan_metric_rows(
    conn: &mut PgConnection,
    merchant_id: &str,
    spec: &PlanSpec,
) -> Result<Vec<MetricRow>, HandleError> {
    let rows = store::catalog::find_metrics(conn, merchant_id, &spec.metric_ids).await?;
    for (i, id) in spec.metric_ids.iter().enumerate() {
        let Some(row) = rows.iter().find(|r| &r.metric_id == id) else {
            return Err(not_found(ErrorCode::MetricNotFound, &format!("metric_ids[{i}]"), id));
        };
        spec.check_metric(i, &metric_spec(row)?)?;
    }
    Ok(rows)
}

async fn save_plan(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    spec: &PlanSpec,
) -> Result<Outcome, HandleError> {
    spec.validate()?;
    let metrics = plan_metric_rows(conn, merchant_id, spec).await?;
    store::catalog::upsert_plan(conn, merchant_id, spec, now).await?;
    plan_outcome(conn, merchant_id, &spec.plan_id, &metrics).await
}

async fn plan_outcome(
    conn: &mut PgConnection,
    merchant_id: &str,
    plan_id: &str,
    metrics: &[MetricRow],
) -> Result<Outcome, HandleError> {
    let row = store::catalog::find_plan(conn, merchant_id, plan_id)
        .await?
        .ok_or_else(|| HandleError::Transient("plan vanished during write".into()))?;
    let doc = documents::plan(&row, metrics, &serde_json::Value::Null, None);
    Ok(Outcome::quiet(documents::success(merchant_id, doc)))
}

pub(super) async fn create_plan(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    f: PlanFields,
) -> Result<Outcome, HandleError> {
    check_id(&f.plan_id).map_err(|p| Rejection::field("plan_id", p))?;
    let spec = new_plan_spec(f)?;
    spec.validate()?;
    if store::catalog::lock_plan(conn, merchant_id, &spec.plan_id).await? {
        let existing = store::catalog::find_plan(conn, merchant_id, &spec.plan_id)
            .await?
            .ok_or_else(|| HandleError::Transient("plan vanished during create".into()))?;
        if existing.spec() != spec {
            return Err(already_exists(
                "plan_id",
                &spec.plan_id,
                "; use update_plan to change it",
            ));
        }
        let metrics = store::catalog::find_metrics(conn, merchant_id, &existing.metric_ids).await?;
        return plan_outcome(conn, merchant_id, &spec.plan_id, &metrics).await;
    }
    save_plan(conn, merchant_id, now, &spec).await
}

pub(super) async fn update_plan(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    f: PlanFields,
) -> Result<Outcome, HandleError> {
    if !store::catalog::lock_plan(conn, merchant_id, &f.plan_id).await? {
        return Err(not_found(ErrorCode::PlanNotFound, "plan_id", &f.plan_id));
    }
    let existing = store::catalog::find_plan(conn, merchant_id, &f.plan_id)
        .await?
        .ok_or_else(|| HandleError::Transient("plan vanished during update".into()))?;
    let spec = merged_plan_spec(existing.spec(), f)?;
    save_plan(conn, merchant_id, now, &spec).await
}

fn check_email(email: &str) -> Result<(), Rejection> {
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if valid {
        Ok(())
    } else {
        Err(Rejection::field(
            "email",
            "must be an e-mail address like name@example.com",
        ))
    }
}

fn check_mobile(mobile: &str) -> Result<(), Rejection> {
    let digits = mobile.strip_prefix('+').unwrap_or(mobile);
    if (6..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Rejection::field(
            "mobile",
            "must be 6 to 20 digits, optionally after a leading +",
        ))
    }
}

pub(super) async fn create_customer(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    c: CreateCustomer,
) -> Result<Outcome, HandleError> {
    check_id(&c.customer_id).map_err(|p| Rejection::field("customer_id", p))?;
    if let Some(name) = &c.name {
        check_text("name", name, false)?;
    }
    if let Some(email) = &c.email {
        check_email(email)?;
    }
    if let Some(mobile) = &c.mobile {
        check_mobile(mobile)?;
    }
    let row = CustomerRow {
        merchant_id: merchant_id.to_string(),
        customer_id: c.customer_id,
        name: c.name,
        email: c.email,
        mobile: c.mobile,
        created_at: now,
        updated_at: now,
    };
    let stored = match store::customers::insert(conn, &row).await? {
        Some(stored) => stored,
        None => {
            let existing = store::customers::find(conn, merchant_id, &row.customer_id)
                .await?
                .ok_or_else(|| HandleError::Transient("customer vanished during create".into()))?;
            if (&existing.name, &existing.email, &existing.mobile) != (&row.name, &row.email, &row.mobile) {
                return Err(already_exists("customer_id", &row.customer_id, ""));
            }
            existing
        }
    };
    Ok(Outcome::quiet(documents::success(
        merchant_id,
        documents::customer(&stored),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_rules() {
        assert!(check_email("a@example.com").is_ok());
        assert!(check_email("a@b").is_err());
        assert!(check_email("@b.com").is_err());
        assert!(check_email("a b@c.com").is_err());
        assert!(check_mobile("+919876543210").is_ok());
        assert!(check_mobile("98765").is_err());
        assert!(check_mobile("98x7654321").is_err());
    }

    #[test]
    fn create_plan_requires_its_fields_and_defaults_the_rest() {
        let fields: PlanFields = serde_json::from_str(
            r#"{"plan_id":"p","plan_name":"P","plan_type":"POST_DEBIT","plan_model":"FIXED","plan_interval":"MONTHLY","plan_currency":"inr"}"#,
        )
        .expect("fields");
        let spec = new_plan_spec(fields).expect("complete");
        assert_eq!(spec.max_retry, DEFAULT_MAX_RETRY);
        assert_eq!(spec.plan_action_on_failure, ActionOnFailure::Retry);
        assert_eq!(spec.plan_currency.as_str(), "INR");
        let fields: PlanFields = serde_json::from_str(r#"{"plan_id":"p","plan_name":"P"}"#).expect("fields");
        assert_eq!(
            new_plan_spec(fields).expect_err("incomplete").message,
            "plan_type is required"
        );
    }
}
