//! Ledger rules that complete inside one shard transaction: operator adjustments,
//! same-shard transfers and reversals.
use crate::storage::Cached;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use num_bigint::BigInt;
use uuid::Uuid;

use super::{
    accounts::{self, parse_numeric},
    posting::{self, Account, Kind, Leg, PostedEntry, Posting, System},
    queries::{TransferView, TRANSFER_COLUMNS},
    Error, Result,
};
use crate::domain::{transfer_state::state_sql, Amount, Currency, RoutableId, UserId};

/// The read models derive their OpenAPI schema here, so the document cannot drift from
/// what is serialised (a derive only: the ledger knows nothing of HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Credit,
    Debit,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AdjustmentView {
    pub entry_id: Uuid,
    pub posting_id: Uuid,
    pub user_id: String,
    pub currency: String,
    pub amount: String,
    pub direction: Direction,
    pub balance_after: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

fn signed(amount: &Amount) -> BigInt {
    BigInt::from(amount.value().clone())
}

/// Credits or debits a wallet against the shard's adjustments account.
#[tracing::instrument(skip(tx, amount))]
pub async fn adjust(
    tx: &Transaction<'_>,
    bucket: u16,
    user: &UserId,
    currency: &Currency,
    amount: &Amount,
    direction: Direction,
    reason: &str,
) -> Result<AdjustmentView> {
    let wallet = match accounts::lock_wallets(tx, &[user], currency).await?.pop() {
        Some(w) => w,
        None => return Err(accounts::missing_wallet_error(tx, user).await?),
    };
    let delta = match direction {
        Direction::Credit => signed(amount),
        Direction::Debit if wallet.available() >= signed(amount) => -signed(amount),
        Direction::Debit => return Err(Error::InsufficientFunds),
    };
    let (posting_id, entries) = posting::post(
        tx,
        Posting {
            kind: Kind::Adjustment,
            reference: None,
            reverses: None,
            description: Some(reason),
            bucket,
            currency: currency.as_str(),
            legs: vec![
                Leg { account: Account::Id(wallet.account_id), amount: delta.clone() },
                Leg { account: Account::System(System::Adjustments), amount: -delta },
            ],
        },
    )
    .await?;
    let entry = wallet_entry(&entries, wallet.account_id)?;
    Ok(AdjustmentView {
        entry_id: entry.entry_id,
        posting_id,
        user_id: user.to_string(),
        currency: currency.to_string(),
        amount: amount.to_string(),
        direction,
        balance_after: entry.balance_after.clone(),
        reason: reason.to_string(),
        created_at: entry.created_at,
    })
}

fn wallet_entry(entries: &[PostedEntry], account_id: i64) -> Result<&PostedEntry> {
    entries
        .iter()
        .find(|e| e.account_id == account_id)
        .ok_or_else(|| Error::Invariant("posting lost its wallet leg".into()))
}

pub struct TransferRequest<'a> {
    pub transfer_id: RoutableId,
    pub from: &'a UserId,
    pub to: &'a UserId,
    pub currency: &'a Currency,
    pub amount: &'a Amount,
    pub description: Option<&'a str>,
}

/// A transfer between two users of this shard: one transaction, completed at once.
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
pub async fn transfer(tx: &Transaction<'_>, req: &TransferRequest<'_>) -> Result<TransferView> {
    if req.from == req.to {
        return Err(Error::SameAccount);
    }
    let wallets = accounts::lock_wallets(tx, &[req.from, req.to], req.currency).await?;
    let find = |user: &UserId| wallets.iter().find(|w| w.user_id == user.as_str());
    let Some(sender) = find(req.from) else {
        return Err(accounts::missing_wallet_error(tx, req.from).await?);
    };
    let Some(receiver) = find(req.to) else {
        return Err(match accounts::missing_wallet_error(tx, req.to).await? {
            Error::WalletNotFound => Error::CurrencyMismatch,
            other => other,
        });
    };
    let amount = signed(req.amount);
    if sender.available() < amount {
        return Err(Error::InsufficientFunds);
    }
    let id = req.transfer_id.uuid();
    let posting = posting::post(
        tx,
        Posting {
            kind: Kind::Transfer,
            reference: Some(id),
            reverses: None,
            description: req.description,
            bucket: req.transfer_id.bucket(),
            currency: req.currency.as_str(),
            legs: vec![
                Leg { account: Account::Id(sender.account_id), amount: -amount.clone() },
                Leg { account: Account::Id(receiver.account_id), amount },
            ],
        },
    );
    let sql = format!(
        "INSERT INTO transfers (transfer_id, from_user, to_user, currency, amount, description, route, state, completed_at)
         VALUES ($1, $2, $3, $4, $5::text::numeric, $6, 'local', {}, now())
         RETURNING {TRANSFER_COLUMNS}",
        state_sql!(Sender::Completed)
    );
    let amount_text = req.amount.to_string();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&id, &req.from.as_str(), &req.to.as_str(), &req.currency.as_str(), &amount_text, &req.description];
    // Both statements are sent before either answer is awaited: one round trip saved.
    let (_, row) = futures::try_join!(posting, async { Ok(tx.cached_query_one(&sql, &params).await?) })?;
    Ok(TransferView::from_row(&row))
}

/// What an idempotent request stores beside its effect: its key and fingerprint, and the
/// answer a retry replays (`api::idempotency`).
pub struct StoredAnswer<'a> {
    pub caller: &'a str,
    pub key: &'a str,
    pub request_hash: &'a [u8],
    pub status: u16,
    pub body: &'a [u8],
    /// The bucket the request routed by, recorded unless `own` finds it through the caller.
    pub bucket: u32,
    pub own: bool,
}

/// The transfer `transfer_in_one_call` records, as the API shows it, completed at `at`
/// (microseconds, as the server stores time).
pub fn completed_view(req: &TransferRequest<'_>, at: DateTime<Utc>) -> TransferView {
    use super::queries::{TransferRoute, TransferStatus};
    TransferView {
        transfer_id: req.transfer_id.uuid(),
        status: TransferStatus::Completed,
        state: crate::domain::SenderState::Completed.as_str().to_string(),
        from_user_id: req.from.to_string(),
        to_user_id: req.to.to_string(),
        currency: req.currency.to_string(),
        amount: req.amount.to_string(),
        description: req.description.map(str::to_string),
        route: TransferRoute::Local,
        reason: None,
        created_at: at,
        updated_at: at,
        completed_at: Some(at),
        stuck_at: None,
    }
}

/// A same-shard transfer and its stored answer in one statement (V13): true when it
/// committed. False when it wrote nothing because it could not simply complete (the
/// shard does not own a bucket, a wallet is missing, funds are short, or the key was
/// taken): the general path (`transfer` in a transaction of the caller's) decides then.
/// `answer` must be `completed_view(req, at)` as the API serialises it.
#[tracing::instrument(skip_all, fields(transfer_id = %req.transfer_id))]
pub async fn transfer_in_one_call(
    client: &impl GenericClient,
    req: &TransferRequest<'_>,
    receiver_bucket: u32,
    at: DateTime<Utc>,
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
            "SELECT transfer_in_one_call($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::numeric, $11, $12,
                                         $13, $14, $15, $16, $17, $18, $19)",
            &[
                &(answer.bucket as i32),
                &(receiver_bucket as i32),
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
    match outcome {
        Ok(row) => Ok(row.get::<_, &str>(0) == "completed"),
        Err(e) if e.code().is_some_and(|c| c.code() == KEY_TAKEN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// V13's SQLSTATE for a key another request stored first (everything rolled back).
const KEY_TAKEN: &str = "SW001";

/// One item of `transfer_batch`: the transfer, the receiver's bucket and the answer a
/// completion stores beside it (`completed_view` as the API serialises it).
pub struct BatchItem<'a> {
    pub req: TransferRequest<'a>,
    pub receiver_bucket: u32,
    pub answer: StoredAnswer<'a>,
}

/// What `transfer_batch` did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Written with its key and `answer`.
    Completed,
    /// Refused for want of funds; its key was stored with the `refusal` given.
    InsufficientFunds,
    /// Nothing written (a bucket not owned here, a wallet missing, one user on both
    /// sides, the key taken): the caller sends it the general way, which decides.
    NotDone,
}

/// Same-shard transfers of one caller in one statement and one commit (V15), each
/// decided in order under locks the batch takes once: every bucket's claim in bucket
/// order, then every wallet in account order, so concurrent batches cannot deadlock.
/// All items are on `client`'s shard as the caller's map says; the function checks it.
/// `refusal` is the body a 422 `insufficient_funds` stores under an item's key.
#[tracing::instrument(skip_all, fields(items = items.len()))]
pub async fn transfer_batch(
    client: &impl GenericClient,
    items: &[BatchItem<'_>],
    at: DateTime<Utc>,
    caller: &str,
    refusal: &[u8],
) -> Result<Vec<BatchOutcome>> {
    let n = items.len();
    let mut from_buckets = Vec::with_capacity(n);
    let mut to_buckets = Vec::with_capacity(n);
    let (mut t_ids, mut p_ids, mut from_entries, mut to_entries) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut from_users, mut to_users, mut curs, mut amts, mut descrs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut keys, mut hashes, mut bodies, mut owns) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for item in items {
        let (req, answer) = (&item.req, &item.answer);
        if answer.caller != caller {
            return Err(Error::Invariant("a batch stores every key under one caller".into()));
        }
        let bucket = req.transfer_id.bucket();
        from_buckets.push(answer.bucket as i32);
        to_buckets.push(item.receiver_bucket as i32);
        t_ids.push(req.transfer_id.uuid());
        p_ids.push(RoutableId::new(bucket).uuid());
        from_entries.push(RoutableId::new(bucket).uuid());
        to_entries.push(RoutableId::new(bucket).uuid());
        from_users.push(req.from.as_str());
        to_users.push(req.to.as_str());
        curs.push(req.currency.as_str());
        amts.push(req.amount.to_string());
        descrs.push(req.description);
        keys.push(answer.key);
        hashes.push(answer.request_hash);
        bodies.push(answer.body);
        owns.push(answer.own);
    }
    let row = client
        .cached_query_one(
            "SELECT transfer_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text[]::numeric[], $11, $12,
                                   $13, $14, $15, $16, $17, $18)",
            &[
                &from_buckets,
                &to_buckets,
                &t_ids,
                &p_ids,
                &from_entries,
                &to_entries,
                &from_users,
                &to_users,
                &curs,
                &amts,
                &descrs,
                &at,
                &caller,
                &keys,
                &hashes,
                &bodies,
                &owns,
                &refusal,
            ],
        )
        .await?;
    let outcomes: Vec<&str> = row.get(0);
    if outcomes.len() != n {
        return Err(Error::Invariant(format!("transfer_batch answered {} of {n} items", outcomes.len())));
    }
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            "completed" => BatchOutcome::Completed,
            "insufficient_funds" => BatchOutcome::InsufficientFunds,
            _ => BatchOutcome::NotDone,
        })
        .collect())
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Reversal)]
pub struct ReversalView {
    pub posting_id: Uuid,
    pub reverses_entry_id: Uuid,
    pub reverses_posting_id: Uuid,
    pub entries: Vec<ReversalEntry>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReversalEntry {
    pub entry_id: Uuid,
    pub amount: String,
    pub balance_after: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Compensates the posting an entry belongs to with its mirror image. Nothing is
/// deleted; a posting is reversed at most once (a unique key guarantees it).
#[tracing::instrument(skip(tx))]
pub async fn reverse(tx: &Transaction<'_>, entry_id: &RoutableId) -> Result<ReversalView> {
    let row = tx
        .cached_query_opt(
            "SELECT p.posting_id, p.kind, a.currency FROM entries e
             JOIN postings p USING (posting_id) JOIN accounts a USING (account_id)
             WHERE e.entry_id = $1",
            &[&entry_id.uuid()],
        )
        .await?
        .ok_or(Error::EntryNotFound)?;
    let (original, kind, currency): (Uuid, String, String) = (row.get(0), row.get(1), row.get(2));
    match Kind::parse(&kind) {
        Some(Kind::Adjustment | Kind::Transfer) => {}
        Some(Kind::Reversal) => return Err(Error::NotReversible("a reversal cannot itself be reversed")),
        _ => {
            return Err(Error::NotReversible(
                "a cross-shard transfer leg is settled by its transfer; send a new transfer to move the money back",
            ))
        }
    }
    // Lock the wallets first (fixed order), then decide: a concurrent reversal of the
    // same posting waits here and then sees the first one.
    let legs = tx
        .cached_query(
            "SELECT a.account_id, e.amount::text, a.balance::text, a.held::text
             FROM entries e JOIN accounts a USING (account_id)
             WHERE e.posting_id = $1 ORDER BY a.account_id FOR UPDATE OF a",
            &[&original],
        )
        .await?;
    // A posting split by a bucket move has legs on two shards; reversing it here would
    // undo one side only. Split: a leg stands for legs that left (`resharding`), or a
    // leg is a wallet's whose bucket left (until cleanup replaces it with a stand-in).
    let split = tx
        .cached_query_one(
            "SELECT EXISTS (SELECT 1 FROM entries e JOIN accounts a USING (account_id)
                                 LEFT JOIN users u ON u.user_id = a.user_id
                                 LEFT JOIN bucket_owners o ON o.bucket = u.bucket
                            WHERE e.posting_id = $1 AND (a.system_name = 'resharding' OR o.state = 'moved'))",
            &[&original],
        )
        .await?;
    if split.get::<_, bool>(0) {
        return Err(Error::NotReversible(
            "its users are on different shards now; send a new transfer to move the money back",
        ));
    }
    // The reversal writes every wallet of the posting, and this shard must own them all
    // (a transfer's receiver may be in another bucket, moved away since).
    let buckets = tx
        .cached_query(
            "SELECT DISTINCT u.bucket FROM entries e JOIN accounts a USING (account_id)
             JOIN users u ON u.user_id = a.user_id WHERE e.posting_id = $1 AND u.bucket IS NOT NULL",
            &[&original],
        )
        .await?;
    for row in buckets {
        let bucket: i32 = row.get(0);
        crate::sharding::ownership::check_write(tx, bucket as u32).await?;
    }
    if tx.cached_query_opt("SELECT 1 FROM postings WHERE reverses = $1", &[&original]).await?.is_some() {
        return Err(Error::AlreadyReversed);
    }
    let mut mirror = Vec::with_capacity(legs.len());
    for leg in &legs {
        let amount = parse_numeric(leg.get(1))?;
        let balance: Option<&str> = leg.get(2);
        if let Some(balance) = balance {
            let available = parse_numeric(balance)? - parse_numeric(leg.get(3))?;
            if amount > BigInt::from(0) && available < amount {
                return Err(Error::InsufficientFunds);
            }
        }
        mirror.push(Leg { account: Account::Id(leg.get(0)), amount: -amount });
    }
    // The locks above serialise reversals that take them; one that committed without
    // them is only found by the unique key, after the check. A failed statement aborts
    // the whole transaction, and the caller still has to store the refusal with its
    // Idempotency-Key: the savepoint keeps the transaction usable.
    tx.batch_execute("SAVEPOINT reversal").await?;
    let result = posting::post(
        tx,
        Posting {
            kind: Kind::Reversal,
            reference: Some(original),
            reverses: Some(original),
            description: Some("reversal"),
            bucket: entry_id.bucket(),
            currency: &currency,
            legs: mirror,
        },
    )
    .await;
    let (posting_id, entries) = match result {
        Err(Error::Db(e)) if is_second_reversal(&e) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT reversal").await?;
            return Err(Error::AlreadyReversed);
        }
        other => other?,
    };
    Ok(ReversalView {
        posting_id,
        reverses_entry_id: entry_id.uuid(),
        reverses_posting_id: original,
        entries: entries
            .into_iter()
            .map(|e| ReversalEntry {
                entry_id: e.entry_id,
                amount: e.amount.to_string(),
                balance_after: e.balance_after,
                created_at: e.created_at,
            })
            .collect(),
    })
}

fn is_second_reversal(e: &tokio_postgres::Error) -> bool {
    crate::storage::is_unique_violation(e)
        && e.as_db_error().and_then(|d| d.constraint()) == Some("postings_reverses_key")
}
