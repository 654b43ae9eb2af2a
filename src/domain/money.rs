//! Money at the edge: ISO 4217 currencies and positive amounts that fit them.
//!
//! Amounts travel as JSON strings (`"12.30"`) and live as `rust_decimal::Decimal`; a float never
//! touches money. `Amount::parse` is the only way in, so the ledger cannot see a bad amount.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

/// Largest amount accepted for one transfer, in major units. Far above any real payment, far
/// below `Decimal::MAX`, so balances summed over billions of transfers cannot overflow.
pub const AMOUNT_MAX_MAJOR_UNITS: i64 = 1_000_000_000_000_000;

/// An ISO 4217 currency that has minor units (precious metals and funds codes are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: iso_currency::Currency,
    minor_units: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("currency must be a three-letter ISO 4217 code such as \"USD\", got {0:?}")]
    Unknown(String),
    #[error("currency {0} has no minor units defined by ISO 4217 and cannot be moved")]
    NoMinorUnits(String),
}

impl Currency {
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let iso = iso_currency::Currency::from_code(code)
            .filter(|_| code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()))
            .ok_or_else(|| CurrencyError::Unknown(code.to_owned()))?;
        let minor_units = iso
            .exponent()
            .ok_or_else(|| CurrencyError::NoMinorUnits(code.to_owned()))?;
        Ok(Self {
            code: iso,
            minor_units: u32::from(minor_units),
        })
    }

    pub fn code(&self) -> &'static str {
        self.code.code()
    }

    /// Decimal places the currency allows (USD 2, JPY 0, BHD 3).
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }

    /// A stored value shown with exactly the currency's decimal places.
    pub fn format(&self, value: Decimal) -> String {
        let mut shown = value;
        shown.rescale(self.minor_units);
        shown.to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// A positive amount of money in one currency, with no more decimals than the currency has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    value: Decimal,
    currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be a JSON string of digits such as \"12.30\"")]
    NotAString,
    #[error("amount {0:?} is not a plain decimal number such as \"12.30\"")]
    Malformed(String),
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount has {places} decimal places but {currency} allows at most {allowed}")]
    TooPrecise {
        places: u32,
        currency: Currency,
        allowed: u32,
    },
    #[error("amount exceeds the maximum of {AMOUNT_MAX_MAJOR_UNITS} per transfer")]
    TooLarge,
}

impl Amount {
    /// Parses the wire form: ASCII digits with at most one `.`, no sign, no exponent, no
    /// spaces. Trailing zeros count as written (`"1.230"` is three places, refused for USD), so
    /// what a client sends is what it meant.
    pub fn parse(text: &str, currency: Currency) -> Result<Self, AmountError> {
        let malformed = || AmountError::Malformed(truncate(text));
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (text, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
            // A leading '-' is a malformed amount by grammar, but tell the client what it means.
            if text.starts_with('-') && Decimal::from_str(text).is_ok() {
                return Err(AmountError::NotPositive);
            }
            return Err(malformed());
        }
        let places = fraction.map_or(0, |f| f.len());
        if whole.trim_start_matches('0').len() > 16 {
            return Err(AmountError::TooLarge);
        }
        if places > currency.minor_units() as usize {
            return Err(AmountError::TooPrecise {
                places: u32::try_from(places).unwrap_or(u32::MAX),
                currency,
                allowed: currency.minor_units(),
            });
        }
        let value = Decimal::from_str(text).map_err(|_| malformed())?;
        Self::new(value, currency)
    }

    /// Builds an amount from a decimal already in hand (e.g. read back from the database).
    pub fn new(value: Decimal, currency: Currency) -> Result<Self, AmountError> {
        if value <= Decimal::ZERO {
            return Err(AmountError::NotPositive);
        }
        if value > Decimal::from(AMOUNT_MAX_MAJOR_UNITS) {
            return Err(AmountError::TooLarge);
        }
        if value.normalize().scale() > currency.minor_units() {
            return Err(AmountError::TooPrecise {
                places: value.normalize().scale(),
                currency,
                allowed: currency.minor_units(),
            });
        }
        let mut value = value;
        value.rescale(currency.minor_units());
        Ok(Self { value, currency })
    }

    pub fn value(&self) -> Decimal {
        self.value
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.value, self.currency)
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD is ISO 4217")
    }

    #[test]
    fn currencies_are_iso_4217_with_their_minor_units() {
        assert_eq!(usd().minor_units(), 2);
        assert_eq!(Currency::parse("JPY").map(|c| c.minor_units()), Ok(0));
        assert_eq!(Currency::parse("BHD").map(|c| c.minor_units()), Ok(3));
    }

    #[test]
    fn unknown_lowercase_and_unitless_currencies_are_refused() {
        for code in ["usd", "XXX1", "ABC", "", "US", "EURO"] {
            assert!(Currency::parse(code).is_err(), "{code:?} was accepted");
        }
        assert!(matches!(
            Currency::parse("XAU"),
            Err(CurrencyError::NoMinorUnits(_))
        ));
    }

    #[test]
    fn a_plain_amount_is_kept_at_the_currency_scale() {
        let amount = Amount::parse("12.3", usd()).expect("valid");
        assert_eq!(amount.value().to_string(), "12.30");
        assert_eq!(
            Amount::parse("7", usd()).map(|a| a.value().to_string()),
            Ok("7.00".into())
        );
    }

    #[test]
    fn zero_and_negative_amounts_are_refused() {
        assert_eq!(Amount::parse("0", usd()), Err(AmountError::NotPositive));
        assert_eq!(Amount::parse("0.00", usd()), Err(AmountError::NotPositive));
        assert_eq!(Amount::parse("-5.00", usd()), Err(AmountError::NotPositive));
    }

    #[test]
    fn an_amount_with_three_decimals_is_refused_for_usd_but_not_for_bhd() {
        assert!(matches!(
            Amount::parse("1.234", usd()),
            Err(AmountError::TooPrecise { places: 3, .. })
        ));
        let bhd = Currency::parse("BHD").expect("BHD");
        assert!(Amount::parse("1.234", bhd).is_ok());
        let jpy = Currency::parse("JPY").expect("JPY");
        assert!(matches!(
            Amount::parse("1.0", jpy),
            Err(AmountError::TooPrecise { .. })
        ));
    }

    #[test]
    fn malformed_amounts_are_refused() {
        for text in [
            "", ".", "1.", ".5", "+5", " 5", "5 ", "1e3", "1,00", "0x10", "NaN", "1.2.3", "--1",
        ] {
            assert!(
                matches!(Amount::parse(text, usd()), Err(AmountError::Malformed(_))),
                "{text:?} was not refused as malformed"
            );
        }
    }

    #[test]
    fn huge_amounts_are_refused() {
        assert_eq!(
            Amount::parse("1000000000000000.01", usd()),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            Amount::parse(&"9".repeat(400), usd()),
            Err(AmountError::TooLarge)
        );
        assert!(Amount::parse("1000000000000000.00", usd()).is_ok());
    }

    #[test]
    fn every_parsed_amount_round_trips_and_is_positive() {
        // A small exhaustive property check over generated strings.
        for whole in 0..200u32 {
            for cents in 0..100u32 {
                let text = format!("{whole}.{cents:02}");
                match Amount::parse(&text, usd()) {
                    Ok(amount) => {
                        assert!(amount.value() > Decimal::ZERO);
                        assert_eq!(amount.value().to_string(), text);
                    }
                    Err(e) => {
                        assert_eq!(e, AmountError::NotPositive);
                        assert_eq!(whole + cents, 0);
                    }
                }
            }
        }
    }
}
