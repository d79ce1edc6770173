//! Aggregation of metered usage per (execution, metric, period).
//!
//! A worker folds a batch of [`UsageEvent`]s into one [`Delta`] per key,
//! writes each delta with one set-based upsert, and the store's running
//! [`Aggregate`] yields the metric quantity with
//! [`Aggregate::used_till_now`]. Deltas combine associatively and
//! commutatively, so batches may be split, merged and applied in any order.

// Money and quantities: every operation is checked; an overflow is an
// error value, never a panic or a silently wrong amount.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How a metric's events combine into its quantity.
///
/// Serializes as `"SUM"`, `"COUNT"`, `"MAX"`, `"UNIQUE_COUNT"`, `"LATEST"`
/// and `"WEIGHTED_SUM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum AggregationType {
    /// Sum of event values; the only type whose values may be negative.
    Sum,
    /// Number of events; values are ignored.
    Count,
    /// Greatest event value.
    Max,
    /// Number of distinct `unique_value`s.
    UniqueCount,
    /// Value of the event with the greatest `(timestamp, event_id)`.
    Latest,
    /// Time-weighted average of a level that each event moves by its value
    /// and that carries over from period to period.
    WeightedSum,
}

impl AggregationType {
    /// Every aggregation type, in wire order.
    pub(crate) const ALL: [AggregationType; 6] = [
        AggregationType::Sum,
        AggregationType::Count,
        AggregationType::Max,
        AggregationType::UniqueCount,
        AggregationType::Latest,
        AggregationType::WeightedSum,
    ];

    /// The wire name, identical to the serde representation.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AggregationType::Sum => "SUM",
            AggregationType::Count => "COUNT",
            AggregationType::Max => "MAX",
            AggregationType::UniqueCount => "UNIQUE_COUNT",
            AggregationType::Latest => "LATEST",
            AggregationType::WeightedSum => "WEIGHTED_SUM",
        }
    }

    /// Whether events of this metric may carry negative values: only for SUM
    /// (usage can be given back) and WEIGHTED_SUM (a level goes down).
    /// Checking values is the caller's job; [`Delta::add`] folds whatever it
    /// is handed.
    pub(crate) fn allows_negative(self) -> bool {
        matches!(self, AggregationType::Sum | AggregationType::WeightedSum)
    }
}

impl fmt::Display for AggregationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an aggregation type; Display names the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("aggregation_type must be one of SUM, COUNT, MAX, UNIQUE_COUNT, LATEST, WEIGHTED_SUM, got {value:?}")]
pub(crate) struct ParseAggregationTypeError {
    /// The rejected text.
    pub value: String,
}

impl FromStr for AggregationType {
    type Err = ParseAggregationTypeError;

    /// Parses a wire name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AggregationType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseAggregationTypeError { value: s.to_owned() })
    }
}

/// The fields of one metered event that aggregation reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsageEvent {
    /// The metered quantity (ignored by COUNT and UNIQUE_COUNT).
    pub value: Decimal,
    /// When the usage happened; orders events for LATEST.
    pub timestamp: DateTime<Utc>,
    /// The event's idempotency key; breaks LATEST ties at equal timestamps.
    pub event_id: String,
    /// What UNIQUE_COUNT counts distinct occurrences of, if the event has one.
    pub unique_value: Option<String>,
    /// WEIGHTED_SUM: `value × seconds` from its period's start to the event
    /// ([`weight`]); zero for other types.
    pub weighted: Decimal,
    /// PERCENTAGE pricing: the event's own fee; zero otherwise.
    pub fee: Decimal,
}

/// An increment's weight in its period: `value × seconds` from the
/// period's start to `timestamp` (microsecond precision), none below zero,
/// so that an increment counted late in a later period moves the level
/// from that period's start. `None` when the product cannot be held.
pub(crate) fn weight(value: Decimal, timestamp: DateTime<Utc>, period_start: DateTime<Utc>) -> Option<Decimal> {
    value.checked_mul(seconds_between(period_start, timestamp)?)
}

/// Seconds from `from` to `to` at microsecond precision, none below zero;
/// `None` beyond about 292,000 years.
pub(crate) fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Decimal> {
    let micros = to.signed_duration_since(from).num_microseconds()?;
    Some(Decimal::new(micros.max(0), 6))
}

/// What a time-weighted quantity needs beyond its period's own events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Window {
    /// WEIGHTED_SUM: the level when the period starts (the sum of every
    /// earlier period's increments).
    pub carried: Decimal,
    /// Length of the period in seconds: to its end, or to the instant it
    /// is billed for a period billed as presented.
    pub seconds: Decimal,
}

/// The latest event seen: `(timestamp, event_id, value)`.
pub(crate) type Latest = (DateTime<Utc>, String, Decimal);

/// Keeps the later of two latest-events: greatest `(timestamp, event_id)`,
/// and on a full tie the greater value, so the choice never depends on order.
#[cfg(test)]
fn later(current: Option<Latest>, candidate: Option<Latest>) -> Option<Latest> {
    match (current, candidate) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Cheap reference comparison before cloning an event's id into the state.
fn is_later(current: &Option<Latest>, event: &UsageEvent) -> bool {
    match current {
        None => true,
        Some((timestamp, event_id, value)) => {
            (&event.timestamp, event.event_id.as_str(), &event.value) > (timestamp, event_id.as_str(), value)
        }
    }
}

fn greater(a: Option<Decimal>, b: Option<Decimal>) -> Option<Decimal> {
    a.max(b)
}

/// The pre-aggregated effect of a set of events on one key.
///
/// Built so a worker turns a whole batch into one row per key for a
/// set-based upsert: `sum` and `count` are added, `max` is the greater,
/// `latest` the later by `(timestamp, event_id)`, and `unique_values` are
/// inserted into the store's distinct values, whose number of new rows is
/// what [`Aggregate::apply`] takes. [`Delta::merge`] is associative and
/// commutative and `Delta::default()` is its identity, so any split of a
/// batch folds to the same delta.
///
/// Arithmetic saturates at `Decimal`'s range (about ±7.9e28) instead of
/// panicking; the laws above hold for every total within that range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    /// SUM: sum of event values; zero for other types.
    pub sum: Decimal,
    /// Number of events folded in, for every type.
    pub count: i64,
    /// MAX: greatest event value; `None` for other types or no events.
    pub max: Option<Decimal>,
    /// LATEST: the event with the greatest `(timestamp, event_id)` as
    /// `(timestamp, event_id, value)`; `None` for other types or no events.
    pub latest: Option<Latest>,
    /// UNIQUE_COUNT: the distinct unique values seen; empty for other types.
    pub unique_values: BTreeSet<String>,
    /// WEIGHTED_SUM: sum of the events' weights; zero for other types.
    pub weighted: Decimal,
    /// PERCENTAGE pricing: sum of the events' own fees.
    pub fee: Decimal,
}

impl Delta {
    /// Folds a set of events for one key into a delta.
    #[cfg(test)]
    pub(crate) fn from_events<'a>(
        aggregation: AggregationType,
        events: impl IntoIterator<Item = &'a UsageEvent>,
    ) -> Delta {
        let mut delta = Delta::default();
        for event in events {
            delta.add(aggregation, event);
        }
        delta
    }

    /// Folds one event in: it always counts as an event; SUM adds its value,
    /// MAX keeps the greater value, LATEST keeps it if it is later by
    /// `(timestamp, event_id)` (arrival order plays no part), UNIQUE_COUNT
    /// adds its unique value when it has one; COUNT ignores the value.
    pub(crate) fn add(&mut self, aggregation: AggregationType, event: &UsageEvent) {
        self.count = self.count.saturating_add(1);
        self.fee = self.fee.saturating_add(event.fee);
        match aggregation {
            AggregationType::Sum => self.sum = self.sum.saturating_add(event.value),
            AggregationType::WeightedSum => {
                self.sum = self.sum.saturating_add(event.value);
                self.weighted = self.weighted.saturating_add(event.weighted);
            }
            AggregationType::Count => {}
            AggregationType::Max => self.max = greater(self.max, Some(event.value)),
            AggregationType::UniqueCount => {
                if let Some(unique) = &event.unique_value
                    && !self.unique_values.contains(unique)
                {
                    self.unique_values.insert(unique.clone());
                }
            }
            AggregationType::Latest => {
                if is_later(&self.latest, event) {
                    self.latest = Some((event.timestamp, event.event_id.clone(), event.value));
                }
            }
        }
    }

    /// Combines another delta for the same key into this one; associative
    /// and commutative, with `Delta::default()` as identity.
    #[cfg(test)]
    pub(crate) fn merge(&mut self, other: Delta) {
        self.sum = self.sum.saturating_add(other.sum);
        self.count = self.count.saturating_add(other.count);
        self.weighted = self.weighted.saturating_add(other.weighted);
        self.fee = self.fee.saturating_add(other.fee);
        self.max = greater(self.max, other.max);
        self.latest = later(self.latest.take(), other.latest);
        let mut unique_values = other.unique_values;
        // Appending moves the smaller set into the larger.
        if unique_values.len() > self.unique_values.len() {
            std::mem::swap(&mut self.unique_values, &mut unique_values);
        }
        self.unique_values.append(&mut unique_values);
    }
}

/// The stored running state of one key.
///
/// Same shape as [`Delta`] except that only the number of distinct values is
/// kept here; the distinct values themselves live in the store, which tells
/// [`Aggregate::apply`] how many of a delta's values were new.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Aggregate {
    /// Running sum of values (SUM).
    pub sum: Decimal,
    /// Running number of events (every type).
    pub count: i64,
    /// Greatest value so far (MAX).
    pub max: Option<Decimal>,
    /// Latest event so far as `(timestamp, event_id, value)` (LATEST).
    pub latest: Option<Latest>,
    /// Number of distinct unique values so far (UNIQUE_COUNT).
    pub unique_count: i64,
    /// Sum of the events' weights (WEIGHTED_SUM).
    pub weighted: Decimal,
    /// Sum of the events' own fees (PERCENTAGE pricing).
    pub fee: Decimal,
}

impl Aggregate {
    /// Adds a delta to the running state, exactly as the upsert does:
    /// `sum` and `count` add, `max` keeps the greater, `latest` the later by
    /// `(timestamp, event_id)`, and `unique_count` grows by `new_unique`, the
    /// number of the delta's distinct values the store had not seen (a
    /// negative `new_unique` counts as zero). Saturates instead of panicking.
    #[cfg(test)]
    pub(crate) fn apply(&mut self, delta: &Delta, new_unique: i64) {
        self.sum = self.sum.saturating_add(delta.sum);
        self.count = self.count.saturating_add(delta.count);
        self.weighted = self.weighted.saturating_add(delta.weighted);
        self.fee = self.fee.saturating_add(delta.fee);
        self.max = greater(self.max, delta.max);
        self.latest = later(self.latest.take(), delta.latest.clone());
        self.unique_count = self.unique_count.saturating_add(new_unique.max(0));
    }

    /// [`Aggregate::quantity`] of a period that needs no [`Window`].
    #[cfg(test)]
    pub(crate) fn used_till_now(&self, aggregation: AggregationType) -> Decimal {
        self.quantity(aggregation, Window::default())
            .expect("quantity in range")
    }

    /// The metric quantity so far: SUM the sum, COUNT the number of events,
    /// MAX the greatest value, UNIQUE_COUNT the number of distinct values,
    /// LATEST the latest event's value; zero when there were no events.
    /// WEIGHTED_SUM the time-weighted average level over the whole window:
    /// `(carried + sum) − weighted / seconds`, which is Σ(level × seconds
    /// it held) / seconds, the last level holding to the window's end (a
    /// window of no length gives that last level). `None` when it cannot
    /// be held.
    pub(crate) fn quantity(&self, aggregation: AggregationType, window: Window) -> Option<Decimal> {
        Some(match aggregation {
            AggregationType::Sum => self.sum,
            AggregationType::Count => Decimal::from(self.count),
            AggregationType::Max => self.max.unwrap_or(Decimal::ZERO),
            AggregationType::UniqueCount => Decimal::from(self.unique_count),
            AggregationType::Latest => self.latest.as_ref().map_or(Decimal::ZERO, |(_, _, value)| *value),
            AggregationType::WeightedSum => {
                let level = window.carried.checked_add(self.sum)?;
                if window.seconds <= Decimal::ZERO {
                    level
                } else {
                    level.checked_sub(self.weighted.checked_div(window.seconds)?)?
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).expect("test decimal literal")
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("test timestamp in range")
    }

    fn event(value: &str, seconds: i64, event_id: &str, unique: Option<&str>) -> UsageEvent {
        UsageEvent {
            value: d(value),
            timestamp: at(seconds),
            event_id: event_id.to_owned(),
            unique_value: unique.map(str::to_owned),
            weighted: Decimal::ZERO,
            fee: Decimal::ZERO,
        }
    }

    fn used(aggregation: AggregationType, events: &[UsageEvent]) -> Decimal {
        let delta = Delta::from_events(aggregation, events);
        let mut aggregate = Aggregate::default();
        aggregate.apply(&delta, delta.unique_values.len() as i64);
        aggregate.used_till_now(aggregation)
    }

    #[test]
    fn names_parse_and_print() {
        for aggregation in AggregationType::ALL {
            assert_eq!(aggregation.as_str().parse(), Ok(aggregation));
            assert_eq!(aggregation.to_string(), aggregation.as_str());
            let wire = serde_json::to_string(&aggregation).expect("json");
            assert_eq!(wire, format!("\"{}\"", aggregation.as_str()));
            let back: AggregationType = serde_json::from_str(&wire).expect("aggregation type");
            assert_eq!(back, aggregation);
        }
        assert_eq!("unique_count".parse(), Ok(AggregationType::UniqueCount));
        let error = "AVG".parse::<AggregationType>().expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "aggregation_type must be one of SUM, COUNT, MAX, UNIQUE_COUNT, LATEST, WEIGHTED_SUM, got \"AVG\""
        );
    }

    #[test]
    fn only_sums_allow_negative_values() {
        let allowed: Vec<_> = AggregationType::ALL
            .into_iter()
            .filter(|a| a.allows_negative())
            .collect();
        assert_eq!(allowed, vec![AggregationType::Sum, AggregationType::WeightedSum]);
    }

    fn out_of_order() -> Vec<UsageEvent> {
        vec![
            event("5", 30, "e3", Some("alice")),
            event("2.5", 10, "e1", Some("bob")),
            event("-1.25", 20, "e2", None),
            event("7", 40, "e0", Some("alice")),
            event("3", 5, "e9", Some("carol")),
        ]
    }

    #[test]
    fn sum_adds_values_including_negative_ones() {
        assert_eq!(used(AggregationType::Sum, &out_of_order()), d("16.25"));
        assert_eq!(used(AggregationType::Sum, &[]), Decimal::ZERO);
    }

    #[test]
    fn count_counts_events_and_ignores_values() {
        assert_eq!(used(AggregationType::Count, &out_of_order()), d("5"));
        let delta = Delta::from_events(AggregationType::Count, &out_of_order());
        assert_eq!(delta.sum, Decimal::ZERO);
        assert_eq!(delta.max, None);
        assert_eq!(delta.latest, None);
    }

    #[test]
    fn max_keeps_the_greatest_value_whatever_the_order() {
        assert_eq!(used(AggregationType::Max, &out_of_order()), d("7"));
        let mut reversed = out_of_order();
        reversed.reverse();
        assert_eq!(used(AggregationType::Max, &reversed), d("7"));
        assert_eq!(used(AggregationType::Max, &[]), Decimal::ZERO);
        assert_eq!(used(AggregationType::Max, &[event("-2", 1, "a", None)]), d("-2"));
    }

    #[test]
    fn unique_count_counts_distinct_values_and_every_event() {
        let delta = Delta::from_events(AggregationType::UniqueCount, &out_of_order());
        assert_eq!(delta.count, 5);
        let expected: BTreeSet<String> = ["alice", "bob", "carol"].map(str::to_owned).into();
        assert_eq!(delta.unique_values, expected);
        assert_eq!(used(AggregationType::UniqueCount, &out_of_order()), d("3"));
    }

    #[test]
    fn latest_picks_by_timestamp_not_arrival() {
        let delta = Delta::from_events(AggregationType::Latest, &out_of_order());
        assert_eq!(delta.latest, Some((at(40), "e0".to_owned(), d("7"))));
        let mut reversed = out_of_order();
        reversed.reverse();
        assert_eq!(used(AggregationType::Latest, &reversed), d("7"));
        assert_eq!(used(AggregationType::Latest, &[]), Decimal::ZERO);
    }

    #[test]
    fn latest_breaks_timestamp_ties_by_event_id() {
        let tied = [
            event("1", 100, "b", None),
            event("2", 100, "c", None),
            event("3", 100, "a", None),
            event("4", 99, "z", None),
        ];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let events: Vec<_> = order.iter().map(|&i| tied[i].clone()).collect();
            let delta = Delta::from_events(AggregationType::Latest, &events);
            assert_eq!(delta.latest, Some((at(100), "c".to_owned(), d("2"))), "{order:?}");
        }
    }

    #[test]
    fn latest_survives_an_older_batch_arriving_later() {
        let mut aggregate = Aggregate::default();
        let newer = Delta::from_events(AggregationType::Latest, &[event("9", 50, "n", None)]);
        let older = Delta::from_events(AggregationType::Latest, &[event("1", 10, "o", None)]);
        aggregate.apply(&newer, 0);
        aggregate.apply(&older, 0);
        assert_eq!(aggregate.used_till_now(AggregationType::Latest), d("9"));
        assert_eq!(aggregate.count, 2);
    }

    #[test]
    fn interleaved_keys_fold_into_one_delta_each() {
        // (execution, metric) keys with their aggregation, events interleaved in one batch.
        let batch = [
            (("x1", "api_calls"), AggregationType::Count, event("1", 3, "a", None)),
            (("x1", "storage_gb"), AggregationType::Latest, event("10", 5, "b", None)),
            (("x2", "api_calls"), AggregationType::Count, event("1", 1, "c", None)),
            (("x1", "storage_gb"), AggregationType::Latest, event("12", 2, "d", None)),
            (("x1", "api_calls"), AggregationType::Count, event("1", 4, "e", None)),
            (
                ("x1", "seats"),
                AggregationType::UniqueCount,
                event("0", 4, "f", Some("u1")),
            ),
            (
                ("x1", "seats"),
                AggregationType::UniqueCount,
                event("0", 6, "g", Some("u1")),
            ),
            (("x1", "storage_gb"), AggregationType::Latest, event("11", 9, "h", None)),
            (
                ("x1", "seats"),
                AggregationType::UniqueCount,
                event("0", 1, "i", Some("u2")),
            ),
        ];
        let mut deltas: BTreeMap<(&str, &str), (AggregationType, Delta)> = BTreeMap::new();
        for (key, aggregation, event) in &batch {
            deltas
                .entry(*key)
                .or_insert_with(|| (*aggregation, Delta::default()))
                .1
                .add(*aggregation, event);
        }
        assert_eq!(deltas.len(), 4);
        let quantity = |key: (&str, &str)| {
            let (aggregation, delta) = &deltas[&key];
            let mut aggregate = Aggregate::default();
            aggregate.apply(delta, delta.unique_values.len() as i64);
            aggregate.used_till_now(*aggregation)
        };
        assert_eq!(quantity(("x1", "api_calls")), d("2"));
        assert_eq!(quantity(("x2", "api_calls")), d("1"));
        assert_eq!(quantity(("x1", "storage_gb")), d("11"));
        assert_eq!(quantity(("x1", "seats")), d("2"));
        assert_eq!(deltas[&("x1", "seats")].1.count, 3);
    }

    #[test]
    fn apply_adds_only_new_distinct_values() {
        let mut aggregate = Aggregate::default();
        let first = Delta::from_events(
            AggregationType::UniqueCount,
            &[event("0", 1, "a", Some("u1")), event("0", 2, "b", Some("u2"))],
        );
        aggregate.apply(&first, 2);
        let second = Delta::from_events(
            AggregationType::UniqueCount,
            &[event("0", 3, "c", Some("u2")), event("0", 4, "d", Some("u3"))],
        );
        // The store already had u2, so only u3 is new.
        aggregate.apply(&second, 1);
        assert_eq!(aggregate.used_till_now(AggregationType::UniqueCount), d("3"));
        assert_eq!(aggregate.count, 4);
        aggregate.apply(&Delta::default(), -5);
        assert_eq!(aggregate.unique_count, 3);
    }

    #[test]
    fn sums_saturate_instead_of_panicking() {
        let huge = UsageEvent {
            value: Decimal::MAX,
            ..event("0", 1, "a", None)
        };
        let delta = Delta::from_events(AggregationType::Sum, [&huge, &huge]);
        assert_eq!(delta.sum, Decimal::MAX);
        let mut aggregate = Aggregate::default();
        aggregate.apply(&delta, 0);
        aggregate.apply(&delta, 0);
        assert_eq!(aggregate.used_till_now(AggregationType::Sum), Decimal::MAX);
    }

    fn aggregation() -> impl Strategy<Value = AggregationType> {
        prop::sample::select(AggregationType::ALL.to_vec())
    }

    // Few timestamps, ids and unique values, so ties and repeats are common.
    fn usage_event() -> impl Strategy<Value = UsageEvent> {
        (
            (-1_000_000_000i64..1_000_000_000, 0u32..=4),
            0i64..8,
            prop::sample::select(vec!["a", "b", "c", "d"]),
            prop::option::of(prop::sample::select(vec!["u1", "u2", "u3", "u4", "u5"])),
        )
            .prop_map(|((mantissa, scale), seconds, id, unique)| UsageEvent {
                value: Decimal::new(mantissa, scale),
                timestamp: at(seconds),
                event_id: id.to_owned(),
                unique_value: unique.map(str::to_owned),
                weighted: Decimal::new(mantissa, scale) * Decimal::from(seconds),
                fee: Decimal::new(mantissa, scale).abs(),
            })
    }

    fn events_and_split() -> impl Strategy<Value = (Vec<UsageEvent>, usize)> {
        prop::collection::vec(usage_event(), 0..40).prop_flat_map(|events| {
            let len = events.len();
            (Just(events), 0..=len)
        })
    }

    /// The quantity computed straight from the events, without deltas.
    fn naive(aggregation: AggregationType, events: &[UsageEvent]) -> Decimal {
        match aggregation {
            AggregationType::Sum => events.iter().map(|e| e.value).sum(),
            AggregationType::Count => Decimal::from(events.len()),
            AggregationType::Max => events.iter().map(|e| e.value).max().unwrap_or(Decimal::ZERO),
            AggregationType::UniqueCount => {
                let distinct: BTreeSet<_> = events.iter().filter_map(|e| e.unique_value.as_ref()).collect();
                Decimal::from(distinct.len())
            }
            AggregationType::WeightedSum => events.iter().map(|e| e.value).sum::<Decimal>(),
            AggregationType::Latest => events
                .iter()
                .max_by(|a, b| (a.timestamp, &a.event_id, a.value).cmp(&(b.timestamp, &b.event_id, b.value)))
                .map_or(Decimal::ZERO, |e| e.value),
        }
    }

    proptest! {
        #[test]
        fn split_fold_merge_equals_fold_all((events, split) in events_and_split(), aggregation in aggregation()) {
            let (left, right) = events.split_at(split);
            let mut merged = Delta::from_events(aggregation, left);
            merged.merge(Delta::from_events(aggregation, right));
            prop_assert_eq!(merged, Delta::from_events(aggregation, &events));
        }

        #[test]
        fn merge_is_commutative((events, split) in events_and_split(), aggregation in aggregation()) {
            let (left, right) = events.split_at(split);
            let a = Delta::from_events(aggregation, left);
            let b = Delta::from_events(aggregation, right);
            let mut ab = a.clone();
            ab.merge(b.clone());
            let mut ba = b;
            ba.merge(a);
            prop_assert_eq!(ab, ba);
        }

        #[test]
        fn merge_is_associative(
            a in prop::collection::vec(usage_event(), 0..10),
            b in prop::collection::vec(usage_event(), 0..10),
            c in prop::collection::vec(usage_event(), 0..10),
            aggregation in aggregation(),
        ) {
            let [da, db, dc] = [&a, &b, &c].map(|events| Delta::from_events(aggregation, events));
            let mut left = da.clone();
            left.merge(db.clone());
            left.merge(dc.clone());
            let mut inner = db;
            inner.merge(dc);
            let mut right = da;
            right.merge(inner);
            prop_assert_eq!(left, right);
        }

        #[test]
        fn folding_is_independent_of_arrival_order(
            (events, shuffled) in prop::collection::vec(usage_event(), 0..30)
                .prop_flat_map(|events| (Just(events.clone()), Just(events).prop_shuffle())),
            aggregation in aggregation(),
        ) {
            prop_assert_eq!(Delta::from_events(aggregation, &shuffled), Delta::from_events(aggregation, &events));
        }

        #[test]
        fn batches_applied_one_by_one_give_the_naive_quantity(
            (events, split) in events_and_split(),
            aggregation in aggregation(),
        ) {
            // The store's distinct values, which decide each batch's new_unique.
            let mut seen: BTreeSet<String> = BTreeSet::new();
            let mut aggregate = Aggregate::default();
            let (first, second) = events.split_at(split);
            for batch in [second, first] {
                let delta = Delta::from_events(aggregation, batch);
                let new_unique = delta.unique_values.iter().filter(|v| seen.insert((*v).clone())).count();
                aggregate.apply(&delta, new_unique as i64);
            }
            prop_assert_eq!(aggregate.used_till_now(aggregation), naive(aggregation, &events));
            prop_assert_eq!(aggregate.count, events.len() as i64);
        }
    }

    /// An increment of `value` at `seconds` into a period starting at 0.
    fn increment(value: &str, seconds: i64, id: &str) -> UsageEvent {
        let value = d(value);
        UsageEvent {
            weighted: weight(value, at(seconds), at(0)).expect("weight"),
            ..event(&value.to_string(), seconds, id, None)
        }
    }

    fn weighted(events: &[UsageEvent], window: Window) -> Decimal {
        let delta = Delta::from_events(AggregationType::WeightedSum, events);
        let mut aggregate = Aggregate::default();
        aggregate.apply(&delta, 0);
        aggregate
            .quantity(AggregationType::WeightedSum, window)
            .expect("quantity")
    }

    const DAY: i64 = 86_400;

    #[test]
    fn weighted_sum_is_the_time_weighted_average_of_the_level() {
        // A 31-day period; increments in the first day; 59400 / 2678400.
        let events = [
            increment("2", 0, "a"),
            increment("3", 3_600, "b"),
            increment("1", 5_400, "c"),
            increment("-4", 7_200, "d"),
            increment("-2", 14_400, "e"),
            increment("10", 18_000, "f"),
            increment("-10", 19_800, "g"),
        ];
        let window = Window {
            carried: Decimal::ZERO,
            seconds: Decimal::from(31 * DAY),
        };
        assert_eq!(weighted(&events, window), d("59400") / d("2678400"));
        let mut reversed = events.to_vec();
        reversed.reverse();
        assert_eq!(weighted(&reversed, window), d("59400") / d("2678400"));
    }

    #[test]
    fn weighted_sum_carries_the_level_into_the_next_period() {
        // Level 10 since before the period, +5 half way through a 10-second period.
        let window = Window {
            carried: d("10"),
            seconds: d("10"),
        };
        assert_eq!(weighted(&[increment("5", 5, "a")], window), d("12.5"));
        // No event at all: the carried level held the whole period.
        assert_eq!(weighted(&[], window), d("10"));
        // A period of no length: the last level.
        let instant = Window {
            carried: d("10"),
            seconds: Decimal::ZERO,
        };
        assert_eq!(weighted(&[increment("5", 5, "a")], instant), d("15"));
    }

    #[test]
    fn a_late_increment_weighs_from_the_period_start() {
        assert_eq!(weight(d("3"), at(-50), at(0)), Some(Decimal::ZERO));
        assert_eq!(weight(d("3"), at(2), at(0)), Some(d("6")));
        assert_eq!(
            weight(d("2"), at(0) + chrono::Duration::microseconds(1_500_000), at(0)),
            Some(d("3"))
        );
        assert_eq!(weight(Decimal::MAX, at(1_000), at(0)), None);
    }

    proptest! {
        #[test]
        fn weighted_sum_equals_the_integral_step_by_step(
            steps in prop::collection::vec((-1_000i64..1_000, 0i64..1_000), 0..20),
            carried in -1_000i64..1_000,
            split in 0usize..20,
        ) {
            let period = 1_000i64;
            let events: Vec<UsageEvent> = steps
                .iter()
                .enumerate()
                .map(|(i, (value, t))| increment(&value.to_string(), *t, &format!("e{i}")))
                .collect();
            // Integrate the level second by second, events sorted by time.
            let mut sorted = steps.clone();
            sorted.sort_by_key(|(_, t)| *t);
            let mut area = Decimal::ZERO;
            let mut level = Decimal::from(carried);
            let mut from = 0i64;
            for (value, t) in &sorted {
                area += level * Decimal::from(t - from);
                level += Decimal::from(*value);
                from = *t;
            }
            area += level * Decimal::from(period - from);
            let window = Window { carried: Decimal::from(carried), seconds: Decimal::from(period) };
            prop_assert_eq!(weighted(&events, window), area / Decimal::from(period));
            // Two batches in either order give the same.
            let split = split.min(events.len());
            let (left, right) = events.split_at(split);
            let mut aggregate = Aggregate::default();
            aggregate.apply(&Delta::from_events(AggregationType::WeightedSum, right), 0);
            aggregate.apply(&Delta::from_events(AggregationType::WeightedSum, left), 0);
            prop_assert_eq!(
                aggregate.quantity(AggregationType::WeightedSum, window),
                Some(area / Decimal::from(period))
            );
        }
    }
}
