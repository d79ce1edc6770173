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
/// Serializes as the wire names `"FIXED"`, `"TIERED"`, `"VOLUME"` and
/// `"PACKAGE"`.
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
}

impl PricingType {
    /// Every pricing type, in wire order.
    pub(crate) const ALL: [PricingType; 4] = [
        PricingType::Fixed,
        PricingType::Tiered,
        PricingType::Volume,
        PricingType::Package,
    ];

    /// The wire name, identical to the serde representation.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PricingType::Fixed => "FIXED",
            PricingType::Tiered => "TIERED",
            PricingType::Volume => "VOLUME",
            PricingType::Package => "PACKAGE",
        }
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
/// `flat_fee` to zero when missing or `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tier {
    /// Price of one unit inside this tier (of one package for PACKAGE).
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub unit_amount: Decimal,
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
    /// Units given away before anything is charged, for every pricing type.
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub free_units: Decimal,
}

#[derive(Deserialize)]
struct PricingWire {
    pricing_type: PricingType,
    pricing_model: Vec<Tier>,
    #[serde(default, with = "rust_decimal::serde::arbitrary_precision_option")]
    package_size: Option<Decimal>,
    #[serde(default, deserialize_with = "decimal_or_zero")]
    free_units: Decimal,
}

impl<'de> Deserialize<'de> for Pricing {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = PricingWire::deserialize(deserializer)?;
        Pricing::new(
            wire.pricing_type,
            wire.pricing_model,
            wire.package_size,
            wire.free_units,
        )
        .map_err(de::Error::custom)
    }
}

/// Why a price list was rejected.
///
/// Display is one sentence naming the field as the wire names it, e.g.
/// `pricing_model[1].up_to must be greater than pricing_model[0].up_to`;
/// [`PricingError::field`] returns that field path alone.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum PricingError {
    /// `pricing_type` is not one of the four wire names.
    #[error("pricing_type must be one of FIXED, TIERED, VOLUME, PACKAGE, got {value:?}")]
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
        }
    }
}

impl Pricing {
    /// Builds a price list, returning the first rule it breaks (see [`Pricing::validate`]).
    pub(crate) fn new(
        pricing_type: PricingType,
        tiers: Vec<Tier>,
        package_size: Option<Decimal>,
        free_units: Decimal,
    ) -> Result<Pricing, PricingError> {
        let pricing = Pricing {
            pricing_type,
            tiers,
            package_size,
            free_units,
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
        for (index, tier) in self.tiers.iter().enumerate() {
            bounded(tier.unit_amount, format!("pricing_model[{index}].unit_amount"))?;
            bounded(tier.flat_fee, format!("pricing_model[{index}].flat_fee"))?;
            if let UpTo::Finite(bound) = tier.up_to {
                bounded(bound, format!("pricing_model[{index}].up_to"))?;
            }
            if tier.unit_amount < Decimal::ZERO {
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
    pub(crate) fn checked_price(&self, units: Decimal) -> Option<Decimal> {
        let billable = self.billable_units(units);
        match self.pricing_type {
            PricingType::Fixed => self.fixed(billable),
            PricingType::Tiered => self.graduated(billable),
            PricingType::Volume => self.volume(billable),
            PricingType::Package => self.package(billable),
        }
    }

    fn fixed(&self, billable: Decimal) -> Option<Decimal> {
        match self.tiers.first() {
            Some(tier) => billable.checked_mul(tier.unit_amount),
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
                let charge = inside.checked_mul(tier.unit_amount)?.checked_add(tier.flat_fee)?;
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
            Some(tier) => billable.checked_mul(tier.unit_amount)?.checked_add(tier.flat_fee),
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
        packages.checked_mul(tier.unit_amount)
    }
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
        Tier {
            unit_amount: d(unit_amount),
            up_to: up_to.map_or(UpTo::Infinity, |bound| UpTo::Finite(d(bound))),
            flat_fee: d(flat_fee),
        }
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
            "pricing_type must be one of FIXED, TIERED, VOLUME, PACKAGE, got \"GRADUATED\""
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
            assert_eq!(parsed.unit_amount, d("0.1"), "{text}");
            assert_eq!(parsed.unit_amount.to_string(), "0.1", "{text}");
            assert_eq!(parsed.up_to, UpTo::Finite(d("100")), "{text}");
            assert_eq!(parsed.flat_fee, Decimal::ZERO, "{text}");
        }
        let precise: Tier =
            serde_json::from_str(r#"{"unit_amount": 0.123456789012345678901234567, "flat_fee": "2.50"}"#)
                .expect("tier");
        assert_eq!(precise.unit_amount.to_string(), "0.123456789012345678901234567");
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
        };
        assert_eq!(bounded_last.price(d("30")), d("50"));
        let no_size = Pricing {
            pricing_type: PricingType::Package,
            tiers: vec![tier("3", None, "0")],
            package_size: Some(Decimal::ZERO),
            free_units: Decimal::ZERO,
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
                    Tier {
                        unit_amount,
                        up_to,
                        flat_fee,
                    }
                })
                .collect()
        })
    }

    fn single_tier() -> impl Strategy<Value = Vec<Tier>> {
        (amount(), amount(), prop::option::of(positive())).prop_map(|(unit_amount, flat_fee, bound)| {
            vec![Tier {
                unit_amount,
                up_to: bound.map_or(UpTo::Infinity, UpTo::Finite),
                flat_fee,
            }]
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
            }),
            (tier_list(true), free.clone()).prop_map(|(tiers, free_units)| Pricing {
                pricing_type: PricingType::Tiered,
                tiers,
                package_size: None,
                free_units,
            }),
            (tier_list(true), free.clone()).prop_map(|(tiers, free_units)| Pricing {
                pricing_type: PricingType::Volume,
                tiers,
                package_size: None,
                free_units,
            }),
            (single_tier(), positive(), free).prop_map(|(tiers, size, free_units)| Pricing {
                pricing_type: PricingType::Package,
                tiers,
                package_size: Some(size),
                free_units,
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
                        Tier { unit_amount, up_to: UpTo::Finite(up_to.abs()), flat_fee },
                        Tier { unit_amount: flat_fee, up_to: UpTo::Infinity, flat_fee: unit_amount },
                    ],
                    package_size: Some(size),
                    free_units,
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
                vec![Tier { unit_amount, up_to: UpTo::Infinity, flat_fee: Decimal::ZERO }],
                None,
                Decimal::ZERO,
            ).expect("valid");
            prop_assert_eq!(fixed.price(a + b), fixed.price(a) + fixed.price(b));
            prop_assert_eq!(fixed.price(a), a * unit_amount);
        }

        #[test]
        fn one_unbounded_tier_prices_like_fixed(unit_amount in amount(), free_units in amount(), units in units()) {
            let tiers = vec![Tier { unit_amount, up_to: UpTo::Infinity, flat_fee: Decimal::ZERO }];
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
                    expected += inside * tier.unit_amount + tier.flat_fee;
                }
                lower = upper;
            }
            prop_assert_eq!(tiered.price(units), expected);
        }

        #[test]
        fn package_is_the_ceiling_of_packages(size in positive(), unit_amount in amount(), free_units in amount(), units in units()) {
            let package = Pricing::new(
                PricingType::Package,
                vec![Tier { unit_amount, up_to: UpTo::Infinity, flat_fee: Decimal::ZERO }],
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
}
