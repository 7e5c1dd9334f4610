//! Transfers: the same-shard path completes in one transaction; the cross-shard path
//! starts here (hold + TryCredit in the outbox) and continues in `tcc`.
pub mod admission;
pub mod messages;
pub mod sweeper;
pub mod tcc;

use std::time::Duration;

use deadpool_postgres::Transaction;

use crate::{
    ledger::{self, holds, local, local::TransferRequest, TransferView},
    messaging::outbox,
    sharding::Router,
};
use messages::{Stage, TransferFacts};

/// Starts a transfer inside `tx`, a transaction on the sender's shard. Same-shard
/// transfers are completed; cross-shard ones are left `pending` with their TryCredit
/// committed to the outbox in the same transaction.
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
pub async fn start(
    tx: &Transaction<'_>,
    router: &Router,
    req: &TransferRequest<'_>,
    try_timeout: Duration,
) -> ledger::Result<TransferView> {
    if router.same_shard(req.from, req.to) {
        return local::transfer(tx, req).await;
    }
    let view = holds::place_hold(tx, req, tcc::try_deadline(try_timeout)).await?;
    let facts = TransferFacts {
        transfer_id: req.transfer_id.uuid(),
        from_user_id: req.from.to_string(),
        to_user_id: req.to.to_string(),
        currency: req.currency.to_string(),
        amount: req.amount.to_string(),
        description: req.description.map(str::to_string),
    };
    outbox::enqueue(tx, &facts.message(Stage::TryCredit)).await?;
    Ok(view)
}
