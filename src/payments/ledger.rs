//! The ledger legs of payments, inside the caller's transaction: a withdrawal's hold
//! (the same `accounts.held` mechanism as cross-shard transfers, recorded in
//! `payment_holds`), and the postings between a wallet and the gateway's clearing
//! account of this shard (`clearing:<gateway>`, one per currency).
use deadpool_postgres::Transaction;
use num_bigint::BigInt;
use uuid::Uuid;

use super::{Error, Result};
use crate::{
    domain::{Currency, UserId},
    ledger::{
        accounts,
        posting::{self, Account, Kind, Leg, Posting, System},
    },
};

/// Reserves `amount` on a wallet the caller has locked and checked.
pub async fn hold(tx: &Transaction<'_>, payment_id: Uuid, account_id: i64, amount: &str) -> Result<()> {
    tx.execute(
        "WITH h AS (
             INSERT INTO payment_holds (payment_id, account_id, amount) VALUES ($1, $2, $3::text::numeric)
         )
         UPDATE accounts SET held = held + $3::text::numeric, updated_at = now() WHERE account_id = $2",
        &[&payment_id, &account_id, &amount],
    )
    .await?;
    Ok(())
}

/// Releases an open hold; `None` when there is none (a deposit, or already released).
pub async fn release(tx: &Transaction<'_>, payment_id: Uuid, by: &str) -> Result<Option<(i64, BigInt)>> {
    let row = tx
        .query_opt(
            "WITH h AS (
                 UPDATE payment_holds SET released_at = now(), released_by = $2
                 WHERE payment_id = $1 AND released_at IS NULL
                 RETURNING account_id, amount
             )
             UPDATE accounts a SET held = a.held - h.amount, updated_at = now()
             FROM h WHERE a.account_id = h.account_id
             RETURNING a.account_id, h.amount::text",
            &[&payment_id, &by],
        )
        .await?;
    row.map(|r| -> Result<(i64, BigInt)> { Ok((r.get(0), accounts::parse_numeric(r.get(1))?)) }).transpose()
}

async fn ensure_clearing(tx: &Transaction<'_>, clearing: System, currency: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO accounts (system_name, currency) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&clearing.as_str(), &currency],
    )
    .await?;
    Ok(())
}

/// A succeeded deposit: gateway clearing -> wallet.
#[tracing::instrument(skip(tx, amount))]
pub async fn settle_deposit(
    tx: &Transaction<'_>,
    payment_id: Uuid,
    bucket: u16,
    user: &UserId,
    currency: &Currency,
    gateway: &str,
    amount: BigInt,
) -> Result<()> {
    let Some(wallet) = accounts::lock_wallets(tx, &[user], currency).await?.pop() else {
        return Err(Error::Invariant(format!("wallet of deposit {payment_id} vanished")));
    };
    let clearing = System::clearing(gateway);
    ensure_clearing(tx, clearing, currency.as_str()).await?;
    posting::post(
        tx,
        Posting {
            kind: Kind::Deposit,
            reference: Some(payment_id),
            reverses: None,
            description: None,
            bucket,
            currency: currency.as_str(),
            legs: vec![
                Leg { account: Account::System(clearing), amount: -amount.clone() },
                Leg { account: Account::Id(wallet.account_id), amount },
            ],
        },
    )
    .await?;
    Ok(())
}

/// A succeeded withdrawal: the hold is released and the wallet debited to the
/// gateway's clearing account, in that order (the debit must not push the balance
/// below a still-counted hold).
#[tracing::instrument(skip(tx))]
pub async fn settle_withdrawal(
    tx: &Transaction<'_>,
    payment_id: Uuid,
    bucket: u16,
    currency: &str,
    gateway: &str,
) -> Result<()> {
    let (account_id, amount) = release(tx, payment_id, "succeeded")
        .await?
        .ok_or_else(|| Error::Invariant(format!("withdrawal {payment_id} succeeded without an open hold")))?;
    let clearing = System::clearing(gateway);
    ensure_clearing(tx, clearing, currency).await?;
    posting::post(
        tx,
        Posting {
            kind: Kind::Withdrawal,
            reference: Some(payment_id),
            reverses: None,
            description: None,
            bucket,
            currency,
            legs: vec![
                Leg { account: Account::Id(account_id), amount: -amount.clone() },
                Leg { account: Account::System(clearing), amount },
            ],
        },
    )
    .await?;
    Ok(())
}
