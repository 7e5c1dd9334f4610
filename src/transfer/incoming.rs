//! The receiver's record of an incoming transfer (`incoming_transfers`, written by its
//! Try): the facts a later ConfirmCredit credits. The message repeats them, but a
//! message is only what its sender said; the record is what this shard agreed to.
use num_bigint::BigInt;

use super::messages::StageMessage;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub from_user: String,
    pub to_user: String,
    pub currency: String,
    /// `amount::text` of the record.
    pub amount: String,
}

impl Recorded {
    /// Where `msg` differs from the record (`None`: it agrees). A difference means the
    /// sender (or someone holding a message key) contradicts the Try: never credited.
    pub fn mismatch(&self, msg: &StageMessage) -> Option<String> {
        let same_amount = match (self.amount.parse::<BigInt>(), msg.facts.amount.parse::<BigInt>()) {
            (Ok(recorded), Ok(sent)) => recorded == sent,
            _ => false,
        };
        let fields = [
            ("amount", same_amount, &self.amount, &msg.facts.amount),
            ("currency", self.currency == msg.facts.currency, &self.currency, &msg.facts.currency),
            ("to_user_id", self.to_user == msg.facts.to_user_id, &self.to_user, &msg.facts.to_user_id),
            ("from_user_id", self.from_user == msg.facts.from_user_id, &self.from_user, &msg.facts.from_user_id),
        ];
        let differing: Vec<String> = fields
            .iter()
            .filter(|(_, same, _, _)| !same)
            .map(|(name, _, recorded, sent)| format!("{name} {sent:?} (Try recorded {recorded:?})"))
            .collect();
        (!differing.is_empty())
            .then(|| format!("{} differs from the Try record: {}", msg.stage.name(), differing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::messages::{Stage, TransferFacts};

    fn facts(amount: &str, currency: &str) -> TransferFacts {
        TransferFacts {
            transfer_id: uuid::Uuid::nil(),
            from_user_id: "alice".into(),
            to_user_id: "bob".into(),
            currency: currency.into(),
            amount: amount.into(),
            description: None,
        }
    }

    fn recorded() -> Recorded {
        Recorded { from_user: "alice".into(), to_user: "bob".into(), currency: "EUR".into(), amount: "25".into() }
    }

    #[test]
    fn a_confirm_that_repeats_the_try_agrees() {
        assert_eq!(recorded().mismatch(&facts("25", "EUR").message(Stage::ConfirmCredit)), None);
        // The same number written differently is the same amount.
        assert_eq!(recorded().mismatch(&facts("025", "EUR").message(Stage::ConfirmCredit)), None);
    }

    #[test]
    fn a_confirm_with_another_amount_currency_or_receiver_is_named() {
        let why = recorded().mismatch(&facts("1000000", "EUR").message(Stage::ConfirmCredit)).expect("mismatch");
        assert!(why.contains(r#"amount "1000000" (Try recorded "25")"#), "{why}");
        let why = recorded().mismatch(&facts("25", "USD").message(Stage::ConfirmCredit)).expect("mismatch");
        assert!(why.contains("currency"), "{why}");
        let mut other = facts("25", "EUR");
        other.to_user_id = "mallory".into();
        let why = recorded().mismatch(&other.message(Stage::ConfirmCredit)).expect("mismatch");
        assert!(why.starts_with("ConfirmCredit differs from the Try record: to_user_id"), "{why}");
        assert!(recorded().mismatch(&facts("lots", "EUR").message(Stage::ConfirmCredit)).is_some());
    }
}
