//! Webhooks: the document, its stable id and its names.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::ids::new_event_id;

/// Every webhook the worker announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EventName {
    ExecutionCreated,
    ExecutionActivated,
    ExecutionDeactivated,
    ExecutionCreditEvent,
    ExecutionDebitEvent,
    ExecutionAmountBreachedLimit,
    ExecutionCreditsDepleted,
    ExecutionError,
    TxnToBeExecuted,
    TxnScheduled,
    TxnFailed,
    RetryTxnScheduled,
    TxnRetryExceeded,
    TxnSkipped,
    TxnDoubleCharge,
    ExecutionCreditExpired,
    ExecutionUsageAlert,
    ExecutionPlanChanged,
}

impl EventName {
    /// The wire name, also the routing key.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventName::ExecutionCreated => "BILLING_EXECUTION_CREATED",
            EventName::ExecutionActivated => "BILLING_EXECUTION_ACTIVATED",
            EventName::ExecutionDeactivated => "BILLING_EXECUTION_DEACTIVATED",
            EventName::ExecutionCreditEvent => "BILLING_EXECUTION_CREDIT_EVENT",
            EventName::ExecutionDebitEvent => "BILLING_EXECUTION_DEBIT_EVENT",
            EventName::ExecutionAmountBreachedLimit => "BILLING_EXECUTION_AMOUNT_BREACHED_LIMIT",
            EventName::ExecutionCreditsDepleted => "BILLING_EXECUTION_CREDITS_DEPLETED",
            EventName::ExecutionError => "BILLING_EXECUTION_ERROR",
            EventName::TxnToBeExecuted => "BILLING_TXN_TO_BE_EXECUTED",
            EventName::TxnScheduled => "BILLING_TXN_SCHEDULED",
            EventName::TxnFailed => "BILLING_TXN_FAILED",
            EventName::RetryTxnScheduled => "BILLING_RETRY_TXN_SCHEDULED",
            EventName::TxnRetryExceeded => "BILLING_TXN_RETRY_EXCEEDED",
            EventName::TxnSkipped => "BILLING_TXN_SKIPPED",
            EventName::TxnDoubleCharge => "BILLING_TXN_DOUBLE_CHARGE",
            EventName::ExecutionCreditExpired => "BILLING_EXECUTION_CREDIT_EXPIRED",
            EventName::ExecutionUsageAlert => "BILLING_EXECUTION_USAGE_ALERT",
            EventName::ExecutionPlanChanged => "BILLING_EXECUTION_PLAN_CHANGED",
        }
    }
}

/// A webhook ready for the outbox: its id is fixed here and never changes,
/// so consumers can dedupe a repeat on `message_id`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Webhook {
    pub id: String,
    pub event_name: String,
    pub merchant_id: String,
    pub date_created: DateTime<Utc>,
    pub payload: serde_json::Value,
}

impl Webhook {
    /// Builds the document `{id, event_name, event_value, date_created, merchant_id, content}`.
    pub(crate) fn new(event: EventName, merchant_id: &str, now: DateTime<Utc>, content: serde_json::Value) -> Webhook {
        let id = new_event_id();
        let payload = json!({
            "id": id,
            "event_name": event.as_str(),
            "event_value": "BILLING",
            "date_created": now.to_rfc3339_opts(SecondsFormat::Secs, true),
            "merchant_id": merchant_id,
            "content": content,
        });
        Webhook {
            id,
            event_name: event.as_str().to_string(),
            merchant_id: merchant_id.to_string(),
            date_created: now,
            payload,
        }
    }
}
