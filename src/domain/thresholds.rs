//! Usage thresholds: a plan's `usage_thresholds` (progressive billing: an
//! interim bill when a period's usage amount reaches one) and an
//! execution's `usage_alerts` (a webhook when it reaches one). Pure.

// Money: every operation is checked; an overflow is an error value.
#![deny(clippy::arithmetic_side_effects)]

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::Currency;
use crate::error::Rejection;

/// Most thresholds of one plan, and most alerts of one execution.
pub(crate) const MAX_THRESHOLDS: usize = 20;

/// One threshold of progressive billing. A `recurring` one repeats every
/// `amount` above the highest fixed one (above zero when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageThreshold {
    /// Stored and shown as a JSON number.
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub amount: Decimal,
    #[serde(default)]
    pub recurring: bool,
}

fn check_amount(field: &str, amount: Decimal, currency: &Currency) -> Result<(), Rejection> {
    if amount <= Decimal::ZERO {
        return Err(Rejection::field(field, "must be greater than zero"));
    }
    if !currency.fits_minor_units(amount) {
        return Err(Rejection::field(
            field,
            format_args!("has more decimals than {currency} allows"),
        ));
    }
    Ok(())
}

/// The order thresholds are stored and shown in: the fixed ones by
/// amount, then the recurring one.
pub(crate) fn put_in_order(list: &mut [UsageThreshold]) {
    list.sort_by_key(|t| (t.recurring, t.amount));
}

/// Checks a plan's thresholds and puts them in order: positive amounts in
/// minor units, no fixed amount twice, at most one recurring.
pub(crate) fn check_thresholds(list: &[UsageThreshold], currency: &Currency) -> Result<Vec<UsageThreshold>, Rejection> {
    if list.len() > MAX_THRESHOLDS {
        return Err(Rejection::field(
            "usage_thresholds",
            format_args!("may hold at most {MAX_THRESHOLDS} entries"),
        ));
    }
    for (i, t) in list.iter().enumerate() {
        check_amount(&format!("usage_thresholds[{i}].amount"), t.amount, currency)?;
    }
    if list.iter().filter(|t| t.recurring).count() > 1 {
        return Err(Rejection::field(
            "usage_thresholds",
            "may hold at most one recurring threshold",
        ));
    }
    let mut sorted = list.to_vec();
    put_in_order(&mut sorted);
    if sorted
        .windows(2)
        .any(|w| !w[0].recurring && !w[1].recurring && w[0].amount == w[1].amount)
    {
        return Err(Rejection::field("usage_thresholds", "repeats an amount"));
    }
    Ok(sorted)
}

/// Checks an execution's alert amounts and puts them in order.
pub(crate) fn check_alerts(list: &[Decimal], currency: &Currency) -> Result<Vec<Decimal>, Rejection> {
    if list.len() > MAX_THRESHOLDS {
        return Err(Rejection::field(
            "usage_alerts",
            format_args!("may hold at most {MAX_THRESHOLDS} amounts"),
        ));
    }
    for (i, a) in list.iter().enumerate() {
        check_amount(&format!("usage_alerts[{i}]"), *a, currency)?;
    }
    let mut sorted = list.to_vec();
    sorted.sort();
    sorted.dedup();
    Ok(sorted)
}

/// The highest threshold level at or below `amount`, if any. `None` also
/// when the level is beyond what a decimal holds.
pub(crate) fn reached(list: &[UsageThreshold], amount: Decimal) -> Option<Decimal> {
    let fixed = list
        .iter()
        .filter(|t| !t.recurring && t.amount <= amount)
        .map(|t| t.amount)
        .max();
    let Some(every) = list.iter().find(|t| t.recurring).map(|t| t.amount) else {
        return fixed;
    };
    let base = list
        .iter()
        .filter(|t| !t.recurring)
        .map(|t| t.amount)
        .max()
        .unwrap_or(Decimal::ZERO);
    let above = amount.checked_sub(base)?;
    if above < every {
        return fixed;
    }
    let times = above.checked_div(every)?.floor();
    base.checked_add(times.checked_mul(every)?)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(units: i64, scale: u32) -> Decimal {
        Decimal::new(units, scale)
    }

    fn t(amount: i64, recurring: bool) -> UsageThreshold {
        UsageThreshold {
            amount: d(amount, 0),
            recurring,
        }
    }

    fn inr() -> Currency {
        Currency::parse("INR").expect("currency")
    }

    #[test]
    fn fixed_then_recurring_levels() {
        let list = [t(100, false), t(250, false), t(100, true)];
        let cases = [
            (0, None),
            (99, None),
            (100, Some(100)),
            (249, Some(100)),
            (250, Some(250)),
            (349, Some(250)),
            (350, Some(350)),
            (1_000, Some(950)),
        ];
        for (amount, want) in cases {
            assert_eq!(reached(&list, d(amount, 0)), want.map(|w| d(w, 0)), "{amount}");
        }
        // A recurring threshold alone repeats from zero.
        assert_eq!(reached(&[t(50, true)], d(149, 0)), Some(d(100, 0)));
        assert_eq!(reached(&[t(50, true)], d(49, 0)), None);
    }

    #[test]
    fn thresholds_are_checked_and_ordered() {
        let sorted = check_thresholds(&[t(300, false), t(50, true), t(100, false)], &inr()).expect("valid");
        assert_eq!(sorted, vec![t(100, false), t(300, false), t(50, true)]);
        let cases = [
            (vec![t(0, false)], "usage_thresholds[0].amount"),
            (vec![t(10, true), t(20, true)], "usage_thresholds"),
            (vec![t(10, false), t(10, false)], "usage_thresholds"),
        ];
        for (list, field) in cases {
            let err = check_thresholds(&list, &inr()).expect_err(field);
            assert!(err.message.starts_with(field), "{}", err.message);
        }
        let precise = [UsageThreshold {
            amount: d(1001, 3),
            recurring: false,
        }];
        assert!(check_thresholds(&precise, &inr()).is_err());
        assert_eq!(
            check_alerts(&[d(50, 0), d(10, 0), d(50, 0)], &inr()).expect("valid"),
            vec![d(10, 0), d(50, 0)]
        );
        assert!(check_alerts(&[d(-1, 0)], &inr()).is_err());
    }

    proptest! {
        #[test]
        fn the_level_reached_grows_with_usage_and_never_passes_it(
            fixed in proptest::collection::vec(1i64..1_000, 0..4),
            every in proptest::option::of(1i64..500),
            a in 0i64..5_000,
            b in 0i64..5_000,
        ) {
            let mut list: Vec<UsageThreshold> = fixed.iter().map(|f| t(*f, false)).collect();
            list.sort_by_key(|x| x.amount);
            list.dedup();
            if let Some(e) = every {
                list.push(t(e, true));
            }
            let (lo, hi) = (a.min(b), a.max(b));
            let (at_lo, at_hi) = (reached(&list, d(lo, 0)), reached(&list, d(hi, 0)));
            prop_assert!(at_lo <= at_hi, "{at_lo:?} > {at_hi:?}");
            if let Some(level) = at_hi {
                prop_assert!(level <= d(hi, 0));
            }
        }
    }
}
