//! Provisioning commands (contract §3): decide, write, and say what to answer.
//! Each handler runs inside the caller's transaction and changes nothing
//! when it fails; webhooks go to the outbox in the same transaction.

mod catalog;
mod executions;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::provisioning::Command;

pub(crate) use catalog::metric_spec;
pub use executions::{execution_document, plan_metrics};

/// What a command produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The answer for `reply_to`.
    pub response: serde_json::Value,
    /// Whether webhooks were written (the relay is woken after commit).
    pub announced: bool,
}

impl Outcome {
    fn quiet(response: serde_json::Value) -> Outcome {
        Outcome {
            response,
            announced: false,
        }
    }
}

/// Runs one command for one merchant at `now`.
pub async fn execute(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    command: Command,
) -> Result<Outcome, HandleError> {
    match command {
        Command::CreateMetric(c) => catalog::create_metric(conn, merchant_id, now, c).await,
        Command::CreatePlan(c) => catalog::create_plan(conn, merchant_id, now, c).await,
        Command::UpdatePlan(c) => catalog::update_plan(conn, merchant_id, now, c).await,
        Command::CreateCustomer(c) => catalog::create_customer(conn, merchant_id, now, c).await,
        Command::Create(c) => executions::create(conn, merchant_id, now, c).await,
        Command::Get(c) => executions::get(conn, merchant_id, now, c).await,
        Command::List(c) => executions::list(conn, merchant_id, now, c).await,
        Command::UpdateStatus(c) => executions::update_status(conn, merchant_id, now, c).await,
        Command::AddCredit(c) => executions::add_credit(conn, merchant_id, now, c).await,
    }
}

fn not_found(code: ErrorCode, field: &str, value: &str) -> HandleError {
    HandleError::Rejected(Rejection::new(
        code,
        format!("{field} '{value}' does not exist for this merchant"),
    ))
}

fn already_exists(field: &str, value: &str, hint: &str) -> HandleError {
    HandleError::Rejected(Rejection::new(
        ErrorCode::AlreadyExists,
        format!("{field} '{value}' already exists with a different definition{hint}"),
    ))
}

/// Stored data that no longer parses is a fault of this service, not of the message.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> HandleError {
    HandleError::Rejected(Rejection::new(
        ErrorCode::InternalError,
        format!("stored {what} is unreadable: {detail}"),
    ))
}
