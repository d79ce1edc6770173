//! `add_billing_plan` as it arrives: an explicit schedule of debits for a
//! customer (`billing_plan`) and, optionally, its entries (`bill_sequence`).
//! Keys are accepted in any case (`Bill_Sequence`, `Schedule_Date`, `Token`).

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use super::de::{amount as amount_field, decode, id, lenient_opt_u32, opt_amount, opt_id, opt_text, text};
use crate::error::{ErrorCode, Rejection};

/// Most entries one plan may hold.
pub(crate) const MAX_ENTRIES: usize = 366;

/// The `billing_plan` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanIn {
    #[serde(deserialize_with = "id")]
    pub customer_id: String,
    #[serde(default, deserialize_with = "opt_text")]
    pub token: Option<String>,
    #[serde(default, deserialize_with = "small_value")]
    pub plan_type: Option<Value>,
    #[serde(default, deserialize_with = "opt_text")]
    pub schedule_type: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    pub start_date: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    pub end_date: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub periodicity: Option<u32>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub end_type: Option<u32>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub no_of_payments: Option<u32>,
    #[serde(default, deserialize_with = "opt_amount")]
    pub amount: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_text")]
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    pub reference_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub max_retry: Option<u32>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default, deserialize_with = "small_value")]
    pub billing_mode: Option<Value>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub bill_day: Option<u32>,
}

/// One `bill_sequence` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntryIn {
    #[serde(deserialize_with = "amount_field")]
    pub amount: Decimal,
    #[serde(deserialize_with = "text")]
    pub schedule_date: String,
    #[serde(default, deserialize_with = "opt_id")]
    pub reference_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_u32")]
    pub sequence_number: Option<u32>,
}

/// The command's body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddBillingPlan {
    pub billing_plan: PlanIn,
    #[serde(default, deserialize_with = "entries")]
    pub bill_sequence: Vec<EntryIn>,
    /// The command's name, read before.
    #[serde(default, rename = "command")]
    _command: Option<serde::de::IgnoredAny>,
}

impl AddBillingPlan {
    /// The plan's natural key, when the sender gave one.
    pub(crate) fn reference_id(&self) -> Option<&str> {
        self.billing_plan.reference_id.as_deref()
    }
}

/// A product code sent as a string or a number (`plan_type`, `billing_mode`): short.
fn small_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    match &value {
        None | Some(Value::Null | Value::Bool(_) | Value::Number(_)) => Ok(value),
        Some(Value::String(s)) if s.chars().count() <= 32 => Ok(value),
        Some(_) => Err(serde::de::Error::custom(
            "must be a short code (a number or a string of at most 32 characters)",
        )),
    }
}

/// `bill_sequence`: at most [`MAX_ENTRIES`] entries.
fn entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<EntryIn>, D::Error> {
    let list = Vec::<EntryIn>::deserialize(d)?;
    if list.len() > MAX_ENTRIES {
        return Err(serde::de::Error::custom(format!(
            "may hold at most {MAX_ENTRIES} entries"
        )));
    }
    Ok(list)
}

/// Keys are accepted in any case (`Bill_Sequence`, `Schedule_Date`, `Token`).
fn lowercase_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lowercase_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(lowercase_keys).collect()),
        other => other,
    }
}

/// Decodes the command, whatever the case of its keys.
pub(crate) fn parse(body: &[u8]) -> Result<AddBillingPlan, Rejection> {
    let value: Value = decode(body)?;
    let bytes = serde_json::to_vec(&lowercase_keys(value))
        .map_err(|e| Rejection::new(ErrorCode::InvalidJson, e.to_string()))?;
    decode(&bytes)
}
