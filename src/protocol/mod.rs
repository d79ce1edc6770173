//! The wire: what arrives on the bus, what the worker answers and announces.
//! Decoding never panics; every failure is a [`crate::error::Rejection`].

pub(crate) mod billing_plan;
pub(crate) mod de;
pub(crate) mod documents;
pub mod envelope;
pub(crate) mod provisioning;
pub mod usage;

#[cfg(test)]
mod robustness {
    //! Whatever arrives, decoding answers with a value or a rejection: it
    //! never panics, so no message can stop a worker.

    use proptest::prelude::*;
    use serde_json::Value;

    fn decode_all(body: &[u8]) {
        let _ = super::provisioning::parse(body);
        let _ = super::usage::decode_message(body, 1000);
        let _ = super::billing_plan::parse(body);
        let _ = super::de::decode::<crate::billing::debits::DebitResult>(body);
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zA-Z0-9_ .:-]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("create"),
                Just("create_metric"),
                Just("create_plan"),
                Just("update_plan"),
                Just("get"),
                Just("list"),
                Just("add_credit"),
                Just("update_status"),
                Just("change_plan"),
                Just("present"),
                Just("run_billing"),
                Just("add_billing_plan"),
                Just("INFINITY"),
                Just("2026-01-31"),
                Just("1e400"),
                Just("-0"),
            ]
            .prop_map(|s| Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let keys = prop_oneof![
                Just("command"),
                Just("events"),
                Just("event_id"),
                Just("value"),
                Just("timestamp"),
                Just("metric_id"),
                Just("billing_execution_info_id"),
                Just("pricing_model"),
                Just("up_to"),
                Just("unit_amount"),
                Just("amount"),
                Just("billing_plan"),
                Just("Bill_Sequence"),
                Just("schedule_date"),
                Just("properties"),
                Just("request_id"),
                Just("status"),
                Just("plan_id"),
                Just("customer_id"),
                Just("metric_info"),
                Just("updated_fields"),
            ]
            .prop_map(str::to_string);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            decode_all(&body);
        }

        #[test]
        fn arbitrary_json_never_panics(value in json()) {
            let body = serde_json::to_vec(&value).unwrap_or_default();
            decode_all(&body);
        }

        #[test]
        fn numbers_of_any_size_never_panic(digits in "-?[0-9]{1,80}(\\.[0-9]{1,80})?(e[+-]?[0-9]{1,4})?") {
            let body = format!(r#"{{"command":"add_credit","billing_execution_info_id":"e","amount":{digits},"reference_id":"r"}}"#);
            decode_all(body.as_bytes());
            let usage = format!(r#"{{"event_id":"e","billing_execution_info_id":"x","metric_id":"m","value":{digits},"timestamp":{digits}}}"#);
            decode_all(usage.as_bytes());
        }
    }
}
