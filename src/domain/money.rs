//! Currencies and their minor units: amounts stay exact until a bill rounds them.

// Money and quantities: every operation is checked; an overflow is an
// error value, never a panic or a silently wrong amount.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};

/// Every amount and value from the wire is below this in absolute value.
pub(crate) const MAX_ABS_AMOUNT: Decimal = Decimal::from_parts(0xA4C6_8000, 0x38D7E, 0, false, 0); // 10^15

/// Most decimal places of an amount or value from the wire.
pub(crate) const MAX_SCALE: u32 = 12;

/// Checks a wire amount: |x| < 10^15 and at most 12 decimal places
/// (trailing zeros do not count). Returns it normalised of trailing zeros
/// beyond its meaning only as far as needed to hold the bound.
pub(crate) fn check_amount(value: Decimal) -> Result<Decimal, String> {
    if value.abs() >= MAX_ABS_AMOUNT {
        return Err("must be below 10^15 in absolute value".into());
    }
    if value.scale() > MAX_SCALE {
        let trimmed = value.normalize();
        if trimmed.scale() > MAX_SCALE {
            return Err(format!("must have at most {MAX_SCALE} decimal places"));
        }
        return Ok(trimmed);
    }
    Ok(value)
}

/// An ISO 4217 alphabetic code: three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Currency(String);

impl Currency {
    /// Parses a code; lower case is accepted and upper-cased.
    pub(crate) fn parse(code: &str) -> Result<Currency, String> {
        let upper = code.trim().to_ascii_uppercase();
        if upper.len() == 3 && upper.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(upper))
        } else {
            Err(format!(
                "must be a three-letter ISO 4217 code, got '{}'",
                code.chars().take(16).collect::<String>()
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits after the decimal point of the smallest unit (paisa, cent, ...).
    /// Codes not listed use two, as most currencies do.
    pub(crate) fn minor_units(&self) -> u32 {
        match self.0.as_str() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
            | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            "CLF" | "UYW" => 4,
            _ => 2,
        }
    }

    /// Rounds an exact amount to the minor unit, half away from zero
    /// (the commercial rounding of invoices).
    pub(crate) fn round(&self, amount: Decimal) -> Decimal {
        amount.round_dp_with_strategy(self.minor_units(), RoundingStrategy::MidpointAwayFromZero)
    }

    /// Whether an amount is already expressed in whole minor units.
    pub(crate) fn fits_minor_units(&self, amount: Decimal) -> bool {
        amount.normalize().scale() <= self.minor_units()
    }
}

/// The mapping at the store boundary.
impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(value: String) -> Result<Currency, String> {
        Currency::parse(&value)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Any decimal at all, extremes first: for property tests that feed the
/// money code what no validation would let through.
#[cfg(test)]
pub(crate) fn any_decimal() -> impl proptest::strategy::Strategy<Value = Decimal> {
    use proptest::prelude::*;
    prop_oneof![
        Just(Decimal::MAX),
        Just(Decimal::MIN),
        Just(Decimal::ZERO),
        Just(MAX_ABS_AMOUNT),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>(), 0u32..=28)
            .prop_map(|(lo, mid, hi, negative, scale)| Decimal::from_parts(lo, mid, hi, negative, scale)),
    ]
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    #[test]
    fn wire_amounts_are_bounded() {
        assert_eq!(MAX_ABS_AMOUNT, d("1000000000000000"));
        assert!(check_amount(d("999999999999999.999999999999")).is_ok());
        assert!(check_amount(d("1000000000000000")).is_err());
        assert!(check_amount(d("-1000000000000000")).is_err());
        assert!(check_amount(d("79228162514264337593543950335")).is_err());
        assert!(check_amount(d("0.0000000000001")).is_err());
        assert_eq!(check_amount(d("1.5000000000000")), Ok(d("1.5")));
        assert!(check_amount(d("-12.5")).is_ok());
    }

    #[test]
    fn parses_and_normalises_codes() {
        assert_eq!(Currency::parse("inr").expect("ok").as_str(), "INR");
        assert!(Currency::parse("RUPEE").is_err());
        assert!(Currency::parse("I1R").is_err());
    }

    #[test]
    fn rounds_to_the_minor_unit() {
        let inr = Currency::parse("INR").expect("ok");
        assert_eq!(inr.round(d("10.005")), d("10.01"));
        assert_eq!(inr.round(d("10.004999")), d("10.00"));
        assert_eq!(inr.round(d("-1.005")), d("-1.01"));
        let jpy = Currency::parse("JPY").expect("ok");
        assert_eq!(jpy.round(d("10.5")), d("11"));
        let kwd = Currency::parse("KWD").expect("ok");
        assert_eq!(kwd.round(d("1.0005")), d("1.001"));
    }

    #[test]
    fn minor_unit_fit() {
        let inr = Currency::parse("INR").expect("ok");
        assert!(inr.fits_minor_units(d("10.10")));
        assert!(inr.fits_minor_units(d("10.100")));
        assert!(!inr.fits_minor_units(d("10.101")));
    }
}
