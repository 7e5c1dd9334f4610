use std::fmt;

use num_bigint::BigUint;
use num_traits::Zero;

/// Amounts have at most this many decimal digits (so the largest is 10^36 - 1).
pub const MAX_AMOUNT_DIGITS: usize = 36;

/// A positive amount of money in minor units, exact at any size up to the limit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(BigUint);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("amount must be a positive integer of at most {MAX_AMOUNT_DIGITS} digits in minor units, as a string of decimal digits without sign, spaces or leading zeros")]
pub struct AmountError;

impl Amount {
    /// Strict: only `[1-9][0-9]*`, at most `MAX_AMOUNT_DIGITS` digits.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let bytes = text.as_bytes();
        let well_formed = !bytes.is_empty()
            && bytes.len() <= MAX_AMOUNT_DIGITS
            && bytes[0] != b'0'
            && bytes.iter().all(u8::is_ascii_digit);
        if !well_formed {
            return Err(AmountError);
        }
        BigUint::parse_bytes(bytes, 10).map(Amount).ok_or(AmountError)
    }

    /// From a JSON value: a string as in [`Amount::parse`], or a positive JSON integer
    /// that fits in 64 bits (larger amounts must be strings: JSON numbers lose precision).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, AmountError> {
        match value {
            serde_json::Value::String(s) => Self::parse(s),
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(v) if v > 0 => Ok(Amount(BigUint::from(v))),
                _ => Err(AmountError),
            },
            _ => Err(AmountError),
        }
    }

    /// Values read back from NUMERIC columns (trusted, may be zero).
    pub fn from_db(text: &str) -> Result<BigUint, AmountError> {
        BigUint::parse_bytes(text.as_bytes(), 10).ok_or(AmountError)
    }

    pub fn value(&self) -> &BigUint {
        &self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn rejects_everything_but_plain_positive_digits() {
        for bad in ["01", "1.0", "-5", "+5", "1e3", "", " 5", "5 ", "0x10", "0", "１", &"9".repeat(37)] {
            assert_eq!(Amount::parse(bad), Err(AmountError), "{bad:?} was accepted");
        }
        for bad in [json!(0), json!(1.5), json!(null), json!(true), json!(-5), json!([1]), json!(1e3)] {
            assert_eq!(Amount::from_json(&bad), Err(AmountError), "{bad} was accepted");
        }
    }

    #[test]
    fn accepts_big_amounts_exactly() {
        let big = format!("1{}", "0".repeat(30));
        assert_eq!(Amount::parse(&big).map(|a| a.to_string()), Ok(big.clone()));
        let max = "9".repeat(36);
        assert_eq!(Amount::parse(&max).map(|a| a.to_string()), Ok(max));
        assert_eq!(Amount::from_json(&json!(42)).map(|a| a.to_string()), Ok("42".into()));
        assert_eq!(serde_json::to_string(&Amount::parse(&big).unwrap()).unwrap(), format!("\"{big}\""));
    }

    proptest! {
        #[test]
        fn any_positive_integer_round_trips(n in 1u128..1_000_000_000_000_000_000_000_000_000_000_000_000u128) {
            let text = n.to_string();
            prop_assert_eq!(Amount::parse(&text).map(|a| a.to_string()), Ok(text));
        }

        #[test]
        fn any_string_with_a_non_digit_is_rejected(s in "[0-9]{0,5}[^0-9][0-9]{0,5}") {
            prop_assert_eq!(Amount::parse(&s), Err(AmountError));
        }
    }
}
