//! Read models: wallets, entry history and transfers, as the API shows them.
use crate::storage::Cached;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{accounts, posting::Kind, Error, Result};
use crate::domain::{
    transfer_state::{state_sql, states_sql},
    Currency, ReceiverState, SenderState, UserId,
};

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Wallet)]
pub struct WalletView {
    pub user_id: String,
    pub currency: String,
    /// Minor units, as a string.
    #[schema(example = "5000")]
    pub balance: String,
    /// Held for cross-shard transfers in flight.
    pub held: String,
    /// `balance - held`.
    pub available: String,
    pub updated_at: DateTime<Utc>,
}

impl WalletView {
    /// From `user_id, currency, balance::text, held::text, updated_at`.
    pub fn from_row(row: &Row) -> Self {
        let balance: String = row.get(2);
        let held: String = row.get(3);
        let available = match (accounts::parse_numeric(&balance), accounts::parse_numeric(&held)) {
            (Ok(b), Ok(h)) => (b - h).to_string(),
            _ => balance.clone(),
        };
        Self { user_id: row.get(0), currency: row.get(1), balance, held, available, updated_at: row.get(4) }
    }
}

const WALLET_COLUMNS: &str = "user_id, currency, balance::text, held::text, updated_at";

pub async fn get_wallet(client: &impl GenericClient, user: &UserId, currency: &Currency) -> Result<WalletView> {
    let sql = format!("SELECT {WALLET_COLUMNS} FROM accounts WHERE user_id = $1 AND currency = $2");
    match client.cached_query_opt(&sql, &[&user.as_str(), &currency.as_str()]).await? {
        Some(row) => Ok(WalletView::from_row(&row)),
        None => Err(accounts::missing_wallet_error(client, user).await?),
    }
}

pub async fn list_wallets(client: &impl GenericClient, user: &UserId) -> Result<Vec<WalletView>> {
    let sql = format!("SELECT {WALLET_COLUMNS} FROM accounts WHERE user_id = $1 ORDER BY currency");
    Ok(client.cached_query(&sql, &[&user.as_str()]).await?.iter().map(WalletView::from_row).collect())
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Entry)]
pub struct EntryView {
    pub entry_id: Uuid,
    pub kind: Kind,
    /// Signed minor units: negative for a debit.
    #[schema(example = "-1000")]
    pub amount: String,
    pub balance_after: Option<String>,
    /// The transfer id, for transfer entries; the payment id, for deposit and
    /// withdrawal entries.
    pub reference: Option<Uuid>,
    pub posting_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// A page of a wallet's entries, newest first. The cursor is the position of the last
/// entry of the previous page.
pub async fn entries_page(
    client: &impl GenericClient,
    user: &UserId,
    currency: &Currency,
    limit: i64,
    before: Option<i64>,
) -> Result<(Vec<EntryView>, Option<i64>)> {
    let account: Option<i64> = client
        .cached_query_opt(
            "SELECT account_id FROM accounts WHERE user_id = $1 AND currency = $2",
            &[&user.as_str(), &currency.as_str()],
        )
        .await?
        .map(|r| r.get(0));
    let Some(account) = account else {
        return Err(accounts::missing_wallet_error(client, user).await?);
    };
    let rows = client
        .cached_query(
            "SELECT e.seq, e.entry_id, p.kind, e.amount::text, e.balance_after::text, p.reference, p.posting_id, e.created_at
             FROM entries e JOIN postings p USING (posting_id)
             WHERE e.account_id = $1 AND e.seq < coalesce($2, 9223372036854775807)
             ORDER BY e.seq DESC LIMIT $3",
            &[&account, &before, &(limit + 1)],
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let page = rows
        .iter()
        .take(limit as usize)
        .map(|r| {
            let kind: &str = r.get(2);
            Ok(EntryView {
                entry_id: r.get(1),
                kind: Kind::parse(kind).ok_or_else(|| Error::Invariant(format!("posting kind {kind}")))?,
                amount: r.get(3),
                balance_after: r.get(4),
                reference: r.get(5),
                posting_id: r.get(6),
                created_at: r.get(7),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = if more { rows.get(limit as usize - 1).map(|r| r.get(0)) } else { None };
    Ok((page, next))
}

/// What clients see of a transfer's state: in-flight states are all `pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    Pending,
    Completed,
    Cancelled,
}

/// Whether both users are on one shard (`transfers.route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferRoute {
    Local,
    CrossShard,
}

/// A transfer as the API shows it; `status` hides the internal TCC states. Its
/// OpenAPI schema (`Transfer`) is derived here, so it cannot drift from what is sent.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Transfer)]
pub struct TransferView {
    pub transfer_id: Uuid,
    pub status: TransferStatus,
    /// The internal TCC state (`trying`, `confirming`, `completed`, `cancelled`).
    pub state: String,
    pub from_user_id: String,
    pub to_user_id: String,
    pub currency: String,
    pub amount: String,
    pub description: Option<String>,
    pub route: TransferRoute,
    /// Why it was cancelled: `user_not_found`, `currency_mismatch`, `timeout`, `rejected`.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Only on a transfer the sweeper stopped re-driving (`GET /v1/admin/transfers?state=stuck`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck_at: Option<DateTime<Utc>>,
}

pub const TRANSFER_COLUMNS: &str = "transfer_id, state, from_user, to_user, currency, amount::text, description, \
                                    route, reason, created_at, updated_at, completed_at, stuck_at";

impl TransferView {
    pub fn from_row(row: &Row) -> Self {
        let state: String = row.get(1);
        Self {
            transfer_id: row.get(0),
            status: status_of(&state),
            state,
            from_user_id: row.get(2),
            to_user_id: row.get(3),
            currency: row.get(4),
            amount: row.get(5),
            description: row.get(6),
            // The schema's CHECK allows only these two.
            route: match row.get::<_, &str>(7) {
                "local" => TransferRoute::Local,
                _ => TransferRoute::CrossShard,
            },
            reason: row.get(8),
            created_at: row.get(9),
            updated_at: row.get(10),
            completed_at: row.get(11),
            stuck_at: row.get(12),
        }
    }
}

/// The public status of an internal state: in-flight states are all `pending`.
pub fn status_of(state: &str) -> TransferStatus {
    use {ReceiverState as R, SenderState as S};
    match (S::parse(state), R::parse(state)) {
        (Some(S::Completed), _) | (_, Some(R::Confirmed)) => TransferStatus::Completed,
        (Some(S::Cancelled), _) | (_, Some(R::Cancelled | R::Rejected)) => TransferStatus::Cancelled,
        _ => TransferStatus::Pending,
    }
}

pub async fn get_transfer(client: &impl GenericClient, transfer_id: Uuid) -> Result<TransferView> {
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = $1");
    let row = client.cached_query_opt(&sql, &[&transfer_id]).await?.ok_or(Error::TransferNotFound)?;
    Ok(TransferView::from_row(&row))
}

/// A user's transfers, outgoing and incoming, newest first (transfer ids sort by time).
/// Incoming cross-shard transfers come from the receiver's branch records, whose state
/// lags the sender's by at most one message.
pub async fn user_transfers(
    client: &impl GenericClient,
    user: &UserId,
    limit: i64,
    before: Option<Uuid>,
) -> Result<(Vec<TransferView>, Option<Uuid>)> {
    let sql = format!(
        "SELECT * FROM (
             SELECT {TRANSFER_COLUMNS} FROM transfers
             WHERE (from_user = $1 OR to_user = $1) AND ($2::uuid IS NULL OR transfer_id < $2)
             UNION ALL
             SELECT transfer_id, state, from_user, to_user, currency, amount::text, description,
                    'cross_shard', reason, created_at, updated_at,
                    CASE WHEN state = {confirmed} THEN updated_at END, NULL::timestamptz
             FROM incoming_transfers
             WHERE to_user = $1 AND ($2::uuid IS NULL OR transfer_id < $2)
         ) t ORDER BY transfer_id DESC LIMIT $3",
        confirmed = state_sql!(Receiver::Confirmed)
    );
    let rows = client.cached_query(&sql, &[&user.as_str(), &before, &(limit + 1)]).await?;
    let more = rows.len() as i64 > limit;
    let page: Vec<TransferView> = rows.iter().take(limit as usize).map(TransferView::from_row).collect();
    let next = if more { page.last().map(|t| t.transfer_id) } else { None };
    Ok((page, next))
}

/// A page of this shard's transfers (as their sender's shard records them) in `state`,
/// or marked stuck when `state` is `stuck`, newest first.
pub async fn transfers_in_state(
    client: &impl GenericClient,
    state: &str,
    limit: i64,
    before: Option<Uuid>,
) -> Result<Vec<TransferView>> {
    // Two statements, so that the stuck listing can use its partial index.
    let filter = if state == "stuck" {
        concat!(
            "stuck_at IS NOT NULL AND $1 = 'stuck' AND (state IN ",
            states_sql!(Sender::Trying, Sender::Confirming),
            " OR (state = ",
            state_sql!(Sender::Cancelled),
            " AND cancel_acked_at IS NULL))"
        )
    } else {
        "state = $1"
    };
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE {filter} AND ($2::uuid IS NULL OR transfer_id < $2)
           AND EXISTS (SELECT 1 FROM bucket_owners b WHERE b.bucket = id_bucket(transfer_id) AND b.state = 'owned')
         ORDER BY transfer_id DESC LIMIT $3"
    );
    let rows = client.query(&sql, &[&state, &before, &limit]).await?;
    Ok(rows.iter().map(TransferView::from_row).collect())
}
