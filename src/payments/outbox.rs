//! The payment outbox: a payment's message is written to `payment_outbox` in the
//! transaction that creates (or redrives) it; `messaging::outbox::Relay` with
//! `Outbox::Payments` publishes committed rows to the payments topic. A table apart
//! from the stage outbox, so the two queues never wait on each other.
use deadpool_postgres::Transaction;
use uuid::Uuid;

/// The one message on the payments topic: "call the gateway for this payment". It
/// carries no amount, no card number: the worker reads the row.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SubmitPayment {
    /// Schema version (1).
    #[serde(default = "version")]
    pub v: u32,
    pub payment_id: Uuid,
}

fn version() -> u32 {
    1
}

pub async fn enqueue(tx: &Transaction<'_>, payment_id: Uuid) -> super::Result<()> {
    let payload = serde_json::to_string(&SubmitPayment { v: 1, payment_id })
        .map_err(|e| super::Error::Invariant(format!("payment message does not serialise: {e}")))?;
    let key = payment_id.to_string();
    crate::messaging::outbox::enqueue(tx, crate::messaging::outbox::Outbox::Payments, &key, &payload).await?;
    Ok(())
}
