//! Decoding helpers: lenient number forms and errors that name the field.

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::domain::ids::check_id;
use crate::domain::money::check_amount;
use crate::error::{ErrorCode, MAX_QUOTED_CHARS, Rejection, short};

/// Longest free text accepted (names, descriptions, e-mail, tokens, gateway texts).
pub(crate) const MAX_TEXT_LEN: usize = 1000;

/// Decodes `body` as `T`, turning serde's error into a rejection naming the field.
pub(crate) fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Rejection> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = short(&err.path().to_string());
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return Rejection::new(ErrorCode::InvalidJson, format!("body is not valid JSON: {inner}"));
        }
        field_rejection(&path, &inner.to_string())
    })?;
    de.end()
        .map_err(|err| Rejection::new(ErrorCode::InvalidJson, format!("body is not valid JSON: {err}")))?;
    Ok(value)
}

/// Decodes an already parsed JSON value as `T`, naming the field on failure.
pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Rejection> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = short(&err.path().to_string());
        field_rejection(&path, &err.into_inner().to_string())
    })
}

fn field_rejection(path: &str, message: &str) -> Rejection {
    // serde reports a missing field at the parent's path: name the field itself.
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(name) = rest.split('`').next()
    {
        let field = if path == "." {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        return Rejection::field(&field, "is required");
    }
    // serde quotes the offending input: keep a short piece of it.
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some(name) = rest.split('`').next()
    {
        // The path already ends with the unknown key, shortened.
        let field = if path == "." { short(name) } else { path.to_string() };
        return Rejection::field(&field, "is not a field of this message");
    }
    let message = message.split(" at line ").next().unwrap_or(message);
    let field = if path == "." { "body" } else { path };
    // Quotes are cut, and the whole of serde's text too: its quoting is not
    // escaped (a variant may hold backquotes), so no quote can run long.
    let mut detail: String = clip_quotes(message).chars().take(MAX_SERDE_DETAIL).collect();
    if detail.len() < message.len() && detail.chars().count() == MAX_SERDE_DETAIL {
        detail.push('…');
    }
    Rejection::field(field, format_args!("is invalid: {detail}"))
}

/// Most characters of serde's own text kept in a message.
const MAX_SERDE_DETAIL: usize = 160;

/// Shortens every backquoted or double-quoted piece of a serde message.
fn clip_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(512));
    let mut inside: Option<char> = None;
    let mut quoted = 0usize;
    let mut escaped = false;
    for c in message.chars() {
        match inside {
            // An escaped character is part of the quote, whatever it is.
            Some(_) if escaped || c == '\\' => {
                escaped = !escaped && c == '\\';
                quoted += 1;
                if quoted <= MAX_QUOTED_CHARS {
                    out.push(c);
                } else if quoted == MAX_QUOTED_CHARS + 1 {
                    out.push('…');
                }
            }
            Some(close) if c == close => {
                inside = None;
                out.push(c);
            }
            Some(_) => {
                quoted += 1;
                if quoted <= MAX_QUOTED_CHARS {
                    out.push(c);
                } else if quoted == MAX_QUOTED_CHARS + 1 {
                    out.push('…');
                }
            }
            None => {
                if c == '`' || c == '"' {
                    inside = Some(c);
                    quoted = 0;
                }
                out.push(c);
            }
        }
    }
    out
}

/// An identifier (`event_id`, `plan_id`, ...): 1 to 100 characters, no
/// white space or control characters.
pub(crate) fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    check_id(&value).map_err(D::Error::custom)?;
    Ok(value)
}

/// [`id`] for optional fields (absent or null is `None`).
pub(crate) fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "id")] String);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// A list of [`id`]s.
pub(crate) fn opt_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "id")] String);
    Ok(Option::<Vec<Wrap>>::deserialize(d)?.map(|v| v.into_iter().map(|w| w.0).collect()))
}

/// Free text of at most [`MAX_TEXT_LEN`] characters.
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(D::Error::custom(format!("must be at most {MAX_TEXT_LEN} characters")));
    }
    Ok(value)
}

/// [`text`] for optional fields.
pub(crate) fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "text")] String);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// Optional free text kept to its first [`MAX_TEXT_LEN`] characters: for
/// what must be recorded whatever its size (a gateway's texts about money
/// that moved), where refusing would lose the record.
pub(crate) fn opt_clipped_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(|mut text| {
        if let Some((cut, _)) = text.char_indices().nth(MAX_TEXT_LEN) {
            text.truncate(cut);
        }
        text
    }))
}

/// An amount or value: a decimal number (or its text) whose absolute value
/// is below 10^15, with at most 12 decimal places.
pub(crate) fn amount<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let value = <Decimal as Deserialize>::deserialize(d)?;
    check_amount(value).map_err(D::Error::custom)
}

/// [`amount`] for optional fields.
pub(crate) fn opt_amount<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "amount")] Decimal);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// A whole number sent as a JSON number or a numeric string (`"1"`), as the
/// product's documents do.
pub(crate) fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct Whole;
    impl<'de> serde::de::Visitor<'de> for Whole {
        type Value = u32;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom(format!("expected a whole number of at least 0, got {v}")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u32, E> {
            v.trim()
                .parse()
                .map_err(|_| E::custom(format!("expected a whole number, got \"{}\"", short(v))))
        }
    }
    d.deserialize_any(Whole)
}

/// [`lenient_u32`] for optional fields (absent or null is `None`).
pub(crate) fn lenient_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "lenient_u32")] u32);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        name: String,
        #[serde(default, deserialize_with = "lenient_opt_u32")]
        count: Option<u32>,
    }

    #[test]
    fn names_missing_and_wrong_fields() {
        let err = decode::<Sample>(br#"{"count": 1}"#).expect_err("missing");
        assert_eq!(err.code, ErrorCode::InvalidField);
        assert_eq!(err.message, "name is required");
        let err = decode::<Sample>(br#"{"name": 5}"#).expect_err("wrong type");
        assert!(err.message.starts_with("name is invalid"), "{}", err.message);
        let err = decode::<Sample>(br#"{"name": "x", "count": "many"}"#).expect_err("not a number");
        assert!(err.message.starts_with("count is invalid"), "{}", err.message);
    }

    #[test]
    fn quoted_input_is_cut_even_with_escaped_quotes() {
        let inner = format!("{}\\\"{}", "a".repeat(100), "b".repeat(300));
        let clipped = clip_quotes(&format!("invalid type: string \"{inner}\", expected a number"));
        assert!(clipped.chars().count() < 120, "{clipped}");
        assert!(clipped.ends_with("\", expected a number"), "{clipped}");
    }

    #[test]
    fn a_quote_in_a_backquoted_variant_does_not_end_it() {
        let variant = format!("A{}'{}", "b".repeat(100), "c".repeat(200));
        let clipped = clip_quotes(&format!("unknown variant `{variant}`, expected one of `X`"));
        assert!(clipped.chars().count() < 120, "{clipped}");
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        let err = decode::<Sample>(b"{not json").expect_err("syntax");
        assert_eq!(err.code, ErrorCode::InvalidJson);
        let err = decode::<Sample>(br#"{"name": "x"} trailing"#).expect_err("trailing");
        assert_eq!(err.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn numbers_may_be_strings() {
        let s: Sample = decode(br#"{"name": "x", "count": "7"}"#).expect("ok");
        assert_eq!(s.count, Some(7));
        let s: Sample = decode(br#"{"name": "x", "count": 7}"#).expect("ok");
        assert_eq!(s.count, Some(7));
        let s: Sample = decode(br#"{"name": "x", "count": null}"#).expect("ok");
        assert_eq!(s.count, None);
    }
}
