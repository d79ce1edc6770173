//! Usage messages: `protocol::usage::decode_message` on any body, with the
//! default limit of 1000 events per message.
//!
//! Invariants: every rejection, of the message or of one event, keeps the
//! shared promises (code `INVALID_JSON` or `INVALID_FIELD`; message length and
//! quotes); a decoded message holds 1 to 1000 events in body order; each
//! event's span is that event's own JSON text in the body (it becomes the
//! event's dead letter); an accepted event has an `event_id` of 1 to 100
//! characters and non-empty ids; a lower limit refuses a longer batch.
#![no_main]

use billing_worker::error::ErrorCode;
use billing_worker::protocol::usage::{self, MAX_EVENT_ID_LEN};
use billing_worker_fuzz::{check_rejection, json_value, shorten};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CODES: &[ErrorCode] = &[ErrorCode::InvalidJson, ErrorCode::InvalidField];

/// `usage.max_events_per_message` by default.
const MAX_EVENTS: usize = 1000;

fuzz_target!(|body: &[u8]| {
    let decoded = match usage::decode_message(body, MAX_EVENTS) {
        Ok(decoded) => decoded,
        Err(rejection) => return check_rejection("usage", &rejection, CODES, &[body]),
    };
    assert!(
        (1..=MAX_EVENTS).contains(&decoded.len()),
        "[usage] invariant `event-count`: {} events decoded",
        decoded.len()
    );
    let text = std::str::from_utf8(body).unwrap_or_else(|err| {
        panic!("[usage] invariant `accepted-is-utf8`: a message decoded from a body that is not UTF-8: {err}")
    });
    let whole = json_value(text).unwrap_or_else(|err| {
        panic!(
            "[usage] invariant `accepted-is-json`: a message decoded from a body that is not JSON ({err}): {}",
            shorten(text)
        )
    });
    // The body's events as JSON values, when serde_json can hold them.
    let values: Option<Vec<&Value>> = whole.as_ref().map(|whole| match whole.get("events") {
        Some(Value::Array(items)) => items.iter().collect(),
        _ => vec![whole],
    });
    if let Some(values) = &values {
        assert_eq!(
            values.len(),
            decoded.len(),
            "[usage] invariant `event-count`: the body holds another number of events"
        );
    }

    let mut previous_end = 0;
    for (i, event) in decoded.iter().enumerate() {
        let span = event.span.clone();
        assert!(
            previous_end <= span.start && span.start < span.end && span.end <= body.len(),
            "[usage] invariant `span-in-body`: event {i} has span {span:?} (body {} bytes, previous end {previous_end})",
            body.len()
        );
        previous_end = span.end;
        let own = text.get(span.clone()).unwrap_or_else(|| {
            panic!("[usage] invariant `span-is-event`: event {i}'s span {span:?} does not fall on character boundaries")
        });
        let own_value = json_value(own).unwrap_or_else(|err| {
            panic!(
                "[usage] invariant `span-is-event`: event {i}'s span is not JSON ({err}): {}",
                shorten(own)
            )
        });
        if let (Some(own_value), Some(values)) = (&own_value, &values) {
            assert!(
                own_value == values[i],
                "[usage] invariant `span-is-event`: event {i}'s span {span:?} holds another value: {}",
                shorten(own)
            );
        }
        match &event.event {
            Ok(e) => {
                let len = e.event_id.chars().count();
                assert!(
                    (1..=MAX_EVENT_ID_LEN).contains(&len),
                    "[usage] invariant `event-rules`: event_id of {len} characters accepted"
                );
                assert!(
                    !e.billing_execution_info_id.is_empty() && !e.metric_id.is_empty(),
                    "[usage] invariant `event-rules`: an empty id accepted"
                );
            }
            Err(rejection) => check_rejection("usage event", rejection, CODES, &[own.as_bytes()]),
        }
    }

    if decoded.len() > 2 {
        match usage::decode_message(body, 2) {
            Err(rejection) if rejection.message.starts_with("events") => {}
            other => panic!(
                "[usage] invariant `event-limit`: {} events with a limit of 2 gave {:?}",
                decoded.len(),
                other.map(|d| d.len())
            ),
        }
    }
});
