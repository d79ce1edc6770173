//! Proration of a plan change within a period: how much of the period is
//! left, the part of the current plan amount paid and not used, and the new
//! plan amount for the rest. Pure.

// Money: every operation is checked; an overflow is an error value.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::aggregation::seconds_between;
use super::catalog::wire_enum;
use super::money::Currency;

wire_enum!(
    /// Where a plan change with proration stands: previewed, waiting for
    /// its bill to be paid, made, or given up when its bill failed for good.
    ChangeStatus {
        Previewed = "PREVIEWED",
        Pending = "PENDING",
        Applied = "APPLIED",
        Failed = "FAILED",
    }
);

/// The figures of a prorated plan change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Proration {
    /// The part of the period `[start, end)` from `at` to `end`, exact.
    pub remaining_fraction: Decimal,
    /// The current plan amount times the fraction, when that amount was
    /// paid in advance; 0 otherwise. Rounded to the minor unit.
    pub unused_amount: Decimal,
    /// The new plan amount times the fraction, rounded.
    pub new_amount: Decimal,
    /// `new_amount - unused_amount`: billed when above zero, granted as
    /// credit when below.
    pub net_amount: Decimal,
}

/// The fraction of `[start, end)` that lies from `at` on, to the
/// microsecond; `None` unless `start <= at < end`.
pub(crate) fn remaining_fraction(start: DateTime<Utc>, end: DateTime<Utc>, at: DateTime<Utc>) -> Option<Decimal> {
    if !(start <= at && at < end) {
        return None;
    }
    let whole = seconds_between(start, end)?;
    let left = seconds_between(at, end)?;
    left.checked_div(whole)
}

/// Prorates a change at `at` from `current` (paid in advance when
/// `prepaid`) to `new`, both plan amounts of the whole period.
pub(crate) fn prorate(
    currency: &Currency,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    at: DateTime<Utc>,
    current: Decimal,
    prepaid: bool,
    new: Decimal,
) -> Option<Proration> {
    let fraction = remaining_fraction(start, end, at)?;
    let unused = if prepaid {
        currency.round(current.checked_mul(fraction)?)
    } else {
        Decimal::ZERO
    };
    let new_amount = currency.round(new.checked_mul(fraction)?);
    Some(Proration {
        remaining_fraction: fraction,
        unused_amount: unused,
        new_amount,
        net_amount: new_amount.checked_sub(unused)?,
    })
}

/// The part of a plan amount for `[start, at)` of the period `[start, end)`
/// (the time before a change, billed in arrears), unrounded.
pub(crate) fn elapsed_amount(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    at: DateTime<Utc>,
    amount: Decimal,
) -> Option<Decimal> {
    let left = remaining_fraction(start, end, at)?;
    amount.checked_mul(Decimal::ONE.checked_sub(left)?)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").to_utc()
    }

    fn inr() -> Currency {
        Currency::parse("INR").expect("currency")
    }

    #[test]
    fn a_third_of_the_period_gone() {
        // November has 30 days; ten are gone on the 11th.
        let (start, end, now) = (
            at("2026-11-01T00:00:00Z"),
            at("2026-12-01T00:00:00Z"),
            at("2026-11-11T00:00:00Z"),
        );
        let p = prorate(
            &inr(),
            start,
            end,
            now,
            Decimal::new(150, 0),
            true,
            Decimal::new(300, 0),
        )
        .expect("in period");
        assert_eq!(p.new_amount, Decimal::new(20000, 2));
        assert_eq!(p.unused_amount, Decimal::new(10000, 2));
        assert_eq!(p.net_amount, Decimal::new(10000, 2));
        assert_eq!(p.remaining_fraction.round_dp(6), Decimal::new(666667, 6));
        // Not paid in advance: nothing unused; a downgrade nets below zero.
        let p = prorate(
            &inr(),
            start,
            end,
            now,
            Decimal::new(150, 0),
            false,
            Decimal::new(300, 0),
        )
        .expect("in period");
        assert_eq!((p.unused_amount, p.net_amount), (Decimal::ZERO, Decimal::new(20000, 2)));
        let p = prorate(&inr(), start, end, now, Decimal::new(300, 0), true, Decimal::new(99, 0)).expect("in period");
        assert_eq!(p.net_amount, Decimal::new(66, 0) - Decimal::new(200, 0));
        assert_eq!(
            elapsed_amount(start, end, now, Decimal::new(150, 0)).map(|a| a.round_dp(2)),
            Some(Decimal::new(5000, 2))
        );
        // Outside the period there is nothing to prorate.
        assert_eq!(prorate(&inr(), start, end, end, Decimal::ONE, true, Decimal::ONE), None);
    }

    proptest! {
        #[test]
        fn unused_and_new_never_exceed_the_plan_amounts(
            minutes in 1i64..100_000, gone in 0i64..100_000, current in 0i64..1_000_000, new in 0i64..1_000_000,
        ) {
            let start = at("2026-01-01T00:00:00Z");
            let end = start + chrono::Duration::minutes(minutes);
            let now = start + chrono::Duration::minutes(gone % minutes);
            let (current, new) = (Decimal::new(current, 2), Decimal::new(new, 2));
            let p = prorate(&inr(), start, end, now, current, true, new).expect("in period");
            prop_assert!(p.remaining_fraction > Decimal::ZERO && p.remaining_fraction <= Decimal::ONE);
            prop_assert!(p.unused_amount <= current && p.new_amount <= new);
            prop_assert_eq!(p.net_amount, p.new_amount - p.unused_amount);
        }
    }
}
