//! Provisioning commands as they arrive on `billing.provisioning` (contract §3).

use rust_decimal::Decimal;
use serde::Deserialize;

use super::de::{decode, lenient_opt_u32};
use crate::domain::aggregation::AggregationType;
use crate::domain::catalog::{ActionOnFailure, PlanInterval, PlanModel, PlanRuleType, PlanType};
use crate::domain::execution::ExecutionStatus;
use crate::domain::pricing::{PricingType, Tier};
use crate::error::{ErrorCode, Rejection};

/// Every command the provisioning queue understands.
#[derive(Debug, Clone)]
pub enum Command {
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
    Present(ExecutionRef),
    RunBilling(RunBilling),
    AddBillingPlan(Box<crate::billing::plans::AddBillingPlan>, serde_json::Value),
}

impl Command {
    /// The wire name, for metrics and logs.
    pub fn name(&self) -> &'static str {
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
            Command::Present(_) => "present",
            Command::RunBilling(_) => "run_billing",
            Command::AddBillingPlan(..) => "add_billing_plan",
        }
    }

    /// Whether the command only reads.
    pub fn is_query(&self) -> bool {
        matches!(self, Command::Get(_) | Command::List(_))
    }
}

/// Decodes a provisioning body: first the `command`, then its fields.
pub fn parse(body: &[u8]) -> Result<Command, Rejection> {
    let head: serde_json::Value = decode(body)?;
    let Some(fields) = head.as_object() else {
        return Err(Rejection::field("body", "must be a JSON object"));
    };
    let name = match fields.get("command") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return Err(Rejection::field("command", "must be a string")),
        None => return Err(Rejection::field("command", "is required")),
    };
    Ok(match name.as_str() {
        "create_metric" => Command::CreateMetric(decode(body)?),
        "create_plan" => Command::CreatePlan(decode(body)?),
        "update_plan" => Command::UpdatePlan(decode(body)?),
        "create_customer" => Command::CreateCustomer(decode(body)?),
        "create" => Command::Create(decode(body)?),
        "get" => Command::Get(decode(body)?),
        "list" => Command::List(decode(body)?),
        "update_status" => Command::UpdateStatus(decode(body)?),
        "add_credit" => Command::AddCredit(decode(body)?),
        "change_plan" => Command::ChangePlan(decode(body)?),
        "present" => Command::Present(decode(body)?),
        "run_billing" => Command::RunBilling(decode(body)?),
        "add_billing_plan" => Command::AddBillingPlan(Box::new(crate::billing::plans::parse(body)?), head),
        other => {
            return Err(Rejection::new(
                ErrorCode::UnknownCommand,
                format!(
                    "command '{}' is unknown; expected one of create_metric, create_plan, update_plan, create_customer, create, get, list, update_status, add_credit, change_plan, add_billing_plan, present, run_billing",
                    other.chars().take(64).collect::<String>()
                ),
            ));
        }
    })
}

/// `create_metric`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateMetric {
    pub metric_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub event_type: String,
    pub aggregation_type: AggregationType,
    #[serde(default)]
    pub aggregation_field: Option<String>,
    pub pricing_type: PricingType,
    pub pricing_model: Vec<Tier>,
    #[serde(default)]
    pub package_size: Option<Decimal>,
    #[serde(default)]
    pub free_units: Option<Decimal>,
    pub currency: String,
}

/// `create_plan` and `update_plan`: every field optional here, so that an
/// update changes only what it names; `create_plan` checks what it requires.
#[derive(Debug, Clone, Deserialize)]
pub struct PlanFields {
    pub plan_id: String,
    #[serde(default)]
    pub plan_name: Option<String>,
    #[serde(default)]
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
    #[serde(default)]
    pub plan_amount: Option<Decimal>,
    #[serde(default)]
    pub plan_currency: Option<String>,
    #[serde(default)]
    pub max_amount: Option<Decimal>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub max_retry: Option<u32>,
    #[serde(default)]
    pub plan_action_on_failure: Option<ActionOnFailure>,
    #[serde(default)]
    pub metric_ids: Option<Vec<String>>,
}

/// `create_customer`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateCustomer {
    pub customer_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub mobile: Option<String>,
}

/// Per-customer pricing of one metric on a `VARIABLE` plan.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricOverride {
    pub metric_id: String,
    pub pricing_type: PricingType,
    pub pricing_model: Vec<Tier>,
    #[serde(default)]
    pub package_size: Option<Decimal>,
    #[serde(default)]
    pub free_units: Option<Decimal>,
}

/// `create`: a billing execution with free-tier credit, no transaction.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateExecution {
    pub plan_id: String,
    pub customer_id: String,
    #[serde(default)]
    pub amount: Option<Decimal>,
    #[serde(default)]
    pub merchant_ref_id: Option<String>,
    #[serde(default)]
    pub status: Option<ExecutionStatus>,
    #[serde(default)]
    pub metric_info: Option<Vec<MetricOverride>>,
    #[serde(default)]
    pub billing_start_date: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub mandate_id: Option<String>,
}

/// `get`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutionRef {
    pub billing_execution_info_id: String,
}

/// `list`.
#[derive(Debug, Clone, Deserialize)]
pub struct ListExecutions {
    pub customer_id: String,
}

/// `update_status`.
#[derive(Debug, Clone, Deserialize)]
pub struct UpdateStatus {
    pub billing_execution_info_id: String,
    pub status: ExecutionStatus,
}

/// `add_credit`.
#[derive(Debug, Clone, Deserialize)]
pub struct AddCredit {
    pub billing_execution_info_id: String,
    pub amount: Decimal,
    pub reference_id: String,
}

/// `change_plan`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChangePlan {
    pub billing_execution_info_id: String,
    pub updated_fields: PlanChange,
}

/// The new plan and, optionally, the amount agreed for this execution.
#[derive(Debug, Clone, Deserialize)]
pub struct PlanChange {
    pub plan_id: String,
    #[serde(default)]
    pub plan_amount: Option<Decimal>,
}

/// `run_billing`.
#[derive(Debug, Clone, Deserialize)]
pub struct RunBilling {
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub limit: Option<u32>,
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
    fn amounts_are_exact() {
        let body = br#"{"command":"add_credit","billing_execution_info_id":"e","amount":0.1234567890123456789,"reference_id":"r"}"#;
        match parse(body) {
            Ok(Command::AddCredit(c)) => assert_eq!(c.amount.to_string(), "0.1234567890123456789"),
            other => panic!("{other:?}"),
        }
    }
}
