//! Invariants shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target feeds hostile input to one wire decoder of `billing_worker`
//! and, beyond "it does not panic", checks what the service promises about
//! its answers. A broken promise panics with a message that starts with
//! `invariant` and names it, so that libFuzzer saves the input as a crash.

use billing_worker::error::{ErrorCode, Rejection};
use serde::de::IgnoredAny;
use serde_json::Value;

/// Longest rejection message, in bytes, whatever the size of the input.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Most characters of the input that a rejection message may quote.
pub const MAX_QUOTED_CHARS: usize = 200;

/// How much of the start and of the end of a long message a failed invariant shows.
const SHOWN_HEAD: usize = 200;
const SHOWN_TAIL: usize = 120;

/// Checks the promises every rejection keeps, whatever the input:
///
/// - `rejection-code`: the code is one the decoder may answer (`allowed`);
/// - `message-not-empty`: the message says something;
/// - `message-length`: the message is at most [`MAX_MESSAGE_BYTES`] bytes;
/// - `quote-length`: the message quotes at most [`MAX_QUOTED_CHARS`]
///   characters of any of `inputs` in one piece.
///
/// Panics naming every broken promise at once.
pub fn check_rejection(target: &str, rejection: &Rejection, allowed: &[ErrorCode], inputs: &[&[u8]]) {
    let message = &rejection.message;
    let mut broken = Vec::new();
    if !allowed.contains(&rejection.code) {
        broken.push(format!(
            "`rejection-code`: {} is not one of {allowed:?}",
            rejection.code
        ));
    }
    if message.is_empty() {
        broken.push("`message-not-empty`: the message is empty".to_string());
    }
    if message.len() > MAX_MESSAGE_BYTES {
        broken.push(format!(
            "`message-length`: the message is {} bytes long, more than {MAX_MESSAGE_BYTES}",
            message.len()
        ));
    }
    if let Some(quoted) = inputs
        .iter()
        .find_map(|input| quoted_run(message, input, MAX_QUOTED_CHARS))
    {
        broken.push(format!(
            "`quote-length`: the message quotes the input in a run of {} characters, more than {MAX_QUOTED_CHARS}",
            quoted.chars().count()
        ));
    }
    if !broken.is_empty() {
        panic!(
            "[{target}] invariant broken by a {} rejection: {}\nmessage ({} bytes): {}",
            rejection.code,
            broken.join("; "),
            message.len(),
            shorten(message)
        );
    }
}

/// `text` for a panic message: its start and its end when it is long.
pub fn shorten(text: &str) -> String {
    let count = text.chars().count();
    if count <= SHOWN_HEAD + SHOWN_TAIL {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(SHOWN_HEAD).collect();
    let tail: String = text.chars().skip(count - SHOWN_TAIL).collect();
    format!(
        "{head:?} ... ({} characters) ... {tail:?}",
        count - SHOWN_HEAD - SHOWN_TAIL
    )
}

/// The part of `message` that also occurs, byte for byte, in `input` and is
/// more than `limit` characters long, if there is one.
///
/// Needs `limit >= 2 * ANCHOR - 1`: any such common run then covers one of
/// the windows `message[k * ANCHOR..(k + 1) * ANCHOR]`, so searching `input`
/// for those windows and extending each hit both ways finds it.
pub fn quoted_run<'m>(message: &'m str, input: &[u8], limit: usize) -> Option<&'m str> {
    const ANCHOR: usize = 100;
    debug_assert!(limit >= 2 * ANCHOR - 1);
    let msg = message.as_bytes();
    // A run of more than `limit` characters has more than `limit` bytes.
    if msg.len() <= limit || input.len() <= limit {
        return None;
    }
    let mut p = 0;
    while p + ANCHOR <= msg.len() {
        // Overlapping hits too: the run may start anywhere before the hit.
        let finder = memchr::memmem::Finder::new(&msg[p..p + ANCHOR]);
        let mut from = 0;
        while let Some(found) = finder.find(&input[from..]) {
            let at = from + found;
            from = at + 1;
            let mut before = 0;
            while before < p && before < at && msg[p - before - 1] == input[at - before - 1] {
                before += 1;
            }
            let mut after = ANCHOR;
            while p + after < msg.len() && at + after < input.len() && msg[p + after] == input[at + after] {
                after += 1;
            }
            let (start, end) = (p - before, p + after);
            // Count characters: every byte that does not continue a UTF-8 sequence.
            let chars = msg[start..end].iter().filter(|&&b| (b & 0xC0) != 0x80).count();
            if chars > limit {
                let start = (0..=start).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
                let end = (end..=msg.len())
                    .find(|&i| message.is_char_boundary(i))
                    .unwrap_or(msg.len());
                return Some(&message[start..end]);
            }
        }
        p += ANCHOR;
    }
    None
}

/// Reads `text` as a `serde_json::Value`: `Ok(None)` when it is JSON that a
/// `Value` cannot hold (an object keyed by one of serde_json's private tokens,
/// such as `$serde_json::private::RawValue`), `Err` when it is not JSON.
pub fn json_value(text: &str) -> Result<Option<Value>, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(Some(value)),
        Err(_) => serde_json::from_str::<IgnoredAny>(text).map(|_| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_long_quotes_only() {
        let quote = "q".repeat(201);
        let input = format!("{{\"status\":\"{quote}\"}}");
        let message = format!("status is invalid: unknown variant `{quote}`");
        assert_eq!(quoted_run(&message, input.as_bytes(), 200), Some(quote.as_str()));
        let short = &quote[..200];
        let message = format!("status is invalid: unknown variant `{short}`");
        assert_eq!(quoted_run(&message, input.as_bytes(), 200), None);
        // Multi-byte characters: 201 characters, 402 bytes.
        let wide = "é".repeat(201);
        let message = format!("got '{wide}'");
        assert!(quoted_run(&message, wide.as_bytes(), 200).is_some());
        assert!(quoted_run(&message, &wide.as_bytes()[..400], 200).is_none());
    }

    #[test]
    fn names_every_broken_promise() {
        let rejection = Rejection::new(ErrorCode::InvalidField, "x".repeat(2000));
        let input = "x".repeat(2000);
        let panic = std::panic::catch_unwind(|| {
            check_rejection("t", &rejection, &[ErrorCode::InvalidJson], &[input.as_bytes()]);
        })
        .expect_err("broken");
        let text = panic.downcast_ref::<String>().expect("a formatted panic");
        assert!(text.contains("`rejection-code`"), "{text}");
        assert!(text.contains("`message-length`"), "{text}");
        assert!(text.contains("`quote-length`"), "{text}");
    }
}
