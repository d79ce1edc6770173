//! The two kinds of failure a worker tells apart: input that is wrong
//! ([`Rejection`], dead-lettered and answered) and faults that pass
//! ([`HandleError::Transient`], retried after recovery, never dead-lettered).

use std::fmt;

/// Machine-readable reason carried in `x-error-code` and `error_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidField,
    MissingMerchant,
    UnknownCommand,
    MessageTooLarge,
    Forbidden,
    MetricNotFound,
    PlanNotFound,
    CustomerNotFound,
    ExecutionNotFound,
    ExecutionNotActive,
    MetricNotInPlan,
    TimestampInFuture,
    AlreadyExists,
    InvalidState,
    InternalError,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
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
            ErrorCode::MetricNotInPlan => "METRIC_NOT_IN_PLAN",
            ErrorCode::TimestampInFuture => "TIMESTAMP_IN_FUTURE",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::InvalidState => "INVALID_STATE",
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
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_FIELD` with a message that names the field.
    pub fn field(field: &str, problem: impl fmt::Display) -> Self {
        Rejection::new(ErrorCode::InvalidField, format!("{field} {problem}"))
    }
}

/// The outcome of handling one message when it is not a success.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message is wrong; retrying cannot help.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A dependency is down or busy; the same message succeeds later.
    #[error("transient fault: {0}")]
    Transient(String),
}

impl From<sqlx::Error> for HandleError {
    fn from(err: sqlx::Error) -> Self {
        if is_transient(&err) {
            HandleError::Transient(err.to_string())
        } else {
            // A database error that is not an outage will fail the same way
            // on every retry: reject it instead of looping forever.
            HandleError::Rejected(Rejection::new(
                ErrorCode::InternalError,
                format!("database error: {err}"),
            ))
        }
    }
}

/// Whether a database error is an outage or a conflict that a retry resolves.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection, 40001/40P01: serialization and deadlock,
            // 53: insufficient resources, 57P: shutdown, 58: system error.
            code.starts_with("08")
                || code == "40001"
                || code == "40P01"
                || code.starts_with("53")
                || code.starts_with("57P")
                || code.starts_with("58")
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
