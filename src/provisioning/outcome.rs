//! What a provisioning command produced, and the refusals its handlers share.

use crate::error::{ErrorCode, HandleError, Rejection};

/// What a command produced.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The answer for `reply_to`.
    pub response: serde_json::Value,
    /// Whether webhooks were written (the relay is woken after commit).
    pub announced: bool,
}

impl Outcome {
    pub(super) fn quiet(response: serde_json::Value) -> Outcome {
        Outcome {
            response,
            announced: false,
        }
    }
}

pub(super) fn not_found(code: ErrorCode, field: &str, value: &str) -> HandleError {
    HandleError::Rejected(Rejection::new(
        code,
        format!(
            "{field} '{}' does not exist for this merchant",
            crate::error::short(value)
        ),
    ))
}

pub(super) fn already_exists(field: &str, value: &str, hint: &str) -> HandleError {
    HandleError::Rejected(Rejection::new(
        ErrorCode::AlreadyExists,
        format!(
            "{field} '{}' already exists with a different definition{hint}",
            crate::error::short(value)
        ),
    ))
}
