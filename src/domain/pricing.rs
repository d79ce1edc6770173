//! Pricing of a metric's billable quantity.
//!
//! Contract:
//!
//! * Tiers are ordered by `up_to`, the inclusive upper bound of cumulative
//!   units; a tier covers the units above the previous tier's `up_to` (0 for
//!   the first tier) up to and including its own.
//! * FIXED: `units × unit_amount`.
//! * TIERED (graduated): each tier prices the units that fall inside it, plus
//!   its `flat_fee` when any unit falls inside it (the first tier's `flat_fee`
//!   also when there are no units).
//! * VOLUME: every unit at the price of the one tier that the total falls in,
//!   plus that tier's `flat_fee`.
//! * PACKAGE: `ceil((units - free_units) / package_size)` packages, none below
//!   zero, each at the single tier's `unit_amount`.
//! * GRADUATED_PERCENTAGE: TIERED with each tier's `rate` percent of a unit
//!   in place of `unit_amount`.
//! * PERCENTAGE: each event's own fee, `value × rate / 100 + fixed_amount`
//!   held within `per_transaction_min_amount` and `per_transaction_max_amount`,
//!   summed over the period, less what the free allowances give back (see
//!   [`Percentage`]); it prices events, not a quantity.
//! * Amounts are exact decimals until a bill rounds them.

// Money and quantities: every operation is checked; an overflow is an
// error value, never a panic or a silently wrong amount.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;
use std::str::FromStr;

use super::money::check_amount;
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

/// How a metric's quantity turns into an amount.
///
/// Serializes as the wire names `"FIXED"`, `"TIERED"`, `"VOLUME"`,
/// `"PACKAGE"`, `"PERCENTAGE"` and `"GRADUATED_PERCENTAGE"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum PricingType {
    /// Every unit at the single tier's `unit_amount`.
    Fixed,
    /// Graduated: each tier prices the units inside it, plus its flat fee.
    Tiered,
    /// Every unit at the price of the tier the total falls in, plus its flat fee.
    Volume,
    /// Units are sold in whole packages of `package_size`.
    Package,
    /// A percentage of each event's value plus a fixed fee per event.
    Percentage,
    /// Graduated: each tier takes `rate` percent of the units inside it, plus its flat fee.
    GraduatedPercentage,
}

impl PricingType {
    /// Every pricing type, in wire order.
    pub(crate) const ALL: [PricingType; 6] = [
        PricingType::Fixed,
        PricingType::Tiered,
        PricingType::Volume,
        PricingType::Package,
        PricingType::Percentage,
        PricingType::GraduatedPercentage,
    ];

    /// The wire name, identical to the serde representation.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PricingType::Fixed => "FIXED",
            PricingType::Tiered => "TIERED",
            PricingType::Volume => "VOLUME",
            PricingType::Package => "PACKAGE",
            PricingType::Percentage => "PERCENTAGE",
            PricingType::GraduatedPercentage => "GRADUATED_PERCENTAGE",
        }
    }

    /// Whether the price list is a list of tiers (`pricing_model`); only
    /// PERCENTAGE has none.
    pub(crate) fn has_tiers(self) -> bool {
        self != PricingType::Percentage
    }
}

impl fmt::Display for PricingType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PricingType {
    type Err = PricingError;

    /// Parses a wire name, ignoring ASCII case; the error names the allowed values.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PricingType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| PricingError::UnknownPricingType {
                value: s.chars().take(32).collect(),
            })
    }
}

/// Inclusive upper bound of a tier, in cumulative units.
///
/// Serializes a finite bound as a JSON number and the unbounded one as
/// `"INFINITY"`. Deserializes from a number, a numeric string, the string
/// `"INFINITY"` in any case, or `null` (unbounded); a missing `up_to` in a
/// [`Tier`] is unbounded too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpTo {
    /// The tier ends at this many cumulative units, inclusive.
    Finite(Decimal),
    /// The tier has no upper bound.
    Infinity,
}

impl UpTo {
    /// The finite bound, or `None` when unbounded.
    pub(crate) fn finite(self) -> Option<Decimal> {
        match self {
            UpTo::Finite(bound) => Some(bound),
            UpTo::Infinity => None,
        }
    }

    /// Whether a cumulative quantity of `units` is within this bound (inclusive).
    pub(crate) fn covers(self, units: Decimal) -> bool {
        match self {
            UpTo::Finite(bound) => units <= bound,
            UpTo::Infinity => true,
        }
    }
}

impl Serialize for UpTo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // Same number-not-string form as every other decimal on the wire.
            UpTo::Finite(bound) => rust_decimal::serde::arbitrary_precision::serialize(bound, serializer),
            UpTo::Infinity => serializer.serialize_str(INFINITY),
        }
    }
}

impl<'de> Deserialize<'de> for UpTo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UpToVisitor)
    }
}

const INFINITY: &str = "INFINITY";

struct UpToVisitor;

impl<'de> Visitor<'de> for UpToVisitor {
    type Value = UpTo;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a numeric string, \"INFINITY\" or null")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<UpTo, E> {
        if value.eq_ignore_ascii_case(INFINITY) {
            return Ok(UpTo::Infinity);
        }
        parse_decimal(value)
            .map(UpTo::Finite)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(value), &self))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<UpTo, E> {
        Ok(UpTo::Finite(Decimal::from(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<UpTo, E> {
        Ok(UpTo::Finite(Decimal::from(value)))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<UpTo, E> {
        Decimal::try_from_i128_with_scale(value, 0)
            .map(UpTo::Finite)
            .map_err(|_| E::invalid_value(de::Unexpected::Other("integer out of range"), &self))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<UpTo, E> {
        i128::try_from(value)
            .map_err(|_| E::invalid_value(de::Unexpected::Other("integer out of range"), &self))
            .and_then(|value| self.visit_i128(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<UpTo, E> {
        // serde_json::Value passes a number as f64 only when the f64's shortest
        // form is the original text; rust_decimal rebuilds those digits exactly.
        rust_decimal::serde::arbitrary_precision::deserialize(de::value::F64Deserializer::<E>::new(value))
            .map(UpTo::Finite)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UpTo, A::Error> {
        // serde_json's arbitrary_precision hands numbers over as a one-entry
        // map; rust_decimal knows that token and reads the digits exactly.
        rust_decimal::serde::arbitrary_precision::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(UpTo::Finite)
    }

    fn visit_unit<E: de::Error>(self) -> Result<UpTo, E> {
        Ok(UpTo::Infinity)
    }

    fn visit_none<E: de::Error>(self) -> Result<UpTo, E> {
        Ok(UpTo::Infinity)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<UpTo, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Exact decimal from plain or scientific notation, as rust_decimal's own
/// deserializer reads strings.
fn parse_decimal(value: &str) -> Option<Decimal> {
    Decimal::from_str(value)
        .or_else(|_| Decimal::from_scientific(value))
        .ok()
}

fn infinity() -> UpTo {
    UpTo::Infinity
}

/// A missing or `null` amount means zero.
fn decimal_or_zero<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    rust_decimal::serde::arbitrary_precision_option::deserialize(deserializer)
        .map(|value| value.unwrap_or(Decimal::ZERO))
}

/// One entry of the wire's `pricing_model`.
///
/// Amounts deserialize exactly from JSON numbers or numeric strings and
/// serialize as JSON numbers; `up_to` defaults to [`UpTo::Infinity`] and
/// `flat_fee` to zero when missing or `null`. A tier has `unit_amount`, or
/// `rate` for GRADUATED_PERCENTAGE; validation says which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tier {
    /// Price of one unit inside this tier (of one package for PACKAGE).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    pub unit_amount: Option<Decimal>,
    /// GRADUATED_PERCENTAGE: percent of each unit inside this tier.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    pub rate: Option<Decimal>,
    /// Inclusive upper bound of cumulative units covered by this tier.
    #[serde(default = "infinity")]
    pub up_to: UpTo,
    /// Fee charged once when the tier is used (TIERED and VOLUME only).
    #[serde(
        default,
        serialize_with = "rust_decimal::serde::arbitrary_precision::serialize",
        deserialize_with = "decimal_or_zero"
    )]
    pub flat_fee: Decimal,
}

impl Tier {
    /// A tier priced per unit.
    #[cfg(test)]
    pub(crate) fn unit(unit_amount: Decimal, up_to: UpTo, flat_fee: Decimal) -> Tier {
        Tier {
            unit_amount: Some(unit_amount),
            rate: None,
            up_to,
            flat_fee,
        }
    }

    /// The price of one unit inside this tier: `unit_amount`, or `rate`
    /// percent of a unit; `None` only when `rate / 100` cannot be held.
    fn per_unit(&self) -> Option<Decimal> {
        match (self.unit_amount, self.rate) {
            (Some(amount), _) => Some(amount),
            (None, Some(rate)) => percent(Decimal::ONE, rate),
            (None, None) => Some(Decimal::ZERO),
        }
    }
}

/// `rate` percent of `value`.
fn percent(value: Decimal, rate: Decimal) -> Option<Decimal> {
    value.checked_mul(rate)?.checked_div(Decimal::ONE_HUNDRED)
}

/// Most events a `free_units_per_events` allowance may give away: the
/// allowance is applied by reading those first events of a period.
pub(crate) const MAX_FREE_EVENTS: u32 = 10_000;

/// The metric fields of PERCENTAGE pricing as they arrive, each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct PercentageTerms {
    /// `rate`: percent of each event's value.
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    pub rate: Option<Decimal>,
    /// `fixed_amount`: added to each event's fee.
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    pub fixed_amount: Option<Decimal>,
    /// `free_units_per_events`: the first N events of a period are free.
    #[serde(default)]
    pub free_units_per_events: Option<u32>,
    /// `free_units_per_total_aggregation`: the first units of a period are free.
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    pub free_units_per_total_aggregation: Option<Decimal>,
    /// `per_transaction_min_amount`: the least one event's fee may be.
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    pub per_transaction_min_amount: Option<Decimal>,
    /// `per_transaction_max_amount`: the most one event's fee may be.
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    pub per_transaction_max_amount: Option<Decimal>,
}

impl PercentageTerms {
    /// The wire names of the fields that are set.
    fn present(&self) -> impl Iterator<Item = &'static str> {
        [
            ("rate", self.rate.is_some()),
            ("fixed_amount", self.fixed_amount.is_some()),
            ("free_units_per_events", self.free_units_per_events.is_some()),
            (
                "free_units_per_total_aggregation",
                self.free_units_per_total_aggregation.is_some(),
            ),
            ("per_transaction_min_amount", self.per_transaction_min_amount.is_some()),
            ("per_transaction_max_amount", self.per_transaction_max_amount.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
    }
}

/// PERCENTAGE pricing, validated.
///
/// Each event has its own fee: `value × rate / 100 + fixed_amount`, raised to
/// `per_transaction_min_amount` and lowered to `per_transaction_max_amount`
/// when set ([`Percentage::event_fee`]). A period's amount is the sum of its
/// events' fees less what the free allowances give back, taking events in
/// `(timestamp, event_id)` order ([`Percentage::amount`]):
///
/// * `free_units_per_events` = N alone: the first N events cost nothing.
/// * `free_units_per_total_aggregation` = M alone: the first M units cost
///   nothing; every event still pays its `fixed_amount` (within the bounds),
///   and the event in which the M units run out pays the rate on its units
///   beyond them.
/// * both: an event is free while it is among the first N and the units so
///   far stay within M; whichever allowance runs out first ends it, and the
///   event in which the units run out pays the rate on its units beyond M
///   plus its `fixed_amount`.
///
/// A free event pays nothing, not even the minimum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Percentage {
    /// Percent of each event's value.
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub rate: Decimal,
    /// Added to each event's fee.
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub fixed_amount: Decimal,
    /// The first N events of a period are free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_units_per_events: Option<u32>,
    /// The first units of a period are free.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    pub free_units_per_total_aggregation: Option<Decimal>,
    /// The least one event's fee may be.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    pub per_transaction_min_amount: Option<Decimal>,
    /// The most one event's fee may be.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    pub per_transaction_max_amount: Option<Decimal>,
}

impl Percentage {
    /// Holds a fee within the per-transaction bounds.
    fn bounded(&self, fee: Decimal) -> Decimal {
        let fee = self.per_transaction_min_amount.map_or(fee, |min| fee.max(min));
        self.per_transaction_max_amount.map_or(fee, |max| fee.min(max))
    }

    /// The fee of an event of `value`, alone: `value × rate / 100 +
    /// fixed_amount` within the bounds; `None` when it cannot be held.
    pub(crate) fn event_fee(&self, value: Decimal) -> Option<Decimal> {
        Some(self.bounded(percent(value, self.rate)?.checked_add(self.fixed_amount)?))
    }

    /// Whether a free allowance is set, so that the period's first events
    /// must be read to price it.
    pub(crate) fn has_allowance(&self) -> bool {
        self.free_events().is_some() || self.free_units().is_some()
    }

    fn free_events(&self) -> Option<u32> {
        self.free_units_per_events.filter(|n| *n > 0)
    }

    fn free_units(&self) -> Option<Decimal> {
        self.free_units_per_total_aggregation.filter(|m| *m > Decimal::ZERO)
    }

    /// How many of a period's first events the allowance can reach at most,
    /// when that is bounded (a free-events allowance is set).
    pub(crate) fn head_limit(&self) -> Option<u32> {
        self.free_events()
    }

    /// What the allowance gives back from the first events of a period,
    /// `head` (their values in `(timestamp, event_id)` order), and whether
    /// it ran out within them (`false`: more events may be needed).
    pub(crate) fn give_back(&self, head: &[Decimal]) -> Option<(Decimal, bool)> {
        let (events, units) = (self.free_events(), self.free_units());
        if events.is_none() && units.is_none() {
            return Some((Decimal::ZERO, true));
        }
        let mut back = Decimal::ZERO;
        let mut running = Decimal::ZERO;
        for (index, value) in head.iter().enumerate() {
            if events.is_some_and(|n| u32::try_from(index).map_or(true, |i| i >= n)) {
                return Some((back, true));
            }
            let full = self.event_fee(*value)?;
            let before = running;
            running = running.checked_add(*value)?;
            match units {
                Some(m) if running > m => {
                    // The units run out inside this event: the rest of it pays.
                    let free = m.checked_sub(before)?.max(Decimal::ZERO);
                    let charged = self.event_fee(value.checked_sub(free)?)?;
                    back = back.checked_add(full.checked_sub(charged)?)?;
                    return Some((back, true));
                }
                _ if events.is_some() => back = back.checked_add(full)?,
                // Free units alone: the units cost nothing, the fixed fee stays.
                _ => back = back.checked_add(full.checked_sub(self.bounded(self.fixed_amount))?)?,
            }
        }
        let done = events.is_some_and(|n| u32::try_from(head.len()).is_ok_and(|len| len >= n));
        Some((back, done))
    }

    /// A period's amount: `fees` (the sum of its events' own fees) less what
    /// the allowance gives back of `head`, its first events in order
    /// (enough of them that [`Percentage::give_back`] ran out, or all).
    pub(crate) fn amount(&self, fees: Decimal, head: &[Decimal]) -> Option<Decimal> {
        let (back, _) = self.give_back(head)?;
        fees.checked_sub(back)
    }
}

/// A metric's validated price list.
///
/// Serializes with the wire field names (`pricing_type`, `pricing_model`,
/// `package_size`, `free_units`); deserializing validates, so a deserialized
/// `Pricing` always satisfies [`Pricing::validate`] and the error message is
/// the [`PricingError`] sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Pricing {
    /// Which formula applies.
    pub pricing_type: PricingType,
    /// The wire's `pricing_model`, ordered by `up_to`.
    #[serde(rename = "pricing_model")]
    pub tiers: Vec<Tier>,
    /// Units per package; required and positive for PACKAGE, ignored otherwise.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    pub package_size: Option<Decimal>,
    /// Units given away before anything is charged, for every pricing type
    /// but PERCENTAGE (which has its own allowances).
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub free_units: Decimal,
    /// PERCENTAGE: its terms, flattened into the metric's fields.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
}

#[derive(Deserialize)]
struct PricingWire {
    pricing_type: PricingType,
    #[serde(default)]
    pricing_model: Vec<Tier>,
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    package_size: Option<Decimal>,
    #[serde(default, deserialize_with = "decimal_or_zero")]
    free_units: Decimal,
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    rate: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    fixed_amount: Option<Decimal>,
    #[serde(default)]
    free_units_per_events: Option<u32>,
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    free_units_per_total_aggregation: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    per_transaction_min_amount: Option<Decimal>,
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    per_transaction_max_amount: Option<Decimal>,
}

impl<'de> Deserialize<'de> for Pricing {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = PricingWire::deserialize(deserializer)?;
        let terms = PercentageTerms {
            rate: wire.rate,
            fixed_amount: wire.fixed_amount,
            free_units_per_events: wire.free_units_per_events,
            free_units_per_total_aggregation: wire.free_units_per_total_aggregation,
            per_transaction_min_amount: wire.per_transaction_min_amount,
            per_transaction_max_amount: wire.per_transaction_max_amount,
        };
        Pricing::build(
            wire.pricing_type,
            wire.pricing_model,
            wire.package_size,
            wire.free_units,
            terms,
        )
        .map_err(de::Error::custom)
    }
}

/// What a period of one metric has, for pricing it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Metered<'a> {
    /// The metric quantity (`used_till_now`).
    pub units: Decimal,
    /// PERCENTAGE: the sum of the period's events' own fees.
    pub fees: Decimal,
    /// PERCENTAGE with an allowance: the period's first event values in
    /// `(timestamp, event_id)` order, as many as the allowance reaches.
    pub head: &'a [Decimal],
}

/// Why a price list was rejected.
///
/// Display is one sentence naming the field as the wire names it, e.g.
/// `pricing_model[1].up_to must be greater than pricing_model[0].up_to`;
/// [`PricingError::field`] returns that field path alone.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum PricingError {
    /// `pricing_type` is not one of the four wire names.
    #[error(
        "pricing_type must be one of FIXED, TIERED, VOLUME, PACKAGE, PERCENTAGE, GRADUATED_PERCENTAGE, got {value:?}"
    )]
    UnknownPricingType {
        /// The rejected text.
        value: String,
    },
    /// `pricing_model` is empty.
    #[error("pricing_model must contain at least one tier")]
    NoTiers,
    /// FIXED or PACKAGE with other than one tier.
    #[error("pricing_model must contain exactly one tier for {pricing_type} pricing, got {count}")]
    NotSingleTier {
        /// The pricing type that takes one tier.
        pricing_type: PricingType,
        /// How many tiers were given.
        count: usize,
    },
    /// A tier's `unit_amount` is below zero.
    #[error("pricing_model[{index}].unit_amount must not be negative")]
    NegativeUnitAmount {
        /// Position of the tier in `pricing_model`.
        index: usize,
    },
    /// A tier's `flat_fee` is below zero.
    #[error("pricing_model[{index}].flat_fee must not be negative")]
    NegativeFlatFee {
        /// Position of the tier in `pricing_model`.
        index: usize,
    },
    /// A finite `up_to` is zero or below.
    #[error("pricing_model[{index}].up_to must be greater than 0")]
    NonPositiveUpTo {
        /// Position of the tier in `pricing_model`.
        index: usize,
    },
    /// A finite `up_to` does not exceed the previous tier's.
    #[error("pricing_model[{index}].up_to must be greater than pricing_model[{previous}].up_to", previous = .index.saturating_sub(1))]
    UpToNotIncreasing {
        /// Position of the tier in `pricing_model` (always at least 1).
        index: usize,
    },
    /// `INFINITY` on a tier that is not the last.
    #[error("pricing_model[{index}].up_to may be INFINITY only on the last tier")]
    InfinityBeforeLast {
        /// Position of the tier in `pricing_model`.
        index: usize,
    },
    /// TIERED or VOLUME whose last tier is bounded.
    #[error("pricing_model[{index}].up_to must be INFINITY on the last tier of {pricing_type} pricing")]
    LastTierBounded {
        /// Position of the last tier in `pricing_model`.
        index: usize,
        /// The pricing type that needs an unbounded last tier.
        pricing_type: PricingType,
    },
    /// PACKAGE without `package_size`.
    #[error("package_size is required for PACKAGE pricing")]
    MissingPackageSize,
    /// `package_size` is zero or below.
    #[error("package_size must be greater than 0")]
    NonPositivePackageSize,
    /// `free_units` is below zero.
    #[error("free_units must not be negative")]
    NegativeFreeUnits,
    /// An amount outside the wire bounds (|x| < 10^15, 12 decimal places).
    #[error("{field} must be below 10^15 in absolute value with at most 12 decimal places")]
    OutOfBounds {
        /// The field's wire path.
        field: String,
    },
    /// A field this pricing type has no use for.
    #[error("{field} is not used by {pricing_type} pricing")]
    NotUsed {
        /// The field's wire path.
        field: String,
        /// The pricing type given.
        pricing_type: PricingType,
    },
    /// A field this pricing type needs.
    #[error("{field} is required for {pricing_type} pricing")]
    Required {
        /// The field's wire path.
        field: String,
        /// The pricing type given.
        pricing_type: PricingType,
    },
    /// A rate, fee or allowance below zero.
    #[error("{field} must not be negative")]
    Negative {
        /// The field's wire path.
        field: String,
    },
    /// `per_transaction_min_amount` above `per_transaction_max_amount`.
    #[error("per_transaction_min_amount must not be greater than per_transaction_max_amount")]
    MinAboveMax,
    /// `free_units_per_events` above [`MAX_FREE_EVENTS`].
    #[error("free_units_per_events must be at most {MAX_FREE_EVENTS}")]
    TooManyFreeEvents,
}

impl PricingError {
    /// The offending field's path as the wire names it, e.g. `pricing_model[1].up_to`.
    #[cfg(test)]
    pub(crate) fn field(&self) -> String {
        match self {
            PricingError::UnknownPricingType { .. } => "pricing_type".to_owned(),
            PricingError::OutOfBounds { field } => field.clone(),
            PricingError::NoTiers | PricingError::NotSingleTier { .. } => "pricing_model".to_owned(),
            PricingError::NegativeUnitAmount { index } => {
                format!("pricing_model[{index}].unit_amount")
            }
            PricingError::NegativeFlatFee { index } => format!("pricing_model[{index}].flat_fee"),
            PricingError::NonPositiveUpTo { index }
            | PricingError::UpToNotIncreasing { index }
            | PricingError::InfinityBeforeLast { index }
            | PricingError::LastTierBounded { index, .. } => {
                format!("pricing_model[{index}].up_to")
            }
            PricingError::MissingPackageSize | PricingError::NonPositivePackageSize => "package_size".to_owned(),
            PricingError::NegativeFreeUnits => "free_units".to_owned(),
            PricingError::NotUsed { field, .. }
            | PricingError::Required { field, .. }
            | PricingError::Negative { field } => field.clone(),
            PricingError::MinAboveMax => "per_transaction_min_amount".to_owned(),
            PricingError::TooManyFreeEvents => "free_units_per_events".to_owned(),
        }
    }
}

impl Pricing {
    /// Builds a price list, returning the first rule it breaks (see [`Pricing::validate`]).
    #[cfg(test)]
    pub(crate) fn new(
        pricing_type: PricingType,
        tiers: Vec<Tier>,
        package_size: Option<Decimal>,
        free_units: Decimal,
    ) -> Result<Pricing, PricingError> {
        Pricing::build(
            pricing_type,
            tiers,
            package_size,
            free_units,
            PercentageTerms::default(),
        )
    }

    /// [`Pricing::new`] with the metric fields of PERCENTAGE pricing, which
    /// are refused on every other pricing type.
    pub(crate) fn build(
        pricing_type: PricingType,
        tiers: Vec<Tier>,
        package_size: Option<Decimal>,
        free_units: Decimal,
        terms: PercentageTerms,
    ) -> Result<Pricing, PricingError> {
        let percentage = if pricing_type == PricingType::Percentage {
            Some(percentage_of(terms)?)
        } else {
            if let Some(field) = terms.present().next() {
                return Err(PricingError::NotUsed {
                    field: field.to_owned(),
                    pricing_type,
                });
            }
            None
        };
        let pricing = Pricing {
            pricing_type,
            tiers,
            package_size,
            free_units,
            percentage,
        };
        pricing.validate()?;
        Ok(pricing)
    }

    /// Checks the rules, reporting the first broken one in wire order:
    /// at least one tier; FIXED and PACKAGE exactly one; per tier
    /// `unit_amount >= 0`, `flat_fee >= 0`, finite `up_to > 0` and greater
    /// than the previous tier's, `INFINITY` only on the last tier, and for
    /// TIERED and VOLUME the last tier `INFINITY`; PACKAGE needs
    /// `package_size > 0`; `free_units >= 0`.
    ///
    /// For FIXED and PACKAGE the single tier's `up_to` and `flat_fee` are
    /// accepted but take no part in the price, and `package_size` is not
    /// checked for types other than PACKAGE.
    pub(crate) fn validate(&self) -> Result<(), PricingError> {
        if !self.pricing_type.has_tiers() {
            if !self.tiers.is_empty() {
                return Err(self.not_used("pricing_model"));
            }
            if !self.free_units.is_zero() {
                return Err(self.not_used("free_units"));
            }
            return match &self.percentage {
                Some(p) => check_percentage(p),
                None => Err(PricingError::Required {
                    field: "rate".to_owned(),
                    pricing_type: self.pricing_type,
                }),
            };
        }
        if self.tiers.is_empty() {
            return Err(PricingError::NoTiers);
        }
        let single = matches!(self.pricing_type, PricingType::Fixed | PricingType::Package);
        if single && self.tiers.len() != 1 {
            return Err(PricingError::NotSingleTier {
                pricing_type: self.pricing_type,
                count: self.tiers.len(),
            });
        }
        let last = self.tiers.len().saturating_sub(1);
        let mut previous: Option<Decimal> = None;
        let bounded = |value: Decimal, field: String| match check_amount(value) {
            Ok(_) => Ok(()),
            Err(_) => Err(PricingError::OutOfBounds { field }),
        };
        let by_rate = self.pricing_type == PricingType::GraduatedPercentage;
        for (index, tier) in self.tiers.iter().enumerate() {
            let (needed, unused, value) = if by_rate {
                ("rate", tier.unit_amount.map(|_| "unit_amount"), tier.rate)
            } else {
                ("unit_amount", tier.rate.map(|_| "rate"), tier.unit_amount)
            };
            if let Some(unused) = unused {
                return Err(self.not_used(&format!("pricing_model[{index}].{unused}")));
            }
            let Some(value) = value else {
                return Err(PricingError::Required {
                    field: format!("pricing_model[{index}].{needed}"),
                    pricing_type: self.pricing_type,
                });
            };
            bounded(value, format!("pricing_model[{index}].{needed}"))?;
            bounded(tier.flat_fee, format!("pricing_model[{index}].flat_fee"))?;
            if let UpTo::Finite(bound) = tier.up_to {
                bounded(bound, format!("pricing_model[{index}].up_to"))?;
            }
            if value < Decimal::ZERO {
                if by_rate {
                    return Err(PricingError::Negative {
                        field: format!("pricing_model[{index}].rate"),
                    });
                }
                return Err(PricingError::NegativeUnitAmount { index });
            }
            if tier.flat_fee < Decimal::ZERO {
                return Err(PricingError::NegativeFlatFee { index });
            }
            match tier.up_to {
                UpTo::Finite(bound) => {
                    if bound <= Decimal::ZERO {
                        return Err(PricingError::NonPositiveUpTo { index });
                    }
                    if previous.is_some_and(|p| bound <= p) {
                        return Err(PricingError::UpToNotIncreasing { index });
                    }
                    if index == last && !single {
                        return Err(PricingError::LastTierBounded {
                            index,
                            pricing_type: self.pricing_type,
                        });
                    }
                    previous = Some(bound);
                }
                UpTo::Infinity if index != last => {
                    return Err(PricingError::InfinityBeforeLast { index });
                }
                UpTo::Infinity => {}
            }
        }
        if self.pricing_type == PricingType::Package {
            match self.package_size {
                None => return Err(PricingError::MissingPackageSize),
                Some(size) if size <= Decimal::ZERO => {
                    return Err(PricingError::NonPositivePackageSize);
                }
                Some(_) => {}
            }
        }
        if self.free_units < Decimal::ZERO {
            return Err(PricingError::NegativeFreeUnits);
        }
        bounded(self.free_units, "free_units".to_owned())?;
        if let Some(size) = self.package_size {
            bounded(size, "package_size".to_owned())?;
        }
        Ok(())
    }

    /// Units that are charged for: `max(units - free_units, 0)`.
    ///
    /// Free units are consumed first for every pricing type, and a negative
    /// quantity (a SUM metric can go negative) is charged as zero units.
    pub(crate) fn billable_units(&self, units: Decimal) -> Decimal {
        units
            .checked_sub(self.free_units)
            .unwrap_or(Decimal::MIN)
            .max(Decimal::ZERO)
    }

    /// The exact, unrounded amount for a metric quantity of `units`.
    ///
    /// Prices the [`Pricing::billable_units`], so negative quantities and
    /// quantities within `free_units` price as zero units. With zero billable
    /// units, TIERED still charges the first tier's `flat_fee` and VOLUME
    /// falls in the first tier (its `flat_fee`, no unit charge); FIXED and
    /// PACKAGE charge nothing. A VOLUME price is not monotone: crossing into
    /// a cheaper tier lowers the total.
    ///
    /// Never rounds and never panics. Only an amount beyond `Decimal::MAX`
    /// (about 7.9e28) cannot be represented; it saturates at `Decimal::MAX`
    /// (tests only: the worker calls [`Pricing::checked_price`], which
    /// reports it as `None`). Meant for
    /// a validated `Pricing`; on an unvalidated one the last tier is treated
    /// as unbounded, an empty tier list prices as zero and a missing or
    /// non-positive `package_size` counts as 1.
    #[cfg(test)]
    pub(crate) fn price(&self, units: Decimal) -> Decimal {
        self.checked_price(units).unwrap_or(Decimal::MAX)
    }

    /// [`Pricing::price`], or `None` when the amount exceeds `Decimal`'s range.
    /// PERCENTAGE prices events, not a quantity: here it prices none (see
    /// [`Pricing::checked_amount`]).
    #[cfg(test)]
    pub(crate) fn checked_price(&self, units: Decimal) -> Option<Decimal> {
        self.checked_amount(&Metered {
            units,
            ..Metered::default()
        })
    }

    /// The exact amount of a period: PERCENTAGE from its events' fees and
    /// first events, every other type from its quantity ([`Pricing::price`]);
    /// `None` when the amount exceeds `Decimal`'s range.
    pub(crate) fn checked_amount(&self, metered: &Metered<'_>) -> Option<Decimal> {
        if let Some(percentage) = &self.percentage {
            return percentage.amount(metered.fees, metered.head);
        }
        let billable = self.billable_units(metered.units);
        match self.pricing_type {
            PricingType::Fixed => self.fixed(billable),
            PricingType::Tiered | PricingType::GraduatedPercentage => self.graduated(billable),
            PricingType::Volume => self.volume(billable),
            PricingType::Package => self.package(billable),
            PricingType::Percentage => Some(Decimal::ZERO),
        }
    }

    fn not_used(&self, field: &str) -> PricingError {
        PricingError::NotUsed {
            field: field.to_owned(),
            pricing_type: self.pricing_type,
        }
    }

    fn fixed(&self, billable: Decimal) -> Option<Decimal> {
        match self.tiers.first() {
            Some(tier) => billable.checked_mul(tier.per_unit()?),
            None => Some(Decimal::ZERO),
        }
    }

    fn graduated(&self, billable: Decimal) -> Option<Decimal> {
        let last = self.tiers.len().saturating_sub(1);
        let mut total = Decimal::ZERO;
        let mut lower = Decimal::ZERO;
        for (index, tier) in self.tiers.iter().enumerate() {
            // The last tier takes whatever is left, whatever its up_to says.
            let upper = if index == last { None } else { tier.up_to.finite() };
            let top = upper.map_or(billable, |bound| billable.min(bound));
            let inside = top.checked_sub(lower)?.max(Decimal::ZERO);
            if index == 0 || !inside.is_zero() {
                let charge = inside.checked_mul(tier.per_unit()?)?.checked_add(tier.flat_fee)?;
                total = total.checked_add(charge)?;
            }
            match upper {
                Some(bound) if billable > bound => lower = bound,
                _ => break,
            }
        }
        Some(total)
    }

    fn volume(&self, billable: Decimal) -> Option<Decimal> {
        let tier = self
            .tiers
            .iter()
            .find(|tier| tier.up_to.covers(billable))
            .or_else(|| self.tiers.last());
        match tier {
            Some(tier) => billable.checked_mul(tier.per_unit()?)?.checked_add(tier.flat_fee),
            None => Some(Decimal::ZERO),
        }
    }

    fn package(&self, billable: Decimal) -> Option<Decimal> {
        let Some(tier) = self.tiers.first() else {
            return Some(Decimal::ZERO);
        };
        let size = self
            .package_size
            .filter(|size| *size > Decimal::ZERO)
            .unwrap_or(Decimal::ONE);
        // Remainder first so the division is of an exact multiple: no rounding.
        let remainder = billable.checked_rem(size)?;
        let whole = billable.checked_sub(remainder)?.checked_div(size)?;
        let packages = if remainder.is_zero() {
            whole
        } else {
            whole.checked_add(Decimal::ONE)?
        };
        packages.checked_mul(tier.per_unit()?)
    }
}

/// Validated PERCENTAGE terms from the wire's fields.
fn percentage_of(terms: PercentageTerms) -> Result<Percentage, PricingError> {
    let percentage = Percentage {
        rate: terms.rate.ok_or_else(|| PricingError::Required {
            field: "rate".to_owned(),
            pricing_type: PricingType::Percentage,
        })?,
        fixed_amount: terms.fixed_amount.unwrap_or(Decimal::ZERO),
        free_units_per_events: terms.free_units_per_events,
        free_units_per_total_aggregation: terms.free_units_per_total_aggregation,
        per_transaction_min_amount: terms.per_transaction_min_amount,
        per_transaction_max_amount: terms.per_transaction_max_amount,
    };
    check_percentage(&percentage)?;
    Ok(percentage)
}

/// Every PERCENTAGE amount within the wire bounds and not negative; the
/// minimum not above the maximum; the free events bounded.
fn check_percentage(p: &Percentage) -> Result<(), PricingError> {
    let amounts = [
        ("rate", Some(p.rate)),
        ("fixed_amount", Some(p.fixed_amount)),
        ("free_units_per_total_aggregation", p.free_units_per_total_aggregation),
        ("per_transaction_min_amount", p.per_transaction_min_amount),
        ("per_transaction_max_amount", p.per_transaction_max_amount),
    ];
    for (field, value) in amounts {
        let Some(value) = value else { continue };
        if check_amount(value).is_err() {
            return Err(PricingError::OutOfBounds {
                field: field.to_owned(),
            });
        }
        if value < Decimal::ZERO {
            return Err(PricingError::Negative {
                field: field.to_owned(),
            });
        }
    }
    if let (Some(min), Some(max)) = (p.per_transaction_min_amount, p.per_transaction_max_amount)
        && min > max
    {
        return Err(PricingError::MinAboveMax);
    }
    if p.free_units_per_events.is_some_and(|n| n > MAX_FREE_EVENTS) {
        return Err(PricingError::TooManyFreeEvents);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).expect("test decimal literal")
    }

    fn tier(unit_amount: &str, up_to: Option<&str>, flat_fee: &str) -> Tier {
        Tier::unit(
            d(unit_amount),
            up_to.map_or(UpTo::Infinity, |bound| UpTo::Finite(d(bound))),
            d(flat_fee),
        )
    }

    fn graduated_tiers() -> Vec<Tier> {
        vec![
            tier("1.00", Some("100"), "5"),
            tier("0.50", Some("1000"), "0"),
            tier("0.10", None, "0"),
        ]
    }

    fn pricing(pricing_type: PricingType, tiers: Vec<Tier>, package_size: Option<&str>, free: &str) -> Pricing {
        Pricing::new(pricing_type, tiers, package_size.map(d), d(free)).expect("valid test pricing")
    }

    fn check_table(pricing: &Pricing, table: &[(&str, &str)]) {
        for (units, expected) in table {
            assert_eq!(
                pricing.price(d(units)),
                d(expected),
                "{} price of {units} units",
                pricing.pricing_type
            );
        }
    }

    #[test]
    fn fixed_prices_every_unit_exactly() {
        let fixed = pricing(PricingType::Fixed, vec![tier("0.0001", None, "0")], None, "0");
        check_table(
            &fixed,
            &[
                ("0", "0"),
                ("1", "0.0001"),
                ("3", "0.0003"),
                ("10000", "1"),
                ("123456789", "12345.6789"),
                ("0.5", "0.00005"),
                ("-7", "0"),
            ],
        );
        // Float arithmetic would give 0.30000000000000004 here.
        let tenth = pricing(PricingType::Fixed, vec![tier("0.1", None, "0")], None, "0");
        assert_eq!(tenth.price(d("3")), d("0.3"));
    }

    #[test]
    fn fixed_consumes_free_units_first() {
        let fixed = pricing(PricingType::Fixed, vec![tier("2", None, "0")], None, "10");
        check_table(&fixed, &[("0", "0"), ("10", "0"), ("11", "2"), ("15.5", "11")]);
    }

    #[test]
    fn tiered_is_graduated() {
        let tiered = pricing(PricingType::Tiered, graduated_tiers(), None, "0");
        check_table(
            &tiered,
            &[
                ("0", "5"),
                ("1", "6"),
                ("100", "105"),
                ("101", "105.50"),
                ("1000", "555"),
                ("1500", "605"),
                ("-3", "5"),
                ("100.5", "105.25"),
            ],
        );
    }

    #[test]
    fn tiered_flat_fee_applies_once_a_unit_enters_the_tier() {
        let tiers = vec![
            tier("1", Some("10"), "0"),
            tier("0", Some("20"), "7"),
            tier("2", None, "3"),
        ];
        let tiered = pricing(PricingType::Tiered, tiers, None, "0");
        check_table(
            &tiered,
            &[("0", "0"), ("10", "10"), ("10.1", "17"), ("20", "17"), ("21", "22")],
        );
    }

    #[test]
    fn volume_prices_all_units_at_the_tier_of_the_total() {
        let volume = pricing(PricingType::Volume, graduated_tiers(), None, "0");
        check_table(
            &volume,
            &[
                ("0", "5"),
                ("1", "6"),
                ("100", "105"),
                ("101", "50.50"),
                ("1000", "500"),
                ("1500", "150"),
                ("-3", "5"),
                ("100.5", "50.25"),
            ],
        );
    }

    #[test]
    fn package_rounds_up_after_free_units() {
        let package = pricing(PricingType::Package, vec![tier("25", None, "0")], Some("10"), "5");
        check_table(
            &package,
            &[
                ("0", "0"),
                ("5", "0"),
                ("6", "25"),
                ("15", "25"),
                ("16", "50"),
                ("25", "50"),
                ("26", "75"),
                ("-4", "0"),
            ],
        );
    }

    #[test]
    fn package_with_fractional_size_is_exact() {
        let package = pricing(PricingType::Package, vec![tier("1.5", None, "0")], Some("0.3"), "0");
        check_table(&package, &[("0.3", "1.5"), ("0.6", "3"), ("0.61", "4.5"), ("1", "6")]);
    }

    #[test]
    fn free_units_apply_to_tiered_and_volume() {
        let tiered = pricing(PricingType::Tiered, graduated_tiers(), None, "50");
        check_table(&tiered, &[("50", "5"), ("150", "105"), ("151", "105.5")]);
        let volume = pricing(PricingType::Volume, graduated_tiers(), None, "50");
        check_table(&volume, &[("50", "5"), ("150", "105"), ("151", "50.5")]);
    }

    fn rejected(pricing_type: PricingType, tiers: Vec<Tier>, package_size: Option<&str>, free: &str) -> PricingError {
        match Pricing::new(pricing_type, tiers, package_size.map(d), d(free)) {
            Ok(pricing) => panic!("expected rejection of {pricing:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn validation_failures_name_the_field() {
        let cases: Vec<(PricingError, &str, &str)> = vec![
            (
                rejected(PricingType::Tiered, vec![], None, "0"),
                "pricing_model",
                "pricing_model must contain at least one tier",
            ),
            (
                rejected(PricingType::Fixed, graduated_tiers(), None, "0"),
                "pricing_model",
                "pricing_model must contain exactly one tier for FIXED pricing, got 3",
            ),
            (
                rejected(PricingType::Package, vec![], Some("10"), "0"),
                "pricing_model",
                "pricing_model must contain at least one tier",
            ),
            (
                rejected(PricingType::Fixed, vec![tier("-0.01", None, "0")], None, "0"),
                "pricing_model[0].unit_amount",
                "pricing_model[0].unit_amount must not be negative",
            ),
            (
                rejected(
                    PricingType::Tiered,
                    vec![tier("1", Some("10"), "0"), tier("1", None, "-1")],
                    None,
                    "0",
                ),
                "pricing_model[1].flat_fee",
                "pricing_model[1].flat_fee must not be negative",
            ),
            (
                rejected(
                    PricingType::Tiered,
                    vec![tier("1", Some("0"), "0"), tier("1", None, "0")],
                    None,
                    "0",
                ),
                "pricing_model[0].up_to",
                "pricing_model[0].up_to must be greater than 0",
            ),
            (
                rejected(
                    PricingType::Volume,
                    vec![
                        tier("1", Some("100"), "0"),
                        tier("1", Some("100"), "0"),
                        tier("1", None, "0"),
                    ],
                    None,
                    "0",
                ),
                "pricing_model[1].up_to",
                "pricing_model[1].up_to must be greater than pricing_model[0].up_to",
            ),
            (
                rejected(
                    PricingType::Tiered,
                    vec![
                        tier("1", Some("100"), "0"),
                        tier("1", Some("50"), "0"),
                        tier("1", None, "0"),
                    ],
                    None,
                    "0",
                ),
                "pricing_model[1].up_to",
                "pricing_model[1].up_to must be greater than pricing_model[0].up_to",
            ),
            (
                rejected(
                    PricingType::Tiered,
                    vec![tier("1", None, "0"), tier("1", None, "0")],
                    None,
                    "0",
                ),
                "pricing_model[0].up_to",
                "pricing_model[0].up_to may be INFINITY only on the last tier",
            ),
            (
                rejected(
                    PricingType::Tiered,
                    vec![tier("1", Some("10"), "0"), tier("1", Some("20"), "0")],
                    None,
                    "0",
                ),
                "pricing_model[1].up_to",
                "pricing_model[1].up_to must be INFINITY on the last tier of TIERED pricing",
            ),
            (
                rejected(PricingType::Volume, vec![tier("1", Some("10"), "0")], None, "0"),
                "pricing_model[0].up_to",
                "pricing_model[0].up_to must be INFINITY on the last tier of VOLUME pricing",
            ),
            (
                rejected(PricingType::Package, vec![tier("25", None, "0")], None, "0"),
                "package_size",
                "package_size is required for PACKAGE pricing",
            ),
            (
                rejected(PricingType::Package, vec![tier("25", None, "0")], Some("0"), "0"),
                "package_size",
                "package_size must be greater than 0",
            ),
            (
                rejected(PricingType::Package, vec![tier("25", None, "0")], Some("-10"), "0"),
                "package_size",
                "package_size must be greater than 0",
            ),
            (
                rejected(PricingType::Fixed, vec![tier("1", None, "0")], None, "-1"),
                "free_units",
                "free_units must not be negative",
            ),
        ];
        for (error, field, message) in cases {
            assert_eq!(error.field(), field, "{error:?}");
            assert_eq!(error.to_string(), message, "{error:?}");
        }
    }

    #[test]
    fn single_tier_types_accept_a_bounded_tier() {
        let fixed = pricing(PricingType::Fixed, vec![tier("2", Some("10"), "0")], None, "0");
        assert_eq!(fixed.price(d("20")), d("40"));
        let package = pricing(PricingType::Package, vec![tier("5", Some("10"), "0")], Some("10"), "0");
        assert_eq!(package.price(d("20")), d("10"));
    }

    #[test]
    fn pricing_type_names() {
        for pricing_type in PricingType::ALL {
            assert_eq!(PricingType::from_str(pricing_type.as_str()), Ok(pricing_type));
            assert_eq!(pricing_type.to_string(), pricing_type.as_str());
            let wire = serde_json::to_value(pricing_type).expect("serialize pricing type");
            assert_eq!(wire, json!(pricing_type.as_str()));
        }
        assert_eq!("volume".parse::<PricingType>(), Ok(PricingType::Volume));
        let error = "GRADUATED".parse::<PricingType>().expect_err("unknown name");
        assert_eq!(error.field(), "pricing_type");
        assert_eq!(
            error.to_string(),
            "pricing_type must be one of FIXED, TIERED, VOLUME, PACKAGE, PERCENTAGE, GRADUATED_PERCENTAGE, got \"GRADUATED\""
        );
    }

    #[test]
    fn tier_amounts_deserialize_exactly_from_numbers_and_strings() {
        for text in [
            r#"{"unit_amount": 0.1, "up_to": 100}"#,
            r#"{"unit_amount": "0.1", "up_to": "100"}"#,
            r#"{"unit_amount": 0.1, "up_to": 100, "flat_fee": null}"#,
        ] {
            let parsed: Tier = serde_json::from_str(text).expect("tier");
            assert_eq!(parsed.unit_amount, Some(d("0.1")), "{text}");
            assert_eq!(
                parsed.unit_amount.map(|u| u.to_string()).as_deref(),
                Some("0.1"),
                "{text}"
            );
            assert_eq!(parsed.up_to, UpTo::Finite(d("100")), "{text}");
            assert_eq!(parsed.flat_fee, Decimal::ZERO, "{text}");
        }
        let precise: Tier =
            serde_json::from_str(r#"{"unit_amount": 0.123456789012345678901234567, "flat_fee": "2.50"}"#)
                .expect("tier");
        assert_eq!(
            precise.unit_amount.map(|u| u.to_string()).as_deref(),
            Some("0.123456789012345678901234567")
        );
        assert_eq!(precise.flat_fee.to_string(), "2.50");
        assert_eq!(precise.up_to, UpTo::Infinity);
    }

    #[test]
    fn up_to_reads_every_wire_form() {
        let cases = [
            (r#""INFINITY""#, UpTo::Infinity),
            (r#""infinity""#, UpTo::Infinity),
            (r#""Infinity""#, UpTo::Infinity),
            ("null", UpTo::Infinity),
            ("100", UpTo::Finite(d("100"))),
            ("-1", UpTo::Finite(d("-1"))),
            ("18446744073709551615", UpTo::Finite(d("18446744073709551615"))),
            ("18446744073709551616", UpTo::Finite(d("18446744073709551616"))),
            ("-18446744073709551616", UpTo::Finite(d("-18446744073709551616"))),
            ("0.1", UpTo::Finite(d("0.1"))),
            ("1.10", UpTo::Finite(d("1.10"))),
            ("0.30000000000000004", UpTo::Finite(d("0.30000000000000004"))),
            ("123456789012345678.9", UpTo::Finite(d("123456789012345678.9"))),
            ("100.25", UpTo::Finite(d("100.25"))),
            ("1e3", UpTo::Finite(d("1000"))),
            (r#""100.25""#, UpTo::Finite(d("100.25"))),
            (r#""1e3""#, UpTo::Finite(d("1000"))),
        ];
        for (text, expected) in cases {
            let parsed: UpTo = serde_json::from_str(text).expect("up_to");
            assert_eq!(parsed, expected, "{text}");
            // Through serde_json::Value too, which carries numbers the same way.
            let value: serde_json::Value = serde_json::from_str(text).expect("value");
            assert_eq!(
                serde_json::from_value::<UpTo>(value).expect("up_to"),
                expected,
                "{text}"
            );
        }
        for bad in [r#""lots""#, "true", "[]", r#""""#] {
            assert!(serde_json::from_str::<UpTo>(bad).is_err(), "{bad}");
        }
        let missing: Tier = serde_json::from_str(r#"{"unit_amount": 1}"#).expect("tier");
        assert_eq!(missing.up_to, UpTo::Infinity);
    }

    #[test]
    fn up_to_serializes_as_number_or_infinity() {
        assert_eq!(serde_json::to_string(&UpTo::Infinity).expect("json"), r#""INFINITY""#);
        assert_eq!(
            serde_json::to_string(&UpTo::Finite(d("100.50"))).expect("json"),
            "100.50"
        );
        let tier_json = serde_json::to_string(&tier("0.1", Some("100"), "5")).expect("json");
        assert_eq!(tier_json, r#"{"unit_amount":0.1,"up_to":100,"flat_fee":5}"#);
    }

    #[test]
    fn pricing_round_trips_through_the_wire_form() {
        let wire = r#"{
            "pricing_type": "TIERED",
            "pricing_model": [
                {"unit_amount": "1.00", "up_to": 100, "flat_fee": 5},
                {"unit_amount": 0.50, "up_to": "1000"},
                {"unit_amount": 0.10, "up_to": "INFINITY"}
            ],
            "free_units": "0"
        }"#;
        let parsed: Pricing = serde_json::from_str(wire).expect("pricing");
        assert_eq!(parsed, pricing(PricingType::Tiered, graduated_tiers(), None, "0"));
        let text = serde_json::to_string(&parsed).expect("json");
        assert_eq!(
            text,
            r#"{"pricing_type":"TIERED","pricing_model":[{"unit_amount":1.00,"up_to":100,"flat_fee":5},{"unit_amount":0.50,"up_to":1000,"flat_fee":0},{"unit_amount":0.10,"up_to":"INFINITY","flat_fee":0}],"free_units":0}"#
        );
        let again: Pricing = serde_json::from_str(&text).expect("pricing");
        assert_eq!(again, parsed);

        let package: Pricing = serde_json::from_str(
            r#"{"pricing_type":"PACKAGE","pricing_model":[{"unit_amount":25}],"package_size":"10","free_units":5}"#,
        )
        .expect("pricing");
        assert_eq!(package.package_size, Some(d("10")));
        assert_eq!(package.price(d("16")), d("50"));
        let text = serde_json::to_string(&package).expect("json");
        assert_eq!(serde_json::from_str::<Pricing>(&text).expect("pricing"), package);

        let defaults: Pricing =
            serde_json::from_str(r#"{"pricing_type":"FIXED","pricing_model":[{"unit_amount":"0.0001","up_to":null}]}"#)
                .expect("pricing");
        assert_eq!(defaults.free_units, Decimal::ZERO);
        assert_eq!(defaults.package_size, None);
        assert_eq!(defaults.tiers[0].up_to, UpTo::Infinity);
    }

    #[test]
    fn deserializing_an_invalid_pricing_reports_the_field() {
        let error = serde_json::from_str::<Pricing>(
            r#"{"pricing_type":"TIERED","pricing_model":[{"unit_amount":1,"up_to":100},{"unit_amount":1,"up_to":50},{"unit_amount":1}]}"#,
        )
        .expect_err("invalid");
        assert!(
            error
                .to_string()
                .contains("pricing_model[1].up_to must be greater than pricing_model[0].up_to"),
            "{error}"
        );
        let error = serde_json::from_str::<Pricing>(r#"{"pricing_type":"FLAT","pricing_model":[{"unit_amount":1}]}"#)
            .expect_err("unknown type");
        assert!(error.to_string().contains("PACKAGE"), "{error}");
    }

    #[test]
    fn unvalidated_pricing_never_panics() {
        let empty = Pricing {
            pricing_type: PricingType::Tiered,
            tiers: vec![],
            package_size: None,
            free_units: Decimal::ZERO,
            percentage: None,
        };
        for pricing_type in PricingType::ALL {
            let pricing = Pricing {
                pricing_type,
                ..empty.clone()
            };
            assert_eq!(pricing.price(d("10")), Decimal::ZERO);
        }
        let bounded_last = Pricing {
            pricing_type: PricingType::Tiered,
            tiers: vec![tier("1", Some("10"), "0"), tier("2", Some("20"), "0")],
            package_size: None,
            free_units: Decimal::ZERO,
            percentage: None,
        };
        assert_eq!(bounded_last.price(d("30")), d("50"));
        let no_size = Pricing {
            pricing_type: PricingType::Package,
            tiers: vec![tier("3", None, "0")],
            package_size: Some(Decimal::ZERO),
            free_units: Decimal::ZERO,
            percentage: None,
        };
        assert_eq!(no_size.price(d("2.5")), d("9"));
    }

    #[test]
    fn overflow_saturates_and_is_reported_by_checked_price() {
        let fixed = pricing(PricingType::Fixed, vec![tier("10", None, "0")], None, "0");
        assert_eq!(fixed.checked_price(Decimal::MAX), None);
        assert_eq!(fixed.price(Decimal::MAX), Decimal::MAX);
        assert_eq!(fixed.price(Decimal::MIN), Decimal::ZERO);
    }

    // Amounts with at most 4 decimals and bounded magnitude, so every product
    // and sum stays exact within Decimal's 28 digits.
    fn amount() -> impl Strategy<Value = Decimal> {
        (0i64..1_000_000_000, 0u32..=4).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale))
    }

    // Zero, small quantities near tier bounds, and wide ones, negatives included.
    fn units() -> impl Strategy<Value = Decimal> {
        prop_oneof![
            Just(Decimal::ZERO),
            (-1_000i64..100_000, 0u32..=2).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale)),
            (-1_000_000_000i64..1_000_000_000_000, 0u32..=3)
                .prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale)),
        ]
    }

    fn positive() -> impl Strategy<Value = Decimal> {
        prop_oneof![
            (1i64..1_000, 0u32..=2).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale)),
            (1i64..100_000_000, 0u32..=3).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale)),
        ]
    }

    fn tier_list(unbounded_last: bool) -> impl Strategy<Value = Vec<Tier>> {
        prop::collection::vec((positive(), amount(), amount()), 1..6).prop_map(move |rows| {
            let last = rows.len() - 1;
            let mut bound = Decimal::ZERO;
            rows.into_iter()
                .enumerate()
                .map(|(index, (step, unit_amount, flat_fee))| {
                    bound += step;
                    let up_to = if index == last && unbounded_last {
                        UpTo::Infinity
                    } else {
                        UpTo::Finite(bound)
                    };
                    Tier::unit(unit_amount, up_to, flat_fee)
                })
                .collect()
        })
    }

    fn single_tier() -> impl Strategy<Value = Vec<Tier>> {
        (amount(), amount(), prop::option::of(positive())).prop_map(|(unit_amount, flat_fee, bound)| {
            vec![Tier::unit(
                unit_amount,
                bound.map_or(UpTo::Infinity, UpTo::Finite),
                flat_fee,
            )]
        })
    }

    fn valid_pricing() -> impl Strategy<Value = Pricing> {
        let free = prop_oneof![Just(Decimal::ZERO), amount()];
        prop_oneof![
            (single_tier(), free.clone()).prop_map(|(tiers, free_units)| Pricing {
                pricing_type: PricingType::Fixed,
                tiers,
                package_size: None,
                free_units,
                percentage: None,
            }),
            (tier_list(true), free.clone()).prop_map(|(tiers, free_units)| Pricing {
                pricing_type: PricingType::Tiered,
                tiers,
                package_size: None,
                free_units,
                percentage: None,
            }),
            (tier_list(true), free.clone()).prop_map(|(tiers, free_units)| Pricing {
                pricing_type: PricingType::Volume,
                tiers,
                package_size: None,
                free_units,
                percentage: None,
            }),
            (single_tier(), positive(), free).prop_map(|(tiers, size, free_units)| Pricing {
                pricing_type: PricingType::Package,
                tiers,
                package_size: Some(size),
                free_units,
                percentage: None,
            }),
        ]
    }

    proptest! {
        #[test]
        fn extreme_prices_and_units_never_panic(
            unit_amount in crate::domain::money::any_decimal(),
            flat_fee in crate::domain::money::any_decimal(),
            up_to in crate::domain::money::any_decimal(),
            units in crate::domain::money::any_decimal(),
            free_units in crate::domain::money::any_decimal(),
            size in crate::domain::money::any_decimal(),
        ) {
            for pricing_type in PricingType::ALL {
                let pricing = Pricing {
                    pricing_type,
                    tiers: vec![
                        Tier::unit(unit_amount, UpTo::Finite(up_to.abs()), flat_fee),
                        Tier::unit(flat_fee, UpTo::Infinity, unit_amount),
                    ],
                    package_size: Some(size),
                    free_units,
                    percentage: None,
                };
                // A value or an overflow reported as None; never a panic.
                let _ = pricing.checked_price(units);
                let _ = pricing.validate();
            }
        }

        #[test]
        fn generated_pricings_are_valid_and_round_trip(pricing in valid_pricing()) {
            prop_assert_eq!(pricing.validate(), Ok(()));
            let text = serde_json::to_string(&pricing).expect("json");
            let back: Pricing = serde_json::from_str(&text).expect("pricing");
            prop_assert_eq!(back, pricing);
        }

        #[test]
        fn price_is_never_negative(pricing in valid_pricing(), units in units()) {
            let price = pricing.checked_price(units);
            prop_assert!(price.is_some());
            prop_assert!(price.unwrap_or(Decimal::MIN) >= Decimal::ZERO);
        }

        #[test]
        fn price_is_monotone_except_across_volume_tiers(pricing in valid_pricing(), a in units(), b in units()) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let same_volume_tier = {
                let tier_of = |u: Decimal| {
                    let billable = pricing.billable_units(u);
                    pricing.tiers.iter().position(|t| t.up_to.covers(billable))
                };
                tier_of(low) == tier_of(high)
            };
            // VOLUME drops when the total crosses into a cheaper tier, by contract.
            if pricing.pricing_type != PricingType::Volume || same_volume_tier {
                prop_assert!(pricing.price(low) <= pricing.price(high), "{} > {}", pricing.price(low), pricing.price(high));
            }
        }

        #[test]
        fn fixed_price_is_additive(unit_amount in amount(), a in amount(), b in amount()) {
            let fixed = Pricing::new(
                PricingType::Fixed,
                vec![Tier::unit(unit_amount, UpTo::Infinity, Decimal::ZERO)],
                None,
                Decimal::ZERO,
            ).expect("valid");
            prop_assert_eq!(fixed.price(a + b), fixed.price(a) + fixed.price(b));
            prop_assert_eq!(fixed.price(a), a * unit_amount);
        }

        #[test]
        fn one_unbounded_tier_prices_like_fixed(unit_amount in amount(), free_units in amount(), units in units()) {
            let tiers = vec![Tier::unit(unit_amount, UpTo::Infinity, Decimal::ZERO)];
            let fixed = Pricing::new(PricingType::Fixed, tiers.clone(), None, free_units).expect("valid");
            let tiered = Pricing::new(PricingType::Tiered, tiers.clone(), None, free_units).expect("valid");
            let volume = Pricing::new(PricingType::Volume, tiers.clone(), None, free_units).expect("valid");
            let per_unit_package = Pricing::new(PricingType::Package, tiers, Some(Decimal::ONE), free_units).expect("valid");
            let expected = fixed.price(units);
            prop_assert_eq!(tiered.price(units), expected);
            prop_assert_eq!(volume.price(units), expected);
            if units.fract().is_zero() && free_units.fract().is_zero() {
                prop_assert_eq!(per_unit_package.price(units), expected);
            }
        }

        #[test]
        fn graduated_price_is_the_sum_of_its_tiers(tiers in tier_list(true), units in units()) {
            let tiered = Pricing::new(PricingType::Tiered, tiers.clone(), None, Decimal::ZERO).expect("valid");
            let billable = units.max(Decimal::ZERO);
            let mut expected = Decimal::ZERO;
            let mut lower = Decimal::ZERO;
            for (index, tier) in tiers.iter().enumerate() {
                let upper = tier.up_to.finite().unwrap_or(Decimal::MAX);
                let inside = (billable.min(upper) - lower).max(Decimal::ZERO);
                if index == 0 || inside > Decimal::ZERO {
                    expected += inside * tier.unit_amount.expect("unit tier") + tier.flat_fee;
                }
                lower = upper;
            }
            prop_assert_eq!(tiered.price(units), expected);
        }

        #[test]
        fn package_is_the_ceiling_of_packages(size in positive(), unit_amount in amount(), free_units in amount(), units in units()) {
            let package = Pricing::new(
                PricingType::Package,
                vec![Tier::unit(unit_amount, UpTo::Infinity, Decimal::ZERO)],
                Some(size),
                free_units,
            ).expect("valid");
            let billable = (units - free_units).max(Decimal::ZERO);
            let packages = package.price(units).checked_div(unit_amount).unwrap_or(Decimal::ZERO);
            if !unit_amount.is_zero() {
                prop_assert!(packages.fract().is_zero());
                prop_assert!(packages * size >= billable);
                prop_assert!(packages.is_zero() || (packages - Decimal::ONE) * size < billable);
            }
        }
    }

    fn percentage(terms: PercentageTerms) -> Pricing {
        Pricing::build(PricingType::Percentage, vec![], None, Decimal::ZERO, terms).expect("valid percentage")
    }

    fn terms(rate: &str) -> PercentageTerms {
        PercentageTerms {
            rate: Some(d(rate)),
            ..PercentageTerms::default()
        }
    }

    /// The period amount of events (in timestamp order) under PERCENTAGE pricing.
    fn percentage_amount(pricing: &Pricing, events: &[&str]) -> Decimal {
        let p = pricing.percentage.as_ref().expect("percentage terms");
        let values: Vec<Decimal> = events.iter().map(|v| d(v)).collect();
        let fees = values.iter().map(|v| p.event_fee(*v).expect("fee")).sum();
        pricing
            .checked_amount(&Metered {
                units: values.iter().sum(),
                fees,
                head: &values,
            })
            .expect("amount")
    }

    #[test]
    fn percentage_reproduces_the_published_examples() {
        let events = ["50", "100", "250", "400"];
        let both = percentage(PercentageTerms {
            fixed_amount: Some(d("2")),
            free_units_per_events: Some(3),
            free_units_per_total_aggregation: Some(d("250")),
            ..terms("1.3")
        });
        assert_eq!(percentage_amount(&both, &events), d("11.15"));
        let free_events = percentage(PercentageTerms {
            fixed_amount: Some(d("2")),
            free_units_per_events: Some(3),
            ..terms("1.3")
        });
        assert_eq!(percentage_amount(&free_events, &events), d("7.2"));
        let no_allowance = percentage(PercentageTerms {
            fixed_amount: Some(d("2")),
            ..terms("1.3")
        });
        assert_eq!(percentage_amount(&no_allowance, &events), d("18.4"));
        let bounded = percentage(PercentageTerms {
            per_transaction_min_amount: Some(d("1.75")),
            per_transaction_max_amount: Some(d("12")),
            ..terms("2.99")
        });
        assert_eq!(percentage_amount(&bounded, &["10", "80", "10000"]), d("16.142"));
        assert_eq!(
            percentage_amount(&percentage(terms("2.99")), &["10", "80", "10000"]),
            d("301.691")
        );
    }

    #[test]
    fn percentage_free_units_alone_keep_the_fixed_fee() {
        let free_units = percentage(PercentageTerms {
            fixed_amount: Some(d("2")),
            free_units_per_total_aggregation: Some(d("250")),
            ..terms("1.3")
        });
        // (800 - 250) x 1.3% + 4 x 2.
        assert_eq!(percentage_amount(&free_units, &["50", "100", "250", "400"]), d("15.15"));
        // The allowance is larger than the usage: the fixed fees alone.
        assert_eq!(percentage_amount(&free_units, &["50", "100"]), d("4"));
        assert_eq!(percentage_amount(&free_units, &[]), d("0"));
    }

    #[test]
    fn percentage_free_events_pay_nothing_not_even_the_minimum() {
        let pricing = percentage(PercentageTerms {
            free_units_per_events: Some(2),
            per_transaction_min_amount: Some(d("1")),
            ..terms("10")
        });
        assert_eq!(percentage_amount(&pricing, &["1", "1", "1", "50"]), d("6"));
        let p = pricing.percentage.as_ref().expect("terms");
        // Two free events reached: the allowance has run out.
        assert_eq!(p.give_back(&[d("1"), d("1")]), Some((d("2"), true)));
        assert_eq!(p.give_back(&[d("1")]), Some((d("1"), false)));
        assert_eq!(p.head_limit(), Some(2));
    }

    #[test]
    fn graduated_percentage_reproduces_the_published_examples() {
        let tier = |up_to: Option<&str>, rate: &str, flat_fee: &str| Tier {
            unit_amount: None,
            rate: Some(d(rate)),
            up_to: up_to.map_or(UpTo::Infinity, |bound| UpTo::Finite(d(bound))),
            flat_fee: d(flat_fee),
        };
        let pricing = pricing(
            PricingType::GraduatedPercentage,
            vec![
                tier(Some("10"), "1", "200"),
                tier(Some("20"), "2", "300"),
                tier(None, "3", "400"),
            ],
            None,
            "0",
        );
        check_table(
            &pricing,
            &[("0", "200"), ("1", "200.01"), ("11", "500.12"), ("21", "900.33")],
        );
    }

    #[test]
    fn percentage_and_rate_fields_are_refused_where_they_do_not_belong() {
        let build = |pricing_type, tiers: Vec<Tier>, free: &str, terms: PercentageTerms| {
            Pricing::build(pricing_type, tiers, None, d(free), terms).expect_err("refused")
        };
        let cases = [
            (
                build(PricingType::Tiered, graduated_tiers(), "0", terms("1")),
                "rate is not used by TIERED pricing",
            ),
            (
                build(PricingType::Percentage, vec![], "0", PercentageTerms::default()),
                "rate is required for PERCENTAGE pricing",
            ),
            (
                build(PricingType::Percentage, graduated_tiers(), "0", terms("1")),
                "pricing_model is not used by PERCENTAGE pricing",
            ),
            (
                build(PricingType::Percentage, vec![], "5", terms("1")),
                "free_units is not used by PERCENTAGE pricing",
            ),
            (
                build(PricingType::Percentage, vec![], "0", terms("-1")),
                "rate must not be negative",
            ),
            (
                build(
                    PricingType::Percentage,
                    vec![],
                    "0",
                    PercentageTerms {
                        per_transaction_min_amount: Some(d("5")),
                        per_transaction_max_amount: Some(d("1")),
                        ..terms("1")
                    },
                ),
                "per_transaction_min_amount must not be greater than per_transaction_max_amount",
            ),
            (
                build(
                    PricingType::Percentage,
                    vec![],
                    "0",
                    PercentageTerms {
                        free_units_per_events: Some(MAX_FREE_EVENTS + 1),
                        ..terms("1")
                    },
                ),
                "free_units_per_events must be at most 10000",
            ),
            (
                build(
                    PricingType::GraduatedPercentage,
                    graduated_tiers(),
                    "0",
                    PercentageTerms::default(),
                ),
                "pricing_model[0].unit_amount is not used by GRADUATED_PERCENTAGE pricing",
            ),
            (
                build(
                    PricingType::Fixed,
                    vec![Tier {
                        unit_amount: None,
                        rate: Some(d("1")),
                        up_to: UpTo::Infinity,
                        flat_fee: Decimal::ZERO,
                    }],
                    "0",
                    PercentageTerms::default(),
                ),
                "pricing_model[0].rate is not used by FIXED pricing",
            ),
            (
                build(
                    PricingType::GraduatedPercentage,
                    vec![Tier {
                        unit_amount: None,
                        rate: None,
                        up_to: UpTo::Infinity,
                        flat_fee: Decimal::ZERO,
                    }],
                    "0",
                    PercentageTerms::default(),
                ),
                "pricing_model[0].rate is required for GRADUATED_PERCENTAGE pricing",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
            assert!(message.starts_with(&error.field()), "{message}");
        }
    }

    #[test]
    fn percentage_terms_round_trip_through_json() {
        let text = r#"{"pricing_type":"PERCENTAGE","rate":"1.3","fixed_amount":2,"free_units_per_events":3,"free_units_per_total_aggregation":250}"#;
        let parsed: Pricing = serde_json::from_str(text).expect("pricing");
        let p = parsed.percentage.as_ref().expect("terms");
        assert_eq!(
            (p.rate, p.fixed_amount, p.free_units_per_events),
            (d("1.3"), d("2"), Some(3))
        );
        let json = serde_json::to_string(&parsed).expect("json");
        assert_eq!(
            json,
            r#"{"pricing_type":"PERCENTAGE","pricing_model":[],"free_units":0,"rate":1.3,"fixed_amount":2,"free_units_per_events":3,"free_units_per_total_aggregation":250}"#
        );
        let back: Pricing = serde_json::from_str(&json).expect("pricing");
        assert_eq!(back, parsed);
    }

    fn percentage_pricing() -> impl Strategy<Value = Pricing> {
        (
            0i64..500,
            0i64..300,
            prop::option::of(0u32..6),
            prop::option::of(0i64..2_000),
            prop::option::of((0i64..300, 0i64..3_000)),
        )
            .prop_map(|(rate, fixed, events, units, bounds)| {
                let (min, max) = match bounds {
                    Some((a, b)) => (Some(Decimal::new(a.min(b), 2)), Some(Decimal::new(a.max(b), 2))),
                    None => (None, None),
                };
                percentage(PercentageTerms {
                    rate: Some(Decimal::new(rate, 2)),
                    fixed_amount: Some(Decimal::new(fixed, 2)),
                    free_units_per_events: events,
                    free_units_per_total_aggregation: units.map(Decimal::from),
                    per_transaction_min_amount: min,
                    per_transaction_max_amount: max,
                })
            })
    }

    proptest! {
        #[test]
        fn percentage_fees_add_up_whatever_the_batches_and_arrival(
            pricing in percentage_pricing(),
            values in prop::collection::vec(0i64..100_000, 0..30),
            split in 0usize..30,
        ) {
            let p = pricing.percentage.as_ref().expect("terms");
            let values: Vec<Decimal> = values.into_iter().map(|v| Decimal::new(v, 2)).collect();
            // Fees summed per batch, in any order, equal the fees of all.
            let split = split.min(values.len());
            let (left, right) = values.split_at(split);
            let fee = |vs: &[Decimal]| vs.iter().map(|v| p.event_fee(*v).expect("fee")).sum::<Decimal>();
            let mut reversed = values.clone();
            reversed.reverse();
            prop_assert_eq!(fee(right) + fee(left), fee(&reversed));
            // Reading just the head the allowance reaches gives the same as reading all.
            let (back_all, _) = p.give_back(&values).expect("give back");
            let mut head = Vec::new();
            for v in &values {
                head.push(*v);
                let (_, ran_out) = p.give_back(&head).expect("give back");
                if ran_out { break; }
            }
            prop_assert_eq!(p.give_back(&head).expect("give back").0, back_all);
            let amount = p.amount(fee(&values), &values).expect("amount");
            prop_assert!(amount >= Decimal::ZERO);
        }
    }
}
