//! Provisioning commands as they arrive on `billing.provisioning`.

use rust_decimal::Decimal;
use serde::Deserialize;

use super::de::{amount, decode, decode_value, id, lenient_opt_u32, opt_amount, opt_id, opt_ids, opt_text, text};
use crate::domain::aggregation::AggregationType;
use crate::domain::bill::BillStatus;
use crate::domain::catalog::{ActionOnFailure, PlanInterval, PlanModel, PlanRuleType, PlanType};
use crate::domain::execution::ExecutionStatus;
use crate::domain::pricing::{PercentageTerms, PricingType, Tier};
use crate::domain::thresholds::UsageThreshold;
use crate::error::{ErrorCode, Rejection};

/// Every command the provisioning queue understands.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    CreateMetric(CreateMetric),
    CreatePlan(PlanFields),
    UpdatePlan(PlanFields),
    CreateCustomer(CreateCustomer),
    Create(CreateExecution),
    Get(ExecutionRef),
    List(ListExecutions),
    UpdateStatus(UpdateStatus),
    AddCredit(AddCredit),
    ChangePlan(ChangePlan),
    PreviewProratedAmount(PreviewProration),
    SetAlerts(SetAlerts),
    ListBills(ListBills),
    GetBill(GetBill),
    ListCredit(ListCredit),
    Present(ExecutionRef),
    RunBilling(RunBilling),
    AddBillingPlan(Box<super::billing_plan::AddBillingPlan>, serde_json::Value),
}

impl Command {
    /// The wire name, for metrics and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::CreateMetric(_) => "create_metric",
            Command::CreatePlan(_) => "create_plan",
            Command::UpdatePlan(_) => "update_plan",
            Command::CreateCustomer(_) => "create_customer",
            Command::Create(_) => "create",
            Command::Get(_) => "get",
            Command::List(_) => "list",
            Command::UpdateStatus(_) => "update_status",
            Command::AddCredit(_) => "add_credit",
            Command::ChangePlan(_) => "change_plan",
            Command::PreviewProratedAmount(_) => "preview_prorated_amount",
            Command::SetAlerts(_) => "set_alerts",
            Command::ListBills(_) => "list_bills",
            Command::GetBill(_) => "get_bill",
            Command::ListCredit(_) => "list_credit",
            Command::Present(_) => "present",
            Command::RunBilling(_) => "run_billing",
            Command::AddBillingPlan(..) => "add_billing_plan",
        }
    }

    /// Whether the command only reads.
    pub(crate) fn is_query(&self) -> bool {
        matches!(
            self,
            Command::Get(_) | Command::List(_) | Command::ListBills(_) | Command::GetBill(_) | Command::ListCredit(_)
        )
    }
}

/// Decodes a provisioning body: first the `command`, then its fields.
pub(crate) fn parse(body: &[u8]) -> Result<Command, Rejection> {
    let head: serde_json::Value = decode(body)?;
    let serde_json::Value::Object(mut fields) = head else {
        return Err(Rejection::field("body", "must be a JSON object"));
    };
    let name = match fields.remove("command") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(Rejection::field("command", "must be a string")),
        None => return Err(Rejection::field("command", "is required")),
    };
    let rest = serde_json::Value::Object(fields);
    Ok(match name.as_str() {
        "create_metric" => Command::CreateMetric(decode_value(rest)?),
        "create_plan" => Command::CreatePlan(decode_value(rest)?),
        "update_plan" => Command::UpdatePlan(decode_value(rest)?),
        "create_customer" => Command::CreateCustomer(decode_value(rest)?),
        "create" => Command::Create(decode_value(rest)?),
        "get" => Command::Get(decode_value(rest)?),
        "list" => Command::List(decode_value(rest)?),
        "update_status" => Command::UpdateStatus(decode_value(rest)?),
        "add_credit" => Command::AddCredit(decode_value(rest)?),
        "change_plan" => Command::ChangePlan(decode_value(rest)?),
        "preview_prorated_amount" => Command::PreviewProratedAmount(decode_value(rest)?),
        "set_alerts" => Command::SetAlerts(decode_value(rest)?),
        "list_bills" => Command::ListBills(decode_value(rest)?),
        "get_bill" => Command::GetBill(decode_value(rest)?),
        "list_credit" => Command::ListCredit(decode_value(rest)?),
        "present" => Command::Present(decode_value(rest)?),
        "run_billing" => Command::RunBilling(decode_value(rest)?),
        "add_billing_plan" => {
            let mut head = rest;
            let plan = super::billing_plan::parse(body)?;
            if let Some(map) = head.as_object_mut() {
                map.insert("command".into(), serde_json::Value::String(name.clone()));
            }
            Command::AddBillingPlan(Box::new(plan), head)
        }
        other => {
            return Err(Rejection::new(
                ErrorCode::UnknownCommand,
                format!(
                    "command '{}' is unknown; expected one of create_metric, create_plan, update_plan, create_customer, create, get, list, update_status, add_credit, change_plan, preview_prorated_amount, set_alerts, list_bills, get_bill, list_credit, add_billing_plan, present, run_billing",
                    crate::error::short(other)
                ),
            ));
        }
    })
}

/// `create_metric`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateMetric {
    #[serde(deserialize_with = "id")]
    pub metric_id: String,
    #[serde(deserialize_with = "text")]
    pub name: String,
    #[serde(default, deserialize_with = "text")]
    pub description: String,
    #[serde(default, deserialize_with = "text")]
    pub unit: String,
    #[serde(default, deserialize_with = "text")]
    pub event_type: String,
    pub aggregation_type: AggregationType,
    #[serde(default, deserialize_with = "opt_text")]
    pub aggregation_field: Option<String>,
    pub pricing_type: PricingType,
    #[serde(default, deserialize_with = "tiers")]
    pub pricing_model: Vec<Tier>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub package_size: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub free_units: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub rate: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub fixed_amount: Option<Decimal>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub free_units_per_events: Option<u32>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub free_units_per_total_aggregation: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub per_transaction_min_amount: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub per_transaction_max_amount: Option<Decimal>,
    #[serde(deserialize_with = "text")]
    pub currency: String,
}

/// The PERCENTAGE fields of a metric or of a customer's price for one.
macro_rules! percentage_terms {
    ($($kind:ty),+) => {$(
        impl $kind {
            /// The PERCENTAGE fields as given.
            pub(crate) fn terms(&self) -> PercentageTerms {
                PercentageTerms {
                    rate: self.rate,
                    fixed_amount: self.fixed_amount,
                    free_units_per_events: self.free_units_per_events,
                    free_units_per_total_aggregation: self.free_units_per_total_aggregation,
                    per_transaction_min_amount: self.per_transaction_min_amount,
                    per_transaction_max_amount: self.per_transaction_max_amount,
                }
            }
        }
    )+};
}

percentage_terms!(CreateMetric, MetricOverride);

/// Most tiers of one pricing model.
pub(crate) const MAX_TIERS: usize = 100;

/// A pricing model: at most [`MAX_TIERS`] tiers.
fn tiers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Tier>, D::Error> {
    let tiers = Vec::<Tier>::deserialize(d)?;
    if tiers.len() > MAX_TIERS {
        return Err(serde::de::Error::custom(format!("must have at most {MAX_TIERS} tiers")));
    }
    Ok(tiers)
}

/// Most metrics of one plan or one execution's prices.
pub(crate) const MAX_METRICS: usize = 100;

/// `create_plan` and `update_plan`: every field optional here, so that an
/// update changes only what it names; `create_plan` checks what it requires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanFields {
    #[serde(deserialize_with = "id")]
    pub plan_id: String,
    #[serde(default, deserialize_with = "opt_text")]
    pub plan_name: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    pub plan_description: Option<String>,
    #[serde(default)]
    pub plan_type: Option<PlanType>,
    #[serde(default)]
    pub plan_model: Option<PlanModel>,
    #[serde(default)]
    pub plan_interval: Option<PlanInterval>,
    #[serde(default)]
    pub plan_rule_type: Option<PlanRuleType>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub plan_rule_value: Option<u32>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub plan_amount: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_text")]
    pub plan_currency: Option<String>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub max_amount: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub minimum_commitment: Option<Decimal>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub max_retry: Option<u32>,
    #[serde(default)]
    pub plan_action_on_failure: Option<ActionOnFailure>,
    #[serde(default, deserialize_with = "opt_ids")]
    pub metric_ids: Option<Vec<String>>,
    #[serde(default)]
    pub usage_thresholds: Option<Vec<ThresholdIn>>,
    /// Shown by the product's documents; accepted and not used.
    #[serde(default, rename = "plan_status", deserialize_with = "opt_text")]
    pub _plan_status: Option<String>,
}

/// One of a plan's `usage_thresholds`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThresholdIn {
    #[serde(deserialize_with = "amount")]
    pub amount: Decimal,
    #[serde(default)]
    pub recurring: bool,
}

impl From<ThresholdIn> for UsageThreshold {
    fn from(t: ThresholdIn) -> Self {
        UsageThreshold {
            amount: t.amount,
            recurring: t.recurring,
        }
    }
}

/// A list of amounts (`usage_alerts`).
fn amounts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Decimal>>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "amount")] Decimal);
    Ok(Option::<Vec<Wrap>>::deserialize(d)?.map(|v| v.into_iter().map(|w| w.0).collect()))
}

/// `create_customer`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCustomer {
    #[serde(deserialize_with = "id")]
    pub customer_id: String,
    #[serde(default, deserialize_with = "opt_text")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    pub mobile: Option<String>,
}

/// Per-customer pricing of one metric on a `VARIABLE` plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricOverride {
    #[serde(deserialize_with = "id")]
    pub metric_id: String,
    pub pricing_type: PricingType,
    #[serde(default, deserialize_with = "tiers")]
    pub pricing_model: Vec<Tier>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub package_size: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub free_units: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub rate: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub fixed_amount: Option<Decimal>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub free_units_per_events: Option<u32>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub free_units_per_total_aggregation: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub per_transaction_min_amount: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub per_transaction_max_amount: Option<Decimal>,
    /// Display fields of a metric as `get` shows them, so that an answer's
    /// `metric_info` can be sent back as it is; accepted and not used (the
    /// metric's own definition stands).
    #[serde(default, rename = "name", deserialize_with = "opt_text")]
    pub _name: Option<String>,
    #[serde(default, rename = "description", deserialize_with = "opt_text")]
    pub _description: Option<String>,
    #[serde(default, rename = "unit", deserialize_with = "opt_text")]
    pub _unit: Option<String>,
    #[serde(default, rename = "event_type", deserialize_with = "opt_text")]
    pub _event_type: Option<String>,
    #[serde(default, rename = "currency", deserialize_with = "opt_text")]
    pub _currency: Option<String>,
}

/// `create`: a billing execution with free-tier credit, no transaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateExecution {
    #[serde(deserialize_with = "id")]
    pub plan_id: String,
    #[serde(deserialize_with = "id")]
    pub customer_id: String,
    #[serde(default, deserialize_with = "opt_amount")]
    pub amount: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_id")]
    pub merchant_ref_id: Option<String>,
    #[serde(default)]
    pub status: Option<ExecutionStatus>,
    #[serde(default, deserialize_with = "overrides")]
    pub metric_info: Option<Vec<MetricOverride>>,
    #[serde(default, deserialize_with = "opt_text")]
    pub billing_start_date: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    pub token: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    pub mandate_id: Option<String>,
    #[serde(default, deserialize_with = "amounts")]
    pub usage_alerts: Option<Vec<Decimal>>,
    /// The product's name for what `merchant_ref_id` refers to; accepted and not used.
    #[serde(default, rename = "source", deserialize_with = "opt_text")]
    pub _source: Option<String>,
}

fn overrides<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<MetricOverride>>, D::Error> {
    let list = Option::<Vec<MetricOverride>>::deserialize(d)?;
    if list.as_ref().is_some_and(|l| l.len() > MAX_METRICS) {
        return Err(serde::de::Error::custom(format!(
            "must have at most {MAX_METRICS} entries"
        )));
    }
    Ok(list)
}

/// `get` and `present`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecutionRef {
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
}

/// `list`: a page of a customer's executions, oldest first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListExecutions {
    #[serde(deserialize_with = "id")]
    pub customer_id: String,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default, deserialize_with = "limit")]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default, deserialize_with = "opt_id")]
    pub cursor: Option<String>,
}

/// `update_status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateStatus {
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
    pub status: ExecutionStatus,
}

/// `add_credit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddCredit {
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
    #[serde(deserialize_with = "amount")]
    pub amount: Decimal,
    #[serde(deserialize_with = "id")]
    pub reference_id: String,
    /// Lower is used first (default 100).
    #[serde(default)]
    pub priority: Option<i32>,
    /// RFC 3339: when what is left of the grant expires.
    #[serde(default, deserialize_with = "opt_text")]
    pub expires_at: Option<String>,
}

/// `change_plan`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangePlan {
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
    pub updated_fields: PlanChange,
    #[serde(default)]
    pub proration: Option<Proration>,
    /// The preview's `request_id`; required with `IMMEDIATE`.
    #[serde(default, deserialize_with = "opt_id")]
    pub request_id: Option<String>,
}

/// When a plan change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum Proration {
    /// At the next period boundary, nothing prorated (the default).
    #[serde(rename = "NEXT_BOUNDARY")]
    NextBoundary,
    /// Now: the rest of the period prorated between the two plan amounts.
    #[serde(rename = "IMMEDIATE")]
    Immediate,
}

/// `preview_prorated_amount`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviewProration {
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
    #[serde(deserialize_with = "id")]
    pub request_id: String,
    pub updated_fields: PlanChange,
}

/// `set_alerts`: replaces the execution's usage alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetAlerts {
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
    #[serde(deserialize_with = "amounts")]
    pub usage_alerts: Option<Vec<Decimal>>,
}

/// `list_bills`: a page of an execution's bills, newest first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListBills {
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
    #[serde(default)]
    pub status: Option<BillStatus>,
    #[serde(default, deserialize_with = "limit")]
    pub limit: Option<u32>,
    #[serde(default, deserialize_with = "opt_id")]
    pub cursor: Option<String>,
}

/// `get_bill`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetBill {
    #[serde(deserialize_with = "id")]
    pub bill_id: String,
}

/// `list_credit`: a page of an execution's ledger, newest first, and its grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListCredit {
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
    #[serde(default, deserialize_with = "limit")]
    pub limit: Option<u32>,
    #[serde(default, deserialize_with = "opt_id")]
    pub cursor: Option<String>,
}

/// The new plan and, optionally, the amount agreed for this execution.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanChange {
    #[serde(deserialize_with = "id")]
    pub plan_id: String,
    #[serde(default, deserialize_with = "opt_amount")]
    pub plan_amount: Option<Decimal>,
}

/// `run_billing`: one pass over the sender's due work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunBilling {
    /// Most rows per step, 1 to 1000.
    #[serde(default, deserialize_with = "limit")]
    pub limit: Option<u32>,
}

/// Largest `limit` of any command.
pub(crate) const MAX_LIMIT: u32 = 1000;

/// A `limit`: a whole number from 1 to [`MAX_LIMIT`].
fn limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = lenient_opt_u32(d)?;
    if let Some(v) = value
        && !(1..=MAX_LIMIT).contains(&v)
    {
        return Err(serde::de::Error::custom(format!(
            "must be from 1 to {MAX_LIMIT}, got {v}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_command() {
        let metric = br#"{"command":"create_metric","metric_id":"m","name":"M","aggregation_type":"SUM",
            "pricing_type":"FIXED","pricing_model":[{"unit_amount":"0.10","up_to":"INFINITY"}],"currency":"INR"}"#;
        assert!(matches!(parse(metric), Ok(Command::CreateMetric(_))));
        let plan = br#"{"command":"create_plan","plan_id":"p","max_retry":"4","plan_rule_value":9}"#;
        match parse(plan) {
            Ok(Command::CreatePlan(p)) => {
                assert_eq!(p.max_retry, Some(4));
                assert_eq!(p.plan_rule_value, Some(9));
            }
            other => panic!("{other:?}"),
        }
        let credit = br#"{"command":"add_credit","billing_execution_info_id":"e","amount":8.5,"reference_id":"r"}"#;
        match parse(credit) {
            Ok(Command::AddCredit(c)) => assert_eq!(c.amount, Decimal::new(85, 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejections_name_the_problem() {
        assert_eq!(parse(b"[]").expect_err("x").code, ErrorCode::InvalidField);
        assert_eq!(parse(b"{").expect_err("x").code, ErrorCode::InvalidJson);
        assert_eq!(
            parse(br#"{"command":"explode"}"#).expect_err("x").code,
            ErrorCode::UnknownCommand
        );
        assert_eq!(
            parse(br#"{"command":7}"#).expect_err("x").message,
            "command must be a string"
        );
        let err = parse(br#"{"command":"create","plan_id":"p"}"#).expect_err("missing");
        assert_eq!(err.message, "customer_id is required");
        let err = parse(br#"{"command":"update_status","billing_execution_info_id":"e","status":"PAUSED"}"#)
            .expect_err("bad enum");
        assert!(err.message.starts_with("status is invalid"), "{}", err.message);
        let err =
            parse(br#"{"command":"add_credit","billing_execution_info_id":"e","amount":"lots","reference_id":"r"}"#)
                .expect_err("bad amount");
        assert!(err.message.starts_with("amount is invalid"), "{}", err.message);
    }

    #[test]
    fn amounts_are_exact_and_bounded() {
        let credit = |amount: &str| {
            let body = format!(
                r#"{{"command":"add_credit","billing_execution_info_id":"e","amount":{amount},"reference_id":"r"}}"#
            );
            parse(body.as_bytes())
        };
        match credit("999999999999999.123456789012") {
            Ok(Command::AddCredit(c)) => assert_eq!(c.amount.to_string(), "999999999999999.123456789012"),
            other => panic!("{other:?}"),
        }
        for refused in [
            "0.1234567890123",
            "1000000000000000",
            "-1e15",
            "5e28",
            "79228162514264337593543950335",
        ] {
            let err = credit(refused).expect_err(refused);
            assert!(
                err.message.starts_with("amount is invalid"),
                "{refused}: {}",
                err.message
            );
        }
    }

    #[test]
    fn every_wire_value_is_bounded() {
        let long = "x".repeat(101);
        let cases = [
            (
                format!(r#"{{"command":"get","billing_execution_info_id":"{long}"}}"#),
                "billing_execution_info_id",
            ),
            (
                format!(
                    r#"{{"command":"create_customer","customer_id":"c","name":"{}"}}"#,
                    "n".repeat(1001)
                ),
                "name",
            ),
            (r#"{"command":"list","customer_id":"c","limit":0}"#.to_string(), "limit"),
            (
                r#"{"command":"list","customer_id":"c","limit":1001}"#.to_string(),
                "limit",
            ),
            (r#"{"command":"run_billing","limit":5000}"#.to_string(), "limit"),
            (
                r#"{"command":"create_plan","plan_id":"p","plan_amout":10}"#.to_string(),
                "plan_amout",
            ),
            (
                r#"{"command":"create","plan_id":"p","customer_id":"c","minimum_commitment":10}"#.to_string(),
                "minimum_commitment",
            ),
            (
                format!(
                    r#"{{"command":"get","billing_execution_info_id":"e","{}":1}}"#,
                    "k".repeat(300_000)
                ),
                "kkkk",
            ),
        ];
        for (body, field) in cases {
            let err = parse(body.as_bytes()).expect_err(field);
            assert_eq!(err.code, ErrorCode::InvalidField, "{field}");
            assert!(err.message.starts_with(field), "{field}: {}", err.message);
            assert!(
                err.message.chars().count() <= crate::error::MAX_MESSAGE_CHARS,
                "{field}"
            );
        }
        // Fields the product's documents show and the worker does not use.
        let ok =
            r#"{"command":"create","plan_id":"p","customer_id":"c","source":"MERCHANT_REF_ID","merchant_ref_id":"r"}"#;
        assert!(parse(ok.as_bytes()).is_ok());
    }
}
