//! Usage messages: one event, or `{"events": [...]}`.
//! Each event decodes on its own, so one bad event never spoils its batch.

use std::ops::Range;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::de::{decode, id, opt_amount};
use crate::error::Rejection;

/// Longest accepted `event_id` (every id has this bound).
pub const MAX_EVENT_ID_LEN: usize = crate::domain::ids::MAX_ID_LEN;

/// Longest property value an aggregation uses (`UNIQUE_COUNT`'s field).
pub(crate) const MAX_PROPERTY_LEN: usize = 256;

/// One usage event as sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEventIn {
    /// The idempotency key, unique per merchant: a repeat is counted once.
    #[serde(deserialize_with = "id")]
    pub event_id: String,
    /// The execution the usage counts toward; it must be `ACTIVE`.
    #[serde(deserialize_with = "id")]
    pub billing_execution_info_id: String,
    /// The metric measured: one of the execution's plan or of its `metric_info`.
    #[serde(deserialize_with = "id")]
    pub metric_id: String,
    /// How much usage; `None` counts as 1 (`COUNT` and `UNIQUE_COUNT` ignore it).
    #[serde(default, deserialize_with = "opt_amount")]
    pub value: Option<Decimal>,
    /// When the usage happened; `None` means when the message was received.
    #[serde(default, deserialize_with = "timestamp")]
    pub timestamp: Option<DateTime<Utc>>,
    /// Free-form attributes; `UNIQUE_COUNT` counts the distinct values of its aggregation field.
    #[serde(default)]
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An event of a message: decoded, or rejected with where its text lies in the body.
#[derive(Debug)]
pub struct Decoded {
    /// Byte range of this event's JSON in the message body (for its dead letter).
    pub span: Range<usize>,
    /// The event, or why it was rejected.
    pub event: Result<UsageEventIn, Rejection>,
}

/// Splits a usage body into its events and decodes each one.
pub fn decode_message(body: &[u8], max_events: usize) -> Result<Vec<Decoded>, Rejection> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow, default)]
        events: Option<Vec<&'a RawValue>>,
    }
    let whole: &RawValue = decode(body)?;
    if !whole.get().trim_start().starts_with('{') {
        return Err(Rejection::field(
            "body",
            "must be a JSON object: one event or {\"events\": [...]}",
        ));
    }
    let batch: Batch<'_> = decode(body)?;
    let raws = match batch.events {
        Some(events) => {
            if events.is_empty() {
                return Err(Rejection::field("events", "must hold at least one event"));
            }
            if events.len() > max_events {
                return Err(Rejection::field(
                    "events",
                    format_args!("holds {} events, more than the limit of {max_events}", events.len()),
                ));
            }
            events
        }
        None => vec![whole],
    };
    let base = body.as_ptr() as usize;
    Ok(raws
        .into_iter()
        .map(|raw| {
            let text = raw.get();
            let start = (text.as_ptr() as usize).saturating_sub(base);
            Decoded {
                span: start..start + text.len(),
                event: decode_event(text.as_bytes()),
            }
        })
        .collect())
}

fn decode_event(text: &[u8]) -> Result<UsageEventIn, Rejection> {
    decode(text)
}

/// RFC 3339 text or unix seconds (a whole number, or its text).
fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<DateTime<Utc>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 time or unix seconds")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map_err(|_| E::custom("unix seconds out of range"))
                .and_then(|s| self.visit_i64(s))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Utc.timestamp_opt(v, 0)
                .single()
                .map(Some)
                .ok_or_else(|| E::custom("unix seconds out of range"))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if let Ok(t) = DateTime::parse_from_rfc3339(v) {
                return Ok(Some(t.with_timezone(&Utc)));
            }
            match v.trim().parse::<i64>() {
                Ok(secs) => self.visit_i64(secs),
                Err(_) => Err(E::custom(format!(
                    "expected an RFC 3339 time or unix seconds, got \"{}\"",
                    crate::error::short(v)
                ))),
            }
        }
    }
    d.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn a_single_event_and_a_batch() {
        let one = br#"{"event_id":"e1","billing_execution_info_id":"x","metric_id":"m","value":"2.5","timestamp":1700000000}"#;
        let decoded = decode_message(one, 10).expect("ok");
        assert_eq!(decoded.len(), 1);
        let event = decoded[0].event.as_ref().expect("valid");
        assert_eq!(event.value, Some(Decimal::new(25, 1)));
        assert_eq!(event.timestamp.map(|t| t.timestamp()), Some(1_700_000_000));
        assert_eq!(decoded[0].span, 0..one.len());

        let batch = br#"{"events":[{"event_id":"a","billing_execution_info_id":"x","metric_id":"m"},
            {"event_id":5,"billing_execution_info_id":"x","metric_id":"m"},
            {"event_id":"c","billing_execution_info_id":"x","metric_id":"m","timestamp":"2026-11-21T10:00:00+05:30"}]}"#;
        let decoded = decode_message(batch, 10).expect("ok");
        assert_eq!(decoded.len(), 3);
        assert!(decoded[0].event.is_ok());
        let bad = decoded[1].event.as_ref().expect_err("event_id is a number");
        assert!(bad.message.starts_with("event_id"), "{}", bad.message);
        assert_eq!(
            &batch[decoded[1].span.clone()],
            br#"{"event_id":5,"billing_execution_info_id":"x","metric_id":"m"}"#
        );
        let c = decoded[2].event.as_ref().expect("valid");
        assert_eq!(
            c.timestamp.map(|t| t.to_rfc3339()),
            Some("2026-11-21T04:30:00+00:00".to_string())
        );
    }

    #[test]
    fn message_level_problems() {
        assert_eq!(decode_message(b"nope", 10).expect_err("x").code, ErrorCode::InvalidJson);
        assert_eq!(decode_message(b"[1]", 10).expect_err("x").code, ErrorCode::InvalidField);
        assert!(
            decode_message(br#"{"events":[]}"#, 10)
                .expect_err("x")
                .message
                .starts_with("events")
        );
        let many = format!("{{\"events\":[{}]}}", ["{}"; 11].join(","));
        assert!(
            decode_message(many.as_bytes(), 10)
                .expect_err("x")
                .message
                .starts_with("events")
        );
    }

    #[test]
    fn field_rules() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"billing_execution_info_id":"x","metric_id":"m"}"#, "event_id"),
            (
                br#"{"event_id":"","billing_execution_info_id":"x","metric_id":"m"}"#,
                "event_id",
            ),
            (
                br#"{"event_id":"e","billing_execution_info_id":"x","metric_id":"m","value":"ten"}"#,
                "value",
            ),
            (
                br#"{"event_id":"e","billing_execution_info_id":"x","metric_id":"m","value":true}"#,
                "value",
            ),
            (
                br#"{"event_id":"e","billing_execution_info_id":"x","metric_id":"m","timestamp":"yesterday"}"#,
                "timestamp",
            ),
        ];
        for (body, field) in cases {
            let decoded = decode_message(body, 10).expect("message ok");
            let err = decoded[0].event.as_ref().expect_err("event rejected");
            assert!(err.message.starts_with(field), "{field}: {}", err.message);
        }
        let long = format!(
            "{{\"event_id\":\"{}\",\"billing_execution_info_id\":\"x\",\"metric_id\":\"m\"}}",
            "e".repeat(101)
        );
        assert!(decode_message(long.as_bytes(), 10).expect("ok")[0].event.is_err());
    }
}
