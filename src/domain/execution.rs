//! A billing execution: one customer on one plan, and the states it moves through.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, Rejection};

/// Lifecycle of a billing execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ExecutionStatus {
    /// Provisioned, not billing yet.
    Created,
    /// Accepts usage and is billed.
    Active,
    /// Stopped: no usage, no bills.
    Inactive,
}

/// The webhook a status change announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusEvent {
    Activated,
    Deactivated,
}

/// The mapping at the store boundary.
impl TryFrom<String> for ExecutionStatus {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        ExecutionStatus::parse(&value).ok_or_else(|| format!("'{value}' is not an execution status"))
    }
}

impl ExecutionStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Created => "CREATED",
            ExecutionStatus::Active => "ACTIVE",
            ExecutionStatus::Inactive => "INACTIVE",
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "CREATED" => Some(ExecutionStatus::Created),
            "ACTIVE" => Some(ExecutionStatus::Active),
            "INACTIVE" => Some(ExecutionStatus::Inactive),
            _ => None,
        }
    }

    /// Decides a requested status change. `Ok(None)` means nothing changes
    /// (the execution is already there), so a repeated request is harmless.
    pub(crate) fn transition(self, to: ExecutionStatus) -> Result<Option<StatusEvent>, Rejection> {
        use ExecutionStatus::*;
        match (self, to) {
            (from, to) if from == to => Ok(None),
            (Created | Inactive, Active) => Ok(Some(StatusEvent::Activated)),
            (Created | Active, Inactive) => Ok(Some(StatusEvent::Deactivated)),
            (from, Created) => Err(Rejection::new(
                ErrorCode::InvalidState,
                format!("status cannot go back to CREATED from {}", from.as_str()),
            )),
            (from, to) => Err(Rejection::new(
                ErrorCode::InvalidState,
                format!("status cannot change from {} to {}", from.as_str(), to.as_str()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExecutionStatus::*;
    use super::*;

    #[test]
    fn transitions_table() {
        let table = [
            (Created, Active, Ok(Some(StatusEvent::Activated))),
            (Created, Inactive, Ok(Some(StatusEvent::Deactivated))),
            (Active, Inactive, Ok(Some(StatusEvent::Deactivated))),
            (Inactive, Active, Ok(Some(StatusEvent::Activated))),
            (Active, Active, Ok(None)),
            (Inactive, Inactive, Ok(None)),
            (Created, Created, Ok(None)),
            (Active, Created, Err(ErrorCode::InvalidState)),
            (Inactive, Created, Err(ErrorCode::InvalidState)),
        ];
        for (from, to, expected) in table {
            let got = from.transition(to).map_err(|r| r.code);
            assert_eq!(got, expected, "{from:?} -> {to:?}");
        }
    }
}
