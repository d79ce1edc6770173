//! A bill: its lines, rounded to the currency's minor unit, credit applied
//! first, and what remains to collect. Pure arithmetic, no I/O.

// Money and quantities: every operation is checked; an overflow is an
// error value, never a panic or a silently wrong amount.
#![deny(clippy::arithmetic_side_effects)]

use rust_decimal::Decimal;

use super::catalog::{ActionOnFailure, wire_enum};
use super::ledger::apply_credit;
use super::money::Currency;
use crate::error::Rejection;

wire_enum!(
    /// What a line charges for: the plan's recurring amount (in advance or
    /// in arrears), one metric's usage in the period, an unpaid amount
    /// carried over from an earlier bill, the amount of an explicit
    /// schedule entry, the top-up to a minimum commitment; and the lines
    /// that take away (see [`LineKind::takes_away`]): what interim bills of
    /// the period already billed, the unused part of a plan amount paid in
    /// advance (a plan change), beside the new plan's prorated amount.
    LineKind {
        PlanAmount = "PLAN_AMOUNT",
        Usage = "USAGE",
        Carried = "CARRIED",
        ScheduledAmount = "SCHEDULED_AMOUNT",
        MinimumCommitment = "MINIMUM_COMMITMENT",
        ProgressiveBilled = "PROGRESSIVE_BILLED",
        ProratedPlanAmount = "PRORATED_PLAN_AMOUNT",
        UnusedPlanAmount = "UNUSED_PLAN_AMOUNT",
    }
);

wire_enum!(
    /// What a bill is for: a closed period of an execution, usage billed on
    /// `present`, an entry of an explicit schedule, an interim bill when
    /// usage reaches a threshold (progressive billing), or the prorated
    /// difference of a plan change.
    BillKind {
        Period = "PERIOD",
        Presented = "PRESENTED",
        Sequence = "SEQUENCE",
        Progressive = "PROGRESSIVE",
        Proration = "PRORATION",
    }
);

impl LineKind {
    /// Whether the line takes away from the bill (its amount is zero or
    /// below): what was billed before, or paid and not used.
    pub(crate) fn takes_away(self) -> bool {
        matches!(self, LineKind::ProgressiveBilled | LineKind::UnusedPlanAmount)
    }
}

wire_enum!(
    /// Where a bill stands in its collection (see [`transition`]).
    BillStatus {
        Scheduled = "SCHEDULED",
        Processing = "PROCESSING",
        RetryScheduled = "RETRY_SCHEDULED",
        Paid = "PAID",
        WrittenOff = "WRITTEN_OFF",
        CarriedOver = "CARRIED_OVER",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
);

wire_enum!(
    /// Where one debit attempt stands: requested from the gateway, then what
    /// the gateway answered (or `TIMEOUT` when it answered nothing in time).
    AttemptStatus {
        Requested = "REQUESTED",
        Pending = "PENDING",
        Success = "SUCCESS",
        Failure = "FAILURE",
        Timeout = "TIMEOUT",
    }
);

impl AttemptStatus {
    /// Whether the attempt has its final answer (a later result only
    /// matters if it is a success: money moved).
    pub(crate) fn is_settled(self) -> bool {
        matches!(
            self,
            AttemptStatus::Success | AttemptStatus::Failure | AttemptStatus::Timeout
        )
    }
}

impl BillStatus {
    /// Whether the bill's collection has ended (no debit will be asked for).
    #[cfg(test)]
    pub(crate) fn is_final(self) -> bool {
        matches!(
            self,
            BillStatus::Paid
                | BillStatus::WrittenOff
                | BillStatus::CarriedOver
                | BillStatus::Failed
                | BillStatus::Cancelled
        )
    }
}

/// What happens to a bill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BillEvent {
    /// Its debit attempt is claimed and requested (set-based, in SQL).
    #[cfg_attr(not(test), allow(dead_code))]
    Claimed,
    /// The gateway took the money (on time or late).
    Succeeded,
    /// An attempt failed and retries remain.
    RetryScheduled,
    /// The last attempt failed: the plan's action applies.
    GaveUp(ActionOnFailure),
    /// Its execution was revoked before it was attempted (set-based, in SQL).
    #[cfg_attr(not(test), allow(dead_code))]
    Cancelled,
}

impl BillEvent {
    /// The statuses a bill may take this event in, in declaration order.
    /// `Claimed` and `Cancelled` happen to many bills at once, in SQL whose
    /// `WHERE` lists these statuses (the store's tests hold the two equal).
    #[cfg(test)]
    pub(crate) fn allowed_from(self) -> Vec<BillStatus> {
        BillStatus::ALL
            .iter()
            .copied()
            .filter(|s| transition(*s, self).is_ok())
            .collect()
    }
}

/// A transition the bill's life does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} bill cannot take {event:?}")]
pub(crate) struct RefusedTransition {
    pub from: BillStatus,
    pub event: BillEvent,
}

/// The bill's life as one pure function. A success is taken in any state
/// but a cancelled one: money that moved is always recorded (a late success
/// after a retry was scheduled, a write-off, a carry-over or a revocation);
/// a success for a bill already paid is the caller's double charge to
/// announce, and leaves it paid.
pub(crate) fn transition(from: BillStatus, event: BillEvent) -> Result<BillStatus, RefusedTransition> {
    use BillStatus as S;
    let to = match (from, event) {
        (S::Scheduled | S::RetryScheduled, BillEvent::Claimed) => S::Processing,
        (S::Cancelled, BillEvent::Succeeded) => return Err(RefusedTransition { from, event }),
        (_, BillEvent::Succeeded) => S::Paid,
        (S::Processing, BillEvent::RetryScheduled) => S::RetryScheduled,
        (S::Processing, BillEvent::GaveUp(ActionOnFailure::Retry)) => S::CarriedOver,
        (S::Processing, BillEvent::GaveUp(ActionOnFailure::Skip)) => S::WrittenOff,
        (S::Processing, BillEvent::GaveUp(ActionOnFailure::Revoke)) => S::Failed,
        (S::Scheduled | S::RetryScheduled, BillEvent::Cancelled) => S::Cancelled,
        _ => return Err(RefusedTransition { from, event }),
    };
    Ok(to)
}

/// A bill line is below this (10^20): far within what a decimal holds, so
/// lines in minor units add up exactly.
pub(crate) const MAX_LINE_AMOUNT: Decimal = Decimal::from_parts(0x6310_0000, 0x6BC7_5E2D, 0x5, false, 0);

/// A charge before rounding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Charge {
    pub kind: LineKind,
    pub metric_id: Option<String>,
    pub quantity: Option<Decimal>,
    /// Exact amount; the bill rounds it.
    pub amount: Decimal,
    pub description: String,
}

/// A line as billed: its amount rounded to the minor unit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub kind: LineKind,
    pub metric_id: Option<String>,
    pub quantity: Option<Decimal>,
    pub amount: Decimal,
    pub description: String,
}

/// The figures of a bill.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bill {
    pub lines: Vec<Line>,
    /// Sum of the rounded lines.
    pub total: Decimal,
    /// Paid from the credit balance.
    pub credit_applied: Decimal,
    /// Left to collect through the gateway.
    pub amount_due: Decimal,
}

/// Rounds every charge to the minor unit (so the lines add up to the total
/// a customer sees), then pays what it can from `credit_balance`. A total
/// beyond the range of amounts is an `AMOUNT_OVERFLOW` error, never a panic.
pub(crate) fn compute(currency: &Currency, charges: Vec<Charge>, credit_balance: Decimal) -> Result<Bill, Rejection> {
    let lines: Vec<Line> = charges
        .into_iter()
        .map(|c| Line {
            kind: c.kind,
            metric_id: c.metric_id,
            quantity: c.quantity,
            amount: if c.kind.takes_away() {
                currency.round(c.amount).min(Decimal::ZERO)
            } else {
                currency.round(c.amount).max(Decimal::ZERO)
            },
            description: c.description,
        })
        .collect();
    // Lines stay far from the edge of what a decimal holds, so that their
    // sum (in minor units) is exact to the last digit.
    if lines.iter().any(|line| line.amount.abs() >= MAX_LINE_AMOUNT) {
        return Err(Rejection::overflow("a bill line"));
    }
    let total = lines
        .iter()
        .try_fold(Decimal::ZERO, |sum, line| sum.checked_add(line.amount))
        .ok_or_else(|| Rejection::overflow("the bill's total"))?;
    // What takes away never takes more than the bill charges: the caller
    // caps it (and grants any excess as credit).
    if total < Decimal::ZERO {
        return Err(Rejection::new(
            crate::error::ErrorCode::InternalError,
            "a bill's lines take away more than they charge",
        ));
    }
    let (credit_applied, amount_due) =
        apply_credit(credit_balance, total).ok_or_else(|| Rejection::overflow("the credit applied to the bill"))?;
    Ok(Bill {
        lines,
        total,
        credit_applied,
        amount_due,
    })
}

/// What `amounts` come to as bill lines that charge: each rounded to the
/// minor unit and never below zero, then added; `None` on overflow.
pub(crate) fn rounded_total(currency: &Currency, amounts: impl IntoIterator<Item = Decimal>) -> Option<Decimal> {
    amounts.into_iter().try_fold(Decimal::ZERO, |sum, amount| {
        sum.checked_add(currency.round(amount).max(Decimal::ZERO))
    })
}

/// The line that tops a period's bill up to the plan's `minimum`: the
/// difference between it and `counted` (the period's plan amount and usage,
/// each rounded as its line is), when that is above zero. Rounded amounts
/// make the lines add up to the minimum to the last minor unit.
pub(crate) fn minimum_commitment(
    currency: &Currency,
    minimum: Decimal,
    counted: &[Decimal],
    description: String,
) -> Option<Charge> {
    let counted = rounded_total(currency, counted.iter().copied())?;
    let short = minimum.checked_sub(counted)?;
    (short > Decimal::ZERO).then_some(Charge {
        kind: LineKind::MinimumCommitment,
        metric_id: None,
        quantity: None,
        amount: short,
        description,
    })
}

/// What happens after a failed debit attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Try again later (`retries_left` after this one).
    Retry,
    /// `max_retry` retries were spent: the plan's action applies.
    RetriesExhausted,
    /// The gateway said retrying cannot help: the plan's action applies now.
    NotRetryable,
}

/// Decides after attempt number `attempt` (1 is the first try) failed: at
/// most `max_retry` retries follow the first attempt.
pub(crate) fn after_failure(attempt: u32, max_retry: u32, retryable: bool) -> AfterFailure {
    if !retryable {
        AfterFailure::NotRetryable
    } else if attempt <= max_retry {
        AfterFailure::Retry
    } else {
        AfterFailure::RetriesExhausted
    }
}

/// Formats an amount with exactly the currency's minor digits (`10.00`), as
/// debit requests carry it.
pub(crate) fn format_amount(currency: &Currency, amount: Decimal) -> String {
    let mut rounded = currency.round(amount);
    rounded.rescale(currency.minor_units());
    rounded.to_string()
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    fn inr() -> Currency {
        Currency::parse("INR").expect("currency")
    }

    fn usage(metric: &str, amount: &str) -> Charge {
        Charge {
            kind: LineKind::Usage,
            metric_id: Some(metric.into()),
            quantity: Some(Decimal::ONE),
            amount: d(amount),
            description: metric.into(),
        }
    }

    fn plan(amount: &str) -> Charge {
        Charge {
            kind: LineKind::PlanAmount,
            metric_id: None,
            quantity: None,
            amount: d(amount),
            description: "plan".into(),
        }
    }

    #[test]
    fn lines_are_rounded_and_credit_goes_first() {
        let bill = compute(
            &inr(),
            vec![plan("499"), usage("api", "10.005"), usage("gb", "0.004")],
            d("100"),
        )
        .expect("bill");
        let amounts: Vec<Decimal> = bill.lines.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, vec![d("499"), d("10.01"), d("0.00")]);
        assert_eq!(bill.total, d("509.01"));
        assert_eq!(bill.credit_applied, d("100"));
        assert_eq!(bill.amount_due, d("409.01"));
    }

    #[test]
    fn a_bill_paid_by_credit_leaves_nothing_due() {
        let bill = compute(&inr(), vec![usage("api", "7.5")], d("10")).expect("bill");
        assert_eq!((bill.credit_applied, bill.amount_due), (d("7.5"), d("0")));
    }

    #[test]
    fn zero_decimal_currencies_round_to_units() {
        let yen = Currency::parse("JPY").expect("currency");
        let bill = compute(&yen, vec![usage("api", "10.5")], Decimal::ZERO).expect("bill");
        assert_eq!(bill.total, d("11"));
        assert_eq!(format_amount(&yen, bill.total), "11");
    }

    #[test]
    fn amounts_are_formatted_with_minor_digits() {
        assert_eq!(format_amount(&inr(), d("10")), "10.00");
        assert_eq!(format_amount(&inr(), d("10.5")), "10.50");
        assert_eq!(format_amount(&inr(), d("10.005")), "10.01");
    }

    #[test]
    fn the_line_bound_is_ten_to_the_twentieth() {
        assert_eq!(MAX_LINE_AMOUNT, d("100000000000000000000"));
        let err = compute(&inr(), vec![usage("m", "100000000000000000000")], Decimal::ZERO).expect_err("too large");
        assert_eq!(err.code, crate::error::ErrorCode::AmountOverflow);
    }

    #[test]
    fn every_transition_of_a_bill() {
        use BillEvent as E;
        use BillStatus as S;
        let all = [
            S::Scheduled,
            S::Processing,
            S::RetryScheduled,
            S::Paid,
            S::WrittenOff,
            S::CarriedOver,
            S::Failed,
            S::Cancelled,
        ];
        let events = [
            E::Claimed,
            E::Succeeded,
            E::RetryScheduled,
            E::GaveUp(ActionOnFailure::Retry),
            E::GaveUp(ActionOnFailure::Skip),
            E::GaveUp(ActionOnFailure::Revoke),
            E::Cancelled,
        ];
        // The allowed transitions; every other pair is refused.
        let allowed = [
            (S::Scheduled, E::Claimed, S::Processing),
            (S::RetryScheduled, E::Claimed, S::Processing),
            (S::Scheduled, E::Succeeded, S::Paid),
            (S::Processing, E::Succeeded, S::Paid),
            (S::RetryScheduled, E::Succeeded, S::Paid),
            (S::Paid, E::Succeeded, S::Paid),
            (S::WrittenOff, E::Succeeded, S::Paid),
            (S::CarriedOver, E::Succeeded, S::Paid),
            (S::Failed, E::Succeeded, S::Paid),
            (S::Processing, E::RetryScheduled, S::RetryScheduled),
            (S::Processing, E::GaveUp(ActionOnFailure::Retry), S::CarriedOver),
            (S::Processing, E::GaveUp(ActionOnFailure::Skip), S::WrittenOff),
            (S::Processing, E::GaveUp(ActionOnFailure::Revoke), S::Failed),
            (S::Scheduled, E::Cancelled, S::Cancelled),
            (S::RetryScheduled, E::Cancelled, S::Cancelled),
        ];
        for from in all {
            for event in events {
                let expected = allowed
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                match (transition(from, event), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from} + {event:?}"),
                    (Err(refused), None) => assert_eq!(refused, RefusedTransition { from, event }),
                    (got, want) => panic!("{from} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert!(S::Paid.is_final() && S::Cancelled.is_final() && !S::RetryScheduled.is_final());
        assert_eq!(BillStatus::try_from("PAID".to_string()), Ok(S::Paid));
        assert!(BillStatus::try_from("LOST".to_string()).is_err());
    }

    #[test]
    fn failure_decisions() {
        // max_retry 2: attempts 1 and 2 fail into a retry, attempt 3 is the last.
        assert_eq!(after_failure(1, 2, true), AfterFailure::Retry);
        assert_eq!(after_failure(2, 2, true), AfterFailure::Retry);
        assert_eq!(after_failure(3, 2, true), AfterFailure::RetriesExhausted);
        assert_eq!(after_failure(1, 0, true), AfterFailure::RetriesExhausted);
        assert_eq!(after_failure(1, 5, false), AfterFailure::NotRetryable);
    }

    proptest! {
        #[test]
        fn extreme_charges_are_a_bill_or_an_overflow_never_a_panic(
            amounts in proptest::collection::vec(crate::domain::money::any_decimal(), 0..6),
            credit in crate::domain::money::any_decimal(),
        ) {
            let charges: Vec<Charge> = amounts.iter().map(|a| Charge { amount: *a, ..usage("m", "0") }).collect();
            match compute(&inr(), charges, credit) {
                Ok(bill) => {
                    prop_assert_eq!(bill.credit_applied.checked_add(bill.amount_due), Some(bill.total));
                    prop_assert!(bill.amount_due >= Decimal::ZERO);
                }
                Err(rejection) => prop_assert_eq!(rejection.code, crate::error::ErrorCode::AmountOverflow),
            }
        }

        #[test]
        fn money_is_conserved(cents in proptest::collection::vec(0i64..10_000_000, 0..8), credit in 0i64..100_000_000) {
            let charges: Vec<Charge> = cents.iter().map(|c| usage("m", &Decimal::new(*c, 3).to_string())).collect();
            let bill = compute(&inr(), charges, Decimal::new(credit, 2)).expect("bill");
            let sum: Decimal = bill.lines.iter().map(|l| l.amount).sum();
            prop_assert_eq!(sum, bill.total);
            prop_assert_eq!(bill.credit_applied + bill.amount_due, bill.total);
            prop_assert!(bill.amount_due >= Decimal::ZERO);
            prop_assert!(bill.lines.iter().all(|l| l.amount.normalize().scale() <= 2));
        }
    }
}
