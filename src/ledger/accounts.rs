//! Users, wallets and system accounts; row locks in a fixed order.
use crate::storage::Cached;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use num_bigint::BigInt;

use super::{posting::System, queries::WalletView, Error, Result};
use crate::domain::{Currency, UserId};

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = User)]
pub struct UserView {
    pub user_id: String,
    pub created_at: DateTime<Utc>,
}

#[tracing::instrument(skip(client))]
pub async fn create_user(client: &impl GenericClient, user: &UserId, bucket: u32) -> Result<UserView> {
    let row = client
        .cached_query_opt(
            "INSERT INTO users (user_id, bucket) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING user_id, created_at",
            &[&user.as_str(), &(bucket as i32)],
        )
        .await?
        .ok_or(Error::UserExists)?;
    Ok(UserView { user_id: row.get(0), created_at: row.get(1) })
}

pub async fn get_user(client: &impl GenericClient, user: &UserId) -> Result<UserView> {
    let row = client
        .cached_query_opt("SELECT user_id, created_at FROM users WHERE user_id = $1", &[&user.as_str()])
        .await?
        .ok_or(Error::UserNotFound)?;
    Ok(UserView { user_id: row.get(0), created_at: row.get(1) })
}

pub async fn user_exists(client: &impl GenericClient, user: &UserId) -> Result<bool> {
    Ok(client.cached_query_opt("SELECT 1 FROM users WHERE user_id = $1", &[&user.as_str()]).await?.is_some())
}

/// Creates a wallet, and the shard's system accounts in that currency if this is the
/// shard's first wallet in it (so postings never have to create them).
#[tracing::instrument(skip(client))]
pub async fn create_wallet(client: &impl GenericClient, user: &UserId, currency: &Currency) -> Result<WalletView> {
    let systems: Vec<&str> = System::ALL.iter().map(|s| s.as_str()).collect();
    client
        .cached_execute(
            "INSERT INTO accounts (system_name, currency) SELECT unnest($1::text[]), $2
             ON CONFLICT DO NOTHING",
            &[&systems, &currency.as_str()],
        )
        .await?;
    let row = client
        .cached_query_opt(
            "INSERT INTO accounts (user_id, currency, balance)
             SELECT user_id, $2, 0 FROM users WHERE user_id = $1
             ON CONFLICT DO NOTHING
             RETURNING user_id, currency, balance::text, held::text, updated_at",
            &[&user.as_str(), &currency.as_str()],
        )
        .await?;
    match row {
        Some(row) => Ok(WalletView::from_row(&row)),
        None if user_exists(client, user).await? => Err(Error::WalletExists),
        None => Err(Error::UserNotFound),
    }
}

/// A wallet locked `FOR UPDATE` in the current transaction.
#[derive(Debug, Clone)]
pub struct LockedWallet {
    pub account_id: i64,
    pub user_id: String,
    pub balance: BigInt,
    pub held: BigInt,
}

impl LockedWallet {
    pub fn available(&self) -> BigInt {
        &self.balance - &self.held
    }
}

/// Locks the wallets of `users` in `currency`, always in account-id order, so two
/// transactions touching the same wallets cannot deadlock. Missing wallets are absent
/// from the result.
#[tracing::instrument(skip(client))]
pub async fn lock_wallets(
    client: &impl GenericClient,
    users: &[&UserId],
    currency: &Currency,
) -> Result<Vec<LockedWallet>> {
    let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    let rows = client
        .cached_query(
            "SELECT account_id, user_id, balance::text, held::text FROM accounts
             WHERE user_id = ANY($1) AND currency = $2
             ORDER BY account_id FOR UPDATE",
            &[&ids, &currency.as_str()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(LockedWallet {
                account_id: r.get(0),
                user_id: r.get(1),
                balance: parse_numeric(r.get(2))?,
                held: parse_numeric(r.get(3))?,
            })
        })
        .collect()
}

/// Why a user has no wallet in a currency: no such user, or no such wallet.
pub async fn missing_wallet_error(client: &impl GenericClient, user: &UserId) -> Result<Error> {
    Ok(if user_exists(client, user).await? { Error::WalletNotFound } else { Error::UserNotFound })
}

pub fn parse_numeric(text: &str) -> Result<BigInt> {
    text.parse().map_err(|_| Error::Invariant(format!("not an integer: {text}")))
}

/// Locks every wallet of `users` (all currencies) in account order, as `lock_wallets`
/// does: a transaction that writes many of them (an atomic batch) takes them all first,
/// so it cannot deadlock with another that does the same.
pub async fn lock_users_wallets(client: &impl GenericClient, users: &[&str]) -> Result<()> {
    client
        .cached_execute("SELECT 1 FROM accounts WHERE user_id = ANY($1) ORDER BY account_id FOR UPDATE", &[&users])
        .await?;
    Ok(())
}
