//! Provisioning commands: `protocol::provisioning::parse` on any body.
//!
//! Invariants: a rejection keeps the shared promises (code `INVALID_JSON`,
//! `INVALID_FIELD` or `UNKNOWN_COMMAND`; message length and quotes); a decoded
//! command is the one the body's `command` field names, from a body that is
//! one JSON object, and an `add_billing_plan` carries that object unchanged.
#![no_main]

use billing_worker::error::ErrorCode;
use billing_worker::protocol::provisioning::{self, Command};
use billing_worker_fuzz::{check_rejection, shorten};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CODES: &[ErrorCode] = &[
    ErrorCode::InvalidJson,
    ErrorCode::InvalidField,
    ErrorCode::UnknownCommand,
];

fuzz_target!(|body: &[u8]| {
    let command = match provisioning::parse(body) {
        Ok(command) => command,
        Err(rejection) => return check_rejection("provisioning", &rejection, CODES, &[body]),
    };
    let text = String::from_utf8_lossy(body);
    let head: Value = serde_json::from_str(&text).unwrap_or_else(|err| {
        panic!(
            "[provisioning] invariant `accepted-is-json`: {} decoded from a body that is not JSON ({err}): {}",
            command.name(),
            shorten(&text)
        )
    });
    let named = head.get("command").and_then(Value::as_str);
    assert_eq!(
        named,
        Some(command.name()),
        "[provisioning] invariant `command-named`: the body names {named:?}, {} was decoded",
        command.name()
    );
    if let Command::AddBillingPlan(_, raw) = &command {
        assert_eq!(
            raw, &head,
            "[provisioning] invariant `raw-plan`: add_billing_plan keeps another document than the body"
        );
    }
});
