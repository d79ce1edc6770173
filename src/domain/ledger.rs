//! Credit as a ledger: every grant and every use is an entry, and the
//! balance is their running sum, never below zero.

// Money and quantities: every operation is checked; an overflow is an
// error value, never a panic or a silently wrong amount.
#![deny(clippy::arithmetic_side_effects)]

use rust_decimal::Decimal;

use crate::error::Rejection;

/// The kind of a ledger entry; grants add to the balance, uses take from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Grant,
    Use,
}

impl EntryKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "GRANT",
            EntryKind::Use => "USE",
        }
    }

    /// The signed effect of an entry of this kind on the balance.
    pub(crate) fn signed(self, amount: Decimal) -> Decimal {
        match self {
            EntryKind::Grant => amount,
            // Negation is exact: a Decimal's range is symmetric.
            EntryKind::Use => amount.saturating_mul(Decimal::NEGATIVE_ONE),
        }
    }
}

/// Checks a credit grant: positive and in whole minor units of the currency.
pub(crate) fn check_grant(field: &str, amount: Decimal, minor_units: u32, allow_zero: bool) -> Result<(), Rejection> {
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(Rejection::field(field, "must not be negative"));
    }
    if amount.is_zero() && !allow_zero {
        return Err(Rejection::field(field, "must be greater than zero"));
    }
    if amount.normalize().scale() > minor_units {
        return Err(Rejection::field(
            field,
            format_args!("must have at most {minor_units} decimal places for the plan's currency"),
        ));
    }
    Ok(())
}

/// The part of `due` that credit pays, and what remains to collect.
/// Never uses more than the balance, never more than is due. `None` when
/// the two would not add up to `due` exactly (magnitudes at the edge of
/// what a decimal holds round their last digits): never a cent lost.
pub(crate) fn apply_credit(balance: Decimal, due: Decimal) -> Option<(Decimal, Decimal)> {
    let used = balance.max(Decimal::ZERO).min(due.max(Decimal::ZERO));
    let remaining = due.checked_sub(used)?;
    (remaining.checked_add(used)? == due).then_some((used, remaining))
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Replays entries to a balance; `None` if any prefix would go negative,
    /// which the store must never allow.
    fn replay(entries: &[(EntryKind, Decimal)]) -> Option<Decimal> {
        entries.iter().try_fold(Decimal::ZERO, |balance, (kind, amount)| {
            let next = balance.checked_add(kind.signed(*amount))?;
            (next >= Decimal::ZERO).then_some(next)
        })
    }

    fn d(units: i64, scale: u32) -> Decimal {
        Decimal::new(units, scale)
    }

    #[test]
    fn grants_are_positive_and_in_minor_units() {
        assert!(check_grant("amount", d(800, 2), 2, false).is_ok());
        assert!(check_grant("amount", d(0, 0), 2, true).is_ok());
        assert!(check_grant("amount", d(0, 0), 2, false).is_err());
        assert!(check_grant("amount", d(-1, 0), 2, true).is_err());
        let err = check_grant("amount", d(1001, 3), 2, false).expect_err("too precise");
        assert!(err.message.starts_with("amount"), "{}", err.message);
        assert!(check_grant("amount", d(1000, 3), 2, false).is_ok());
    }

    #[test]
    fn credit_pays_what_it_can() {
        assert_eq!(apply_credit(d(500, 2), d(300, 2)), Some((d(300, 2), d(0, 2))));
        assert_eq!(apply_credit(d(300, 2), d(500, 2)), Some((d(300, 2), d(200, 2))));
        assert_eq!(apply_credit(d(0, 0), d(500, 2)), Some((d(0, 0), d(500, 2))));
        assert_eq!(apply_credit(d(500, 2), d(0, 0)), Some((d(0, 0), d(0, 0))));
    }

    #[test]
    fn replay_sums_and_refuses_overdraft() {
        let entries = [
            (EntryKind::Grant, d(10, 0)),
            (EntryKind::Use, d(4, 0)),
            (EntryKind::Grant, d(1, 0)),
        ];
        assert_eq!(replay(&entries), Some(d(7, 0)));
        assert_eq!(replay(&[(EntryKind::Use, d(1, 0))]), None);
    }

    proptest! {
        #[test]
        fn extreme_balances_never_panic(
            balance in crate::domain::money::any_decimal(),
            due in crate::domain::money::any_decimal(),
            entries in proptest::collection::vec((any::<bool>(), crate::domain::money::any_decimal()), 0..6),
        ) {
            // Either exact to the last digit, or refused.
            if let Some((used, remaining)) = apply_credit(balance, due) {
                prop_assert!(used >= Decimal::ZERO);
                prop_assert_eq!(used.checked_add(remaining), Some(due));
            }
            let entries: Vec<_> = entries
                .into_iter()
                .map(|(grant, amount)| (if grant { EntryKind::Grant } else { EntryKind::Use }, amount.abs()))
                .collect();
            if let Some(balance) = replay(&entries) {
                prop_assert!(balance >= Decimal::ZERO);
            }
        }

        #[test]
        fn applying_credit_conserves_money(balance in 0i64..1_000_000, due in 0i64..1_000_000) {
            let (balance, due) = (d(balance, 2), d(due, 2));
            let (used, remaining) = apply_credit(balance, due).expect("exact at these sizes");
            prop_assert_eq!(used + remaining, due);
            prop_assert!(used <= balance && used >= Decimal::ZERO && remaining >= Decimal::ZERO);
        }
    }
}
