//! Credit as a ledger: every grant, every use and every expiry is an
//! entry, and the balance is their running sum, never below zero. Each
//! grant keeps what is left of it; bills draw on grants in a fixed order
//! (priority, then earliest expiry, then age), so the balance is also the
//! sum of the grants' remainders.

// Money and quantities: every operation is checked; an overflow is an
// error value, never a panic or a silently wrong amount.
#![deny(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::catalog::wire_enum;
use crate::error::Rejection;

wire_enum!(
    /// The kind of a ledger entry: a grant adds to the balance; a use (a
    /// bill paid from a grant) and an expiry (what was left of a grant at
    /// its `expires_at`) take from it.
    EntryKind { Grant = "GRANT", Use = "USE", Expire = "EXPIRE" }
);

impl EntryKind {
    /// The signed effect of an entry of this kind on the balance.
    pub(crate) fn signed(self, amount: Decimal) -> Decimal {
        match self {
            EntryKind::Grant => amount,
            // Negation is exact: a Decimal's range is symmetric.
            EntryKind::Use | EntryKind::Expire => amount.saturating_mul(Decimal::NEGATIVE_ONE),
        }
    }
}

/// Priority of a grant that names none; lower is used first.
pub(crate) const DEFAULT_PRIORITY: i32 = 100;
/// Priorities a grant may have.
pub(crate) const PRIORITIES: std::ops::RangeInclusive<i32> = 0..=10_000;

/// A grant as bills draw on it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grant {
    pub id: String,
    /// Age: a grant made earlier has a lower number.
    pub seq: i64,
    pub priority: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub remaining: Decimal,
}

/// Puts grants in the order bills use them: lower priority first, then
/// the earliest expiry (a grant that never expires last), then the oldest.
pub(crate) fn draw_order(grants: &mut [Grant]) {
    grants.sort_by_key(|g| (g.priority, g.expires_at.is_none(), g.expires_at, g.seq));
}

/// Takes `amount` from grants already in [`draw_order`]: each grant gives
/// what it has before the next is touched. Returns (index, amount taken)
/// per grant drawn on; `None` when the grants hold less than `amount`.
pub(crate) fn draw(grants: &mut [Grant], amount: Decimal) -> Option<Vec<(usize, Decimal)>> {
    let mut left = amount;
    let mut taken = Vec::new();
    for (i, grant) in grants.iter_mut().enumerate() {
        if left <= Decimal::ZERO {
            break;
        }
        let part = grant.remaining.min(left);
        if part <= Decimal::ZERO {
            continue;
        }
        grant.remaining = grant.remaining.checked_sub(part)?;
        left = left.checked_sub(part)?;
        taken.push((i, part));
    }
    left.is_zero().then_some(taken)
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

    fn grant(id: &str, seq: i64, priority: i32, expires_in: Option<i64>, remaining: i64) -> Grant {
        let base = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .to_utc();
        Grant {
            id: id.into(),
            seq,
            priority,
            expires_at: expires_in.map(|days| base + chrono::Duration::days(days)),
            remaining: d(remaining, 0),
        }
    }

    #[test]
    fn grants_are_drawn_by_priority_then_expiry_then_age() {
        // Listed oldest first; the draw order is another.
        let mut grants = vec![
            grant("old_never", 1, 100, None, 5),
            grant("old_late", 2, 100, Some(30), 5),
            grant("urgent", 3, 10, None, 5),
            grant("new_soon", 4, 100, Some(7), 5),
            grant("new_never", 5, 100, None, 5),
        ];
        draw_order(&mut grants);
        let order: Vec<&str> = grants.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(order, ["urgent", "new_soon", "old_late", "old_never", "new_never"]);
        let taken = draw(&mut grants, d(12, 0)).expect("enough");
        assert_eq!(taken, vec![(0, d(5, 0)), (1, d(5, 0)), (2, d(2, 0))]);
        assert_eq!(grants[2].remaining, d(3, 0));
        assert_eq!(draw(&mut grants, d(14, 0)), None, "13 left");
    }

    /// What happens to an execution's credit, in a property test.
    #[derive(Debug, Clone)]
    enum Step {
        Grant {
            priority: i32,
            expires_in: Option<i64>,
            amount: i64,
        },
        Use(i64),
        Expire(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0i32..4, proptest::option::of(1i64..30), 1i64..10_000).prop_map(|(priority, expires_in, amount)| {
                Step::Grant {
                    priority,
                    expires_in,
                    amount,
                }
            }),
            (1i64..20_000).prop_map(Step::Use),
            (0i64..31).prop_map(Step::Expire),
        ]
    }

    proptest! {
        #[test]
        fn the_balance_is_the_ledger_and_the_grants_remainders(steps in proptest::collection::vec(step(), 1..40)) {
            let mut grants: Vec<Grant> = Vec::new();
            let mut ledger: Vec<(EntryKind, Decimal)> = Vec::new();
            let mut balance = Decimal::ZERO;
            for (seq, s) in steps.into_iter().enumerate() {
                match s {
                    Step::Grant { priority, expires_in, amount } => {
                        grants.push(grant(&format!("g{seq}"), seq as i64, priority, expires_in, amount));
                        ledger.push((EntryKind::Grant, d(amount, 2)));
                        grants.last_mut().expect("pushed").remaining = d(amount, 2);
                        balance += d(amount, 2);
                    }
                    Step::Use(due) => {
                        // A bill takes what the balance covers, from grants in order.
                        let (used, _) = apply_credit(balance, d(due, 2)).expect("small");
                        let mut ordered = grants.clone();
                        draw_order(&mut ordered);
                        let before: Vec<Decimal> = ordered.iter().map(|g| g.remaining).collect();
                        let taken = draw(&mut ordered, used).expect("the balance is in the grants");
                        // Never a later grant while an earlier one has something left.
                        if let Some(&(last, _)) = taken.last() {
                            for (i, g) in ordered.iter().enumerate().take(last) {
                                prop_assert!(g.remaining.is_zero() || before[i].is_zero(), "grant {} skipped", g.id);
                            }
                        }
                        for (_, part) in &taken {
                            ledger.push((EntryKind::Use, *part));
                        }
                        grants = ordered;
                        balance -= used;
                    }
                    Step::Expire(day) => {
                        let base = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("time").to_utc();
                        let now = base + chrono::Duration::days(day);
                        for g in grants.iter_mut().filter(|g| g.expires_at.is_some_and(|at| at <= now)) {
                            if g.remaining > Decimal::ZERO {
                                ledger.push((EntryKind::Expire, g.remaining));
                                balance -= g.remaining;
                                g.remaining = Decimal::ZERO;
                            }
                        }
                    }
                }
                let remainders: Decimal = grants.iter().map(|g| g.remaining).sum();
                prop_assert_eq!(replay(&ledger), Some(balance));
                prop_assert_eq!(remainders, balance);
                prop_assert!(grants.iter().all(|g| g.remaining >= Decimal::ZERO));
            }
        }

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
