//! Transfers: the same-shard path completes in one transaction; the cross-shard path
//! starts here (a debit + DirectCredit, or a hold + TryCredit, in the outbox) and
//! continues in `tcc`.
pub mod admission;
mod error;
pub mod incoming;
pub mod messages;
pub mod sweeper;
pub mod tcc;
pub mod worker;

use std::time::Duration;

use deadpool_postgres::Transaction;

use crate::{
    domain::{Currency, UserId},
    ledger::{holds, local, local::TransferRequest, TransferView},
    sharding::Router,
};
pub use error::{Error, Result};
use messages::{Stage, TransferFacts};
use tcc::SenderState;

/// How a transfer goes, decided before its transaction starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Both users on one shard: completed in one transaction, which checks that the
    /// shard owns the receiver's bucket too.
    Local { receiver_bucket: u32 },
    /// The receiver's wallet was found by a read on its shard: debit now, DirectCredit.
    CrossDirect,
    /// Try/Confirm/Cancel: hold now, TryCredit.
    Cross,
}

impl Route {
    pub async fn decide(
        router: &Router,
        known: &tcc::KnownReceivers,
        from: &UserId,
        to: &UserId,
        currency: &Currency,
        direct: bool,
    ) -> Self {
        if router.same_shard(from, to) {
            Route::Local { receiver_bucket: router.bucket_of_user(to) }
        } else if direct && tcc::receiver_ready(router, known, to, currency.as_str()).await {
            Route::CrossDirect
        } else {
            Route::Cross
        }
    }
}

/// A same-shard transfer completed in one statement with its stored answer, outside any
/// transaction of the caller's: true when it committed; false when it wrote nothing and
/// the caller must `start` it in a transaction (see `local::transfer_in_one_call`).
pub async fn complete_local_in_one_call(
    client: &impl deadpool_postgres::GenericClient,
    req: &TransferRequest<'_>,
    receiver_bucket: u32,
    at: chrono::DateTime<chrono::Utc>,
    answer: &local::StoredAnswer<'_>,
) -> Result<bool> {
    Ok(local::transfer_in_one_call(client, req, receiver_bucket, at, answer).await?)
}

/// The transfer a direct cross-shard start records, as the API shows it (`start_direct_in_one_call`).
pub fn direct_view(req: &TransferRequest<'_>, at: chrono::DateTime<chrono::Utc>) -> TransferView {
    holds::direct_view(req, at, SenderState::INITIAL_DIRECT)
}

/// A cross-shard transfer whose receiver was found ready (`Route::CrossDirect`) started
/// in one statement with its DirectCredit and its stored answer, outside any transaction
/// of the caller's: true when it committed; false when it wrote nothing and the caller
/// must `start` it in a transaction (see `holds::debit_direct_in_one_call`). `answer`
/// must be `direct_view(req, at)` as the API serialises it.
pub async fn start_direct_in_one_call(
    client: &impl deadpool_postgres::GenericClient,
    req: &TransferRequest<'_>,
    at: chrono::DateTime<chrono::Utc>,
    answer: &local::StoredAnswer<'_>,
) -> Result<bool> {
    let payload = facts_of(req).message(Stage::DirectCredit).payload()?;
    let key = req.transfer_id.uuid().to_string();
    Ok(holds::debit_direct_in_one_call(client, req, at, SenderState::INITIAL_DIRECT, (&key, &payload), answer).await?)
}

fn facts_of(req: &TransferRequest<'_>) -> TransferFacts {
    TransferFacts {
        transfer_id: req.transfer_id.uuid(),
        from_user_id: req.from.to_string(),
        to_user_id: req.to.to_string(),
        currency: req.currency.to_string(),
        amount: req.amount.to_string(),
        description: req.description.map(str::to_string),
    }
}

/// Same-shard transfers of one caller and one shard in one transaction and one commit
/// (`local::transfer_batch`); items it did not complete or refuse are the caller's to
/// `start`, and so is every item when a key was taken meanwhile (nothing committed).
pub async fn complete_local_batch(
    client: &mut deadpool_postgres::Client,
    items: &[local::BatchItem<'_>],
    at: chrono::DateTime<chrono::Utc>,
    caller: &str,
    refusal: &[u8],
) -> Result<Vec<local::BatchOutcome>> {
    let tx = client.transaction().await.map_err(crate::ledger::Error::from)?;
    match local::transfer_batch(&tx, items, at, caller, refusal).await? {
        Some(outcomes) => {
            tx.commit().await.map_err(crate::ledger::Error::from)?;
            Ok(outcomes)
        }
        None => {
            tx.rollback().await.map_err(crate::ledger::Error::from)?;
            Ok(vec![local::BatchOutcome::NotDone; items.len()])
        }
    }
}

/// Starts a transfer inside `tx`, a transaction on the sender's shard. Same-shard
/// transfers are completed; cross-shard ones are left `pending` with their first stage
/// (DirectCredit or TryCredit) committed to the outbox in the same transaction.
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
pub async fn start(
    tx: &Transaction<'_>,
    route: Route,
    req: &TransferRequest<'_>,
    try_timeout: Duration,
) -> Result<TransferView> {
    let (view, stage) = match route {
        Route::Local { receiver_bucket } => {
            crate::sharding::ownership::check_write(tx, receiver_bucket).await.map_err(crate::ledger::Error::from)?;
            return Ok(local::transfer(tx, req).await?);
        }
        Route::CrossDirect => (holds::debit_direct(tx, req, SenderState::INITIAL_DIRECT).await?, Stage::DirectCredit),
        Route::Cross => {
            let deadline = tcc::try_deadline(try_timeout);
            (holds::place_hold(tx, req, deadline, SenderState::INITIAL).await?, Stage::TryCredit)
        }
    };
    messages::enqueue(tx, &facts_of(req).message(stage)).await?;
    Ok(view)
}
