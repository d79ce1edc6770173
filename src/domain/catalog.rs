//! What a merchant sells: metrics (how usage is measured and priced) and
//! plans (how and when a customer is billed), with the rules they must obey.

use rust_decimal::Decimal;

use super::aggregation::AggregationType;
use super::ids::check_id;
use super::money::Currency;
use super::pricing::{Pricing, PricingType};
use crate::error::Rejection;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $(#[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }

            /// Parses the wire spelling, as stored in the database.
            pub fn parse(value: &str) -> Option<Self> {
                match value {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// The mapping at the store boundary: a stored spelling that is not
        /// a variant is an error naming it.
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                $name::parse(&value).ok_or_else(|| format!("'{value}' is not a {}", stringify!($name)))
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum!(
    /// When the plan amount is collected: before or after the period.
    PlanType { PreDebit = "PRE_DEBIT", PostDebit = "POST_DEBIT" }
);

wire_enum!(
    /// What a bill is made of.
    PlanModel {
        Fixed = "FIXED",
        Variable = "VARIABLE",
        UsageBased = "USAGE_BASED",
        Hybrid = "HYBRID",
        UsageCalculation = "USAGE_CALCULATION",
    }
);

wire_enum!(
    /// How often a plan bills.
    PlanInterval {
        Onetime = "ONETIME",
        Daily = "DAILY",
        Weekly = "WEEKLY",
        Fortnightly = "FORTNIGHTLY",
        Monthly = "MONTHLY",
        Bimonthly = "BIMONTHLY",
        Quarterly = "QUARTERLY",
        Halfyearly = "HALFYEARLY",
        Yearly = "YEARLY",
        Aspresented = "ASPRESENTED",
    }
);

wire_enum!(
    /// How `plan_rule_value` anchors the billing day.
    PlanRuleType { On = "ON", Before = "BEFORE", After = "AFTER" }
);

wire_enum!(
    /// What happens once a debit has failed `max_retry` retries.
    ActionOnFailure { Retry = "RETRY", Skip = "SKIP", Revoke = "REVOKE" }
);

wire_enum!(
    /// Whether a plan takes new executions; plans are `ACTIVE` when made.
    PlanStatus { Active = "ACTIVE", Inactive = "INACTIVE" }
);

impl PlanModel {
    /// Whether bills of this model carry usage lines.
    pub(crate) fn has_usage(self) -> bool {
        !matches!(self, PlanModel::Fixed)
    }
}

/// Highest `max_retry` a plan may ask for.
pub(crate) const MAX_RETRY_LIMIT: u32 = 20;

/// A metric as defined by `create_metric`, validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetricSpec {
    pub metric_id: String,
    pub name: String,
    pub description: String,
    pub unit: String,
    pub event_type: String,
    pub aggregation_type: AggregationType,
    pub aggregation_field: Option<String>,
    pub pricing: Pricing,
    pub currency: Currency,
}

impl MetricSpec {
    /// Rules that span fields; field-level checks happen where each is parsed.
    pub(crate) fn validate(&self) -> Result<(), Rejection> {
        check_id(&self.metric_id).map_err(|p| Rejection::field("metric_id", p))?;
        check_text("name", &self.name, true)?;
        check_text("description", &self.description, false)?;
        check_text("unit", &self.unit, false)?;
        check_text("event_type", &self.event_type, false)?;
        match (&self.aggregation_type, &self.aggregation_field) {
            (AggregationType::UniqueCount, None) => {
                return Err(Rejection::field(
                    "aggregation_field",
                    "is required when aggregation_type is UNIQUE_COUNT",
                ));
            }
            (_, Some(field)) => check_text("aggregation_field", field, true)?,
            _ => {}
        }
        check_pricing_fits(self.aggregation_type, &self.pricing).map_err(|m| Rejection::field("pricing_type", m))
    }
}

/// Whether a pricing can price a metric of this aggregation: PERCENTAGE
/// takes a share of each event's value, so only SUM metrics (whose events
/// are amounts) may have it. The error completes "pricing_type ...".
pub(crate) fn check_pricing_fits(aggregation: AggregationType, pricing: &Pricing) -> Result<(), String> {
    if pricing.pricing_type == PricingType::Percentage && aggregation != AggregationType::Sum {
        return Err(format!(
            "PERCENTAGE needs aggregation_type SUM (each event's value is an amount), got {aggregation}"
        ));
    }
    Ok(())
}

/// A plan as defined by `create_plan` (or the result of `update_plan`), validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlanSpec {
    pub plan_id: String,
    pub plan_name: String,
    pub plan_description: String,
    pub plan_type: PlanType,
    pub plan_model: PlanModel,
    pub plan_interval: PlanInterval,
    pub plan_rule_type: PlanRuleType,
    pub plan_rule_value: Option<u32>,
    pub plan_amount: Decimal,
    pub plan_currency: Currency,
    pub max_amount: Option<Decimal>,
    /// The least a period's bill (plan amount and usage) may come to.
    pub minimum_commitment: Option<Decimal>,
    /// Progressive billing: an interim bill when a period's usage amount
    /// reaches one of these (checked and in order, see [`super::thresholds`]).
    pub usage_thresholds: Vec<super::thresholds::UsageThreshold>,
    pub max_retry: u32,
    pub plan_action_on_failure: ActionOnFailure,
    pub metric_ids: Vec<String>,
}

impl PlanSpec {
    /// Rules that span fields. Metric existence and currency are checked by
    /// the caller against the catalog, see [`PlanSpec::check_metric`].
    pub(crate) fn validate(&self) -> Result<(), Rejection> {
        check_id(&self.plan_id).map_err(|p| Rejection::field("plan_id", p))?;
        check_text("plan_name", &self.plan_name, true)?;
        check_text("plan_description", &self.plan_description, false)?;
        if let Some(v) = self.plan_rule_value
            && !(1..=31).contains(&v)
        {
            return Err(Rejection::field("plan_rule_value", "must be between 1 and 31"));
        }
        if self.plan_amount.is_sign_negative() && !self.plan_amount.is_zero() {
            return Err(Rejection::field("plan_amount", "must not be negative"));
        }
        if !self.plan_currency.fits_minor_units(self.plan_amount) {
            return Err(Rejection::field(
                "plan_amount",
                format_args!(
                    "has more decimals than {} allows ({})",
                    self.plan_currency,
                    self.plan_currency.minor_units()
                ),
            ));
        }
        if let Some(max) = self.max_amount
            && max <= Decimal::ZERO
        {
            return Err(Rejection::field("max_amount", "must be greater than zero"));
        }
        if let Some(minimum) = self.minimum_commitment {
            if minimum.is_sign_negative() && !minimum.is_zero() {
                return Err(Rejection::field("minimum_commitment", "must not be negative"));
            }
            if !self.plan_currency.fits_minor_units(minimum) {
                return Err(Rejection::field(
                    "minimum_commitment",
                    format_args!(
                        "has more decimals than {} allows ({})",
                        self.plan_currency,
                        self.plan_currency.minor_units()
                    ),
                ));
            }
        }
        if !self.usage_thresholds.is_empty() {
            if !self.plan_model.has_usage()
                || bills_on_present(self.plan_interval, self.plan_model)
                || self.plan_interval == PlanInterval::Onetime
            {
                return Err(Rejection::field(
                    "usage_thresholds",
                    "need a plan that bills usage by period (USAGE_BASED, HYBRID or VARIABLE, not ONETIME or ASPRESENTED)",
                ));
            }
            super::thresholds::check_thresholds(&self.usage_thresholds, &self.plan_currency)?;
        }
        if let Some(max) = self.max_amount
            && !self.plan_currency.fits_minor_units(max)
        {
            return Err(Rejection::field(
                "max_amount",
                format_args!(
                    "has more decimals than {} allows ({})",
                    self.plan_currency,
                    self.plan_currency.minor_units()
                ),
            ));
        }
        if self.max_retry > MAX_RETRY_LIMIT {
            return Err(Rejection::field(
                "max_retry",
                format_args!("must be between 0 and {MAX_RETRY_LIMIT}"),
            ));
        }
        if matches!(
            self.plan_model,
            PlanModel::UsageBased | PlanModel::Hybrid | PlanModel::UsageCalculation
        ) && self.metric_ids.is_empty()
        {
            return Err(Rejection::field(
                "metric_ids",
                format_args!("must name at least one metric for a {} plan", self.plan_model.as_str()),
            ));
        }
        for (i, id) in self.metric_ids.iter().enumerate() {
            check_id(id).map_err(|p| Rejection::field(&format!("metric_ids[{i}]"), p))?;
            if self.metric_ids[..i].contains(id) {
                return Err(Rejection::field(
                    &format!("metric_ids[{i}]"),
                    format_args!("repeats '{id}'"),
                ));
            }
        }
        Ok(())
    }

    /// A metric of the plan must be billed in the plan's currency.
    pub(crate) fn check_metric(&self, index: usize, metric: &MetricSpec) -> Result<(), Rejection> {
        if metric.currency != self.plan_currency {
            return Err(Rejection::field(
                &format!("metric_ids[{index}]"),
                format_args!(
                    "names metric '{}' priced in {}, but plan_currency is {}",
                    metric.metric_id, metric.currency, self.plan_currency
                ),
            ));
        }
        Ok(())
    }
}

/// Longest free text accepted in a name or description.
pub(crate) const MAX_TEXT_LEN: usize = 1000;

/// Checks a free-text field: optional or not, bounded, no control characters.
pub(crate) fn check_text(field: &str, value: &str, required: bool) -> Result<(), Rejection> {
    if required && value.trim().is_empty() {
        return Err(Rejection::field(field, "is required"));
    }
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(Rejection::field(
            field,
            format_args!("must be at most {MAX_TEXT_LEN} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Rejection::field(field, "must not contain control characters"));
    }
    Ok(())
}

/// Default number of retries of a failed debit when a plan names none.
pub(crate) const DEFAULT_MAX_RETRY: u32 = 3;

/// The customer prices an execution stores (`metric_info`): each entry
/// with the metric id it prices.
pub(crate) fn customer_prices(metric_info: &serde_json::Value) -> impl Iterator<Item = (&str, &serde_json::Value)> {
    metric_info
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| Some((entry.get("metric_id")?.as_str()?, entry)))
}

/// The customer's price of one metric, if the execution has one.
pub(crate) fn customer_price<'a>(metric_info: &'a serde_json::Value, metric_id: &str) -> Option<&'a serde_json::Value> {
    customer_prices(metric_info)
        .find(|(id, _)| *id == metric_id)
        .map(|(_, entry)| entry)
}

/// Whether a plan bills only when presented (never on a schedule).
pub(crate) fn bills_on_present(interval: PlanInterval, model: PlanModel) -> bool {
    interval == PlanInterval::Aspresented || model == PlanModel::UsageCalculation
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pricing::{PricingType, Tier, UpTo};
    use crate::error::ErrorCode;

    fn plan() -> PlanSpec {
        PlanSpec {
            plan_id: "pro".into(),
            plan_name: "Pro".into(),
            plan_description: String::new(),
            plan_type: PlanType::PostDebit,
            plan_model: PlanModel::UsageBased,
            plan_interval: PlanInterval::Monthly,
            plan_rule_type: PlanRuleType::On,
            plan_rule_value: Some(1),
            plan_amount: Decimal::new(49900, 2),
            plan_currency: Currency::parse("INR").expect("ok"),
            max_amount: None,
            minimum_commitment: None,
            usage_thresholds: Vec::new(),
            max_retry: 3,
            plan_action_on_failure: ActionOnFailure::Retry,
            metric_ids: vec!["api_calls".into()],
        }
    }

    fn metric(currency: &str) -> MetricSpec {
        MetricSpec {
            metric_id: "api_calls".into(),
            name: "API calls".into(),
            description: String::new(),
            unit: "call".into(),
            event_type: "API".into(),
            aggregation_type: AggregationType::Count,
            aggregation_field: None,
            pricing: Pricing {
                pricing_type: PricingType::Fixed,
                tiers: vec![Tier::unit(Decimal::ONE, UpTo::Infinity, Decimal::ZERO)],
                package_size: None,
                free_units: Decimal::ZERO,
                percentage: None,
            },
            currency: Currency::parse(currency).expect("ok"),
        }
    }

    fn field_error(result: Result<(), Rejection>) -> String {
        let err = result.expect_err("should be rejected");
        assert_eq!(err.code, ErrorCode::InvalidField);
        err.message
    }

    #[test]
    fn a_good_plan_passes() {
        assert!(plan().validate().is_ok());
    }

    #[test]
    fn each_plan_rule_names_its_field() {
        type Case = (fn(&mut PlanSpec), &'static str);
        let cases: Vec<Case> = vec![
            (|p| p.plan_id = String::new(), "plan_id"),
            (|p| p.plan_name = " ".into(), "plan_name"),
            (|p| p.plan_rule_value = Some(32), "plan_rule_value"),
            (|p| p.plan_rule_value = Some(0), "plan_rule_value"),
            (|p| p.plan_amount = Decimal::new(-1, 0), "plan_amount"),
            (|p| p.plan_amount = Decimal::new(1001, 3), "plan_amount"),
            (|p| p.max_amount = Some(Decimal::ZERO), "max_amount"),
            (|p| p.max_amount = Some(Decimal::new(1001, 3)), "max_amount"),
            (
                |p| p.minimum_commitment = Some(Decimal::new(-1, 0)),
                "minimum_commitment",
            ),
            (
                |p| p.minimum_commitment = Some(Decimal::new(1001, 3)),
                "minimum_commitment",
            ),
            (|p| p.max_retry = 21, "max_retry"),
            (|p| p.metric_ids.clear(), "metric_ids"),
            (|p| p.metric_ids = vec!["a".into(), "a".into()], "metric_ids[1]"),
        ];
        for (mutate, field) in cases {
            let mut p = plan();
            mutate(&mut p);
            let message = field_error(p.validate());
            assert!(message.starts_with(field), "{field}: {message}");
        }
    }

    #[test]
    fn a_fixed_plan_needs_no_metric() {
        let mut p = plan();
        p.plan_model = PlanModel::Fixed;
        p.metric_ids.clear();
        assert!(p.validate().is_ok());
    }

    #[test]
    fn metric_currency_must_match_the_plan() {
        assert!(plan().check_metric(0, &metric("INR")).is_ok());
        let message = field_error(plan().check_metric(0, &metric("USD")));
        assert!(message.starts_with("metric_ids[0]"), "{message}");
    }

    #[test]
    fn unique_count_needs_its_field() {
        let mut m = metric("INR");
        m.aggregation_type = AggregationType::UniqueCount;
        assert!(field_error(m.validate()).starts_with("aggregation_field"));
        m.aggregation_field = Some("user_id".into());
        assert!(m.validate().is_ok());
    }

    #[test]
    fn wire_names_round_trip() {
        for interval in ["ONETIME", "MONTHLY", "ASPRESENTED", "HALFYEARLY"] {
            let parsed = PlanInterval::parse(interval).expect("known");
            assert_eq!(parsed.as_str(), interval);
        }
        assert_eq!(PlanModel::parse("USAGE_CALCULATION"), Some(PlanModel::UsageCalculation));
        assert_eq!(ActionOnFailure::parse("retry"), None);
    }
}
