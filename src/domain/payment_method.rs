//! Payment methods: a card number (Luhn) or an IBAN (mod 97), parsed once. The full
//! value exists in clear only in memory (`payments::method::Sealer` stores it sealed);
//! it is shown and logged masked (last four). Shared by the payments core and the
//! gateway clients, which send it.
use serde::{Deserialize, Serialize};

/// A card (12-19 digits passing the Luhn check; spaces are ignored) or an IBAN
/// (passing its mod-97 check; spaces are ignored).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[schema(as = PaymentMethodInput)]
pub enum PaymentMethod {
    Card {
        #[schema(example = "4242 4242 4242 4242")]
        number: String,
    },
    Iban {
        #[schema(example = "DE89 3704 0044 0532 0130 00")]
        iban: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MethodType {
    Card,
    Iban,
}

impl MethodType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Iban => "iban",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Card, Self::Iban].into_iter().find(|t| t.as_str() == text)
    }
}

/// The payment method as responses and logs show it: its type and last four characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = MaskedPaymentMethod)]
pub struct MaskedMethod {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: MethodType,
    #[schema(example = "4242")]
    pub last4: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidMethod(pub &'static str);

impl std::fmt::Debug for PaymentMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.masked();
        write!(f, "{}(…{})", m.kind.as_str(), m.last4)
    }
}

impl PaymentMethod {
    /// `{"type": "card", "number": "..."}` or `{"type": "iban", "iban": "..."}`; spaces
    /// are ignored, anything else is refused.
    pub fn parse(value: &serde_json::Value) -> Result<Self, InvalidMethod> {
        let kind = value.get("type").and_then(|t| t.as_str());
        let field = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .map(|s| s.chars().filter(|c| *c != ' ').collect::<String>())
                .ok_or(InvalidMethod("payment_method needs its number"))
        };
        match kind {
            Some("card") => {
                let number = field("number")?;
                if !(12..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) || !luhn(&number) {
                    return Err(InvalidMethod("card number must be 12-19 digits passing the Luhn check"));
                }
                Ok(Self::Card { number })
            }
            Some("iban") => {
                let iban = field("iban")?.to_ascii_uppercase();
                if !iban_ok(&iban) {
                    return Err(InvalidMethod("IBAN is malformed or fails its mod-97 check"));
                }
                Ok(Self::Iban { iban })
            }
            _ => Err(InvalidMethod("payment_method.type must be 'card' or 'iban'")),
        }
    }

    pub fn method_type(&self) -> MethodType {
        match self {
            Self::Card { .. } => MethodType::Card,
            Self::Iban { .. } => MethodType::Iban,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.method_type().as_str()
    }

    /// The full number (card number or IBAN), for the gateway call only.
    pub fn secret(&self) -> &str {
        match self {
            Self::Card { number } => number,
            Self::Iban { iban } => iban,
        }
    }

    pub fn masked(&self) -> MaskedMethod {
        let s = self.secret();
        MaskedMethod { kind: self.method_type(), last4: s[s.len().saturating_sub(4)..].to_string() }
    }
}

pub fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

pub fn iban_ok(iban: &str) -> bool {
    let b = iban.as_bytes();
    let shape = (15..=34).contains(&b.len())
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..4].iter().all(u8::is_ascii_digit)
        && b.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if !shape {
        return false;
    }
    let rearranged = b[4..].iter().chain(&b[..4]);
    let mut rem: u32 = 0;
    for &c in rearranged {
        let v = if c.is_ascii_digit() { u32::from(c - b'0') } else { u32::from(c - b'A') + 10 };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cards_pass_luhn_and_ibans_pass_mod_97() {
        let card = PaymentMethod::parse(&json!({"type": "card", "number": "4242 4242 4242 4242"})).unwrap();
        assert_eq!(card.masked(), MaskedMethod { kind: MethodType::Card, last4: "4242".into() });
        // Responses and idempotency fingerprints carry this form.
        assert_eq!(serde_json::to_value(card.masked()).expect("json"), json!({"type": "card", "last4": "4242"}));
        assert!(PaymentMethod::parse(&json!({"type": "card", "number": "4242424242424241"})).is_err());
        let iban = PaymentMethod::parse(&json!({"type": "iban", "iban": "DE89 3704 0044 0532 0130 00"})).unwrap();
        assert_eq!(iban.masked().last4, "3000");
        assert_eq!(MethodType::parse(iban.kind()), Some(MethodType::Iban));
        assert!(PaymentMethod::parse(&json!({"type": "iban", "iban": "DE88370400440532013000"})).is_err());
        for bad in [json!({"type": "cash"}), json!({"number": "4242424242424242"}), json!("x"), json!({"type": "card"})]
        {
            assert!(PaymentMethod::parse(&bad).is_err(), "{bad}");
        }
        assert!(!format!("{card:?}").contains("42424242"));
    }
}
