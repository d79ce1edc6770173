//! The two kinds of failure a worker tells apart: input that is wrong
//! ([`Rejection`], dead-lettered and answered) and faults that pass
//! (`HandleError::Transient`, retried after recovery, never dead-lettered).

use std::fmt;

/// Machine-readable reason carried in `x-error-code` and `error_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `INVALID_JSON`: the body is not valid JSON, or has something after the JSON value.
    InvalidJson,
    /// `INVALID_FIELD`: a field is missing, unknown, of the wrong type, or breaks a rule.
    InvalidField,
    /// `MISSING_MERCHANT`: the `x-merchantid` header is missing or not a valid id.
    MissingMerchant,
    /// `UNKNOWN_COMMAND`: `command` names none of the commands.
    UnknownCommand,
    /// `MESSAGE_TOO_LARGE`: the body is larger than `amqp.max_message_bytes`.
    MessageTooLarge,
    /// `FORBIDDEN`: the message's broker user may not act for its merchant.
    Forbidden,
    /// `METRIC_NOT_FOUND`: a plan or an execution's `metric_info` names an unknown metric.
    MetricNotFound,
    /// `PLAN_NOT_FOUND`: a command names a plan the merchant does not have.
    PlanNotFound,
    /// `CUSTOMER_NOT_FOUND`: a command names a customer the merchant does not have.
    CustomerNotFound,
    /// `EXECUTION_NOT_FOUND`: a command or event names an execution the merchant lacks.
    ExecutionNotFound,
    /// `EXECUTION_NOT_ACTIVE`: a usage event for an execution that is not `ACTIVE`.
    ExecutionNotActive,
    /// `BILL_NOT_FOUND`: `get_bill` names a bill the merchant does not have.
    BillNotFound,
    /// `METRIC_NOT_IN_PLAN`: a usage event for a metric its execution does not bill.
    MetricNotInPlan,
    /// `TIMESTAMP_IN_FUTURE`: a usage event stamped too far after its arrival.
    TimestampInFuture,
    /// `ALREADY_EXISTS`: an id or key is repeated with a different definition.
    AlreadyExists,
    /// `INVALID_STATE`: the command does not apply to the object's current state.
    InvalidState,
    /// `AMOUNT_OVERFLOW`: money arithmetic beyond the range of amounts.
    AmountOverflow,
    /// `INTERNAL_ERROR`: neither the input's fault nor an outage: unreadable data, a lost race, a bug.
    InternalError,
}

impl ErrorCode {
    /// The wire spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::InvalidField => "INVALID_FIELD",
            ErrorCode::MissingMerchant => "MISSING_MERCHANT",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::MetricNotFound => "METRIC_NOT_FOUND",
            ErrorCode::PlanNotFound => "PLAN_NOT_FOUND",
            ErrorCode::CustomerNotFound => "CUSTOMER_NOT_FOUND",
            ErrorCode::ExecutionNotFound => "EXECUTION_NOT_FOUND",
            ErrorCode::ExecutionNotActive => "EXECUTION_NOT_ACTIVE",
            ErrorCode::BillNotFound => "BILL_NOT_FOUND",
            ErrorCode::MetricNotInPlan => "METRIC_NOT_IN_PLAN",
            ErrorCode::TimestampInFuture => "TIMESTAMP_IN_FUTURE",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::InvalidState => "INVALID_STATE",
            ErrorCode::AmountOverflow => "AMOUNT_OVERFLOW",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Input that cannot be processed as sent: a code and a sentence naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// Why the input was rejected.
    pub code: ErrorCode,
    /// A sentence naming the field and what is wrong with it.
    pub message: String,
}

impl Rejection {
    /// A rejection whose message is cut to [`MAX_MESSAGE_CHARS`]: whatever
    /// input it quotes, no reply, header or log line grows with it.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: clip(message.into(), MAX_MESSAGE_CHARS),
        }
    }

    /// `INVALID_FIELD` with a message that names the field.
    pub(crate) fn field(field: &str, problem: impl fmt::Display) -> Self {
        Rejection::new(ErrorCode::InvalidField, format!("{field} {problem}"))
    }
}

impl Rejection {
    /// Money arithmetic that left the representable range (about 7.9e28):
    /// an error value naming what was computed, never a panic.
    pub(crate) fn overflow(what: impl fmt::Display) -> Self {
        Rejection::new(
            ErrorCode::AmountOverflow,
            format!("{what} is beyond the range amounts can take; check the prices and usage that make it"),
        )
    }
}

/// Longest error message the worker sends out (dead-letter header, reply, log).
pub(crate) const MAX_MESSAGE_CHARS: usize = 400;

/// Most characters of one piece of wire input quoted in an outgoing text.
pub(crate) const MAX_QUOTED_CHARS: usize = 64;

/// Wire input as an outgoing text may quote it: at most
/// [`MAX_QUOTED_CHARS`] characters, control characters replaced, an
/// ellipsis and the full length where it was cut.
pub(crate) fn short(input: &str) -> String {
    let count = input.chars().count();
    let mut out: String = input
        .chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if count > MAX_QUOTED_CHARS {
        out.push_str(&format!("… ({count} characters)"));
    }
    out
}

/// Longest error message in bytes (a header's size is counted in bytes).
pub(crate) const MAX_MESSAGE_BYTES: usize = 1000;

/// Cuts `text` to `max_chars` characters and [`MAX_MESSAGE_BYTES`] bytes.
fn clip(mut text: String, max_chars: usize) -> String {
    let limit = MAX_MESSAGE_BYTES.saturating_sub('…'.len_utf8());
    let cut = text
        .char_indices()
        .enumerate()
        .find(|(n, (at, c))| *n >= max_chars || at.saturating_add(c.len_utf8()) > limit)
        .map(|(_, (at, _))| at);
    if let Some(cut) = cut {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The outcome of handling one message when it is not a success.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    /// The message is wrong; retrying cannot help.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A dependency is down or busy; the same message succeeds later.
    #[error("transient fault: {0}")]
    Transient(String),
    /// A race with another worker (a unique key taken, a deadlock, a
    /// serialization failure): retried a few times, when the repeat finds
    /// the winner's result; then refused, so no message is retried forever.
    #[error("conflict: {0}")]
    Conflict(String),
}

/// How many times a conflicting message is tried before it is refused.
pub(crate) const MAX_CONFLICT_RETRIES: u32 = 5;

impl From<sqlx::Error> for HandleError {
    fn from(err: sqlx::Error) -> Self {
        if is_conflict(&err) {
            HandleError::Conflict(err.to_string())
        } else if is_transient(&err) {
            HandleError::Transient(err.to_string())
        } else {
            // A database error that is not an outage will fail the same way
            // on every retry: reject it instead of looping forever.
            HandleError::Rejected(Rejection::new(ErrorCode::InternalError, database_refusal(&err)))
        }
    }
}

/// A database refusal as a sentence for the sender: the class of problem,
/// never the database's own text (which may quote the input at length).
fn database_refusal(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let what = match code.get(..2).unwrap_or_default() {
                "22" => "a value is out of the range the store accepts",
                "23" => "a value breaks a rule of the store",
                _ => "the store refused the change",
            };
            format!("{what} (SQLSTATE {code})")
        }
        other => format!("the store could not process the change: {}", short(&other.to_string())),
    }
}

/// Whether a database error is a race with a concurrent transaction that a
/// repeat resolves: 23505 unique violation (a racing idempotent command:
/// the repeat answers the replay), 40001 serialization failure, 40P01
/// deadlock, 55P03 lock not available.
pub(crate) fn is_conflict(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("23505" | "40001" | "40P01" | "55P03")),
        _ => false,
    }
}

/// Whether a database error is an outage or a conflict that a retry resolves.
pub(crate) fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection, 53: insufficient resources, 57014: statement
            // timeout, 57P: shutdown, 58: system error; conflicts too.
            code.starts_with("08")
                || code.starts_with("53")
                || code == "57014"
                || code.starts_with("57P")
                || code.starts_with("58")
                || is_conflict(err)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Runs `work`, returning the panic's message instead of unwinding further
/// when it panics (a bug met while handling one piece of work).
pub(crate) async fn catch_panic<T>(work: impl std::future::Future<Output = T>) -> Result<T, String> {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// [`catch_panic`] for work that does not wait.
pub(crate) fn catch_panic_now<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Stored data that no longer parses: a fault of this service, not of the
/// message (refused as `INTERNAL_ERROR`).
pub(crate) fn corrupt(what: &str, detail: impl fmt::Display) -> HandleError {
    HandleError::Rejected(Rejection::new(
        ErrorCode::InternalError,
        format!("stored {what} is unreadable: {detail}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_text_is_short_in_characters_and_bytes() {
        let long = Rejection::new(ErrorCode::InvalidField, "x".repeat(5000));
        assert_eq!(long.message.chars().count(), MAX_MESSAGE_CHARS + 1);
        let wide = Rejection::new(ErrorCode::InvalidField, "€".repeat(5000));
        assert!(wide.message.len() <= MAX_MESSAGE_BYTES, "{}", wide.message.len());
        let short_one = Rejection::new(ErrorCode::InvalidField, "field is wrong");
        assert_eq!(short_one.message, "field is wrong");
        assert_eq!(short("ab\u{7}c"), "ab?c");
        let quoted = short(&"q".repeat(300));
        assert!(quoted.starts_with(&"q".repeat(MAX_QUOTED_CHARS)) && quoted.ends_with("(300 characters)"));
    }
}
