//! The ledger legs of a cross-shard transfer. The state machine that decides when each
//! runs is `transfer::tcc`; these functions only move money, inside the caller's
//! transaction.
//!
//! Sender shard: `place_hold` (Try), then `debit_to_transit` (Confirm) or
//! `release_hold` (Cancel). Receiver shard: `credit_from_transit` (Confirm).
use crate::storage::Cached;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use num_bigint::BigInt;
use uuid::Uuid;

use super::{
    accounts,
    posting::{self, Account, Kind, Leg, Posting, System},
    queries::{TransferView, TRANSFER_COLUMNS},
    Error, Result,
};
use crate::domain::{Currency, RoutableId, SenderState, UserId};

use super::local::{StoredAnswer, TransferRequest};

/// Locks the sender's wallet of a cross-shard transfer and checks that the amount is
/// available; returns the wallet and the amount.
async fn lock_sender(tx: &Transaction<'_>, req: &TransferRequest<'_>) -> Result<(accounts::LockedWallet, BigInt)> {
    if req.from == req.to {
        return Err(Error::SameAccount);
    }
    let Some(wallet) = accounts::lock_wallets(tx, &[req.from], req.currency).await?.pop() else {
        return Err(accounts::missing_wallet_error(tx, req.from).await?);
    };
    let amount = BigInt::from(req.amount.value().clone());
    if wallet.available() < amount {
        return Err(Error::InsufficientFunds);
    }
    Ok((wallet, amount))
}

/// Records a cross-shard transfer in `trying` and reserves the amount on the sender's
/// wallet (`held` grows; `balance` does not move until confirmation).
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
/// `state` is the TCC state machine's initial state (`SenderState::INITIAL` in `transfer::tcc`).
pub async fn place_hold(
    tx: &Transaction<'_>,
    req: &TransferRequest<'_>,
    deadline: DateTime<Utc>,
    state: SenderState,
) -> Result<TransferView> {
    let (wallet, _) = lock_sender(tx, req).await?;
    let id = req.transfer_id.uuid();
    let amount_text = req.amount.to_string();
    let sql = format!(
        "WITH t AS (
             INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, description, route, state, try_deadline)
             VALUES ($1, $2, $3, $4, $5::text::numeric, $6, 'cross_shard', $9, $7)
             RETURNING {TRANSFER_COLUMNS}
         ), h AS (
             INSERT INTO holds (transfer_id, account_id, amount, expires_at)
             SELECT transfer_id, $8, $5::text::numeric, $7 FROM t
         ), w AS (
             UPDATE accounts SET held = held + $5::text::numeric, updated_at = now() WHERE account_id = $8
         )
         SELECT * FROM t"
    );
    let row = tx
        .cached_query_one(
            &sql,
            &[
                &id,
                &req.from.as_str(),
                &req.to.as_str(),
                &req.currency.as_str(),
                &amount_text,
                &req.description,
                &deadline,
                &wallet.account_id,
                &state.as_str(),
            ],
        )
        .await?;
    Ok(TransferView::from_row(&row))
}

/// A cross-shard transfer whose receiver is known (see `tcc::receiver_ready`): recorded
/// in `confirming` and debited to the shard's transit account at once, with no hold.
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
/// `state` is the TCC state machine's initial state of a direct credit.
pub async fn debit_direct(tx: &Transaction<'_>, req: &TransferRequest<'_>, state: SenderState) -> Result<TransferView> {
    let (wallet, amount) = lock_sender(tx, req).await?;
    let id = req.transfer_id.uuid();
    let (amount_text, state) = (req.amount.to_string(), state.as_str());
    let sql = format!(
        "INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, description, route, state, direct)
         VALUES ($1, $2, $3, $4, $5::text::numeric, $6, 'cross_shard', $7, true)
         RETURNING {TRANSFER_COLUMNS}"
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
        [&id, &req.from.as_str(), &req.to.as_str(), &req.currency.as_str(), &amount_text, &req.description, &state];
    let debit = transit_posting(tx, id, req.transfer_id.bucket(), req.currency.as_str(), wallet.account_id, -amount);
    // The funds were checked under the wallet's lock: both writes go in one round trip.
    let (row, _) = futures::try_join!(async { Ok(tx.cached_query_one(&sql, &params).await?) }, debit)?;
    Ok(TransferView::from_row(&row))
}

/// The transfer `debit_direct_in_one_call` records, as the API shows it, created at `at`
/// (microseconds, as the server stores time) in `state`.
pub fn direct_view(req: &TransferRequest<'_>, at: DateTime<Utc>, state: SenderState) -> TransferView {
    use super::queries::{status_of, TransferRoute};
    TransferView {
        transfer_id: req.transfer_id.uuid(),
        status: status_of(state.as_str()),
        state: state.as_str().to_string(),
        from_user_id: req.from.to_string(),
        to_user_id: req.to.to_string(),
        currency: req.currency.to_string(),
        amount: req.amount.to_string(),
        description: req.description.map(str::to_string),
        route: TransferRoute::CrossShard,
        reason: None,
        created_at: at,
        updated_at: at,
        completed_at: None,
        stuck_at: None,
    }
}

/// `debit_direct` with its stage message and its stored answer in one statement (V16),
/// outside any transaction of the caller's: true when it committed. False when it wrote
/// nothing because it could not simply debit (the shard does not own the sender's
/// bucket, a wallet is missing, funds are short, or the key was taken): the general path
/// (`debit_direct` in a transaction of the caller's) decides then. `answer` must be
/// `direct_view(req, at, state)` as the API serialises it; `message` is the outbox row
/// (key and payload) of the transfer's first stage.
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
pub async fn debit_direct_in_one_call(
    client: &impl GenericClient,
    req: &TransferRequest<'_>,
    at: DateTime<Utc>,
    state: SenderState,
    message: (&str, &str),
    answer: &StoredAnswer<'_>,
) -> Result<bool> {
    if req.from == req.to {
        return Ok(false);
    }
    let bucket = req.transfer_id.bucket();
    let ids = [RoutableId::new(bucket).uuid(), RoutableId::new(bucket).uuid(), RoutableId::new(bucket).uuid()];
    let amount = req.amount.to_string();
    let outcome = client
        .cached_query_one(
            "SELECT debit_direct_in_one_call($1, $2, $3, $4, $5, $6, $7, $8, $9::text::numeric, $10, $11, $12,
                                             $13, $14, $15, $16, $17, $18, $19, $20, $21)",
            &[
                &i32::from(bucket),
                &req.transfer_id.uuid(),
                &ids[0],
                &ids[1],
                &ids[2],
                &req.from.as_str(),
                &req.to.as_str(),
                &req.currency.as_str(),
                &amount,
                &req.description,
                &at,
                &state.as_str(),
                &message.0,
                &message.1,
                &answer.caller,
                &answer.key,
                &answer.request_hash,
                &(answer.status as i16),
                &answer.body,
                &(answer.bucket as i32),
                &answer.own,
            ],
        )
        .await;
    super::local::one_call_outcome(outcome, "debited")
}

/// Releases an open hold (on confirm or cancel). Returns the wallet and amount, or
/// `None` when the hold was already released (a redelivered stage).
async fn take_hold(tx: &Transaction<'_>, transfer_id: Uuid, by: &str) -> Result<Option<(i64, String)>> {
    let row = tx
        .cached_query_opt(
            "WITH h AS (
                 UPDATE holds SET released_at = now(), released_by = $2
                 WHERE transfer_id = $1 AND released_at IS NULL
                 RETURNING account_id, amount
             )
             UPDATE accounts a SET held = a.held - h.amount, updated_at = now()
             FROM h WHERE a.account_id = h.account_id
             RETURNING a.account_id, h.amount::text",
            &[&transfer_id, &by],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Cancel on the sender: the reserved amount becomes available again.
pub async fn release_hold(tx: &Transaction<'_>, transfer_id: Uuid) -> Result<bool> {
    Ok(take_hold(tx, transfer_id, "cancel").await?.is_some())
}

/// Confirm on the sender: the hold becomes a debit of the wallet against the shard's
/// transit account, which carries the money until the receiver's shard credits it.
pub async fn debit_to_transit(tx: &Transaction<'_>, transfer_id: Uuid, bucket: u16, currency: &str) -> Result<()> {
    // Release first: the debit must not push `balance` below the still-counted hold.
    let (account_id, amount) = take_hold(tx, transfer_id, "confirm")
        .await?
        .ok_or_else(|| Error::Invariant(format!("transfer {transfer_id} confirmed without an open hold")))?;
    let amount = accounts::parse_numeric(&amount)?;
    transit_posting(tx, transfer_id, bucket, currency, account_id, -amount).await
}

/// Confirm on the receiver: credit the wallet against this shard's transit account.
pub async fn credit_from_transit(
    tx: &Transaction<'_>,
    transfer_id: Uuid,
    bucket: u16,
    to: &UserId,
    currency: &Currency,
    amount: &BigInt,
) -> Result<()> {
    let Some(wallet) = accounts::lock_wallets(tx, &[to], currency).await?.pop() else {
        return Err(Error::Invariant(format!(
            "the receiver wallet of {transfer_id} is gone (wallets are never deleted)"
        )));
    };
    transit_posting(tx, transfer_id, bucket, currency.as_str(), wallet.account_id, amount.clone()).await
}

/// A cross-shard transfer's leg on one shard: `wallet` moves by `delta` against the
/// shard's transit account (a debit, `TransferDebit`, on the sender's shard; a credit,
/// `TransferCredit`, on the receiver's).
async fn transit_posting(
    tx: &Transaction<'_>,
    transfer_id: Uuid,
    bucket: u16,
    currency: &str,
    wallet: i64,
    delta: BigInt,
) -> Result<()> {
    let kind = if delta.sign() == num_bigint::Sign::Minus { Kind::TransferDebit } else { Kind::TransferCredit };
    posting::post(
        tx,
        Posting {
            kind,
            reference: Some(transfer_id),
            reverses: None,
            description: None,
            bucket,
            currency,
            legs: vec![
                Leg { account: Account::Id(wallet), amount: delta.clone() },
                Leg { account: Account::System(System::Transit), amount: -delta },
            ],
        },
    )
    .await?;
    Ok(())
}
