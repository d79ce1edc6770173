//! What billing tests start from: times, amounts, a plan and a customer,
//! and a billing pass on demand.

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::TestApp;

pub fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0).single().expect("valid time")
}

pub fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

/// Customer `c1` and plan `p` of merchant `m1` (100 INR a month in
/// arrears, SKIP after 2 retries), with `fields` over the defaults.
pub async fn plan(app: &mut TestApp, fields: Value) {
    let mut command = json!({"command": "create_plan", "plan_id": "p", "plan_name": "Plan", "plan_type": "POST_DEBIT",
        "plan_model": "FIXED", "plan_interval": "MONTHLY", "plan_currency": "INR", "plan_amount": 100,
        "plan_action_on_failure": "SKIP", "max_retry": 2});
    for (k, v) in fields.as_object().expect("fields") {
        command[k] = v.clone();
    }
    let r = app.call("m1", command).await;
    assert_eq!(r["success"], true, "{r}");
    let r = app
        .call("m1", json!({"command": "create_customer", "customer_id": "c1"}))
        .await;
    assert_eq!(r["success"], true, "{r}");
}

/// One billing pass for merchant `m1`, now; what it did.
pub async fn run_billing(app: &mut TestApp) -> Value {
    let r = app.call("m1", json!({"command": "run_billing"})).await;
    assert_eq!(r["success"], true, "{r}");
    r["run"].clone()
}
