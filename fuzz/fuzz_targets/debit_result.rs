//! Debit results from the payment gateway:
//! `protocol::de::decode::<billing::debits::DebitResult>` on any body.
//!
//! Invariants: a rejection keeps the shared promises (code `INVALID_JSON` or
//! `INVALID_FIELD`; message length and quotes); a decoded result comes from
//! one JSON object whose `request_id` and `status` it reports.
#![no_main]

use billing_worker::billing::debits::{DebitResult, ResultStatus};
use billing_worker::error::ErrorCode;
use billing_worker::protocol::de;
use billing_worker_fuzz::{check_rejection, json_value, shorten};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CODES: &[ErrorCode] = &[ErrorCode::InvalidJson, ErrorCode::InvalidField];

fuzz_target!(|body: &[u8]| {
    let result = match de::decode::<DebitResult>(body) {
        Ok(result) => result,
        Err(rejection) => return check_rejection("debit_result", &rejection, CODES, &[body]),
    };
    // Bytes that are not UTF-8 may sit in a field the decoder skips.
    let text = String::from_utf8_lossy(body);
    let value = json_value(&text).unwrap_or_else(|err| {
        panic!(
            "[debit_result] invariant `accepted-is-json`: a result decoded from a body that is not JSON ({err}): {}",
            shorten(&text)
        )
    });
    // serde_json cannot hold every JSON text as a Value; then only the syntax is checked.
    let Some(value) = value else { return };
    assert!(
        value.is_object(),
        "[debit_result] invariant `accepted-is-object`: a result decoded from {}",
        shorten(&text)
    );
    assert_eq!(
        value.get("request_id").and_then(Value::as_str),
        Some(result.request_id.as_str()),
        "[debit_result] invariant `fields-kept`: request_id"
    );
    let status = match result.status {
        ResultStatus::Success => "SUCCESS",
        ResultStatus::Failure => "FAILURE",
        ResultStatus::Pending => "PENDING",
    };
    assert_eq!(
        value.get("status").and_then(Value::as_str),
        Some(status),
        "[debit_result] invariant `fields-kept`: status"
    );
});
