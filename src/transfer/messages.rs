//! The stage messages of a cross-shard transfer (schema version 1; catalog in
//! docs/EVENTS.md). Every message carries the whole transfer so any instance can route
//! and handle it without asking another shard; the Kafka key is the transfer id, so one
//! transfer's stages stay in order on one partition.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Stage {
    /// Sender -> receiver: reserve a credit (the sender holds the funds).
    TryCredit,
    /// Receiver -> sender: the answer to TryCredit.
    Tried { ok: bool, reason: Option<String> },
    /// Sender -> receiver: the sender has debited; credit the receiver.
    ConfirmCredit,
    /// Sender -> receiver, instead of TryCredit + ConfirmCredit: the sender found the
    /// receiver's user and wallet by a read (the receiver's Try reserves nothing and
    /// users and wallets are never removed, so that read is the Try) and has debited;
    /// credit the receiver.
    DirectCredit,
    /// Sender -> receiver: the transfer is cancelled; drop the reserved credit.
    CancelCredit,
    /// Receiver -> sender: the receiver was credited.
    Confirmed,
    /// Receiver -> sender: the CancelCredit was handled (the receiver's record is
    /// final); the sender stops re-driving CancelCredit.
    Cancelled,
}

impl Stage {
    /// Whether the receiver's shard handles this stage (else the sender's).
    pub fn for_receiver(&self) -> bool {
        matches!(self, Stage::TryCredit | Stage::ConfirmCredit | Stage::DirectCredit | Stage::CancelCredit)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Stage::TryCredit => "TryCredit",
            Stage::Tried { .. } => "Tried",
            Stage::ConfirmCredit => "ConfirmCredit",
            Stage::DirectCredit => "DirectCredit",
            Stage::CancelCredit => "CancelCredit",
            Stage::Confirmed => "Confirmed",
            Stage::Cancelled => "Cancelled",
        }
    }
}

/// A stage as it travels: the stage, the transfer it is about, and when it was sent.
/// The facts are flattened, so the wire form is one flat JSON object (docs/EVENTS.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMessage {
    pub v: u32,
    #[serde(flatten)]
    pub stage: Stage,
    #[serde(flatten)]
    pub facts: TransferFacts,
    pub sent_at: DateTime<Utc>,
}

/// The transfer a message is about, as both shards know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferFacts {
    pub transfer_id: Uuid,
    pub from_user_id: String,
    pub to_user_id: String,
    pub currency: String,
    pub amount: String,
    pub description: Option<String>,
}

/// The columns of `transfers` that `TransferFacts::from_row` reads, in its order.
/// A macro so that statements on the hot path can be `concat!`ed at compile time.
macro_rules! facts_columns {
    () => {
        "transfer_id, from_user, to_user, currency, amount::text, description"
    };
}
pub(crate) use facts_columns;
pub const FACTS_COLUMNS: &str = facts_columns!();

impl TransferFacts {
    /// From a row whose columns `at..at + 6` are `FACTS_COLUMNS`.
    pub fn from_row(row: &tokio_postgres::Row, at: usize) -> Self {
        Self {
            transfer_id: row.get(at),
            from_user_id: row.get(at + 1),
            to_user_id: row.get(at + 2),
            currency: row.get(at + 3),
            amount: row.get(at + 4),
            description: row.get(at + 5),
        }
    }

    pub fn message(&self, stage: Stage) -> StageMessage {
        StageMessage { v: SCHEMA_VERSION, stage, facts: self.clone(), sent_at: Utc::now() }
    }
}

impl StageMessage {
    /// The outbox row's payload: the message's wire form (docs/EVENTS.md).
    pub fn payload(&self) -> super::Result<String> {
        serde_json::to_string(self)
            .map_err(|e| super::Error::Invariant(format!("stage message does not serialise: {e}")))
    }
}

/// Writes a stage message to the stage outbox in the caller's transaction.
pub async fn enqueue(tx: &deadpool_postgres::Transaction<'_>, msg: &StageMessage) -> super::Result<()> {
    let payload = msg.payload()?;
    let key = msg.facts.transfer_id.to_string();
    crate::messaging::outbox::enqueue(tx, crate::messaging::outbox::Outbox::Stages, &key, &payload).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_a_stable_wire_form() {
        let facts = TransferFacts {
            transfer_id: Uuid::nil(),
            from_user_id: "alice".into(),
            to_user_id: "bob".into(),
            currency: "EUR".into(),
            amount: "100".into(),
            description: None,
        };
        let msg = facts.message(Stage::Tried { ok: false, reason: Some("user_not_found".into()) });
        let json: serde_json::Value = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["type"], "Tried");
        assert_eq!(json["ok"], false);
        assert_eq!(json["reason"], "user_not_found");
        assert_eq!(json["amount"], "100");
        let back: StageMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back, msg);
        let try_credit: StageMessage =
            serde_json::from_str(&serde_json::to_string(&facts.message(Stage::TryCredit)).unwrap()).unwrap();
        assert_eq!(try_credit.stage, Stage::TryCredit);
    }
}
